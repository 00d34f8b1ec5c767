"""The work path in the store: receipts become turns and missions; missions are claimed under
fenced leases, heartbeated, finished, retried, routed to fallback, dead-lettered and reclaimed.

Every function here runs inside the writer's transaction (a :class:`WriteTxn`) and appends one
ledger entry per state transition. Writes for claimed work carry ``attempt``, ``version`` and the
lease owner in their ``WHERE``; a write whose lease was lost changes nothing and is recorded.
The hot paths are batched (``executemany``) so that a group commit handles many turns at once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from sqlalchemy import bindparam, text

from quarterdeck.domain.canonical import canonical_text
from quarterdeck.domain.clock import format_instant
from quarterdeck.domain.envelope import RUNTIME_WORKSPACE
from quarterdeck.domain.ids import new_ids
from quarterdeck.domain.policy import ActionRequest, Policy
from quarterdeck.domain.states import Kind, check_transition
from quarterdeck.domain.tasks import (
    CommandSpec,
    TaskSpec,
    backoff_delay,
    parse_command,
    parse_task,
)
from quarterdeck.store import decisions
from quarterdeck.store.outbox import Target
from quarterdeck.store.writer import ExclusiveRequired, WriteTxn

Role = Literal["primary", "fallback", "shadow"]
Finish = Literal["completed", "failed", "timed_out", "cancelled"]
SELF_FINISHED_STATES = frozenset({"completed", "failed", "timed_out"})
"""The states a mission reaches only by its own worker's finish (a take-over cancels it)."""


@dataclass(frozen=True, slots=True)
class LanePlan:
    """What the store needs to know of a lane to route and retry its work."""

    name: str
    fallback: str | None
    max_attempts: int
    backoff_initial_s: float
    backoff_max_s: float


@dataclass(frozen=True, slots=True)
class WorkPlan:
    """The lanes as the store sees them, and what supervision needs: the policy in force,
    where notifications go, how long a claim on an approval holds."""

    lanes: Mapping[str, LanePlan]
    default_lane: str
    hold_s: float
    policy: Policy | None = None
    """None: every dispatch and action is allowed (recorded as such)."""
    targets: tuple[Target, ...] = ()
    claim_s: float = 120.0
    attested: Callable[[str], Mapping[str, str]] | None = None
    """``attested(lane)``: the current SHA-256 of each of the lane's attested files (for
    re-baselining); supplied by the runtime, which reads the files."""


@dataclass(frozen=True, slots=True)
class Claim:
    """A mission this worker holds, with what it needs to run it and to fence its writes."""

    mission_id: str
    turn_id: str
    workspace: str
    lane: str
    exec_lane: str
    role: Role
    number: int
    attempt: int
    version: int
    owner: str
    objective: str
    input: Mapping[str, Any]
    budget: Mapping[str, Any]
    session_id: str | None = None


@dataclass(frozen=True, slots=True)
class Applied:
    """What one receipt produced."""

    receipt_id: str
    produced_type: str
    produced_id: str


# --- applying receipts -------------------------------------------------------------------------

_UNAPPLIED = text(
    "SELECT id, workspace, kind, payload FROM receipts "
    "WHERE status = 'accepted' AND produced_type IS NULL ORDER BY id LIMIT :limit"
)
_PG_UNAPPLIED = text(_UNAPPLIED.text + " FOR UPDATE SKIP LOCKED")
"""Receipts another node is applying right now are passed over."""
_MARK_PRODUCED = text(
    "UPDATE receipts SET produced_type = :type, produced_id = :produced, version = version + 1 "
    "WHERE id = :id AND produced_type IS NULL"
)
_PG_MARK_PRODUCED = text(
    "WITH changed AS (UPDATE receipts AS x SET produced_type = r.type, produced_id = r.produced, "
    "version = x.version + 1 FROM unnest(CAST(:type AS TEXT[]), CAST(:produced AS TEXT[]), "
    "CAST(:id AS TEXT[])) AS r(type, produced, id) WHERE x.id = r.id AND x.produced_type IS NULL "
    "RETURNING 1) SELECT COUNT(*) FROM changed"
)
"""``_MARK_PRODUCED`` for all rows in one statement (PostgreSQL; see ``update_many``)."""
_INSERT_TURN = text(
    "INSERT INTO turns (id, workspace, state, version, attempt, created_at, updated_at, data, "
    "receipt_id, lane, objective, input, budget, deliverable, error) VALUES (:id, :workspace, "
    ":state, 1, 0, :at, :at, '{}', :receipt_id, :lane, :objective, :input, :budget, "
    ":deliverable, :error)"
)
_INSERT_MISSION = text(
    "INSERT INTO missions (id, workspace, state, version, attempt, created_at, updated_at, data, "
    "turn_id, lane, role, number, not_before) VALUES (:id, :workspace, 'queued', 1, 0, :at, :at, "
    "'{}', :turn_id, :lane, :role, :number, :not_before)"
)

