"""The control center: one app over a :class:`~quarterdeck.client.console.Console`, built by
:func:`create_app` for the CLI, the demo and the tests alike.

The screen refreshes from the console's change feed on a coalescing loop (at most four
snapshots a second, never overlapping); panes diff by key and touch only what changed. Every
action is a binding (with an id a keymap can rebind) and a command-palette entry; actions that
change the runtime run as workers, so input never waits on the store.
"""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.theme import Theme
from textual.widgets import ContentSwitcher, Footer, Input, Static

from quarterdeck.client.console import Console, ReadOnly, Snapshot
from quarterdeck.domain.clock import Clock, utc_now
from quarterdeck.tui.keymap import ACTIONS, BY_NAME, KeyAction, keymap_problems
from quarterdeck.tui.panes import AlertsPane, ApprovalsPane, LedgerPane, MissionsPane, TurnsPane
from quarterdeck.tui.screens import (
    ConfirmScreen,
    DetailScreen,
    HelpScreen,
    JsonEditScreen,
    ReasonScreen,
    TextEditScreen,
)
from quarterdeck.tui.table import LivePane, short

PANES = ("approvals", "turns", "missions", "alerts", "ledger")
MIN_REFRESH_S = 0.25
IDLE_REFRESH_S = 1.0
SNOOZE_S = 600
KEY_LABELS = {"slash": "/", "question_mark": "?", "enter": "enter", "tab": "tab"}
"""How key names read on screen."""


def _layout(groups: list[list[Text]], width: int, separator: str) -> Text:
    """Segments as lines no wider than ``width`` (0: unlimited): each group starts a line, its
    segments joined by ``separator`` (the first group's, a badge and then words, by spaces),
    and a segment that would cross the edge starts the next line. A segment wider than a whole
    line is left to the terminal to wrap."""
    out = Text()
    for number, group in enumerate(groups):
        line = 0
        for index, segment in enumerate(group):
            joiner = separator if number else " " if index == 1 else "  "
            if index == 0:
                if number:
                    out.append("\n")
                if number or not segment.plain.startswith(" "):
                    out.append(" ")
                    line = 1
            elif width and line + len(joiner) + segment.cell_len > width:
                out.append("\n ")
                line = 1
            else:
                out.append(joiner)
                line += len(joiner)
            out.append_text(segment)
            line += segment.cell_len
    return out


