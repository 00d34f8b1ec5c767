"""The demo fleet: a state directory with simulated lanes, a policy and an attested prompt, and a
feeder that keeps the fleet busy with a seeded mix of tasks.

:func:`prepare_demo` writes ``quarterdeck.toml`` (``sim`` lanes: ``triage`` falling back to
``triage-backup``, ``deploys``, ``research``), ``policy.toml``, ``prompts/triage.md`` (attested on
the ``triage`` lane) and ``README-demo.txt``; files already there are kept. :class:`DemoFeeder`
submits an initial batch (quick tasks, approvals, failures, one hang) and then a steady trickle
that backs off a lane while it is paused, its queue is deep, or half its slots wait on a person,
so that the fleet keeps moving when nobody answers. ``speed`` runs it all faster.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Final

from quarterdeck.runtime.config import daemon_user
from quarterdeck.store.queries.lanes import LaneOverview

log = logging.getLogger("quarterdeck.demo")

CONFIG_FILE: Final = "quarterdeck.toml"
POLICY_FILE: Final = "policy.toml"
PROMPT_FILE: Final = "prompts/triage.md"
README_FILE: Final = "README-demo.txt"

DEMO_CONFIG: Final = """\
# The Quarterdeck demo fleet: simulated agents (sim lanes) steered by the demo's tasks.
# Edit freely; `quarterdeck run --headless --config <this file>` runs it without the TUI.

default_lane = "triage"
lease_s = 10                 # mission and session leases; heartbeats every third of it
sweep_interval_s = 1         # expired leases are found within a second
hold_s = 300                 # dead-lettered turns wait five minutes for a requeue
drain_grace_s = 2
policy = "policy.toml"
claim_s = 120

[slo]
window_s = 120
failure_rate = 0.5
fallback_rate = 0.5
p95_latency_s = 30
receipt_wait_s = 30
check_interval_s = 2

[lanes.triage]
adapter = "sim"
fallback = "triage-backup"
timeout_s = 15
max_attempts = 2
backoff_initial_s = 0.2
backoff_max_s = 1
concurrency = 4
attest = ["prompts/triage.md"]   # edit the prompt to see a drift alert
on_drift = "warn"
options = { seed = 7, failure_rate = 0.05, action_rate = 0.0, max_latency_ms = 1500 }

[lanes.triage-backup]
adapter = "sim"
timeout_s = 15
max_attempts = 1
backoff_initial_s = 0.2
backoff_max_s = 1
concurrency = 2
options = { seed = 8, failure_rate = 0.05, action_rate = 0.0, max_latency_ms = 1500 }

[lanes.deploys]
adapter = "sim"
timeout_s = 20
max_attempts = 2
backoff_initial_s = 0.5
backoff_max_s = 2
concurrency = 4
options = { seed = 9, failure_rate = 0.05, action_rate = 0.0, max_latency_ms = 2000 }

[lanes.research]
adapter = "sim"
timeout_s = 45               # a hanging agent is stopped after this; take it over before
max_attempts = 2
backoff_initial_s = 0.5
backoff_max_s = 2
concurrency = 4
options = { seed = 10, failure_rate = 0.05, action_rate = 0.0, max_latency_ms = 3000 }
"""

DEMO_POLICY: Final = """\
# The demo's policy: the first matching rule decides, then the floors may only tighten it.
# Edit it while the demo runs: a valid edit applies to the next decision, an invalid one keeps
# the last good policy and opens a policy_invalid alert.

[defaults]
outcome = "require_approval"          # anything not listed below waits for a person
reject_reasons = ["unsafe", "wrong_target", "needs_context", "policy", "other"]
approver = "supervisor"
deadline_s = 300
ladder = ["oncall"]
on_expiry = "reject"

[[rules]]
name = "dispatch"
tool = "mission.dispatch"
outcome = "allow"

[[rules]]
name = "reads"
tool = "read*"
outcome = "allow"

[[rules]]
name = "search"
tool = "search"
outcome = "allow"

[[rules]]
name = "scratch-writes"
tool = "write_file"
outcome = "allow"

[[rules]]
name = "deploys"
tool = "deploy"
outcome = "require_approval"
approver = "release-lead"
deadline_s = 180
ladder = ["oncall", "cto"]
on_expiry = "pause_lane"              # nobody answered: the lane stops taking work

[[rules]]
name = "refunds"
tool = "refund"
outcome = "require_approval"
approver = "billing"
deadline_s = 240
ladder = ["finance-lead"]
on_expiry = "reject"

[[rules]]
name = "outbound-email"
tool = "send_email"
outcome = "require_approval"
approver = "supervisor"
deadline_s = 300

