"""Ledger persistence: appending inside a write transaction, reading, verifying, exporting."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from quarterdeck.domain.ledger import ChainVerifier, LedgerEntry, VerifyResult, make_entry
from quarterdeck.store.database import Database
from quarterdeck.store.tables import LedgerHeadRow, LedgerRow, table_of

LEDGER = table_of(LedgerRow)
HEAD = table_of(LedgerHeadRow)
_COLUMNS = (
    "seq",
    "at",
    "workspace",
    "actor",
    "action",
    "subject_type",
    "subject_id",
    "from_state",
    "to_state",
    "payload",
    "prev_hash",
    "hash",
)


class LedgerHeadMoved(Exception):
    """Another writer appended to the ledger since this transaction read the head."""


class LedgerAppender:
    """Appends entries within one write transaction; the head row is read once and written once.

    Entries are buffered and inserted by :meth:`flush` just before commit. ``mark`` and
    ``rollback_to`` let the writer drop the entries of one failed operation.
    """

    def __init__(
        self, conn: Connection, head_seq: int, head_hash: str, *, notify: bool = False
    ) -> None:
        self._conn = conn
        self._start_seq = head_seq
        self.head_seq = head_seq
        self.head_hash = head_hash
        self._notify = notify
        self._pending: list[LedgerEntry] = []
        self.database_now: datetime | None = None
        """The database clock once the head was locked (PostgreSQL)."""

    @classmethod
    def open(
        cls, conn: Connection, known_head: tuple[int, str] | None = None, *, notify: bool = False
    ) -> LedgerAppender:
        """Start appending inside the caller's write transaction.

        On SQLite the write transaction already excludes every other writer, so a head
        remembered from this process's previous commit may be passed as ``known_head``; if
        another process appended since, :meth:`flush` raises :class:`LedgerHeadMoved` and the
        caller retries. On PostgreSQL the head row is read and locked here, first thing: every
        write transaction of every node queues on that row, so ``seq`` is gap-free in commit
        order, the chain is one chain, and a transaction sees no concurrent writer (the same
        guarantee SQLite's write lock gives). With ``notify``, :meth:`flush` announces the new
        head seq on the ``quarterdeck_ledger`` channel (delivered at commit).
        """
        if known_head is not None and conn.dialect.name == "sqlite":
            return cls(conn, *known_head)
        if conn.dialect.name == "postgresql":
            # The clock is read above the lock (clock_timestamp() outside the locking
            # subquery), not with now(): now() is the transaction's start, before any wait
            # for the head, so a writer that queued behind other nodes would stamp its
            # entries and lease deadlines in the past (times going backwards along seq).
            locked = select(HEAD.c.seq, HEAD.c.hash).where(HEAD.c.id == 1).with_for_update()
            head = locked.subquery("head")
            found = conn.execute(
                select(head.c.seq, head.c.hash, func.clock_timestamp().label("now"))
            ).one()
            appender = cls(conn, int(found.seq), str(found.hash), notify=notify)
            appender.database_now = found.now
            return appender
        row = conn.execute(
            select(HEAD.c.seq, HEAD.c.hash).where(HEAD.c.id == 1).with_for_update()
        ).one()
        return cls(conn, int(row.seq), str(row.hash))

    def append(
        self,
        *,
        at: str,
        workspace: str,
        actor: str,
        action: str,
        subject_type: str,
        subject_id: str,
        from_state: str | None = None,
        to_state: str | None = None,
        payload: dict[str, Any] | None = None,
    ) -> LedgerEntry:
        """Chain one entry onto the head; it is written with the transaction."""
        entry = make_entry(
            seq=self.head_seq + 1,
            prev_hash=self.head_hash,
            at=at,
            workspace=workspace,
            actor=actor,
            action=action,
            subject_type=subject_type,
            subject_id=subject_id,
            from_state=from_state,
            to_state=to_state,
            payload=payload,
        )
        self._pending.append(entry)
        self.head_seq = entry.seq
        self.head_hash = entry.hash
        return entry

    def mark(self) -> tuple[int, int, str]:
        """A point to roll the buffer back to."""
        return (len(self._pending), self.head_seq, self.head_hash)

    def rollback_to(self, mark: tuple[int, int, str]) -> None:
        """Forget entries appended after ``mark``."""
        del self._pending[mark[0] :]
        self.head_seq, self.head_hash = mark[1], mark[2]

    @property
    def pending(self) -> list[LedgerEntry]:
        """Entries appended in this transaction and not yet rolled back."""
        return list(self._pending)

    def flush(self) -> None:
        """Move the head row (compare-and-set on its previous seq), then insert the entries.

        Raises:
            LedgerHeadMoved: another writer appended since the head was read.
        """
        if not self._pending:
            return
        if self._conn.dialect.name == "postgresql":
            self._flush_postgres()
            return
        moved = self._conn.execute(
            update(HEAD)
            .where(HEAD.c.id == 1, HEAD.c.seq == self._start_seq)
            .values(seq=self.head_seq, hash=self.head_hash)
        )
        if moved.rowcount != 1:
            raise LedgerHeadMoved("the ledger head moved; the transaction must be retried")
        self._conn.execute(
            insert(LEDGER),
            [
                {
                    "seq": e.seq,
                    "at": e.at,
                    "workspace": e.workspace,
                    "actor": e.actor,
                    "action": e.action,
                    "subject_type": e.subject_type,
                    "subject_id": e.subject_id,
                    "from_state": e.from_state,
                    "to_state": e.to_state,
                    "payload": e.payload_json,
                    "prev_hash": e.prev_hash,
                    "hash": e.hash,
                }
                for e in self._pending
            ],
        )
        self._pending.clear()
        self._start_seq = self.head_seq

    def _flush_postgres(self) -> None:
        """:meth:`flush` in one statement and one round trip: the head's compare-and-set, the
        entries as arrays (``unnest``) inserted only if it held, and the notification."""
        params: dict[str, Any] = {
            "start": self._start_seq,
            "seq": self.head_seq,
            "hash": self.head_hash,
            "note": str(self.head_seq),
        }
        for column in _COLUMNS:
            attribute = "payload_json" if column == "payload" else column
            params[f"e_{column}"] = [getattr(e, attribute) for e in self._pending]
        row = self._conn.execute(_PG_FLUSH_NOTIFY if self._notify else _PG_FLUSH, params).one()
        if row[0] != 1:
            raise LedgerHeadMoved("the ledger head moved; the transaction must be retried")
        self._pending.clear()
        self._start_seq = self.head_seq


CHANGE_CHANNEL = "quarterdeck_ledger"
"""The PostgreSQL ``NOTIFY`` channel; each payload is the new ledger head seq."""
_PG_FLUSH_SQL = (
    "WITH moved AS (UPDATE ledger_head SET seq = :seq, hash = :hash WHERE id = 1 "
    "AND seq = :start RETURNING 1), added AS (INSERT INTO ledger ("
    + ", ".join(_COLUMNS)
    + ") SELECT * FROM unnest("
    + ", ".join(f"CAST(:e_{c} AS {'INTEGER' if c == 'seq' else 'TEXT'}[])" for c in _COLUMNS)
    + ") WHERE EXISTS (SELECT 1 FROM moved) RETURNING 1) SELECT (SELECT COUNT(*) FROM moved)"
)
_PG_FLUSH = text(_PG_FLUSH_SQL)
_PG_FLUSH_NOTIFY = text(_PG_FLUSH_SQL + f", pg_notify('{CHANGE_CHANNEL}', :note)")


async def ledger_head(conn: AsyncConnection) -> tuple[int, str]:
    """The recorded head ``(seq, hash)``."""
    row = (await conn.execute(select(HEAD.c.seq, HEAD.c.hash).where(HEAD.c.id == 1))).one()
    return int(row.seq), str(row.hash)


async def verify_ledger(db: Database, block: int = 20_000) -> VerifyResult:
    """Verify the whole chain as stored, against the recorded head, in one read snapshot.

    Runs in a worker thread on a plain driver connection (the loop stays responsive) and
    streams rows in blocks. Text damaged into invalid UTF-8 is re-read leniently so that it
    is reported at its seq rather than raised.
    """
    if db.is_postgres:
        return await _verify_postgres(db, block)
    return await asyncio.to_thread(db.run_read_sync, lambda conn: _verify_sync(conn, block))


async def _verify_postgres(db: Database, block: int) -> VerifyResult:
    """Stream the stored columns by seq in one snapshot; the chain is checked in Python."""
    verifier = ChainVerifier()
    query = text(
        f"SELECT {', '.join(_COLUMNS)} FROM ledger WHERE seq >= :low ORDER BY seq LIMIT :n"
    )
    async with db.read() as conn:
        head_row = (
            await conn.execute(select(HEAD.c.seq, HEAD.c.hash).where(HEAD.c.id == 1))
        ).first()
        low = 0
        while True:
            rows = [tuple(r) for r in (await conn.execute(query, {"low": low, "n": block})).all()]
            if not rows:
                break
            failure = verifier.feed(rows)
            if failure is not None:
                return failure
            low = int(rows[-1][0]) + 1
    head = None if head_row is None else (int(head_row.seq), str(head_row.hash))
    return verifier.finish(head)


_SQL_BODY = (
    "'{\"action\":' || json_quote(action) || ',\"actor\":' || json_quote(actor)"
    " || ',\"at\":' || json_quote(at) || ',\"from_state\":' || json_quote(from_state)"
    " || ',\"payload\":' || payload || ',\"seq\":' || seq"
    " || ',\"subject_id\":' || json_quote(subject_id)"
    " || ',\"subject_type\":' || json_quote(subject_type)"
    " || ',\"to_state\":' || json_quote(to_state) || ',\"workspace\":' || json_quote(workspace)"
    " || '}'"
)
"""An entry's canonical body built by SQLite (``json_quote`` escapes exactly as Python's
``ensure_ascii=False`` encoder does; a property test holds it to that), so verification reads
one string per entry instead of ten."""

_SELECT_BODIES = f"SELECT seq, {_SQL_BODY}, prev_hash, hash FROM ledger ORDER BY seq"
_SELECT_FROM = f"SELECT {', '.join(_COLUMNS)} FROM ledger WHERE seq >= ? ORDER BY seq"


def _verify_sync(conn: Connection, block: int) -> VerifyResult:
    verifier = ChainVerifier()
    driver: Any = conn.connection.driver_connection
    head, head_damage = _read_head(driver)
    recheck = False
    try:
        cursor = driver.execute(_SELECT_BODIES)
    except sqlite3.Error:
        cursor, recheck = None, True  # damage the fast query cannot even start on
    try:
        while cursor is not None:
            try:
                rows = cursor.fetchmany(block)
            except sqlite3.Error:
                recheck = True  # text damaged into invalid UTF-8, or retyped
                break
            if not rows:
                break
            if verifier.feed_bodies(rows) is not None:
                recheck = True
                break
    finally:
        if cursor is not None:
            cursor.close()
    if recheck:
        # Re-check from the first unverified entry, column by column: this names the precise
        # fault, and reads damaged values instead of failing on them.
        failure = _verify_rest_leniently(driver, verifier, block)
        if failure is not None:
            return failure
    if head_damage is not None:
        return VerifyResult(False, 0, "", first_bad_seq=verifier.expected - 1, reason=head_damage)
    return verifier.finish(head)


def _read_head(driver: Any) -> tuple[tuple[int, str] | None, str | None]:
    """The recorded head, or why it cannot be trusted (read leniently: it may be damaged)."""
    previous = driver.text_factory
    driver.text_factory = _lenient_text
    try:
        row = driver.execute("SELECT seq, hash FROM ledger_head WHERE id = 1").fetchone()
    finally:
        driver.text_factory = previous
    if row is None:
        return None, None
    seq, digest = row
    if type(seq) is not int or not isinstance(digest, str) or len(digest) != 64:
        return None, f"the recorded head is damaged (seq {seq!r}, hash {digest!r})"
    try:
        int(digest, 16)
    except ValueError:
        return None, "the recorded head is damaged (hash is not hexadecimal)"
    return (seq, digest), None


def _lenient_text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _verify_rest_leniently(driver: Any, verifier: ChainVerifier, block: int) -> VerifyResult | None:
    """Check from the first unverified seq to the end using the stored columns, decoding text
    with surrogate escapes so that damaged bytes surface as a failure at their seq."""
    previous = driver.text_factory
    driver.text_factory = _lenient_text
    try:
        cursor = driver.execute(_SELECT_FROM, (verifier.expected,))
        while rows := cursor.fetchmany(block):
            failure = verifier.feed(rows)
            if failure is not None:
                return failure
        return None
    finally:
        driver.text_factory = previous


async def iter_entries(
    db: Database, *, since: int = 0, workspace: str | None = None, block: int = 5_000
) -> AsyncIterator[dict[str, Any]]:
    """Yield entries with ``seq > since`` in seq order, as export dicts, paging by seq."""
    last = since
    while True:
        query = select(LEDGER).where(LEDGER.c.seq > last).order_by(LEDGER.c.seq).limit(block)
        if workspace is not None:
            query = query.where(LEDGER.c.workspace == workspace)
        async with db.read() as conn:
            rows = (await conn.execute(query)).all()
        if not rows:
            return
        for row in rows:
            yield {
                "seq": row.seq,
                "at": row.at,
                "workspace": row.workspace,
                "actor": row.actor,
                "action": row.action,
                "subject_type": row.subject_type,
                "subject_id": row.subject_id,
                "from_state": row.from_state,
                "to_state": row.to_state,
                "payload": json.loads(row.payload),
                "prev_hash": row.prev_hash,
                "hash": row.hash,
            }
        last = rows[-1].seq
