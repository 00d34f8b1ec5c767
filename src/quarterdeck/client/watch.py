"""Cheap waiting on the database from a client process.

On SQLite, a plain ``sqlite3`` connection reads ``PRAGMA data_version`` every ``poll_s``: the
number changes whenever any other connection commits, so the (slightly dearer) query that
looks for what the caller waits on runs only after a commit. On PostgreSQL the store's
:class:`~quarterdeck.store.changes.ChangeFeed` wakes the waiter at a ``NOTIFY`` (or when
polling the ledger head finds a new seq).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import text

from quarterdeck.store.changes import ChangeFeed
from quarterdeck.store.database import Database

T = TypeVar("T")

SAFETY_REQUERY_S = 1.0
"""Query at least this often even when no commit was noticed (a belt to the braces)."""


class ChangeWatch:
    """Notices commits to one database and answers small read queries (it never writes)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._conn: sqlite3.Connection | None = None
        self._version: int | None = None
        self._feed: ChangeFeed | None = None
        path = db.sqlite_path
        if path is not None:
            self._conn = sqlite3.connect(
                str(Path(path).resolve()),
                timeout=5.0,
                isolation_level=None,
                check_same_thread=False,
            )
            self._conn.row_factory = sqlite3.Row

    async def changed(self) -> bool:
        """Whether anything was committed since the last call (True on the first call)."""
        if self._conn is not None:
            version = int(self._conn.execute("PRAGMA data_version").fetchone()[0])
        else:
            version = (await self._open_feed()).version()
        changed = version != self._version
        self._version = version
        return changed

    async def _open_feed(self) -> ChangeFeed:
        if self._feed is None:
            feed = ChangeFeed(self._db)
            await feed.open()
            self._feed = feed
        return self._feed

    async def query(self, sql: str, params: Mapping[str, Any]) -> dict[str, Any] | None:
        """The first row of a read query (named ``:params``), or None."""
        if self._conn is not None:
            row = self._conn.execute(sql, dict(params)).fetchone()
            return dict(row) if row is not None else None
        async with self._db.read() as conn:
            found = (await conn.execute(text(sql), dict(params))).first()
        return dict(found._mapping) if found is not None else None

    async def wait_for(
        self,
        probe: Callable[[], Awaitable[T | None]],
        *,
        deadline: float | None,
        poll_s: float,
    ) -> T | None:
        """Await ``probe()`` until it returns something other than None,
        running it only after a commit was noticed. Returns that value, or None when the
        loop-time ``deadline`` passed first."""
        loop = asyncio.get_running_loop()
        last_query = -SAFETY_REQUERY_S
        while True:
            now = loop.time()
            # Read the version before querying: a commit after this point changes it again.
            if await self.changed() or now - last_query >= SAFETY_REQUERY_S:
                last_query = now
                found = await probe()
                if found is not None:
                    return found
            if deadline is not None and loop.time() >= deadline:
                return None
            pause = poll_s if deadline is None else min(poll_s, max(0.0, deadline - loop.time()))
            if self._feed is not None and self._version is not None:
                left = SAFETY_REQUERY_S / 4
                if deadline is not None:
                    left = min(left, max(0.0, deadline - loop.time()))
                await self._feed.wait(self._version, left)
            else:
                await asyncio.sleep(pause)

    async def close(self) -> None:
        """Close the watching connections."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._feed is not None:
            await self._feed.close()
            self._feed = None
