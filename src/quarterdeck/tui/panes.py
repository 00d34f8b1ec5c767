"""The five panes of the control center: approvals, turns, missions and alerts (live tables
whose supervision actions come from :mod:`quarterdeck.tui.actions`) and the ledger, paged by seq.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, ClassVar

from textual.binding import Binding, BindingType

from quarterdeck.client.console import (
    AlertLine,
    ApprovalLine,
    LedgerLine,
    MissionLine,
    TurnLine,
    args_preview,
    remaining_s,
)
from quarterdeck.domain.states import MISSION_HOLDS_LEASE
from quarterdeck.tui.actions import AlertActions, ApprovalActions, LaneActions, TurnActions
from quarterdeck.tui.table import Column, LivePane, Row, Styled, countdown, short, state_text

CELL_CAP = 400
"""The longest text a cell keeps (a column is never wider)."""


class ApprovalsPane(ApprovalActions, TurnActions, LaneActions, LivePane[ApprovalLine]):
    """Open approvals, oldest first, with their SLA countdown and who holds a claim; its
    actions decide the selected approval, and act on its turn and its lane."""

    TITLE = "1 Approvals"
    EMPTY = "no approvals waiting"
    COLUMNS = (
        Column("sla", "SLA", 8),
        Column("tool", "Tool", 16),
        Column("lane", "Lane", 14),
        Column("approver", "Approver", 20),
        Column("state", "State", 9),
        Column("claim", "Claim", 12),
        Column("id", "Id", 8),
        Column("args", "Arguments", 24, grow=True),
    )

    def stamp(self, now: datetime) -> str:
        """Countdowns and claims change with the second."""
        return self.now_text[:19]

    def cells(self, line: ApprovalLine) -> Row:
        """SLA, tool, lane, approver (and its escalation level), state, claim, id, args."""
        assert self.now is not None
        snoozed = line.snoozed_until is not None and line.snoozed_until > self.now_text
        claim = "-"
        if line.claimed_by and (line.claim_expires_at or "") > self.now_text:
            claim = line.claimed_by
        sla = (
            Styled("snoozed", "dim")
            if snoozed
            else countdown(remaining_s(line.deadline_at, self.now))
        )
        approver = line.approver + (f" (level {line.level})" if line.level else "")
        return (
            sla,
            line.tool,
            line.lane,
            approver,
            state_text(line.state),
            claim,
            short(line.id),
            args_preview(line.args, CELL_CAP),
        )


class TurnsPane(TurnActions, LaneActions, LivePane[TurnLine]):
    """Recent turns, newest first; its actions act on the selected turn and its lane."""

    TITLE = "2 Turns"
    EMPTY = "no turns yet"
    COLUMNS = (
        Column("state", "State", 24),
        Column("lane", "Lane", 14),
        Column("attempt", "Try", 3),
        Column("holder", "Holder", 20, keep_end=True),
        Column("id", "Id", 8),
        Column("objective", "Objective", 24, grow=True),
    )

    def cells(self, line: TurnLine) -> Row:
        """State, lane, attempt, holder, id, objective."""
        state = line.state + (f" ({line.dead_letter})" if line.dead_letter else "")
        return (
            state_text(state),
            line.lane,
            str(line.attempt),
            line.lease_owner or "-",
            short(line.id),
            line.objective[:CELL_CAP],
        )

    def selected_turn(self) -> str | None:
        """The turn under the cursor."""
        line = self.selected()
        return None if line is None else line.id


class MissionsPane(TurnActions, LaneActions, LivePane[MissionLine]):
    """Recent missions with their leases (owner, attempt, time to expiry) and sessions; its
    actions act on the selected mission's turn and lane."""

    TITLE = "3 Missions"
    EMPTY = "no missions yet"
    COLUMNS = (
        Column("state", "State", 10),
        Column("lane", "Lane", 14),
        Column("role", "Role", 8),
        Column("attempt", "Try", 3),
        Column("owner", "Lease owner", 24, keep_end=True),
        Column("expiry", "Expires", 8),
        Column("session", "Session", 8),
        Column("turn", "Turn", 8),
        Column("id", "Id", 8),
    )

    def stamp(self, now: datetime) -> str:
        """Lease countdowns change with the second."""
        return self.now_text[:19]

    def cells(self, line: MissionLine) -> Row:
        """State, lane, role, attempt, lease owner, time to lease expiry, turn, id."""
        assert self.now is not None
        live = line.state in MISSION_HOLDS_LEASE
        expiry = countdown(remaining_s(line.lease_expires_at, self.now)) if live else "-"
        return (
            state_text(line.state),
            line.lane,
            line.role,
            str(line.attempt),
            line.lease_owner or "-",
            expiry,
            short(line.session_id),
            short(line.turn_id),
            short(line.id),
        )


