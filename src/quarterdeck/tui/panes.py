"""The live panes: fixed-width tables updated by keyed diffs, and the ledger, paged by seq."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Generic, TypeVar

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.widgets import DataTable

from quarterdeck.client.console import (
    AlertLine,
    ApprovalLine,
    LedgerLine,
    MissionLine,
    TurnLine,
    args_preview,
    remaining_s,
)
from quarterdeck.domain.clock import format_instant

LineT = TypeVar("LineT")


@dataclass(frozen=True, slots=True)
class Column:
    """A table column: its label, fixed width and key."""

    key: str
    label: str
    width: int


def short(identifier: str | None) -> str:
    """Eight characters that tell neighbouring ids apart: a uuid7 from one batch shares its
    timestamp and random base, and differs in the trailing counter."""
    if not identifier:
        return "-"
    digits = identifier.replace("-", "")
    return digits[-12:-8] + digits[-4:] if len(digits) >= 12 else digits


def countdown(seconds: float | None) -> Text:
    """An SLA countdown coloured by urgency: seconds under ten minutes, else minutes (so a far
    deadline's cell changes once a minute, not every second)."""
    if seconds is None:
        return Text("-")
    if seconds <= 0:
        return Text("overdue", style="bold red")
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        label = f"{hours}h{minutes:02d}m"
    elif minutes >= 10:
        label = f"{minutes}m"
    else:
        label = f"{minutes}m{secs:02d}s"
    style = "bold red" if seconds < 60 else "yellow" if seconds < 300 else "green"
    return Text(label, style=style)


STATE_STYLES = {
    "completed": "green",
    "failed": "red",
    "timed_out": "red",
    "cancelled": "dim",
    "running": "cyan",
    "blocked": "yellow",
    "awaiting_approval": "yellow",
    "taken_over": "magenta",
    "queued": "",
    "leased": "cyan",
    "open": "bold red",
    "acked": "yellow",
    "resolved": "dim",
    "escalated": "bold yellow",
    "pending": "",
}


def state_text(state: str) -> Text:
    """A state, coloured."""
    return Text(state, style=STATE_STYLES.get(state, ""))


class LivePane(DataTable[Any], Generic[LineT]):
    """A table of live items keyed by id: only rows that changed are touched, and the cursor
    stays on the same item across refreshes."""

    COLUMNS: ClassVar[Sequence[Column]] = ()
    TITLE: ClassVar[str] = ""
    EMPTY: ClassVar[str] = "nothing here"

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=False)
        self.lines: dict[str, LineT] = {}
        self._order: list[str] = []
        self._cells: dict[str, tuple[Any, ...]] = {}
        self.filter_text = ""
        self.now: datetime | None = None
        self.now_text = ""
        self._memo: dict[str, tuple[LineT, str, tuple[Any, ...]]] = {}
        """Cells of each row as last computed, with the line and time stamp they came from."""

    def on_mount(self) -> None:
        """Set up the fixed columns."""
        self._ensure_columns()
        self.border_title = self.TITLE

    def _ensure_columns(self) -> None:
        if not self.columns:
            for column in self.COLUMNS:
                self.add_column(column.label, width=column.width, key=column.key)

    def key_of(self, line: LineT) -> str:
        """The line's id."""
        identifier: Any = getattr(line, "id")  # noqa: B009 (a type variable has no attributes)
        return str(identifier)

    def cells(self, line: LineT) -> tuple[Any, ...]:
        """The line's cells, in column order."""
        raise NotImplementedError

    def matches(self, line: LineT) -> bool:
        """Whether the line passes the filter (a case-insensitive substring of any field)."""
        if not self.filter_text:
            return True
        needle = self.filter_text.lower()
        return any(needle in str(value).lower() for value in vars_of(line))

    def show(self, lines: Sequence[LineT], now: datetime) -> None:
        """Show ``lines`` (in order): a keyed diff against what is on screen."""
        self.now = now
        self.now_text = format_instant(now)
        self._ensure_columns()
        shown = [line for line in lines if self.matches(line)]
        order = [self.key_of(line) for line in shown]
        stamp = self.stamp(now)
        cells: dict[str, tuple[Any, ...]] = {}
        memo: dict[str, tuple[LineT, str, tuple[Any, ...]]] = {}
        for key, line in zip(order, shown, strict=True):
            known = self._memo.get(key)
            if known is not None and known[1] == stamp and known[0] == line:
                row = known[2]
            else:
                row = self.cells(line)
            cells[key] = row
            memo[key] = (line, stamp, row)
        self._memo = memo
        self.lines = dict(zip(order, shown, strict=True))
        selected = self.selected_key()
        if order == self._order:
            for key in order:
                if cells[key] != self._cells.get(key):
                    old = self._cells.get(key, ())
                    for index, column in enumerate(self.COLUMNS):
                        if index >= len(old) or old[index] != cells[key][index]:
                            self.update_cell(key, column.key, cells[key][index])
        elif self._kept_then_appended(order):
            # The common live case: some rows left (decided, resolved) and new ones arrived at
            # the end; touch only those rows.
            gone = set(self._order) - set(cells)
            for key in gone:
                self.remove_row(key)
            kept = [key for key in self._order if key not in gone]
            for key in kept:
                if cells[key] != self._cells.get(key):
                    for index, column in enumerate(self.COLUMNS):
                        self.update_cell(key, column.key, cells[key][index])
            for key in order[len(kept) :]:
                self.add_row(*cells[key], key=key)
        else:
            self.clear()
            for key in order:
                self.add_row(*cells[key], key=key)
            if self.keeps_selection and selected is not None and selected in cells:
                self.move_cursor(row=order.index(selected), animate=False)
        self._order = order
        self._cells = cells
        self.border_subtitle = (
            f"{len(order)} shown" + (f" · filter: {self.filter_text}" if self.filter_text else "")
            if order
            else self.EMPTY
        )

    @property
    def keeps_selection(self) -> bool:
        """Whether a refresh keeps the cursor on the same item (else it stays in place)."""
        return True

    def stamp(self, now: datetime) -> str:
        """What of ``now`` the cells depend on: a row whose line and stamp are unchanged keeps
        its cells (panes with countdowns stamp by the second; others do not depend on it)."""
        return ""

    def _kept_then_appended(self, order: list[str]) -> bool:
        """Whether ``order`` is the rows on screen minus some, followed by new ones."""
        present = set(order)
        kept = [key for key in self._order if key in present]
        return order[: len(kept)] == kept

    def selected_key(self) -> str | None:
        """The id of the item under the cursor."""
        if not self._order or self.cursor_row < 0 or self.cursor_row >= len(self._order):
            return None
        return self._order[self.cursor_row]

    def selected(self) -> LineT | None:
        """The item under the cursor."""
        key = self.selected_key()
        return None if key is None else self.lines.get(key)


