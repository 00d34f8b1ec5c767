"""The action gate: what an agent's tool call gets. Every call is decided by the policy (or
by the approval bound to its action key) and persisted before the agent hears anything; a
call that waits for a person blocks its mission and turn until the approval is decided."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import text

from quarterdeck.domain.policy import ActionRequest, Outcome, PolicyDecision, TraceStep
from quarterdeck.domain.states import MISSION_HOLDS_LEASE, Kind
from quarterdeck.store.approvals import (
    Gate,
    NewApproval,
    approval_by_key,
    create_approval,
    gate_from_approval,
)
from quarterdeck.store.decisions import (
    NO_POLICY_HASH,
    decide,
    decision_row,
    insert_decisions,
    release_action,
)
from quarterdeck.store.plan import Claim, WorkPlan
from quarterdeck.store.transitions import move, move_turn
from quarterdeck.store.writer import WriteTxn


def action_key(turn_id: str, action_id: str) -> str:
    """An agent's action id, scoped to its turn (stable across the turn's retries)."""
    return f"turn:{turn_id}:{action_id}"


def _guard(reason: str, policy_hash: str) -> PolicyDecision:
    return PolicyDecision(
        Outcome.DENY, None, (TraceStep("(guard)", True, reason, kind="guard"),), None, None, (),
        None, policy_hash,
    )  # fmt: skip


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

    An approval already bound to the action key (an earlier try of the same turn asked) is
    reused; otherwise the policy decides: ``allow`` releases at once, ``deny`` rejects with
    the deciding rule, ``require_approval`` opens an approval and blocks the mission
    (``running -> blocked``) and turn (``running -> awaiting_approval``). A turn held by a
    person, or a mission whose lease is gone, gets nothing released.
    """
    key = action_key(claim.turn_id, action_id)
    request = ActionRequest(claim.workspace, claim.exec_lane, tool, args, estimated_cost)
    holder = txn.conn.execute(
        text(
            "SELECT m.state AS mission_state, m.attempt, m.lease_owner, t.state AS turn_state "
            "FROM missions m JOIN turns t ON t.id = m.turn_id WHERE m.id = :id"
        ),
        {"id": claim.mission_id},
    ).first()
    policy_hash = plan.policy.hash if plan.policy is not None else NO_POLICY_HASH
    guard = None
    if holder is None or (holder.attempt, holder.lease_owner) != (claim.attempt, claim.owner):
        guard = "the mission's lease is gone"
    elif holder.turn_state == "taken_over":
        guard = "a person has taken over the turn"
    elif holder.mission_state not in MISSION_HOLDS_LEASE:
        guard = f"the mission is {holder.mission_state}"
    if guard is not None:
        decision = _guard(guard, policy_hash)
        row = decision_row(
            txn, kind="action", request=request, decision=decision, turn_id=claim.turn_id,
            mission_id=claim.mission_id, action_key=key, reason=guard,
        )  # fmt: skip
        insert_decisions(txn, [row])
        _record_request(txn, claim, key, tool, args, "deny", guard)
        return Gate("rejected", args, "rejected", guard, decision_id=row["id"])
    existing = approval_by_key(txn, claim.workspace, key)
    if existing is not None:
        gate = gate_from_approval(existing)
        verdict = {"released": "allow", "rejected": "deny", "waiting": "pending"}[gate.status]
        decision = PolicyDecision(
            Outcome.REQUIRE_APPROVAL, None,
            (TraceStep("(approval)", True, f"bound to approval {existing.id} ({existing.state})",
                       kind="approval"),),
            None, None, (), None, policy_hash,
        )  # fmt: skip
        row = decision_row(
            txn, kind="action", request=request, decision=decision, turn_id=claim.turn_id,
            mission_id=claim.mission_id, action_key=key, verdict=verdict,
            approval_id=existing.id, decided_by=existing.decided_by, reason=gate.reason,
        )  # fmt: skip
        insert_decisions(txn, [row])
        _record_request(txn, claim, key, tool, args, verdict, gate.reason)
        if gate.status == "released":
            release_action(
                txn, workspace=claim.workspace, turn_id=claim.turn_id,
                mission_id=claim.mission_id, action_key=key, decision_id=row["id"],
                args=gate.args, actor=claim.owner,
            )  # fmt: skip
        elif gate.status == "waiting":
            _block(txn, claim)
        return Gate(gate.status, gate.args, gate.outcome, gate.reason, existing.id, row["id"])
    decision = decide(txn, plan.policy, request)
    row = decision_row(
        txn, kind="action", request=request, decision=decision, turn_id=claim.turn_id,
        mission_id=claim.mission_id, action_key=key,
    )  # fmt: skip
    if decision.outcome is Outcome.DENY:
        row["reason"] = decision.denial_reason()
    insert_decisions(txn, [row])
    _record_request(txn, claim, key, tool, args, row["verdict"], row["reason"], decision)
    if decision.outcome is Outcome.ALLOW:
        release_action(
            txn, workspace=claim.workspace, turn_id=claim.turn_id, mission_id=claim.mission_id,
            action_key=key, decision_id=row["id"], args=args, actor=claim.owner,
        )  # fmt: skip
        return Gate("released", args, "approved", _allowed_by(decision), decision_id=row["id"])
    if decision.outcome is Outcome.DENY:
        return Gate("rejected", args, "rejected", row["reason"], decision_id=row["id"])
    approval_id = create_approval(
        txn,
        plan,
        NewApproval(
            workspace=claim.workspace, kind="action", action_key=key, action_id=action_id,
            tool=tool, args=args, lane=claim.exec_lane, turn_id=claim.turn_id,
            mission_id=claim.mission_id, decision_id=row["id"], requested_by=claim.owner,
            estimated_cost=estimated_cost,
        ),
        decision,
    )  # fmt: skip
    _block(txn, claim)
    return Gate("waiting", args, approval_id=approval_id, decision_id=row["id"])


def _allowed_by(decision: PolicyDecision) -> str:
    if decision.rule is not None:
        return f"allowed by policy rule {decision.rule!r}"
    return decision.trace[0].why if decision.trace else "allowed"


def _record_request(
    txn: WriteTxn,
    claim: Claim,
    key: str,
    tool: str,
    args: Mapping[str, Any],
    verdict: str,
    reason: str | None,
    decision: PolicyDecision | None = None,
) -> None:
    txn.ledger.append(
        at=txn.at, workspace=claim.workspace, actor=claim.owner, action="action.requested",
        subject_type="mission", subject_id=claim.mission_id,
        payload={"action_key": key, "tool": tool, "args": dict(args)},
    )  # fmt: skip
    decided: dict[str, Any] = {"action_key": key, "verdict": verdict, "reason": reason}
    if decision is not None:
        decided.update(rule=decision.rule, policy_hash=decision.policy_hash)
    txn.ledger.append(
        at=txn.at, workspace=claim.workspace, actor="policy", action="action.decided",
        subject_type="mission", subject_id=claim.mission_id, payload=decided,
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
