"""The live table every pane is: rows updated by keyed diffs, a cursor that stays on its item,
a header that stays in place, and drawing row by row (the columns and how cells read are
:mod:`quarterdeck.tui.cells`).

A table draws through Textual's line API: each row is rendered once into a strip, kept until its
cells change (or the width, scroll or styles do), so that a refresh after one row changed or
left costs a dictionary look-up per visible line rather than a layout of every cell.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any, ClassVar, Generic, TypeVar

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.timer import Timer

from quarterdeck.domain.clock import format_instant
from quarterdeck.tui.cells import (
    Column,
    Row,
    Styled,
    countdown,
    fit,
    short,
    state_text,
    text_width,
)

__all__ = [
    "Column",
    "LivePane",
    "Row",
    "Styled",
    "column_widths",
    "countdown",
    "short",
    "state_text",
    "vars_of",
]

LineT = TypeVar("LineT")
BAR_LAG_S = 0.2
"""How long the vertical scrollbar may lag behind the number of rows."""


@lru_cache(maxsize=64)
def _style(spec: str) -> Style:
    return Style.parse(spec)


def column_widths(
    columns: Sequence[Column], natural: Sequence[int], available: int
) -> tuple[int, ...]:
    """Each column's width for a view ``available`` cells wide, given its widest cell
    (``natural``; a cell is drawn with a space either side).

    A column is as wide as its widest cell, between its label and its ``width``; a growing
    column is at least its ``width`` and takes what is left, up to its widest cell; any spare
    width then goes to the columns whose cells are cut, in order. So nothing is cut while
    blank cells sit to its right, and a view too narrow for every column scrolls sideways.
    """
    widths = [
        max(len(column.label), column.width if column.grow else min(wide, column.width))
        for column, wide in zip(columns, natural, strict=True)
    ]
    spare = available - sum(widths) - 2 * len(widths)
    ranked = [i for i, column in enumerate(columns) if column.grow]
    ranked += [i for i, column in enumerate(columns) if not column.grow]
    for index in ranked:
        if spare <= 0:
            break
        more = min(spare, natural[index] - widths[index])
        if more > 0:
            widths[index] += more
            spare -= more
    return tuple(widths)


class LivePane(ScrollView, Generic[LineT], can_focus=True):
    """A table of live items keyed by id: only rows that changed are drawn again, and the
    cursor stays on the same item across refreshes. The header row stays in place while the
    rows scroll under it."""

    COLUMNS: ClassVar[Sequence[Column]] = ()
    TITLE: ClassVar[str] = ""
    EMPTY: ClassVar[str] = "nothing here"

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "select_cursor", "Select", show=False),
        Binding("up,k", "cursor_up", "Cursor up", show=False),
        Binding("down,j", "cursor_down", "Cursor down", show=False),
        Binding("g", "cursor_first", "First row", show=False),
        Binding("G", "cursor_last", "Last row", show=False),
        Binding("pageup", "page_up", "Page up", show=False),
        Binding("pagedown", "page_down", "Page down", show=False),
        Binding("ctrl+home", "cursor_first", "Top", show=False),
        Binding("ctrl+end", "cursor_last", "Bottom", show=False),
        Binding("home", "scroll_left_edge", "Home", show=False),
        Binding("end", "scroll_right_edge", "End", show=False),
    ]
    COMPONENT_CLASSES: ClassVar[set[str]] = {"pane--header", "pane--cursor"}
    DEFAULT_CSS = """
    LivePane {
        background: $surface;
        color: $foreground;
        &:focus {
            background-tint: $foreground 5%;
            & > .pane--cursor {
                background: $block-cursor-background;
                color: $block-cursor-foreground;
                text-style: $block-cursor-text-style;
            }
            & > .pane--header {
                background-tint: $foreground 5%;
            }
        }
        & > .pane--header {
            text-style: bold;
            background: $panel;
            color: $foreground;
        }
        &:ansi > .pane--header {
            background: ansi_bright_blue;
            color: ansi_default;
        }
        & > .pane--cursor {
            background: $block-cursor-blurred-background;
            color: $block-cursor-blurred-foreground;
            text-style: $block-cursor-blurred-text-style;
        }
    }
    """

    class RowSelected(Message):
        """Enter on a row, or a click on the row under the cursor."""

        def __init__(self, pane: LivePane[Any], key: str) -> None:
            super().__init__()
            self.pane = pane
            self.key = key

        @property
        def control(self) -> LivePane[Any]:
            """The pane the row is in."""
            return self.pane

    class Moved(Message):
        """The cursor is on another item (or on none)."""

        def __init__(self, pane: LivePane[Any], key: str | None) -> None:
            super().__init__()
            self.pane = pane
            self.key = key

        @property
        def control(self) -> LivePane[Any]:
            """The pane whose cursor moved."""
            return self.pane

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._announced: str | None = None
        self.lines: dict[str, LineT] = {}
        self._order: list[str] = []
        self._index: dict[str, int] = {}
        self._cells: dict[str, Row] = {}
        self.cursor_row = 0
        self.filter_text = ""
        self.empty = self.EMPTY
        """What the pane says when it has no rows."""
        self.now: datetime | None = None
        self.now_text = ""
        self._memo: dict[str, tuple[LineT, str, Row]] = {}
        """Cells of each row as last computed, with the line and time stamp they came from."""
        self._strips: dict[str, Strip] = {}
        """Each row's line as drawn (without the cursor), for the current ``_drawn_with``."""
        self._drawn_with: tuple[Any, ...] = ()
        self._subtitle: str | None = None
        self._bar_timer: Timer | None = None
        self._widths = tuple(max(len(column.label), column.width) for column in self.COLUMNS)
        self._natural = [len(column.label) for column in self.COLUMNS]
        """The widest cell of each column (its label at least), for :func:`column_widths`."""
        self._width = sum(self._widths) + 2 * len(self._widths)
        self._resize(Size(self._width, 1))

    def on_mount(self) -> None:
        """Title the pane."""
        self.border_title = self.TITLE

    def key_of(self, line: LineT) -> str:
        """The line's id."""
        identifier: Any = getattr(line, "id")  # noqa: B009 (a type variable has no attributes)
        return str(identifier)

    def cells(self, line: LineT) -> Row:
        """The line's cells, in column order."""
        raise NotImplementedError

    def matches(self, line: LineT) -> bool:
        """Whether the line passes the filter (a case-insensitive substring of any field)."""
        if not self.filter_text:
            return True
        needle = self.filter_text.lower()
        return any(needle in str(value).lower() for value in vars_of(line))

    # --- contents ---------------------------------------------------------------------------

    def show(self, lines: Sequence[LineT], now: datetime) -> None:
        """Show ``lines`` (in order): a keyed diff against what is on screen; only rows whose
        cells changed are drawn again."""
        self.now = now
        self.now_text = format_instant(now)
        shown = [line for line in lines if self.matches(line)]
        order = [self.key_of(line) for line in shown]
        stamp = self.stamp(now)
        cells: dict[str, Row] = {}
        memo: dict[str, tuple[LineT, str, Row]] = {}
        old = self._cells
        strips = self._strips
        changed: list[str] = []
        for key, line in zip(order, shown, strict=True):
            known = self._memo.get(key)
            if known is not None and known[1] == stamp and (known[0] is line or known[0] == line):
                row = known[2]
            else:
                row = self.cells(line)
            cells[key] = row
            memo[key] = (line, stamp, row)
            if old.get(key) != row:
                strips.pop(key, None)
                changed.append(key)
        self._memo = memo
        self.lines = dict(zip(order, shown, strict=True))
        self._cells = cells
        if order == self._order:
            self._widen(cells[key] for key in changed)
            if self._relayout():
                return
            if not self._retitle():
                for key in changed:
                    self._refresh_row(self._index[key])
            return
        self._natural = [len(column.label) for column in self.COLUMNS]
        self._widen(cells.values())
        for key in set(self._order) - set(cells):
            strips.pop(key, None)
        selected = self.selected_key()
        kept = self._kept_then_appended(order)
        self._order = order
        self._relayout()
        self._rearrange(selected, keep_row=kept)

    def _widen(self, rows: Iterable[Row]) -> None:
        """Take ``rows`` into each column's widest cell."""
        natural = self._natural
        for row in rows:
            for index, cell in enumerate(row):
                wide = text_width(cell if isinstance(cell, str) else cell.text)
                if wide > natural[index]:
                    natural[index] = wide

    def _relayout(self) -> bool:
        """Share the view's width among the columns again; whether that changed them (the
        whole pane is then drawn again)."""
        available = self.scrollable_content_region.width
        if not available:
            return False
        widths = column_widths(self.COLUMNS, self._natural, available)
        if widths == self._widths:
            return False
        self._widths = widths
        self._width = sum(widths) + 2 * len(widths)
        self._strips.clear()
        self._resize(Size(self._width, len(self._order) + 1))
        self.refresh()
        return True

    def on_resize(self) -> None:
        """Share the new width among the columns."""
        self._relayout()

    def discard(self, key: str) -> None:
        """Take the row of ``key`` away at once (an item the runtime has just settled; the
        next snapshot agrees), without going through every row as :meth:`show` does."""
        index = self._index.get(key)
        if index is None:
            return
        selected = self.selected_key()
        del self._order[index]
        for rows in (self.lines, self._cells, self._memo, self._strips):
            rows.pop(key, None)
        if index < self.cursor_row:
            self.cursor_row -= 1
        self._rearrange(selected, keep_row=True)

    def _rearrange(self, selected: str | None, *, keep_row: bool) -> None:
        """After rows came or went: index them, size the view, put the cursor back on the
        item it was on (else, when ``keep_row``, on the row it was on: the next item after a
        row left; else on the first), and redraw."""
        order = self._order
        self._index = {key: index for index, key in enumerate(order)}
        self._resize(Size(self._width, len(order) + 1))
        if self.keeps_selection and selected is not None and selected in self._index:
            cursor = self._index[selected]
        elif keep_row:
            cursor = self.cursor_row
        else:
            cursor = 0
            self.scroll_to(0, 0, animate=False, immediate=True)
        self.cursor_row = max(0, min(cursor, len(order) - 1))
        self._scroll_to_cursor()
        if not self._retitle():
            self.refresh()
        self._announce()

    def _announce(self) -> None:
        """Say when the cursor is on another item than last said (the detail view follows)."""
        key = self.selected_key()
        if key != self._announced:
            self._announced = key
            self.post_message(self.Moved(self, key))

    def _retitle(self) -> bool:
        """Say how many rows are shown (and the filter) under the pane; whether that changed
        (which redraws the whole pane)."""
        subtitle = (
            f"{len(self._order)} shown"
            + (f" · filter: {self.filter_text}" if self.filter_text else "")
            if self._order
            else self.empty
        )
        if subtitle == self._subtitle:
            return False
        self._subtitle = subtitle
        self.border_subtitle = subtitle
        return True

    def _resize(self, size: Size) -> None:
        """Set the scrollable size without a layout of the screen (the pane's own size does not
        depend on its rows): the scrollbars follow (only the vertical one when only the number
        of rows changed), and the screen is laid out again only when one appears or goes."""
        old = self.virtual_size
        if size == old:
            return
        self.set_reactive(LivePane.virtual_size, size)
        if size.width != old.width:
            self._scroll_update(size)
            return
        self._refresh_scrollbars()
        self.scroll_y = self.validate_scroll_y(self.scroll_y)
        if self.show_vertical_scrollbar and self._bar_timer is None:
            self._bar_timer = self.set_timer(BAR_LAG_S, self._resize_bar)

    def _resize_bar(self) -> None:
        """Bring the vertical scrollbar's thumb up to date: at most a few times a second, as
        drawing the bar costs about as much as drawing the rows (it hardly moves when a row of
        hundreds comes or goes)."""
        self._bar_timer = None
        if self.show_vertical_scrollbar:
            self.vertical_scrollbar.window_virtual_size = self.virtual_size.height

    @property
    def keeps_selection(self) -> bool:
        """Whether a refresh keeps the cursor on the same item (else on the same row while
        rows only leave or are added at the end, and on the first row otherwise)."""
        return True

    def stamp(self, now: datetime) -> str:
        """What of ``now`` the cells depend on: a row whose line and stamp are unchanged keeps
        its cells (panes with countdowns stamp by the second; others do not depend on it)."""
        return ""

    def _kept_then_appended(self, order: list[str]) -> bool:
        """Whether ``order`` is the rows on screen minus some, followed by new ones."""
        present = set(order)
        kept = [key for key in self._order if key in present]
        return order[: len(kept)] == kept

    @property
    def row_count(self) -> int:
        """How many rows are shown."""
        return len(self._order)

    def get_row_index(self, key: str) -> int:
        """The row of ``key`` (KeyError when it is not shown)."""
        return self._index[key]

    def cell_text(self, key: str, column: str) -> str:
        """The text of ``key``'s cell in ``column``."""
        index = next(i for i, spec in enumerate(self.COLUMNS) if spec.key == column)
        cell = self._cells[key][index]
        return cell if isinstance(cell, str) else cell.text

    def selected_key(self) -> str | None:
        """The id of the item under the cursor."""
        if not self._order or self.cursor_row < 0 or self.cursor_row >= len(self._order):
            return None
        return self._order[self.cursor_row]

    def selected(self) -> LineT | None:
        """The item under the cursor."""
        key = self.selected_key()
        return None if key is None else self.lines.get(key)

    # --- the cursor -------------------------------------------------------------------------

    def move_cursor(self, row: int) -> None:
        """Put the cursor on ``row`` (kept within the rows) and scroll it into view."""
        row = max(0, min(row, len(self._order) - 1))
        if row != self.cursor_row:
            self._refresh_row(self.cursor_row)
            self.cursor_row = row
            self._refresh_row(row)
        self._scroll_to_cursor()
        self._announce()

    @property
    def _page(self) -> int:
        """How many rows fit under the header."""
        return max(1, self.scrollable_content_region.height - 1)

    def _scroll_to_cursor(self) -> None:
        top = int(self.scroll_y)
        if self.cursor_row < top:
            self.scroll_to(y=self.cursor_row, animate=False, immediate=True)
        elif self.cursor_row >= top + self._page:
            self.scroll_to(y=self.cursor_row - self._page + 1, animate=False, immediate=True)

    def _refresh_row(self, index: int) -> None:
        """Redraw the row at ``index`` if it is in view."""
        y = index - int(self.scroll_y) + 1
        if 1 <= y < self.size.height:
            self.refresh(Region(0, y, self.size.width, 1))

    def action_cursor_up(self) -> None:
        """Up a row."""
        self.move_cursor(self.cursor_row - 1)

    def action_cursor_down(self) -> None:
        """Down a row."""
        self.move_cursor(self.cursor_row + 1)

    def action_page_up(self) -> None:
        """Up a page."""
        self.move_cursor(self.cursor_row - self._page)

    def action_page_down(self) -> None:
        """Down a page."""
        self.move_cursor(self.cursor_row + self._page)

    def action_cursor_first(self) -> None:
        """To the first row."""
        self.move_cursor(0)

    def action_cursor_last(self) -> None:
        """To the last row."""
        self.move_cursor(len(self._order) - 1)

    def action_scroll_left_edge(self) -> None:
        """Scroll to the first column."""
        self.scroll_to(x=0, animate=False)

    def action_scroll_right_edge(self) -> None:
        """Scroll to the last column."""
        self.scroll_to(x=self.max_scroll_x, animate=False)

    def action_select_cursor(self) -> None:
        """Select the row under the cursor."""
        key = self.selected_key()
        if key is not None:
            self.post_message(self.RowSelected(self, key))

    def on_click(self, event: events.Click) -> None:
        """A click puts the cursor on a row; a click on the cursor's row selects it."""
        offset = event.get_content_offset(self)
        if offset is None or offset.y < 1:
            return
        index = int(self.scroll_y) + offset.y - 1
        if index >= len(self._order):
            return
        event.stop()
        if index == self.cursor_row:
            self.action_select_cursor()
        else:
            self.move_cursor(index)

    # --- drawing ----------------------------------------------------------------------------

    def render_lines(self, crop: Region) -> list[Strip]:
        """Draw, first forgetting the rows drawn with other styles, width or scroll."""
        drawn_with = (
            self.rich_style,
            self.get_component_rich_style("pane--header"),
            self.get_component_rich_style("pane--cursor"),
            self.size.width,
            int(self.scroll_x),
            self._widths,
        )
        if drawn_with != self._drawn_with:
            self._drawn_with = drawn_with
            self._strips.clear()
        return super().render_lines(crop)

    def render_line(self, y: int) -> Strip:
        """The header on the first line; under it the rows from the scroll position."""
        base, header, cursor, width, scroll_x, _widths = self._drawn_with
        if y == 0:
            labels = tuple(column.label for column in self.COLUMNS)
            return self._draw(labels, base + header, None, scroll_x, width)
        index = int(self.scroll_y) + y - 1
        if index >= len(self._order):
            return Strip.blank(width, base)
        key = self._order[index]
        if index == self.cursor_row:
            return self._draw(self._cells[key], base + cursor, cursor.color, scroll_x, width)
        strip = self._strips.get(key)
        if strip is None:
            strip = self._strips[key] = self._draw(self._cells[key], base, None, scroll_x, width)
        return strip

    def _draw(self, row: Row, style: Style, color: Any, scroll_x: int, width: int) -> Strip:
        """One line: each cell padded to its column's width (a cell's own colour gives way to
        ``color``, the cursor's), then cropped to the view and extended across it."""
        over = Style(color=color) if color is not None else None
        segments = []
        for column, wide, cell in zip(self.COLUMNS, self._widths, row, strict=True):
            if isinstance(cell, str):
                text, cell_style = cell, style
            else:
                text, cell_style = cell.text, style + _style(cell.style)
                if over is not None:
                    cell_style += over
            segments.append(Segment(f" {fit(text, wide, keep_end=column.keep_end)} ", cell_style))
        strip = Strip(segments, self._width).simplify()  # fewer segments: cheaper to compose
        return strip.crop_extend(scroll_x, scroll_x + width, style)


def vars_of(line: Any) -> list[Any]:
    """A dataclass line's field values."""
    return [getattr(line, name) for name in getattr(line, "__slots__", ())]
