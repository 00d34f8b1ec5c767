"""The action gate: what an agent's tool call gets. Every call is decided by the policy (or
by the approval bound to its action key) and persisted before the agent hears anything; a
call that waits for a person blocks its mission and turn until the approval is decided. An
action id is bound to the call first asked under it: asked again for another call, it is
refused and an ``out_of_sequence`` alert opens. Calls over the size cap, and calls past the
mission's action cap, are refused with a reason code (and recorded without their arguments)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import text

from quarterdeck.domain.policy import ActionRequest
from quarterdeck.domain.routing import (
    Asker,
    Holder,
    Prior,
    Route,
    Step,
    action_key,
    allowed_by,
    approval_verdict,
    bound,
    call_of,
    guarded,
    kept_whole,
    lease_guard,
    over_action_cap,
    over_size_cap,
    refused,
    same_call,
    stored_call,
)
from quarterdeck.domain.states import Kind
from quarterdeck.store.approvals import Gate, approval_by_key, gate_from_approval
from quarterdeck.store.decisions import release_action
from quarterdeck.store.plan import Claim, WorkPlan
from quarterdeck.store.routing import (
    Ask,
    binding_of,
    decide_and_record,
    policy_hash,
    refuse_out_of_sequence,
)
from quarterdeck.store.transitions import move, move_turn
from quarterdeck.store.writer import WriteTxn

_HOLDER = text(
    "SELECT m.state AS mission_state, m.attempt, m.lease_owner, t.state AS turn_state "
    "FROM missions m JOIN turns t ON t.id = m.turn_id WHERE m.id = :id"
)
_ACTIONS_ASKED = text("SELECT count(*) FROM decisions WHERE mission_id = :m AND kind = 'action'")


def request_action(
    txn: WriteTxn,
    plan: WorkPlan,
    claim: Claim,
    action_id: str,
    tool: str,
    args: Mapping[str, Any],
    estimated_cost: float | None = None,
) -> Gate:
    """Decide an agent's tool call and persist the decision.

    Refused without asking the policy: a call whose mission's lease is gone (or whose turn a
    person holds), a call past the mission's action cap, an action id asked before for
    another call (``out_of_sequence``, with an alert), a call over the size cap. An approval
    already bound to the action key (an earlier try of the same turn asked the same call)
    is reused; otherwise the policy decides: ``allow`` releases at once, ``deny`` rejects
    with the deciding rule, ``require_approval`` opens an approval and blocks the mission
    (``running -> blocked``) and turn (``running -> awaiting_approval``).

    Raises:
        ValueError: ``args`` hold NaN or an infinity (canonical JSON has neither).
    """
    key = action_key(claim.turn_id, action_id)
    call = call_of(tool, args)
    caps = plan.caps
    hashed = policy_hash(plan)

    def ask(route: Route | None = None) -> Ask:
        stored_tool, stored_args = stored_call(call, kept_whole(call, caps, route))
        request = ActionRequest(
            claim.workspace, claim.exec_lane, stored_tool, stored_args, estimated_cost
        )
        return Ask(
            Asker.ACTION, request, key, action_id=action_id, requested_by=claim.owner,
            turn_id=claim.turn_id, mission_id=claim.mission_id, call_hash=call.hash,
        )  # fmt: skip

    found = txn.conn.execute(_HOLDER, {"id": claim.mission_id}).first()
    holder = None if found is None else Holder(*found)
    guard = lease_guard(holder, claim.attempt, claim.owner)
    if guard is not None:
        done = decide_and_record(txn, plan, ask(), ruling=guarded(guard, hashed))
        return Gate("rejected", args, "rejected", guard, decision_id=done.decision_id)
    asked = int(txn.conn.execute(_ACTIONS_ASKED, {"m": claim.mission_id}).scalar() or 0)
    capped = over_action_cap(asked, caps)
    if capped is not None:
        return _refuse(txn, plan, ask(capped), capped)
    binding = binding_of(txn, claim.workspace, key)
    if binding is not None and not same_call(call, binding.call_hash):
        prior = Prior("deny", False, decision_id=binding.decision_id)
        ruling = bound(Asker.ACTION, prior, action_id, hashed)
        mismatch = ask(ruling.route)
        done = refuse_out_of_sequence(txn, plan, mismatch, ruling, call, binding)
        return _rejected(ruling.route, mismatch, done.decision_id)
    capped = over_size_cap(call, caps)
    if capped is not None:
        return _refuse(txn, plan, ask(capped), capped)
    existing = approval_by_key(txn, claim.workspace, key)
    if existing is not None:
        gate = gate_from_approval(existing)
        prior = Prior(
            verdict=approval_verdict(existing.state),
            same_call=True,
            reason=gate.reason,
            args=gate.args,
            approval_id=existing.id,
            state=existing.state,
            decided_by=existing.decided_by,
        )
        done = decide_and_record(
            txn, plan, ask(), ruling=bound(Asker.ACTION, prior, action_id, hashed)
        )
        if done.route.step is Step.WAIT:
            _block(txn, claim)
        return Gate(
            gate.status, gate.args, gate.outcome, gate.reason, existing.id, done.decision_id
        )
    done = decide_and_record(txn, plan, ask())
    decision_id = done.decision_id
    if done.route.step is Step.RELEASE:
        return Gate(
            "released", args, "approved", allowed_by(done.decision), decision_id=decision_id
        )
    if done.route.step is Step.DENY:
        return Gate("rejected", args, "rejected", done.route.reason, decision_id=decision_id)
    _block(txn, claim)
    return Gate("waiting", args, approval_id=done.approval_id, decision_id=decision_id)


def _refuse(txn: WriteTxn, plan: WorkPlan, ask: Ask, route: Route) -> Gate:
    """Record a cap's refusal (made without the policy) and tell the agent."""
    done = decide_and_record(txn, plan, ask, ruling=refused(route, policy_hash(plan), "(cap)"))
    return _rejected(route, ask, done.decision_id)


