"""Receipt persistence: the batched, database-deduplicated insert behind ingest.

Deduplication is the unique index ``(workspace, dedupe_key)``: rows go in with
``ON CONFLICT DO NOTHING``, and whatever did not land under its own fresh id is a duplicate of
the receipt that holds the key. Accepted receipts are keyed ``key:<idempotency_key>``; rejected
ones ``raw:<sha256 of the raw bytes>``, so an identical bad input is one receipt however often
it is sent, while a corrected envelope with the same idempotency key is still accepted.

A rejected receipt keeps at most :data:`RAW_KEEP_BYTES` of its input, with the input's full
size (``raw_size``) and the SHA-256 of the whole (its dedupe key); and a workspace keeps at most
:data:`REJECTED_QUOTA_BYTES` of raw rejected input in all:
beyond it a rejected receipt keeps only the size and the hash, and its reasons say so.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

from sqlalchemy import ARRAY, Connection, String, bindparam, text

from quarterdeck.domain.ids import new_id
from quarterdeck.store.tables import ReceiptRow, table_of
from quarterdeck.store.writer import WriteTxn

RECEIPTS = table_of(ReceiptRow)
RAW_KEEP_BYTES = 64 * 1024
"""Raw bytes a rejected receipt keeps (the head of its input)."""
REJECTED_QUOTA_BYTES = 64 * 1024 * 1024
"""Raw bytes of rejected input a workspace keeps in all."""
UNKNOWN_WORKSPACE = "_unknown"
"""Workspace of a rejected receipt whose workspace could not be read (never a valid slug)."""

ReceiptStatus = Literal["accepted", "rejected"]
Outcome = Literal["accepted", "duplicate", "rejected"]


class ReceiptDraft(NamedTuple):
    """A receipt ready to insert: exactly the table's columns, in insert order.

    ``id`` is fresh and stands only if the key is new; ``errors`` is a JSON array of reasons.
    """

    id: str
    workspace: str
    dedupe_key: str
    status: ReceiptStatus
    received_at: str
    envelope_id: str | None
    idempotency_key: str | None
    correlation_id: str | None
    causation_id: str | None
    schema_version: int | None
    kind: str | None
    payload: str | None
    submitted_at: str | None
    errors: str
    raw: bytes | None
    raw_size: int | None
    produced_type: str | None
    produced_id: str | None
    version: int


class IngestResult(NamedTuple):
    """The answer for one input: what happened and the receipt that now stands for it."""

    status: Outcome
    receipt: str
    errors: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``status``, ``receipt``, ``errors``."""
        return {"status": self.status, "receipt": self.receipt, "errors": list(self.errors)}


_SELECT_OURS = "SELECT id FROM receipts WHERE id IN (SELECT value FROM json_each(?))"
"""Which of the given receipt ids (a JSON array) exist: the drafts that landed."""

_SELECT_HOLDERS = """
SELECT id, workspace, dedupe_key, status, errors, kind, schema_version, payload FROM receipts
WHERE workspace = ? AND dedupe_key IN (SELECT value FROM json_each(?))
"""
"""The receipts holding the given dedupe keys (a JSON array) in one workspace."""

_COUNT_DUPLICATES = """
INSERT INTO receipt_counters (workspace, duplicates) VALUES (?, ?)
ON CONFLICT (workspace) DO UPDATE SET duplicates = receipt_counters.duplicates + excluded.duplicates
"""
"""Add to a workspace's count of acknowledged duplicate deliveries."""

_REJECTED_USED = text(
    "SELECT COALESCE(SUM(LENGTH(raw)), 0) FROM receipts "
    "WHERE workspace = :w AND status = 'rejected' AND raw IS NOT NULL"
)
"""The raw bytes a workspace's rejected receipts keep."""


INSERT_SQL = (
    f"INSERT INTO receipts ({', '.join(ReceiptDraft._fields)}) "
    f"VALUES ({', '.join('?' for _ in ReceiptDraft._fields)}) "
    "ON CONFLICT (workspace, dedupe_key) DO NOTHING"
)
"""Insert-or-ignore of one draft; drafts are handed to executemany as they are."""


_PG_HOLDERS = text(
    "SELECT id, workspace, dedupe_key, status, errors, kind, schema_version, payload "
    "FROM receipts WHERE workspace = :w AND dedupe_key = ANY(:keys)"
).bindparams(bindparam("keys", type_=ARRAY(String)))
_PG_COUNT_DUPLICATES = text(
    "INSERT INTO receipt_counters (workspace, duplicates) VALUES (:w, :n) "
    "ON CONFLICT (workspace) DO UPDATE "
    "SET duplicates = receipt_counters.duplicates + excluded.duplicates"
)


