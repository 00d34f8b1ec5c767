"""The selected item's whole context beside its list (master-detail): how an item reads
(:func:`render_item`: for an approval the request and its full arguments first, then the SLA
and the claim, the turn's objective, what the agent did before asking, the rule trace one line
per rule, cost; then the rest and the ledger history), the live :class:`DetailView` that shows
it, and :class:`MasterDetail`, which lays the list and the view out.

At 100 columns or more (and room for both) the view sits under the list and follows its
cursor; on a smaller screen ``enter`` replaces the list with the view and ``escape`` brings the
list back. The view is live: it is drawn again on every refresh of the screen (the SLA ticks)
and reads the item again when its line changed or the ledger moved. Viewing claims nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.events import Resize
from textual.timer import Timer
from textual.widgets import ContentSwitcher, Static

from quarterdeck.client.console import remaining_s
from quarterdeck.domain.clock import format_instant
from quarterdeck.domain.display import escape_controls
from quarterdeck.tui.cells import STATE_STYLES, short
from quarterdeck.tui.table import LivePane, vars_of

DETAIL_KINDS: dict[str, str] = {
    "approvals": "approval",
    "turns": "turn",
    "missions": "mission",
    "alerts": "alert",
}
"""The panes shown with a detail view, and the kind of item each lists."""
SPLIT_WIDTH = 100
"""From this many columns the detail view sits under the list."""
SPLIT_HEIGHT = 20
"""... when the list and the view together get at least this many rows."""
LOAD_DELAY_S = 0.05
"""How long the cursor must rest on an item before it is read (keys held down read nothing)."""
RELOAD_S = 1.0
"""How often at most the item shown is read again when its line changed or the ledger moved
(its history, events); its line's own fields are drawn at once."""
EVENTS_SHOWN = 10
HISTORY_SHOWN = 30
INTERNALS = frozenset(
    {"history", "context", "missions", "args", "edited_args", "type", "id", "data",
     "recent_events", "tool", "objective", "state", "deadline_at", "claimed_by",
     "claim_expires_at", "snoozed_until", "message"}
)  # fmt: skip
"""Fields shown in their own place, not among the rest."""


# --- how an item reads -----------------------------------------------------------------------


def render_item(item: Mapping[str, Any], now: datetime | None = None) -> Text:
    """An item as text, what decides it first: for an approval its request with the full
    arguments (and an edit's diff), its SLA at ``now`` and who holds a claim, its turn's
    objective, what the agent did before asking, the rule trace and the cost; for a turn its
    objective; for an alert its message. Then the other fields, missions, recent events and
    the ledger history. Whatever the item holds is shown with its control characters escaped.
    """
    out = Text()
    kind = str(item.get("type", "item"))
    if kind == "approval":
        _approval_head(out, item, now)
    else:
        out.append(f"{_shown(kind)} {_shown(item.get('id'))}", style="bold")
        state = item.get("state")
        if state:
            out.append("  ")
            out.append(_shown(state), style=STATE_STYLES.get(str(state), "") or "bold")
        out.append("\n")
        for key in ("objective", "message"):
            if item.get(key):
                out.append(f"  {_shown(item[key])}\n", style="bold")
        _changes(out, item.get("data"))
    out.append("\n")
    fields = [(k, v) for k, v in item.items() if k not in INTERNALS and v not in (None, "", {})]
    if fields:
        out.append("details\n", style="bold")
        for key, value in fields:
            out.append(f"  {_shown(key):<18}", style="dim")
            out.append(f"{_one_line(value)}\n")
    for mission in item.get("missions") or []:
        out.append(
            f"\nmission {_shown(mission.get('id'))} {_shown(mission.get('state'))} "
            f"on {_shown(mission.get('lane'))}\n"
        )
    if kind != "approval":
        _events(out, "recent events", item.get("recent_events") or [])
    history = item.get("history") or []
    if history:
        out.append("\nhistory\n", style="bold")
        for entry in history[-HISTORY_SHOWN:]:
            move = f"{_shown(entry.get('from_state') or '·')} → {_shown(entry.get('to_state'))}"
            action = _shown(entry.get("action"))
            out.append(f"  {entry.get('seq'):>7} {action:<24} {move:<28} ")
            out.append(f"{_shown(entry.get('actor'))}\n", style="dim")
    return out


