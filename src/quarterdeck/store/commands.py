"""Applying a supervisor command: :func:`apply_command` reads the payload through the catalogue
(:mod:`quarterdeck.domain.commands`) and hands the typed command, with the authenticated
principal that gave it, to its handler in :data:`HANDLERS`, which checks that the principal may
(:mod:`quarterdeck.domain.authority`, with the facts read in this transaction) and calls the
store operation that does the work (lane flags, requeue, re-baselining here; approvals, take
over, alerts and SDK approval requests in their modules). Each runs in the writer's transaction
and returns its result (``ok`` and what happened); a refused command is recorded and changes
nothing.

Who may give what (``docs/specs/supervision.md``): a lane's flags and baseline act on every
workspace, so they need ``supervisor`` in all of them; every lane at once (``*``), the global
fallback switch and a bulk decision across workspaces need ``admin``; turns and alerts need
``supervisor`` in their workspace (the runtime's own alerts: in every workspace); approvals need
the role of their current ladder level (:mod:`quarterdeck.store.approvals`); anyone may ask for
an approval. A principal pinned to a workspace acts nowhere else. An item is only ever looked
up in the command's workspace.

A command envelope written straight into the database (not given through the runtime, which
authenticates its sender) is an unauthenticated agent's (:func:`unauthenticated_principal`):
it may ask for an approval and nothing else; any other command is refused with the code
``unauthenticated``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Final, TypeAlias, TypeVar

from sqlalchemy import text

from quarterdeck.domain.authority import (
    Kind,
    Principal,
    Refusal,
    may_act_in,
    may_administer,
    may_decide_some,
    may_give,
    may_supervise,
)
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
    TokenCreate,
    TokenRevoke,
    TurnCancel,
    TurnComplete,
    TurnRelease,
    TurnRequeue,
    TurnTakeover,
    parse_command,
)
from quarterdeck.domain.envelope import RUNTIME_WORKSPACE
from quarterdeck.domain.ids import new_ids
from quarterdeck.store import alerts
from quarterdeck.store.approvals import (
    bulk_decide,
    claim_approval,
    decide_approval,
    escalate_approval,
    snooze_approval,
)
from quarterdeck.store.authorizing import refuse_principal
from quarterdeck.store.flags import set_flag
from quarterdeck.store.plan import WorkPlan
from quarterdeck.store.requests import request_approval
from quarterdeck.store.takeover import cancel_turn, complete_turn, release_turn, take_over
from quarterdeck.store.tokens import create_token, revoke_token
from quarterdeck.store.transitions import INSERT_MISSION, append_entry, mission_row, refuse
from quarterdeck.store.writer import WriteTxn

Result: TypeAlias = dict[str, Any]
Handler: TypeAlias = Callable[[WriteTxn, WorkPlan, str, Any, Principal], Result]
"""Applies one kind of command: ``(txn, plan, workspace, command, principal) -> result``."""

C = TypeVar("C", bound=BaseCommand)

UNAUTHENTICATED: Final = "unauthenticated"
"""The refusal code of a command nobody authenticated, and its principal's name prefix."""


def unauthenticated_principal(receipt_id: str, workspace: str) -> Principal:
    """Who gives a command written into the database rather than through the runtime: nobody
    authenticated it, so it is an agent's (``unauthenticated:receipt/<id>``), pinned to the
    receipt's workspace. A name in its payload counts for nothing."""
    return Principal(Kind.AGENT, f"{UNAUTHENTICATED}:receipt/{receipt_id}", workspace=workspace)


def is_unauthenticated(who: Principal) -> bool:
    """Whether ``who`` is the sender of a command written into the database."""
    return who.kind is Kind.AGENT and who.name.startswith(f"{UNAUTHENTICATED}:")


def _given_without_authentication(who: Principal) -> Refusal:
    return Refusal(
        UNAUTHENTICATED,
        f"{who.label}: a command written into the database is unauthenticated and counts as an"
        " agent's, which may only ask for approval (supervisors give commands through the"
        " daemon's control API)",
    )


