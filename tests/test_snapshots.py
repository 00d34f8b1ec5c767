"""Snapshot tests of the control center: every pane, the detail view, each confirmation and
editor, help, the filter bar, the three shipped themes, empty, error and read-only states and
the global FORCE FALLBACK header, drawn from a fixed world in a real SQLite database
(``tui_world``) through the console ``attach`` opens (:class:`ApiConsole`, on the control API
served over that database) with a fixed clock.

The app is built with ``live=False``: it reads one snapshot at start and nothing moves on its
own. Every screen waits for that first read before anything is pressed. The SVGs live in
``tests/__snapshots__/test_snapshots/``; after a deliberate change to the screens, look at the
report of the failing run, then ``pytest tests/test_snapshots.py --snapshot-update``.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input, TextArea

from quarterdeck.client.api_console import ApiConsole
from quarterdeck.client.console import Snapshot
from quarterdeck.tui.app import QuarterdeckApp, create_app
from quarterdeck.tui.detail import DetailView
from quarterdeck.tui.panes import LedgerPane
from quarterdeck.tui.screens import DetailScreen, TextEditScreen
from quarterdeck.tui.table import short
from quarterdeck.tui.themes import resolve_theme
from tui_world import APPROVAL, TURN, attach, clock, empty_world, seed_world, stop_serving

SMALL = (80, 24)
LARGE = (120, 40)
PANES = {"approvals": "1", "turns": "2", "missions": "3", "alerts": "4", "ledger": "5"}
"""The panes drawn from the world itself (the Lanes pane: :func:`test_lanes_pane`)."""
RunBefore = Callable[[Pilot[None]], Awaitable[None]]


# --- building and driving the app ----------------------------------------------------------------


@pytest.fixture(autouse=True)
def serving() -> Iterator[None]:
    """Stop the control APIs the test's consoles were attached to."""
    try:
        yield
    finally:
        stop_serving()


@pytest.fixture
def world(tmp_path: Path) -> Path:
    """The fixed world's database."""
    path = tmp_path / "state" / "quarterdeck.db"
    seed_world(path)
    return path


def build(console: ApiConsole, theme: str | None = None) -> QuarterdeckApp:
    """The app over ``console``: fixed clock, a shipped theme, no live refresh loop."""
    chosen, problem = resolve_theme(theme)
    assert problem is None, problem
    return create_app(console, clock=clock, theme=chosen, live=False, on_exit=console.close)


async def wait_for(pilot: Pilot[None], done: Callable[[], bool], what: str) -> None:
    """Let the app run until ``done()`` (database reads happen on aiosqlite's thread)."""
    for _ in range(1_000):
        if done():
            await pilot.pause()
            return
        await pilot.pause(0.01)
    raise AssertionError(f"the app never got to: {what}")


async def ready(pilot: Pilot[None]) -> None:
    """Wait for the first refresh to be over (a snapshot shown, or an error)."""
    app = pilot.app
    assert isinstance(app, QuarterdeckApp)
    await wait_for(
        pilot,
        lambda: (
            (app.snapshot is not None or app.error is not None) and not app._refreshing.locked()
        ),
        "the first refresh",
    )
    await settle(pilot)


async def settle(pilot: Pilot[None]) -> None:
    """Let the workers that keys started finish (a ledger page, a detail view: database reads
    on aiosqlite's thread), and the detail view read its item, then let the screen catch up.
    A claim an edit or a reject sends is not waited for: no daemon applies it in this world."""
    await pilot.pause()
    app = pilot.app
    views = app.query(DetailView)
    await wait_for(
        pilot,
        lambda: (
            all(view.settled for view in views)
            and not [w for w in app.workers if w.group != "claims" and not w.is_finished]
        ),
        "the workers and the detail view",
    )


def steady_cursors(pilot: Pilot[None]) -> None:
    """Stop the text cursors of the screen in view from blinking (they stay shown)."""
    for widget in pilot.app.screen.query(Input):
        widget.cursor_blink = False
    for area in pilot.app.screen.query(TextArea):
        area.cursor_blink = False


def then(*keys: str) -> RunBefore:
    """After the first refresh: press ``keys``, then steady the text cursors of whatever they
    opened."""

    async def run_before(pilot: Pilot[None]) -> None:
        await ready(pilot)
        await pilot.press(*keys)
        await settle(pilot)
        steady_cursors(pilot)
        await pilot.pause()

    return run_before


def typing(*keys: str, then_press: tuple[str, ...] = ()) -> RunBefore:
    """After the first refresh: press ``keys`` (which open an editor), steady its cursor, then
    press ``then_press`` (the text typed into it)."""

    async def run_before(pilot: Pilot[None]) -> None:
        await ready(pilot)
        await pilot.press(*keys)
        await settle(pilot)
        steady_cursors(pilot)
        await pilot.press(*then_press)
        await settle(pilot)

    return run_before


