"""The Lanes pane: one row per lane (external agents' lanes, such as claude-code and codex,
too) with its state (running, paused and by whom or why, forced fallback, shadow), its slots in
use out of its concurrency and how many of those wait on a person, its queue and the oldest
waiting, and its failure and fallback rates. Pause/resume and force fallback act on the
selected lane, as on the other panes.

The rows come from the console's lane overview (``Console.lanes()``); :class:`LaneRow` and
:class:`LaneReader` are what this pane needs of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from quarterdeck.tui.actions import LaneActions
from quarterdeck.tui.table import Column, LivePane, Row, Styled


class LaneRow(Protocol):
    """One lane as the Lanes pane shows it (the console's lane overview gives these)."""

    @property
    def lane(self) -> str:
        """The lane's name."""

    @property
    def state(self) -> str:
        """``running`` or ``paused``."""

    @property
    def paused_by(self) -> str | None:
        """Who (or what: an expired approval, drift) paused it."""

    @property
    def paused_reason(self) -> str | None:
        """Why, when the pause said."""

    @property
    def forced_fallback(self) -> bool:
        """Whether its new work goes to its fallback lane."""

    @property
    def shadow(self) -> bool:
        """Whether its missions are shadowed on its fallback lane."""

    @property
    def slots(self) -> int:
        """Its concurrency."""

    @property
    def in_use(self) -> int:
        """Slots held by missions now."""

    @property
    def awaiting_person(self) -> int:
        """Slots held by missions whose live agent waits on a person's decision."""

    @property
    def queued(self) -> int:
        """Missions waiting to start."""

    @property
    def awaiting_dispatch(self) -> int:
        """Missions whose dispatch waits on a person (they hold no slot)."""

    @property
    def oldest_wait_s(self) -> float | None:
        """How long the oldest queued mission has waited (None: the queue is empty)."""

    @property
    def failure_rate(self) -> float | None:
        """Failed missions out of those finished lately (None: none finished)."""

    @property
    def fallback_rate(self) -> float | None:
        """Missions sent to the fallback lane out of those started lately."""


@runtime_checkable
class LaneReader(Protocol):
    """A console that gives the lane overview."""

    async def lanes(self) -> Sequence[LaneRow]:
        """One row per lane, by name."""
        ...


def lane_reader(console: object) -> LaneReader | None:
    """``console`` when it gives the lane overview (a method, not a list of names)."""
    if isinstance(console, LaneReader) and callable(console.lanes):
        return console
    return None


def lane_state(row: LaneRow) -> Styled | str:
    """Paused (by whom, why), forced fallback, shadow, else running."""
    words = []
    if row.state == "paused":
        why = f": {row.paused_reason}" if row.paused_reason else ""
        words.append("paused" + (f" by {row.paused_by}" if row.paused_by else "") + why)
    elif row.state != "running":
        words.append(row.state)
    if row.forced_fallback:
        words.append("fallback forced")
    if row.shadow:
        words.append("shadow")
    if not words:
        return Styled("running", "cyan")
    style = "bold red" if row.forced_fallback else "yellow" if row.state == "paused" else "dim"
    return Styled(", ".join(words), style)


def rate(value: float | None) -> str:
    """A rate as a whole percentage."""
    return "-" if value is None else f"{value:.0%}"


def waited(seconds: float | None) -> str:
    """A wait in seconds, minutes or hours."""
    if seconds is None:
        return "-"
    ago = max(0, int(seconds))
    if ago < 60:
        return f"{ago}s"
    if ago < 3600:
        return f"{ago // 60}m{ago % 60:02d}s"
    return f"{ago // 3600}h{ago % 3600 // 60:02d}m"


class LanesPane(LaneActions, LivePane[LaneRow]):
    """Every lane: state, slots, queue and rates; its actions pause, resume and force
    fallback for the selected lane."""

    TITLE = "6 Lanes"
    EMPTY = "no lanes"
    COLUMNS = (
        Column("lane", "Lane", 16),
        Column("state", "State", 10, grow=True),
        Column("slots", "Slots", 7),
        Column("person", "Person", 6),
        Column("queued", "Queue", 6),
        Column("dispatch", "Asks", 4),
        Column("oldest", "Oldest", 7),
        Column("failed", "Fail", 4),
        Column("fallback", "Fallback", 8),
    )
    """Person: slots held while an agent waits on a person's decision; Asks: missions whose
    dispatch waits on a person (they hold no slot)."""

    def key_of(self, line: LaneRow) -> str:
        """The lane's name."""
        return line.lane

    def cells(self, line: LaneRow) -> Row:
        """Lane, state, slots in use / concurrency, slots held waiting on a person, queue
        depth, dispatches waiting on a person (no slot), oldest wait, failure and fallback
        rates."""
        full = line.slots > 0 and line.in_use >= line.slots
        slots = f"{line.in_use}/{line.slots}"
        person = str(line.awaiting_person) if line.awaiting_person else "-"
        return (
            line.lane,
            lane_state(line),
            Styled(slots, "bold yellow") if full else slots,
            Styled(person, "yellow") if full and line.awaiting_person else person,
            str(line.queued),
            str(line.awaiting_dispatch) if line.awaiting_dispatch else "-",
            waited(line.oldest_wait_s) if line.queued else "-",
            rate(line.failure_rate),
            rate(line.fallback_rate),
        )
