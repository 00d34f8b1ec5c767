"""The control center's footer: the keys of the pane in view, as many as fit in one line, in
the keymap's order, always ending with ``? more`` (help lists every key). A key and its name
are never split: one that does not fit is left out whole."""

from __future__ import annotations

from typing import ClassVar

from rich.cells import cell_len
from rich.text import Text
from textual.app import RenderResult
from textual.widget import Widget

from quarterdeck.tui.keymap import ACTIONS, BY_NAME

MORE = ("?", "more")
ORDER = {action.name: index for index, action in enumerate(ACTIONS)}


def key_cells(key: str, name: str) -> int:
    """How wide one key is drawn: `` key name `` (so two spaces separate keys)."""
    return cell_len(key) + cell_len(name) + 3


def fit_keys(keys: list[tuple[str, str]], width: int) -> list[tuple[str, str]]:
    """The first ``keys`` (key, name) that fit in ``width`` cells with ``? more`` after them;
    ``? more`` is always there."""
    room = width - key_cells(*MORE)
    shown = []
    for key, name in keys:
        wide = key_cells(key, name)
        if wide > room:
            break
        shown.append((key, name))
        room -= wide
    return [*shown, MORE]


class KeyFooter(Widget):
    """One line of keys for the screen it is on: what its bindings offer now (the pane in
    view's actions first, as the keymap orders them), cut between keys, then ``? more``."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {"key-footer--key"}
    DEFAULT_CSS = """
    KeyFooter {
        dock: bottom;
        height: 1;
        background: $panel;
        color: $foreground;
        & > .key-footer--key {
            color: $footer-key-foreground;
            text-style: bold;
        }
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.shown: list[tuple[str, str]] = []
        """The keys the footer shows now, ``? more`` last."""
        self.actions: list[str] = []
        """The actions of the keys shown (without help)."""

    def on_mount(self) -> None:
        """Follow the screen's bindings (they change with the pane in view and the focus)."""
        self.screen.bindings_updated_signal.subscribe(self, self._changed)

    def on_unmount(self) -> None:
        """Stop following."""
        self.screen.bindings_updated_signal.unsubscribe(self)

    def _changed(self, _screen: object) -> None:
        self.refresh()

    def offered(self) -> list[tuple[str, str, str]]:
        """(key, name, action) of every key the screen offers now and the footer may show."""
        seen: set[str] = set()
        keys = []
        for active in self.screen.active_bindings.values():
            binding = active.binding
            spec = BY_NAME.get(binding.action)
            if not binding.show or not active.enabled or spec is None or not spec.footer:
                continue
            if binding.action in seen:
                continue
            seen.add(binding.action)
            keys.append((self.app.get_key_display(binding), spec.short, binding.action))
        return sorted(keys, key=lambda key: ORDER[key[2]])  # a rebound key keeps its place

    def render(self) -> RenderResult:
        """The keys that fit, then ``? more``."""
        offered = self.offered()
        self.shown = fit_keys([(key, name) for key, name, _ in offered], self.size.width)
        self.actions = [action for (_, _, action) in offered[: len(self.shown) - 1]]
        style = self.get_component_rich_style("key-footer--key", partial=True)
        text = Text(no_wrap=True, overflow="crop")
        for key, name in self.shown:
            text.append(" ")
            text.append(key, style=style)
            text.append(f" {name} ")
        return text