class StatusHeader(Static):
    """The runtime's state: what this is attached to, flags (FORCE FALLBACK stands out),
    counts and SLO figures.

    Built from segments laid out in lines of the terminal's width: a segment that does not fit
    starts the next line whole, so a narrow terminal never splits a figure from its name.
    """

    _shown: tuple[Snapshot | None, str | None] | None = None

    def show(self, snapshot: Snapshot | None, error: str | None = None) -> None:
        """Render the header for a snapshot (or the last one, with an error)."""
        self._shown = (snapshot, error)
        badge = Text(" QUARTERDECK ", style="bold reverse")
        if snapshot is None:
            state = [badge, Text("connecting…")]
            if error:
                state.append(Text(error, style="bold red"))
            self._set(_layout([state], self.app.size.width, "  "))
            return
        head = snapshot.header
        identity = [badge, Text(head.target)]
        if head.alive is not None:
            identity.append(
                Text("○ daemon not running", style="bold red")
                if not head.alive
                else Text("● daemon alive", style="green")
                if head.alive == 1
                else Text(f"● {head.alive} nodes alive", style="green")
            )
        if head.read_only:
            identity.append(Text("READ-ONLY", style="bold yellow"))
        if head.force_all:
            identity.append(Text(" FORCE FALLBACK: ALL LANES ", style="bold white on red"))
        elif head.forced:
            forced = f" FORCE FALLBACK: {', '.join(head.forced)} "
            identity.append(Text(forced, style="bold white on red"))
        if head.paused:
            identity.append(Text(f"paused: {', '.join(head.paused)}", style="yellow"))
        counts = head.turns
        figures = [
            Text(
                f"turns {sum(counts.values())}: "
                f"{counts.get('running', 0)} running · {counts.get('queued', 0)} queued · "
                f"{counts.get('awaiting_approval', 0)} waiting · "
                f"{counts.get('completed', 0)} done · "
                f"{counts.get('failed', 0) + counts.get('timed_out', 0)} failed"
            ),
            Text(f"approvals {head.approvals_open}", style="bold" if head.approvals_open else ""),
            Text(f"alerts {head.alerts_open}", style="bold red" if head.alerts_open else ""),
        ]
        slo = head.slo
        p95 = slo.get("mission_latency_p95_s")
        fallback = slo.get("fallback_rate")
        service = Text(f"p95 {p95:.2f}s" if isinstance(p95, int | float) else "p95 -")
        service.append(
            f" fallback {fallback:.0%}" if isinstance(fallback, int | float) else " fallback -"
        )
        dead = slo.get("dead_letters")
        if dead:
            service.append(f" dead {dead}", style="bold red")
        figures.append(service)
        identity.append(Text(f"ledger {head.head_seq}"))
        groups = [identity, figures]
        if error:
            groups.append([Text(error, style="bold red")])
        self._set(_layout(groups, self.app.size.width, " │ "))

    def on_resize(self) -> None:
        """Lay the last header out again for the new width."""
        if self._shown is not None:
            self.show(*self._shown)

    def _set(self, text: Text) -> None:
        """Show ``text``: drawn again in place, and the screen laid out again only when the
        header's height changes (a layout redraws every widget)."""
        if text == self.content:
            return
        width, height = self.size
        self.update(text, layout=False)
        if not width or self.get_content_height(self.size, self.size, width) != height:
            self.refresh(layout=True)