def vars_of(line: Any) -> list[Any]:
    """A dataclass line's field values."""
    return [getattr(line, name) for name in getattr(line, "__slots__", ())]


class ApprovalsPane(LivePane[ApprovalLine]):
    """Open approvals, oldest first, with their SLA countdown and who holds a claim."""

    TITLE = "1 Approvals"
    EMPTY = "no approvals waiting"
    COLUMNS = (
        Column("sla", "SLA", 8),
        Column("tool", "Tool", 14),
        Column("lane", "Lane", 12),
        Column("approver", "Approver", 12),
        Column("state", "State", 9),
        Column("claim", "Claim", 10),
        Column("args", "Arguments", 28),
        Column("id", "Id", 8),
    )

    def stamp(self, now: datetime) -> str:
        """Countdowns and claims change with the second."""
        return self.now_text[:19]

    def cells(self, line: ApprovalLine) -> tuple[Any, ...]:
        """SLA, tool, lane, approver (level), state, claim, args preview, id."""
        assert self.now is not None
        snoozed = line.snoozed_until is not None and line.snoozed_until > self.now_text
        claim = "-"
        if line.claimed_by and (line.claim_expires_at or "") > self.now_text:
            claim = line.claimed_by
        sla = (
            Text("snoozed", style="dim")
            if snoozed
            else countdown(remaining_s(line.deadline_at, self.now))
        )
        approver = line.approver + (f"+{line.level}" if line.level else "")
        return (
            sla,
            line.tool,
            line.lane,
            approver,
            state_text(line.state),
            claim,
            args_preview(line.args, 28),
            short(line.id),
        )