# --- panes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "120x40"])
@pytest.mark.parametrize("pane", list(PANES))
def test_pane(snap_compare: Any, world: Path, pane: str, size: tuple[int, int]) -> None:
    """Each pane of the fixed world: approvals (SLA colours, escalation, claim), turns, missions
    (lease countdowns), alerts, the ledger's newest page."""
    app = build(attach(world))
    assert snap_compare(app, terminal_size=size, run_before=then(PANES[pane]))


# --- the detail view ---------------------------------------------------------------------------


def test_master_detail_120x40(snap_compare: Any, world: Path) -> None:
    """At 120x40 the selected approval's detail sits under the list: the overdue refund that
    alice holds (its full arguments, OVERDUE, the claim, the turn's objective, the trace)."""
    app = build(attach(world))
    assert snap_compare(app, terminal_size=LARGE, run_before=then("down", "down"))


def test_master_detail_80x24(snap_compare: Any, world: Path) -> None:
    """At 80x24 ``enter`` shows the first approval's detail instead of the list."""
    app = build(attach(world))
    assert snap_compare(app, terminal_size=SMALL, run_before=then("enter"))


def test_master_detail_80x24_back(snap_compare: Any, world: Path) -> None:
    """... and ``escape`` brings the list back, its cursor where it was."""
    app = build(attach(world))
    assert snap_compare(app, terminal_size=SMALL, run_before=then("down", "enter", "escape"))


def show_detail(item_id: str, *keys: str) -> RunBefore:
    """Open an item's detail view as the app does, then press ``keys`` in it."""

    async def run_before(pilot: Pilot[None]) -> None:
        await ready(pilot)
        app = pilot.app
        assert isinstance(app, QuarterdeckApp)
        item = await app.source.detail(item_id)
        assert item is not None
        await app.push_screen(DetailScreen(item, app.clock()))
        await settle(pilot)
        await pilot.press(*keys)
        await settle(pilot)

    return run_before


def test_detail_open_approval(snap_compare: Any, world: Path) -> None:
    """An open approval's detail, top: its fields and request."""
    app = build(attach(world))
    assert snap_compare(app, terminal_size=LARGE, run_before=show_detail(APPROVAL["A1"].id))


def test_detail_open_approval_trace_and_events(snap_compare: Any, world: Path) -> None:
    """The same detail scrolled to the end: the rule trace, cost, recent events, history."""
    app = build(attach(world))
    assert snap_compare(app, terminal_size=LARGE, run_before=show_detail(APPROVAL["A1"].id, "end"))


def test_detail_edited_approval_from_ledger(snap_compare: Any, world: Path) -> None:
    """A decided approval opened from its ``approval.edited`` ledger entry (enter on the Ledger
    pane); scrolled to the end: the argument diff, the rule trace and the history."""
    edited = APPROVAL["A4"].id

    async def run_before(pilot: Pilot[None]) -> None:
        await ready(pilot)
        app = pilot.app
        assert isinstance(app, QuarterdeckApp)
        await pilot.press("5")
        await settle(pilot)
        ledger = app.query_one("#ledger", LedgerPane)
        rows = list(ledger.lines.values())
        row = next(i for i, line in enumerate(rows) if line.action == "approval.edited")
        assert rows[row].subject_id == edited
        ledger.move_cursor(row)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, DetailScreen), "the detail view")
        await pilot.press("end")
        await settle(pilot)

    app = build(attach(world))
    assert snap_compare(app, terminal_size=LARGE, run_before=run_before)


# --- confirmations -------------------------------------------------------------------------------


def test_confirm_takeover(snap_compare: Any, world: Path) -> None:
    """``t`` on the Turns pane asks before taking the turn over (Cancel focused)."""
    assert snap_compare(build(attach(world)), run_before=then("2", "t"))


def test_confirm_cancel_turn(snap_compare: Any, world: Path) -> None:
    """``X`` on the Turns pane asks before cancelling the turn (Cancel focused)."""
    assert snap_compare(build(attach(world)), run_before=then("2", "X"))


def test_confirm_fallback_lane(snap_compare: Any, world: Path) -> None:
    """``f`` on the escalated approval (lane triage) asks before forcing that lane's fallback."""
    assert snap_compare(build(attach(world)), run_before=then("down", "f"))


def test_confirm_stop_fallback_lane(snap_compare: Any, world: Path) -> None:
    """``f`` on the deploy approval (lane deploys, already forced; the third row) offers to stop
    forcing."""
    assert snap_compare(build(attach(world)), run_before=then("down", "down", "f"))


