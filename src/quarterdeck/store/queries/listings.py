"""Counts and listings: status by state, items of one kind newest first, open approvals, and
the selects and state groups every read of them shares."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Any

from sqlalchemy import ColumnElement, Select, Table, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from quarterdeck.domain.envelope import RUNTIME_WORKSPACE
from quarterdeck.domain.hooks import hook_origin
from quarterdeck.domain.states import APPROVAL_OPEN, MACHINES, Kind
from quarterdeck.store.database import Database
from quarterdeck.store.ledger import ledger_head
from quarterdeck.store.receipts import RECEIPTS
from quarterdeck.store.tables import STATEFUL_TABLES, ReceiptCounterRow, table_of

COUNTERS = table_of(ReceiptCounterRow)

ITEM_TABLES: dict[str, Table] = {kind: table_of(model) for kind, model in STATEFUL_TABLES.items()}
LISTABLE = ("receipts", "turns", "missions", "sessions", "approvals", "alerts")

APPROVALS = ITEM_TABLES["approval"]


def in_scope(table: Table, workspace: str | None) -> ColumnElement[bool] | None:
    """The condition that keeps ``table``'s rows to ``workspace``'s view (None: every
    workspace). The runtime's own items (sessions, alerts about lanes, the policy file and
    SLOs) are part of every workspace's view."""
    if workspace is None:
        return None
    return table.c.workspace.in_((workspace, RUNTIME_WORKSPACE))


def columns_of(table: Table, names: str) -> list[Any]:
    """``table``'s columns named in ``names`` (separated by spaces), in that order."""
    return [table.c[name] for name in names.split()]


def newest_first(
    table: Table,
    columns: list[Any] | None = None,
    *,
    workspace: str | None = None,
    state: str | None = None,
    limit: int | None = None,
) -> Select[Any]:
    """``columns`` (every column when None) of ``table``'s rows, newest first.

    Args:
        workspace: only this workspace's rows and the runtime's own; None for every workspace.
        state: only rows in this state (a receipt's status for receipts).
        limit: at most this many; None for all.
    """
    query = select(*(columns or table.c)).order_by(table.c.id.desc())
    if (scope := in_scope(table, workspace)) is not None:
        query = query.where(scope)
    if state is not None:
        query = query.where((table.c.status if table is RECEIPTS else table.c.state) == state)
    if limit is not None:
        query = query.limit(limit)
    return query


def open_approvals_select(*columns: Any, workspace: str | None = None) -> Select[Any]:
    """``columns`` of the approvals still waiting for a decision (in ``workspace`` only, unless
    None)."""
    query = (
        select(*columns).select_from(APPROVALS).where(APPROVALS.c.state.in_(sorted(APPROVAL_OPEN)))
    )
    if workspace is not None:
        query = query.where(APPROVALS.c.workspace == workspace)
    return query


async def state_counts(
    conn: AsyncConnection, table: Table, *, workspace: str | None = None
) -> dict[str, int]:
    """How many of ``table``'s items are in each state (states with none are left out), in
    ``workspace``'s view (None: every workspace)."""
    query = select(table.c.state, func.count())
    if (scope := in_scope(table, workspace)) is not None:
        query = query.where(scope)
    rows = (await conn.execute(query.group_by(table.c.state))).all()
    return {str(state): int(count) for state, count in rows}


async def status(db: Database, workspace: str | None) -> dict[str, Any]:
    """Counts by state for every kind, and the ledger's size and head.

    Args:
        workspace: count only this workspace's items and the runtime's own; None counts
            every workspace.
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
            counts.update(await state_counts(conn, table, workspace=workspace))
            result[f"{kind}s"] = counts
        seq, head = await ledger_head(conn)
        result["ledger"] = {"entries": seq, "head": head}
    return result


def receipt_dict(row: Any) -> dict[str, Any]:
    """A receipt row as the CLI and the console show it (its envelope, its raw bytes as text
    or base64)."""
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


_JSON_COLUMNS = frozenset({"data", "input", "budget", "deliverable", "result"})


def item_dict(kind: str, row: Any) -> dict[str, Any]:
    """An item row of ``kind`` as a dict, its JSON columns decoded."""
    mapping: Mapping[str, Any] = row._mapping
    item: dict[str, Any] = {"type": kind}
    for key, value in mapping.items():
        item[key] = json.loads(value) if key in _JSON_COLUMNS and value is not None else value
    return item


async def list_items(
    db: Database, kind: str, *, workspace: str | None, state: str | None, limit: int | None
) -> list[dict[str, Any]]:
    """Items of one kind, newest first.

    Args:
        kind: one of :data:`LISTABLE`.
        workspace: only this workspace's items and the runtime's own; None for every
            workspace.
        state: only items in this state (a receipt's status for receipts).
        limit: at most this many; None for all.
    """
    table = RECEIPTS if kind == "receipts" else ITEM_TABLES[kind.removesuffix("s")]
    query = newest_first(table, workspace=workspace, state=state, limit=limit)
    async with db.read() as conn:
        rows = (await conn.execute(query)).all()
    if kind == "receipts":
        return [receipt_dict(row) for row in rows]
    return [item_dict(kind.removesuffix("s"), row) for row in rows]


_CLI_APPROVAL_COLUMNS = columns_of(
    APPROVALS,
    "id workspace state kind tool lane args approver level deadline_at snoozed_until claimed_by "
    "claim_expires_at requested_by created_at",
)


async def open_approvals(
    db: Database,
    workspace: str | None,
    *,
    lane: str | None = None,
    tool: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Approvals still waiting for a decision (pending or escalated), nearest deadline first.

    Args:
        workspace: only this workspace's; None for every workspace.
        lane, tool: only those whose lane / tool matches this glob (case-sensitive).
        limit: at most this many; None for all.
    """
    query = open_approvals_select(
        *_CLI_APPROVAL_COLUMNS, APPROVALS.c.data, workspace=workspace
    ).order_by(APPROVALS.c.deadline_at, APPROVALS.c.id)
    async with db.read() as conn:
        rows = (await conn.execute(query)).all()
    result: list[dict[str, Any]] = []
    for row in rows:
        if lane is not None and not fnmatchcase(row.lane or "", lane):
            continue
        if tool is not None and not fnmatchcase(row.tool or "", tool):
            continue
        item = dict(row._mapping)
        item.pop("data", None)
        item.update(hook_origin(json.loads(row.data or "{}")))  # an agent CLI's session, cwd
        item["args"] = json.loads(row.args) if row.args else {}
        result.append(item)
        if limit is not None and len(result) >= limit:
            break
    return result
