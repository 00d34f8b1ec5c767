"""Every command the control center sends, built in one place: one function per command, each
returning a typed command of :mod:`quarterdeck.domain.commands` with the workspace it is
applied in, as :meth:`~quarterdeck.client.console.Console.command` takes them.

Commands on an item carry the item's workspace (they are applied in it); lane and fallback
commands concern the whole runtime and carry none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from quarterdeck.domain.commands import (
    AlertAck,
    AlertResolve,
    ApprovalApprove,
    ApprovalClaim,
    ApprovalEscalate,
    ApprovalReject,
    ApprovalSnooze,
    ApprovalUnclaim,
    Command,
    FallbackForce,
    LaneForceFallback,
    LanePause,
    LaneRebaseline,
    LaneResume,
    TurnCancel,
    TurnComplete,
    TurnRelease,
    TurnRequeue,
    TurnTakeover,
)


@dataclass(frozen=True, slots=True)
class Addressed:
    """A command and the workspace it is applied in (None: the runtime's own)."""

    command: Command
    workspace: str | None = None

    def payload(self) -> dict[str, Any]:
        """Its wire form, with the workspace when it names one (what the app records)."""
        payload = self.command.to_payload()
        if self.workspace is not None:
            payload["workspace"] = self.workspace
        return payload


# --- approvals -----------------------------------------------------------------------------------


def approve(
    approval_id: str, *, action_key: str, workspace: str, args: Mapping[str, Any] | None = None
) -> Addressed:
    """Approve an approval (with edited arguments when ``args`` is given)."""
    if args is None:
        return Addressed(ApprovalApprove(approval_id=approval_id, action_key=action_key), workspace)
    command = ApprovalApprove(approval_id=approval_id, action_key=action_key, args=args)
    return Addressed(command, workspace)


def reject(
    approval_id: str, *, action_key: str, reason_code: str, workspace: str, reason: str = ""
) -> Addressed:
    """Reject an approval with a reason code (and a note, when there is one)."""
    command = ApprovalReject(
        approval_id=approval_id, action_key=action_key, reason_code=reason_code,
        reason=reason or None,
    )  # fmt: skip
    return Addressed(command, workspace)


def escalate(approval_id: str, *, workspace: str) -> Addressed:
    """Escalate an approval to the next approver on its ladder."""
    return Addressed(ApprovalEscalate(approval_id=approval_id), workspace)


def snooze(approval_id: str, *, for_s: int, workspace: str) -> Addressed:
    """Snooze an approval for ``for_s`` seconds."""
    return Addressed(ApprovalSnooze(approval_id=approval_id, for_s=for_s), workspace)


def claim(approval_id: str, *, workspace: str) -> Addressed:
    """Claim an approval while an edit or a reject of it is under way."""
    return Addressed(ApprovalClaim(approval_id=approval_id), workspace)


def unclaim(approval_id: str, *, workspace: str) -> Addressed:
    """Let go of a claim on an approval (the edit or reject was left undecided)."""
    return Addressed(ApprovalUnclaim(approval_id=approval_id), workspace)


# --- turns ---------------------------------------------------------------------------------------


def take_over(turn_id: str, *, workspace: str) -> Addressed:
    """Take a turn over: its agent is stopped and the supervisor holds it."""
    return Addressed(TurnTakeover(turn_id=turn_id), workspace)


def complete(turn_id: str, *, text: str, workspace: str) -> Addressed:
    """Complete a held turn with a written deliverable."""
    return Addressed(TurnComplete(turn_id=turn_id, deliverable={"text": text}), workspace)


def release(turn_id: str, *, workspace: str) -> Addressed:
    """Hand a held turn back to its lane."""
    return Addressed(TurnRelease(turn_id=turn_id), workspace)


def requeue(turn_id: str, *, workspace: str) -> Addressed:
    """Give a held (dead-lettered) turn a fresh try."""
    return Addressed(TurnRequeue(turn_id=turn_id), workspace)


def cancel(turn_id: str, *, workspace: str) -> Addressed:
    """Cancel a turn: its agent is stopped and its open approvals are rejected."""
    return Addressed(TurnCancel(turn_id=turn_id), workspace)


# --- lanes and fallback --------------------------------------------------------------------------


def pause_lane(lane: str) -> Addressed:
    """Pause a lane."""
    return Addressed(LanePause(lane=lane))


def resume_lane(lane: str) -> Addressed:
    """Resume a paused lane."""
    return Addressed(LaneResume(lane=lane))


def force_fallback(lane: str, *, on: bool) -> Addressed:
    """Force (or stop forcing) fallback for one lane."""
    return Addressed(LaneForceFallback(lane=lane, on=on))


def force_fallback_all(*, on: bool) -> Addressed:
    """Force (or stop forcing) fallback on every lane."""
    return Addressed(FallbackForce(on=on))


def rebaseline(lane: str) -> Addressed:
    """Accept a lane's attested files as they are now."""
    return Addressed(LaneRebaseline(lane=lane))


# --- alerts --------------------------------------------------------------------------------------


def ack(alert_id: str, *, workspace: str) -> Addressed:
    """Acknowledge an alert."""
    return Addressed(AlertAck(alert_id=alert_id), workspace)


def resolve(alert_id: str, *, workspace: str) -> Addressed:
    """Resolve an alert."""
    return Addressed(AlertResolve(alert_id=alert_id), workspace)
