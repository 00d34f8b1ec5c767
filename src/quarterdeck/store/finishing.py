"""Finishing claimed missions: the fenced end of a mission, then its turn completed, retried
with backoff, routed to the fallback lane, or dead-lettered; shadow runs; reported events.
The common completion is batched for group commits. Runs inside the writer's transaction."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, text

from quarterdeck.domain.canonical import canonical_text
from quarterdeck.domain.ids import new_ids
from quarterdeck.domain.recovery import Finish, Step, after_finish
from quarterdeck.domain.states import MISSION_HOLDS_LEASE, Kind
from quarterdeck.store.leases import record_late_write
from quarterdeck.store.plan import Claim, WorkPlan
from quarterdeck.store.recovery import apply_recovery, turn_at
from quarterdeck.store.sql import Bulk, Statement, in_list
from quarterdeck.store.transitions import (
    INSERT_MISSION,
    ClaimConflict,
    mission_row,
    move,
    record_transition,
)
from quarterdeck.store.writer import WriteTxn


@dataclass(frozen=True, slots=True)
class Finished:
    """What finishing a mission did."""

    accepted: bool
    """False when the lease was lost: nothing changed and the late write was recorded."""
    turn_state: str | None = None
    next_mission: str | None = None
    dead_letter: str | None = None


def finish_mission(
    txn: WriteTxn,
    claim: Claim,
    outcome: Finish,
    plan: WorkPlan,
    *,
    result: Mapping[str, Any] | None = None,
    error: str | None = None,
) -> Finished:
    """Record a mission's end (fenced by attempt, version and owner), then move its turn:
    completed with the deliverable, or retried (backoff), routed to the fallback lane, or
    dead-lettered (``held``) when every budget is spent. A shadow mission only records."""
    payload: dict[str, Any] = {
        "attempt": claim.attempt,
        "lane": claim.exec_lane,
        "role": claim.role,
    }
    if error is not None:
        payload["error"] = error
    moved = move(
        txn, Kind.MISSION, claim.mission_id, "running", outcome, workspace=claim.workspace,
        actor=claim.owner, version=claim.version, lease=(claim.attempt, claim.owner),
        columns={
            "finished_at": txn.at, "lease_owner": None, "lease_expires_at": None,
            "result": canonical_text(dict(result)) if result is not None else None,
            "error": error,
        },
        payload=payload,
    )  # fmt: skip
    if moved is None:
        record_late_write(txn, claim, outcome)
        return Finished(accepted=False)
    turn = turn_at(txn, claim.turn_id)
    recovery = after_finish(
        outcome, role=claim.role, lane=claim.lane, number=claim.number,
        turn_state=None if turn is None else turn.state, lanes=plan.lanes, hold_s=plan.hold_s,
    )  # fmt: skip
    if recovery.step is Step.RECORD:
        return Finished(accepted=True)
    if recovery.step is Step.KEEP:
        return Finished(accepted=True, turn_state=None if turn is None else turn.state)
    done = apply_recovery(
        txn, recovery, workspace=claim.workspace, turn_id=claim.turn_id, state=turn.state,
        version=turn.version, actor=claim.owner, error=error or outcome, deliverable=result,
        note={"mission": claim.mission_id, "lane": claim.exec_lane},
    )  # fmt: skip
    if recovery.step is Step.COMPLETE:
        return Finished(accepted=True, turn_state="completed")
    return Finished(
        accepted=True, turn_state="queued", next_mission=done.mission_id,
        dead_letter=recovery.dead_letter,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Ending:
    """How one claimed mission ended, as reported by the worker."""

    claim: Claim
    outcome: Finish
    result: Mapping[str, Any] | None = None
    error: str | None = None


_HOLDERS = Statement(
    text(
        "SELECT id, attempt, version, lease_owner, state FROM missions WHERE id IN :ids"
    ).bindparams(bindparam("ids", expanding=True)),
    text(
        "SELECT id, attempt, version, lease_owner, state FROM missions "
        "WHERE id = ANY(CAST(:ids AS TEXT[])) ORDER BY id FOR UPDATE"
    ),
)
_LIVE_TURNS = Statement(
    text("SELECT id, state, version FROM turns WHERE id IN :ids").bindparams(
        bindparam("ids", expanding=True)
    ),
    text(
        "SELECT id, state, version FROM turns WHERE id = ANY(CAST(:ids AS TEXT[])) "
        "ORDER BY id FOR UPDATE"
    ),
)
"""On PostgreSQL the rows a finish reads stay as read until it commits (locked in id order,
missions before turns), beside other nodes' writes."""
_FINISH_MISSION = Bulk(
    text(
        "UPDATE missions SET state = :to, version = version + 1, updated_at = :at, finished_at = :at, "
        "lease_owner = NULL, lease_expires_at = NULL, result = :result, error = :error "
        "WHERE id = :id AND attempt = :attempt AND version = :version AND lease_owner = :owner "
        f"AND state IN {in_list(MISSION_HOLDS_LEASE)}"
    ),
    text(
        "WITH changed AS (UPDATE missions AS m SET state = r.to_state, version = m.version + 1, "
        "updated_at = r.at, finished_at = r.at, lease_owner = NULL, lease_expires_at = NULL, "
        "result = r.result, error = r.error FROM unnest(CAST(:to AS TEXT[]), CAST(:at AS TEXT[]), "
        "CAST(:result AS TEXT[]), CAST(:error AS TEXT[]), CAST(:id AS TEXT[]), "
        "CAST(:attempt AS INTEGER[]), CAST(:version AS INTEGER[]), CAST(:owner AS TEXT[])) "
        "AS r(to_state, at, result, error, id, attempt, version, owner) "
        "WHERE m.id = r.id AND m.attempt = r.attempt AND m.version = r.version "
        f"AND m.lease_owner = r.owner AND m.state IN {in_list(MISSION_HOLDS_LEASE)} "
        "RETURNING 1) SELECT COUNT(*) FROM changed"
    ),
)
_COMPLETE_TURN = Bulk(
    text(
        "UPDATE turns SET state = 'completed', version = version + 1, updated_at = :at, "
        "deliverable = :deliverable, dead_letter = NULL, lease_owner = NULL, "
        "lease_expires_at = NULL WHERE id = :id AND version = :version AND state = :from"
    ),
    text(
        "WITH changed AS (UPDATE turns AS t SET state = 'completed', version = t.version + 1, "
        "updated_at = r.at, deliverable = r.deliverable, dead_letter = NULL, lease_owner = NULL, "
        "lease_expires_at = NULL FROM unnest(CAST(:at AS TEXT[]), CAST(:deliverable AS TEXT[]), "
        "CAST(:id AS TEXT[]), CAST(:version AS INTEGER[]), CAST(:from AS TEXT[])) "
        "AS r(at, deliverable, id, version, from_state) "
        "WHERE t.id = r.id AND t.version = r.version AND t.state = r.from_state "
        "RETURNING 1) SELECT COUNT(*) FROM changed"
    ),
)


