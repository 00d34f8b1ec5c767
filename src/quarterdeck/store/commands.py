"""Supervisor commands beyond lane flags and requeue: approvals, take over, alerts,
re-baselining, and SDK approval requests
(:mod:`quarterdeck.store.requests`). Each runs in the writer's transaction and returns
its result (``ok`` and what happened); a refused command is recorded and changes nothing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from quarterdeck.domain.tasks import CommandSpec
from quarterdeck.store import alerts
from quarterdeck.store.approvals import (
    bulk_decide,
    claim_approval,
    decide_approval,
    escalate_approval,
    snooze_approval,
)
from quarterdeck.store.plan import WorkPlan
from quarterdeck.store.requests import request_approval
from quarterdeck.store.takeover import cancel_turn, complete_turn, release_turn, take_over
from quarterdeck.store.transitions import refuse
from quarterdeck.store.writer import WriteTxn


def apply_supervision(
    txn: WriteTxn, workspace: str, spec: CommandSpec, plan: WorkPlan, actor: str
) -> dict[str, Any]:
    """Apply one supervision command (see ``docs/specs/supervision.md``)."""
    name, args = spec.name, spec.args
    if name in ("approval.approve", "approval.reject"):
        edited = args.get("args")
        return decide_approval(
            txn, plan, workspace, str(args["approval_id"]),
            "approve" if name == "approval.approve" else "reject", actor,
            args=edited if isinstance(edited, Mapping) else None,
            reason_code=_text(args.get("reason_code")), reason=_text(args.get("reason")),
            action_key=_text(args.get("action_key")),
        )  # fmt: skip
    if name == "approval.escalate":
        return escalate_approval(txn, plan, workspace, str(args["approval_id"]), actor)
    if name == "approval.snooze":
        return snooze_approval(
            txn, workspace, str(args["approval_id"]), float(args["for_s"]), actor
        )
    if name in ("approval.claim", "approval.unclaim"):
        for_s = args.get("for_s")
        return claim_approval(
            txn, plan, workspace, str(args["approval_id"]), actor,
            float(for_s) if isinstance(for_s, int | float) else None,
            release=name == "approval.unclaim",
        )  # fmt: skip
    if name == "approval.bulk":
        verdict = args["decision"]
        if verdict not in ("approve", "reject"):
            return refuse(
                txn, workspace, actor, "command", actor,
                {"command": name, "errors": ["payload.decision: must be approve or reject"]},
            )  # fmt: skip
        selector = args.get("filter", {})
        return bulk_decide(
            txn, plan, None if args.get("all_workspaces") else workspace, str(verdict),
            selector if isinstance(selector, Mapping) else {}, actor,
            reason_code=_text(args.get("reason_code")), reason=_text(args.get("reason")),
        )  # fmt: skip
    if name == "approval.request":
        return request_approval(txn, plan, workspace, args, actor)
    if name == "turn.takeover":
        return take_over(txn, plan, workspace, str(args["turn_id"]), actor)
    if name == "turn.release":
        return release_turn(txn, plan, workspace, str(args["turn_id"]), actor)
    if name == "turn.complete":
        return complete_turn(txn, workspace, str(args["turn_id"]), args["deliverable"], actor)
    if name == "turn.cancel":
        return cancel_turn(txn, plan, workspace, str(args["turn_id"]), actor)
    if name == "alert.ack":
        return alerts.ack_alert(txn, workspace, str(args["alert_id"]), actor)
    if name == "alert.resolve":
        return alerts.resolve_alert(txn, workspace, str(args["alert_id"]), actor)
    if name == "lane.rebaseline":
        return rebaseline(txn, plan, workspace, str(args["lane"]), actor)
    raise ValueError(f"not a supervision command: {name}")


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


DRIFT_ACTOR = "drift"
"""The actor the runtime's drift monitor pauses lanes as; re-baselining resumes only those."""


def rebaseline(
    txn: WriteTxn, plan: WorkPlan, workspace: str, lane: str, actor: str
) -> dict[str, Any]:
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
