"""Every command the control center sends, built in one place: one function per command,
each returning the payload :meth:`~quarterdeck.client.console.Console.command` takes.

Commands on an item carry the item's workspace (they are applied in it); lane and fallback
commands concern the whole runtime and carry none.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Command = dict[str, Any]
"""A command payload: its name under ``command``, then its fields."""


# --- approvals -----------------------------------------------------------------------------------


def approve(
    approval_id: str, *, action_key: str, workspace: str, args: Mapping[str, Any] | None = None
) -> Command:
    """Approve an approval (with edited arguments when ``args`` is given)."""
    command: Command = {
        "command": "approval.approve", "approval_id": approval_id, "action_key": action_key,
    }  # fmt: skip
    if args is not None:
        command["args"] = dict(args)
    command["workspace"] = workspace
    return command


def reject(
    approval_id: str, *, action_key: str, reason_code: str, workspace: str, reason: str = ""
) -> Command:
    """Reject an approval with a reason code (and a note, when there is one)."""
    command: Command = {
        "command": "approval.reject", "approval_id": approval_id, "action_key": action_key,
        "reason_code": reason_code, "workspace": workspace,
    }  # fmt: skip
    if reason:
        command["reason"] = reason
    return command


def escalate(approval_id: str, *, workspace: str) -> Command:
    """Escalate an approval to the next approver on its ladder."""
    return {"command": "approval.escalate", "approval_id": approval_id, "workspace": workspace}


def snooze(approval_id: str, *, for_s: int, workspace: str) -> Command:
    """Snooze an approval for ``for_s`` seconds."""
    return {"command": "approval.snooze", "approval_id": approval_id, "for_s": for_s,
            "workspace": workspace}  # fmt: skip


def claim(approval_id: str, *, workspace: str) -> Command:
    """Claim an approval while its detail view is open."""
    return {"command": "approval.claim", "approval_id": approval_id, "workspace": workspace}


# --- turns ---------------------------------------------------------------------------------------


def take_over(turn_id: str, *, workspace: str) -> Command:
    """Take a turn over: its agent is stopped and the supervisor holds it."""
    return {"command": "turn.takeover", "turn_id": turn_id, "workspace": workspace}


def complete(turn_id: str, *, text: str, workspace: str) -> Command:
    """Complete a held turn with a written deliverable."""
    return {"command": "turn.complete", "turn_id": turn_id, "deliverable": {"text": text},
            "workspace": workspace}  # fmt: skip


def release(turn_id: str, *, workspace: str) -> Command:
    """Hand a held turn back to its lane."""
    return {"command": "turn.release", "turn_id": turn_id, "workspace": workspace}


def requeue(turn_id: str, *, workspace: str) -> Command:
    """Give a held (dead-lettered) turn a fresh try."""
    return {"command": "turn.requeue", "turn_id": turn_id, "workspace": workspace}


def cancel(turn_id: str, *, workspace: str) -> Command:
    """Cancel a turn: its agent is stopped and its open approvals are rejected."""
    return {"command": "turn.cancel", "turn_id": turn_id, "workspace": workspace}


# --- lanes and fallback --------------------------------------------------------------------------


def pause_lane(lane: str) -> Command:
    """Pause a lane."""
    return {"command": "lane.pause", "lane": lane}


def resume_lane(lane: str) -> Command:
    """Resume a paused lane."""
    return {"command": "lane.resume", "lane": lane}


def force_fallback(lane: str, *, on: bool) -> Command:
    """Force (or stop forcing) fallback for one lane."""
    return {"command": "lane.force_fallback", "lane": lane, "on": on}


def force_fallback_all(*, on: bool) -> Command:
    """Force (or stop forcing) fallback on every lane."""
    return {"command": "fallback.force", "on": on}


def rebaseline(lane: str) -> Command:
    """Accept a lane's attested files as they are now."""
    return {"command": "lane.rebaseline", "lane": lane}


# --- alerts --------------------------------------------------------------------------------------


def ack(alert_id: str, *, workspace: str) -> Command:
    """Acknowledge an alert."""
    return {"command": "alert.ack", "alert_id": alert_id, "workspace": workspace}


def resolve(alert_id: str, *, workspace: str) -> Command:
    """Resolve an alert."""
    return {"command": "alert.resolve", "alert_id": alert_id, "workspace": workspace}