def _changes(out: Text, data: Any) -> None:
    """A drift alert's unified diff of the attested file against its baseline (or why there
    is none), removed lines red and added lines green."""
    if not isinstance(data, Mapping):
        return
    diff, missing = data.get("diff"), data.get("diff_unavailable")
    if isinstance(diff, str) and diff:
        out.append("\nwhat changed\n", style="bold")
        for line in diff.splitlines():
            style = ""
            if line.startswith(("+++", "---")):
                style = "bold"
            elif line.startswith("+"):
                style = "green"
            elif line.startswith("-"):
                style = "red"
            elif line.startswith("@@"):
                style = "cyan"
            out.append(f"  {escape_controls(line)}\n", style=style)
    elif missing:
        out.append(f"\nno diff: {_shown(missing)}\n", style="dim")


def _approval_head(out: Text, item: Mapping[str, Any], now: datetime | None) -> None:
    """An approval's request, then where it stands, its turn, what came before, and why."""
    tool = _shown(item.get("tool"))
    out.append(tool, style="bold")
    out.append(f"  approval {short(item.get('id'))}", style="dim")
    out.append(f" · {_shown(item.get('state'))}")
    if item.get("lane"):
        out.append(f" · lane {_shown(item['lane'])}")
    out.append("\n")
    args = _decode(item.get("args"))
    for line in _pretty(args).splitlines():
        out.append(f"  {_shown(line)}\n")
    edited = _decode(item.get("edited_args"))
    if edited is not None:
        out.append("edit\n", style="bold")
        for line in diff_lines(args, edited):
            style = "green" if line.startswith("+") else "red" if line.startswith("-") else ""
            out.append(f"  {_shown(line)}\n", style=style)
    out.append("\n")
    _standing(out, item, now)
    context = item.get("context") or {}
    turn = context.get("turn") or {}
    if turn or item.get("turn_id"):
        out.append("turn ", style="dim")
        out.append(short(turn.get("id") or item.get("turn_id")))
        if turn:
            out.append(f" · {_shown(turn.get('state'))} · try {_shown(turn.get('attempt'))}")
        if context.get("turn_cost") is not None:
            out.append(f" · cost so far {_shown(context['turn_cost'])}")
        out.append("\n")
        if turn.get("objective"):
            out.append(f"  {_shown(turn['objective'])}\n", style="bold")
    origin = [f"{key} {_shown(item[key])}" for key in ("session", "cwd") if item.get(key)]
    if origin:
        out.append(f"  {' · '.join(origin)}\n", style="dim")
    earlier = context.get("earlier_actions") or []
    if earlier:
        out.append("\nbefore the request\n", style="bold")
        for action in earlier:
            verdict = _shown(action.get("verdict"))
            out.append(f"  {_clock(action.get('at'))} {_shown(action.get('tool'))} ")
            out.append(_one_line(_decode(action.get("args")), 60))
            out.append(f" → {verdict}\n", style="green" if verdict == "allow" else "yellow")
    _events(out, "recent events", context.get("recent_events") or [])
    decision = context.get("decision")
    if decision:
        out.append("\nrule trace", style="bold")
        out.append(f"  (policy {_shown(decision.get('policy_hash'))[:12]})\n", style="dim")
        for step in decision.get("trace", []):
            matched = bool(step.get("matched"))
            out.append(f"  {'✓' if matched else '·'} {_shown(step.get('rule'))}: ",
                       style="bold" if matched else "")  # fmt: skip
            out.append(f"{_shown(step.get('why'))}\n")


def _standing(out: Text, item: Mapping[str, Any], now: datetime | None) -> None:
    """The SLA (ticking with ``now``), the approver and who holds a claim."""
    stamp = format_instant(now) if now is not None else ""
    snoozed = item.get("snoozed_until")
    if snoozed and snoozed > stamp:
        out.append(f"snoozed until {_clock(snoozed)}", style="dim")
    elif item.get("deadline_at") and item.get("state") in ("pending", "escalated"):
        left = remaining_s(str(item["deadline_at"]), now) if now is not None else None
        if left is None:
            out.append(f"deadline {_clock(item['deadline_at'])}")
        else:
            if left <= 0:
                out.append(f"OVERDUE by {_duration(-left)}", style="bold red")
            else:
                style = "bold red" if left < 60 else "yellow" if left < 300 else "green"
                out.append(f"SLA {_duration(left)} left", style=style)
            out.append(f" (deadline {_clock(item['deadline_at'])})", style="dim")
    approver = item.get("approver")
    if approver:
        level = item.get("level") or 0
        out.append(f" · needs {_shown(approver)}" + (f" (escalated {level}x)" if level else ""))
    claimer, until = item.get("claimed_by"), item.get("claim_expires_at")
    if claimer and until and until > stamp:
        out.append(f" · claimed by {_shown(claimer)} until {_clock(until)}", style="bold")
    else:
        out.append(" · unclaimed", style="dim")
    out.append("\n")