_PG_ARRAY_TYPES = {"schema_version": "INTEGER", "raw": "BYTEA", "raw_size": "INTEGER",
                   "version": "INTEGER"}  # fmt: skip
_PG_INSERT_ARRAYS = text(
    f"INSERT INTO receipts ({', '.join(ReceiptDraft._fields)}) SELECT * FROM unnest("
    + ", ".join(f"CAST(:{f} AS {_PG_ARRAY_TYPES.get(f, 'TEXT')}[])" for f in ReceiptDraft._fields)
    + ") ON CONFLICT (workspace, dedupe_key) DO NOTHING RETURNING id"
)
"""Insert-or-ignore of every draft in one statement over column arrays, in input order (no
per-row parameter processing)."""


def _insert_postgres(conn: Connection, fresh: Sequence[ReceiptDraft]) -> set[str]:
    """Insert-or-ignore in input order; the ids returned are the drafts that landed."""
    columns = dict(zip(ReceiptDraft._fields, map(list, zip(*fresh, strict=True)), strict=True))
    result = conn.execute(_PG_INSERT_ARRAYS, columns)
    return set(result.scalars().all())


class _Holder(NamedTuple):
    """The receipt that holds a dedupe key (the columns of ``_SELECT_HOLDERS``, in order)."""

    id: str
    workspace: str
    dedupe_key: str
    status: str
    errors: str
    kind: str | None
    schema_version: int | None
    payload: str | None


Holder = _Holder | ReceiptDraft
"""A receipt holding a dedupe key: read back from the store, or a draft this process stored."""


class KnownKeys:
    """Dedupe keys this process has seen committed, with the receipt holding each (an LRU).

    Receipts are never deleted and never change the columns kept here, so a key found here is
    certainly a duplicate: its drafts skip the insert attempt. Every key not found here still
    goes through the database's unique index, which alone decides what is new. Entries are
    learned only from committed operations (see :func:`store_receipts`' ``learned``).
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, str], Holder] = OrderedDict()

    def get(self, key: tuple[str, str]) -> Holder | None:
        """The holder of ``key``, if known."""
        holder = self._items.get(key)
        if holder is not None:
            self._items.move_to_end(key)
        return holder

    def learn(self, holders: Mapping[tuple[str, str], Holder]) -> None:
        """Remember holders from a committed operation, forgetting the least recent."""
        self._items.update(holders)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)


def quota_note(quota: int) -> str:
    """The reason added to a rejected receipt whose raw bytes were not kept."""
    return (
        f"raw: not kept, the workspace's quota of {quota} bytes of rejected input is used up "
        "(the size and SHA-256 are)"
    )


def _hold_to_quota(
    conn: Connection, fresh: Sequence[ReceiptDraft], quota: int
) -> list[ReceiptDraft]:
    """The drafts, those rejected ones whose raw bytes would pass their workspace's quota
    stripped of them (their size and hash stay) with a reason saying so."""
    used: dict[str, int] = {}
    held: list[ReceiptDraft] = []
    for draft in fresh:
        if draft.status != "rejected" or not draft.raw:
            held.append(draft)
            continue
        if draft.workspace not in used:
            found = conn.execute(_REJECTED_USED, {"w": draft.workspace}).scalar()
            used[draft.workspace] = int(found or 0)
        if used[draft.workspace] + len(draft.raw) <= quota:
            used[draft.workspace] += len(draft.raw)
            held.append(draft)
            continue
        reasons = [*json.loads(draft.errors), quota_note(quota)]
        held.append(draft._replace(raw=None, errors=json.dumps(reasons, ensure_ascii=False)))
    return held


def _holder(draft: ReceiptDraft) -> Holder:
    """What a landed draft leaves in :class:`KnownKeys`: never a rejected input's bytes."""
    if draft.status == "accepted":
        return draft
    return _Holder(
        draft.id, draft.workspace, draft.dedupe_key, draft.status, draft.errors, draft.kind,
        draft.schema_version, draft.payload,
    )  # fmt: skip


