"""Claiming queued missions under fenced leases: each dispatch is decided by the policy (and
persisted) first; a denied dispatch fails, one that needs a person waits on an approval.
The claim is batched (one ``executemany``, or ``unnest`` on PostgreSQL) for group commits."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import text

from quarterdeck.domain.clock import format_instant
from quarterdeck.domain.policy import ActionRequest
from quarterdeck.domain.routing import Asker, Step, dispatch_key
from quarterdeck.domain.states import Kind
from quarterdeck.store import decisions
from quarterdeck.store.plan import Claim, WorkPlan
from quarterdeck.store.routing import Ask, decide_and_record
from quarterdeck.store.sql import Bulk
from quarterdeck.store.transitions import (
    ClaimConflict,
    move_mission,
    move_turn,
    record_transition,
)
from quarterdeck.store.writer import WriteTxn

_CANDIDATES = (
    "SELECT m.id, m.workspace, m.turn_id, m.lane, m.role, m.number, m.version, m.attempt, "
    "t.state AS turn_state, t.version AS turn_version, t.attempt AS turn_attempt, "
    "t.objective, t.input, t.budget, m.decision_id FROM missions m "
    "JOIN turns t ON t.id = m.turn_id LEFT JOIN decisions d ON d.id = m.decision_id "
    "WHERE m.state = 'queued' AND m.lane IN ({lanes}) "
    "AND (m.not_before IS NULL OR m.not_before <= :now) "
    "AND (m.decision_id IS NULL OR d.verdict = 'allow') ORDER BY m.id LIMIT :limit"
)
_SKIP_LOCKED_CLAIM = " FOR UPDATE OF m, t SKIP LOCKED"
"""On PostgreSQL a claim locks the rows it takes and passes over rows another transaction
holds, so claims of several nodes run side by side and never take a row twice."""


def candidates_sql(dialect: str, lane_count: int) -> str:
    """The claim's query of due queued missions on ``lane_count`` source lanes (parameters
    ``:lane0``..., ``:now``, ``:limit``), oldest first; on PostgreSQL it locks what it takes.

    It reads the partial index ``ix_missions_queued`` (lane, id) in order, so a claim costs
    the rows it takes, not the size of the backlog.
    """
    lanes = ", ".join(f":lane{i}" for i in range(lane_count))
    sql = _CANDIDATES.format(lanes=lanes)
    return sql + _SKIP_LOCKED_CLAIM if dialect == "postgresql" else sql


_CLAIM_MISSION = Bulk(
    text(
        "UPDATE missions SET state = 'running', attempt = attempt + 1, version = version + 1, "
        "lease_owner = :owner, lease_expires_at = :expires, routed_lane = :exec_lane, "
        "session_id = :session, started_at = :at, updated_at = :at, decision_id = :decision "
        "WHERE id = :id AND version = :version AND (state = 'queued') IS TRUE"
    ),
    text(
        "WITH changed AS (UPDATE missions AS m SET state = 'running', attempt = m.attempt + 1, "
        "version = m.version + 1, lease_owner = r.owner, lease_expires_at = r.expires, "
        "routed_lane = r.exec_lane, session_id = r.session, started_at = r.at, updated_at = r.at, "
        "decision_id = r.decision FROM unnest(CAST(:owner AS TEXT[]), CAST(:expires AS TEXT[]), "
        "CAST(:exec_lane AS TEXT[]), CAST(:session AS TEXT[]), CAST(:at AS TEXT[]), "
        "CAST(:id AS TEXT[]), CAST(:version AS INTEGER[]), CAST(:decision AS TEXT[])) "
        "AS r(owner, expires, exec_lane, session, at, id, version, decision) "
        "WHERE m.id = r.id AND m.version = r.version AND (m.state = 'queued') IS TRUE "
        "RETURNING 1) SELECT COUNT(*) FROM changed"
    ),
)
"""``(state = 'queued') IS TRUE``, not ``state = 'queued'``: the same test, but one that no
index on ``state`` serves, so PostgreSQL's planner cannot pick such an index over the primary
key (it did on tables not yet analyzed, scanning every queued mission for each claimed row)."""
_LEASE_TURN = Bulk(
    text(
        "UPDATE turns SET state = 'running', attempt = attempt + 1, version = version + 2, "
        "lease_owner = :owner, lease_expires_at = :expires, updated_at = :at "
        "WHERE id = :id AND version = :version AND state = :from"
    ),
    text(
        "WITH changed AS (UPDATE turns AS t SET state = 'running', attempt = t.attempt + 1, "
        "version = t.version + 2, lease_owner = r.owner, lease_expires_at = r.expires, "
        "updated_at = r.at FROM unnest(CAST(:owner AS TEXT[]), CAST(:expires AS TEXT[]), "
        "CAST(:at AS TEXT[]), CAST(:id AS TEXT[]), CAST(:version AS INTEGER[]), "
        "CAST(:from AS TEXT[])) AS r(owner, expires, at, id, version, from_state) "
        "WHERE t.id = r.id AND t.version = r.version AND t.state = r.from_state "
        "RETURNING 1) SELECT COUNT(*) FROM changed"
    ),
)
"""A claimed turn is leased and, the worker starting at once, running: two transitions, two
ledger entries, one row update."""


def claim_missions(
    txn: WriteTxn,
    exec_lane: str,
    source_lanes: Sequence[str],
    limit: int,
    owner: str,
    lease_s: float,
    sessions: Sequence[str] = (),
    plan: WorkPlan | None = None,
) -> list[Claim]:
    """Claim up to ``limit`` due missions queued on ``source_lanes`` to run on ``exec_lane``,
    assigning them the given ``sessions`` in order (as many claims as sessions, when given).

    Each claim bumps the mission's ``attempt`` and ``version`` and sets the lease (deadline
    from the writer's clock); a primary mission's turn moves ``queued -> leased -> running``
    with it (the worker starts at once). A shadow mission leaves its turn alone. Missions whose
    turn is no longer waiting (cancelled, taken over) are cancelled instead of claimed.

    No mission starts without a persisted decision that allows it: a mission without one is
    decided here under ``plan.policy`` (as the tool ``mission.dispatch``, its task input as the
    arguments). ``deny`` fails it (and its turn); ``require_approval`` opens an approval and
    the turn waits (``awaiting_approval``) until a person decides. A shadow mission is never
    held for a person: anything but ``allow`` fails it.
    """

    if sessions:
        limit = min(limit, len(sessions))
    if limit <= 0 or not source_lanes:
        return []
    params: dict[str, Any] = {f"lane{i}": lane for i, lane in enumerate(source_lanes)}
    params.update(now=txn.at, limit=limit)
    sql = candidates_sql(txn.conn.dialect.name, len(source_lanes))
    candidates = txn.conn.execute(text(sql), params).all()
    if not candidates:
        return []
    expires = format_instant(txn.now + timedelta(seconds=lease_s))
    claims: list[Claim] = []
    mission_rows: list[dict[str, Any]] = []
    turn_rows: list[dict[str, Any]] = []
    decided: list[dict[str, Any]] = []
    tally = decisions.Tally()
    for row in candidates:
        shadow = row.role == "shadow"
        if not shadow and row.turn_state not in ("queued",):
            move_mission(txn, row.workspace, row.id, "queued", "cancelled", row.version, owner)
            continue
        decision_id = row.decision_id
        if decision_id is None:
            task_input = json.loads(row.input or "{}")
            cost = json.loads(row.budget or "{}").get("estimated_cost")
            request = ActionRequest(
                row.workspace, exec_lane, decisions.DISPATCH_TOOL, task_input,
                float(cost) if isinstance(cost, int | float) and not isinstance(cost, bool)
                else None,
            )  # fmt: skip
            ask = Ask(
                Asker.DISPATCH, request, dispatch_key(row.id), action_id=row.id,
                requested_by="coordinator", turn_id=row.turn_id, mission_id=row.id, shadow=shadow,
            )  # fmt: skip
            done = decide_and_record(txn, plan, ask, tally=tally, batch=decided)
            if done.route.step is Step.DENY:
                _refuse_dispatch(txn, row, done.row, owner)
                continue
            if done.route.step is Step.HOLD:
                _hold_dispatch(txn, row, done.row)
                continue
            decision_id = done.decision_id
        session = sessions[len(mission_rows)] if sessions else None
        mission_rows.append(
            {
                "owner": owner,
                "expires": expires,
                "exec_lane": exec_lane,
                "session": session,
                "at": txn.at,
                "id": row.id,
                "version": row.version,
                "decision": decision_id,
            }
        )
        record_transition(
            txn, Kind.MISSION, row.id, "queued", "running", workspace=row.workspace, actor=owner,
            payload={
                "version": row.version + 1,
                "attempt": row.attempt + 1,
                "owner": owner,
                "lane": exec_lane,
                "routed_from": row.lane if row.lane != exec_lane else None,
                "lease_expires_at": expires,
                "session": session,
                "decision": decision_id,
            },
        )  # fmt: skip
        if not shadow:
            turn_rows.append(
                {
                    "owner": owner,
                    "expires": expires,
                    "at": txn.at,
                    "id": row.turn_id,
                    "version": row.turn_version,
                    "from": row.turn_state,
                }
            )
            record_transition(
                txn, Kind.TURN, row.turn_id, row.turn_state, "leased", workspace=row.workspace,
                actor=owner, payload={"version": row.turn_version + 1,
                                      "attempt": row.turn_attempt + 1, "mission": row.id},
            )  # fmt: skip
            record_transition(
                txn, Kind.TURN, row.turn_id, "leased", "running", workspace=row.workspace,
                actor=owner, payload={"version": row.turn_version + 2, "mission": row.id},
            )  # fmt: skip
        claims.append(
            Claim(
                mission_id=row.id,
                turn_id=row.turn_id,
                workspace=row.workspace,
                lane=row.lane,
                exec_lane=exec_lane,
                role=row.role,
                number=row.number,
                attempt=row.attempt + 1,
                version=row.version + 1,
                owner=owner,
                objective=row.objective or "",
                input=json.loads(row.input or "{}"),
                budget=json.loads(row.budget or "{}"),
                session_id=session,
            )
        )
    decisions.insert_decisions(txn, decided)
    if mission_rows:
        moved = txn.update_many(_CLAIM_MISSION, mission_rows)
        if moved != len(mission_rows):
            raise ClaimConflict("missions changed under the claim")
    if turn_rows:
        moved = txn.update_many(_LEASE_TURN, turn_rows)
        if moved != len(turn_rows):
            raise ClaimConflict("turns changed under the claim")
    return claims


def _refuse_dispatch(txn: WriteTxn, row: Any, drow: Mapping[str, Any], actor: str) -> None:
    """The policy denied a dispatch: the mission fails, and so does its turn (not a shadow's)."""
    reason = str(drow["reason"])
    if not move_mission(
        txn, row.workspace, row.id, "queued", "failed", row.version, actor,
        error=reason, decision_id=str(drow["id"]),
    ):  # fmt: skip
        return
    if row.role != "shadow" and row.turn_state == "queued":
        move_turn(
            txn, row.workspace, row.turn_id, "queued", "failed", row.turn_version, actor,
            error=reason, deliverable={"error": reason, "decision": drow["id"]},
        )  # fmt: skip


def _hold_dispatch(txn: WriteTxn, row: Any, drow: Mapping[str, Any]) -> None:
    """The policy wants a person to approve this dispatch (its approval is open): bind the
    mission to the pending decision, and let the turn wait."""
    txn.conn.execute(
        text("UPDATE missions SET decision_id = :d WHERE id = :id"), {"d": drow["id"], "id": row.id}
    )
    move_turn(
        txn, row.workspace, row.turn_id, "queued", "awaiting_approval", row.turn_version,
        "coordinator", extra={"mission": row.id, "decision": drow["id"]},
    )  # fmt: skip
