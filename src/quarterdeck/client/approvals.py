"""Asking a running Quarterdeck for permission before an action runs.

``await client.request_approval("deploy", {"env": "prod"})`` sends the command
``approval.request``; the runtime evaluates its policy and answers ``allow``, ``deny`` or
``pending`` (an approval was opened). A pending request is then waited on until a person
decides it (or its escalation ladder runs out). The idempotency key is derived from the
``action_id``, so asking again after a crash binds to the same approval and its decision.

With no daemon to talk to, the request is written into the database as a command envelope: a
runtime applies it when it runs, for an unauthenticated agent (who may ask, and nothing else).
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from quarterdeck.client.approvals_api import request_through_daemon
from quarterdeck.client.connection import Connection
from quarterdeck.client.decisions import ApprovalDecision, decided, json_object
from quarterdeck.client.errors import (
    ActionDenied,
    ApprovalConflict,
    ApprovalTimeout,
    CommandRefused,
    CommandTimeout,
)
from quarterdeck.domain.canonical import canonical_json, canonical_text
from quarterdeck.domain.commands import ApprovalRequest, problems_of
from quarterdeck.store.queries.outcomes import decided_approval, receipt_payload

__all__ = ["ApprovalDecision", "idempotency_key_for", "request_approval", "wait_for_decision"]

MAX_KEY = 200
"""Longest idempotency key an envelope may carry."""


def idempotency_key_for(action_id: str) -> str:
    """The idempotency key of the ``approval.request`` for ``action_id`` (stable, so a retry
    is the same envelope)."""
    key = f"approval.request:{action_id}"
    if len(key) <= MAX_KEY:
        return key
    return "approval.request:sha256:" + hashlib.sha256(action_id.encode("utf-8")).hexdigest()


async def request_approval(
    client: Connection,
    action: str,
    args: Mapping[str, Any] | None = None,
    *,
    action_id: str | None = None,
    lane: str | None = None,
    estimated_cost: float | None = None,
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
        timeout_s: give up waiting after this long (None: wait for the decision).
        poll_s: how often to look for a commit (a cheap ``PRAGMA data_version`` on SQLite);
            through a daemon, the decision comes by long poll instead.

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
    try:
        command = ApprovalRequest(
            action_id=action_id, tool=action, args=tool_args, lane=lane,
            estimated_cost=estimated_cost,
        )  # fmt: skip
    except ValidationError as exc:
        raise CommandRefused(problems_of(exc), command=ApprovalRequest.name) from None
    if client.api is not None:
        return await request_through_daemon(
            client.api, client.workspace, action, tool_args, action_id=action_id, lane=lane,
            estimated_cost=estimated_cost, timeout_s=timeout_s,
        )  # fmt: skip
    payload = command.to_payload()
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
                json_object(result.get("effective_args", tool_args)),
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
    original = json_object(await receipt_payload(await client.watch().feed(), receipt))
    first_args = canonical_text(json_object(original.get("args")))
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
    fields = ("state", "args", "edited_args", "decided_by", "reason_code", "reason_text")
    return decided(
        {name: getattr(row, name) for name in fields}, action_id=action_id,
        approval_id=approval_id,
    )  # fmt: skip