def store_receipts(
    txn: WriteTxn,
    drafts: Sequence[ReceiptDraft],
    known: KnownKeys | None = None,
    learned: dict[tuple[str, str], Holder] | None = None,
    *,
    rejected_quota: int = REJECTED_QUOTA_BYTES,
) -> list[IngestResult]:
    """Insert every new draft, acknowledge every duplicate, and put the batch on the ledger.

    The unique index decides: each row is inserted with ``ON CONFLICT DO NOTHING`` (in input
    order, so the first of several equal keys in a batch wins); the rows that now carry our
    fresh ids are the new receipts, and every other draft is a duplicate of the receipt that
    holds its key (counted per workspace in ``receipt_counters``; a re-sent rejected input is
    answered as rejected again, with its original receipt and reasons). Drafts whose key is in
    ``known`` are duplicates without an insert attempt. The holders this operation met are put
    in ``learned``, for the caller to pass to ``known`` once the transaction committed.

    Returns:
        One :class:`IngestResult` per draft, in the drafts' order.
    """
    if not drafts:
        return []
    conn = txn.conn
    holders: dict[tuple[str, str], Holder] = {}
    fresh: list[ReceiptDraft] = []
    for draft in drafts:
        key = (draft.workspace, draft.dedupe_key)
        holder = known.get(key) if known is not None else None
        if holder is None:
            fresh.append(draft)
        else:
            holders[key] = holder

    if any(draft.status == "rejected" for draft in fresh):
        fresh = _hold_to_quota(conn, fresh, rejected_quota)
        by_id = {draft.id: draft for draft in fresh}
        drafts = [by_id.get(draft.id, draft) for draft in drafts]

    postgres = conn.dialect.name == "postgresql"
    inserted: set[str] = set()
    if fresh and postgres:
        inserted = _insert_postgres(conn, fresh)
    elif fresh:
        written = conn.exec_driver_sql(INSERT_SQL, fresh).rowcount
        if written == len(fresh):
            inserted = {d.id for d in fresh}  # SQLite counts executemany's rows exactly
        elif written:
            ids = json.dumps([d.id for d in fresh])
            inserted = set(conn.exec_driver_sql(_SELECT_OURS, (ids,)).scalars())

    duplicates: dict[str, dict[str, None]] = {}
    for draft in fresh:
        key = (draft.workspace, draft.dedupe_key)
        if draft.id not in inserted and key not in holders:
            duplicates.setdefault(draft.workspace, {})[draft.dedupe_key] = None
    for workspace, keys in duplicates.items():
        if postgres:
            found = conn.execute(_PG_HOLDERS, {"w": workspace, "keys": list(keys)})
            for holder in map(_Holder._make, found.all()):
                holders[(holder.workspace, holder.dedupe_key)] = holder
            continue
        # The driver's own cursor: plain tuples, no result-row machinery on this hot path.
        cursor = conn.connection.driver_connection.execute(  # type: ignore[union-attr]
            _SELECT_HOLDERS, (workspace, json.dumps(list(keys)))
        )
        for holder in map(_Holder._make, cursor.fetchall()):
            holders[(holder.workspace, holder.dedupe_key)] = holder

    results: list[IngestResult] = []
    summaries: dict[str, dict[str, list[str]]] = {}
    for draft in drafts:
        summary = summaries.setdefault(
            draft.workspace, {"accepted": [], "rejected": [], "duplicate": []}
        )
        if draft.id in inserted:
            reasons = () if draft.status == "accepted" else tuple(json.loads(draft.errors))
            results.append(IngestResult(draft.status, draft.id, reasons))
            summary[draft.status].append(draft.id)
            holders[(draft.workspace, draft.dedupe_key)] = _holder(draft)
        else:
            holder = holders[(draft.workspace, draft.dedupe_key)]
            result = _duplicate(draft, holder)
            results.append(result)
            if result.status == "duplicate":
                summary["duplicate"].append(holder.id)
    acknowledged = [(w, len(s["duplicate"])) for w, s in summaries.items() if s["duplicate"]]
    if acknowledged and postgres:
        conn.execute(_PG_COUNT_DUPLICATES, [{"w": w, "n": n} for w, n in acknowledged])
    elif acknowledged:
        conn.exec_driver_sql(_COUNT_DUPLICATES, acknowledged)

    for workspace, summary in summaries.items():
        txn.ledger.append(
            at=txn.at,
            workspace=workspace,
            actor="ingest",
            action="receipts.recorded",
            subject_type="receipt_batch",
            subject_id=new_id(),
            payload={name: ids for name, ids in summary.items() if ids},
        )
    if learned is not None:
        learned.update(holders)
    return results


def _duplicate(draft: ReceiptDraft, holder: Holder) -> IngestResult:
    if holder.status == "rejected":
        return IngestResult("rejected", holder.id, tuple(json.loads(holder.errors)))
    if (holder.kind, holder.schema_version, holder.payload) != (
        draft.kind,
        draft.schema_version,
        draft.payload,
    ):
        note = "idempotency_key: already used for different content; the original receipt stands"
        return IngestResult("duplicate", holder.id, (note,))
    return IngestResult("duplicate", holder.id, ())
