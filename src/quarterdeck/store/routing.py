"""Decide and record: the one sequence every supervised request goes through (a mission's
dispatch, an agent's action, an SDK request). The policy decides (or a ruling made without it
stands: the lease guard's, or the answer of the approval bound to the key), the decision row is
persisted, the decision goes on the ledger, and its route is applied: the action is released,
or an approval opens for a person. What else each asker does is its own (``claiming``, ``gate``,
``requests``); the rules are ``domain/routing``'s. Also here: the call an action key is bound
to (its first decision), and the ``out_of_sequence`` refusal of a key asked for another call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text

from quarterdeck.domain.policy import ActionRequest, PolicyDecision
from quarterdeck.domain.routing import Asker, Call, Route, Ruling, Step, call_of, route_decision
from quarterdeck.store.alerts import open_out_of_sequence
from quarterdeck.store.approvals import NewApproval, create_approval
from quarterdeck.store.decisions import (
    NO_POLICY_HASH,
    Tally,
    decide,
    decision_row,
    insert_decisions,
    release_action,
)
from quarterdeck.store.plan import WorkPlan
from quarterdeck.store.writer import WriteTxn


@dataclass(slots=True)
class Ask:
    """One request to the policy, with what its decision and approval are bound to (not
    frozen: a batched claim builds one per mission, and a frozen init costs three times as
    much)."""

    kind: Asker
    request: ActionRequest
    key: str
    """The stable action key (``domain/routing``'s ``*_key``)."""
    action_id: str
    requested_by: str
    """Who asks: the approval's requester, and the actor of the release and of the request."""
    turn_id: str | None = None
    mission_id: str | None = None
    shadow: bool = False
    """A shadow mission's dispatch (never held for a person)."""
    call_hash: str | None = None
    """The hash of the call asked (:attr:`Call.hash`; None for a dispatch): what the key is
    bound to when this is its first decision."""


@dataclass(slots=True)
class Decided:
    """What became of a request: its route, the decision recorded, the approval opened."""

    route: Route
    decision: PolicyDecision
    row: dict[str, Any]
    """The decision row (inserted, or left in the caller's batch)."""
    approval_id: str | None = None
    """The approval opened for it (a hold), else the one bound to its key."""

    @property
    def decision_id(self) -> str:
        """The id of the decision recorded."""
        return str(self.row["id"])


def policy_hash(plan: WorkPlan | None) -> str:
    """The hash of the policy in force (``none`` without one)."""
    policy = plan.policy if plan is not None else None
    return policy.hash if policy is not None else NO_POLICY_HASH


def decide_and_record(
    txn: WriteTxn,
    plan: WorkPlan | None,
    ask: Ask,
    *,
    ruling: Ruling | None = None,
    tally: Tally | None = None,
    batch: list[dict[str, Any]] | None = None,
) -> Decided:
    """Decide ``ask`` under ``plan``'s policy (allow-all without one), unless a ``ruling``
    made without the policy stands; persist the decision, put it on the ledger and apply its
    route: release an allowed action (not a dispatch: claiming the mission is its release),
    or open an approval for a hold (``plan`` is then required).

    ``tally`` counts decisions made earlier in the same transaction. With ``batch`` (a batched
    claim), an allowed decision's row is appended to it for the caller to insert with the
    others; any other row is inserted at once.
    """
    fresh = ruling is None
    kind = str(ask.kind)
    if ruling is None:
        decision = decide(txn, plan.policy if plan is not None else None, ask.request, tally)
        route = route_decision(ask.kind, decision, shadow=ask.shadow, can_hold=plan is not None)
        if tally is not None:
            tally.add(ask.request, route.step is Step.RELEASE)
    else:
        decision, route = ruling.decision, ruling.route
    row = decision_row(
        txn, kind=kind, request=ask.request, decision=decision, turn_id=ask.turn_id,
        mission_id=ask.mission_id, action_key=ask.key, verdict=route.verdict,
        approval_id=route.approval_id, decided_by=route.decided_by, reason=route.reason,
        call_hash=ask.call_hash,
    )  # fmt: skip
    if batch is not None and route.step is Step.RELEASE:
        batch.append(row)
    else:
        insert_decisions(txn, [row])
    _note(txn, ask, decision, route, fresh)
    if route.step is Step.RELEASE and ask.kind is not Asker.DISPATCH:
        release_action(
            txn, workspace=ask.request.workspace, turn_id=ask.turn_id, mission_id=ask.mission_id,
            action_key=ask.key, decision_id=row["id"],
            args=route.args if route.args is not None else ask.request.args,
            actor=ask.requested_by,
        )  # fmt: skip
    if route.step is Step.HOLD:
        if plan is None:
            raise ValueError("a hold needs a work plan to open its approval")
        request = ask.request
        approval_id = create_approval(
            txn,
            plan,
            NewApproval(
                workspace=request.workspace, kind=kind, action_key=ask.key,
                action_id=ask.action_id, tool=request.tool, args=request.args, lane=request.lane,
                turn_id=ask.turn_id, mission_id=ask.mission_id, decision_id=row["id"],
                requested_by=ask.requested_by, estimated_cost=request.estimated_cost,
            ),
            decision,
        )  # fmt: skip
        return Decided(route, decision, row, approval_id)
    return Decided(route, decision, row, route.approval_id)


def _note(txn: WriteTxn, ask: Ask, decision: PolicyDecision, route: Route, fresh: bool) -> None:
    """The ledger entries of a decision: an agent's action is recorded as requested, then as
    decided (on its mission); an SDK request as decided (on its key); a dispatch has none of
    its own (its mission's transitions say what became of it). Only a fresh policy decision
    names the rule and the policy's hash."""
    if ask.kind is Asker.DISPATCH:
        return
    request = ask.request
    subject_type, subject_id = (
        ("mission", ask.mission_id) if ask.mission_id else ("action", ask.key)
    )
    if ask.kind is Asker.SDK:
        decided: dict[str, Any] = {
            "action_key": ask.key, "tool": request.tool, "args": dict(request.args),
            "verdict": route.verdict, "rule": decision.rule, "policy_hash": decision.policy_hash,
            "requested_by": ask.requested_by,
        }  # fmt: skip
        if not fresh:
            decided["reason"] = route.reason
    else:
        requested = {"action_key": ask.key, "tool": request.tool, "args": dict(request.args)}
        if ask.call_hash is not None:
            requested["call_hash"] = ask.call_hash
        txn.ledger.append(
            at=txn.at, workspace=request.workspace, actor=ask.requested_by,
            action="action.requested", subject_type=subject_type, subject_id=subject_id,
            payload=requested,
        )  # fmt: skip
        decided = {"action_key": ask.key, "verdict": route.verdict, "reason": route.reason}
        if fresh:
            decided.update(rule=decision.rule, policy_hash=decision.policy_hash)
    if ask.kind is Asker.SDK and ask.call_hash is not None:
        decided["call_hash"] = ask.call_hash
    if route.code is not None:
        decided["code"] = route.code
    txn.ledger.append(
        at=txn.at, workspace=request.workspace, actor="policy", action="action.decided",
        subject_type=subject_type, subject_id=subject_id, payload=decided,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Binding:
    """The call an action key is bound to: its first decision, that call's hash, and what
    the decision said."""

    decision_id: str
    call_hash: str
    verdict: str
    reason: str | None
    args: Any
    """The arguments recorded (decoded JSON)."""


_FIRST_DECISION = text(
    "SELECT id, call_hash, tool, args, verdict, reason FROM decisions WHERE workspace = :w "
    "AND action_key = :k AND kind <> 'dispatch' ORDER BY at, id LIMIT 1"
)


def binding_of(txn: WriteTxn, workspace: str, key: str) -> Binding | None:
    """The call ``key`` was first asked for, or None when it was never asked. A decision
    recorded before calls were hashed is hashed from its stored tool and arguments (stored
    whole then)."""
    row = txn.conn.execute(_FIRST_DECISION, {"w": workspace, "k": key}).first()
    if row is None:
        return None
    args = json.loads(row.args)
    bound = row.call_hash or call_of(row.tool, args).hash
    return Binding(str(row.id), bound, row.verdict, row.reason, args)


def refuse_out_of_sequence(
    txn: WriteTxn, plan: WorkPlan | None, ask: Ask, ruling: Ruling, call: Call, binding: Binding
) -> Decided:
    """Record the refusal of a key asked for another call than the one it is bound to (the
    decision, with what was asked, on the ledger) and open an ``out_of_sequence`` alert."""
    done = decide_and_record(txn, plan, ask, ruling=ruling)
    subject_type, subject_id = (
        ("mission", ask.mission_id) if ask.mission_id else ("action", ask.key)
    )
    open_out_of_sequence(
        txn, plan.targets if plan is not None else (), workspace=ask.request.workspace,
        subject_type=subject_type, subject_id=subject_id, action_key=ask.key,
        action_id=ask.action_id, tool=call.tool, call_hash=call.hash,
        bound_hash=binding.call_hash, bound_decision=binding.decision_id,
        refusal=done.decision_id, actor=ask.requested_by,
    )  # fmt: skip
    return done
