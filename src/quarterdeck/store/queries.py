"""Read-side queries for status, listings and item detail. Reads never take the write lock."""

from __future__ import annotations

import base64
import json
from fnmatch import fnmatchcase
from typing import Any

from sqlalchemy import Table, and_, func, or_, select, text

from quarterdeck.domain.clock import format_instant, parse_instant, utc_now
from quarterdeck.domain.envelope import RUNTIME_WORKSPACE
from quarterdeck.domain.figures import percentile
from quarterdeck.domain.states import (
    APPROVAL_OPEN,
    MACHINES,
    MISSION_HOLDS_LEASE,
    MISSION_LIVE,
    MISSION_SELF_FINISHED,
    Kind,
)
from quarterdeck.store.alerts import ON_FALLBACK, SERVING
from quarterdeck.store.database import Database
from quarterdeck.store.ledger import LEDGER, ledger_head
from quarterdeck.store.receipts import RECEIPTS
from quarterdeck.store.sql import in_list
from quarterdeck.store.tables import STATEFUL_TABLES, ReceiptCounterRow, table_of

COUNTERS = table_of(ReceiptCounterRow)

ITEM_TABLES: dict[str, Table] = {kind: table_of(model) for kind, model in STATEFUL_TABLES.items()}
LISTABLE = ("receipts", "turns", "missions", "sessions", "approvals", "alerts")


def _in_scope(table: Table, workspace: str | None) -> Any:
    """The condition that keeps ``table``'s rows to ``workspace``'s view (None: every
    workspace). The runtime's own items (sessions, alerts about lanes, the policy file and
    SLOs) are part of every workspace's view."""
    if workspace is None:
        return None
    return table.c.workspace.in_((workspace, RUNTIME_WORKSPACE))


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
            query = select(table.c.state, func.count())
            if (scope := _in_scope(table, workspace)) is not None:
                query = query.where(scope)
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


_JSON_COLUMNS = frozenset({"data", "input", "budget", "deliverable", "result"})


def _item_dict(kind: str, row: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"type": kind}
    for key, value in row._mapping.items():
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
    if kind == "receipts":
        table, state_column = RECEIPTS, RECEIPTS.c.status
    else:
        table = ITEM_TABLES[kind.removesuffix("s")]
        state_column = table.c.state
    query = select(table).order_by(table.c.id.desc())
    if (scope := _in_scope(table, workspace)) is not None:
        query = query.where(scope)
    if state is not None:
        query = query.where(state_column == state)
    if limit is not None:
        query = query.limit(limit)
    async with db.read() as conn:
        rows = (await conn.execute(query)).all()
    if kind == "receipts":
        return [_receipt_dict(row) for row in rows]
    return [_item_dict(kind.removesuffix("s"), row) for row in rows]


APPROVAL_EVENTS = 20
"""Recent events of the turn shown with an approval."""


async def _approval_context(conn: Any, item: dict[str, Any]) -> dict[str, Any]:
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
        item: dict[str, Any] | None = _receipt_dict(row) if row is not None else None
        if item is None:
            for kind, table in ITEM_TABLES.items():
                query = select(table).where(table.c.id == item_id)
                if (scope := _in_scope(table, workspace)) is not None:
                    query = query.where(scope)
                row = (await conn.execute(query)).first()
                if row is not None:
                    item = _item_dict(kind, row)
                    break
        if item is None:
            return None
        if item["type"] == "turn":
            missions = ITEM_TABLES["mission"]
            rows = await conn.execute(
                select(missions).where(missions.c.turn_id == item_id).order_by(missions.c.id)
            )
            item["missions"] = [_item_dict("mission", r) for r in rows.all()]
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


def _seconds(start: str, end: str) -> float:
    return (parse_instant(end) - parse_instant(start)).total_seconds()


