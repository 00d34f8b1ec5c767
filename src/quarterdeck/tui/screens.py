"""Modal screens: the detail view, confirmations (Cancel is the default), the JSON editor for
edit-then-approve, the reason-code picker, the deliverable editor, and help."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static, TextArea


class ConfirmScreen(ModalScreen[bool]):
    """Ask before a destructive or global action; Cancel has the focus."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel"),
        Binding("y", "confirm", "Yes"),
    ]

    def __init__(self, question: str, confirm_label: str = "Confirm") -> None:
        super().__init__()
        self.question = question
        self.confirm_label = confirm_label

    def compose(self) -> ComposeResult:
        """The question, then Cancel (focused) and the confirming button."""
        with Vertical(id="dialog", classes="dialog"):
            yield Label(self.question, id="question")
            with Horizontal(classes="buttons"):
                yield Button("Cancel", id="cancel", variant="primary")
                yield Button(self.confirm_label, id="confirm", variant="error")

    def on_mount(self) -> None:
        """Cancel is the default."""
        self.query_one("#cancel", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        """Answer with the button pressed."""
        self.dismiss(event.button.id == "confirm")

    def action_cancel(self) -> None:
        """Escape: no."""
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
    """Pick a reject reason code with one key (1-9); a note is optional (tab to it, type,
    shift+tab back, then pick)."""

    AUTO_FOCUS = None

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel"),
        *(Binding(str(n), f"pick({n})", show=False) for n in range(1, 10)),
        # The note is the only focusable widget: the screen's own shift+tab (focus the previous
        # widget) would leave the focus in it, and the digits would go on typing the note.
        Binding("shift+tab", "codes", "Back to the codes", show=False),
    ]

    def __init__(self, codes: Sequence[str]) -> None:
        super().__init__()
        self.codes = list(codes)[:9]

    def compose(self) -> ComposeResult:
        """The numbered codes and a note field."""
        with Vertical(id="dialog", classes="dialog"):
            yield Label(
                "Reject: pick a reason (1-9) · tab: add a note · escape cancels", id="title"
            )
            for number, code in enumerate(self.codes, start=1):
                yield Label(f" {number}  {code}", classes="reason")
            yield Input(placeholder="optional note", id="note")

    def on_mount(self) -> None:
        """The codes, not the note, take the keys at first."""
        self.call_after_refresh(self.set_focus, None)

    def action_codes(self) -> None:
        """Shift+tab: leave the note; the digits pick codes again."""
        self.set_focus(None)

    def action_pick(self, number: int) -> None:
        """A digit picks its code (with the note typed so far)."""
        if 0 < number <= len(self.codes):
            note = self.query_one("#note", Input).value
            self.dismiss((self.codes[number - 1], note))

    def action_cancel(self) -> None:
        """Leave without rejecting."""
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
    """Everything about one item: request and arguments, rule trace, recent events, cost,
    deliverable, the edit's diff, and its ledger history."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss_detail", "Back"),
        Binding("q", "dismiss_detail", "Back", show=False),
    ]

    def __init__(self, item: Mapping[str, Any]) -> None:
        super().__init__()
        self.item = dict(item)

    def compose(self) -> ComposeResult:
        """The rendered item in a scrollable view."""
        with VerticalScroll(id="detail"):
            yield Static(render_detail(self.item), id="detail-body")

    def action_dismiss_detail(self) -> None:
        """Back to the pane."""
        self.dismiss(None)


def render_detail(item: Mapping[str, Any]) -> Text:
    """An item as text: its fields, then (for approvals) the request, the rule trace, recent
    events and cost, an edit's diff, then its ledger history."""
    out = Text()
    kind = str(item.get("type", "item"))
    out.append(f"{kind} {item.get('id')}\n", style="bold")
    skip = {"history", "context", "missions", "args", "edited_args", "type", "id", "data"}
    for key, value in item.items():
        if key in skip or value in (None, "", {}):
            continue
        out.append(f"  {key:<16}", style="dim")
        out.append(f"{_one_line(value)}\n")
    if "args" in item:
        args = _decode(item.get("args"))
        out.append("\nrequest\n", style="bold")
        out.append(f"  {item.get('tool')}({json.dumps(args, sort_keys=True)})\n")
        edited = _decode(item.get("edited_args"))
        if edited is not None:
            out.append("\nedit\n", style="bold")
            for line in diff_lines(args, edited):
                style = "green" if line.startswith("+") else "red" if line.startswith("-") else ""
                out.append(f"  {line}\n", style=style)
    context = item.get("context") or {}
    decision = context.get("decision")
    if decision:
        out.append("\nrule trace", style="bold")
        out.append(f"  (policy {str(decision.get('policy_hash'))[:12]})\n", style="dim")
        for step in decision.get("trace", []):
            mark = "✓" if step.get("matched") else "·"
            out.append(
                f"  {mark} {step.get('rule')}: ", style="bold" if step.get("matched") else ""
            )
            out.append(f"{step.get('why')}\n")
    if context:
        out.append(f"\ncost so far: {context.get('turn_cost')}\n", style="bold")
        events = context.get("recent_events") or []
        if events:
            out.append("\nrecent events\n", style="bold")
            for event in events[-10:]:
                out.append(
                    f"  {event.get('at')} {event.get('type')} {_one_line(event.get('data'))}\n"
                )
    for mission in item.get("missions") or []:
        out.append(
            f"\nmission {mission.get('id')} {mission.get('state')} on {mission.get('lane')}\n"
        )
    history = item.get("history") or []
    if history:
        out.append("\nhistory\n", style="bold")
        for entry in history[-30:]:
            move = f"{entry.get('from_state') or '·'} → {entry.get('to_state')}"
            out.append(f"  {entry.get('seq'):>7} {entry.get('action'):<24} {move:<28} ")
            out.append(f"{entry.get('actor')}\n", style="dim")
    return out


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


def _decode(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _one_line(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 100 else text[:99] + "…"


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
        for key, description, where in self.rows:
            text.append(f"  {key:<12}", style="bold")
            text.append(f"{description:<40}")
            text.append(f"{where}\n", style="dim")
        with VerticalScroll(id="detail"):
            yield Static(text)

    def action_close(self) -> None:
        """Back."""
        self.dismiss(None)
