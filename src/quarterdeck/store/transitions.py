"""The kernel of every state change in the store: the ledger entry writer (which checks the
transition table), the refusal recorder, new missions, and the fenced movers of turns and
missions. Every function runs inside the writer's transaction (a :class:`WriteTxn`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import text

from quarterdeck.domain.canonical import canonical_text
from quarterdeck.domain.states import Kind, check_transition
from quarterdeck.store.plan import Role
from quarterdeck.store.writer import WriteTxn

INSERT_MISSION = text(
    "INSERT INTO missions (id, workspace, state, version, attempt, created_at, updated_at, data, "
    "turn_id, lane, role, number, not_before) VALUES (:id, :workspace, 'queued', 1, 0, :at, :at, "
    "'{}', :turn_id, :lane, :role, :number, :not_before)"
)
PG_INSERT_MISSION = text(
    "INSERT INTO missions (id, workspace, state, version, attempt, created_at, updated_at, data, "
    "turn_id, lane, role, number, not_before) SELECT r.id, r.workspace, 'queued', 1, 0, r.at, "
    "r.at, '{}', r.turn_id, r.lane, r.role, r.number, r.not_before FROM unnest("
    "CAST(:id AS TEXT[]), CAST(:workspace AS TEXT[]), CAST(:at AS TEXT[]), "
    "CAST(:turn_id AS TEXT[]), CAST(:lane AS TEXT[]), CAST(:role AS TEXT[]), "
    "CAST(:number AS INTEGER[]), CAST(:not_before AS TEXT[])) "
    "AS r(id, workspace, at, turn_id, lane, role, number, not_before)"
)
"""``_INSERT_TURN`` and ``INSERT_MISSION`` for many rows in one statement (PostgreSQL)."""


def append_entry(
    txn: WriteTxn,
    workspace: str,
    actor: str,
    action: str,
    subject_type: str,
    subject_id: str,
    from_state: str | None,
    to_state: str | None,
    payload: dict[str, Any],
) -> None:
    if from_state is not None and to_state is not None:
        check_transition(Kind(subject_type), from_state, to_state)
    txn.ledger.append(
        at=txn.at,
        workspace=workspace,
        actor=actor,
        action=action,
        subject_type=subject_type,
        subject_id=subject_id,
        from_state=from_state,
        to_state=to_state,
        payload=payload,
    )


def refuse(
    txn: WriteTxn,
    workspace: str,
    actor: str,
    subject_type: str,
    subject_id: str,
    details: dict[str, Any],
) -> dict[str, Any]:
    """Record a refused command (nothing else changes) and return its result."""
    append_entry(
        txn, workspace, actor, "command.refused", subject_type, subject_id, None, None, details
    )
    return {"ok": False, "errors": details["errors"]}


def mission_row(
    txn: WriteTxn,
    mission_id: str,
    workspace: str,
    turn_id: str,
    lane: str,
    role: Role,
    number: int,
    not_before: str | None = None,
) -> dict[str, Any]:
    append_entry(
        txn,
        workspace,
        "coordinator",
        "mission.created",
        "mission",
        mission_id,
        None,
        "queued",
        {
            "turn": turn_id,
            "lane": lane,
            "role": role,
            "number": number,
            "not_before": not_before,
            "version": 1,
            "attempt": 0,
        },
    )
    return {
        "id": mission_id,
        "workspace": workspace,
        "at": txn.at,
        "turn_id": turn_id,
        "lane": lane,
        "role": role,
        "number": number,
        "not_before": not_before,
    }


def move_turn(
    txn: WriteTxn,
    workspace: str,
    turn_id: str,
    from_state: str,
    to_state: str,
    version: int,
    actor: str,
    *,
    deliverable: Mapping[str, Any] | None = None,
    error: str | None = None,
    extra: Mapping[str, Any] | None = None,
    dead_letter: str | None = None,
    held_until: str | None = None,
) -> bool:
    """One fenced turn transition and its ledger entry. ``dead_letter`` (with ``held_until``)
    sets the dead-letter stage in the same update; a completed or cancelled turn has none."""
    check_transition(Kind.TURN, from_state, to_state)
    changed = txn.conn.execute(
        text(
            "UPDATE turns SET state = :to, version = version + 1, updated_at = :at, "
            "deliverable = COALESCE(:deliverable, deliverable), error = COALESCE(:error, error), "
            "lease_owner = CASE WHEN CAST(:to AS VARCHAR) IN ('leased', 'running', "
            "'awaiting_approval') THEN lease_owner END, "
            "lease_expires_at = CASE WHEN CAST(:to AS VARCHAR) IN ('leased', 'running', "
            "'awaiting_approval') "
            "THEN lease_expires_at END, "
            "dead_letter = CASE WHEN CAST(:dead_letter AS VARCHAR) IS NOT NULL THEN :dead_letter "
            "WHEN CAST(:to AS VARCHAR) IN ('completed', 'cancelled') THEN NULL ELSE dead_letter END, "
            "held_until = CASE WHEN CAST(:dead_letter AS VARCHAR) IS NOT NULL THEN :held_until "
            "ELSE held_until END "
            "WHERE id = :id AND version = :version AND state = :from"
        ),
        {
            "to": to_state,
            "at": txn.at,
            "deliverable": canonical_text(dict(deliverable)) if deliverable is not None else None,
            "error": error,
            "dead_letter": dead_letter,
            "held_until": held_until,
            "id": turn_id,
            "version": version,
            "from": from_state,
        },
    ).rowcount
    if changed != 1:
        return False
    append_entry(
        txn,
        workspace,
        actor,
        f"turn.{to_state}",
        "turn",
        turn_id,
        from_state,
        to_state,
        {"version": version + 1, **(extra or {})},
    )
    return True


def move_mission(
    txn: WriteTxn,
    workspace: str,
    mission_id: str,
    from_state: str,
    to_state: str,
    version: int,
    actor: str,
    *,
    error: str | None = None,
    decision_id: str | None = None,
) -> None:
    """One mission transition out of its lease (cancelled, failed) and its ledger entry;
    ``error`` and ``decision_id`` (the decision that refused it) are set in the same update."""
    check_transition(Kind.MISSION, from_state, to_state)
    txn.conn.execute(
        text(
            "UPDATE missions SET state = :to, version = version + 1, updated_at = :at, "
            "lease_owner = NULL, lease_expires_at = NULL, finished_at = :at, "
            "error = COALESCE(:error, error), decision_id = COALESCE(:decision, decision_id) "
            "WHERE id = :id AND version = :version"
        ),
        {"to": to_state, "at": txn.at, "error": error, "decision": decision_id,
         "id": mission_id, "version": version},
    )  # fmt: skip
    payload: dict[str, Any] = {"version": version + 1}
    if error is not None:
        payload["error"] = error
    if decision_id is not None:
        payload["decision"] = decision_id
    append_entry(
        txn,
        workspace,
        actor,
        f"mission.{to_state}",
        "mission",
        mission_id,
        from_state,
        to_state,
        payload,
    )


class ClaimConflict(Exception):
    """Rows changed between reading and claiming them (another writer); the operation rolls back."""