def test_confirm_fallback_all(snap_compare: Any, world: Path) -> None:
    """``F`` asks before forcing fallback on every lane."""
    assert snap_compare(build(attach(world)), run_before=then("F"))


def test_confirm_approve_all(snap_compare: Any, world: Path) -> None:
    """``A`` asks before approving all three approvals shown."""
    assert snap_compare(build(attach(world)), run_before=then("A"))


def test_confirm_rebaseline(snap_compare: Any, world: Path) -> None:
    """``b`` on the open attested-file alert asks before rebaselining lane triage."""
    assert snap_compare(build(attach(world)), run_before=then("4", "b"))


# --- editors -------------------------------------------------------------------------------------


def test_edit_then_approve(snap_compare: Any, world: Path) -> None:
    """``e``: the deploy's arguments in the JSON editor (the deploy's deadline is the furthest:
    its row is the third)."""
    assert snap_compare(build(attach(world)), run_before=then("down", "down", "e"))


def test_edit_then_approve_invalid_json(snap_compare: Any, world: Path) -> None:
    """Garbage typed into the JSON editor, then ctrl+s: the editor stays, with the error."""
    app = build(attach(world))
    garbage = ("o", "o", "p", "s", "space")
    assert snap_compare(
        app, run_before=typing("down", "down", "e", then_press=(*garbage, "ctrl+s"))
    )


def test_reject_reason_picker(snap_compare: Any, world: Path) -> None:
    """``r``: the reason codes, one key each, and the optional note."""
    assert snap_compare(build(attach(world)), run_before=then("r"))


def test_deliverable_editor(snap_compare: Any, world: Path) -> None:
    """The deliverable editor shown after a take over (pushed directly: confirming a take over
    sends a command, which waits for a daemon this test does not run), with a line typed."""
    turn = TURN["T5"].id

    async def run_before(pilot: Pilot[None]) -> None:
        await ready(pilot)
        await pilot.press("2")
        await pilot.app.push_screen(TextEditScreen(f"Deliverable for turn {short(turn)}"))
        await settle(pilot)
        steady_cursors(pilot)
        await pilot.press(*"Refund sent.")
        await pilot.pause()

    assert snap_compare(build(attach(world)), run_before=run_before)


# --- help and the filter bar --------------------------------------------------------------------


def test_help(snap_compare: Any, world: Path) -> None:
    """``?``: every key, what it does and where."""
    assert snap_compare(build(attach(world)), terminal_size=LARGE, run_before=then("question_mark"))


def test_filter_bar_typing(snap_compare: Any, world: Path) -> None:
    """``/`` opens the filter bar; the text typed so far shows in it."""
    app = build(attach(world))
    assert snap_compare(app, run_before=typing("slash", then_press=tuple("triage")))


def test_filter_applied(snap_compare: Any, world: Path) -> None:
    """Enter applies the filter: only matching rows, and the pane says what it filters by."""
    app = build(attach(world))
    assert snap_compare(app, run_before=typing("slash", then_press=(*"triage", "enter")))


# --- themes --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "theme", ["quarterdeck-dark", "quarterdeck-light", "quarterdeck-high-contrast"]
)
def test_theme(snap_compare: Any, world: Path, theme: str) -> None:
    """The approvals pane in each shipped theme."""
    app = build(attach(world), theme=theme)
    assert snap_compare(app, terminal_size=LARGE, run_before=then("1"))


# --- empty, error, read-only and forced states ---------------------------------------------------


@pytest.mark.parametrize("pane", ["approvals", "ledger"])
def test_empty_world(snap_compare: Any, tmp_path: Path, pane: str) -> None:
    """A new, empty database: the panes say so."""
    path = tmp_path / "state" / "quarterdeck.db"
    empty_world(path)
    assert snap_compare(build(attach(path)), run_before=then(PANES[pane]))