def apply_command(
    txn: WriteTxn, workspace: str, payload: Mapping[str, Any], plan: WorkPlan, who: Principal
) -> Result:
    """Apply one supervisor command payload (``{"command": NAME, ...}``, see
    ``docs/specs/supervision.md``) given by the authenticated principal ``who``; return its
    result. A payload the catalogue refuses (one naming an ``actor`` too), or a principal the
    rules refuse, is recorded as refused; an unauthenticated sender's command other than an
    approval request is refused as such before its payload is read."""
    actor = who.label
    name = payload.get("command")
    if is_unauthenticated(who) and may_give(who, str(name)) is not None:
        unsigned = _given_without_authentication(who)
        return refuse_principal(txn, workspace, who, str(name), "command", actor, unsigned)
    command = parse_command(payload)
    if isinstance(command, list):
        return refuse(txn, workspace, actor, "command", actor, {"errors": command})
    refusal = may_give(who, command.name) or may_act_in(who, workspace)
    if refusal is not None:
        return refuse_principal(txn, workspace, who, command.name, "command", actor, refusal)
    return HANDLERS[type(command)](txn, plan, workspace, command, who)


def _refused(
    txn: WriteTxn, workspace: str, who: Principal, cmd: BaseCommand, subject: tuple[str, str],
    refusal: Refusal | None,
) -> Result | None:  # fmt: skip
    """The refusal recorded and answered, or None when there is none."""
    if refusal is None:
        return None
    return refuse_principal(txn, workspace, who, cmd.name, subject[0], subject[1], refusal)


# --- lanes ---------------------------------------------------------------------------------------


def _set_lane_flag(
    txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: BaseCommand, lane: str, flag: str,
    value: bool, who: Principal,
) -> Result:  # fmt: skip
    """Set one flag of ``lane`` (``*``: every lane, for ``admin``) when the lane exists; a
    lane's flag acts on every workspace, so it needs ``supervisor`` in all of them."""
    refusal = (
        may_administer(plan.roster, who) if lane == "*" else may_supervise(plan.roster, who, None)
    )
    refused = _refused(txn, workspace, who, cmd, ("lane", lane), refusal)
    if refused is not None:
        return refused
    if lane != "*" and lane not in plan.lanes:
        errors = [f"payload.lane: no lane named {lane!r}"]
        return refuse(
            txn, workspace, who.label, "command", who.label, {"errors": errors, "command": cmd.name}
        )
    set_flag(txn, lane, flag, value, actor=who.label, workspace=workspace)
    if not value and lane != "*":
        # The condition an expiry's alert is about has cleared: the lane runs again.
        alerts.resolve_by_dedupe(
            txn, RUNTIME_WORKSPACE, f"expiry:{lane}:{flag}", who.label, f"{cmd.name} by {who.label}"
        )
    return {"ok": True, "command": cmd.name, "lane": lane, flag: value}


def _pause(txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: LanePause, who: Principal) -> Result:
    return _set_lane_flag(txn, plan, workspace, cmd, cmd.lane, "paused", True, who)


def _resume(
    txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: LaneResume, who: Principal
) -> Result:
    return _set_lane_flag(txn, plan, workspace, cmd, cmd.lane, "paused", False, who)


def _force_lane_fallback(
    txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: LaneForceFallback, who: Principal
) -> Result:
    return _set_lane_flag(txn, plan, workspace, cmd, cmd.lane, "force_fallback", cmd.on, who)


def _shadow(
    txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: LaneShadow, who: Principal
) -> Result:
    return _set_lane_flag(txn, plan, workspace, cmd, cmd.lane, "shadow", cmd.on, who)


def _force_fallback(
    txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: FallbackForce, who: Principal
) -> Result:
    return _set_lane_flag(txn, plan, workspace, cmd, "*", "force_fallback", cmd.on, who)


