"""Command parsing: the pydantic catalogue next to the hand-written parser it replaced, same run.

Usage: python bench/command_parse.py [--payloads N] [--rounds R]

Both sides read the same payloads (every command, valid ones with their optional fields and a
share of invalid ones). ``legacy`` is the parser that ``domain/tasks.py`` held before the
catalogue, kept here verbatim as the baseline; ``catalogue`` is
``quarterdeck.domain.commands.parse_command``, whose typed command the store applies as it
is. Rounds alternate the sides (medians are reported). Prints JSON: microseconds per payload and payloads per second.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from quarterdeck.domain.commands import parse_command

LEGACY_COMMANDS: Final = {
    "lane.pause": ("lane",),
    "lane.resume": ("lane",),
    "lane.force_fallback": ("lane", "on"),
    "lane.shadow": ("lane", "on"),
    "lane.rebaseline": ("lane",),
    "fallback.force": ("on",),
    "turn.requeue": ("turn_id",),
    "turn.cancel": ("turn_id",),
    "turn.takeover": ("turn_id",),
    "turn.release": ("turn_id",),
    "turn.complete": ("turn_id", "deliverable"),
    "approval.approve": ("approval_id",),
    "approval.reject": ("approval_id", "reason_code"),
    "approval.escalate": ("approval_id",),
    "approval.snooze": ("approval_id", "for_s"),
    "approval.claim": ("approval_id",),
    "approval.unclaim": ("approval_id",),
    "approval.bulk": ("decision",),
    "approval.request": ("action_id", "tool"),
    "alert.ack": ("alert_id",),
    "alert.resolve": ("alert_id",),
}

_LEGACY_TYPED: Final[dict[str, tuple[type | tuple[type, ...], str]]] = {
    "on": (bool, "true or false"),
    "for_s": ((int, float), "a number of seconds greater than 0"),
    "deliverable": (Mapping, "an object"),
    "args": (Mapping, "an object"),
    "filter": (Mapping, "an object"),
}


def legacy_parse(payload: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | list[str]:
    """The hand-written parser the catalogue replaced (its result as a plain tuple)."""
    name = payload.get("command")
    if name not in LEGACY_COMMANDS:
        return [
            f"payload.command: must be one of {', '.join(sorted(LEGACY_COMMANDS))}, got {name!r}"
        ]
    problems = []
    for required in LEGACY_COMMANDS[name]:
        value = payload.get(required)
        if required in _LEGACY_TYPED:
            continue
        if not isinstance(value, str) or not value:
            problems.append(f"payload.{required}: is required")
    for field_name, (kind, wanted) in _LEGACY_TYPED.items():
        if field_name not in payload and field_name not in LEGACY_COMMANDS[name]:
            continue
        value = payload.get(field_name)
        if (
            not isinstance(value, kind)
            or (kind is not bool and isinstance(value, bool))
            or (
                field_name == "for_s" and not (isinstance(value, int | float) and 0 < value < 10**9)
            )
        ):
            problems.append(f"payload.{field_name}: must be {wanted}")
    actor = payload.get("actor")
    if actor is not None and (not isinstance(actor, str) or not actor):
        problems.append("payload.actor: must be a non-empty string")
    if problems:
        return problems
    return str(name), {k: v for k, v in payload.items() if k != "command"}


_VALID: Final[list[dict[str, Any]]] = [
    {"command": "lane.pause", "lane": "sim", "actor": "ops"},
    {"command": "lane.force_fallback", "lane": "sim", "on": True},
    {"command": "fallback.force", "on": False},
    {"command": "turn.cancel", "turn_id": "t-1"},
    {"command": "turn.complete", "turn_id": "t-1", "deliverable": {"text": "done"}},
    {"command": "approval.approve", "approval_id": "a-1", "action_key": "turn:t-1:0",
     "args": {"env": "staging"}, "actor": "erin"},
    {"command": "approval.reject", "approval_id": "a-1", "reason_code": "unsafe",
     "reason": "wrong target"},
    {"command": "approval.snooze", "approval_id": "a-1", "for_s": 600},
    {"command": "approval.claim", "approval_id": "a-1"},
    {"command": "approval.bulk", "decision": "approve", "filter": {"lane": "sim"}},
    {"command": "approval.request", "action_id": "x-1", "tool": "deploy",
     "args": {"env": "prod", "replicas": 3}, "estimated_cost": 0.4},
    {"command": "alert.ack", "alert_id": "al-1"},
]  # fmt: skip
_INVALID: Final[list[dict[str, Any]]] = [
    {"command": "lane.pause"},
    {"command": "lane.explode", "lane": "sim"},
    {"command": "approval.snooze", "approval_id": "a-1", "for_s": -1, "actor": ""},
    {"command": "approval.request", "action_id": "x-1", "tool": "t", "args": []},
]


def payloads(count: int) -> list[dict[str, Any]]:
    """``count`` payloads: the valid ones four times as often as the invalid ones."""
    mix = _VALID * 4 + _INVALID * 3
    return [dict(mix[i % len(mix)]) for i in range(count)]


def rate(parse: Callable[[Mapping[str, Any]], object], batch: list[dict[str, Any]]) -> float:
    """Seconds to parse every payload of ``batch`` once."""
    started = time.perf_counter()
    for payload in batch:
        parse(payload)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payloads", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    options = parser.parse_args()
    batch = payloads(options.payloads)
    sides: dict[str, Callable[[Mapping[str, Any]], object]] = {
        "legacy": legacy_parse,
        "catalogue": parse_command,
    }
    for parse in sides.values():  # warm up
        rate(parse, batch[:500])
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(options.rounds):
        for name, parse in sides.items():
            seconds[name].append(rate(parse, batch))
    median = {name: statistics.median(values) for name, values in seconds.items()}
    figures = {
        name: {
            "us_per_payload": round(value / len(batch) * 1e6, 2),
            "payloads_per_s": round(len(batch) / value),
        }
        for name, value in median.items()
    }
    print(
        json.dumps(
            {
                "payloads": len(batch),
                "rounds": options.rounds,
                **figures,
                "catalogue_vs_legacy": round(median["catalogue"] / median["legacy"], 2),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
