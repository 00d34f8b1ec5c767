"""What an approval request comes to on the client's side: the go-ahead
(:class:`ApprovalDecision`), or the error a decision other than a go-ahead raises. Shared by
the database path and the control API's."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from quarterdeck.client.errors import ApprovalExpired, ApprovalRejected

Outcome = Literal["approved", "edited", "allowed"]


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


def json_object(value: Any) -> dict[str, Any]:
    """A JSON object given as text or as a mapping (anything else: empty)."""
    decoded = json.loads(value) if isinstance(value, str) else value
    return dict(decoded) if isinstance(decoded, Mapping) else {}


def decided(decision: Mapping[str, Any], *, action_id: str, approval_id: str) -> ApprovalDecision:
    """The go-ahead of a decided approval (``state``, ``args``, ``edited_args``,
    ``decided_by``, ``reason_code``, ``reason_text``).

    Raises:
        ApprovalExpired: nobody decided in time.
        ApprovalRejected: a person rejected it (or the runtime did, e.g. a cancelled turn).
    """
    state = decision.get("state")
    decided_by = decision.get("decided_by")
    reason = decision.get("reason_text")
    if state == "approved":
        args = json_object(decision.get("args"))
        return ApprovalDecision("approved", args, approval_id, decided_by, reason)
    if state == "edited":
        args = json_object(decision.get("edited_args"))
        return ApprovalDecision("edited", args, approval_id, decided_by, reason)
    if state == "expired":
        raise ApprovalExpired(decided_by, action_id=action_id, approval_id=approval_id)
    raise ApprovalRejected(
        decision.get("reason_code"), reason, decided_by,
        action_id=action_id, approval_id=approval_id,
    )  # fmt: skip