def _rejected(route: Route, ask: Ask, decision_id: str) -> Gate:
    """A refusal, with its reason code as the gate's outcome (the agent hears ``rejected``,
    with the arguments as recorded: a digest in place of arguments that were not kept)."""
    return Gate(
        "rejected", ask.request.args, route.code or "rejected", route.reason,
        decision_id=decision_id,
    )  # fmt: skip


def _block(txn: WriteTxn, claim: Claim) -> None:
    """``running -> blocked`` for the mission and ``running -> awaiting_approval`` for its turn
    (a shadow mission leaves its turn alone). Fenced by the lease (attempt and owner)."""
    _move_state(txn, claim, "running", "blocked")
    if claim.role == "shadow":
        return
    turn = txn.conn.execute(
        text("SELECT state, version FROM turns WHERE id = :id"), {"id": claim.turn_id}
    ).first()
    if turn is not None and turn.state == "running":
        move_turn(
            txn, claim.workspace, claim.turn_id, "running", "awaiting_approval", turn.version,
            claim.owner, extra={"mission": claim.mission_id},
        )  # fmt: skip


def _move_state(txn: WriteTxn, claim: Claim, from_state: str, to_state: str) -> int | None:
    """Block or unblock the claimed mission, fenced by its lease alone (its version moved on
    with the approval); returns its new version, or None when the lease is gone."""
    return move(
        txn, Kind.MISSION, claim.mission_id, from_state, to_state, workspace=claim.workspace,
        actor=claim.owner, version=None, lease=(claim.attempt, claim.owner),
        payload={"attempt": claim.attempt},
    )  # fmt: skip


def resume_action(
    txn: WriteTxn, plan: WorkPlan, claim: Claim, approval_id: str, decision_id: str | None
) -> tuple[Gate, int | None]:
    """After the approval is decided: unblock the mission (and turn) and release the action
    with the approved (or edited) arguments, or hand back the rejection. Returns the gate and
    the mission's new version (None when the lease is gone: nothing is released)."""
    row = txn.conn.execute(
        text("SELECT * FROM approvals WHERE id = :id"), {"id": approval_id}
    ).first()
    if row is None:
        return Gate("rejected", {}, "rejected", f"approval {approval_id} is gone"), None
    gate = gate_from_approval(row)
    if gate.status == "waiting":
        return gate, None
    version = _move_state(txn, claim, "blocked", "running")
    if version is None:
        return Gate("rejected", gate.args, "rejected", "the mission's lease is gone"), None
    if claim.role != "shadow":
        turn = txn.conn.execute(
            text("SELECT state, version FROM turns WHERE id = :id"), {"id": claim.turn_id}
        ).first()
        if turn is not None and turn.state == "awaiting_approval":
            move_turn(
                txn, claim.workspace, claim.turn_id, "awaiting_approval", "running",
                turn.version, claim.owner, extra={"approval": approval_id},
            )  # fmt: skip
    if gate.status == "released":
        own = decision_id or txn.conn.execute(
            text("SELECT id FROM decisions WHERE approval_id = :a AND mission_id = :m "
                 "ORDER BY at DESC LIMIT 1"),
            {"a": approval_id, "m": claim.mission_id},
        ).scalar()  # fmt: skip
        release_action(
            txn, workspace=claim.workspace, turn_id=claim.turn_id, mission_id=claim.mission_id,
            action_key=row.action_key, decision_id=str(own), args=gate.args, actor=claim.owner,
        )  # fmt: skip
    return Gate(
        gate.status, gate.args, gate.outcome, gate.reason, approval_id, decision_id
    ), version