[floors.tools."*"]
deny = ["rm*", "drop_*"]              # never, whatever a rule says
"""

DEMO_PROMPT: Final = """\
# Triage agent

You triage incoming support tickets.

1. Read the ticket and any linked logs.
2. Classify it: bug, question, billing or incident.
3. Set a priority from P1 (customers blocked) to P4 (cosmetic).
4. Propose a next step; ask before refunding anything.

Keep answers short and cite the ticket number.
"""

DEMO_README: Final = """\
Quarterdeck demo
================

This folder was prepared for the demo fleet:

  quarterdeck.toml    four simulated lanes: triage (falls back to triage-backup), deploys,
                      research
  policy.toml         dispatch allowed; deploy, refund and send_email wait for approval
                      (with deadlines and an escalation ladder); rm* and drop_* are denied
  prompts/triage.md   the triage agent's prompt, attested on the triage lane

The demo submits a batch of tasks and then a steady trickle: quick ones, some that ask for
approval (deploys to prod, refunds, emails), some that fail and fall back, one that hangs
long enough for you to take it over.

Try it: edit prompts/triage.md while the demo runs. The triage lane's attested prompt no
longer matches its baseline and a drift alert (warn) opens. Acknowledge it, or accept the new
prompt with `quarterdeck rebaseline triage`.

Editing policy.toml applies to the next decision; a broken edit keeps the last good policy
and opens an alert. Files here are never overwritten when the demo starts again; delete one
to get the original back.
"""

_FILES: Final = (
    (CONFIG_FILE, DEMO_CONFIG),
    (POLICY_FILE, DEMO_POLICY),
    (PROMPT_FILE, DEMO_PROMPT),
    (README_FILE, DEMO_README),
)


def demo_roster(user: str) -> str:
    """The demo's ``[roster]``: the OS user running it holds every role (``admin``)."""
    return (
        "\n# Who supervises: the user running the demo holds every role (docs/specs/config.md).\n"
        f'[roster]\n{json.dumps(user)} = ["admin"]\n'
    )


MAX_SPEED: Final = 100.0


def check_speed(speed: float) -> float:
    """``speed`` if the demo can run at it (above 0, at most :data:`MAX_SPEED`).

    Raises:
        ValueError: it cannot, with why.
    """
    if not math.isfinite(speed) or not 0 < speed <= MAX_SPEED:
        raise ValueError(f"speed must be a number above 0 and at most {MAX_SPEED:g}, got {speed!r}")
    return speed


def scaled_policy(speed: float) -> str:
    """The demo's policy with every approval deadline divided by ``speed`` (at least 1 s)."""
    if speed == 1:
        return DEMO_POLICY

    def shorter(match: re.Match[str]) -> str:
        return f"deadline_s = {max(1, round(int(match.group(1)) / speed))}"

    header = f"# Prepared for `quarterdeck demo --speed {speed:g}`: deadlines {speed:g}x shorter.\n"
    return header + re.sub(r"deadline_s = (\d+)", shorter, DEMO_POLICY)


def prepare_demo(state_dir: Path, speed: float = 1.0) -> Path:
    """Write the demo's files into ``state_dir`` (created if needed), keeping any that already
    exist, and return the path of its ``quarterdeck.toml`` (whose roster makes the OS user
    running the demo ``admin``). A policy written here at ``speed`` has its approval deadlines
    ``speed`` times shorter."""
    check_speed(speed)
    files = [
        (relative, content + demo_roster(daemon_user()) if relative == CONFIG_FILE else content)
        for relative, content in _FILES
    ]
    files = [
        (relative, scaled_policy(speed) if relative == POLICY_FILE else content)
        for relative, content in files
    ]
    for relative, content in files:
        path = state_dir / relative
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        # "x": never replace a file another process wrote meanwhile
        with contextlib.suppress(FileExistsError), path.open("x", encoding="utf-8") as handle:
            handle.write(content)
    return state_dir / CONFIG_FILE


_SERVICES: Final = ("checkout", "search-api", "billing", "auth", "notifications", "catalog")
_TOPICS: Final = (
    "churn in the EU cohort",
    "p95 latency of the search API",
    "last week's failed payments",
    "competitor pricing pages",
    "support tickets mentioning exports",
)
_TABLES: Final = ("scratch_2023", "tmp_import", "old_sessions")
_KINDS: Final = (
    ("triage", 30),
    ("research", 18),
    ("deploy", 10),
    ("refund", 8),
    ("email", 5),
    ("write", 5),
    ("fail", 10),
    ("slow", 10),
    ("drop", 4),
)
ASKS_A_PERSON: Final = frozenset({"deploy", "refund", "email"})
"""The kinds of task whose agent asks a person before it acts (the demo's policy)."""
LANES_EVERY_S: Final = 1.0
"""How often the feeder reads the lanes, at most."""


