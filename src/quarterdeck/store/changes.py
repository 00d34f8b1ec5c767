"""Noticing commits made by other processes, cheaply, on either database.

A :class:`ChangeFeed` has a ``version`` that moves whenever something may have been committed
elsewhere; a reader compares it with the version it last acted on and reads only when it
moved. On SQLite the version is ``PRAGMA data_version`` on a private connection (it moves
when any other connection commits). On PostgreSQL it moves when a ``NOTIFY`` on
:data:`~quarterdeck.store.ledger.CHANGE_CHANNEL` arrives (every commit that appends to the
ledger sends the new head seq) and, as the fallback when notifications stop or are switched
off, when polling the ledger head finds a seq not seen before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Mapping
from typing import Any

from sqlalchemy import text

from quarterdeck.store.database import Database
from quarterdeck.store.ledger import CHANGE_CHANNEL

log = logging.getLogger(__name__)

POLL_S = 0.1
"""How often SQLite's data version is read, and PostgreSQL's head polled without NOTIFY."""
LISTENING_POLL_S = 1.0
"""How often the PostgreSQL head is polled while notifications arrive (the safety net)."""


class ChangeFeed:
    """Tells whether another connection may have committed since a version was taken.

    Use ``await feed.open()`` first and ``await feed.close()`` at the end.
    """

    def __init__(self, db: Database, *, poll_s: float = POLL_S) -> None:
        self._db = db
        self.poll_s = poll_s
        self._sqlite: sqlite3.Connection | None = None
        self._pg: Any = None
        self._poller: asyncio.Task[None] | None = None
        self._event = asyncio.Event()
        self._version = 0
        self._seen_seq = -1
        self.notifications = 0
        """How many ``NOTIFY`` payloads arrived (PostgreSQL)."""
        self.polled_changes = 0
        """How many changes only polling found (PostgreSQL)."""

    async def open(self) -> None:
        """Connect the watching connection (and start listening on PostgreSQL)."""
        path = self._db.sqlite_path
        if path is not None:
            self._sqlite = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._version = int(self._sqlite.execute("PRAGMA data_version").fetchone()[0])
            return
        import asyncpg  # the PostgreSQL driver; imported only where it is used

        self._pg = await asyncpg.connect(self._db.dsn)
        self._seen_seq = await self._head_seq()
        if self._db.notify:
            await self._pg.add_listener(CHANGE_CHANNEL, self._on_notify)
        self._poller = asyncio.get_running_loop().create_task(
            self._poll_head(), name="qd-change-poll"
        )

    async def query_one(self, sql: str, params: Mapping[str, Any]) -> dict[str, Any] | None:
        """The first row of a small read query (named ``:params``), or None. On SQLite it runs
        on the feed's own connection (no pool, no thread hop); elsewhere in a read snapshot."""
        if self._sqlite is not None:
            cursor = self._sqlite.execute(sql, dict(params))
            row = cursor.fetchone()
            if row is None:
                return None
            return {d[0]: value for d, value in zip(cursor.description, row, strict=True)}
        async with self._db.read() as conn:
            found = (await conn.execute(text(sql), dict(params))).first()
        return dict(found._mapping) if found is not None else None

    def version(self) -> int:
        """The current version: compare with an earlier one to learn of commits since."""
        if self._sqlite is not None:
            self._version = int(self._sqlite.execute("PRAGMA data_version").fetchone()[0])
        return self._version

    async def wait(self, since: int, timeout_s: float) -> int:
        """Wait until the version differs from ``since`` or ``timeout_s`` passes; return it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            current = self.version()
            left = deadline - loop.time()
            if current != since or left <= 0:
                return current
            if self._sqlite is not None:
                await asyncio.sleep(min(self.poll_s, left))
                continue
            self._event.clear()
            if self._version != since:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), left)

    async def close(self) -> None:
        """Stop watching and close the connection."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        if self._sqlite is not None:
            self._sqlite.close()
            self._sqlite = None
        if self._pg is not None:
            with contextlib.suppress(Exception):
                await self._pg.close()
            self._pg = None

    def _bump(self) -> None:
        self._version += 1
        self._event.set()

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.notifications += 1
        try:
            seq = int(payload)
        except ValueError:
            seq = self._seen_seq + 1
        if seq > self._seen_seq:
            self._seen_seq = seq
        self._bump()

    async def _reconnect(self) -> None:
        import asyncpg

        with contextlib.suppress(Exception):
            await self._pg.close()
        try:
            self._pg = await asyncpg.connect(self._db.dsn)
            if self._db.notify:
                await self._pg.add_listener(CHANGE_CHANNEL, self._on_notify)
        except Exception:
            log.warning("reconnecting the change feed failed", exc_info=True)
        self._bump()  # something may have been missed meanwhile

    async def _head_seq(self) -> int:
        value = await self._pg.fetchval("SELECT seq FROM ledger_head WHERE id = 1")
        return int(value or 0)

    async def _poll_head(self) -> None:
        """The fallback: a head seq not announced by ``NOTIFY`` still moves the version."""
        while True:
            interval = LISTENING_POLL_S if self._db.notify else self.poll_s
            await asyncio.sleep(interval)
            try:
                seq = await self._head_seq()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("polling the ledger head failed; reconnecting", exc_info=True)
                await self._reconnect()
                continue
            if seq != self._seen_seq:
                self._seen_seq = seq
                self.polled_changes += 1
                self._bump()
