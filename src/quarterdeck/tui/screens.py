"""Modal screens: the detail view, confirmations (Cancel is the default), the JSON editor for
edit-then-approve, the reason-code picker, the deliverable editor, and help."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, TypeVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Input, Label, Static, TextArea

from quarterdeck.tui.detail import render_item


class ConfirmScreen(ModalScreen[bool]):
    """Ask before a destructive or global action: ``y`` confirms, ``n`` or escape cancels,
    enter presses the focused button (Cancel, at first); the dialog says so."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,n", "cancel", "Cancel"),
        Binding("y", "confirm", "Yes"),
        Binding("left,right", "app.focus_next", "Other button", show=False),
    ]
    HINT = "y yes · n or escape no · enter presses the focused button"

    def __init__(self, question: str, confirm_label: str = "Confirm") -> None:
        super().__init__()
        self.question = question
        self.confirm_label = confirm_label

    def compose(self) -> ComposeResult:
        """The question, the keys, then Cancel (focused) and the confirming button."""
        with Vertical(id="dialog", classes="dialog"):
            yield Label(self.question, id="question")
            yield Label(self.HINT, classes="hint")
            with Horizontal(classes="buttons"):
                yield Button("Cancel (n)", id="cancel", variant="primary")
                yield Button(f"{self.confirm_label} (y)", id="confirm", variant="error")

    def on_mount(self) -> None:
        """Cancel is the default."""
        self.query_one("#cancel", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        """Answer with the button pressed."""
        self.dismiss(event.button.id == "confirm")

    def action_cancel(self) -> None:
        """Escape or ``n``: no."""
        self.dismiss(False)

    def action_confirm(self) -> None:
        """``y``: yes."""
        self.dismiss(True)


ResultT = TypeVar("ResultT")


@dataclass(frozen=True, slots=True)
class Problem:
    """Why an editor's text cannot be sent (shown under the editor)."""

    message: str


class EditorScreen(ModalScreen[ResultT | None]):
    """A text editor in a dialog: ctrl+s checks the text and answers with its value (or shows
    what is wrong and stays), escape and the first button leave with None."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]
    HINT = "ctrl+s sends · escape cancels"
    CANCEL_LABEL = "Cancel"
    SAVE_LABEL = "Save"
    SAVE_VARIANT: ClassVar[Any] = "primary"

    def __init__(self, title: str, text: str) -> None:
        super().__init__()
        self.title_text = title
        self.text = text

    def compose(self) -> ComposeResult:
        """Title, the editor, a line for the hint or the problem, and the buttons."""
        with Vertical(id="dialog", classes="dialog wide"):
            yield Label(self.title_text, id="title")
            yield TextArea(self.text, id="editor", show_line_numbers=False)
            yield Label(self.HINT, id="problem")
            with Horizontal(classes="buttons"):
                yield Button(self.CANCEL_LABEL, id="cancel")
                yield Button(self.SAVE_LABEL, id="save", variant=self.SAVE_VARIANT)

    def on_mount(self) -> None:
        """The editor has the focus."""
        self.query_one("#editor", TextArea).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        """Save or leave."""
        if event.button.id == "save":
            self.action_save()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        """Leave without an answer."""
        self.dismiss(None)

    def check(self, text: str) -> ResultT | Problem:
        """The text's value, or what is wrong with it."""
        raise NotImplementedError

    def action_save(self) -> None:
        """Answer with the checked value, or show what is wrong with the text."""
        value = self.check(self.query_one("#editor", TextArea).text)
        if isinstance(value, Problem):
            self.query_one("#problem", Label).update(Text(value.message, style="bold red"))
            return
        self.dismiss(value)


class JsonEditScreen(EditorScreen[dict[str, Any]]):
    """Edit a JSON object; the result is validated before it is sent."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("ctrl+s", "save", "Send")]
    SAVE_LABEL = "Approve with edits"
    SAVE_VARIANT = "warning"

    def __init__(self, title: str, value: Mapping[str, Any]) -> None:
        super().__init__(title, json.dumps(dict(value), indent=2, sort_keys=True))

    def check(self, text: str) -> dict[str, Any] | Problem:
        """The edited object, or what keeps it from being one."""
        value = parse_json_object(text)
        return Problem(value) if isinstance(value, str) else value


def parse_json_object(source: str) -> dict[str, Any] | str:
    """The JSON object in ``source``, or a one-line problem."""
    try:
        value = json.loads(source)
    except json.JSONDecodeError as exc:
        return f"not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
    if not isinstance(value, dict):
        return f"must be a JSON object, not {type(value).__name__}"
    return value


class ReasonScreen(ModalScreen[tuple[str, str] | None]):
    """Reject with a reason code: a digit (1-9) rejects with its code at once; or choose one
    with the arrows (or j/k), tab to the note and back, and enter sends from anywhere (the
    chosen code, with the note). In the note, every key is text: digits stay in it."""

    AUTO_FOCUS = None

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel"),
        *(Binding(str(n), f"pick({n})", show=False) for n in range(1, 10)),
        Binding("up,k", "move(-1)", "Previous code", show=False),
        Binding("down,j", "move(1)", "Next code", show=False),
        Binding("enter", "send", "Send", show=False),
        # The note is the only focusable widget: the screen's own tab and shift+tab would
        # leave the focus where it is.
        Binding("tab,shift+tab", "toggle_note", "Note", show=False, priority=True),
    ]
    HINT = "1-{last} reject · ↑↓ choose · tab note · enter sends · esc cancels"

    def __init__(self, codes: Sequence[str]) -> None:
        super().__init__()
        self.codes = list(codes)[:9]
        self.chosen = 0

    def compose(self) -> ComposeResult:
        """The numbered codes (the chosen one marked), a note field and the keys."""
        with Vertical(id="dialog", classes="dialog"):
            yield Label("Reject: why?", id="title")
            for number, code in enumerate(self.codes, start=1):
                yield Label(f" {number}  {code}", classes="reason")
            yield Input(placeholder="optional note (tab)", id="note")
            yield Label(self.HINT.format(last=len(self.codes)), classes="hint")

    def on_mount(self) -> None:
        """The codes, not the note, take the keys at first."""
        self._mark()
        self.call_after_refresh(self.set_focus, None)

    def _mark(self) -> None:
        for index, label in enumerate(self.query(".reason")):
            label.set_class(index == self.chosen, "-chosen")

    def _in_note(self) -> bool:
        return self.query_one("#note", Input).has_focus

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """In the note, digits and j/k are text (up and down do nothing there)."""
        return not (action in ("pick", "move") and self._in_note())

    def action_toggle_note(self) -> None:
        """Tab or shift+tab: into the note, or out of it (the digits pick codes again)."""
        note = self.query_one("#note", Input)
        self.set_focus(None if note.has_focus else note)

    def action_move(self, step: int) -> None:
        """Choose the previous or next code."""
        self.chosen = (self.chosen + step) % len(self.codes)
        self._mark()

    def action_pick(self, number: int) -> None:
        """A digit rejects with its code (and the note typed so far)."""
        if 0 < number <= len(self.codes):
            self.chosen = number - 1
            self.action_send()

    def action_send(self) -> None:
        """Enter: reject with the chosen code and the note."""
        note = self.query_one("#note", Input).value
        self.dismiss((self.codes[self.chosen], note))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter in the note sends too."""
        event.stop()
        self.action_send()

    def action_cancel(self) -> None:
        """Leave without rejecting."""
        self.dismiss(None)


SNOOZE_PRESETS: tuple[tuple[str, int], ...] = (
    ("5m", 300),
    ("15m", 900),
    ("1h", 3600),
    ("4h", 14400),
)
"""The snooze dialog's choices, one digit each."""


class SnoozeScreen(ModalScreen[int | None]):
    """Snooze an approval: a digit picks a duration at once (1=5m 2=15m 3=1h 4=4h), or choose
    one with the arrows and press enter; the dialog shows the deadline as it stands."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel"),
        *(Binding(str(n), f"pick({n})", show=False) for n in range(1, len(SNOOZE_PRESETS) + 1)),
        Binding("up,k", "move(-1)", "Shorter", show=False),
        Binding("down,j", "move(1)", "Longer", show=False),
        Binding("enter", "send", "Snooze", show=False),
    ]
    HINT = "1-{last} snooze · ↑↓ choose · enter snoozes · esc cancels"

    def __init__(self, subject: str, deadline: str) -> None:
        super().__init__()
        self.subject = subject
        self.deadline = deadline
        self.chosen = 1

    def compose(self) -> ComposeResult:
        """What is snoozed and its deadline, the durations, and the keys."""
        with Vertical(id="dialog", classes="dialog"):
            yield Label(f"Snooze {self.subject}", id="title")
            yield Label(self.deadline, id="deadline")
            for number, (label, _seconds) in enumerate(SNOOZE_PRESETS, start=1):
                yield Label(f" {number}  {label}", classes="reason")
            yield Label(self.HINT.format(last=len(SNOOZE_PRESETS)), classes="hint")

    def on_mount(self) -> None:
        """Mark the chosen duration."""
        self._mark()

    def _mark(self) -> None:
        for index, label in enumerate(self.query(".reason")):
            label.set_class(index == self.chosen, "-chosen")

    def action_move(self, step: int) -> None:
        """Choose a shorter or longer duration."""
        self.chosen = (self.chosen + step) % len(SNOOZE_PRESETS)
        self._mark()

    def action_pick(self, number: int) -> None:
        """A digit snoozes for its duration."""
        self.chosen = number - 1
        self.action_send()

    def action_send(self) -> None:
        """Snooze for the chosen duration (in seconds)."""
        self.dismiss(SNOOZE_PRESETS[self.chosen][1])

    def action_cancel(self) -> None:
        """Leave without snoozing."""
        self.dismiss(None)


class TextEditScreen(EditorScreen[str]):
    """Write a text (the human's deliverable for a taken-over turn)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("ctrl+s", "save", "Complete")]
    HINT = "ctrl+s completes the turn · escape keeps it held"
    CANCEL_LABEL = "Keep holding"
    SAVE_LABEL = "Complete turn"
    SAVE_VARIANT = "success"

    def __init__(self, title: str, initial: str = "") -> None:
        super().__init__(title, initial)

    def check(self, text: str) -> str | Problem:
        """The text; an empty one is refused."""
        if not text.strip():
            return Problem("write the deliverable first")
        return text


class DetailScreen(ModalScreen[None]):
    """Everything about one item (opened from the Ledger pane), what decides it first: for an
    approval its request with the full arguments and the edit's diff, where it stands, its
    turn, what came before, the rule trace and cost; then the rest and its ledger history.
    Viewing claims nothing. The actions on the item (when a pane lists it) are offered here
    too: each leaves the screen and runs on the item in its pane."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss_detail", "Back"),
        Binding("q", "dismiss_detail", "Back", show=False),
    ]

    def __init__(
        self,
        item: Mapping[str, Any],
        now: datetime | None = None,
        actions: Sequence[tuple[str, str, str]] = (),
    ) -> None:
        """``actions``: the (key, action name, description) offered on the item."""
        super().__init__()
        self.item = dict(item)
        self.now = now
        self.chosen: str | None = None
        """The action picked here (the screen is dismissed; the app runs it)."""
        for key, name, description in actions:
            self._bindings.bind(key, f"act('{name}')", description)

    def compose(self) -> ComposeResult:
        """The rendered item in a scrollable view, and the keys that work here."""
        with VerticalScroll(id="detail"):
            yield Static(render_item(self.item, self.now), id="detail-body")
        yield Footer()

    def action_dismiss_detail(self) -> None:
        """Back to the pane."""
        self.dismiss(None)

    def action_act(self, name: str) -> None:
        """Leave, for the app to run the action ``name`` on the item."""
        self.chosen = name
        self.dismiss(None)


class HelpScreen(ModalScreen[None]):
    """The keys, grouped by where they apply."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close"),
        Binding("question_mark", "close", "Close", show=False),
    ]

    def __init__(self, rows: Sequence[tuple[str, str, str]]) -> None:
        super().__init__()
        self.rows = rows

    def compose(self) -> ComposeResult:
        """One line per key: the key, what it does, where."""
        text = Text("Keys (every action is also in the command palette, ctrl+p)\n\n", style="bold")
        keys = max((len(key) for key, _, _ in self.rows), default=0) + 2
        described = max((len(description) for _, description, _ in self.rows), default=0) + 2
        for key, description, where in self.rows:
            text.append(f"  {key:<{keys}}", style="bold")
            text.append(f"{description:<{described}}")
            text.append(f"{where}\n", style="dim")
        with VerticalScroll(id="detail"):
            yield Static(text)

    def action_close(self) -> None:
        """Back."""
        self.dismiss(None)
