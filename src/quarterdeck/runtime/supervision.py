"""Supervision of running missions: an agent's request to act goes through the gate, and a
mission whose action waits for a person waits here (its timeout stopped) until the approval is
decided. A loop walks approval ladders past their deadlines, wakes the missions whose approvals
were decided, and stops missions whose lease was revoked (a person took the turn over)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from quarterdeck.domain.clock import Clock, format_instant
from quarterdeck.domain.routing import TOO_MANY_ACTIONS
from quarterdeck.domain.states import MISSION_SELF_FINISHED as SELF_FINISHED_STATES
from quarterdeck.runtime.lanes.base import Decision, DecisionOutcome, LaneFailure
from quarterdeck.runtime.metrics import Metrics
from quarterdeck.runtime.missions import RunningMission
from quarterdeck.store.approvals import Gate, expire_due
from quarterdeck.store.database import Database
from quarterdeck.store.gate import request_action, resume_action
from quarterdeck.store.plan import Claim, WorkPlan
from quarterdeck.store.queries.supervision import approvals_due, decided_approvals, mission_holds
from quarterdeck.store.writer import Writer, WriteTxn

log = logging.getLogger("quarterdeck.runtime")

SUPERVISION_INTERVAL_S = 0.1


class Supervision:
    """Approvals that running missions wait for, ladders, and revoked leases, for one node."""

    def __init__(
        self,
        db: Database,
        writer: Writer,
        clock: Clock,
        node_id: str,
        metrics: Metrics,
        running: Mapping[str, RunningMission],
        plan: Callable[[], WorkPlan],
    ) -> None:
        self._db = db
        self._writer = writer
        self._clock = clock
        self._node_id = node_id
        self._metrics = metrics
        self._running = running
        self._plan = plan
        self._waiters: dict[str, asyncio.Future[None]] = {}
        self._wake = asyncio.Event()

    def wake_if_waiting(self) -> None:
        """Something committed: look at once whether a waited-for approval was decided."""
        if self._waiters:
            self._wake.set()

    async def request_action(
        self, running: RunningMission, action_id: str, tool: str, args: Mapping[str, Any]
    ) -> Decision:
        """An agent asks to run a tool: the gate decides (and persists) at once, or the mission
        waits for a person, its timeout stopped meanwhile.

        Raises:
            LaneFailure: the mission asked for more actions than its cap allows (the refusal
                is recorded; the mission fails with its reason).
        """
        gate = await self._writer.submit(
            lambda txn: request_action(txn, self._plan(), running.claim, action_id, tool, args)
        )
        if gate.outcome == TOO_MANY_ACTIONS:
            raise LaneFailure(gate.reason or TOO_MANY_ACTIONS)
        if gate.status == "waiting" and gate.approval_id is not None:
            await self._await_approval(running, gate.approval_id, gate.decision_id)
            gate = running.last_gate or Gate("rejected", args, "rejected", "the lease is gone")
        outcome: DecisionOutcome = (
            "rejected" if gate.status != "released" else "edited" if gate.outcome == "edited"
            else "approved"
        )  # fmt: skip
        return Decision(action_id, outcome, dict(gate.args), gate.reason)

    async def _await_approval(
        self, running: RunningMission, approval_id: str, decision_id: str | None
    ) -> None:
        """Wait until the approval is decided (or expires), then resume the mission."""
        loop = asyncio.get_running_loop()
        scope = running.scope
        remaining = None
        if scope is not None and scope.when() is not None:
            remaining = max(0.0, (scope.when() or 0.0) - loop.time())
            scope.reschedule(None)
        running.last_gate = None
        try:
            while True:
                future = self._waiters.get(approval_id)
                if future is None or future.done():
                    future = loop.create_future()
                    self._waiters[approval_id] = future
                self._wake.set()
                await asyncio.shield(future)
                gate, version = await self._writer.submit(
                    self._resume_op(running.claim, approval_id, decision_id)
                )
                if gate.status == "waiting":
                    continue
                if version is not None:
                    running.claim = replace(running.claim, version=version)
                running.last_gate = gate
                return
        finally:
            self._waiters.pop(approval_id, None)
            if scope is not None and remaining is not None:
                scope.reschedule(loop.time() + remaining)

    def _resume_op(
        self, claim: Claim, approval_id: str, decision_id: str | None
    ) -> Callable[[WriteTxn], tuple[Gate, int | None]]:
        return lambda txn: resume_action(txn, self._plan(), claim, approval_id, decision_id)

    async def run(self, stop: asyncio.Event) -> None:
        """Walk approval ladders past their deadlines, wake missions whose approvals were
        decided, and stop missions whose lease was revoked, until ``stop`` is set."""
        tick = 0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SUPERVISION_INTERVAL_S):
                    await self._wake.wait()
            self._wake.clear()
            tick += 1
            try:
                if tick % 5 == 0 and await self._approvals_due():
                    await self._writer.submit(
                        lambda txn: expire_due(txn, self._plan(), f"{self._node_id}:ladder")
                    )
                await self._resolve_waiters()
                if tick % 5 == 0:
                    await self.stop_revoked()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("supervision pass failed", extra={"node": self._node_id})

    async def _approvals_due(self) -> bool:
        """Whether an open approval's deadline has passed (a read, so an idle node takes no
        write transaction for it)."""
        return await approvals_due(self._db, format_instant(self._clock()))

    async def _resolve_waiters(self) -> None:
        waiting = [key for key, future in self._waiters.items() if not future.done()]
        if not waiting:
            return
        for approval_id in await decided_approvals(self._db, waiting):
            future = self._waiters.get(approval_id)
            if future is not None and not future.done():
                future.set_result(None)

    async def stop_revoked(self) -> None:
        """Cancel the agents of missions that are no longer theirs (taken over, cancelled).

        The read runs beside the missions: one may finish while it is under way, and its own
        finish (the mission ended at the same attempt, or is ending now) is not a revocation.
        """
        held = {r.claim.mission_id: r for r in self._running.values() if not r.finishing}
        if not held:
            return
        for row in await mission_holds(self._db, list(held)):
            running = held[row.id]
            if (row.attempt, row.lease_owner) == (running.claim.attempt, running.claim.owner):
                continue
            if running.finishing or self._running.get(row.id) is not running:
                continue  # it finished while the read ran; its finish is fenced on its own
            if row.attempt == running.claim.attempt and row.state in SELF_FINISHED_STATES:
                continue  # its own finish committed (the runtime has not seen it return yet)
            if running.task is not None and not running.lost:
                running.lost = True
                running.task.cancel()
                self._metrics.leases_lost += 1
