"""One item by id with its ledger history (and, for an approval, what a person needs to
decide it)."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import and_, or_, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from quarterdeck.domain.hooks import hook_origin
from quarterdeck.store.database import Database
from quarterdeck.store.ledger import LEDGER
from quarterdeck.store.queries.listings import ITEM_TABLES, in_scope, item_dict, receipt_dict
from quarterdeck.store.receipts import RECEIPTS

APPROVAL_EVENTS = 20
"""Recent events of the turn shown with an approval (and with a turn)."""
EARLIER_ACTIONS = 10
"""The turn's actions decided before an approval's request, shown with it."""


async def _recent_events(conn: AsyncConnection, turn_id: str) -> list[dict[str, Any]]:
    """The turn's last :data:`APPROVAL_EVENTS` mission events, oldest first."""
    rows = await conn.execute(
        text(
            "SELECT at, type, data FROM mission_events WHERE turn_id = :t ORDER BY id DESC LIMIT :n"
        ),
        {"t": turn_id, "n": APPROVAL_EVENTS},
    )
    return [{"at": r.at, "type": r.type, "data": json.loads(r.data)} for r in reversed(rows.all())]


async def _turn_summary(conn: AsyncConnection, turn_id: str) -> dict[str, Any] | None:
    """What an approval shows of its turn: objective, state, lane, attempt."""
    row = (
        await conn.execute(
            text("SELECT id, state, lane, attempt, objective FROM turns WHERE id = :t"),
            {"t": turn_id},
        )
    ).first()
    return None if row is None else dict(row._mapping)


async def _earlier_actions(
    conn: AsyncConnection, turn_id: str, decision_id: str | None, before: str | None
) -> list[dict[str, Any]]:
    """The turn's tool calls decided before the request (its missions' action decisions,
    found through the missions' index), oldest first."""
    rows = await conn.execute(
        text(
            "SELECT at, tool, args, outcome, verdict, decided_by FROM decisions "
            "WHERE mission_id IN (SELECT id FROM missions WHERE turn_id = :t) "
            "AND kind <> 'dispatch' AND id <> :d AND at <= :before "
            "ORDER BY at DESC, id DESC LIMIT :n"
        ),
        {"t": turn_id, "d": decision_id or "", "before": before or "~", "n": EARLIER_ACTIONS},
    )
    return [dict(r._mapping) for r in reversed(rows.all())]


async def _approval_context(conn: AsyncConnection, item: dict[str, Any]) -> dict[str, Any]:
    """What a person needs to decide an approval: the decision that asked (rule, rule trace,
    policy hash), its turn (objective, state), the turn's actions before the request, its
    recent events and the cost so far."""
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
    earlier: list[dict[str, Any]] = []
    turn = None
    cost = None
    if turn_id:
        events = await _recent_events(conn, turn_id)
        turn = await _turn_summary(conn, turn_id)
        earlier = await _earlier_actions(
            conn, turn_id, item.get("decision_id"), item.get("created_at")
        )
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
        "turn": turn,
        "earlier_actions": earlier,
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
            item["recent_events"] = await _recent_events(conn, item_id)
        if item["type"] == "approval":
            item.update(hook_origin(item.get("data")))
            item["context"] = await _approval_context(conn, item)
        # By subject type too, so that the ledger's subject index finds the entries.
        mentioned = and_(LEDGER.c.subject_type == item["type"], LEDGER.c.subject_id == item_id)
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