_PG_INSERT_TURN = text(
    "INSERT INTO turns (id, workspace, state, version, attempt, created_at, updated_at, data, "
    "receipt_id, lane, objective, input, budget, deliverable, error) SELECT r.id, r.workspace, "
    "r.state, 1, 0, r.at, r.at, '{}', r.receipt_id, r.lane, r.objective, r.input, r.budget, "
    "r.deliverable, r.error FROM unnest(CAST(:id AS TEXT[]), CAST(:workspace AS TEXT[]), "
    "CAST(:state AS TEXT[]), CAST(:at AS TEXT[]), CAST(:receipt_id AS TEXT[]), "
    "CAST(:lane AS TEXT[]), CAST(:objective AS TEXT[]), CAST(:input AS TEXT[]), "
    "CAST(:budget AS TEXT[]), CAST(:deliverable AS TEXT[]), CAST(:error AS TEXT[])) "
    "AS r(id, workspace, state, at, receipt_id, lane, objective, input, budget, deliverable, "
    "error)"
)
_PG_INSERT_MISSION = text(
    "INSERT INTO missions (id, workspace, state, version, attempt, created_at, updated_at, data, "
    "turn_id, lane, role, number, not_before) SELECT r.id, r.workspace, 'queued', 1, 0, r.at, "
    "r.at, '{}', r.turn_id, r.lane, r.role, r.number, r.not_before FROM unnest("
    "CAST(:id AS TEXT[]), CAST(:workspace AS TEXT[]), CAST(:at AS TEXT[]), "
    "CAST(:turn_id AS TEXT[]), CAST(:lane AS TEXT[]), CAST(:role AS TEXT[]), "
    "CAST(:number AS INTEGER[]), CAST(:not_before AS TEXT[])) "
    "AS r(id, workspace, at, turn_id, lane, role, number, not_before)"
)
"""``_INSERT_TURN`` and ``_INSERT_MISSION`` for many rows in one statement (PostgreSQL)."""