class FailingConsole(ApiConsole):
    """A console whose reads fail from the ``fail_from``-th snapshot on (the store going away
    under a running control center)."""

    def __init__(self, *args: Any, fail_from: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fail_from = fail_from
        self.reads = 0

    async def snapshot(self) -> Snapshot:
        self.reads += 1
        if self.reads >= self.fail_from:
            raise sqlite3.OperationalError("disk I/O error")
        return await super().snapshot()


def failing(path: Path, fail_from: int) -> FailingConsole:
    console = attach(path)
    return FailingConsole(
        console.api, console.principal, target=console.target, lanes=console.lane_names,
        reject_reasons=console.reject_reasons, fail_from=fail_from,
    )  # fmt: skip


def test_error_after_start(snap_compare: Any, world: Path) -> None:
    """The store fails after the first snapshot: the panes keep the last one and the header
    says what went wrong."""

    async def run_before(pilot: Pilot[None]) -> None:
        await ready(pilot)
        app = pilot.app
        assert isinstance(app, QuarterdeckApp)
        await app.refresh_now()
        assert app.error is not None
        await pilot.pause()

    assert snap_compare(build(failing(world, fail_from=2)), run_before=run_before)


def test_error_at_start(snap_compare: Any, world: Path) -> None:
    """The store fails on the very first read: the header says so, the panes are empty."""
    assert snap_compare(build(failing(world, fail_from=1)), run_before=then())


def test_read_only_refuses(snap_compare: Any, world: Path) -> None:
    """A read-only console: READ-ONLY in the header, and ``a`` is refused with a notice."""
    assert snap_compare(build(attach(world, read_only=True)), run_before=then("a"))


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "120x40"])
def test_force_fallback_all_header(
    snap_compare: Any, tmp_path: Path, size: tuple[int, int]
) -> None:
    """Fallback forced on every lane: the header says FORCE FALLBACK: ALL LANES."""
    path = tmp_path / "state" / "quarterdeck.db"
    seed_world(path, force_all=True)
    assert snap_compare(build(attach(path)), terminal_size=size, run_before=then())


# --- what the snapshots rely on ------------------------------------------------------------------


def test_world_ledger_verifies(world: Path) -> None:
    """The fixed world's ledger was appended by the real appender: its chain verifies."""

    async def main() -> dict[str, Any]:
        console = attach(world)
        try:
            return await console.verify_ledger()
        finally:
            await console.close()

    result = asyncio.run(main())
    assert result["ok"], result
    assert result["entries"] >= 30


def test_not_live_reads_once(world: Path) -> None:
    """With ``live=False`` the app reads one snapshot at start and never again on its own
    (longer than the live loop's idle refresh), so a screenshot cannot catch it mid-change."""
    console = failing(world, fail_from=10**9)
    app = build(console)

    async def main() -> None:
        async with app.run_test(size=SMALL) as pilot:
            await ready(pilot)
            await pilot.pause(1.5)
            assert console.reads == 1
            assert not [w for w in app.workers if w.group == "follow"]

    asyncio.run(main())


# --- the Lanes pane and the dialogs' keys --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lane:
    """One lane of the fixed world as the lane overview gives it."""

    lane: str
    state: str = "running"
    paused_by: str | None = None
    paused_reason: str | None = None
    forced_fallback: bool = False
    shadow: bool = False
    slots: int = 4
    in_use: int = 0
    awaiting_person: int = 0
    queued: int = 0
    awaiting_dispatch: int = 0
    oldest_wait_s: float | None = None
    failure_rate: float | None = None
    fallback_rate: float | None = None


LANE_ROWS = (
    Lane("billing", in_use=1, failure_rate=0.0, fallback_rate=0.0),
    Lane("claude-code", slots=2, in_use=2, awaiting_person=1, failure_rate=0.0),
    Lane("deploys", forced_fallback=True, in_use=4, awaiting_person=4, queued=7,
         oldest_wait_s=312, failure_rate=0.25, fallback_rate=1.0),
    Lane("research", shadow=True, queued=1, awaiting_dispatch=2, oldest_wait_s=14,
         failure_rate=0.1, fallback_rate=0.05),
    Lane("triage", state="paused", paused_by="alice", paused_reason="approval expired",
         queued=3, oldest_wait_s=4000),
)  # fmt: skip


class LanesConsole(ApiConsole):
    """The fixed world's console with a fixed lane overview (its figures depend on no clock)."""

    async def lanes(self) -> tuple[Lane, ...]:  # type: ignore[override]
        return LANE_ROWS


def with_lanes(path: Path) -> LanesConsole:
    console = attach(path)
    return LanesConsole(
        console.api, console.principal, target=console.target, lanes=console.lane_names,
        reject_reasons=console.reject_reasons,
    )  # fmt: skip


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "120x40"])
def test_lanes_pane(snap_compare: Any, world: Path, size: tuple[int, int]) -> None:
    """``6``: every lane with its state (paused by whom and why, fallback forced, shadow),
    slots, what waits on a person, its queue and rates."""
    assert snap_compare(build(with_lanes(world)), terminal_size=size, run_before=then("6"))


def test_snooze_dialog(snap_compare: Any, world: Path) -> None:
    """``z``: the durations, one digit each, and the deadline as it stands."""
    assert snap_compare(build(attach(world)), run_before=then("z"))


def test_reject_with_a_note(snap_compare: Any, world: Path) -> None:
    """``r``, tab, a note with a digit in it (the digit stays in the note): the dialog's keys."""
    app = build(attach(world))
    assert snap_compare(app, run_before=typing("r", then_press=("tab", *"wait 2 days")))
