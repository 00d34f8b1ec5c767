"""The pump: whenever it is woken, apply accepted receipts, then claim queued missions for this
node's free sessions (honouring lane pauses, force-fallback and shadow flags) and hand the
claims to the runtime to start."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from quarterdeck.runtime.config import RuntimeConfig
from quarterdeck.runtime.session_pool import SessionPool
from quarterdeck.store.apply import ReceiptsAlreadyApplied, apply_receipts
from quarterdeck.store.claiming import claim_missions
from quarterdeck.store.finishing import add_shadow_mission
from quarterdeck.store.flags import Flags, bump_counter, read_flags
from quarterdeck.store.plan import Claim, WorkPlan
from quarterdeck.store.transitions import ClaimConflict
from quarterdeck.store.writer import Writer, WriteTxn

log = logging.getLogger("quarterdeck.runtime")

WAKE_TIMEOUT_S = 1.0
"""The pump runs at least this often, woken or not."""


class Dispatcher:
    """Applies receipts and claims missions for one node."""

    def __init__(
        self,
        writer: Writer,
        config: RuntimeConfig,
        node_id: str,
        sessions: SessionPool,
        wake: asyncio.Event,
        plan: Callable[[], WorkPlan],
        start: Callable[[list[Claim], Flags], None],
    ) -> None:
        self._writer = writer
        self._config = config
        self._node_id = node_id
        self._sessions = sessions
        self._wake = wake
        self._plan = plan
        self._start = start
        self._lock = asyncio.Lock()
        self.claiming = False
        """Whether this node takes new missions (from start until it drains)."""

    async def stop_claiming(self) -> None:
        """Take no more missions; returns once a claim under way has started its missions."""
        self.claiming = False
        async with self._lock:
            pass

    async def run(self, stop: asyncio.Event) -> None:
        """Pump whenever woken (and at least every :data:`WAKE_TIMEOUT_S`) until ``stop``."""
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
        # that arrives as the awaited event fires, and the loop would then never stop.
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WAKE_TIMEOUT_S):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.pump()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("pump failed; retrying", extra={"node": self._node_id})
                await asyncio.sleep(0.5)

    async def pump(self) -> None:
        """Apply the receipts waiting (in rounds of up to 500), then claim and start missions."""
        while True:
            try:
                applied = await self._writer.submit(
                    lambda txn: apply_receipts(txn, self._plan()), concurrent=True
                )
            except ReceiptsAlreadyApplied as exc:
                log.info("receipts applied elsewhere; again", extra={"detail": str(exc)})
                continue
            if len(applied) < 500:
                break
        async with self._lock:
            if not self.claiming:
                return
            try:
                claims, flags = await self._writer.submit(self._claim_all, concurrent=True)
            except ClaimConflict:
                self._wake.set()
                return
            self._start(claims, flags)

    def _claim_all(self, txn: WriteTxn) -> tuple[list[Claim], Flags]:
        flags = read_flags(txn.conn)
        claims: list[Claim] = []
        self._sessions.pause(txn, flags.paused)
        for name, lane in self._config.lanes.items():
            if name in flags.paused:
                continue
            sources = self._sources(name, flags)
            free = self._sessions.free.get(name, [])
            if not sources or not free:
                continue
            got = claim_missions(
                txn, name, sources, len(free), self._node_id, self._config.lease_s, sessions=free,
                plan=self._plan(),
            )  # fmt: skip
            for claim in got:
                # The configuration's shadow setting seeded the flag at first start; from
                # then on the flag alone decides, so a supervisor can turn it off.
                if claim.role == "primary" and name in flags.shadow and lane.fallback:
                    add_shadow_mission(txn, claim, lane.fallback)
                if claim.role == "fallback" or claim.exec_lane != claim.lane:
                    bump_counter(txn, "fallback_dispatches")
            claims.extend(got)
        return claims, flags

    def _sources(self, exec_lane: str, flags: Flags) -> list[str]:
        """The lanes whose queued missions ``exec_lane`` runs, given force-fallback flags."""

        def forced(name: str) -> bool:
            fallback = self._config.lanes[name].fallback
            return fallback is not None and (flags.force_all or name in flags.forced)

        sources = [] if forced(exec_lane) else [exec_lane]
        for name, lane in self._config.lanes.items():
            if name != exec_lane and lane.fallback == exec_lane and forced(name):
                sources.append(name)
        return sources
