"""A mission this node runs: its record while it runs (claim, task, timeout, whether its lease
is lost or its finish under way), and the events its agent reports, buffered and stored in
batches."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from quarterdeck.domain.canonical import canonical_text
from quarterdeck.domain.clock import Clock, format_instant
from quarterdeck.store.approvals import Gate
from quarterdeck.store.finishing import record_events
from quarterdeck.store.plan import Claim
from quarterdeck.store.writer import Writer

MAX_EVENTS_PER_MISSION = 1_000
EVENTS_INTERVAL_S = 0.25
"""How often reported events are stored while missions run."""


@dataclass
class RunningMission:
    """A mission running on this node."""

    claim: Claim
    task: asyncio.Task[None] | None = None
    scope: asyncio.Timeout | None = None
    """The mission's timeout; it stops while the mission waits for a person."""
    lost: bool = False
    finishing: bool = False
    events: list[dict[str, Any]] = field(default_factory=list)
    event_count: int = 0
    last_gate: Gate | None = None


class MissionEvents:
    """The events agents report: kept with their mission, gathered when it ends, and stored in
    one write for every mission now and then."""

    def __init__(self, writer: Writer, clock: Clock, running: Mapping[str, RunningMission]) -> None:
        self._writer = writer
        self._clock = clock
        self._running = running
        self._pending: list[dict[str, Any]] = []
        self._dirty = False

    def emit(self, running: RunningMission, kind: str, data: Mapping[str, Any]) -> None:
        """An event of a running mission (past :data:`MAX_EVENTS_PER_MISSION`, dropped)."""
        running.event_count += 1
        if running.event_count > MAX_EVENTS_PER_MISSION:
            return
        claim = running.claim
        try:
            text = canonical_text(dict(data))
        except (TypeError, ValueError):
            text = canonical_text({"repr": repr(data)})
        running.events.append(
            {"mission_id": claim.mission_id, "turn_id": claim.turn_id, "workspace": claim.workspace,
             "at": format_instant(self._clock()), "type": kind, "data": text}
        )  # fmt: skip
        self._dirty = True

    def collect(self, running: RunningMission) -> None:
        """Take an ending mission's events for the next store."""
        if running.events:
            self._pending.extend(running.events)
            running.events = []
            self._dirty = True

    async def flush(self) -> None:
        """Store every mission's reported events."""
        for source in list(self._running.values()):
            if source.events:
                self._pending.extend(source.events)
                source.events = []
        self._dirty = False
        batch, self._pending = self._pending, []
        if batch:
            await self._writer.submit(lambda txn: record_events(txn, batch), concurrent=True)

    async def run(self, stop: asyncio.Event) -> None:
        """Store the events every :data:`EVENTS_INTERVAL_S` until ``stop`` is set."""
        while not stop.is_set():
            await asyncio.sleep(EVENTS_INTERVAL_S)
            if self._dirty:
                await self.flush()
