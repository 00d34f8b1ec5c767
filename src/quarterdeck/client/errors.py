"""What the SDK raises: commands that were not recorded, not applied in time, or refused, and
the answers to an approval request that are not a go-ahead."""

from __future__ import annotations

from collections.abc import Sequence


class CommandError(Exception):
    """A command envelope could not be carried out."""


class CommandRejected(CommandError):
    """The envelope was not valid and was recorded as a rejected receipt."""

    def __init__(self, errors: Sequence[str], *, receipt: str | None = None) -> None:
        self.errors = list(errors)
        self.receipt = receipt
        super().__init__("; ".join(self.errors) or "rejected")


class CommandRefused(CommandError):
    """A runtime applied the command and refused it (``ok`` false); nothing changed."""

    def __init__(self, errors: Sequence[str], *, command: str | None = None) -> None:
        self.errors = list(errors)
        self.command = command
        super().__init__(f"{command or 'command'} refused: " + ("; ".join(self.errors) or "?"))


class CommandTimeout(CommandError, TimeoutError):
    """No runtime applied the command in time. It stays recorded: a runtime applies it when
    one runs."""

    def __init__(self, receipt: str, timeout_s: float | None) -> None:
        self.receipt = receipt
        self.timeout_s = timeout_s
        super().__init__(
            f"no runtime applied the command within {timeout_s:g} s (receipt {receipt}; it "
            "stays queued and a runtime applies it when one runs)"
            if timeout_s is not None
            else f"no runtime applied the command (receipt {receipt})"
        )


class ApprovalError(Exception):
    """An approval request that does not let the action run."""

    def __init__(self, message: str, *, action_id: str, approval_id: str | None) -> None:
        self.action_id = action_id
        self.approval_id = approval_id
        super().__init__(message)


class ActionDenied(ApprovalError):
    """The policy denied the action outright (no approval was opened)."""

    def __init__(self, reason: str | None, *, action_id: str) -> None:
        self.reason = reason
        super().__init__(
            f"{reason or 'denied by policy'} (action {action_id})",
            action_id=action_id,
            approval_id=None,
        )


class ApprovalRejected(ApprovalError):
    """A person rejected the action, with a reason code (and maybe a note)."""

    def __init__(
        self,
        reason_code: str | None,
        reason: str | None,
        decided_by: str | None,
        *,
        action_id: str,
        approval_id: str,
    ) -> None:
        self.reason_code = reason_code
        self.reason = reason
        self.decided_by = decided_by
        note = f" ({reason})" if reason else ""
        super().__init__(
            f"approval {approval_id} rejected by {decided_by or '?'}: {reason_code or '?'}{note}",
            action_id=action_id,
            approval_id=approval_id,
        )


class ApprovalExpired(ApprovalError):
    """Nobody decided before the last deadline of the escalation ladder."""

    def __init__(self, decided_by: str | None, *, action_id: str, approval_id: str) -> None:
        self.reason_code = "expired"
        self.decided_by = decided_by
        super().__init__(
            f"approval {approval_id} expired unanswered",
            action_id=action_id,
            approval_id=approval_id,
        )


class ApprovalTimeout(ApprovalError, TimeoutError):
    """``timeout_s`` passed first. The approval (if one was opened) stays pending: ask again
    with the same ``action_id`` to keep waiting on it."""

    def __init__(self, timeout_s: float, *, action_id: str, approval_id: str | None) -> None:
        self.timeout_s = timeout_s
        what = (
            f"approval {approval_id} still pending"
            if approval_id is not None
            else "no runtime answered the approval request"
        )
        super().__init__(
            f"{what} after {timeout_s:g} s (action {action_id})",
            action_id=action_id,
            approval_id=approval_id,
        )


class ApprovalConflict(ApprovalError, ValueError):
    """The action id was already used to ask for another tool or other arguments; that first
    request stands, so this one is not answered (use a fresh action id)."""

    def __init__(self, message: str, *, action_id: str) -> None:
        super().__init__(message, action_id=action_id, approval_id=None)


class ApprovalEditError(ApprovalError, TypeError):
    """The edited arguments do not fit the guarded function; it was not called."""