def _events(out: Text, title: str, events: list[Mapping[str, Any]]) -> None:
    if not events:
        return
    out.append(f"\n{title}\n", style="bold")
    for event in events[-EVENTS_SHOWN:]:
        out.append(f"  {_clock(event.get('at'))} {_shown(event.get('type')):<9} ")
        out.append(f"{_event_text(event.get('data'))}\n")


def _event_text(data: Any) -> str:
    """An event's data: its message or line alone when it has one, else the whole of it."""
    if isinstance(data, Mapping):
        for key in ("message", "line", "text"):
            if isinstance(data.get(key), str) and len(data) <= 2:
                return escape_controls(data[key])
    return _one_line(data)


def diff_lines(old: Any, new: Any) -> list[str]:
    """Key-by-key differences of two argument objects (``-`` old, ``+`` new)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return [f"- {json.dumps(old)}", f"+ {json.dumps(new)}"]
    lines = []
    for key in sorted(set(old) | set(new)):
        if key in old and key in new and old[key] == new[key]:
            lines.append(f"  {key}: {json.dumps(old[key])}")
            continue
        if key in old:
            lines.append(f"- {key}: {json.dumps(old[key])}")
        if key in new:
            lines.append(f"+ {key}: {json.dumps(new[key])}")
    return lines


def _pretty(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _clock(instant: Any) -> str:
    """An instant's time of day (``HH:MM:SS``; the whole text when it is not one)."""
    text = _shown(instant)
    return text[11:19] if len(text) >= 19 and text[10] == "T" else text


