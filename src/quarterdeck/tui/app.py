"""The control center: one app over a :class:`~quarterdeck.client.console.Console`, built by
:func:`create_app` for the CLI, the demo and the tests alike. It composes the screen and
refreshes it.

The screen refreshes from the console's change feed on a coalescing loop (at most four
snapshots a second, never overlapping); panes diff by key and touch only what changed. Moving
about (panes, filter, detail, help, palette) is :mod:`quarterdeck.tui.navigation`; the actions
on the runtime are :mod:`quarterdeck.tui.actions`, each on the pane that owns it.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.css.query import NoMatches
from textual.theme import Theme
from textual.widgets import ContentSwitcher

from quarterdeck.client.console import Console, Snapshot
from quarterdeck.domain.clock import Clock, utc_now
from quarterdeck.tui.detail import DetailView, MasterDetail
from quarterdeck.tui.footer import KeyFooter
from quarterdeck.tui.header import StatusHeader
from quarterdeck.tui.keymap import ACTIONS, BY_NAME, NO_KEY, keymap_problems
from quarterdeck.tui.lanes import LanesPane, lane_reader
from quarterdeck.tui.navigation import FilterBar, Navigation, app_bindings
from quarterdeck.tui.panes import AlertsPane, ApprovalsPane, LedgerPane, MissionsPane, TurnsPane

__all__ = ["QuarterdeckApp", "StatusHeader", "create_app"]

MIN_REFRESH_S = 0.25
IDLE_REFRESH_S = 1.0


class QuarterdeckApp(Navigation):
    """The Quarterdeck control center."""

    CSS_PATH = "app.tcss"
    TITLE = "Quarterdeck"
    BINDINGS: ClassVar[list[BindingType]] = app_bindings()
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
        super().__init__(console, live=live, clock=clock)
        self.error: str | None = None
        self.seen_approvals: set[str] | None = None
        self.seen_alerts: set[str] | None = None
        self._theme = theme
        self._theme_problem = theme_problem
        self._keymap = dict(keymap or {})
        self._on_exit = on_exit
        self._refreshing = asyncio.Lock()
        self._again = False
        self._frozen = False

    # --- lifecycle -------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        """Header, the pane switcher with the detail view, the filter bar, the footer."""
        yield StatusHeader(id="status")
        with MasterDetail(id="work"):
            with ContentSwitcher(initial="approvals", id="panes"):
                yield ApprovalsPane(id="approvals")
                yield TurnsPane(id="turns")
                yield MissionsPane(id="missions")
                yield AlertsPane(id="alerts")
                yield LedgerPane(id="ledger")
                yield LanesPane(id="lanes")
            yield DetailView(id="detail-view")
        yield FilterBar(placeholder="filter (enter applies, escape clears)", id="filter")
        yield KeyFooter(id="footer")

    def on_mount(self) -> None:
        """Theme and keymap, the main screen, the first refresh, then the live loop."""
        if self._theme is not None:
            self.register_theme(self._theme)
            self.theme = self._theme.name
        problems = keymap_problems(self._keymap)
        if problems:
            self.notify("; ".join(problems), title="keymap", severity="warning", timeout=8)
        known = {name: key for name, key in self._keymap.items() if name in BY_NAME}
        taken = set(known.values())
        for action in ACTIONS:
            if action.name not in known and action.key in taken:
                # The user gave this action's key to another: it keeps none (help says so).
                known[action.name] = NO_KEY
        if known:
            self.set_keymap(known)  # help reads the keys back from the app's keymap
        self.query_one("#ledger", LedgerPane).loader = self.load_ledger
        self.query_one("#filter", FilterBar).display = False
        if self._theme_problem:
            self.notify(self._theme_problem, title="theme", severity="warning", timeout=8)
        self.call_after_refresh(self._start)

    async def _start(self) -> None:
        await self.refresh_now()
        self.focus_pane()
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
            self.show_snapshot(self.snapshot)
            ledger = self.query_one("#ledger", LedgerPane)
            if ledger.following and self.current == "ledger":
                ledger.show(await self.source.ledger_page(None), self.clock())
            if self.current == "lanes":
                await self._lanes()
        if self._again:
            self._again = False
            await self._refresh_now()

    def show_snapshot(self, snapshot: Snapshot) -> None:
        """Show a snapshot: the header and the pane in view; ring for new approvals and toast
        newly opened alerts."""
        now = self.clock()
        with self.batch_update():
            self.query_one("#status", StatusHeader).show(snapshot, self.error)
            self.show_current(snapshot, now)
        ids = {line.id for line in snapshot.approvals}
        if self.seen_approvals is not None:
            new = ids - self.seen_approvals
            if new:
                self.bell()
                first = next(line for line in snapshot.approvals if line.id in new)
                # One short line: the Approvals pane has the rest.
                more = f" (+{len(new) - 1})" if len(new) > 1 else ""
                self.notify(f"new approval: {first.tool} on {first.lane}{more}", timeout=4)
        self.seen_approvals = ids
        opened = {line.id for line in snapshot.alerts if line.state == "open"}
        if self.seen_alerts is not None:
            for line in snapshot.alerts:
                if line.id in opened - self.seen_alerts:
                    self.notify(
                        line.message, title=f"alert: {line.alert_type}", markup=False,
                        severity="error" if line.severity == "error" else "warning",
                    )  # fmt: skip
        self.seen_alerts = opened

    def show_current(self, snapshot: Snapshot, now: datetime) -> None:
        """Only the pane in view is brought up to date; the others catch up when shown."""
        lines: dict[str, tuple[Any, ...]] = {
            "approvals": snapshot.approvals,
            "turns": snapshot.turns,
            "missions": snapshot.missions,
            "alerts": snapshot.alerts,
        }
        if self.current in lines:
            self.pane().show(lines[self.current], now)
            self.query_one("#work", MasterDetail).follow(now)

    def load_lanes(self) -> None:
        """Load the lane overview into its pane."""
        self._load_lanes()

    @work(exclusive=True, group="lanes")
    async def _load_lanes(self) -> None:
        await self._lanes()

    async def _lanes(self) -> None:
        pane = self.query_one("#lanes", LanesPane)
        reader = lane_reader(self.source)
        if reader is None:
            pane.empty = "this console gives no lane overview"
            pane.show((), self.clock())
        else:
            pane.show(await reader.lanes(), self.clock())

    def load_ledger(self, before: int | None) -> None:
        """Load a page of the ledger (older than ``before``; the newest when None)."""
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
