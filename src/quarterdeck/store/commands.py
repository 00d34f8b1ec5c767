"""Applying a supervisor command: :func:`apply_command` reads the payload through the catalogue
(:mod:`quarterdeck.domain.commands`) and hands the typed command to its handler in
:data:`HANDLERS`, which calls the store operation that does the work (lane flags, requeue,
re-baselining here; approvals, take over, alerts and SDK approval requests in their modules).
Each runs in the writer's transaction and returns its result (``ok`` and what happened); a
refused command is recorded and changes nothing."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Final, TypeAlias, TypeVar

from sqlalchemy import text

from quarterdeck.domain.commands import (
    CATALOGUE,
    AlertAck,
    AlertResolve,
    ApprovalApprove,
    ApprovalBulk,
    ApprovalClaim,
    ApprovalEscalate,
    ApprovalReject,
    ApprovalRequest,
    ApprovalSnooze,
    ApprovalUnclaim,
    BaseCommand,
    FallbackForce,
    LaneForceFallback,
    LanePause,
    LaneRebaseline,
    LaneResume,
    LaneShadow,
    TurnCancel,
    TurnComplete,
    TurnRelease,
    TurnRequeue,
    TurnTakeover,
    parse_command,
)
from quarterdeck.domain.ids import new_ids
from quarterdeck.store import alerts
from quarterdeck.store.approvals import (
    bulk_decide,
    claim_approval,
    decide_approval,
    escalate_approval,
    snooze_approval,
)
from quarterdeck.store.flags import set_flag
from quarterdeck.store.plan import WorkPlan
from quarterdeck.store.requests import request_approval
from quarterdeck.store.takeover import cancel_turn, complete_turn, release_turn, take_over
from quarterdeck.store.transitions import INSERT_MISSION, append_entry, mission_row, refuse
from quarterdeck.store.writer import WriteTxn

Result: TypeAlias = dict[str, Any]
Handler: TypeAlias = Callable[[WriteTxn, WorkPlan, str, Any, str], Result]
"""Applies one kind of command: ``(txn, plan, workspace, command, actor) -> result``."""

C = TypeVar("C", bound=BaseCommand)


def apply_command(
    txn: WriteTxn, workspace: str, payload: Mapping[str, Any], plan: WorkPlan, actor: str
) -> Result:
    """Apply one supervisor command payload (``{"command": NAME, ...}``, see
    ``docs/specs/supervision.md``); return its result. A payload the catalogue refuses is
    recorded as refused. The command's own ``actor``, when it names one, gives it."""
    command = parse_command(payload)
    if isinstance(command, list):
        return refuse(txn, workspace, actor, "command", actor, {"errors": command})
    return HANDLERS[type(command)](txn, plan, workspace, command, command.actor or actor)


# --- lanes ---------------------------------------------------------------------------------------


def _set_lane_flag(
    txn: WriteTxn, plan: WorkPlan, workspace: str, name: str, lane: str, flag: str, value: bool,
    actor: str,
) -> Result:  # fmt: skip
    """Set one flag of ``lane`` (``*``: every lane) when the lane exists."""
    if lane != "*" and lane not in plan.lanes:
        errors = [f"payload.lane: no lane named {lane!r}"]
        return refuse(txn, workspace, actor, "command", actor, {"errors": errors, "command": name})
    set_flag(txn, lane, flag, value, actor=actor, workspace=workspace)
    return {"ok": True, "command": name, "lane": lane, flag: value}


def _pause(txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: LanePause, actor: str) -> Result:
    return _set_lane_flag(txn, plan, workspace, cmd.name, cmd.lane, "paused", True, actor)


def _resume(txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: LaneResume, actor: str) -> Result:
    return _set_lane_flag(txn, plan, workspace, cmd.name, cmd.lane, "paused", False, actor)


def _force_lane_fallback(
    txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: LaneForceFallback, actor: str
) -> Result:
    return _set_lane_flag(txn, plan, workspace, cmd.name, cmd.lane, "force_fallback", cmd.on, actor)


def _shadow(txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: LaneShadow, actor: str) -> Result:
    return _set_lane_flag(txn, plan, workspace, cmd.name, cmd.lane, "shadow", cmd.on, actor)


def _force_fallback(
    txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: FallbackForce, actor: str
) -> Result:
    return _set_lane_flag(txn, plan, workspace, cmd.name, "*", "force_fallback", cmd.on, actor)


DRIFT_ACTOR = "drift"
"""The actor the runtime's drift monitor pauses lanes as; re-baselining resumes only those."""


def rebaseline(txn: WriteTxn, plan: WorkPlan, workspace: str, lane: str, actor: str) -> Result:
    """Accept a lane's attested files as they are now: new baseline hashes, its drift alerts
    resolved, and the lane resumed when drift had paused it."""
    if lane not in plan.lanes:
        return refuse(
            txn, workspace, actor, "lane", lane,
            {"command": "lane.rebaseline", "errors": [f"payload.lane: no lane named {lane!r}"]},
        )  # fmt: skip
    hashes = dict(plan.attested(lane)) if plan.attested is not None else {}
    result = alerts.rebaseline_lane(txn, lane, hashes, actor=actor, drift_actor=DRIFT_ACTOR)
    return {**result, "command": "lane.rebaseline"}


def _rebaseline(
    txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: LaneRebaseline, actor: str
) -> Result:
    return rebaseline(txn, plan, workspace, cmd.lane, actor)


# --- turns ---------------------------------------------------------------------------------------


