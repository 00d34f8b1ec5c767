"""Applying accepted receipts: a task becomes a turn with its first mission, a command is
applied (:func:`quarterdeck.store.commands.apply_command`) for the principal that gave it, an
event is recorded; each receipt then points at what it produced (a command: its result, as
JSON). Runs inside the writer's transaction.

A command given through the runtime (:meth:`quarterdeck.runtime.runtime.Runtime.command`)
comes with its authenticated principal. A command envelope written into the database any other
way (by a client with no daemon to talk to, or by anyone who can write the database file) has
none: it is an unauthenticated agent's
(:func:`quarterdeck.store.commands.unauthenticated_principal`), which may only ask for an
approval; anything else it commands is refused and recorded as such."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text

from quarterdeck.domain.authority import Principal
from quarterdeck.domain.canonical import canonical_text
from quarterdeck.domain.ids import new_ids
from quarterdeck.domain.tasks import TaskSpec, parse_task
from quarterdeck.store.commands import apply_command, unauthenticated_principal
from quarterdeck.store.plan import WorkPlan
from quarterdeck.store.receipts import IngestResult
from quarterdeck.store.sessions_hooks import apply_hook_event, link_action
from quarterdeck.store.sql import Bulk, Statement
from quarterdeck.store.transitions import (
    INSERT_MISSION,
    append_entry,
    mission_row,
)
from quarterdeck.store.writer import ExclusiveRequired, WriteTxn


@dataclass(frozen=True, slots=True)
class Applied:
    """What one receipt produced."""

    receipt_id: str
    produced_type: str
    produced_id: str


_UNAPPLIED_SQL = (
    "SELECT id, workspace, kind, payload FROM receipts "
    "WHERE status = 'accepted' AND produced_type IS NULL ORDER BY id LIMIT :limit"
)
_UNAPPLIED = Statement(text(_UNAPPLIED_SQL), text(_UNAPPLIED_SQL + " FOR UPDATE SKIP LOCKED"))
"""On PostgreSQL, receipts another node is applying right now are passed over."""
_MARK_PRODUCED = Bulk(
    text(
        "UPDATE receipts SET produced_type = :type, produced_id = :produced, version = version + 1 "
        "WHERE id = :id AND produced_type IS NULL"
    ),
    text(
        "WITH changed AS (UPDATE receipts AS x SET produced_type = r.type, produced_id = r.produced, "
        "version = x.version + 1 FROM unnest(CAST(:type AS TEXT[]), CAST(:produced AS TEXT[]), "
        "CAST(:id AS TEXT[])) AS r(type, produced, id) WHERE x.id = r.id AND x.produced_type IS NULL "
        "RETURNING 1) SELECT COUNT(*) FROM changed"
    ),
)
_INSERT_TURN = Bulk(
    text(
        "INSERT INTO turns (id, workspace, state, version, attempt, created_at, updated_at, data, "
        "receipt_id, lane, objective, input, budget, deliverable, error) VALUES (:id, :workspace, "
        ":state, 1, 0, :at, :at, '{}', :receipt_id, :lane, :objective, :input, :budget, "
        ":deliverable, :error)"
    ),
    text(
        "INSERT INTO turns (id, workspace, state, version, attempt, created_at, updated_at, data, "
        "receipt_id, lane, objective, input, budget, deliverable, error) SELECT r.id, r.workspace, "
        "r.state, 1, 0, r.at, r.at, '{}', r.receipt_id, r.lane, r.objective, r.input, r.budget, "
        "r.deliverable, r.error FROM unnest(CAST(:id AS TEXT[]), CAST(:workspace AS TEXT[]), "
        "CAST(:state AS TEXT[]), CAST(:at AS TEXT[]), CAST(:receipt_id AS TEXT[]), "
        "CAST(:lane AS TEXT[]), CAST(:objective AS TEXT[]), CAST(:input AS TEXT[]), "
        "CAST(:budget AS TEXT[]), CAST(:deliverable AS TEXT[]), CAST(:error AS TEXT[])) "
        "AS r(id, workspace, state, at, receipt_id, lane, objective, input, budget, deliverable, "
        "error)"
    ),
)


def apply_receipts(
    txn: WriteTxn,
    plan: WorkPlan,
    limit: int = 500,
    principals: Mapping[str, Principal] | None = None,
) -> list[Applied]:
    """Turn accepted receipts that produced nothing yet into turns (with their first mission),
    applied commands, or recorded events; each receipt then points at what it produced.
    ``principals``: who gave the command receipts given through the runtime, by receipt id
    (any other command receipt was written into the database by someone unauthenticated: it
    is applied for :func:`~quarterdeck.store.commands.unauthenticated_principal`).

    A task that cannot run (a malformed task payload, an unknown lane) still becomes a turn,
    failed at once with the reason as its deliverable: every task gets exactly one.

    Safe beside other writers (receipts being applied elsewhere are skipped), except for
    commands: a shared transaction stops before the first command receipt, or raises
    :class:`ExclusiveRequired` when a command comes first.
    """
    rows = txn.conn.execute(_UNAPPLIED.on(txn.conn), {"limit": limit}).all()
    if not rows:
        return []
    applied: list[Applied] = []
    turns: list[dict[str, Any]] = []
    missions: list[dict[str, Any]] = []
    marks: list[dict[str, Any]] = []
    ids = iter(new_ids(2 * len(rows)))
    if len(rows) == limit:
        txn.stirred = True  # there may be more for the dispatcher to apply
    for receipt_id, workspace, kind, payload_text in rows:
        if kind == "command" and not txn.exclusive:
            # A command may touch anything: it is applied with no other writer beside it.
            if not applied:
                raise ExclusiveRequired(f"receipt {receipt_id} is a command")
            break
        payload = json.loads(payload_text)
        if not _quiet(kind, payload):
            txn.stirred = True
        if kind == "task":
            turn_id, mission_id = next(ids), next(ids)
            spec = parse_task(payload)
            if isinstance(spec, TaskSpec):
                lane = spec.lane or plan.default_lane
                problems = [] if lane in plan.lanes else [f"payload.lane: no lane named {lane!r}"]
            else:
                lane, problems = payload.get("lane") or plan.default_lane, spec
            turn = {
                "id": turn_id,
                "workspace": workspace,
                "state": "queued",
                "at": txn.at,
                "receipt_id": receipt_id,
                "lane": str(lane),
                "objective": spec.objective if isinstance(spec, TaskSpec) else None,
                "input": canonical_text(dict(spec.input)) if isinstance(spec, TaskSpec) else None,
                "budget": canonical_text(dict(spec.budget)) if isinstance(spec, TaskSpec) else None,
                "deliverable": None,
                "error": None,
            }
            append_entry(
                txn,
                workspace,
                "coordinator",
                "turn.created",
                "turn",
                turn_id,
                None,
                "queued",
                {"receipt": receipt_id, "lane": str(lane), "version": 1, "attempt": 0},
            )
            if problems:
                reason = "; ".join(problems)
                turn.update(
                    state="failed", error=reason, deliverable=canonical_text({"error": reason})
                )
                append_entry(
                    txn,
                    workspace,
                    "coordinator",
                    "turn.failed",
                    "turn",
                    turn_id,
                    "queued",
                    "failed",
                    {"error": reason, "version": 1, "attempt": 0},
                )
            else:
                missions.append(
                    mission_row(txn, mission_id, workspace, turn_id, lane, "primary", 1)
                )
            turns.append(turn)
            applied.append(Applied(receipt_id, "turn", turn_id))
        elif kind == "command":
            given = (principals or {}).get(receipt_id)
            if given is None:
                given = unauthenticated_principal(receipt_id, workspace)
            result = apply_command(txn, workspace, payload, plan, given)
            if payload.get("command") == "approval.request":
                link_action(txn, workspace, payload, result)
            applied.append(Applied(receipt_id, "command", canonical_text(result)))
        else:
            append_entry(
                txn,
                workspace,
                "coordinator",
                "event.recorded",
                "receipt",
                receipt_id,
                None,
                None,
                {"payload": payload},
            )
            if isinstance(payload, dict) and "hook" in payload:
                apply_hook_event(txn, workspace, receipt_id, payload)
            applied.append(Applied(receipt_id, "event", receipt_id))
    for item in applied:
        marks.append(
            {"type": item.produced_type, "produced": item.produced_id, "id": item.receipt_id}
        )
    marked = txn.update_many(_MARK_PRODUCED, marks)
    if marked != len(marks):
        # Another writer applied some of these first; nothing here may stand twice.
        raise ReceiptsAlreadyApplied(f"{len(marks) - marked} receipts were applied elsewhere")
    txn.insert_many(_INSERT_TURN, turns)
    txn.insert_many(INSERT_MISSION, missions)
    return applied


def _quiet(kind: str, payload: Any) -> bool:
    """Whether applying a receipt makes no work for the dispatcher: an approval request (a
    decision, perhaps an approval; no mission), or an event that is no agent's hook."""
    if not isinstance(payload, dict):
        return False
    if kind == "command":
        return payload.get("command") == "approval.request"
    return kind == "event" and "hook" not in payload