DRIFT_ACTOR = "drift"
"""The actor the runtime's drift monitor pauses lanes as; re-baselining resumes only those."""


def rebaseline(
    txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: LaneRebaseline, who: Principal
) -> Result:
    """Accept a lane's attested files as they are now: new baseline hashes, its drift alerts
    resolved, and the lane resumed when drift had paused it (``supervisor`` in every
    workspace: the lane serves them all)."""
    lane, actor = cmd.lane, who.label
    refused = _refused(
        txn, workspace, who, cmd, ("lane", lane), may_supervise(plan.roster, who, None)
    )
    if refused is not None:
        return refused
    if lane not in plan.lanes:
        return refuse(
            txn, workspace, actor, "lane", lane,
            {"command": cmd.name, "errors": [f"payload.lane: no lane named {lane!r}"]},
        )  # fmt: skip
    hashes = dict(plan.attested(lane)) if plan.attested is not None else {}
    result = alerts.rebaseline_lane(txn, lane, hashes, actor=actor, drift_actor=DRIFT_ACTOR)
    return {**result, "command": cmd.name}


# --- turns ---------------------------------------------------------------------------------------


def requeue_turn(
    txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: TurnRequeue, who: Principal
) -> Result:
    """Give a held (dead-lettered) turn a fresh mission on its own lane."""
    turn_id, actor = cmd.turn_id, who.label
    refused = _refused(
        txn, workspace, who, cmd, ("turn", turn_id), may_supervise(plan.roster, who, workspace)
    )
    if refused is not None:
        return refused
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
            txn, workspace, actor, "turn", turn_id, {"command": cmd.name, "errors": [reason]}
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
    return {"ok": True, "command": cmd.name, "turn": turn_id, "mission": mission_id}


def _cancel(
    txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: TurnCancel, who: Principal
) -> Result:
    return cancel_turn(txn, plan, workspace, cmd.turn_id, who)


def _take_over(
    txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: TurnTakeover, who: Principal
) -> Result:
    return take_over(txn, plan, workspace, cmd.turn_id, who)


def _release(
    txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: TurnRelease, who: Principal
) -> Result:
    return release_turn(txn, plan, workspace, cmd.turn_id, who)


def _complete(
    txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: TurnComplete, who: Principal
) -> Result:
    return complete_turn(txn, plan, workspace, cmd.turn_id, cmd.deliverable, who)


# --- approvals -----------------------------------------------------------------------------------


def _approve(
    txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: ApprovalApprove, who: Principal
) -> Result:
    return decide_approval(
        txn, plan, workspace, cmd.approval_id, "approve", who, args=cmd.args,
        reason_code=cmd.reason_code, reason=cmd.reason, action_key=cmd.action_key,
    )  # fmt: skip


def _reject(
    txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: ApprovalReject, who: Principal
) -> Result:
    return decide_approval(
        txn, plan, workspace, cmd.approval_id, "reject", who, args=cmd.args,
        reason_code=cmd.reason_code, reason=cmd.reason, action_key=cmd.action_key,
    )  # fmt: skip


def _escalate(
    txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: ApprovalEscalate, who: Principal
) -> Result:
    return escalate_approval(txn, plan, workspace, cmd.approval_id, who)


def _snooze(
    txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: ApprovalSnooze, who: Principal
) -> Result:
    return snooze_approval(txn, plan, workspace, cmd.approval_id, float(cmd.for_s), who)


def _claim(
    txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: ApprovalClaim, who: Principal
) -> Result:
    for_s = None if cmd.for_s is None else float(cmd.for_s)
    return claim_approval(txn, plan, workspace, cmd.approval_id, who, for_s)


