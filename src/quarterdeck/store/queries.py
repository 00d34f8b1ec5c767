"""Read-side queries for status, listings and item detail. Reads never take the write lock."""

from __future__ import annotations

import base64
import json
from typing import Any

from sqlalchemy import Table, and_, func, or_, select

from quarterdeck.domain.states import MACHINES, Kind
from quarterdeck.store.database import Database
from quarterdeck.store.ledger import LEDGER, ledger_head
from quarterdeck.store.receipts import RECEIPTS
from quarterdeck.store.tables import STATEFUL_TABLES, ReceiptCounterRow, table_of

COUNTERS = table_of(ReceiptCounterRow)

ITEM_TABLES: dict[str, Table] = {kind: table_of(model) for kind, model in STATEFUL_TABLES.items()}
LISTABLE = ("receipts", "turns", "missions", "sessions", "approvals", "alerts")


async def status(db: Database, workspace: str | None) -> dict[str, Any]:
    """Counts by state for every kind, and the ledger's size and head.

    Args:
        workspace: count only this workspace's items; None counts every workspace.
    """
    async with db.read() as conn:
        query = select(RECEIPTS.c.status, func.count())
        counters = select(func.coalesce(func.sum(COUNTERS.c.duplicates), 0))
        if workspace is not None:
            query = query.where(RECEIPTS.c.workspace == workspace)
            counters = counters.where(COUNTERS.c.workspace == workspace)
        receipts = {"accepted": 0, "duplicate": 0, "rejected": 0}
        for state, count in (await conn.execute(query.group_by(RECEIPTS.c.status))).all():
            receipts[state] = receipts.get(state, 0) + int(count)
        receipts["duplicate"] = int((await conn.execute(counters)).scalar_one())
        result: dict[str, Any] = {"receipts": receipts}
        for kind, table in ITEM_TABLES.items():
            counts = dict.fromkeys(MACHINES[Kind(kind)].states, 0)
            query = select(table.c.state, func.count())
            if workspace is not None:
                query = query.where(table.c.workspace == workspace)
            for state, count in (await conn.execute(query.group_by(table.c.state))).all():
                counts[state] = int(count)
            result[f"{kind}s"] = counts
        seq, head = await ledger_head(conn)
        result["ledger"] = {"entries": seq, "head": head}
    return result


def _receipt_dict(row: Any) -> dict[str, Any]:
    raw: bytes | None = row.raw
    item: dict[str, Any] = {
        "type": "receipt",
        "id": row.id,
        "workspace": row.workspace,
        "status": row.status,
        "received_at": row.received_at,
        "envelope": {
            "id": row.envelope_id,
            "idempotency_key": row.idempotency_key,
            "correlation_id": row.correlation_id,
            "causation_id": row.causation_id,
            "schema_version": row.schema_version,
            "kind": row.kind,
            "payload": json.loads(row.payload) if row.payload is not None else None,
            "submitted_at": row.submitted_at,
        },
        "errors": json.loads(row.errors),
        "produced": (
            {"type": row.produced_type, "id": row.produced_id}
            if row.produced_id is not None
            else None
        ),
        "version": row.version,
    }
    if raw is not None:
        item["raw_size"] = row.raw_size
        try:
            item["raw"] = raw.decode("utf-8")
        except UnicodeDecodeError:
            item["raw_base64"] = base64.b64encode(raw).decode("ascii")
    return item


def _item_dict(kind: str, row: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"type": kind}
    for key, value in row._mapping.items():
        item[key] = json.loads(value) if key == "data" else value
    return item


async def list_items(
    db: Database, kind: str, *, workspace: str | None, state: str | None, limit: int | None
) -> list[dict[str, Any]]:
    """Items of one kind, newest first.

    Args:
        kind: one of :data:`LISTABLE`.
        workspace: only this workspace's items; None for every workspace.
        state: only items in this state (a receipt's status for receipts).
        limit: at most this many; None for all.
    """
    if kind == "receipts":
        table, state_column = RECEIPTS, RECEIPTS.c.status
    else:
        table = ITEM_TABLES[kind.removesuffix("s")]
        state_column = table.c.state
    query = select(table).order_by(table.c.id.desc())
    if workspace is not None:
        query = query.where(table.c.workspace == workspace)
    if state is not None:
        query = query.where(state_column == state)
    if limit is not None:
        query = query.limit(limit)
    async with db.read() as conn:
        rows = (await conn.execute(query)).all()
    if kind == "receipts":
        return [_receipt_dict(row) for row in rows]
    return [_item_dict(kind.removesuffix("s"), row) for row in rows]


async def get_item(db: Database, item_id: str, *, workspace: str | None) -> dict[str, Any] | None:
    """One item of any kind by id, with its ledger history; None if not found in scope."""
    async with db.read() as conn:
        query = select(RECEIPTS).where(RECEIPTS.c.id == item_id)
        if workspace is not None:
            query = query.where(RECEIPTS.c.workspace == workspace)
        row = (await conn.execute(query)).first()
        item: dict[str, Any] | None = _receipt_dict(row) if row is not None else None
        if item is None:
            for kind, table in ITEM_TABLES.items():
                query = select(table).where(table.c.id == item_id)
                if workspace is not None:
                    query = query.where(table.c.workspace == workspace)
                row = (await conn.execute(query)).first()
                if row is not None:
                    item = _item_dict(kind, row)
                    break
        if item is None:
            return None
        mentioned = LEDGER.c.subject_id == item_id
        if item["type"] == "receipt":
            # Receipts are recorded by batch: find the batch entries that name this one.
            mentioned = or_(
                mentioned,
                and_(
                    LEDGER.c.subject_type == "receipt_batch",
                    LEDGER.c.payload.contains(f'"{item_id}"'),
                ),
            )
        history = await conn.execute(
            select(
                LEDGER.c.seq,
                LEDGER.c.at,
                LEDGER.c.actor,
                LEDGER.c.action,
                LEDGER.c.from_state,
                LEDGER.c.to_state,
            )
            .where(mentioned)
            .order_by(LEDGER.c.seq)
        )
        item["history"] = [dict(r._mapping) for r in history.all()]
    return item
