"""Moving about the control center: between panes, filtering, the detail view of the selected
item, help, and the command palette, each bound to a key from :mod:`quarterdeck.tui.keymap`.

An action offered on some panes only runs on the pane in view, which owns it; :class:`Navigation`
routes it there. The app that composes the screen builds on :class:`Navigation` and shows what
it asks for (:meth:`Navigation.show_current`, :meth:`Navigation.show_snapshot`,
:meth:`Navigation.load_ledger`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, ClassVar

from textual import work
from textual.actions import ActionParseResult
from textual.app import SystemCommand
from textual.binding import Binding, BindingType
from textual.dom import DOMNode
from textual.screen import Screen
from textual.widgets import ContentSwitcher, Input

from quarterdeck.client.console import Console, Snapshot
from quarterdeck.domain.clock import Clock
from quarterdeck.tui.actions import SupervisorApp
from quarterdeck.tui.detail import DETAIL_KINDS, MasterDetail
from quarterdeck.tui.keymap import ACTIONS, BY_NAME, MOVES, NO_KEY, KeyAction
from quarterdeck.tui.panes import LedgerPane
from quarterdeck.tui.screens import ConfirmScreen, DetailScreen, HelpScreen
from quarterdeck.tui.table import LivePane

PANES = ("approvals", "turns", "missions", "alerts", "ledger", "lanes")
KEY_LABELS = {"slash": "/", "question_mark": "?"}
"""How key names read on screen (others read as they are named)."""
PRIORITY = frozenset({"next_pane", "prev_pane"})
"""Actions whose keys the app takes before the focused widget (else the screen's tab and
shift+tab move the focus)."""
PANE_WIDE = frozenset({"approve_all"})
"""Actions on everything a pane shows, not on one item (not offered in an item's detail)."""


class FilterBar(Input):
    """``/``: filter the current pane (a substring of any column); escape clears it."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "clear", "Clear filter")]

    def action_clear(self) -> None:
        """Clear the filter and hide the bar."""
        self.value = ""
        self.post_message(self.Submitted(self, ""))


def app_bindings() -> list[BindingType]:
    """A binding for every action of the keymap (with its id, so that a keymap can rebind
    it), and ctrl+q to quit at once. The footer (:mod:`quarterdeck.tui.footer`) picks what it
    shows from the keymap, not from the bindings' ``show``."""
    bindings: list[BindingType] = [
        Binding(action.key, action.name, action.short, id=action.name, show=action.footer,
                priority=action.name in PRIORITY)
        for action in ACTIONS
    ]  # fmt: skip
    bindings.append(Binding("ctrl+q", "quit_now", "Quit now", show=False, priority=True))
    return bindings


class Navigation(SupervisorApp):
    """The app's moves between panes, its filter, detail view, help and palette."""

    def __init__(self, console: Console, *, live: bool, clock: Clock) -> None:
        super().__init__(console, live=live)
        self.clock = clock
        self.current = "approvals"

    def show_snapshot(self, snapshot: Snapshot) -> None:
        """Show a snapshot (the app that composes the screen does)."""
        raise NotImplementedError

    def show_current(self, snapshot: Snapshot, now: datetime) -> None:
        """Bring the pane in view up to date (the app that composes the screen does)."""
        raise NotImplementedError

    def load_ledger(self, before: int | None) -> None:
        """Load a page of the ledger into its pane (the app that composes the screen does)."""
        raise NotImplementedError

    def load_lanes(self) -> None:
        """Load the lane overview into its pane (the app that composes the screen does)."""
        raise NotImplementedError

    def pane(self) -> LivePane[Any]:
        """The pane in view."""
        widget = self.query_one(f"#{self.current}")
        assert isinstance(widget, LivePane)
        return widget

    def focus_pane(self) -> None:
        """Show the pane in view and give it the focus."""
        self.query_one("#panes", ContentSwitcher).current = self.current
        self.pane().focus()
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Offer only the actions that apply to the pane in view (the footer follows)."""
        spec = BY_NAME.get(action)
        if spec is None:
            return True
        if action in PRIORITY and (self.screen.is_modal or isinstance(self.focused, Input)):
            return False  # a dialog's or the filter bar's tab (a priority binding)
        if self.screen.is_modal and not isinstance(self.screen, DetailScreen):
            return False  # a dialog's keys are its own (the detail view may act on its item)
        if action == "clear_filter":
            return bool(self.pane().filter_text)
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
            self.show_current(self.snapshot, self.clock())
        if name == "ledger" and self.query_one("#ledger", LedgerPane).following:
            self.load_ledger(None)
        if name == "lanes":
            self.load_lanes()
        self.focus_pane()

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

    def action_pane_lanes(self) -> None:
        """Show the Lanes pane."""
        self._show_pane("lanes")

    def action_next_pane(self) -> None:
        """Cycle through the panes."""
        self._show_pane(PANES[(PANES.index(self.current) + 1) % len(PANES)])

    def action_prev_pane(self) -> None:
        """Cycle back through the panes."""
        self._show_pane(PANES[(PANES.index(self.current) - 1) % len(PANES)])

    def action_help(self) -> None:
        """Show every key: the actions (each where it applies), then the moves."""
        rows = [
            (self.key_of(action), action.description,
             "everywhere" if "*" in action.panes else ", ".join(action.panes))
            for action in ACTIONS
        ]  # fmt: skip
        self.push_screen(HelpScreen([*rows, *MOVES]))

    def key_of(self, action: KeyAction) -> str:
        """The key bound to ``action`` (the user's keymap, else the default), as it reads."""
        key = self._keymap.get(action.name, action.key)
        return "-" if key == NO_KEY else KEY_LABELS.get(key, key)

    def action_copy_id(self) -> None:
        """Copy the selected item's full id to the clipboard (OSC 52: works over SSH, where
        the terminal supports it)."""
        key = self._selected_id()
        if key is None:
            self.notify("nothing selected", severity="warning")
            return
        self.copy_to_clipboard(key)
        self.notify(f"copied {key}", timeout=3)

    def action_clear_filter(self) -> None:
        """Escape on a list: clear its filter."""
        pane = self.pane()
        if pane.filter_text:
            bar = self.query_one("#filter", FilterBar)
            bar.value = ""
            bar.post_message(bar.Submitted(bar, ""))

    async def action_quit(self) -> None:
        """``q``: quit; on an embedded runtime (which stops with the screen), ask first."""
        header = self.snapshot.header if self.snapshot is not None else None
        if header is None or header.alive is not None:
            self.exit()
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.exit()

        question = "Quit? The embedded runtime stops with the control center."
        self.push_screen(ConfirmScreen(question, "Quit"), answered)

    def action_quit_now(self) -> None:
        """``ctrl+q``: quit without asking."""
        self.exit()

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
            self.load_ledger(pane.page_before)
        elif self.snapshot is not None:
            self.show_snapshot(self.snapshot)
        pane.focus()

    def action_detail(self) -> None:
        """Into the selected item's detail view (the Ledger pane: its subject's, on a screen of
        its own). Viewing claims nothing."""
        if self.current in DETAIL_KINDS:
            self.query_one("#work", MasterDetail).enter_detail()
            return
        key = self._selected_id()
        if key is not None:
            self._open_detail(key)

    def on_live_pane_row_selected(self, event: LivePane.RowSelected) -> None:
        """Enter on a row (the pane takes the key) or a click on the selected row opens its
        detail view."""
        event.stop()
        self.action_detail()

    @work(group="detail")
    async def _open_detail(self, item_id: str) -> None:
        item = await self.source.detail(item_id)
        if item is None:
            self.notify(f"{item_id} is gone", severity="warning")
            return
        pane = next((p for p, kind in DETAIL_KINDS.items() if kind == item.get("type")), None)
        listed = (
            pane is not None
            and self.snapshot is not None
            and any(line.id == item_id for line in getattr(self.snapshot, pane))
        )
        actions = [
            (self._keymap.get(action.name, action.key), action.name, action.description)
            for action in ACTIONS
            if pane is not None and listed and action.on_pane and action.applies_to(pane)
            and action.name not in PANE_WIDE
        ]  # fmt: skip
        screen = DetailScreen(item, self.clock(), actions)

        def left(_: None) -> None:
            if pane is not None and screen.chosen is not None:
                self.call_later(self.act_on, pane, item_id, screen.chosen)

        await self.push_screen(screen, left)

    async def act_on(self, pane: str, item_id: str, action: str) -> None:
        """Run ``action`` on ``item_id`` in ``pane`` (shown, its cursor put on the item)."""
        self._show_pane(pane)
        table = self.pane()
        if item_id not in table.lines:
            self.notify(f"{item_id} is no longer listed on {pane}", severity="warning")
            return
        table.move_cursor(table.get_row_index(item_id))
        await self.run_action(action)

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
                f"key {self.key_of(action)}{where}",
                self._palette_runner(action),
            )

    def _palette_runner(self, action: KeyAction) -> Callable[[], Any]:
        async def run() -> None:
            if not action.applies_to(self.current):
                self._show_pane(action.panes[0])
            await self.run_action(action.name)

        return run
