"""SDK approval requests: a caller outside any lane asks to run a tool; the policy decides now,
or the request is bound to an approval a person decides. Runs in the writer's transaction."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import text

from quarterdeck.domain.canonical import canonical_text
from quarterdeck.domain.policy import ActionRequest, Outcome
from quarterdeck.domain.states import APPROVAL_ALLOWED, APPROVAL_REFUSED
from quarterdeck.store.approvals import (
    NewApproval,
    approval_by_key,
    approval_view,
    create_approval,
)
from quarterdeck.store.decisions import (
    SDK_LANE,
    decide,
    decision_row,
    insert_decisions,
    release_action,
)
from quarterdeck.store.plan import WorkPlan
from quarterdeck.store.transitions import refuse
from quarterdeck.store.writer import WriteTxn


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def request_approval(
    txn: WriteTxn, plan: WorkPlan, workspace: str, args: Mapping[str, Any], actor: str
) -> dict[str, Any]:
    """An SDK caller asks to run ``tool`` with ``args``: decided by the policy now, or bound
    to an approval. Asking again with the same ``action_id`` returns the same answer."""
    action_id = str(args["action_id"])
    key = f"sdk:{action_id}"
    existing = approval_by_key(txn, workspace, key)
    if existing is not None:
        return {"ok": True, "verdict": _verdict(existing.state), **approval_view(existing)}
    prior = txn.conn.execute(
        text(
            "SELECT verdict, reason, tool, args FROM decisions WHERE workspace = :w "
            "AND action_key = :k AND kind = 'sdk' ORDER BY at LIMIT 1"
        ),
        {"w": workspace, "k": key},
    ).first()
    tool_args = args.get("args", {})
    if not isinstance(tool_args, Mapping):
        return refuse(
            txn, workspace, actor, "command", actor,
            {"command": "approval.request", "errors": ["payload.args: must be an object"]},
        )  # fmt: skip
    if prior is not None:
        if prior.tool != args["tool"] or json.loads(prior.args) != json.loads(
            canonical_text(dict(tool_args))
        ):
            error = f"action {action_id!r} was decided for other tool or arguments"
            return refuse(
                txn, workspace, actor, "action", key,
                {"command": "approval.request", "errors": [error]},
            )  # fmt: skip
        stored = json.loads(prior.args)
        return {"ok": True, "verdict": prior.verdict, "action_key": key, "reason": prior.reason,
                "args": stored, "effective_args": stored, "approval": None}  # fmt: skip
    cost = args.get("estimated_cost")
    lane = _text(args.get("lane")) or SDK_LANE
    request = ActionRequest(
        workspace, lane, str(args["tool"]), tool_args,
        float(cost) if isinstance(cost, int | float) and not isinstance(cost, bool) else None,
    )  # fmt: skip
    decision = decide(txn, plan.policy, request)
    row = decision_row(
        txn, kind="sdk", request=request, decision=decision, turn_id=None, mission_id=None,
        action_key=key,
    )  # fmt: skip
    if decision.outcome is Outcome.DENY:
        row["reason"] = decision.denial_reason()
    insert_decisions(txn, [row])
    txn.ledger.append(
        at=txn.at, workspace=workspace, actor="policy", action="action.decided",
        subject_type="action", subject_id=key,
        payload={"action_key": key, "tool": request.tool, "args": dict(tool_args),
                 "verdict": row["verdict"], "rule": decision.rule,
                 "policy_hash": decision.policy_hash, "requested_by": actor},
    )  # fmt: skip
    base = {"ok": True, "action_key": key, "args": dict(tool_args),
            "effective_args": dict(tool_args), "rule": decision.rule}  # fmt: skip
    if decision.outcome is Outcome.ALLOW:
        release_action(
            txn, workspace=workspace, turn_id=None, mission_id=None, action_key=key,
            decision_id=row["id"], args=tool_args, actor=actor,
        )  # fmt: skip
        return {**base, "verdict": "allow", "approval": None}
    if decision.outcome is Outcome.DENY:
        return {**base, "verdict": "deny", "reason": row["reason"], "approval": None}
    approval_id = create_approval(
        txn, plan,
        NewApproval(
            workspace=workspace, kind="sdk", action_key=key, action_id=action_id,
            tool=request.tool, args=tool_args, lane=lane, turn_id=None, mission_id=None,
            decision_id=row["id"], requested_by=actor, estimated_cost=request.estimated_cost,
        ),
        decision,
    )  # fmt: skip
    fresh = approval_by_key(txn, workspace, key)
    return {**base, "verdict": "pending", **approval_view(fresh), "approval": approval_id}


def _verdict(state: str) -> str:
    if state in APPROVAL_ALLOWED:
        return "allow"
    if state in APPROVAL_REFUSED:
        return "deny"
    return "pending"
