"""Asking a running Quarterdeck for permission before an action runs.

``await client.request_approval("deploy", {"env": "prod"})`` sends the command
``approval.request``; the runtime evaluates its policy and answers ``allow``, ``deny`` or
``pending`` (an approval was opened). A pending request is then waited on until a person
decides it (or its escalation ladder runs out). The idempotency key is derived from the
``action_id``, so asking again after a crash binds to the same approval and its decision.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from quarterdeck.client.connection import Connection
from quarterdeck.client.errors import (
    ActionDenied,
    ApprovalConflict,
    ApprovalExpired,
    ApprovalRejected,
    ApprovalTimeout,
    CommandRefused,
    CommandTimeout,
)
from quarterdeck.domain.canonical import canonical_json, canonical_text
from quarterdeck.store.queries.outcomes import decided_approval, receipt_payload

Outcome = Literal["approved", "edited", "allowed"]

MAX_KEY = 200
"""Longest idempotency key an envelope may carry."""


@dataclass(frozen=True, slots=True)
class ApprovalDecision:
    """A go-ahead: ``allowed`` by the policy, or ``approved`` / ``edited`` by a person.

    ``args`` are the effective arguments: the edited ones when ``outcome`` is ``edited``.
    """

    outcome: Outcome
    args: dict[str, Any] = field(default_factory=dict)
    approval_id: str | None = None
    decided_by: str | None = None
    reason: str | None = None


def idempotency_key_for(action_id: str) -> str:
    """The idempotency key of the ``approval.request`` for ``action_id`` (stable, so a retry
    is the same envelope)."""
    key = f"approval.request:{action_id}"
    if len(key) <= MAX_KEY:
        return key
    return "approval.request:sha256:" + hashlib.sha256(action_id.encode("utf-8")).hexdigest()


def _json_object(value: Any) -> dict[str, Any]:
    decoded = json.loads(value) if isinstance(value, str) else value
    return dict(decoded) if isinstance(decoded, Mapping) else {}


async def request_approval(
    client: Connection,
    action: str,
    args: Mapping[str, Any] | None = None,
    *,
    action_id: str | None = None,
    lane: str | None = None,
    estimated_cost: float | None = None,
    actor: str | None = None,
    timeout_s: float | None = None,
    poll_s: float = 0.05,
) -> ApprovalDecision:
    """Ask to run the tool ``action`` with ``args`` (a JSON object) and wait for the answer.

    Args:
        client: an open client; the request goes to its workspace.
        action_id: identifies this action; the same id always gets the same answer (a fresh
            UUID when omitted, so a retry after a crash must pass the id again).
        lane: the lane the policy sees (the runtime's default for SDK requests: ``sdk``).
        estimated_cost: USD, for cost rules and budget floors.
        actor: who asks (recorded as the requester).
        timeout_s: give up waiting after this long (None: wait for the decision).
        poll_s: how often to look for a commit (a cheap ``PRAGMA data_version`` on SQLite).

    Returns:
        The go-ahead, with the arguments to run with.

    Raises:
        ActionDenied: the policy denied the action.
        ApprovalRejected: a person rejected it (``reason_code``, ``reason``, ``decided_by``).
        ApprovalExpired: nobody decided in time, to the end of the escalation ladder.
        ApprovalTimeout: ``timeout_s`` passed first (the approval stays pending).
        ApprovalConflict: ``action_id`` was used before for another tool or other arguments.
        CommandRefused: the runtime refused the request itself (e.g. bad arguments).
        CommandRejected: the envelope was invalid (e.g. the client's workspace is no slug).
        TypeError: ``args`` are not JSON.
    """
    if action_id is None:
        action_id = str(uuid.uuid4())
    if not isinstance(action_id, str) or not action_id:
        raise ValueError("action_id must be a non-empty string")
    tool_args = dict(args or {})
    canonical_json(tool_args)  # raises TypeError/ValueError for arguments JSON cannot carry
    payload: dict[str, Any] = {
        "command": "approval.request",
        "action_id": action_id,
        "tool": action,
        "args": tool_args,
    }
    if lane is not None:
        payload["lane"] = lane
    if estimated_cost is not None:
        payload["estimated_cost"] = estimated_cost
    if actor is not None:
        payload["actor"] = actor
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + max(0.0, timeout_s)

    def remaining() -> float | None:
        return None if deadline is None else max(0.0, deadline - loop.time())

    sent = await client.send_command(payload, idempotency_key=idempotency_key_for(action_id))
    if sent.status == "duplicate":
        await _check_same_request(client, sent.receipt, action, tool_args, action_id)
    try:
        result = await client.command_result(sent.receipt, timeout_s=remaining(), poll_s=poll_s)
    except CommandTimeout:
        assert timeout_s is not None
        raise ApprovalTimeout(timeout_s, action_id=action_id, approval_id=None) from None
    if not result.get("ok"):
        raise CommandRefused([str(e) for e in result.get("errors", [])], command="approval.request")
    approval_id = result.get("approval")
    if approval_id is None:
        reason = result.get("reason")
        if result.get("verdict") == "allow":
            rule = result.get("rule")
            return ApprovalDecision(
                "allowed",
                _json_object(result.get("effective_args", tool_args)),
                reason=reason or (f"allowed by rule {rule}" if rule else "allowed by policy"),
            )
        raise ActionDenied(reason, action_id=action_id)
    try:
        return await wait_for_decision(
            client, str(approval_id), action_id=action_id, timeout_s=remaining(), poll_s=poll_s
        )
    except ApprovalTimeout as exc:
        assert timeout_s is not None
        raise ApprovalTimeout(timeout_s, action_id=action_id, approval_id=exc.approval_id) from None


async def _check_same_request(
    client: Connection, receipt: str, action: str, tool_args: dict[str, Any], action_id: str
) -> None:
    """A repeated action id must ask for the same tool with the same arguments: the first
    request's answer must not be taken for another action."""
    original = _json_object(await receipt_payload(await client.watch().feed(), receipt))
    first_args = canonical_text(_json_object(original.get("args")))
    if original.get("tool") != action or first_args != canonical_text(tool_args):
        raise ApprovalConflict(
            f"action {action_id} was already requested for {original.get('tool')!r} with "
            f"arguments {first_args}; that request stands (use a fresh action_id for another "
            "action)",
            action_id=action_id,
        )


async def wait_for_decision(
    client: Connection,
    approval_id: str,
    *,
    action_id: str,
    timeout_s: float | None = None,
    poll_s: float = 0.05,
) -> ApprovalDecision:
    """Wait until the approval ``approval_id`` is decided; the go-ahead, or raise as
    :func:`request_approval` does."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + max(0.0, timeout_s)
    watch = client.watch()
    feed = await watch.feed()
    row = await watch.wait_for(
        lambda: decided_approval(feed, approval_id), deadline=deadline, poll_s=poll_s
    )
    if row is None:
        raise ApprovalTimeout(timeout_s or 0.0, action_id=action_id, approval_id=approval_id)
    if row.state == "approved":
        return ApprovalDecision(
            "approved", _json_object(row.args), approval_id, row.decided_by, row.reason_text
        )
    if row.state == "edited":
        return ApprovalDecision(
            "edited", _json_object(row.edited_args), approval_id, row.decided_by,
            row.reason_text,
        )  # fmt: skip
    if row.state == "expired":
        raise ApprovalExpired(row.decided_by, action_id=action_id, approval_id=approval_id)
    raise ApprovalRejected(
        row.reason_code, row.reason_text, row.decided_by,
        action_id=action_id, approval_id=approval_id,
    )  # fmt: skip
