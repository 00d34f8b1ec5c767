"""A node's background upkeep: heartbeats that renew its sessions' and missions' leases (and
notice the ones it lost), sweeps of what other nodes left behind, ending other processes'
stalled write transactions, and noticing other processes' commits."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping

from quarterdeck.runtime.config import RuntimeConfig
from quarterdeck.runtime.metrics import Metrics
from quarterdeck.runtime.missions import RunningMission
from quarterdeck.runtime.session_pool import SessionPool
from quarterdeck.store.changes import ChangeFeed
from quarterdeck.store.database import Database
from quarterdeck.store.leases import Swept, heartbeat, sweep
from quarterdeck.store.plan import Claim
from quarterdeck.store.sessions import sweep_sessions
from quarterdeck.store.writer import Writer, WriteTxn

log = logging.getLogger("quarterdeck.runtime")

WATCH_INTERVAL_S = 0.05


class Upkeep:
    """The background loops of one node; each runs until the node's stop event is set."""

    def __init__(
        self,
        db: Database,
        writer: Writer,
        config: RuntimeConfig,
        node_id: str,
        metrics: Metrics,
        sessions: SessionPool,
        running: Mapping[str, RunningMission],
        wake: asyncio.Event,
        claiming: Callable[[], bool],
        committed: Callable[[], None],
        before_sweep: Callable[[WriteTxn], None] = lambda txn: None,
    ) -> None:
        """``wake`` wakes the pump; ``claiming`` says whether the node takes new missions;
        ``committed`` is called when another process committed; ``before_sweep`` runs in each
        sweep's transaction before it reclaims anything."""
        self._db = db
        self._writer = writer
        self._config = config
        self._node_id = node_id
        self._metrics = metrics
        self._sessions = sessions
        self._running = running
        self._wake = wake
        self._claiming = claiming
        self._committed = committed
        self._before_sweep = before_sweep

    async def heartbeats(self, stop: asyncio.Event) -> None:
        """Renew the leases every third of their length: sessions taken over by another node
        are replaced, and missions whose lease was lost are cancelled."""
        period = self._config.lease_s / 3
        while not stop.is_set():
            await asyncio.sleep(period * random.uniform(0.8, 1.0))
            sessions = self._sessions.all()
            if sessions:
                try:
                    lost_sessions = await self._writer.submit(self._sessions.heartbeat_op(sessions))
                    if lost_sessions and self._claiming():  # (draining: released, not lost)
                        await self._sessions.replace(lost_sessions, self._claiming)
                        self._wake.set()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("session heartbeat failed", extra={"node": self._node_id})
            held = [r.claim for r in self._running.values() if not r.lost and not r.finishing]
            if not held:
                continue
            try:
                lost = await self._writer.submit(self._heartbeat_op(held))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("heartbeat failed", extra={"node": self._node_id})
                continue
            for claim in lost:
                running = self._running.get(claim.mission_id)
                if running is None or running.task is None or running.lost:
                    continue
                self._metrics.leases_lost += 1
                if not running.finishing:  # a finish under way is refused by its own fencing
                    running.lost = True
                    running.task.cancel()

    def _heartbeat_op(self, held: list[Claim]) -> Callable[[WriteTxn], list[Claim]]:
        return lambda txn: heartbeat(txn, held, self._config.lease_s)

    async def sweeps(self, stop: asyncio.Event) -> None:
        """Reclaim (or dead-letter) missions and sessions whose holders' leases expired."""
        interval = self._config.sweep_interval_s
        while not stop.is_set():
            await asyncio.sleep(interval * random.uniform(0.5, 1.0))
            try:
                swept = await self._writer.submit(self._sweep)
                await self._writer.submit(lambda txn: sweep_sessions(txn, self._node_id))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sweep failed", extra={"node": self._node_id})
                continue
            if swept.reclaimed or swept.dead:
                self._metrics.reclaimed += swept.reclaimed
                log.info(
                    "swept",
                    extra={"node": self._node_id, "reclaimed": swept.reclaimed,
                           "dead": swept.dead},
                )  # fmt: skip
                self._wake.set()

    def _sweep(self, txn: WriteTxn) -> Swept:
        self._before_sweep(txn)
        return sweep(txn, self._node_id)

    async def stalled(self, stop: asyncio.Event) -> None:
        """End other processes' write transactions left hanging mid-statement by a freeze
        (on PostgreSQL they hold locks other nodes' writes wait for;
        the store finds none on SQLite)."""
        while not stop.is_set():
            await asyncio.sleep(self._config.sweep_interval_s)
            try:
                ended = await self._db.end_stalled_writers()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("looking for stalled writers failed", exc_info=True)
                continue
            if ended:
                log.warning("ended stalled write sessions", extra={"node": self._node_id,
                                                                    "sessions": ended})  # fmt: skip

    async def watch(self, stop: asyncio.Event) -> None:
        """Notice commits by other processes (SQLite's data version, PostgreSQL's NOTIFY or
        polling) and wake the pump."""
        feed = ChangeFeed(self._db, poll_s=WATCH_INTERVAL_S)
        await feed.open()
        try:
            last = feed.version()
            while not stop.is_set():
                current = await feed.wait(last, WATCH_INTERVAL_S * 4)
                if current != last:
                    last = current
                    self._wake.set()
                    self._committed()
        finally:
            await feed.close()