def finish_missions(txn: WriteTxn, endings: Sequence[Ending], plan: WorkPlan) -> list[Finished]:
    """:func:`finish_mission` for many missions at once, in order.

    The common case — a completed primary or fallback mission whose lease still holds and
    whose turn is live — is done with one fenced ``executemany`` for the missions and one for
    their turns; every other ending goes through :func:`finish_mission` one by one.
    """
    if not endings:
        return []
    mission_ids = sorted({e.claim.mission_id for e in endings})
    turn_ids = sorted({e.claim.turn_id for e in endings})
    held = {row.id: row for row in txn.conn.execute(_HOLDERS.on(txn.conn), {"ids": mission_ids})}
    turns = {row.id: row for row in txn.conn.execute(_LIVE_TURNS.on(txn.conn), {"ids": turn_ids})}
    fast: list[Ending] = []
    fast_turns: set[str] = set()
    for ending in endings:
        claim, row = ending.claim, held.get(ending.claim.mission_id)
        turn = turns.get(claim.turn_id)
        if (
            ending.outcome == "completed"  # only a completion may take the fast path
            and row is not None
            and (row.attempt, row.version, row.lease_owner)
            == (claim.attempt, claim.version, claim.owner)
            and row.state in MISSION_HOLDS_LEASE
            and claim.turn_id not in fast_turns
            and after_finish(
                "completed", role=claim.role, lane=claim.lane, number=claim.number,
                turn_state=None if turn is None else turn.state, lanes=plan.lanes,
                hold_s=plan.hold_s,
            ).step is Step.COMPLETE
        ):  # fmt: skip
            fast.append(ending)
            fast_turns.add(claim.turn_id)
    results: dict[int, Finished] = {}
    """Keyed by the ending itself, not its mission: two endings may name one mission (a stale
    owner's and the current owner's); only the one that holds the lease takes the fast path."""
    if fast:
        mission_rows, turn_rows = [], []
        for ending in fast:
            claim = ending.claim
            result = canonical_text(dict(ending.result or {}))
            mission_rows.append(
                {
                    "to": "completed",
                    "at": txn.at,
                    "result": result,
                    "error": None,
                    "id": claim.mission_id,
                    "attempt": claim.attempt,
                    "version": claim.version,
                    "owner": claim.owner,
                }
            )
            record_transition(
                txn, Kind.MISSION, claim.mission_id, "running", "completed",
                workspace=claim.workspace, actor=claim.owner,
                payload={"version": claim.version + 1, "attempt": claim.attempt,
                         "lane": claim.exec_lane, "role": claim.role},
            )  # fmt: skip
            turn = turns[claim.turn_id]
            turn_rows.append(
                {
                    "at": txn.at,
                    "deliverable": result,
                    "id": claim.turn_id,
                    "version": turn.version,
                    "from": turn.state,
                }
            )
            record_transition(
                txn, Kind.TURN, claim.turn_id, turn.state, "completed", workspace=claim.workspace,
                actor=claim.owner, payload={"version": turn.version + 1,
                                            "mission": claim.mission_id, "lane": claim.exec_lane},
            )  # fmt: skip
            results[id(ending)] = Finished(accepted=True, turn_state="completed")
        moved = txn.update_many(_FINISH_MISSION, mission_rows)
        if moved != len(mission_rows):
            raise ClaimConflict("missions changed while being finished")
        moved = txn.update_many(_COMPLETE_TURN, turn_rows)
        if moved != len(turn_rows):
            raise ClaimConflict("turns changed while being finished")
    finished = []
    for ending in endings:
        done = results.get(id(ending))
        if done is None:
            done = finish_mission(
                txn, ending.claim, ending.outcome, plan, result=ending.result, error=ending.error
            )
        finished.append(done)
    return finished


def add_shadow_mission(txn: WriteTxn, claim: Claim, fallback_lane: str) -> str:
    """Queue a shadow run of a claimed mission's work on ``fallback_lane`` (result recorded only)."""
    mission_id = new_ids(1)[0]
    txn.conn.execute(
        INSERT_MISSION.each,
        mission_row(txn, mission_id, claim.workspace, claim.turn_id, fallback_lane, "shadow", 1),
    )
    return mission_id


_INSERT_EVENT = text(
    "INSERT INTO mission_events (mission_id, turn_id, workspace, at, type, data) "
    "VALUES (:mission_id, :turn_id, :workspace, :at, :type, :data)"
)


def record_events(txn: WriteTxn, events: Sequence[Mapping[str, Any]]) -> None:
    """Store reported mission events (progress, log, action, error); not ledger entries."""
    if events:
        txn.conn.execute(_INSERT_EVENT, [dict(e) for e in events])
