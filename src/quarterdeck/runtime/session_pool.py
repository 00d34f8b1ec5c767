"""The sessions this node leases for its lanes: which are free for a mission, how many missions
failed in a row on each (three mark it degraded), lane pauses mirrored on them, and the
replacement of sessions another node took over."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from quarterdeck.runtime.config import RuntimeConfig
from quarterdeck.runtime.metrics import Metrics
from quarterdeck.store.plan import Claim
from quarterdeck.store.sessions import (
    HeldSession,
    acquire_sessions,
    heartbeat_sessions,
    retire_sessions,
    set_session_state,
)
from quarterdeck.store.writer import Writer, WriteTxn

log = logging.getLogger("quarterdeck.runtime")

SESSION_DEGRADED_AFTER = 3
"""Missions failed in a row on one session before it is marked degraded."""


class SessionPool:
    """This node's sessions, by lane."""

    def __init__(
        self,
        writer: Writer,
        config: RuntimeConfig,
        node_id: str,
        state_dir: Path,
        metrics: Metrics,
    ) -> None:
        self._writer = writer
        self._config = config
        self._node_id = node_id
        self._state_dir = state_dir
        self._metrics = metrics
        self.held: dict[str, dict[str, HeldSession]] = {}
        """The sessions this node holds, by lane and id."""
        self.free: dict[str, list[str]] = {}
        """The ids of each lane's sessions that no mission runs in."""
        self._failures: dict[str, int] = {}
        self._paused: frozenset[str] = frozenset()

    def acquire(self, txn: WriteTxn) -> None:
        """At start: retire this node's earlier sessions and lease each lane's concurrency."""
        retire_sessions(txn, list(self._config.lanes), self._node_id)
        for name, lane in self._config.lanes.items():
            held = acquire_sessions(
                txn, name, lane.concurrency, self._node_id, self._config.lease_s, self._state_dir
            )
            self.held[name] = {session.id: session for session in held}
            self.free[name] = [session.id for session in held]

    def pause(self, txn: WriteTxn, paused: frozenset[str]) -> None:
        """Mirror lane pauses on this node's sessions of those lanes."""
        if paused == self._paused:
            return
        for lane in paused ^ self._paused:
            target = "paused" if lane in paused else "active"
            for session in self.held.get(lane, {}).values():
                set_session_state(txn, session, target)
        self._paused = paused

    def take(self, claim: Claim) -> None:
        """A claimed mission runs in its session: the session is no longer free."""
        if claim.session_id is not None:
            self.free[claim.exec_lane].remove(claim.session_id)

    def release(self, claim: Claim) -> HeldSession | None:
        """The mission's session is free again (if this node still holds it)."""
        session = self.held.get(claim.exec_lane, {}).get(claim.session_id or "")
        if session is not None and session.id not in self.free[claim.exec_lane]:
            self.free[claim.exec_lane].append(session.id)
        return session

    async def give_back(self, claim: Claim, outcome: str | None, *, stopped: bool) -> None:
        """Give the mission's session back; three failures in a row mark it degraded, and a
        success makes a degraded session active again."""
        session = self.release(claim)
        if session is None or outcome is None or stopped:
            return
        failures = 0 if outcome == "completed" else self._failures.get(session.id, 0) + 1
        before = self._failures.get(session.id, 0)
        self._failures[session.id] = failures
        if failures == SESSION_DEGRADED_AFTER or (
            before >= SESSION_DEGRADED_AFTER and failures == 0
        ):
            target = "degraded" if failures else "active"
            with contextlib.suppress(Exception):
                await self._writer.submit(
                    lambda txn: set_session_state(txn, session, target, error=outcome)
                )

    def all(self) -> list[HeldSession]:
        """Every session this node holds."""
        return [s for lane in self.held.values() for s in lane.values()]

    def heartbeat_op(self, held: list[HeldSession]) -> Callable[[WriteTxn], list[HeldSession]]:
        """The write that renews the sessions' leases; it returns the sessions lost."""
        return lambda txn: heartbeat_sessions(txn, held, self._config.lease_s, self._paused)

    async def replace(self, lost: list[HeldSession], claiming: Callable[[], bool]) -> None:
        """Forget sessions another node took over while this one was silent, and lease as many
        others (unless the node stopped claiming), so that the lanes keep their concurrency. A
        mission still running in a lost session has lost its lease too; it does not give the
        session back when it ends."""
        log.warning(
            "sessions taken over by another node",
            extra={"node": self._node_id, "sessions": [s.id for s in lost]},
        )
        self._metrics.sessions_lost += len(lost)
        for session in lost:
            self.held.get(session.lane, {}).pop(session.id, None)
            free = self.free.get(session.lane, [])
            if session.id in free:
                free.remove(session.id)

        def lease_others(txn: WriteTxn) -> list[HeldSession]:
            acquired: list[HeldSession] = []
            if not claiming():
                return acquired  # draining: the sessions are about to be handed back
            for lane in sorted({s.lane for s in lost} & set(self._config.lanes)):
                count = sum(1 for s in lost if s.lane == lane)
                acquired += acquire_sessions(
                    txn, lane, count, self._node_id, self._config.lease_s, self._state_dir
                )
            return acquired

        for session in await self._writer.submit(lease_others):
            self.held.setdefault(session.lane, {})[session.id] = session
            self.free.setdefault(session.lane, []).append(session.id)
