"""SDK approval requests: a caller outside any lane asks to run a tool; the policy decides now,
or the request is bound to an approval a person decides. The action id is bound to the call
first asked under it: asked again for another call, it is refused and an ``out_of_sequence``
alert opens; a call over the size cap is denied (``args_too_large``) and recorded without its
arguments. Runs in the writer's transaction."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from quarterdeck.domain.policy import ActionRequest
from quarterdeck.domain.routing import (
    OUT_OF_SEQUENCE,
    Asker,
    Prior,
    Route,
    Step,
    approval_verdict,
    bound,
    call_of,
    kept_whole,
    over_size_cap,
    refused,
    route_repeat,
    same_call,
    sdk_key,
    stored_call,
)
from quarterdeck.store.approvals import approval_by_key, approval_view
from quarterdeck.store.decisions import SDK_LANE
from quarterdeck.store.plan import WorkPlan
from quarterdeck.store.routing import (
    Ask,
    binding_of,
    decide_and_record,
    policy_hash,
    refuse_out_of_sequence,
)
from quarterdeck.store.transitions import refuse
from quarterdeck.store.writer import WriteTxn


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def request_approval(
    txn: WriteTxn, plan: WorkPlan, workspace: str, args: Mapping[str, Any], actor: str
) -> dict[str, Any]:
    """An SDK caller asks to run ``tool`` with ``args``: decided by the policy now, or bound
    to an approval. Asking again with the same ``action_id`` and the same call returns the
    same answer; with another call, the request is refused (``out_of_sequence``)."""
    action_id = str(args["action_id"])
    key = sdk_key(action_id)
    tool = str(args["tool"])
    tool_args = args.get("args", {})
    if not isinstance(tool_args, Mapping):
        return refuse(
            txn, workspace, actor, "command", actor,
            {"command": "approval.request", "errors": ["payload.args: must be an object"]},
        )  # fmt: skip
    try:
        call = call_of(tool, tool_args)
    except (TypeError, ValueError) as exc:
        return refuse(
            txn, workspace, actor, "command", actor,
            {"command": "approval.request", "errors": [f"payload.args: not JSON: {exc}"]},
        )  # fmt: skip
    cost = args.get("estimated_cost")
    lane = _text(args.get("lane")) or SDK_LANE
    hashed = policy_hash(plan)

    def ask(route: Route | None = None) -> Ask:
        stored_tool, stored_args = stored_call(call, kept_whole(call, plan.caps, route))
        request = ActionRequest(
            workspace, lane, stored_tool, stored_args,
            float(cost) if isinstance(cost, int | float) and not isinstance(cost, bool) else None,
        )  # fmt: skip
        return Ask(
            Asker.SDK, request, key, action_id=action_id, requested_by=actor,
            call_hash=call.hash,
        )  # fmt: skip

    binding = binding_of(txn, workspace, key)
    if binding is not None and not same_call(call, binding.call_hash):
        ruling = bound(Asker.SDK, Prior("deny", False, decision_id=binding.decision_id),
                       action_id, hashed)  # fmt: skip
        mismatch = ask(ruling.route)
        done = refuse_out_of_sequence(txn, plan, mismatch, ruling, call, binding)
        return refuse(
            txn, workspace, actor, "action", key,
            {"command": "approval.request", "errors": [ruling.route.reason],
             "code": OUT_OF_SEQUENCE, "tool": mismatch.request.tool,
             "args": dict(mismatch.request.args), "call_hash": call.hash,
             "bound_hash": binding.call_hash, "decision": done.decision_id},
        )  # fmt: skip
    # An approval is opened only with the decision on its key (``decide_and_record``, in one
    # transaction, never deleted): a key never decided has none, and needs no look.
    existing = None if binding is None else approval_by_key(txn, workspace, key)
    if existing is not None:
        return {"ok": True, "verdict": approval_verdict(existing.state), **approval_view(existing)}
    if binding is not None:
        prior = Prior(binding.verdict, True, binding.reason, binding.args)
        route = route_repeat(Asker.SDK, prior, action_id)
        return {"ok": True, "verdict": route.verdict, "action_key": key, "reason": route.reason,
                "tool": tool, "args": binding.args, "effective_args": binding.args,
                "approval": None}  # fmt: skip
    capped = over_size_cap(call, plan.caps)
    if capped is not None:
        denied = ask(capped)
        decide_and_record(txn, plan, denied, ruling=refused(capped, hashed, "(cap)"))
        return {"ok": True, "verdict": "deny", "action_key": key, "reason": capped.reason,
                "code": capped.code, "args": dict(denied.request.args),
                "effective_args": dict(denied.request.args), "rule": None,
                "approval": None}  # fmt: skip
    done = decide_and_record(txn, plan, ask())
    base = {"ok": True, "action_key": key, "tool": tool, "args": dict(tool_args),
            "effective_args": dict(tool_args), "rule": done.decision.rule}  # fmt: skip
    if done.route.step is Step.RELEASE:
        return {**base, "verdict": "allow", "approval": None}
    if done.route.step is Step.DENY:
        return {**base, "verdict": "deny", "reason": done.route.reason, "approval": None}
    fresh = approval_by_key(txn, workspace, key)
    return {**base, "verdict": "pending", **approval_view(fresh), "approval": done.approval_id}