class TurnsPane(LivePane[TurnLine]):
    """Recent turns, newest first."""

    TITLE = "2 Turns"
    EMPTY = "no turns yet"
    COLUMNS = (
        Column("state", "State", 17),
        Column("lane", "Lane", 14),
        Column("attempt", "Try", 3),
        Column("holder", "Holder", 14),
        Column("objective", "Objective", 30),
        Column("id", "Id", 8),
    )

    def cells(self, line: TurnLine) -> tuple[Any, ...]:
        """State, lane, attempt, holder, objective, id."""
        state = line.state + (f" ({line.dead_letter})" if line.dead_letter else "")
        holder = line.lease_owner or "-"
        return (
            state_text(state),
            line.lane,
            str(line.attempt),
            holder[:14],
            line.objective[:30],
            short(line.id),
        )


class MissionsPane(LivePane[MissionLine]):
    """Recent missions with their leases (owner, attempt, time to expiry) and sessions."""

    TITLE = "3 Missions"
    EMPTY = "no missions yet"
    COLUMNS = (
        Column("state", "State", 10),
        Column("lane", "Lane", 14),
        Column("role", "Role", 8),
        Column("attempt", "Try", 3),
        Column("owner", "Lease owner", 16),
        Column("expiry", "Expires", 8),
        Column("session", "Session", 8),
        Column("turn", "Turn", 8),
        Column("id", "Id", 8),
    )

    def stamp(self, now: datetime) -> str:
        """Lease countdowns change with the second."""
        return self.now_text[:19]

    def cells(self, line: MissionLine) -> tuple[Any, ...]:
        """State, lane, role, attempt, lease owner, time to lease expiry, turn, id."""
        assert self.now is not None
        live = line.state in ("running", "blocked")
        expiry = countdown(remaining_s(line.lease_expires_at, self.now)) if live else Text("-")
        return (
            state_text(line.state),
            line.lane,
            line.role,
            str(line.attempt),
            (line.lease_owner or "-")[-16:],
            expiry,
            short(line.session_id),
            short(line.turn_id),
            short(line.id),
        )


class AlertsPane(LivePane[AlertLine]):
    """Drift alerts: open first."""

    TITLE = "4 Alerts"
    EMPTY = "no drift alerts"
    COLUMNS = (
        Column("state", "State", 8),
        Column("severity", "Sev", 5),
        Column("type", "Type", 15),
        Column("subject", "Subject", 12),
        Column("message", "Message", 40),
        Column("id", "Id", 8),
    )

    def cells(self, line: AlertLine) -> tuple[Any, ...]:
        """State, severity, type, subject, message, id."""
        severity_style = {"error": "bold red", "warn": "yellow", "info": ""}.get(line.severity, "")
        return (
            state_text(line.state),
            Text(line.severity, style=severity_style),
            line.alert_type,
            line.subject_id[:12],
            line.message[:40],
            short(line.id),
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
        Column("move", "Move", 22),
        Column("actor", "Actor", 16),
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

    def cells(self, line: LedgerLine) -> tuple[Any, ...]:
        """Seq, action, subject, state move, actor."""
        move = f"{line.from_state or '·'} → {line.to_state}" if line.to_state else ""
        return (
            str(line.seq),
            line.action,
            f"{line.subject_type}:{short(line.subject_id)}",
            move,
            line.actor[-16:],
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