class AlertsPane(AlertActions, LivePane[AlertLine]):
    """Drift alerts: open first; its actions acknowledge, resolve and rebaseline."""

    TITLE = "4 Alerts"
    EMPTY = "no drift alerts"
    COLUMNS = (
        Column("state", "State", 8),
        Column("severity", "Sev", 5),
        Column("type", "Type", 15),
        Column("subject", "Subject", 16),
        Column("id", "Id", 8),
        Column("message", "Message", 24, grow=True),
    )

    def cells(self, line: AlertLine) -> Row:
        """State, severity, type, subject, id, message."""
        severity_style = {"error": "bold red", "warn": "yellow", "info": ""}.get(line.severity, "")
        return (
            state_text(line.state),
            Styled(line.severity, severity_style) if severity_style else line.severity,
            line.alert_type,
            line.subject_id,
            short(line.id),
            line.message[:CELL_CAP],
        )


class LedgerPane(LivePane[LedgerLine]):
    """The ledger, newest first, one page at a time: the tail follows live; scrolling back
    loads older pages by seq (never the whole ledger)."""

    TITLE = "5 Ledger"
    EMPTY = "the ledger is empty"
    COLUMNS = (
        Column("seq", "Seq", 8),
        Column("action", "Action", 24),
        Column("subject", "Subject", 18),
        Column("move", "Move", 28),
        Column("actor", "Actor", 16, grow=True, keep_end=True),
    )
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("pagedown", "older", "Older", show=False),
        Binding("pageup", "newer", "Newer", show=False),
        Binding("home", "tail", "Follow", show=False),
    ]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.page_before: int | None = None
        """None: following the tail; else the page shows entries older than this seq."""
        self.loader: Callable[[int | None], Any] | None = None

    def key_of(self, line: LedgerLine) -> str:
        """The entry's seq."""
        return str(line.seq)

    def cells(self, line: LedgerLine) -> Row:
        """Seq, action, subject, state move, actor."""
        move = f"{line.from_state or '·'} → {line.to_state}" if line.to_state else ""
        return (
            str(line.seq),
            line.action,
            f"{line.subject_type}:{short(line.subject_id)}",
            move,
            line.actor,
        )

    @property
    def keeps_selection(self) -> bool:
        """Following the tail, the cursor stays on the newest entry."""
        return not self.following

    @property
    def following(self) -> bool:
        """Whether the pane follows the live tail."""
        return self.page_before is None

    def action_older(self) -> None:
        """Page back to older entries."""
        if self._order and self.loader is not None:
            self.page_before = int(self._order[-1])
            self.loader(self.page_before)

    def action_newer(self) -> None:
        """Page forward (back to the tail once past the newest page)."""
        if self.loader is None or self.page_before is None:
            return
        first = int(self._order[0]) if self._order else 0
        self.page_before = first + len(self._order) + 1
        self.loader(self.page_before)

    def action_tail(self) -> None:
        """Follow the live tail again."""
        self.page_before = None
        if self.loader is not None:
            self.loader(None)
