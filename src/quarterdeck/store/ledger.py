"""Ledger persistence: appending inside a write transaction, reading, verifying, exporting."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

from sqlalchemy import Connection, bindparam, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from quarterdeck.domain.canonical import canonical_text
from quarterdeck.domain.ledger import (
    ChainVerifier,
    VerifyResult,
    body_parts,
    chain_hash,
    join_body,
)
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


_MOVE_HEAD = (
    update(HEAD)
    .where(HEAD.c.id == 1, HEAD.c.seq == bindparam("start"))
    .values(seq=bindparam("new_seq"), hash=bindparam("new_hash"))
)
"""Move the head row from ``start`` (compare-and-set); built once, as building and keying a
statement costs more than running it."""
_INSERT_ENTRIES = insert(LEDGER)


class LedgerHeadMoved(Exception):
    """Another writer appended to the ledger since this transaction read the head."""


class _Draft(NamedTuple):
    """An entry appended in this transaction: its columns but ``seq``, ``prev_hash`` and
    ``hash``, which :meth:`LedgerAppender.flush` settles (``at`` may move forward then), and
    its canonical body around ``at`` and ``seq`` (:func:`body_parts`)."""

    at: str
    columns: tuple[str, str, str, str, str, str | None, str | None, str]
    """workspace, actor, action, subject_type, subject_id, from_state, to_state, payload."""
    body: tuple[str, str, str]


class LedgerAppender:
    """Appends entries within one write transaction; the head row is written once, at flush.

    Entries are buffered and chained onto the head by :meth:`flush` just before commit.
    ``mark`` and ``rollback_to`` let the writer drop the entries of one failed operation.
    """

    def __init__(
        self, conn: Connection, head: tuple[int, str] | None, *, notify: bool = False
    ) -> None:
        self._conn = conn
        self._start = head
        self.head_seq, self.head_hash = head if head is not None else (-1, "")
        self._notify = notify
        self._drafts: list[_Draft] = []

    @classmethod
    def open(
        cls, conn: Connection, known_head: tuple[int, str] | None = None, *, notify: bool = False
    ) -> LedgerAppender:
        """Start appending inside the caller's write transaction.

        On SQLite the write transaction already excludes every other writer, so a head
        remembered from this process's previous commit may be passed as ``known_head``; if
        another process appended since, :meth:`flush` raises :class:`LedgerHeadMoved` and the
        caller retries.

        On PostgreSQL, where write transactions of several nodes may run side by side (see
        :func:`quarterdeck.store.database.begin_write`), nothing is read here: the head row is
        locked only in :meth:`flush`, which chains the entries onto it. So ``seq`` is gap-free
        in commit order and the chain is one chain. With ``notify``, :meth:`flush` announces
        the new head seq on the ``quarterdeck_ledger`` channel (delivered at commit).
        """
        if conn.dialect.name == "postgresql":
            return cls(conn, None, notify=notify)
        if known_head is not None:
            return cls(conn, known_head)
        row = conn.execute(select(HEAD.c.seq, HEAD.c.hash).where(HEAD.c.id == 1)).one()
        return cls(conn, (int(row.seq), str(row.hash)))

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
    ) -> None:
        """Add one entry; it is chained and written with the transaction."""
        columns = (workspace, actor, action, subject_type, subject_id, from_state, to_state,
                   canonical_text(payload or {}))  # fmt: skip
        self._drafts.append(_Draft(at, columns, body_parts(*columns)))

    def mark(self) -> int:
        """A point to roll the buffer back to."""
        return len(self._drafts)

    def rollback_to(self, mark: int) -> None:
        """Forget entries appended after ``mark``."""
        del self._drafts[mark:]

    def flush(self) -> None:
        """Chain the entries onto the head, move the head row (compare-and-set on its
        previous seq), then insert the entries.

        Raises:
            LedgerHeadMoved: (SQLite) another writer appended since the head was read.
        """
        if not self._drafts:
            return
        if self._conn.dialect.name == "postgresql":
            self._flush_postgres()
            return
        assert self._start is not None
        rows = self._chain(self._start, None)
        moved = self._conn.execute(
            _MOVE_HEAD,
            {"start": self._start[0], "new_seq": self.head_seq, "new_hash": self.head_hash},
        )
        if moved.rowcount != 1:
            raise LedgerHeadMoved("the ledger head moved; the transaction must be retried")
        self._conn.execute(_INSERT_ENTRIES, [dict(zip(_COLUMNS, row, strict=True)) for row in rows])
        self._drafts.clear()
        self._start = (self.head_seq, self.head_hash)

    def _chain(self, head: tuple[int, str], floor: str | None) -> list[tuple[Any, ...]]:
        """The drafts as ledger rows (in ``_COLUMNS`` order) following ``head``; no ``at``
        earlier than ``floor`` or than the entry before it."""
        seq, prev = head
        rows = []
        for at, columns, parts in self._drafts:
            seq += 1
            if floor is not None and at < floor:
                at = floor
            floor = at
            digest = chain_hash(prev, join_body(parts, at, seq))
            rows.append((seq, at, *columns, prev, digest))
            prev = digest
        self.head_seq, self.head_hash = seq, prev
        return rows

    def _flush_postgres(self) -> None:
        """:meth:`flush` on PostgreSQL: lock the head row (held to commit), read its entry's
        time, chain the entries onto it, then write them, move the head and notify
        in one statement.

        An entry's ``at`` is its transaction's time, except that it is never earlier than the
        entry before it: a shared transaction that started earlier may chain after one that
        started later, and then takes that one's time.
        """
        head = self._conn.execute(_PG_LOCK_HEAD).one()
        start = (int(head.seq), str(head.hash))
        # Read in a statement of its own: the locking one's snapshot predates the commit it
        # waited for, so it would not see that commit's entries.
        floor = self._conn.execute(_PG_ENTRY_AT, {"seq": start[0]}).scalar()
        rows = self._chain(start, floor)
        params: dict[str, Any] = {
            "start": start[0],
            "seq": self.head_seq,
            "hash": self.head_hash,
            "note": str(self.head_seq),
        }
        for column, values in zip(_COLUMNS, zip(*rows, strict=True), strict=True):
            params[f"e_{column}"] = list(values)
        row = self._conn.execute(_PG_FLUSH_NOTIFY if self._notify else _PG_FLUSH, params).one()
        if row[0] != 1:
            raise LedgerHeadMoved("the ledger head moved under its lock")
        self._drafts.clear()
        self._start = (self.head_seq, self.head_hash)


_PG_LOCK_HEAD = text("SELECT seq, hash FROM ledger_head WHERE id = 1 FOR UPDATE")
_PG_ENTRY_AT = text("SELECT at FROM ledger WHERE seq = :seq")
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