def holds_back(kind: str, lane: LaneOverview | None) -> str | None:
    """Why the feeder should not add a task of ``kind`` to ``lane`` now (None: add it).

    It holds back while the lane is paused, while its queue is as deep as its slots, and a task
    that will ask a person while half the lane's slots (at least one) already hold missions
    waiting on a person, or dispatches wait on one: the other slots stay free for work that
    runs, whoever answers or not.
    """
    if lane is None:
        return None
    if lane.state == "paused":
        return "paused"
    if lane.queued >= max(2, lane.slots):
        return "queue deep"
    if kind in ASKS_A_PERSON and (
        lane.awaiting_person + lane.awaiting_dispatch >= max(1, lane.slots // 2)
    ):
        return "approvals waiting"
    return None


class DemoFeeder:
    """Submits the demo's tasks: :meth:`initial_batch`, then a seeded trickle at ``rate_per_s``
    (times ``speed``), holding back a task its lane should not get now (:func:`holds_back`,
    when ``lanes`` reads them: ``Console.lanes``).

    ``submit`` receives a list of envelopes (``Runtime.submit`` or ``Client.submit``); keys run
    ``demo-<first_key>``, ``demo-<first_key + 1>``, ... so a redelivery is a no-op. At
    ``speed`` N tasks come N times as often and their agents work N times faster.
    """

    def __init__(
        self,
        submit: Callable[[list[dict[str, Any]]], Awaitable[Any]],
        *,
        seed: int = 7,
        workspace: str = "default",
        rate_per_s: float = 0.5,
        first_key: int = 1,
        speed: float = 1.0,
        lanes: Callable[[], Awaitable[Sequence[LaneOverview]]] | None = None,
    ) -> None:
        if not math.isfinite(rate_per_s) or rate_per_s < 0:
            raise ValueError(f"rate_per_s must be a finite number >= 0, got {rate_per_s!r}")
        self._submit = submit
        self.seed = seed
        self.workspace = workspace
        self.speed = check_speed(speed)
        self.rate_per_s = rate_per_s * speed
        self.first_key = first_key
        self._lanes = lanes
        self._read: tuple[float, dict[str, LaneOverview]] | None = None
        self.submitted = 0
        """Envelopes handed to ``submit`` without an error."""
        self.errors = 0
        """Calls of ``submit`` that raised."""
        self.held_back: dict[str, int] = {}
        """Tasks not added, by why (see :func:`holds_back`)."""

    # --- envelopes -------------------------------------------------------------------------------

    def _envelope(
        self,
        n: int,
        lane: str,
        objective: str,
        *,
        rng: random.Random,
        outcome: str = "complete",
        latency_ms: int | None = None,
        actions: list[dict[str, Any]] | None = None,
        progress: int = 2,
        **extra: Any,
    ) -> dict[str, Any]:
        latency = latency_ms if latency_ms is not None else rng.randint(200, 1200)
        knobs: dict[str, Any] = {
            "latency_ms": max(1, round(latency / self.speed)),
            "outcome": outcome,
            "actions": actions or [],
            "progress": progress,
        }
        return {
            "idempotency_key": f"demo-{n}",
            "workspace": self.workspace,
            "kind": "task",
            "payload": {
                "lane": lane,
                "objective": objective,
                "input": {"sim": knobs, **extra},
                "budget": {"estimated_cost": round(rng.uniform(0.002, 0.08), 4)},
            },
        }

    def _kind(self, kind: str, n: int, rng: random.Random) -> dict[str, Any]:
        """One task of a kind, its details drawn from ``rng``."""
        ticket = rng.randint(1000, 9999)
        service = rng.choice(_SERVICES)
        if kind == "triage":
            return self._envelope(n, "triage", f"Triage ticket #{ticket}", rng=rng, ticket=ticket)
        if kind == "research":
            topic = rng.choice(_TOPICS)
            search = {"tool": "search", "args": {"query": topic}}
            return self._envelope(
                n,
                "research",
                f"Summarise {topic}",
                rng=rng,
                latency_ms=rng.randint(800, 2500),
                actions=[search],
                progress=3,
            )
        if kind == "deploy":
            deploy = {"tool": "deploy", "args": {"service": service, "env": "prod"}}
            return self._envelope(
                n, "deploys", f"Deploy {service} to prod", rng=rng, actions=[deploy]
            )
        if kind == "refund":
            order = f"A-{ticket}"
            amount = round(rng.uniform(9, 250), 2)
            refund = {"tool": "refund", "args": {"order": order, "amount": amount}}
            return self._envelope(
                n, "triage", f"Refund order {order} ({amount:.2f} EUR)", rng=rng, actions=[refund]
            )
        if kind == "email":
            email = {
                "tool": "send_email",
                "args": {"to": "customers@example.com", "subject": f"Incident #{ticket} update"},
            }
            return self._envelope(
                n, "research", f"Email the update on incident #{ticket}", rng=rng, actions=[email]
            )
        if kind == "write":
            write = {"tool": "write_file", "args": {"path": f"notes/{ticket}.md"}}
            return self._envelope(
                n, "research", f"Write up notes for #{ticket}", rng=rng, actions=[write]
            )
        if kind == "fail":
            lane = rng.choice(("triage", "deploys"))
            objective = (
                f"Triage ticket #{ticket} (flaky upstream)"
                if lane == "triage"
                else f"Deploy {service} to staging"
            )
            return self._envelope(n, lane, objective, rng=rng, outcome="fail")
        if kind == "slow":
            topic = rng.choice(_TOPICS)
            return self._envelope(
                n,
                "research",
                f"Deep dive: {topic}",
                rng=rng,
                latency_ms=rng.randint(5_000, 15_000),
                progress=5,
            )
        if kind == "hang":
            return self._envelope(
                n,
                "research",
                f"Investigate the flaky {service} integration test",
                rng=rng,
                outcome="hang",
                latency_ms=3_000,
                progress=3,
            )
        if kind == "drop":
            table = rng.choice(_TABLES)
            drop = {"tool": "drop_table", "args": {"table": table}}
            return self._envelope(
                n, "research", f"Clean up the {table} table", rng=rng, actions=[drop]
            )
        raise ValueError(f"unknown demo task kind {kind!r}")

    def initial_batch(self, n: int = 12) -> list[dict[str, Any]]:
        """The first ``n`` envelopes, the same for the same seed: quick tasks on each lane, prod
        deploys, a refund and an email that wait for approval, failures, one hang, and a denied
        ``drop_table``; beyond the twelfth, tasks like the trickle's."""
        plan = (
            "triage",
            "deploy",
            "fail",
            "research",
            "refund",
            "hang",
            "triage",
            "fail",
            "email",
            "triage",
            "deploy",
            "drop",
        )
        rng = random.Random(self.seed)
        batch: list[dict[str, Any]] = []
        for index in range(n):
            kind = plan[index] if index < len(plan) else self._draw_kind(rng)
            batch.append(self._kind(kind, self.first_key + index, rng))
        return batch

    @staticmethod
    def _draw_kind(rng: random.Random) -> str:
        kinds = [kind for kind, _ in _KINDS]
        return rng.choices(kinds, weights=[weight for _, weight in _KINDS])[0]

    # --- feeding ---------------------------------------------------------------------------------

    async def _send(self, envelopes: list[dict[str, Any]]) -> None:
        try:
            await self._submit(envelopes)
        except Exception:
            self.errors += 1
            keys = ", ".join(str(e["idempotency_key"]) for e in envelopes)
            log.warning("demo submit failed (%s)", keys, exc_info=True)
        else:
            self.submitted += len(envelopes)

    async def _lane(self, name: str) -> LaneOverview | None:
        """The lane as last read (read again at most every :data:`LANES_EVERY_S`); None when
        there is no reader, or the read failed."""
        if self._lanes is None:
            return None
        now = time.monotonic()
        if self._read is None or now - self._read[0] >= LANES_EVERY_S:
            try:
                found = {lane.lane: lane for lane in await self._lanes()}
            except Exception:
                log.warning("demo: reading the lanes failed", exc_info=True)
                found = {}
            self._read = (now, found)
        return self._read[1].get(name)

    async def _offer(self, kind: str, envelope: dict[str, Any]) -> bool:
        """Submit ``envelope`` unless its lane should not get it now; whether it was sent."""
        why = holds_back(kind, await self._lane(str(envelope["payload"]["lane"])))
        if why is not None:
            self.held_back[why] = self.held_back.get(why, 0) + 1
            return False
        await self._send([envelope])
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Submit the initial batch, then one task at a time at about ``rate_per_s`` (seeded
        jitter) until ``stop`` is set, holding back what a lane should not get now. A failing
        submit is logged, never raised."""
        batch = self.initial_batch()
        await self._send(batch)
        rng = random.Random(self.seed * 1_000_003 + 1)
        n = self.first_key + len(batch)
        while not stop.is_set():
            if self.rate_per_s == 0:
                await stop.wait()
                break
            delay = rng.uniform(0.5, 1.5) / self.rate_per_s
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
            if stop.is_set():
                break
            kind = self._draw_kind(rng)
            if await self._offer(kind, self._kind(kind, n, rng)):
                n += 1
