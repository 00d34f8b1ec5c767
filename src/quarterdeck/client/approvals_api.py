"""Asking for approval through a running daemon's control API: ``POST /v1/approvals/request``
(the policy's answer, and the decision if a person gives it while the request waits), then the
decision's long poll (``GET /v1/approvals/{id}/decision``) until it is decided or the caller's
time runs out. The requester is whoever the daemon authenticated."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Final

from quarterdeck.client.api import ControlClient, ControlError, ControlRefused
from quarterdeck.client.decisions import ApprovalDecision, decided, json_object
from quarterdeck.client.errors import (
    ActionDenied,
    ApprovalConflict,
    ApprovalTimeout,
    CommandRefused,
    CommandRejected,
)
from quarterdeck.domain.canonical import canonical_text

POLL_S: Final = 30.0
"""The longest one request waits for the decision (the daemon allows up to 60 s)."""


async def request_through_daemon(
    api: ControlClient,
    workspace: str,
    tool: str,
    args: dict[str, Any],
    *,
    action_id: str,
    lane: str | None = None,
    estimated_cost: float | None = None,
    timeout_s: float | None = None,
) -> ApprovalDecision:
    """Ask to run ``tool`` with ``args`` in ``workspace`` and wait for the answer; returns and
    raises as :func:`quarterdeck.client.approvals.request_approval` does.

    Raises:
        ControlUnavailable: the daemon did not answer.
    """
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + max(0.0, timeout_s)

    def wait_s() -> float:
        return POLL_S if deadline is None else max(0.0, min(POLL_S, deadline - loop.time()))

    try:
        result = await api.request_approval(
            workspace, action_id, tool, args, lane=lane, estimated_cost=estimated_cost,
            wait_s=wait_s(),
        )  # fmt: skip
    except ControlRefused as exc:
        raise CommandRefused([exc.message], command="approval.request") from None
    except ControlError as exc:
        if exc.status == 400:
            raise CommandRejected([exc.message]) from None
        raise
    if not result.get("ok"):
        errors = [str(e) for e in result.get("errors", [])]
        raise CommandRefused(errors, command="approval.request")
    _check_same_request(result, tool, args, action_id)
    approval_id = result.get("approval")
    if not isinstance(approval_id, str):
        reason = result.get("reason")
        if result.get("verdict") == "allow":
            rule = result.get("rule")
            return ApprovalDecision(
                "allowed", json_object(result.get("effective_args", args)),
                reason=reason or (f"allowed by rule {rule}" if rule else "allowed by policy"),
            )  # fmt: skip
        raise ActionDenied(reason, action_id=action_id)
    decision = result.get("decision")
    while decision is None:
        if deadline is not None and loop.time() >= deadline:
            assert timeout_s is not None
            raise ApprovalTimeout(timeout_s, action_id=action_id, approval_id=approval_id)
        answer = await api.approval_decision(approval_id, wait_s=wait_s())
        decision = answer.get("decision") if answer.get("decided") else None
    return decided(decision, action_id=action_id, approval_id=approval_id)


def _check_same_request(
    result: Mapping[str, Any], tool: str, args: dict[str, Any], action_id: str
) -> None:
    """A repeated action id must ask for the same tool with the same arguments: the answer to
    the first request (which names them) must not be taken for another action."""
    first_tool = result.get("tool")
    if first_tool is None:
        return
    first_args = canonical_text(json_object(result.get("args")))
    if first_tool != tool or first_args != canonical_text(args):
        raise ApprovalConflict(
            f"action {action_id} was already requested for {first_tool!r} with arguments "
            f"{first_args}; that request stands (use a fresh action_id for another action)",
            action_id=action_id,
        )
