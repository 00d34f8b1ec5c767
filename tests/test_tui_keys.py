"""The console's keys, footer, header and dialogs: ``q``, ``j/k``, ``g/G``, ``y`` (copy the
selected id), the reject dialog's note (tab in and out, enter sends from anywhere, digits stay
in it), the snooze dialog's durations, a footer that never ends mid-word and a header of at
most two lines. Actions are checked by what they did to the runtime (rows and ledger)."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from tests.conftest import run
from tests.test_runtime import config, person, runtime
from tests.test_supervision import policy
from tests.test_tui_actions import (
    ACTOR,
    POLICY,
    approval,
    center,
    header_text,
    pane,
    recorded,
    screen_is,
    until,
    waiting,
)
from textual.widgets import Input

from quarterdeck.client.console import EmbeddedConsole
from quarterdeck.tui.app import create_app
from quarterdeck.tui.footer import KeyFooter, fit_keys
from quarterdeck.tui.keymap import ACTIONS
from quarterdeck.tui.screens import ConfirmScreen, ReasonScreen, SnoozeScreen
from quarterdeck.tui.table import Column, column_widths
from tui_world import attach, clock, seed_world

NAMES = {action.short for action in ACTIONS}


def test_fit_keys_keeps_whole_keys_and_ends_with_more() -> None:
    keys = [("a", "Approve"), ("e", "Edit"), ("r", "Reject"), ("x", "Escalate")]
    for width in range(0, 60):
        shown = fit_keys(keys, width)
        assert shown[-1] == ("?", "more")
        assert shown[:-1] == keys[: len(shown) - 1]  # a prefix, each key whole
        assert sum(len(k) + len(n) + 3 for k, n in shown) <= max(width, 8)


def test_the_footer_never_ends_mid_word_and_the_header_stays_two_lines(tmp_path: Path) -> None:
    """At 80 and 120 columns, on every pane: the footer's keys are whole names and it ends with
    ``? more``; with every flag on (fallback forced everywhere, a lane paused, read-only) the
    header is two lines within the width and keeps its flags."""
    path = tmp_path / "state" / "quarterdeck.db"
    seed_world(path, force_all=True)

    async def main() -> None:
        console = attach(path, read_only=True)
        app = create_app(console, clock=clock, live=False, on_exit=console.close)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: app.snapshot is not None, "the first snapshot")
            for width, height in ((80, 24), (120, 40)):
                await pilot.resize_terminal(width, height)
                for key in "123456":
                    await pilot.press(key)
                    await pilot.pause()
                    footer = app.query_one(KeyFooter)
                    line = str(footer.render()).rstrip()
                    assert line.endswith("? more"), (width, key, line)
                    assert len(line) <= width
                    assert all(name in NAMES for _key, name in footer.shown[:-1]), footer.shown
                lines = header_text(app).split("\n")
                assert len(lines) == 2 and all(len(x) <= width for x in lines), lines
                assert "FALLBACK: ALL" in lines[0] and "paused" in lines[0]
                assert ("READ-ONLY" in lines[0] or " RO " in lines[0]) and "●" in lines[0]

    run(main())


def test_j_k_g_and_big_g_move_and_y_copies_the_full_id(tmp_path: Path) -> None:
    async def main() -> None:
        async with center(tmp_path) as c:
            _rt, _store, app, pilot = c
            rows = [(await waiting(c, f"move-{i}"))[1] for i in range(3)]
            table = pane(app, "approvals")
            await until(pilot, lambda: table.row_count == 3, "three rows")
            await pilot.press("G")
            assert table.cursor_row == 2
            await pilot.press("k")
            assert table.cursor_row == 1
            await pilot.press("g")
            assert table.cursor_row == 0
            await pilot.press("j")
            assert table.cursor_row == 1
            await pilot.press("y")
            assert app.clipboard == rows[1]["id"] == table.selected_key()
            assert app.sent == []

    run(main())


def test_q_asks_on_an_embedded_runtime_and_n_keeps_it(tmp_path: Path) -> None:
    async def main() -> None:
        async with center(tmp_path) as c:
            _rt, _store, app, pilot = c
            await pilot.press("q")
            confirm = await screen_is(pilot, app, ConfirmScreen)
            assert "runtime stops" in confirm.question
            await pilot.press("n")
            await until(pilot, lambda: not app.screen.is_modal, "the main screen")
            assert app.is_running
            await pilot.press("q")
            await screen_is(pilot, app, ConfirmScreen)
            await pilot.press("y")
            await until(pilot, lambda: not app.is_running, "the app to quit")

    run(main())


def test_reject_note_tab_in_and_out_digits_stay_and_enter_sends(tmp_path: Path) -> None:
    async def main() -> None:
        async with center(tmp_path) as c:
            _rt, store, app, pilot = c
            _turn, row = await waiting(c, "note")
            await pilot.press("r")
            picker = await screen_is(pilot, app, ReasonScreen)
            note = picker.query_one("#note", Input)
            await pilot.press("tab")
            await until(pilot, lambda: note.has_focus, "the note")
            await pilot.press(*"wait 2 days")  # the digit is text, not a code
            await pilot.pause(0.1)
            assert app.screen is picker and note.value == "wait 2 days"
            await pilot.press("tab")
            await until(pilot, lambda: not note.has_focus, "out of the note")
            await pilot.press("j")  # the second code
            await pilot.press("tab")
            await until(pilot, lambda: note.has_focus, "back in the note")
            await pilot.press("enter")  # sends from inside the note
            rejected = await recorded(pilot, store, "approval.rejected", row["id"])
            assert rejected["actor"] == ACTOR
            assert rejected["payload"]["reason_code"] == "wrong_target"
            assert rejected["payload"]["reason"] == "wait 2 days"
            assert approval(store, row["id"])["state"] == "rejected"

            _turn, second = await waiting(c, "enter")
            await until(pilot, lambda: not app.screen.is_modal, "the main screen")
            await pilot.press("r")
            await screen_is(pilot, app, ReasonScreen)
            await pilot.press("enter")  # the first code, no note
            rejected = await recorded(pilot, store, "approval.rejected", second["id"])
            assert rejected["payload"]["reason_code"] == "unsafe"

    run(main())


def test_snooze_shows_the_deadline_and_a_digit_picks_the_duration(tmp_path: Path) -> None:
    async def main() -> None:
        async with center(tmp_path) as c:
            _rt, store, app, pilot = c
            _turn, row = await waiting(c, "snooze")
            await pilot.press("z")
            dialog = await screen_is(pilot, app, SnoozeScreen)
            assert dialog.deadline.startswith(f"deadline {row['deadline_at'][11:19]} UTC (in ")
            await pilot.press("escape")
            await until(pilot, lambda: not app.screen.is_modal, "the main screen")
            assert app.sent == []
            await pilot.press("z")
            await screen_is(pilot, app, SnoozeScreen)
            await pilot.press("3")  # one hour
            await recorded(pilot, store, "approval.snoozed", row["id"])
            assert app.sent[-1]["payload"]["for_s"] == 3600
            assert approval(store, row["id"])["snoozed_until"] > row["created_at"]

    run(main())


def test_escape_on_a_list_clears_its_filter(tmp_path: Path) -> None:
    async def main() -> None:
        async with center(tmp_path) as c:
            _rt, _store, app, pilot = c
            rows = [(await waiting(c, f"filter-{i}"))[1] for i in range(2)]
            table = pane(app, "approvals")
            await pilot.press("slash", *rows[0]["id"], "enter")
            await until(pilot, lambda: table.row_count == 1, "one row")
            assert app.focused is table and app.check_action("clear_filter", ())
            await pilot.press("escape")
            await until(pilot, lambda: table.row_count == 2, "both rows again")
            assert table.filter_text == "" and not app.check_action("clear_filter", ())

    run(main())


def test_the_lanes_pane_pauses_resumes_and_forces_fallback_on_the_selected_lane(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with runtime(tmp_path, config(), policy=policy(POLICY)) as (rt, store):
            app = create_app(EmbeddedConsole(rt, principal=person(ACTOR)))
            async with app.run_test(size=(120, 40)) as pilot:
                await until(pilot, lambda: app.snapshot is not None, "the first snapshot")
                await pilot.press("6")
                lanes = pane(app, "lanes")
                await until(pilot, lambda: lanes.row_count == 2, "both lanes")
                order = list(lanes.lines)  # the configured lanes, in the configuration's order
                assert sorted(order) == ["fb", "sim"]
                await pilot.press("g", *["j"] * order.index("sim"))
                assert lanes.selected_key() == "sim"
                await pilot.press("p")
                paused = await recorded(pilot, store, "lane.paused", "sim")
                assert paused["actor"] == ACTOR
                await until(pilot, lambda: lanes.lines["sim"].state == "paused", "the row")
                assert lanes.cell_text("sim", "state").startswith("paused")
                await pilot.press("p")
                resumed = await recorded(pilot, store, "lane.resumed", "sim")
                assert resumed["actor"] == ACTOR
                await pilot.press("f")
                await screen_is(pilot, app, ConfirmScreen)
                await pilot.press("y")
                forced = await recorded(pilot, store, "lane.force_fallback_on", "sim")
                assert forced["actor"] == ACTOR
                await until(
                    pilot, lambda: lanes.cell_text("sim", "state") == "fallback forced", "forced"
                )
                assert not store.ledger(action="lane.paused", subject="fb")

    run(main())


def test_columns_share_the_spare_width_growing_ones_first() -> None:
    columns = (
        Column("state", "State", 12),
        Column("holder", "Holder", 8, keep_end=True),
        Column("id", "Id", 8),
        Column("objective", "Objective", 20, grow=True),
    )
    # Wide enough for everything: nothing is cut, the growing column is as wide as its text.
    assert column_widths(columns, [19, 30, 8, 40], 200) == (19, 30, 8, 40)
    # Narrower: the objective takes the spare first, then the cut columns in order.
    assert column_widths(columns, [19, 30, 8, 40], 100) == (19, 25, 8, 40)
    widths = column_widths(columns, [19, 30, 8, 40], 80)
    assert widths[3] == 40 and sum(widths) + 2 * len(widths) <= 80
    # Too narrow for every column: each at its floor, the view scrolls sideways.
    assert column_widths(columns, [19, 30, 8, 40], 30) == (12, 8, 8, 20)
    # Short cells: a fixed column is no wider than its widest cell (its label at least).
    assert column_widths(columns, [3, 1, 8, 5], 200)[:3] == (5, 6, 8)


@given(
    st.lists(st.integers(min_value=0, max_value=80), min_size=4, max_size=4),
    st.integers(min_value=10, max_value=250),
)
def test_no_column_is_cut_while_blank_cells_sit_at_the_right(
    natural: list[int], available: int
) -> None:
    columns = (
        Column("a", "A", 10),
        Column("b", "Bee", 6, keep_end=True),
        Column("c", "Grow", 12, grow=True),
        Column("d", "D", 8),
    )
    widths = column_widths(columns, natural, available)
    used = sum(widths) + 2 * len(widths)
    floors = [max(len(c.label), c.width if c.grow else min(n, c.width))
              for c, n in zip(columns, natural, strict=True)]  # fmt: skip
    assert all(w >= f for w, f in zip(widths, floors, strict=True))
    if used < available:  # blank cells at the right: then nothing is cut
        assert all(w >= n for w, n in zip(widths, natural, strict=True))
    else:
        assert used == sum(floors) + 8 or used == available