def _unclaim(
    txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: ApprovalUnclaim, who: Principal
) -> Result:
    for_s = None if cmd.for_s is None else float(cmd.for_s)
    return claim_approval(txn, plan, workspace, cmd.approval_id, who, for_s, release=True)


def _bulk(
    txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: ApprovalBulk, who: Principal
) -> Result:
    """Within the command's workspace for a principal that may decide something there (each
    approval then checked on its own), or, for ``admin``, across all of them."""
    refusal = (
        may_administer(plan.roster, who)
        if cmd.all_workspaces
        else may_decide_some(plan.roster, who, workspace)
    )
    refused = _refused(txn, workspace, who, cmd, ("command", who.label), refusal)
    if refused is not None:
        return refused
    if cmd.decision not in ("approve", "reject"):
        return refuse(
            txn, workspace, who.label, "command", who.label,
            {"command": cmd.name, "errors": ["payload.decision: must be approve or reject"]},
        )  # fmt: skip
    return bulk_decide(
        txn, plan, None if cmd.all_workspaces else workspace, cmd.decision, cmd.filter, who,
        reason_code=cmd.reason_code, reason=cmd.reason,
    )  # fmt: skip


def _request(
    txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: ApprovalRequest, who: Principal
) -> Result:
    """Anyone may ask (agents above all); the asker is recorded as the requester, who never
    decides it."""
    return request_approval(txn, plan, workspace, cmd.model_dump(exclude_defaults=True), who.label)


# --- alerts --------------------------------------------------------------------------------------


def _alert_refused(
    txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: AlertAck | AlertResolve, who: Principal
) -> Result | None:
    """``supervisor`` in the alert's workspace; the runtime's own alerts (drift, SLO, the
    policy file) concern every workspace, so they need ``supervisor`` in all of them."""
    where = txn.conn.execute(
        text("SELECT workspace FROM alerts WHERE id = :id AND workspace IN (:w, :runtime)"),
        {"id": cmd.alert_id, "w": workspace, "runtime": RUNTIME_WORKSPACE},
    ).scalar()
    scope = None if where == RUNTIME_WORKSPACE else workspace
    return _refused(
        txn, workspace, who, cmd, ("alert", cmd.alert_id), may_supervise(plan.roster, who, scope)
    )


def _ack(txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: AlertAck, who: Principal) -> Result:
    refused = _alert_refused(txn, plan, workspace, cmd, who)
    return refused or alerts.ack_alert(txn, workspace, cmd.alert_id, who.label)


def _resolve(
    txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: AlertResolve, who: Principal
) -> Result:
    refused = _alert_refused(txn, plan, workspace, cmd, who)
    return refused or alerts.resolve_alert(txn, workspace, cmd.alert_id, who.label)


# --- tokens (admin only) ------------------------------------------------------------------------


def _token_create(
    txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: TokenCreate, who: Principal
) -> Result:
    """Tokens give roles: only ``admin`` creates them."""
    refused = _refused(
        txn, workspace, who, cmd, ("token", cmd.principal), may_administer(plan.roster, who)
    )
    return refused if refused is not None else create_token(txn, cmd, who.label)


def _token_revoke(
    txn: WriteTxn, plan: WorkPlan, workspace: str, cmd: TokenRevoke, who: Principal
) -> Result:
    refused = _refused(
        txn, workspace, who, cmd, ("token", cmd.token_id), may_administer(plan.roster, who)
    )
    return refused if refused is not None else revoke_token(txn, cmd.token_id, who.label)


# --- the table -----------------------------------------------------------------------------------


def _handles(
    cls: type[C], handler: Callable[[WriteTxn, WorkPlan, str, C, Principal], Result]
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
    _handles(LaneRebaseline, rebaseline),
    _handles(FallbackForce, _force_fallback),
    _handles(TurnRequeue, requeue_turn),
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
    _handles(TokenCreate, _token_create),
    _handles(TokenRevoke, _token_revoke),
)
"""The handler of every command class of the catalogue."""
