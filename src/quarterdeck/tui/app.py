"""The control center: one app over a :class:`~quarterdeck.client.console.Console`, built by
:func:`create_app` for the CLI, the demo and the tests alike.

The screen refreshes from the console's change feed on a coalescing loop (at most four
snapshots a second, never overlapping); panes diff by key and touch only what changed. Every
action is a binding here (with an id a keymap can rebind) and a command-palette entry; the app
itself moves between panes, filters, opens details and help, and runs an action offered on some
panes only on the pane in view, which owns it (:mod:`quarterdeck.tui.actions`).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.actions import ActionParseResult
from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.css.query import NoMatches
from textual.dom import DOMNode
from textual.screen import Screen
from textual.theme import Theme
from textual.widgets import ContentSwitcher, Footer, Input, Static

from quarterdeck.client.console import Console, Snapshot
from quarterdeck.domain.clock import Clock, utc_now
from quarterdeck.tui import commands
from quarterdeck.tui.actions import SupervisorApp
from quarterdeck.tui.keymap import ACTIONS, BY_NAME, KeyAction, keymap_problems
from quarterdeck.tui.panes import AlertsPane, ApprovalsPane, LedgerPane, MissionsPane, TurnsPane
from quarterdeck.tui.screens import DetailScreen, HelpScreen
from quarterdeck.tui.table import LivePane

PANES = ("approvals", "turns", "missions", "alerts", "ledger")
MIN_REFRESH_S = 0.25
IDLE_REFRESH_S = 1.0
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


class QuarterdeckApp(SupervisorApp):
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
        super().__init__(console, live=live)
        self.clock = clock
        self.error: str | None = None
        self.current = "approvals"
        self.seen_approvals: set[str] | None = None
        self._theme = theme
        self._theme_problem = theme_problem
        self._keymap = dict(keymap or {})
        self._on_exit = on_exit
        self._refreshing = asyncio.Lock()
        self._again = False
        self._frozen = False

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
            self.snapshot = self.undecided(snapshot)
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

    async def run_action(
        self,
        action: str | ActionParseResult,
        default_namespace: DOMNode | None = None,
        namespaces: Mapping[str, DOMNode] | None = None,
    ) -> bool:
        """Run an action; one offered on some panes only runs on the pane in view, which owns
        it (its key is bound here, so that the footer lists every key in the keymap's order)."""
        spec = BY_NAME.get(action) if isinstance(action, str) else None
        if spec is not None and spec.on_pane and default_namespace in (None, self):
            if not self.check_action(spec.name, ()):
                return False
            default_namespace = self.pane()
        return await super().run_action(action, default_namespace, namespaces)

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
            claim = await self.command(commands.claim(item_id, workspace=workspace))
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
