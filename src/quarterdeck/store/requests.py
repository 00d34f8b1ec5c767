"""SDK approval requests: a caller outside any lane asks to run a tool; the policy decides now,
or the request is bound to an approval a person decides. Runs in the writer's transaction."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import text

from quarterdeck.domain.policy import ActionRequest
from quarterdeck.domain.routing import (
    Asker,
    Prior,
    Step,
    approval_verdict,
    route_repeat,
    same_call,
    sdk_key,
)
from quarterdeck.store.approvals import approval_by_key, approval_view
from quarterdeck.store.decisions import SDK_LANE
from quarterdeck.store.plan import WorkPlan
from quarterdeck.store.routing import Ask, decide_and_record
from quarterdeck.store.transitions import refuse
from quarterdeck.store.writer import WriteTxn

_PRIOR = text(
    "SELECT verdict, reason, tool, args FROM decisions WHERE workspace = :w "
    "AND action_key = :k AND kind = 'sdk' ORDER BY at LIMIT 1"
)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def request_approval(
    txn: WriteTxn, plan: WorkPlan, workspace: str, args: Mapping[str, Any], actor: str
) -> dict[str, Any]:
    """An SDK caller asks to run ``tool`` with ``args``: decided by the policy now, or bound
    to an approval. Asking again with the same ``action_id`` returns the same answer."""
    action_id = str(args["action_id"])
    key = sdk_key(action_id)
    existing = approval_by_key(txn, workspace, key)
    if existing is not None:
        return {"ok": True, "verdict": approval_verdict(existing.state), **approval_view(existing)}
    found = txn.conn.execute(_PRIOR, {"w": workspace, "k": key}).first()
    tool_args = args.get("args", {})
    if not isinstance(tool_args, Mapping):
        return refuse(
            txn, workspace, actor, "command", actor,
            {"command": "approval.request", "errors": ["payload.args: must be an object"]},
        )  # fmt: skip
    if found is not None:
        stored = json.loads(found.args)
        prior = Prior(
            verdict=found.verdict,
            same_call=same_call(str(args["tool"]), tool_args, found.tool, stored),
            reason=found.reason,
            args=stored,
        )
        route = route_repeat(Asker.SDK, prior, action_id)
        if route.step is Step.REFUSE:
            return refuse(
                txn, workspace, actor, "action", key,
                {"command": "approval.request", "errors": [route.reason]},
            )  # fmt: skip
        return {"ok": True, "verdict": route.verdict, "action_key": key, "reason": route.reason,
                "args": stored, "effective_args": stored, "approval": None}  # fmt: skip
    cost = args.get("estimated_cost")
    lane = _text(args.get("lane")) or SDK_LANE
    request = ActionRequest(
        workspace, lane, str(args["tool"]), tool_args,
        float(cost) if isinstance(cost, int | float) and not isinstance(cost, bool) else None,
    )  # fmt: skip
    ask = Ask(Asker.SDK, request, key, action_id=action_id, requested_by=actor)
    done = decide_and_record(txn, plan, ask)
    base = {"ok": True, "action_key": key, "args": dict(tool_args),
            "effective_args": dict(tool_args), "rule": done.decision.rule}  # fmt: skip
    if done.route.step is Step.RELEASE:
        return {**base, "verdict": "allow", "approval": None}
    if done.route.step is Step.DENY:
        return {**base, "verdict": "deny", "reason": done.route.reason, "approval": None}
    fresh = approval_by_key(txn, workspace, key)
    return {**base, "verdict": "pending", **approval_view(fresh), "approval": done.approval_id}