async def slo(db: Database, workspace: str | None, recent: int = 2_000) -> dict[str, Any]:
    """SLO figures from the store, shared by every node: mission latency p50/p95 (recent
    missions), fallback rate (missions run as fallback or routed off their lane, over started
    ones), recovery success rate, orphaned missions (running past their lease, unswept) and
    orphaned sessions (recovering now; ever), retries, dead letters, lease conflicts and
    reclaimed leases. Shadow missions count in neither latency nor fallback figures."""
    where = "" if workspace is None else "WHERE workspace = :w"
    params = {} if workspace is None else {"w": workspace}
    async with db.read() as conn:
        finished = (
            await conn.execute(
                text(
                    "SELECT started_at, finished_at FROM missions "
                    f"{where + ' AND' if where else 'WHERE'} finished_at IS NOT NULL "
                    f"AND started_at IS NOT NULL AND {SERVING} "
                    "ORDER BY finished_at DESC LIMIT :n"
                ),
                {**params, "n": recent},
            )
        ).all()
        totals = (
            await conn.execute(
                text(
                    "SELECT "
                    f"sum(CASE WHEN started_at IS NOT NULL AND {SERVING} THEN 1 ELSE 0 END) "
                    "AS started, "
                    f"sum(CASE WHEN {SERVING} AND {ON_FALLBACK} AND started_at IS NOT NULL "
                    "THEN 1 ELSE 0 END) AS fallback, "
                    "sum(CASE WHEN number > 1 THEN 1 ELSE 0 END) AS retries, "
                    "sum(CASE WHEN attempt > 1 AND state IN "
                    f"{in_list(MISSION_SELF_FINISHED)} "
                    "THEN 1 ELSE 0 END) AS recovered_finished, "
                    "sum(CASE WHEN attempt > 1 AND state = 'completed' THEN 1 ELSE 0 END) "
                    "AS recovered_completed, "
                    f"sum(CASE WHEN state IN {in_list(MISSION_HOLDS_LEASE)} THEN 1 ELSE 0 END) "
                    "AS running, "
                    f"sum(CASE WHEN state IN {in_list(MISSION_HOLDS_LEASE)} "
                    "AND lease_expires_at < :now "
                    f"THEN 1 ELSE 0 END) AS orphaned FROM missions {where}"
                ),
                {**params, "now": format_instant(utc_now())},
            )
        ).one()
        dead = (
            await conn.execute(
                text(
                    "SELECT count(*) FROM turns WHERE dead_letter IN ('held', 'dead')"
                    + (" AND workspace = :w" if workspace is not None else "")
                ),
                params,
            )
        ).scalar_one()
        sessions = (
            await conn.execute(
                text(
                    "SELECT count(*) AS total, sum(CASE WHEN state = 'recovering' THEN 1 ELSE 0 "
                    "END) AS recovering FROM sessions WHERE state != 'retired'"
                )
            )
        ).one()
        counter_rows = (await conn.execute(text("SELECT name, value FROM counters"))).all()
        counters: dict[str, int] = {str(name): int(value) for name, value in counter_rows}
    latencies = [_seconds(start, end) for start, end in finished]
    started = int(totals.started or 0)
    recovered = int(totals.recovered_finished or 0)
    running = int(totals.running or 0)
    return {
        "mission_latency_p50_s": round(percentile(latencies, 0.5), 6),
        "mission_latency_p95_s": round(percentile(latencies, 0.95), 6),
        "fallback_rate": round(int(totals.fallback or 0) / started, 6) if started else 0.0,
        "recovery_success_rate": (
            round(int(totals.recovered_completed or 0) / recovered, 6) if recovered else 1.0
        ),
        "orphaned_rate": round(int(totals.orphaned or 0) / running, 6) if running else 0.0,
        "orphaned_session_rate": (
            round(int(sessions.recovering or 0) / int(sessions.total), 6) if sessions.total else 0.0
        ),
        "sessions_orphaned": int(counters.get("sessions_orphaned", 0)),
        "retries": int(totals.retries or 0),
        "dead_letters": int(dead),
        "lease_conflicts": int(counters.get("late_writes_rejected", 0)),
        "leases_reclaimed": int(counters.get("leases_reclaimed", 0)),
    }


async def pending_work(db: Database) -> int:
    """Receipts not yet applied plus missions queued, running or blocked, in every workspace."""
    async with db.read() as conn:
        receipts = (
            await conn.execute(
                text(
                    "SELECT count(*) FROM receipts "
                    "WHERE status = 'accepted' AND produced_type IS NULL"
                )
            )
        ).scalar_one()
        missions = (
            await conn.execute(
                text(f"SELECT count(*) FROM missions WHERE state IN {in_list(MISSION_LIVE)}")
            )
        ).scalar_one()
    return int(receipts) + int(missions)


async def open_approvals(
    db: Database,
    workspace: str | None,
    *,
    lane: str | None = None,
    tool: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Approvals still waiting for a decision (pending or escalated), oldest deadline first.

    Args:
        workspace: only this workspace's; None for every workspace.
        lane, tool: only those whose lane / tool matches this glob (case-sensitive).
        limit: at most this many; None for all.
    """
    where = f"state IN {in_list(APPROVAL_OPEN)}"
    params: dict[str, Any] = {}
    if workspace is not None:
        where += " AND workspace = :w"
        params["w"] = workspace
    async with db.read() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT id, workspace, state, kind, tool, lane, args, approver, level, "
                    "deadline_at, snoozed_until, claimed_by, claim_expires_at, requested_by, "
                    f"created_at FROM approvals WHERE {where} ORDER BY deadline_at, id"
                ),
                params,
            )
        ).all()
    result: list[dict[str, Any]] = []
    for row in rows:
        if lane is not None and not fnmatchcase(row.lane or "", lane):
            continue
        if tool is not None and not fnmatchcase(row.tool or "", tool):
            continue
        item = dict(row._mapping)
        item["args"] = json.loads(row.args) if row.args else {}
        result.append(item)
        if limit is not None and len(result) >= limit:
            break
    return result