def requeue_turn(txn: WriteTxn, workspace: str, turn_id: str, plan: WorkPlan, actor: str) -> Result:
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
        return refuse(
            txn, workspace, actor, "turn", turn_id, {"command": "turn.requeue", "errors": [reason]}
        )
    txn.conn.execute(
        text(
            "UPDATE turns SET dead_letter = NULL, held_until = NULL, version = version + 1, "
            "updated_at = :at WHERE id = :id"
        ),
        {"at": txn.at, "id": turn_id},
    )
    append_entry(
        txn, workspace, actor, "turn.requeued", "turn", turn_id, None, None,
        {"version": turn.version + 1},
    )  # fmt: skip
    mission_id = new_ids(1)[0]
    row = mission_row(txn, mission_id, workspace, turn_id, turn.lane, "primary", 1)
    txn.conn.execute(INSERT_MISSION.each, row)
    return {"ok": True, "command": "turn.requeue", "turn": turn_id, "mission": mission_id}


def _requeue(txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: TurnRequeue, actor: str) -> Result:
    return requeue_turn(txn, workspace, cmd.turn_id, plan, actor)


def _cancel(txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: TurnCancel, actor: str) -> Result:
    return cancel_turn(txn, plan, workspace, cmd.turn_id, actor)


def _take_over(
    txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: TurnTakeover, actor: str
) -> Result:
    return take_over(txn, plan, workspace, cmd.turn_id, actor)


def _release(txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: TurnRelease, actor: str) -> Result:
    return release_turn(txn, plan, workspace, cmd.turn_id, actor)


def _complete(
    txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: TurnComplete, actor: str
) -> Result:
    return complete_turn(txn, workspace, cmd.turn_id, cmd.deliverable, actor)


# --- approvals -----------------------------------------------------------------------------------


def _approve(
    txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: ApprovalApprove, actor: str
) -> Result:
    return decide_approval(
        txn, plan, workspace, cmd.approval_id, "approve", actor, args=cmd.args,
        reason_code=cmd.reason_code, reason=cmd.reason, action_key=cmd.action_key,
    )  # fmt: skip


def _reject(
    txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: ApprovalReject, actor: str
) -> Result:
    return decide_approval(
        txn, plan, workspace, cmd.approval_id, "reject", actor, args=cmd.args,
        reason_code=cmd.reason_code, reason=cmd.reason, action_key=cmd.action_key,
    )  # fmt: skip


def _escalate(
    txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: ApprovalEscalate, actor: str
) -> Result:
    return escalate_approval(txn, plan, workspace, cmd.approval_id, actor)


def _snooze(
    txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: ApprovalSnooze, actor: str
) -> Result:
    return snooze_approval(txn, workspace, cmd.approval_id, float(cmd.for_s), actor)


def _claim(txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: ApprovalClaim, actor: str) -> Result:
    for_s = None if cmd.for_s is None else float(cmd.for_s)
    return claim_approval(txn, plan, workspace, cmd.approval_id, actor, for_s)


def _unclaim(
    txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: ApprovalUnclaim, actor: str
) -> Result:
    for_s = None if cmd.for_s is None else float(cmd.for_s)
    return claim_approval(txn, plan, workspace, cmd.approval_id, actor, for_s, release=True)


def _bulk(txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: ApprovalBulk, actor: str) -> Result:
    if cmd.decision not in ("approve", "reject"):
        return refuse(
            txn, workspace, actor, "command", actor,
            {"command": cmd.name, "errors": ["payload.decision: must be approve or reject"]},
        )  # fmt: skip
    return bulk_decide(
        txn, plan, None if cmd.all_workspaces else workspace, cmd.decision, cmd.filter, actor,
        reason_code=cmd.reason_code, reason=cmd.reason,
    )  # fmt: skip


def _request(
    txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: ApprovalRequest, actor: str
) -> Result:
    return request_approval(txn, plan, workspace, cmd.model_dump(exclude_defaults=True), actor)


# --- alerts --------------------------------------------------------------------------------------


def _ack(txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: AlertAck, actor: str) -> Result:
    return alerts.ack_alert(txn, workspace, cmd.alert_id, actor)


def _resolve(
    txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: AlertResolve, actor: str
) -> Result:
    return alerts.resolve_alert(txn, workspace, cmd.alert_id, actor)


# --- the table -----------------------------------------------------------------------------------


def _handles(
    cls: type[C], handler: Callable[[WriteTxn, WorkPlan, str, C, str], Result]
) -> tuple[type[BaseCommand], Handler]:
    """One row of the table (the type checker holds the handler to its command's class)."""
    return cls, handler


def _table(*rows: tuple[type[BaseCommand], Handler]) -> Mapping[type[BaseCommand], Handler]:
    table = dict(rows)
    if len(table) != len(rows) or set(table) != set(CATALOGUE.values()):
        raise AssertionError("every command of the catalogue needs exactly one handler")
    return MappingProxyType(table)


HANDLERS: Final[Mapping[type[BaseCommand], Handler]] = _table(
    _handles(LanePause, _pause),
    _handles(LaneResume, _resume),
    _handles(LaneForceFallback, _force_lane_fallback),
    _handles(LaneShadow, _shadow),
    _handles(LaneRebaseline, _rebaseline),
    _handles(FallbackForce, _force_fallback),
    _handles(TurnRequeue, _requeue),
    _handles(TurnCancel, _cancel),
    _handles(TurnTakeover, _take_over),
    _handles(TurnRelease, _release),
    _handles(TurnComplete, _complete),
    _handles(ApprovalApprove, _approve),
    _handles(ApprovalReject, _reject),
    _handles(ApprovalEscalate, _escalate),
    _handles(ApprovalSnooze, _snooze),
    _handles(ApprovalClaim, _claim),
    _handles(ApprovalUnclaim, _unclaim),
    _handles(ApprovalBulk, _bulk),
    _handles(ApprovalRequest, _request),
    _handles(AlertAck, _ack),
    _handles(AlertResolve, _resolve),
)
"""The handler of every command class of the catalogue."""