class FilterBar(Input):
    """``/``: filter the current pane (a substring of any column); escape clears it."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "clear", "Clear filter")]

    def action_clear(self) -> None:
        """Clear the filter and hide the bar."""
        self.value = ""
        self.post_message(self.Submitted(self, ""))


def _bindings() -> list[BindingType]:
    bindings: list[BindingType] = [
        Binding(action.key, action.name, action.description, id=action.name,
                show=action.name not in ("next_pane", "detail", "filter"),
                priority=action.name == "next_pane")  # else the screen's tab moves the focus
        for action in ACTIONS
    ]  # fmt: skip
    bindings.append(Binding("ctrl+q", "quit", "Quit", show=False, priority=True))
    return bindings


class QuarterdeckApp(App[None]):
    """The Quarterdeck control center."""

    CSS_PATH = "app.tcss"
    TITLE = "Quarterdeck"
    BINDINGS: ClassVar[list[BindingType]] = _bindings()
    ENABLE_COMMAND_PALETTE = True

    def __init__(
        self,
        console: Console,
        *,
        clock: Clock = utc_now,
        theme: Theme | None = None,
        theme_problem: str | None = None,
        keymap: Mapping[str, str] | None = None,
        live: bool = True,
        on_exit: Callable[[], Any] | None = None,
    ) -> None:
        super().__init__()
        self.source = console
        self.clock = clock
        self.snapshot: Snapshot | None = None
        self.error: str | None = None
        self.current = "approvals"
        self.live = live
        self.seen_approvals: set[str] | None = None
        self._theme = theme
        self._theme_problem = theme_problem
        self._keymap = dict(keymap or {})
        self._on_exit = on_exit
        self._refreshing = asyncio.Lock()
        self._again = False
        self._frozen = False
        self._decided: set[str] = set()
        """Approvals decided here that the last snapshot still listed."""
        self.sent: list[dict[str, Any]] = []
        """Every command this app sent, with its result (for the record and for tests)."""

    # --- lifecycle -------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        """Header, the pane switcher, the filter bar, the footer."""
        yield StatusHeader(id="status")
        with ContentSwitcher(initial="approvals", id="panes"):
            yield ApprovalsPane(id="approvals")
            yield TurnsPane(id="turns")
            yield MissionsPane(id="missions")
            yield AlertsPane(id="alerts")
            yield LedgerPane(id="ledger")
        yield FilterBar(placeholder="filter (enter applies, escape clears)", id="filter")
        yield Footer()

    def on_mount(self) -> None:
        """Theme and keymap, the main screen, the first refresh, then the live loop."""
        if self._theme is not None:
            self.register_theme(self._theme)
            self.theme = self._theme.name
        problems = keymap_problems(self._keymap)
        if problems:
            self.notify("; ".join(problems), title="keymap", severity="warning", timeout=8)
        known = {name: key for name, key in self._keymap.items() if name in BY_NAME}
        if known:
            self.set_keymap(known)
        self.query_one("#ledger", LedgerPane).loader = self._load_ledger
        self.query_one("#filter", FilterBar).display = False
        if self._theme_problem:
            self.notify(self._theme_problem, title="theme", severity="warning", timeout=8)
        self.call_after_refresh(self._start)

    async def _start(self) -> None:
        await self.refresh_now()
        self._focus_pane()
        if self.live:
            # What exists now (modules, widgets, the runtime) lives as long as the app: leave
            # it out of the collector's full passes, which otherwise stop everything for a
            # quarter of a second now and then in a large process (given back on unmount).
            gc.freeze()
            self._frozen = True
            self._follow()

    @work(exclusive=True, group="follow")
    async def _follow(self) -> None:
        """Refresh when the console reports a change (at most four times a second, less when
        refreshing is slow), and at least once a second so that countdowns move."""
        loop = asyncio.get_running_loop()
        while True:
            await self.source.wait_change(IDLE_REFRESH_S)
            began = loop.time()
            await self.refresh_now()
            # Rest at least twice as long as the refresh took: on a busy store, refreshing
            # never takes more than a third of the loop, and keys stay quick.
            await asyncio.sleep(max(MIN_REFRESH_S, 2 * (loop.time() - began)))

    async def refresh_now(self) -> None:
        """Read a snapshot and show it (one at a time; errors shown in the header). A refresh
        that finds the screen gone (the app is closing) stops quietly."""
        try:
            await self._refresh_now()
        except NoMatches:
            return

    async def _confirm(self) -> None:
        """After a command: read a snapshot to confirm what it did, unless the live loop is
        about to (the command's commit wakes it), so keys pressed in a row do not each add a
        read of the store to the loop's."""
        if not self.live:
            await self.refresh_now()

    async def _refresh_now(self) -> None:
        if self._refreshing.locked():
            self._again = True  # the refresh under way may have read before this change
            return
        async with self._refreshing:
            self._again = False
            try:
                snapshot = await self.source.snapshot()
                self.error = None
            except Exception as exc:
                self.error = f"cannot read the store: {type(exc).__name__}: {exc}"
                self.query_one("#status", StatusHeader).show(self.snapshot, self.error)
                return
            self.snapshot = self._undecided(snapshot)
            self._show(self.snapshot)
            ledger = self.query_one("#ledger", LedgerPane)
            if ledger.following and self.current == "ledger":
                ledger.show(await self.source.ledger_page(None), self.clock())
        if self._again:
            self._again = False
            await self._refresh_now()

    def _show(self, snapshot: Snapshot) -> None:
        now = self.clock()
        with self.batch_update():
            self.query_one("#status", StatusHeader).show(snapshot, self.error)
            self._show_current(snapshot, now)
        ids = {line.id for line in snapshot.approvals}
        if self.seen_approvals is not None:
            new = ids - self.seen_approvals
            if new:
                self.bell()
                first = next(line for line in snapshot.approvals if line.id in new)
                self.notify(
                    f"{first.tool} on {first.lane} needs {first.approver}"
                    + (f" (+{len(new) - 1} more)" if len(new) > 1 else ""),
                    title="new approval",
                )
        self.seen_approvals = ids

    def _show_current(self, snapshot: Snapshot, now: datetime) -> None:
        """Only the pane in view is brought up to date; the others catch up when shown."""
        lines: dict[str, tuple[Any, ...]] = {
            "approvals": snapshot.approvals,
            "turns": snapshot.turns,
            "missions": snapshot.missions,
            "alerts": snapshot.alerts,
        }
        if self.current in lines:
            self.pane().show(lines[self.current], now)

    def _load_ledger(self, before: int | None) -> None:
        self._ledger_page(before)

    @work(exclusive=True, group="ledger")
    async def _ledger_page(self, before: int | None) -> None:
        lines = await self.source.ledger_page(before)
        ledger = self.query_one("#ledger", LedgerPane)
        if before is not None and not lines:
            return
        ledger.show(lines, self.clock())
        ledger.move_cursor(0)

    async def on_unmount(self) -> None:
        """Let the console go."""
        if self._frozen:
            gc.unfreeze()
        await self.source.close()
        if self._on_exit is not None:
            result = self._on_exit()
            if asyncio.iscoroutine(result):
                await result

    # --- panes and keys ----------------------------------------------------------------------------

    def pane(self) -> LivePane[Any]:
        """The pane in view."""
        widget = self.query_one(f"#{self.current}")
        assert isinstance(widget, LivePane)
        return widget

    def _focus_pane(self) -> None:
        self.query_one("#panes", ContentSwitcher).current = self.current
        self.pane().focus()
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Offer only the actions that apply to the pane in view (the footer follows)."""
        spec = BY_NAME.get(action)
        if spec is None:
            return True
        if action == "next_pane" and (self.screen.is_modal or isinstance(self.focused, Input)):
            return False  # a dialog's or the filter bar's tab (next_pane is a priority binding)
        if self.screen.is_modal and not isinstance(self.screen, DetailScreen):
            return False  # a dialog's keys are its own (the detail view may act on its item)
        return spec.applies_to(self.current)

    def _show_pane(self, name: str) -> None:
        self.current = name
        if self.snapshot is not None:
            self._show_current(self.snapshot, self.clock())
        if name == "ledger" and self.query_one("#ledger", LedgerPane).following:
            self._ledger_page(None)
        self._focus_pane()

    def action_pane_approvals(self) -> None:
        """Show the Approvals pane."""
        self._show_pane("approvals")

    def action_pane_turns(self) -> None:
        """Show the Turns pane."""
        self._show_pane("turns")

    def action_pane_missions(self) -> None:
        """Show the Missions pane."""
        self._show_pane("missions")

    def action_pane_alerts(self) -> None:
        """Show the Alerts pane."""
        self._show_pane("alerts")

    def action_pane_ledger(self) -> None:
        """Show the Ledger pane."""
        self._show_pane("ledger")

    def action_next_pane(self) -> None:
        """Cycle through the panes."""
        self._show_pane(PANES[(PANES.index(self.current) + 1) % len(PANES)])

    def action_help(self) -> None:
        """Show the keys."""
        rows = [
            (self._key_of(action), action.description,
             "everywhere" if "*" in action.panes else ", ".join(action.panes))
            for action in ACTIONS
        ]  # fmt: skip
        self.push_screen(HelpScreen(rows))

    def _key_of(self, action: KeyAction) -> str:
        key = self._keymap.get(action.name, action.key)
        return KEY_LABELS.get(key, key)

    def action_filter(self) -> None:
        """Open the filter bar for the current pane."""
        bar = self.query_one("#filter", FilterBar)
        bar.display = True
        bar.value = self.pane().filter_text
        bar.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Apply the filter to the current pane."""
        if not isinstance(event.input, FilterBar):
            return
        pane = self.pane()
        pane.filter_text = event.value.strip()
        event.input.display = False
        if isinstance(pane, LedgerPane):
            self._ledger_page(pane.page_before)
        elif self.snapshot is not None:
            self._show(self.snapshot)
        pane.focus()

    def action_detail(self) -> None:
        """Open the selected item's detail view (an approval is claimed while open)."""
        key = self._selected_id()
        if key is not None:
            workspace = getattr(self.pane().selected(), "workspace", None) or "default"
            self._open_detail(key, workspace)

    def on_live_pane_row_selected(self, event: LivePane.RowSelected) -> None:
        """Enter on a row (the pane takes the key) or a click on the selected row opens its
        detail view."""
        event.stop()
        self.action_detail()

    @work(group="detail")
    async def _open_detail(self, item_id: str, workspace: str) -> None:
        if self.current == "approvals" and not self.source.read_only:
            claim = await self._command(
                {"command": "approval.claim", "approval_id": item_id, "workspace": workspace}
            )
            if claim is not None and not claim.get("ok"):
                self.notify("; ".join(claim.get("errors", [])), severity="warning")
        item = await self.source.detail(item_id)
        if item is None:
            self.notify(f"{item_id} is gone", severity="warning")
            return
        await self.push_screen(DetailScreen(item))

    def _selected_id(self) -> str | None:
        pane = self.pane()
        line = pane.selected()
        if line is None:
            return None
        if isinstance(pane, LedgerPane):
            return str(line.subject_id)
        return str(line.id)

    def _selected_turn(self) -> str | None:
        line = self.pane().selected()
        if line is None:
            return None
        if self.current == "turns":
            return str(line.id)
        turn = getattr(line, "turn_id", None)
        return str(turn) if turn else None

    def _turn_workspace(self, turn: str) -> str:
        """The workspace of the selected item's turn (turn commands are applied in it): the
        line's own, else (a mission) its turn's as last read."""
        workspace = getattr(self.pane().selected(), "workspace", None)
        if workspace:
            return str(workspace)
        turns = self.snapshot.turns if self.snapshot is not None else ()
        return next((line.workspace for line in turns if line.id == turn), "default")

    def _selected_lane(self) -> str | None:
        line = self.pane().selected()
        lane = getattr(line, "lane", None) or getattr(line, "subject_id", None)
        return str(lane) if lane else None

    # --- commands ------------------------------------------------------------------------------

    async def _command(self, payload: Mapping[str, Any]) -> dict[str, Any] | None:
        try:
            result = await self.source.command(payload)
        except ReadOnly as exc:
            self.notify(str(exc), title="read-only", severity="error")
            return None
        except Exception as exc:
            self.notify(f"{type(exc).__name__}: {exc}", title="not sent", severity="error")
            return None
        self.sent.append({"payload": dict(payload), "result": result})
        return dict(result)

    @work(group="commands")
    async def send(self, payload: dict[str, Any], done: str) -> None:
        """Send a command and report how it went; a snapshot confirms it afterwards."""
        result = await self._command(payload)
        if result is None:
            return
        if result.get("ok"):
            self._settled(result)
            self.notify(done + (" (already decided)" if result.get("already") else ""))
        else:
            self.notify("; ".join(result.get("errors", ["refused"])), title="refused",
                        severity="error")  # fmt: skip
        await self._confirm()

    def _settled(self, result: Mapping[str, Any]) -> None:
        """Show a decided approval as decided at once (the runtime committed it; the next
        snapshot agrees)."""
        approval = result.get("approval")
        if self.snapshot is None or not approval or result.get("state") in ("pending", "escalated"):
            return
        self._decided.add(str(approval))
        remaining = tuple(line for line in self.snapshot.approvals if line.id != approval)
        if len(remaining) != len(self.snapshot.approvals):
            self.snapshot = replace(self.snapshot, approvals=remaining)
            self.query_one("#approvals", ApprovalsPane).discard(str(approval))

    def _undecided(self, snapshot: Snapshot) -> Snapshot:
        """A snapshot just read, without the approvals decided here that it still lists (it
        was read before their commits), so that a decided row does not come back for a
        moment."""
        listed = {line.id for line in snapshot.approvals}
        self._decided &= listed  # a snapshot without them was read after: they are done with
        if not self._decided:
            return snapshot
        kept = tuple(line for line in snapshot.approvals if line.id not in self._decided)
        return replace(snapshot, approvals=kept)

    def _writable(self) -> bool:
        if self.source.read_only:
            self.notify(
                "read-only console: actions are refused (attached with --read-only)",
                title="read-only", severity="error",
            )  # fmt: skip
            return False
        return True

    def _approval(self) -> Any:
        line = self.query_one("#approvals", ApprovalsPane).selected()
        if line is None:
            self.notify("no approval selected", severity="warning")
        return line

    def action_approve(self) -> None:
        """Approve the selected approval."""
        line = self._approval()
        if line is not None and self._writable():
            self.send({"command": "approval.approve", "approval_id": line.id,
                       "action_key": line.action_key, "workspace": line.workspace},
                      f"approved {line.tool} ({short(line.id)})")  # fmt: skip

    def action_edit_approve(self) -> None:
        """Edit the arguments (validated JSON), then approve with them."""
        line = self._approval()
        if line is None or not self._writable():
            return

        def sent(value: dict[str, Any] | None) -> None:
            if value is not None:
                self.send({"command": "approval.approve", "approval_id": line.id,
                           "action_key": line.action_key, "args": value,
                           "workspace": line.workspace},
                          f"approved {line.tool} with edits")  # fmt: skip

        self.push_screen(JsonEditScreen(f"Edit {line.tool} arguments", json.loads(line.args)), sent)

    def action_reject(self) -> None:
        """Reject with a reason code picked by one key."""
        line = self._approval()
        if line is None or not self._writable():
            return
        codes = (self.snapshot.reject_reasons if self.snapshot else ()) or (
            "unsafe", "wrong_target", "needs_context", "policy", "other",
        )  # fmt: skip

        def sent(choice: tuple[str, str] | None) -> None:
            if choice is not None:
                code, note = choice
                payload = {"command": "approval.reject", "approval_id": line.id,
                           "action_key": line.action_key, "reason_code": code,
                           "workspace": line.workspace}  # fmt: skip
                if note:
                    payload["reason"] = note
                self.send(payload, f"rejected {line.tool}: {code}")

        self.push_screen(ReasonScreen(codes), sent)

    def action_escalate(self) -> None:
        """Escalate the selected approval."""
        line = self._approval()
        if line is not None and self._writable():
            self.send({"command": "approval.escalate", "approval_id": line.id,
                       "workspace": line.workspace}, f"escalated {line.tool}")  # fmt: skip

    def action_snooze(self) -> None:
        """Snooze the selected approval for ten minutes."""
        line = self._approval()
        if line is not None and self._writable():
            self.send({"command": "approval.snooze", "approval_id": line.id, "for_s": SNOOZE_S,
                       "workspace": line.workspace}, f"snoozed {line.tool} for 10m")  # fmt: skip

    def action_approve_all(self) -> None:
        """Approve every approval shown (after confirmation), each on its own record."""
        pane = self.query_one("#approvals", ApprovalsPane)
        lines = list(pane.lines.values())
        if not lines or not self._writable():
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                self._approve_each(lines)

        self.push_screen(
            ConfirmScreen(f"Approve all {len(lines)} approvals shown?", "Approve all"), confirmed
        )

    @work(group="commands")
    async def _approve_each(self, lines: list[Any]) -> None:
        done = 0
        for line in lines:
            result = await self._command(
                {"command": "approval.approve", "approval_id": line.id,
                 "action_key": line.action_key, "workspace": line.workspace}
            )  # fmt: skip
            done += bool(result and result.get("ok") and not result.get("already"))
        self.notify(f"approved {done} of {len(lines)}")
        await self._confirm()

    def _confirm_for_turn(
        self, question: str, button: str, then: Callable[[str, str], object]
    ) -> None:
        """Ask ``question`` (``{turn}`` is the selected turn's short id); on yes, call
        ``then(turn, workspace)``."""
        turn = self._selected_turn()
        if turn is None or not self._writable():
            return
        workspace = self._turn_workspace(turn)

        def confirmed(yes: bool | None) -> None:
            if yes:
                then(turn, workspace)

        self.push_screen(ConfirmScreen(question.format(turn=short(turn)), button), confirmed)

    def action_takeover(self) -> None:
        """Take the selected turn over (after confirmation), then write its deliverable."""
        self._confirm_for_turn(
            "Take over turn {turn}? Its agent is stopped.", "Take over", self._take_over
        )

    @work(group="commands")
    async def _take_over(self, turn: str, workspace: str) -> None:
        result = await self._command(
            {"command": "turn.takeover", "turn_id": turn, "workspace": workspace}
        )
        if result is None:
            return
        if not result.get("ok"):
            self.notify("; ".join(result.get("errors", [])), title="refused", severity="error")
            return
        self.notify(f"you hold turn {short(turn)}")
        await self._confirm()
        self._write_deliverable(turn, workspace)

    def _write_deliverable(self, turn: str, workspace: str) -> None:
        def written(text: str | None) -> None:
            if text is not None:
                self.send({"command": "turn.complete", "turn_id": turn,
                           "deliverable": {"text": text}, "workspace": workspace},
                          f"completed turn {short(turn)}")  # fmt: skip

        self.push_screen(TextEditScreen(f"Deliverable for turn {short(turn)}"), written)

    def action_complete(self) -> None:
        """Write the deliverable for a turn you hold."""
        turn = self._selected_turn()
        if turn is not None and self._writable():
            self._write_deliverable(turn, self._turn_workspace(turn))

    def action_release(self) -> None:
        """Hand a turn you hold back to its lane."""
        turn = self._selected_turn()
        if turn is not None and self._writable():
            self.send({"command": "turn.release", "turn_id": turn,
                       "workspace": self._turn_workspace(turn)}, f"released {short(turn)}")  # fmt: skip

    def action_requeue(self) -> None:
        """Give the selected held (dead-lettered) turn a fresh try on its lane."""
        turn = self._selected_turn()
        if turn is not None and self._writable():
            self.send({"command": "turn.requeue", "turn_id": turn,
                       "workspace": self._turn_workspace(turn)}, f"requeued {short(turn)}")  # fmt: skip

    def action_cancel_turn(self) -> None:
        """Cancel the selected turn (after confirmation): its agent is stopped and its open
        approvals are rejected."""

        def cancel(turn: str, workspace: str) -> None:
            self.send({"command": "turn.cancel", "turn_id": turn, "workspace": workspace},
                      f"cancelled {short(turn)}")  # fmt: skip

        self._confirm_for_turn(
            "Cancel turn {turn}? Its agent is stopped and it gets no deliverable.",
            "Yes, cancel it",
            cancel,
        )

    def action_pause_lane(self) -> None:
        """Pause the selected item's lane, or resume it when paused."""
        lane = self._selected_lane()
        if lane is None or not self._writable():
            return
        paused = self.snapshot is not None and lane in self.snapshot.header.paused
        command = "lane.resume" if paused else "lane.pause"
        self.send({"command": command, "lane": lane}, f"{command.split('.')[1]}d lane {lane}")

    def action_fallback_lane(self) -> None:
        """Force (or stop forcing) fallback for the selected item's lane, after confirmation."""
        lane = self._selected_lane()
        if lane is None or not self._writable():
            return
        on = not (self.snapshot is not None and lane in self.snapshot.header.forced)

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.send({"command": "lane.force_fallback", "lane": lane, "on": on},
                          f"force fallback {'on' if on else 'off'} for {lane}")  # fmt: skip

        verb = "Force" if on else "Stop forcing"
        self.push_screen(ConfirmScreen(f"{verb} fallback for lane {lane}?", verb), confirmed)

    def action_fallback_all(self) -> None:
        """Force (or stop forcing) fallback on every lane, after confirmation."""
        if not self._writable():
            return
        on = not (self.snapshot is not None and self.snapshot.header.force_all)

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.send({"command": "fallback.force", "on": on},
                          f"force fallback {'on' if on else 'off'} for every lane")  # fmt: skip

        verb = "Force" if on else "Stop forcing"
        self.push_screen(ConfirmScreen(f"{verb} fallback on EVERY lane?", verb), confirmed)

    def _alert(self) -> Any:
        line = self.query_one("#alerts", AlertsPane).selected()
        if line is None:
            self.notify("no alert selected", severity="warning")
        return line

    def action_ack(self) -> None:
        """Acknowledge the selected alert."""
        line = self._alert()
        if line is not None and self._writable():
            self.send({"command": "alert.ack", "alert_id": line.id, "workspace": line.workspace},
                      f"acknowledged {line.alert_type}")  # fmt: skip

    def action_resolve(self) -> None:
        """Resolve the selected alert."""
        line = self._alert()
        if line is not None and self._writable():
            self.send({"command": "alert.resolve", "alert_id": line.id,
                       "workspace": line.workspace}, f"resolved {line.alert_type}")  # fmt: skip

    def action_rebaseline(self) -> None:
        """Accept the selected alert's lane's attested files as they are now."""
        line = self._alert()
        if line is None or not self._writable():
            return
        lane = line.subject_id

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.send({"command": "lane.rebaseline", "lane": lane}, f"rebaselined {lane}")

        self.push_screen(
            ConfirmScreen(f"Accept lane {lane}'s attested files as they are now?", "Rebaseline"),
            confirmed,
        )

    @work(group="verify")
    async def action_verify(self) -> None:
        """Verify the ledger's chain."""
        self.notify("verifying the ledger…")
        result = await self.source.verify_ledger()
        if result["ok"]:
            self.notify(f"ledger ok: {result['entries']} entries", title="ledger")
        else:
            self.notify(f"ledger broken at seq {result['first_bad_seq']}: {result['reason']}",
                        title="ledger", severity="error", timeout=30)  # fmt: skip

    # --- the command palette ---------------------------------------------------------------------

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        """Every action, in the palette too."""
        yield from super().get_system_commands(screen)
        for action in ACTIONS:
            if action.name in ("filter", "next_pane"):
                continue
            where = "" if "*" in action.panes else f" ({', '.join(action.panes)})"
            yield SystemCommand(
                action.description,
                f"key {self._key_of(action)}{where}",
                self._palette_runner(action),
            )

    def _palette_runner(self, action: KeyAction) -> Callable[[], Any]:
        async def run() -> None:
            if not action.applies_to(self.current):
                self._show_pane(action.panes[0])
            await self.run_action(action.name)

        return run


def create_app(
    console: Console,
    *,
    clock: Clock = utc_now,
    theme: Theme | None = None,
    theme_problem: str | None = None,
    keymap: Mapping[str, str] | None = None,
    live: bool = True,
    on_exit: Callable[[], Any] | None = None,
) -> QuarterdeckApp:
    """The one factory the CLI, the demo and the tests build the app with."""
    return QuarterdeckApp(
        console, clock=clock, theme=theme, theme_problem=theme_problem, keymap=keymap,
        live=live, on_exit=on_exit,
    )  # fmt: skip