def _decode(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _shown(value: Any) -> str:
    """A value as text for the screen, its control characters escaped."""
    return escape_controls(str(value))


def _one_line(value: Any, width: int = 100) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    text = escape_controls(text)
    return text if len(text) <= width else text[: width - 1] + "…"


# --- the live view ---------------------------------------------------------------------------


class DetailView(VerticalScroll, can_focus=True):
    """The selected item's context, kept up to date: drawn from the pane's line at once, then
    with what the store adds (history, rule trace, events) once the cursor rests on it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back to the list"),
    ]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.kind = ""
        self.key: str | None = None
        self.line: Any = None
        self.item: dict[str, Any] | None = None
        self.loaded_key: str | None = None
        """The item whose read :attr:`item` holds."""
        self.now: datetime | None = None
        self._loaded_at = 0.0
        self._loaded_head = -1
        self._head = -1
        self._timer: Timer | None = None
        self._moved = False
        """The cursor went to another item, not drawn yet."""
        self._drawn: Text | None = None

    def compose(self) -> Any:
        """The text."""
        yield Static(id="detail-text")

    @property
    def shown(self) -> str:
        """The text on screen, as plain text."""
        return self._drawn.plain if self._drawn is not None else ""

    @property
    def settled(self) -> bool:
        """Whether what is shown is read for the item selected (nothing waits to be read)."""
        return self._timer is None and (self.key is None or self.loaded_key == self.key)

    def show(self, kind: str, line: Any, now: datetime, head: int) -> None:
        """Show ``line``'s item at ``now``. Another item is drawn and read once the cursor
        rests on it (keys pressed in a row draw nothing in between); the same item is drawn
        again at once (its SLA ticks, its line's fields) and read again, at most every
        :data:`RELOAD_S`, when its line changed or the ledger moved (``head``)."""
        key = None if line is None else str(getattr(line, "id", ""))
        changed = line != self.line
        self._head, self.line, self.now = head, line, now
        if key != self.key:
            self.key, self.kind, self.item, self.loaded_key = key, kind, None, None
            self._moved = True
            self._read_soon()
            return
        stale = changed or head != self._loaded_head
        if stale and time.monotonic() - self._loaded_at >= RELOAD_S:
            self._read_soon()
        if not self._moved:
            self.draw()

    def draw(self) -> None:
        """Draw the item (skipped when nothing on it changed)."""
        if self.key is None:
            text = Text("nothing selected", style="dim")
        else:
            item: dict[str, Any] = dict(self.item or {})
            item.update(zip(getattr(self.line, "__slots__", ()), vars_of(self.line), strict=True))
            item["type"] = self.kind
            text = render_item(item, self.now)
            if self.loaded_key != self.key:
                text.append("\nreading…\n", style="dim")
        if text != self._drawn:
            self._drawn = text
            self.query_one("#detail-text", Static).update(text)
        self.border_title = f"{self.kind} {short(self.key)}" if self.key else "detail"

    def _read_soon(self) -> None:
        if self._timer is None:
            self._timer = self.set_timer(LOAD_DELAY_S, self._read)
        else:
            self._timer.reset()

    def _read(self) -> None:
        """The cursor rests: draw the item (from its line, when it is another) and read it."""
        self._timer = None
        if self._moved:
            self._moved = False
            self.scroll_home(animate=False)
            self.draw()
        if self.key is not None:
            self._fetch(self.key)

    @work(exclusive=True, group="detail-view")
    async def _fetch(self, key: str) -> None:
        source: Any = getattr(self.app, "source")  # noqa: B009 (the app's console)
        head = self._head
        try:
            item = await source.detail(key)
        except Exception as exc:
            item = {"problem": f"cannot read it: {type(exc).__name__}: {exc}"}
        if key != self.key:
            return
        self.item = item
        self.loaded_key = key
        self._loaded_at = time.monotonic()
        self._loaded_head = head
        self.draw()

    def action_back(self) -> None:
        """Back to the list."""
        parent = self.parent
        if isinstance(parent, MasterDetail):
            parent.leave_detail()


class MasterDetail(Vertical):
    """The panes and, for the list panes, the selected item's :class:`DetailView`: under
    the list on a large screen, instead of it (``enter``, back with ``escape``) on a small one.
    """

    DEFAULT_CSS = """
    MasterDetail { height: 1fr; }
    MasterDetail > DetailView {
        border: round $primary;
        border-title-color: $accent;
        border-subtitle-color: $foreground-muted;
        background: $surface;
        padding: 0 1;
    }
    MasterDetail > DetailView:focus { border: round $accent; }
    """

    def __init__(self, *children: Any, id: str | None = None) -> None:
        super().__init__(*children, id=id)
        self.zoomed = False
        """On a small screen: the detail view is shown instead of the list."""

    @property
    def split(self) -> bool:
        """Whether the list and the detail view are both shown (a large screen)."""
        return self.size.width >= SPLIT_WIDTH and self.size.height >= SPLIT_HEIGHT

    @property
    def view(self) -> DetailView:
        """The detail view."""
        return self.query_one(DetailView)

    def _switcher(self) -> ContentSwitcher:
        return self.query_one(ContentSwitcher)

    def current(self) -> str:
        """The name of the pane in view."""
        return self._switcher().current or ""

    def on_mount(self) -> None:
        """Follow the pane switcher."""
        self.watch(self._switcher(), "current", self._pane_changed, init=False)
        self.lay_out()

    def on_resize(self, event: Resize) -> None:
        """Lay out again for the new size."""
        self.lay_out()

    def _pane_changed(self, name: str | None) -> None:
        self.zoomed = False
        self.lay_out()
        self.follow()

    def lay_out(self) -> None:
        """Show the list, the detail view or both, for the pane in view and the screen's size."""
        has_detail = self.current() in DETAIL_KINDS
        split = has_detail and self.split
        zoomed = has_detail and self.zoomed and not split
        switcher, view = self._switcher(), self.view
        switcher.display = not zoomed
        view.display = split or zoomed
        switcher.styles.height = "2fr" if split else "1fr"
        view.styles.height = "3fr" if split else "1fr"
        view.border_subtitle = (
            "escape: back to the list" if zoomed or (split and view.has_focus) else ""
        )

    def follow(self, now: datetime | None = None) -> None:
        """Show the selected item of the pane in view (at ``now``: the app's clock)."""
        name = self.current()
        kind = DETAIL_KINDS.get(name)
        if kind is None:
            return
        app: Any = self.app
        pane = self.query_one(f"#{name}", LivePane)
        snapshot = getattr(app, "snapshot", None)
        head = snapshot.header.head_seq if snapshot is not None else -1
        self.view.show(kind, pane.selected(), now or app.clock(), head)

    def on_live_pane_moved(self, event: LivePane.Moved) -> None:
        """The cursor moved to another item: show it."""
        self.follow()

    def enter_detail(self) -> None:
        """``enter``: into the detail view (instead of the list on a small screen)."""
        if self.current() not in DETAIL_KINDS:
            return
        if not self.split:
            self.zoomed = True
        self.lay_out()
        self.follow()
        self.view.focus()
        self.call_after_refresh(self.lay_out)

    def leave_detail(self) -> None:
        """``escape``: back to the list."""
        self.zoomed = False
        self.lay_out()
        name = self.current()
        if name:
            self.query_one(f"#{name}", LivePane).focus()
        self.call_after_refresh(self.lay_out)
