"""The SDK for programs that feed and consult Quarterdeck: submit envelopes and commands into
a state directory or database from any process, and ask for approval before an action runs."""

from quarterdeck.client.approvals import request_approval
from quarterdeck.client.decisions import ApprovalDecision
from quarterdeck.client.decorator import require_approval
from quarterdeck.client.errors import (
    ActionDenied,
    ApprovalConflict,
    ApprovalEditError,
    ApprovalError,
    ApprovalExpired,
    ApprovalRejected,
    ApprovalTimeout,
    CommandError,
    CommandRefused,
    CommandRejected,
    CommandTimeout,
)
from quarterdeck.client.submit import Client

__all__ = [
    "ActionDenied",
    "ApprovalConflict",
    "ApprovalDecision",
    "ApprovalEditError",
    "ApprovalError",
    "ApprovalExpired",
    "ApprovalRejected",
    "ApprovalTimeout",
    "Client",
    "CommandError",
    "CommandRefused",
    "CommandRejected",
    "CommandTimeout",
    "request_approval",
    "require_approval",
]
