"""How a table reads: its columns, and its cells (text cut to a column, short ids, countdowns
coloured by urgency, coloured states).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from rich.cells import set_cell_size


@dataclass(frozen=True, slots=True)
class Column:
    """A table column: its label, fixed width and key."""

    key: str
    label: str
    width: int


class Styled(NamedTuple):
    """A cell's text with a Rich style (``"bold red"``); a plain cell is a ``str``."""

    text: str
    style: str


Cell = str | Styled
Row = tuple[Cell, ...]

_CONTROL = {code: None for code in range(32)} | {9: " ", 127: None}
"""Control characters dropped from cells (a tab reads as a space)."""


def fit(text: str, width: int) -> str:
    """``text``'s first line, without control characters, cut or padded to ``width`` cells."""
    text = text.split("\n", 1)[0].translate(_CONTROL)
    if text.isascii():
        return text[:width].ljust(width)
    return set_cell_size(text, width)


def short(identifier: str | None) -> str:
    """Eight characters that tell neighbouring ids apart: a uuid7 from one batch shares its
    timestamp and random base, and differs in the trailing counter."""
    if not identifier:
        return "-"
    digits = identifier.replace("-", "")
    return digits[-12:-8] + digits[-4:] if len(digits) >= 12 else digits


def countdown(seconds: float | None) -> Cell:
    """An SLA countdown coloured by urgency: seconds under ten minutes, else minutes (so a far
    deadline's cell changes once a minute, not every second)."""
    if seconds is None:
        return "-"
    if seconds <= 0:
        return Styled("overdue", "bold red")
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        label = f"{hours}h{minutes:02d}m"
    elif minutes >= 10:
        label = f"{minutes}m"
    else:
        label = f"{minutes}m{secs:02d}s"
    style = "bold red" if seconds < 60 else "yellow" if seconds < 300 else "green"
    return Styled(label, style)


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


def state_text(state: str) -> Cell:
    """A state, coloured."""
    style = STATE_STYLES.get(state, "")
    return Styled(state, style) if style else state
