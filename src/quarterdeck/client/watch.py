"""Cheap waiting on the database from a client process.

The store's :class:`~quarterdeck.store.changes.ChangeFeed` says when another process may have
committed (SQLite's data version; PostgreSQL's ``NOTIFY``, or polling its ledger head), so the
(slightly dearer) query that looks for what the caller waits on runs only after a commit, and
at least once a second as a safety net.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from quarterdeck.store.changes import ChangeFeed
from quarterdeck.store.database import Database

T = TypeVar("T")

SAFETY_REQUERY_S = 1.0
"""Query at least this often even when no commit was noticed (a belt to the braces)."""


class ChangeWatch:
    """Notices commits to one database, so that small reads run only after one (it never
    writes)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._feed: ChangeFeed | None = None
        self._version: int | None = None

    async def feed(self) -> ChangeFeed:
        """The open change feed (opened on first use); the store's client reads run on it."""
        if self._feed is None:
            feed = ChangeFeed(self._db)
            await feed.open()
            self._feed = feed
        return self._feed

    async def changed(self) -> bool:
        """Whether anything was committed since the last call (True on the first call)."""
        version = (await self.feed()).version()
        changed = version != self._version
        self._version = version
        return changed

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
        feed = await self.feed()
        feed.poll_s = min(feed.poll_s, poll_s)
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
            left = SAFETY_REQUERY_S / 4
            if deadline is not None:
                left = min(left, max(0.0, deadline - loop.time()))
            assert self._version is not None
            await feed.wait(self._version, left)

    async def close(self) -> None:
        """Close the watching connection."""
        if self._feed is not None:
            await self._feed.close()
            self._feed = None
