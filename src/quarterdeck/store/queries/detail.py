"""One item by id with its ledger history (and, for an approval, what a person needs to
decide it)."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import and_, or_, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from quarterdeck.store.database import Database
from quarterdeck.store.ledger import LEDGER
from quarterdeck.store.queries.listings import ITEM_TABLES, in_scope, item_dict, receipt_dict
from quarterdeck.store.receipts import RECEIPTS

APPROVAL_EVENTS = 20
"""Recent events of the turn shown with an approval."""


async def _approval_context(conn: AsyncConnection, item: dict[str, Any]) -> dict[str, Any]:
    """What a person needs to decide an approval: the decision that asked (rule, rule trace,
    policy hash), the turn's recent events and the cost so far."""
    decision = (
        await conn.execute(
            text(
                "SELECT id, outcome, verdict, rule, trace, policy_hash, estimated_cost "
                "FROM decisions WHERE id = :d"
            ),
            {"d": item.get("decision_id")},
        )
    ).first()
    turn_id = item.get("turn_id")
    events: list[dict[str, Any]] = []
    cost = None
    if turn_id:
        rows = await conn.execute(
            text(
                "SELECT at, type, data FROM mission_events WHERE turn_id = :t "
                "ORDER BY id DESC LIMIT :n"
            ),
            {"t": turn_id, "n": APPROVAL_EVENTS},
        )
        events = [
            {"at": r.at, "type": r.type, "data": json.loads(r.data)} for r in reversed(rows.all())
        ]
        cost = (
            await conn.execute(
                text(
                    "SELECT COALESCE(SUM(estimated_cost), 0) FROM decisions "
                    "WHERE turn_id = :t AND verdict = 'allow'"
                ),
                {"t": turn_id},
            )
        ).scalar()
    return {
        "decision": None
        if decision is None
        else {
            "id": decision.id,
            "outcome": decision.outcome,
            "verdict": decision.verdict,
            "rule": decision.rule,
            "trace": json.loads(decision.trace),
            "policy_hash": decision.policy_hash,
            "estimated_cost": decision.estimated_cost,
        },
        "recent_events": events,
        "turn_cost": cost,
    }


async def get_item(db: Database, item_id: str, *, workspace: str | None) -> dict[str, Any] | None:
    """One item of any kind by id, with its ledger history; None if not found in scope."""
    async with db.read() as conn:
        query = select(RECEIPTS).where(RECEIPTS.c.id == item_id)
        if workspace is not None:
            query = query.where(RECEIPTS.c.workspace == workspace)
        row = (await conn.execute(query)).first()
        item: dict[str, Any] | None = receipt_dict(row) if row is not None else None
        if item is None:
            for kind, table in ITEM_TABLES.items():
                query = select(table).where(table.c.id == item_id)
                if (scope := in_scope(table, workspace)) is not None:
                    query = query.where(scope)
                row = (await conn.execute(query)).first()
                if row is not None:
                    item = item_dict(kind, row)
                    break
        if item is None:
            return None
        if item["type"] == "turn":
            missions = ITEM_TABLES["mission"]
            rows = await conn.execute(
                select(missions).where(missions.c.turn_id == item_id).order_by(missions.c.id)
            )
            item["missions"] = [item_dict("mission", r) for r in rows.all()]
            item["attempts"] = len(item["missions"])
        if item["type"] == "approval":
            item["context"] = await _approval_context(conn, item)
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
