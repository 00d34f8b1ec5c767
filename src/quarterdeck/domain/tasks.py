"""What task and command payloads mean: the runtime's reading of an accepted envelope."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """A task payload: which lane (None: the default lane), what to do, with what input."""

    lane: str | None
    objective: str
    input: Mapping[str, Any]
    budget: Mapping[str, Any] = field(default_factory=dict)


def parse_task(payload: Mapping[str, Any]) -> TaskSpec | list[str]:
    """Read a task payload; return the spec or every problem (``payload.<field>: ...``)."""
    problems: list[str] = []
    lane = payload.get("lane")
    if lane is not None and (not isinstance(lane, str) or not lane):
        problems.append("payload.lane: must be a lane name")
        lane = None
    objective = payload.get("objective", "")
    if not isinstance(objective, str):
        problems.append("payload.objective: must be text")
        objective = ""
    task_input = payload.get("input", {})
    if not isinstance(task_input, Mapping):
        problems.append("payload.input: must be an object")
        task_input = {}
    budget = payload.get("budget", {})
    if not isinstance(budget, Mapping):
        problems.append("payload.budget: must be an object")
        budget = {}
    if problems:
        return problems
    return TaskSpec(lane, objective, task_input, budget)


COMMANDS: Final = {
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
"""Supervisor commands the runtime applies, with their required payload fields. Every command
may also carry ``actor`` (who gave it); see ``docs/specs/supervision.md`` for the optional
fields of each."""

_TYPED_FIELDS: Final[dict[str, tuple[type | tuple[type, ...], str]]] = {
    "on": (bool, "true or false"),
    "for_s": ((int, float), "a number of seconds greater than 0"),
    "deliverable": (Mapping, "an object"),
    "args": (Mapping, "an object"),
    "filter": (Mapping, "an object"),
}


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """A supervisor command: its name and arguments."""

    name: str
    args: Mapping[str, Any]


def parse_command(payload: Mapping[str, Any]) -> CommandSpec | list[str]:
    """Read a command payload (``{"command": NAME, ...arguments}``); return it or every problem."""
    name = payload.get("command")
    if name not in COMMANDS:
        return [f"payload.command: must be one of {', '.join(sorted(COMMANDS))}, got {name!r}"]
    problems = []
    for required in COMMANDS[name]:
        value = payload.get(required)
        if required in _TYPED_FIELDS:
            continue
        if not isinstance(value, str) or not value:
            problems.append(f"payload.{required}: is required")
    for field_name, (kind, wanted) in _TYPED_FIELDS.items():
        if field_name not in payload and field_name not in COMMANDS[name]:
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
    return CommandSpec(str(name), {k: v for k, v in payload.items() if k != "command"})


def backoff_delay(
    number: int, initial_s: float, cap_s: float, rng: random.Random | None = None
) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, initial * 2**(number-1))]."""
    ceiling = min(cap_s, initial_s * 2 ** max(0, number - 1))
    return (rng or random).uniform(0, ceiling)
