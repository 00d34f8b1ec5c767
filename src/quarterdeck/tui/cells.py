"""How a table reads: its columns, and its cells (text cut to a column, short ids, countdowns
coloured by urgency, coloured states).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from rich.cells import cell_len, set_cell_size

from quarterdeck.domain.display import escape_controls
from quarterdeck.domain.ids import short_id


@dataclass(frozen=True, slots=True)
class Column:
    """A table column: its key, label and width (at most this wide, or narrower when its cells
    are; a column that grows is at least this wide and takes the spare width first, up to its
    widest cell). Any column whose cells are cut takes what spare width is left."""

    key: str
    label: str
    width: int
    grow: bool = False
    keep_end: bool = False
    """Cut from the left (the end of a worker's name tells it apart)."""


class Styled(NamedTuple):
    """A cell's text with a Rich style (``"bold red"``); a plain cell is a ``str``."""

    text: str
    style: str


Cell = str | Styled
Row = tuple[Cell, ...]


def fit(text: str, width: int, *, keep_end: bool = False) -> str:
    """``text`` with its control characters escaped (a line break reads ``\\n``: nothing after
    it is hidden), padded to ``width`` cells, or cut to them with ``…`` where it was cut (at
    the end, or at the start with ``keep_end``)."""
    text = escape_controls(text)
    if text.isascii():
        if len(text) <= width:
            return text.ljust(width)
        if width < 2:
            return text[:width]
        return "…" + text[len(text) - width + 1 :] if keep_end else text[: width - 1] + "…"
    if cell_len(text) <= width:
        return set_cell_size(text, width)
    if keep_end:
        return "…" + set_cell_size(text[::-1], width - 1)[::-1]
    return set_cell_size(text, width - 1) + "…"


def text_width(text: str) -> int:
    """How many cells ``text`` takes once shown (its control characters escaped)."""
    if text.isascii() and text.isprintable():
        return len(text)
    return cell_len(escape_controls(text))


def short(identifier: str | None) -> str:
    """An id's short form (:func:`~quarterdeck.domain.ids.short_id`: the one every command
    accepts)."""
    return short_id(identifier)


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