def apply_receipts(txn: WriteTxn, plan: WorkPlan, limit: int = 500) -> list[Applied]:
    """Turn accepted receipts that produced nothing yet into turns (with their first mission),
    applied commands, or recorded events; each receipt then points at what it produced.

    A task that cannot run (a malformed task payload, an unknown lane) still becomes a turn,
    failed at once with the reason as its deliverable: every task gets exactly one.

    Safe beside other writers (receipts being applied elsewhere are skipped), except for
    commands: a shared transaction stops before the first command receipt, or raises
    :class:`ExclusiveRequired` when a command comes first.
    """
    postgres = txn.conn.dialect.name == "postgresql"
    rows = txn.conn.execute(_PG_UNAPPLIED if postgres else _UNAPPLIED, {"limit": limit}).all()
    if not rows:
        return []
    applied: list[Applied] = []
    turns: list[dict[str, Any]] = []
    missions: list[dict[str, Any]] = []
    marks: list[dict[str, Any]] = []
    ids = iter(new_ids(2 * len(rows)))
    for receipt_id, workspace, kind, payload_text in rows:
        if kind == "command" and not txn.exclusive:
            # A command may touch anything: it is applied with no other writer beside it.
            if not applied:
                raise ExclusiveRequired(f"receipt {receipt_id} is a command")
            break
        payload = json.loads(payload_text)
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
            _entry(
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
                _entry(
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
                    _mission_row(txn, mission_id, workspace, turn_id, lane, "primary", 1)
                )
            turns.append(turn)
            applied.append(Applied(receipt_id, "turn", turn_id))
        elif kind == "command":
            result = apply_command(txn, workspace, payload, plan, actor=f"receipt:{receipt_id}")
            applied.append(Applied(receipt_id, "command", canonical_text(result)))
        else:
            _entry(
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
            applied.append(Applied(receipt_id, "event", receipt_id))
    for item in applied:
        marks.append(
            {"type": item.produced_type, "produced": item.produced_id, "id": item.receipt_id}
        )
    marked = txn.update_many(_MARK_PRODUCED, marks, postgres=_PG_MARK_PRODUCED)
    if marked != len(marks):
        # Another writer applied some of these first; nothing here may stand twice.
        raise ReceiptsAlreadyApplied(f"{len(marks) - marked} receipts were applied elsewhere")
    txn.insert_many(_INSERT_TURN, turns, postgres=_PG_INSERT_TURN)
    txn.insert_many(_INSERT_MISSION, missions, postgres=_PG_INSERT_MISSION)
    return applied


class ReceiptsAlreadyApplied(Exception):
    """Another runtime applied some of the same receipts first; the operation rolls back."""


def _mission_row(
    txn: WriteTxn,
    mission_id: str,
    workspace: str,
    turn_id: str,
    lane: str,
    role: Role,
    number: int,
    not_before: str | None = None,
) -> dict[str, Any]:
    _entry(
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


def _entry(
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


# --- supervisor commands -----------------------------------------------------------------------


def _refuse(
    txn: WriteTxn,
    workspace: str,
    actor: str,
    subject_type: str,
    subject_id: str,
    details: dict[str, Any],
) -> dict[str, Any]:
    """Record a refused command (nothing else changes) and return its result."""
    _entry(txn, workspace, actor, "command.refused", subject_type, subject_id, None, None, details)
    return {"ok": False, "errors": details["errors"]}


_FLAG_COMMANDS: dict[str, tuple[str, bool | None]] = {
    "lane.pause": ("paused", True),
    "lane.resume": ("paused", False),
    "lane.force_fallback": ("force_fallback", None),
    "lane.shadow": ("shadow", None),
    "fallback.force": ("force_fallback", None),
}
"""Lane-flag commands: the flag each sets, and to what (``None``: the command's ``on``)."""


def apply_command(
    txn: WriteTxn, workspace: str, payload: Mapping[str, Any], plan: WorkPlan, actor: str
) -> dict[str, Any]:
    """Apply one supervisor command; return its result (``ok`` and what happened)."""
    spec = parse_command(payload)
    if not isinstance(spec, CommandSpec):
        return _refuse(txn, workspace, actor, "command", actor, {"errors": spec})
    name, args = spec.name, spec.args
    if isinstance(args.get("actor"), str):
        actor = str(args["actor"])
    if name in _FLAG_COMMANDS:
        lane = "*" if name == "fallback.force" else str(args["lane"])
        if lane != "*" and lane not in plan.lanes:
            errors = [f"payload.lane: no lane named {lane!r}"]
            return _refuse(
                txn, workspace, actor, "command", actor, {"errors": errors, "command": name}
            )
        column, fixed = _FLAG_COMMANDS[name]
        value = bool(args.get("on")) if fixed is None else fixed
        set_flag(txn, lane, column, value, actor=actor, workspace=workspace)
        return {"ok": True, "command": name, "lane": lane, column: value}
    if name != "turn.requeue":
        from quarterdeck.store.commands import apply_supervision  # commands builds on this module

        return apply_supervision(txn, workspace, spec, plan, actor)
    return requeue_turn(txn, workspace, str(args["turn_id"]), plan, actor)


def set_flag(
    txn: WriteTxn, lane: str, flag: str, value: bool, *, actor: str, workspace: str
) -> None:
    """Set one lane flag (``*`` for global) and record it on the ledger."""
    assert flag in ("paused", "shadow", "force_fallback")
    txn.conn.execute(
        text(
            "INSERT INTO lane_flags (lane, paused, shadow, force_fallback, version, updated_at) "
            "VALUES (:lane, 0, 0, 0, 1, :at) ON CONFLICT (lane) DO NOTHING"
        ),
        {"lane": lane, "at": txn.at},
    )
    txn.conn.execute(
        text(
            f"UPDATE lane_flags SET {flag} = :value, version = version + 1, updated_at = :at "
            "WHERE lane = :lane"
        ),
        {"value": int(value), "at": txn.at, "lane": lane},
    )
    action = {
        "paused": "lane.paused" if value else "lane.resumed",
        "shadow": "lane.shadow_on" if value else "lane.shadow_off",
        "force_fallback": "lane.force_fallback_on" if value else "lane.force_fallback_off",
    }[flag]
    _entry(txn, workspace, actor, action, "lane", lane, None, None, {flag: value})


@dataclass(frozen=True, slots=True)
class Flags:
    """Flags as read: per lane, and the global force-fallback switch."""

    paused: frozenset[str]
    shadow: frozenset[str]
    forced: frozenset[str]
    force_all: bool


def read_flags(conn: Any) -> Flags:
    """Read every lane's flags (works on a sync connection)."""
    rows = conn.execute(text("SELECT lane, paused, shadow, force_fallback FROM lane_flags")).all()
    return Flags(
        paused=frozenset(r.lane for r in rows if r.paused and r.lane != "*"),
        shadow=frozenset(r.lane for r in rows if r.shadow and r.lane != "*"),
        forced=frozenset(r.lane for r in rows if r.force_fallback and r.lane != "*"),
        force_all=any(r.lane == "*" and r.force_fallback for r in rows),
    )


def requeue_turn(
    txn: WriteTxn, workspace: str, turn_id: str, plan: WorkPlan, actor: str
) -> dict[str, Any]:
    """Give a held (dead-lettered) turn a fresh mission on its own lane."""
    turn = txn.conn.execute(
        text(
            "SELECT state, version, lane, dead_letter FROM turns WHERE id = :id AND workspace = :w"
        ),
        {"id": turn_id, "w": workspace},
    ).first()
    if turn is None or turn.dead_letter != "held":
        reason = (
            "no such turn" if turn is None else f"turn is not held (dead_letter={turn.dead_letter})"
        )
        return _refuse(
            txn, workspace, actor, "turn", turn_id, {"command": "turn.requeue", "errors": [reason]}
        )
    txn.conn.execute(
        text(
            "UPDATE turns SET dead_letter = NULL, held_until = NULL, version = version + 1, "
            "updated_at = :at WHERE id = :id"
        ),
        {"at": txn.at, "id": turn_id},
    )
    _entry(
        txn,
        workspace,
        actor,
        "turn.requeued",
        "turn",
        turn_id,
        None,
        None,
        {"version": turn.version + 1},
    )
    mission_id = new_ids(1)[0]
    row = _mission_row(txn, mission_id, workspace, turn_id, turn.lane, "primary", 1)
    txn.conn.execute(_INSERT_MISSION, row)
    return {"ok": True, "command": "turn.requeue", "turn": turn_id, "mission": mission_id}


def _move_turn(
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
    _entry(
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


def _move_mission(
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
    _entry(
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


# --- claiming ----------------------------------------------------------------------------------

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


_CLAIM_MISSION = text(
    "UPDATE missions SET state = 'running', attempt = attempt + 1, version = version + 1, "
    "lease_owner = :owner, lease_expires_at = :expires, routed_lane = :exec_lane, "
    "session_id = :session, started_at = :at, updated_at = :at, decision_id = :decision "
    "WHERE id = :id AND version = :version AND (state = 'queued') IS TRUE"
)
"""``(state = 'queued') IS TRUE``, not ``state = 'queued'``: the same test, but one that no
index on ``state`` serves, so PostgreSQL's planner cannot pick such an index over the primary
key (it did on tables not yet analyzed, scanning every queued mission for each claimed row)."""
_LEASE_TURN = text(
    "UPDATE turns SET state = 'running', attempt = attempt + 1, version = version + 2, "
    "lease_owner = :owner, lease_expires_at = :expires, updated_at = :at "
    "WHERE id = :id AND version = :version AND state = :from"
)
"""A claimed turn is leased and, the worker starting at once, running: two transitions, two
ledger entries, one row update."""
_PG_CLAIM_MISSION = text(
    "WITH changed AS (UPDATE missions AS m SET state = 'running', attempt = m.attempt + 1, "
    "version = m.version + 1, lease_owner = r.owner, lease_expires_at = r.expires, "
    "routed_lane = r.exec_lane, session_id = r.session, started_at = r.at, updated_at = r.at, "
    "decision_id = r.decision FROM unnest(CAST(:owner AS TEXT[]), CAST(:expires AS TEXT[]), "
    "CAST(:exec_lane AS TEXT[]), CAST(:session AS TEXT[]), CAST(:at AS TEXT[]), "
    "CAST(:id AS TEXT[]), CAST(:version AS INTEGER[]), CAST(:decision AS TEXT[])) "
    "AS r(owner, expires, exec_lane, session, at, id, version, decision) "
    "WHERE m.id = r.id AND m.version = r.version AND (m.state = 'queued') IS TRUE "
    "RETURNING 1) SELECT COUNT(*) FROM changed"
)
_PG_LEASE_TURN = text(
    "WITH changed AS (UPDATE turns AS t SET state = 'running', attempt = t.attempt + 1, "
    "version = t.version + 2, lease_owner = r.owner, lease_expires_at = r.expires, "
    "updated_at = r.at FROM unnest(CAST(:owner AS TEXT[]), CAST(:expires AS TEXT[]), "
    "CAST(:at AS TEXT[]), CAST(:id AS TEXT[]), CAST(:version AS INTEGER[]), "
    "CAST(:from AS TEXT[])) AS r(owner, expires, at, id, version, from_state) "
    "WHERE t.id = r.id AND t.version = r.version AND t.state = r.from_state "
    "RETURNING 1) SELECT COUNT(*) FROM changed"
)
"""``_CLAIM_MISSION`` and ``_LEASE_TURN`` for all rows in one statement each (PostgreSQL)."""


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
    policy = plan.policy if plan is not None else None
    for row in candidates:
        shadow = row.role == "shadow"
        if not shadow and row.turn_state not in ("queued",):
            _move_mission(txn, row.workspace, row.id, "queued", "cancelled", row.version, owner)
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
            verdict = decisions.decide(txn, policy, request, tally)
            drow = decisions.decision_row(
                txn, kind="dispatch", request=request, decision=verdict, turn_id=row.turn_id,
                mission_id=row.id, action_key=f"dispatch:{row.id}",
            )  # fmt: skip
            tally.add(request, drow["verdict"] == "allow")
            if drow["verdict"] == "allow":
                decided.append(drow)
                decision_id = drow["id"]
            elif drow["verdict"] == "deny" or shadow or plan is None:
                reason = (
                    verdict.denial_reason()
                    if drow["verdict"] == "deny"
                    else "needs approval, and a shadow mission is never held for a person"
                    if shadow
                    else "needs approval, and nothing here can hold it for a person"
                )
                drow.update(verdict="deny", reason=reason)
                decisions.insert_decisions(txn, [drow])
                _refuse_dispatch(txn, row, drow, owner)
                continue
            else:
                decisions.insert_decisions(txn, [drow])
                _hold_dispatch(txn, plan, row, request, verdict, drow)
                continue
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
        _entry(
            txn,
            row.workspace,
            owner,
            "mission.running",
            "mission",
            row.id,
            "queued",
            "running",
            {
                "version": row.version + 1,
                "attempt": row.attempt + 1,
                "owner": owner,
                "lane": exec_lane,
                "routed_from": row.lane if row.lane != exec_lane else None,
                "lease_expires_at": expires,
                "session": session,
                "decision": decision_id,
            },
        )
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
            _entry(
                txn,
                row.workspace,
                owner,
                "turn.leased",
                "turn",
                row.turn_id,
                row.turn_state,
                "leased",
                {
                    "version": row.turn_version + 1,
                    "attempt": row.turn_attempt + 1,
                    "mission": row.id,
                },
            )
            _entry(
                txn,
                row.workspace,
                owner,
                "turn.running",
                "turn",
                row.turn_id,
                "leased",
                "running",
                {"version": row.turn_version + 2, "mission": row.id},
            )
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
        moved = txn.update_many(_CLAIM_MISSION, mission_rows, postgres=_PG_CLAIM_MISSION)
        if moved != len(mission_rows):
            raise ClaimConflict("missions changed under the claim")
    if turn_rows:
        moved = txn.update_many(_LEASE_TURN, turn_rows, postgres=_PG_LEASE_TURN)
        if moved != len(turn_rows):
            raise ClaimConflict("turns changed under the claim")
    return claims


def _refuse_dispatch(txn: WriteTxn, row: Any, drow: Mapping[str, Any], actor: str) -> None:
    """The policy denied a dispatch: the mission fails, and so does its turn (not a shadow's)."""
    reason = str(drow["reason"])
    _move_mission(
        txn, row.workspace, row.id, "queued", "failed", row.version, actor,
        error=reason, decision_id=str(drow["id"]),
    )  # fmt: skip
    if row.role != "shadow" and row.turn_state == "queued":
        _move_turn(
            txn, row.workspace, row.turn_id, "queued", "failed", row.turn_version, actor,
            error=reason, deliverable={"error": reason, "decision": drow["id"]},
        )  # fmt: skip


def _hold_dispatch(
    txn: WriteTxn,
    plan: WorkPlan,
    row: Any,
    request: Any,
    verdict: Any,
    drow: Mapping[str, Any],
) -> None:
    """The policy wants a person to approve this dispatch: open the approval, bind the mission
    to the pending decision, and let the turn wait."""
    from quarterdeck.store import approvals  # approvals builds on this module

    txn.conn.execute(
        text("UPDATE missions SET decision_id = :d WHERE id = :id"), {"d": drow["id"], "id": row.id}
    )
    approvals.create_approval(
        txn,
        plan,
        approvals.NewApproval(
            workspace=row.workspace, kind="dispatch", action_key=f"dispatch:{row.id}",
            action_id=row.id, tool=request.tool, args=request.args, lane=request.lane,
            turn_id=row.turn_id, mission_id=row.id, decision_id=drow["id"],
            requested_by="coordinator", estimated_cost=request.estimated_cost,
        ),
        verdict,
    )  # fmt: skip
    _move_turn(
        txn, row.workspace, row.turn_id, "queued", "awaiting_approval", row.turn_version,
        "coordinator", extra={"mission": row.id, "decision": drow["id"]},
    )  # fmt: skip


class ClaimConflict(Exception):
    """Rows changed between reading and claiming them (another writer); the operation rolls back."""


# --- heartbeats --------------------------------------------------------------------------------

_HEARTBEAT = text(
    "UPDATE missions SET lease_expires_at = :expires WHERE id = :id AND attempt = :attempt "
    "AND lease_owner = :owner AND state IN ('running', 'blocked')"
)
"""Fenced by the lease (attempt and owner) and the live states: a heartbeat changes no state,
so it does not compare the version, which moves when a mission blocks on an approval."""


def heartbeat(txn: WriteTxn, claims: Sequence[Claim], lease_s: float) -> list[Claim]:
    """Extend the leases of held missions; return the claims whose lease was lost (recorded).

    A heartbeat that finds its mission already finished at the same attempt (the worker's own
    finish committed first) is not a lost lease and records nothing.
    """
    if not claims:
        return []
    expires = format_instant(txn.now + timedelta(seconds=lease_s))
    lost = []
    for claim in claims:
        changed = txn.conn.execute(
            _HEARTBEAT,
            {
                "expires": expires,
                "id": claim.mission_id,
                "attempt": claim.attempt,
                "owner": claim.owner,
            },
        ).rowcount
        if changed == 1:
            continue
        row = txn.conn.execute(
            text("SELECT state, attempt FROM missions WHERE id = :id"), {"id": claim.mission_id}
        ).first()
        if row is not None and row.attempt == claim.attempt and row.state in SELF_FINISHED_STATES:
            continue
        lost.append(claim)
        _record_rejected(txn, claim, "heartbeat")
    return lost


_BUMP = text(
    "INSERT INTO counters (name, value) VALUES (:name, :n) "
    "ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value"
)


def bump_counter(txn: WriteTxn, name: str, n: int = 1) -> None:
    """Add ``n`` to a named counter kept with the data."""
    txn.conn.execute(_BUMP, {"name": name, "n": n})


def _record_rejected(txn: WriteTxn, claim: Claim, what: str) -> None:
    bump_counter(txn, "late_writes_rejected")
    _entry(
        txn,
        claim.workspace,
        claim.owner,
        "mission.late_write_rejected",
        "mission",
        claim.mission_id,
        None,
        None,
        {"write": what, "attempt": claim.attempt, "version": claim.version, "owner": claim.owner},
    )
    from quarterdeck.store.alerts import open_alert  # alerts builds on this module

    open_alert(
        txn, (), workspace=claim.workspace, alert_type="out_of_sequence", severity="warn",
        subject_type="mission", subject_id=claim.mission_id,
        dedupe=f"sequence:{claim.mission_id}",
        message=f"late {what} from {claim.owner} (attempt {claim.attempt}) was refused",
        data={"write": what, "attempt": claim.attempt, "owner": claim.owner},
        actor=claim.owner,
    )  # fmt: skip


# --- finishing ---------------------------------------------------------------------------------

_FINISH_MISSION = text(
    "UPDATE missions SET state = :to, version = version + 1, updated_at = :at, finished_at = :at, "
    "lease_owner = NULL, lease_expires_at = NULL, result = :result, error = :error "
    "WHERE id = :id AND attempt = :attempt AND version = :version AND lease_owner = :owner "
    "AND state IN ('running', 'blocked')"
)


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
    changed = txn.conn.execute(
        _FINISH_MISSION,
        {
            "to": outcome,
            "at": txn.at,
            "result": canonical_text(dict(result)) if result is not None else None,
            "error": error,
            "id": claim.mission_id,
            "attempt": claim.attempt,
            "version": claim.version,
            "owner": claim.owner,
        },
    ).rowcount
    if changed != 1:
        _record_rejected(txn, claim, outcome)
        return Finished(accepted=False)
    payload: dict[str, Any] = {
        "version": claim.version + 1,
        "attempt": claim.attempt,
        "lane": claim.exec_lane,
        "role": claim.role,
    }
    if error is not None:
        payload["error"] = error
    _entry(
        txn,
        claim.workspace,
        claim.owner,
        f"mission.{outcome}",
        "mission",
        claim.mission_id,
        "running",
        outcome,
        payload,
    )
    if claim.role == "shadow":
        return Finished(accepted=True)
    turn = txn.conn.execute(
        text("SELECT state, version, lane FROM turns WHERE id = :id"), {"id": claim.turn_id}
    ).first()
    if turn is None or turn.state not in ("leased", "running", "awaiting_approval"):
        return Finished(accepted=True, turn_state=None if turn is None else turn.state)
    if outcome == "completed":
        deliverable = dict(result or {})
        _move_turn(
            txn,
            claim.workspace,
            claim.turn_id,
            turn.state,
            "completed",
            turn.version,
            claim.owner,
            deliverable=deliverable,
            extra={"mission": claim.mission_id, "lane": claim.exec_lane},
        )
        return Finished(accepted=True, turn_state="completed")
    if outcome == "cancelled":
        return Finished(accepted=True, turn_state=turn.state)
    return _retry_or_dead_letter(txn, claim, turn, plan, error or outcome)


@dataclass(frozen=True, slots=True)
class Ending:
    """How one claimed mission ended, as reported by the worker."""

    claim: Claim
    outcome: Finish
    result: Mapping[str, Any] | None = None
    error: str | None = None


_HOLDERS = text(
    "SELECT id, attempt, version, lease_owner, state FROM missions WHERE id IN :ids"
).bindparams(bindparam("ids", expanding=True))
_LIVE_TURNS = text("SELECT id, state, version FROM turns WHERE id IN :ids").bindparams(
    bindparam("ids", expanding=True)
)
_PG_HOLDERS = text(
    "SELECT id, attempt, version, lease_owner, state FROM missions "
    "WHERE id = ANY(CAST(:ids AS TEXT[])) ORDER BY id FOR UPDATE"
)
_PG_LIVE_TURNS = text(
    "SELECT id, state, version FROM turns WHERE id = ANY(CAST(:ids AS TEXT[])) "
    "ORDER BY id FOR UPDATE"
)
"""On PostgreSQL the rows a finish reads stay as read until it commits (locked in id order,
missions before turns), beside other nodes' writes."""
_COMPLETE_TURN = text(
    "UPDATE turns SET state = 'completed', version = version + 1, updated_at = :at, "
    "deliverable = :deliverable, dead_letter = NULL, lease_owner = NULL, "
    "lease_expires_at = NULL WHERE id = :id AND version = :version AND state = :from"
)
_PG_FINISH_MISSION = text(
    "WITH changed AS (UPDATE missions AS m SET state = r.to_state, version = m.version + 1, "
    "updated_at = r.at, finished_at = r.at, lease_owner = NULL, lease_expires_at = NULL, "
    "result = r.result, error = r.error FROM unnest(CAST(:to AS TEXT[]), CAST(:at AS TEXT[]), "
    "CAST(:result AS TEXT[]), CAST(:error AS TEXT[]), CAST(:id AS TEXT[]), "
    "CAST(:attempt AS INTEGER[]), CAST(:version AS INTEGER[]), CAST(:owner AS TEXT[])) "
    "AS r(to_state, at, result, error, id, attempt, version, owner) "
    "WHERE m.id = r.id AND m.attempt = r.attempt AND m.version = r.version "
    "AND m.lease_owner = r.owner AND m.state IN ('running', 'blocked') "
    "RETURNING 1) SELECT COUNT(*) FROM changed"
)
_PG_COMPLETE_TURN = text(
    "WITH changed AS (UPDATE turns AS t SET state = 'completed', version = t.version + 1, "
    "updated_at = r.at, deliverable = r.deliverable, dead_letter = NULL, lease_owner = NULL, "
    "lease_expires_at = NULL FROM unnest(CAST(:at AS TEXT[]), CAST(:deliverable AS TEXT[]), "
    "CAST(:id AS TEXT[]), CAST(:version AS INTEGER[]), CAST(:from AS TEXT[])) "
    "AS r(at, deliverable, id, version, from_state) "
    "WHERE t.id = r.id AND t.version = r.version AND t.state = r.from_state "
    "RETURNING 1) SELECT COUNT(*) FROM changed"
)
"""``_FINISH_MISSION`` and ``_COMPLETE_TURN`` for all rows in one statement each
(PostgreSQL)."""


def finish_missions(txn: WriteTxn, endings: Sequence[Ending], plan: WorkPlan) -> list[Finished]:
    """:func:`finish_mission` for many missions at once, in order.

    The common case — a completed primary or fallback mission whose lease still holds and
    whose turn is live — is done with one fenced ``executemany`` for the missions and one for
    their turns; every other ending goes through :func:`finish_mission` one by one.
    """
    if not endings:
        return []
    postgres = txn.conn.dialect.name == "postgresql"
    mission_ids = sorted({e.claim.mission_id for e in endings})
    turn_ids = sorted({e.claim.turn_id for e in endings})
    held = {
        row.id: row
        for row in txn.conn.execute(_PG_HOLDERS if postgres else _HOLDERS, {"ids": mission_ids})
    }
    turns = {
        row.id: row
        for row in txn.conn.execute(_PG_LIVE_TURNS if postgres else _LIVE_TURNS, {"ids": turn_ids})
    }
    fast: list[Ending] = []
    fast_turns: set[str] = set()
    for ending in endings:
        claim, row = ending.claim, held.get(ending.claim.mission_id)
        turn = turns.get(claim.turn_id)
        if (
            ending.outcome == "completed"
            and claim.role != "shadow"
            and row is not None
            and (row.attempt, row.version, row.lease_owner)
            == (claim.attempt, claim.version, claim.owner)
            and row.state in ("running", "blocked")
            and turn is not None
            and turn.state in ("leased", "running", "awaiting_approval")
            and claim.turn_id not in fast_turns
        ):
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
            _entry(
                txn,
                claim.workspace,
                claim.owner,
                "mission.completed",
                "mission",
                claim.mission_id,
                "running",
                "completed",
                {
                    "version": claim.version + 1,
                    "attempt": claim.attempt,
                    "lane": claim.exec_lane,
                    "role": claim.role,
                },
            )
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
            _entry(
                txn,
                claim.workspace,
                claim.owner,
                "turn.completed",
                "turn",
                claim.turn_id,
                turn.state,
                "completed",
                {"version": turn.version + 1, "mission": claim.mission_id, "lane": claim.exec_lane},
            )
            results[id(ending)] = Finished(accepted=True, turn_state="completed")
        moved = txn.update_many(_FINISH_MISSION, mission_rows, postgres=_PG_FINISH_MISSION)
        if moved != len(mission_rows):
            raise ClaimConflict("missions changed while being finished")
        moved = txn.update_many(_COMPLETE_TURN, turn_rows, postgres=_PG_COMPLETE_TURN)
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


def _retry_or_dead_letter(
    txn: WriteTxn, claim: Claim, turn: Any, plan: WorkPlan, reason: str
) -> Finished:
    lane = plan.lanes.get(claim.lane)
    next_lane: str | None = None
    number = 1
    role: Role = claim.role
    delay = 0.0
    if lane is not None and claim.number < lane.max_attempts:
        next_lane, number = claim.lane, claim.number + 1
        delay = backoff_delay(claim.number, lane.backoff_initial_s, lane.backoff_max_s)
    elif (
        lane is not None
        and lane.fallback
        and claim.role == "primary"
        and lane.fallback in plan.lanes
    ):
        next_lane, role = lane.fallback, "fallback"
    if next_lane is None:
        held_until = format_instant(txn.now + timedelta(seconds=plan.hold_s))
        _move_turn(
            txn,
            claim.workspace,
            claim.turn_id,
            turn.state,
            "queued",
            turn.version,
            claim.owner,
            error=reason,
            extra={"dead_letter": "held", "held_until": held_until, "error": reason},
            dead_letter="held",
            held_until=held_until,
        )
        return Finished(accepted=True, turn_state="queued", dead_letter="held")
    not_before = format_instant(txn.now + timedelta(seconds=delay)) if delay else None
    _move_turn(
        txn,
        claim.workspace,
        claim.turn_id,
        turn.state,
        "queued",
        turn.version,
        claim.owner,
        error=reason,
        extra={
            "dead_letter": "retryable",
            "retry_lane": next_lane,
            "not_before": not_before,
            "error": reason,
        },
        dead_letter="retryable",
    )
    mission_id = new_ids(1)[0]
    txn.conn.execute(
        _INSERT_MISSION,
        _mission_row(
            txn, mission_id, claim.workspace, claim.turn_id, next_lane, role, number, not_before
        ),
    )
    return Finished(
        accepted=True, turn_state="queued", next_mission=mission_id, dead_letter="retryable"
    )


def add_shadow_mission(txn: WriteTxn, claim: Claim, fallback_lane: str) -> str:
    """Queue a shadow run of a claimed mission's work on ``fallback_lane`` (result recorded only)."""
    mission_id = new_ids(1)[0]
    txn.conn.execute(
        _INSERT_MISSION,
        _mission_row(txn, mission_id, claim.workspace, claim.turn_id, fallback_lane, "shadow", 1),
    )
    return mission_id


def release_missions(txn: WriteTxn, claims: Sequence[Claim], actor: str) -> None:
    """Hand claimed missions back (a drain): lease cleared, mission and turn queued again,
    fenced like every write for claimed work."""
    for claim in claims:
        changed = txn.conn.execute(
            text(
                "UPDATE missions SET state = 'queued', version = version + 1, "
                "lease_owner = NULL, lease_expires_at = NULL, updated_at = :at "
                "WHERE id = :id AND attempt = :attempt AND version = :version "
                "AND lease_owner = :owner AND state IN ('running', 'blocked')"
            ),
            {
                "at": txn.at,
                "id": claim.mission_id,
                "attempt": claim.attempt,
                "version": claim.version,
                "owner": claim.owner,
            },
        ).rowcount
        if changed != 1:
            continue
        _entry(
            txn,
            claim.workspace,
            actor,
            "mission.released",
            "mission",
            claim.mission_id,
            "running",
            "queued",
            {"version": claim.version + 1, "attempt": claim.attempt, "reason": "drain"},
        )
        if claim.role == "shadow":
            continue
        turn = txn.conn.execute(
            text("SELECT state, version FROM turns WHERE id = :id"), {"id": claim.turn_id}
        ).first()
        if turn is not None and turn.state in ("leased", "running"):
            _move_turn(
                txn,
                claim.workspace,
                claim.turn_id,
                turn.state,
                "queued",
                turn.version,
                actor,
                extra={"reason": "drain"},
            )


def seed_flags(
    txn: WriteTxn, defaults: Mapping[str, Mapping[str, bool]], force_all: bool, actor: str
) -> None:
    """Give lanes seen for the first time their configured flags (later, only commands change
    them), and the global force-fallback switch its configured default."""
    existing = read_flags(txn.conn)
    known = set(txn.conn.execute(text("SELECT lane FROM lane_flags")).scalars().all())
    for lane, flags in defaults.items():
        if lane in known:
            continue
        for flag, value in flags.items():
            if value:
                set_flag(txn, lane, flag, True, actor=actor, workspace=RUNTIME_WORKSPACE)
    if "*" not in known and force_all and not existing.force_all:
        set_flag(txn, "*", "force_fallback", True, actor=actor, workspace=RUNTIME_WORKSPACE)


# --- events ------------------------------------------------------------------------------------

_INSERT_EVENT = text(
    "INSERT INTO mission_events (mission_id, turn_id, workspace, at, type, data) "
    "VALUES (:mission_id, :turn_id, :workspace, :at, :type, :data)"
)


def record_events(txn: WriteTxn, events: Sequence[Mapping[str, Any]]) -> None:
    """Store reported mission events (progress, log, action, error); not ledger entries."""
    if events:
        txn.conn.execute(_INSERT_EVENT, [dict(e) for e in events])


# --- sweeping ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Swept:
    """What one sweep did."""

    reclaimed: int
    dead: int


def sweep(txn: WriteTxn, actor: str, limit: int = 500) -> Swept:
    """Hand back missions whose lease expired (``running -> queued``, turn back to ``queued``)
    and bury held turns whose hold ran out (``held -> dead``, turn ``queued -> failed``)."""
    expired = txn.conn.execute(
        text(
            "SELECT m.id, m.workspace, m.state, m.version, m.attempt, m.lease_owner, m.turn_id, "
            "m.role FROM missions m WHERE m.state IN ('running', 'blocked') "
            "AND m.lease_expires_at < :now ORDER BY m.lease_expires_at LIMIT :limit"
            + (" FOR UPDATE SKIP LOCKED" if txn.conn.dialect.name == "postgresql" else "")
        ),
        {"now": txn.at, "limit": limit},
    ).all()
    for row in expired:
        check_transition(Kind.MISSION, row.state, "queued")
        txn.conn.execute(
            text(
                "UPDATE missions SET state = 'queued', version = version + 1, lease_owner = NULL, "
                "lease_expires_at = NULL, updated_at = :at WHERE id = :id AND version = :version"
            ),
            {"at": txn.at, "id": row.id, "version": row.version},
        )
        _entry(
            txn,
            row.workspace,
            actor,
            "mission.lease_expired",
            "mission",
            row.id,
            row.state,
            "queued",
            {"version": row.version + 1, "attempt": row.attempt, "previous_owner": row.lease_owner},
        )
        if row.role == "shadow":
            continue
        turn = txn.conn.execute(
            text("SELECT state, version FROM turns WHERE id = :id"), {"id": row.turn_id}
        ).first()
        if turn is not None and turn.state in ("leased", "running", "awaiting_approval"):
            _move_turn(
                txn,
                row.workspace,
                row.turn_id,
                turn.state,
                "queued",
                turn.version,
                actor,
                extra={"recovered_mission": row.id},
            )
    held = txn.conn.execute(
        text(
            "SELECT id, workspace, state, version, error FROM turns WHERE dead_letter = 'held' "
            "AND held_until < :now LIMIT :limit"
        ),
        {"now": txn.at, "limit": limit},
    ).all()
    dead = 0
    for row in held:
        if row.state != "queued":
            continue
        reason = row.error or "dead-lettered"
        if _move_turn(
            txn,
            row.workspace,
            row.id,
            "queued",
            "failed",
            row.version,
            actor,
            deliverable={"error": reason, "dead_letter": "dead"},
            extra={"dead_letter": "dead"},
            dead_letter="dead",
        ):
            dead += 1
    if expired:
        bump_counter(txn, "leases_reclaimed", len(expired))
    if dead:
        bump_counter(txn, "dead_letters_dead", dead)
    return Swept(reclaimed=len(expired), dead=dead)