class ReceiptsAlreadyApplied(Exception):
    """Another runtime applied some of the same receipts first; the operation rolls back."""


_PRODUCED = text("SELECT produced_type, produced_id FROM receipts WHERE id = :id")


def apply_command_receipt(
    txn: WriteTxn, plan: WorkPlan, receipt: IngestResult, principal: Principal
) -> dict[str, Any]:
    """Apply accepted receipts in order, as the pump does, until the command envelope whose
    ingest ended in ``receipt`` has been applied for ``principal``; return its result (the
    first one when its receipt was applied before; a rejected envelope's reasons). Needs an
    exclusive transaction (it applies commands).

    Only a receipt recorded just now is applied for ``principal``: a duplicate's receipt was
    written earlier, perhaps by someone else, and is applied as its writer gave it."""
    if receipt.status == "rejected":
        return {"ok": False, "errors": list(receipt.errors)}
    if receipt.status == "accepted":
        # Recorded in this very transaction: applied in order with those before it, and what
        # it produced read from what was applied.
        produced = _apply_through(txn, plan, receipt.receipt, principal)
    else:
        produced = None
        while True:
            row = txn.conn.execute(_PRODUCED, {"id": receipt.receipt}).first()
            if row is None:
                return {"ok": False, "errors": [f"no receipt {receipt.receipt}"]}
            if row.produced_type is not None:
                produced = (row.produced_type, row.produced_id)
                break
            if not apply_receipts(txn, plan):
                break
    if produced is None:
        return {"ok": False, "errors": [f"receipt {receipt.receipt} was not applied"]}
    produced_type, produced_id = produced
    if produced_type != "command":
        error = f"idempotency_key: already used for a {produced_type}, not a command"
        return {"ok": False, "errors": [error]}
    result = json.loads(produced_id)
    return dict(result) if isinstance(result, dict) else {"ok": False, "errors": [result]}


def _apply_through(
    txn: WriteTxn, plan: WorkPlan, receipt_id: str, principal: Principal
) -> tuple[str, str] | None:
    """Apply receipts in order until ``receipt_id`` (given by ``principal``) is; what it
    produced (None when it was not applied)."""
    while True:
        applied = apply_receipts(txn, plan, principals={receipt_id: principal})
        if not applied:
            return None
        for item in applied:
            if item.receipt_id == receipt_id:
                return item.produced_type, item.produced_id
