"""Every action of the control center, driven with Textual's pilot against a real runtime on a
real SQLite file, checked by what it did to the runtime (rows and ledger entries), not only by
what the screen shows.

Most tests run the app on an :class:`EmbeddedConsole` beside a fresh runtime (its tasks live in
workspace ``w``, so every command has to carry its item's workspace). The last test attaches
to a headless daemon in another process. Tests wait by polling with a deadline while the app
keeps running (``pilot.pause``), never by sleeping blindly.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from tests.conftest import run
from tests.headless import headless_runtime, query, wait_until
from tests.test_runtime import (
    Store,
    config,
    person,
    runtime,
    submit_one,
    task,
    turn_in,
    turn_of,
)
from tests.test_supervision import acting, approval_of, deliverable, policy
from textual import events
from textual.command import CommandList, CommandPalette
from textual.pilot import Pilot
from textual.widgets import Input, TextArea

from quarterdeck.client.api_console import ApiConsole
from quarterdeck.client.console import EmbeddedConsole
from quarterdeck.client.reach import ApiAddress
from quarterdeck.client.submit import Client
from quarterdeck.domain.envelope import RUNTIME_WORKSPACE
from quarterdeck.runtime.runtime import Runtime
from quarterdeck.store.alerts import open_alert
from quarterdeck.store.database import open_database
from quarterdeck.store.writer import Writer, WriteTxn
from quarterdeck.tui.app import QuarterdeckApp, StatusHeader, create_app
from quarterdeck.tui.detail import DetailView
from quarterdeck.tui.footer import KeyFooter
from quarterdeck.tui.keymap import ACTIONS, MOVES
from quarterdeck.tui.screens import (
    ConfirmScreen,
    HelpScreen,
    JsonEditScreen,
    ReasonScreen,
    SnoozeScreen,
    TextEditScreen,
)
from quarterdeck.tui.table import LivePane

ACTOR = "tess"
SIZE = (120, 40)
POLICY = """
[defaults]
outcome = "allow"
reject_reasons = ["unsafe", "wrong_target", "other"]

[[rules]]
name = "deploys"
tool = "deploy"
outcome = "require_approval"
approver = "release-lead"
deadline_s = 600
ladder = ["oncall"]
"""

Center = tuple[Runtime, Store, QuarterdeckApp, Pilot[None]]


# --- helpers -------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def center(
    tmp_path: Path, data: dict[str, Any] | None = None, **app_options: Any
) -> AsyncIterator[Center]:
    """A runtime on ``tmp_path`` and the control center on it (shown, its pane focused)."""
    async with runtime(tmp_path, data or config(), policy=policy(POLICY)) as (rt, store):
        app = create_app(EmbeddedConsole(rt, principal=person(ACTOR)), **app_options)
        async with app.run_test(size=SIZE) as pilot:
            await until(
                pilot,
                lambda: app.snapshot is not None and isinstance(app.focused, LivePane),
                "the first snapshot",
            )
            yield rt, store, app, pilot


async def until(
    pilot: Pilot[Any], probe: Callable[[], Any], what: str, timeout: float = 5.0
) -> Any:
    """Poll ``probe`` (the app running meanwhile) until it is truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for {what}; last {value!r}"
            )
        await pilot.pause(0.02)


def pane(app: QuarterdeckApp, name: str) -> LivePane[Any]:
    widget = app.query_one(f"#{name}")
    assert isinstance(widget, LivePane)
    return widget


async def listed(pilot: Pilot[Any], app: QuarterdeckApp, name: str, key: str) -> None:
    """Wait until ``key`` is a row of the pane ``name``."""
    await until(pilot, lambda: key in pane(app, name).lines, f"{key} in the {name} pane")


def select(app: QuarterdeckApp, name: str, key: str) -> None:
    """Put the pane's cursor on the row of ``key``."""
    table = pane(app, name)
    table.move_cursor(table.get_row_index(key))


async def screen_is(pilot: Pilot[Any], app: QuarterdeckApp, kind: type) -> Any:
    return await until(pilot, lambda: isinstance(app.screen, kind) and app.screen, kind.__name__)


def notes(app: QuarterdeckApp) -> list[str]:
    """The notifications shown so far, as ``title: message``."""
    return [f"{note.title}: {note.message}" for note in app._notifications]


def header_text(app: QuarterdeckApp) -> str:
    return str(app.query_one("#status", StatusHeader).content)


def footer_actions(app: QuarterdeckApp) -> set[str]:
    return set(app.query_one(KeyFooter).actions)


def approval(store: Store, approval_id: str) -> dict[str, Any]:
    row = store.one("SELECT * FROM approvals WHERE id = ?", approval_id)
    assert row is not None, approval_id
    return row


def entry(store: Store, action: str, subject: str) -> dict[str, Any]:
    """The one ledger entry ``action`` on ``subject``."""
    [found] = store.ledger(action=action, subject=subject)
    return found


async def recorded(
    pilot: Pilot[Any], store: Store, action: str, subject: str, timeout: float = 5.0
) -> dict[str, Any]:
    """Wait for the ledger entry ``action`` on ``subject``; return it."""
    await until(
        pilot, lambda: store.ledger(action=action, subject=subject), f"{action} on {subject}",
        timeout,
    )  # fmt: skip
    return entry(store, action, subject)


def deploy(key: str, **args: Any) -> dict[str, Any]:
    """A task whose agent asks to ``deploy`` (the policy wants a release lead for that)."""
    return acting(key, {"tool": "deploy", "args": args or {"env": "prod"}})


async def waiting(center: Center, key: str, **args: Any) -> tuple[str, dict[str, Any]]:
    """Submit a deploy task; return its turn and its approval, once the pane lists it."""
    rt, store, app, pilot = center
    turn = await turn_of(store, await submit_one(rt, deploy(key, **args)))
    row = await approval_of(store, turn)
    await listed(pilot, app, "approvals", row["id"])
    return turn, row


async def running_turn(center: Center, key: str) -> str:
    """Submit a task whose agent never finishes; return its turn once it runs and is listed
    on the Turns pane (shown: only the pane in view is kept up to date)."""
    rt, store, app, pilot = center
    turn = await turn_of(store, await submit_one(rt, task(key, outcome="hang")))
    await turn_in(store, turn, "running")
    if app.current != "turns":
        await pilot.press("2")
    await listed(pilot, app, "turns", turn)
    return turn


async def replace_text(pilot: Pilot[Any], editor: TextArea, text: str) -> None:
    """Select everything in the focused editor (f7) and paste ``text`` over it."""
    assert editor.has_focus
    await pilot.press("f7")
    pilot.app.post_message(events.Paste(text))
    await until(pilot, lambda: editor.text == text, "the pasted text")


# --- panes and the footer ------------------------------------------------------------------------


def test_panes_switch_by_number_and_tab_and_the_footer_follows(tmp_path: Path) -> None:
    async def main() -> None:
        async with center(tmp_path) as (_rt, _store, app, pilot):
            assert app.current == "approvals" and app.focused is pane(app, "approvals")
            assert app.check_action("approve", ()) and not app.check_action("ack", ())
            await until(pilot, lambda: "approve" in footer_actions(app), "the footer")
            assert {"reject", "approve_all"} <= footer_actions(app)
            assert "ack" not in footer_actions(app)

            await pilot.press("4")
            await until(pilot, lambda: app.focused is pane(app, "alerts"), "the alerts pane")
            assert app.current == "alerts"
            assert not app.check_action("approve", ()) and app.check_action("ack", ())
            await until(pilot, lambda: "ack" in footer_actions(app), "ack in the footer")
            assert "approve" not in footer_actions(app) and "rebaseline" in footer_actions(app)

            seen = []
            for _ in range(6):
                await pilot.press("tab")
                await until(pilot, lambda: app.focused is pane(app, app.current), "focus")
                seen.append(app.current)
            assert seen == ["ledger", "lanes", "approvals", "turns", "missions", "alerts"]
            for _ in range(2):
                await pilot.press("shift+tab")
                await until(pilot, lambda: app.focused is pane(app, app.current), "focus")
                seen.append(app.current)
            assert seen[-2:] == ["missions", "turns"]

            for key, name in (
                ("2", "turns"),
                ("3", "missions"),
                ("5", "ledger"),
                ("6", "lanes"),
                ("1", "approvals"),
            ):
                await pilot.press(key)
                await until(pilot, lambda name=name: app.focused is pane(app, name), name)
                assert app.current == name
            await pilot.press("2")
            await until(pilot, lambda: "takeover" in footer_actions(app), "the turns footer")
            assert app.check_action("release", ()) and not app.check_action("approve", ())
            assert "approve" not in footer_actions(app)
            # The ledger pane follows the tail.
            await pilot.press("5")
            await until(pilot, lambda: pane(app, "ledger").lines, "ledger rows")
            assert app.sent == []

    run(main())


# --- approvals -----------------------------------------------------------------------------------


def test_approve_records_the_consoles_actor_and_the_agent_proceeds(tmp_path: Path) -> None:
    async def main() -> None:
        async with center(tmp_path) as c:
            _rt, store, app, pilot = c
            turn, row = await waiting(c, "ok", env="prod")
            await pilot.press("a")
            decided = await recorded(pilot, store, "approval.approved", row["id"])
            assert decided["actor"] == ACTOR == app.source.principal.label
            assert (decided["from_state"], decided["to_state"]) == ("pending", "approved")
            assert approval(store, row["id"])["decided_by"] == ACTOR
            await turn_in(store, turn, "completed")
            assert deliverable(store, turn)["actions"] == [
                {"tool": "deploy", "outcome": "approved", "args": {"env": "prod"}}
            ]
            await until(pilot, lambda: row["id"] not in pane(app, "approvals").lines, "the row")
            assert any("approved deploy" in note for note in notes(app))
            [sent] = app.sent
            assert sent["payload"]["command"] == "approval.approve" and sent["result"]["ok"]

    run(main())


def test_edit_then_approve_sends_the_edited_args_and_bad_json_keeps_the_editor(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with center(tmp_path) as c:
            _rt, store, app, pilot = c
            turn, row = await waiting(c, "edit", env="prod", replicas=3)
            await pilot.press("e")
            editor_screen = await screen_is(pilot, app, JsonEditScreen)
            editor = editor_screen.query_one("#editor", TextArea)
            assert json.loads(editor.text) == {"env": "prod", "replicas": 3}

            await replace_text(pilot, editor, '{"env": "staging", ')
            await pilot.press("ctrl+s")
            await pilot.pause(0.1)
            assert app.screen is editor_screen  # still open, saying what is wrong
            assert "not JSON" in str(editor_screen.query_one("#problem").content)
            await replace_text(pilot, editor, "[1, 2]")
            await pilot.press("ctrl+s")
            await pilot.pause(0.1)
            assert app.screen is editor_screen
            assert "must be a JSON object" in str(editor_screen.query_one("#problem").content)
            # Nothing decided yet: the editor only claimed the approval.
            assert [sent["payload"]["command"] for sent in app.sent] == ["approval.claim"]
            assert approval(store, row["id"])["state"] == "pending"

            await replace_text(pilot, editor, '{"env": "staging", "replicas": 1}')
            await pilot.press("ctrl+s")
            edited = await recorded(pilot, store, "approval.edited", row["id"])
            assert not isinstance(app.screen, JsonEditScreen)
            assert edited["actor"] == ACTOR
            assert approval(store, row["id"])["state"] == "edited"
            await turn_in(store, turn, "completed")
            assert deliverable(store, turn)["actions"] == [
                {"tool": "deploy", "outcome": "edited", "args": {"env": "staging", "replicas": 1}}
            ]
            [release] = store.rows("SELECT args FROM action_releases WHERE turn_id = ?", turn)
            assert json.loads(release["args"]) == {"env": "staging", "replicas": 1}

    run(main())


def test_reject_records_the_reason_code_picked_by_its_digit_and_the_note(tmp_path: Path) -> None:
    async def main() -> None:
        async with center(tmp_path) as c:
            _rt, store, app, pilot = c
            turn, row = await waiting(c, "no")
            await pilot.press("r")
            picker = await screen_is(pilot, app, ReasonScreen)
            assert picker.codes == ["unsafe", "wrong_target", "other"]  # the policy's codes
            await pilot.press("2")
            rejected = await recorded(pilot, store, "approval.rejected", row["id"])
            assert rejected["actor"] == ACTOR
            assert rejected["payload"]["reason_code"] == "wrong_target"
            assert approval(store, row["id"])["reason_code"] == "wrong_target"
            await turn_in(store, turn, "completed")
            [action] = deliverable(store, turn)["actions"]
            assert action["outcome"] == "rejected"

            # With a note: tab to it, type (digits too), shift+tab back, then pick.
            _turn, second = await waiting(c, "no-2")
            await until(pilot, lambda: not app.screen.is_modal, "the main screen")
            await pilot.press("r")
            picker = await screen_is(pilot, app, ReasonScreen)
            await pilot.press("tab")
            note = picker.query_one("#note", Input)
            await until(pilot, lambda: note.has_focus, "the note")
            await pilot.press(*"frozen until 3pm")
            await pilot.press("shift+tab")
            await until(pilot, lambda: not note.has_focus, "back to the codes")
            assert app.screen is picker and app.current == "approvals"  # tab stayed in the dialog
            await pilot.press("1")
            rejected = await recorded(pilot, store, "approval.rejected", second["id"])
            assert rejected["payload"]["reason_code"] == "unsafe"
            assert rejected["payload"]["reason"] == "frozen until 3pm"

    run(main())


def test_escalate_and_snooze(tmp_path: Path) -> None:
    async def main() -> None:
        async with center(tmp_path) as c:
            _rt, store, app, pilot = c
            _turn, first = await waiting(c, "up")
            _turn, second = await waiting(c, "later")

            select(app, "approvals", first["id"])
            await pilot.press("x")
            escalated = await recorded(pilot, store, "approval.escalated", first["id"])
            assert escalated["actor"] == ACTOR and escalated["to_state"] == "escalated"
            row = approval(store, first["id"])
            assert (row["state"], row["approver"], row["level"]) == ("escalated", "oncall", 1)

            select(app, "approvals", second["id"])
            await pilot.press("z")
            await screen_is(pilot, app, SnoozeScreen)
            await pilot.press("2")  # 15 minutes
            snoozed = await recorded(pilot, store, "approval.snoozed", second["id"])
            assert snoozed["actor"] == ACTOR
            row = approval(store, second["id"])
            assert row["state"] == "pending" and row["snoozed_until"] > row["created_at"]
            assert row["deadline_at"] >= row["snoozed_until"]
            assert app.sent[-1]["payload"]["for_s"] == 900
            table = pane(app, "approvals")
            await until(
                pilot,
                lambda: table.cell_text(second["id"], "sla") == "snoozed",
                "the snoozed row",
            )
            assert [p["payload"]["command"] for p in app.sent] == [
                "approval.escalate", "approval.snooze",
            ]  # fmt: skip

    run(main())


def test_approve_all_cancels_by_default_and_approves_each_after_y(tmp_path: Path) -> None:
    async def main() -> None:
        async with center(tmp_path) as c:
            _rt, store, app, pilot = c
            opened = [await waiting(c, f"all-{i}") for i in range(2)]

            await pilot.press("A")
            confirm = await screen_is(pilot, app, ConfirmScreen)
            assert "Approve all 2" in confirm.question
            assert confirm.focused is not None and confirm.focused.id == "cancel"
            await pilot.press("enter")  # Cancel has the focus
            await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen), "the dialog")
            await pilot.pause(0.1)
            assert app.sent == []
            assert [approval(store, row["id"])["state"] for _t, row in opened] == ["pending"] * 2

            await pilot.press("A")
            await screen_is(pilot, app, ConfirmScreen)
            await pilot.press("y")
            for turn, row in opened:
                decided = await recorded(pilot, store, "approval.approved", row["id"])
                assert decided["actor"] == ACTOR
                await turn_in(store, turn, "completed")
            await until(pilot, lambda: any("approved 2 of 2" in n for n in notes(app)), "notice")
            assert len(app.sent) == 2

    run(main())


# --- turns ---------------------------------------------------------------------------------------


def test_take_over_then_the_deliverable_editor_completes_the_turn(tmp_path: Path) -> None:
    async def main() -> None:
        async with center(tmp_path) as c:
            _rt, store, app, pilot = c
            turn = await running_turn(c, "by-hand")
            select(app, "turns", turn)
            await pilot.press("t")
            await screen_is(pilot, app, ConfirmScreen)
            await pilot.press("y")
            taken = await recorded(pilot, store, "turn.taken_over", turn)
            assert taken["actor"] == ACTOR
            assert store.turn(turn)["lease_owner"] == f"human:{ACTOR}"
            editor_screen = await screen_is(pilot, app, TextEditScreen)
            await pilot.press(*"shipped by hand")
            await pilot.press("ctrl+s")
            completed = await recorded(pilot, store, "turn.completed", turn)
            assert completed["actor"] == ACTOR and completed["from_state"] == "taken_over"
            assert app.screen is not editor_screen
            row = store.turn(turn)
            assert row["state"] == "completed"
            assert json.loads(row["deliverable"]) == {
                "text": "shipped by hand", "completed_by": ACTOR,
            }  # fmt: skip
            assert [m["state"] for m in store.missions(turn)] == ["cancelled"]

    run(main())


def test_a_held_turn_is_completed_with_c_or_released_with_u(tmp_path: Path) -> None:
    async def main() -> None:
        async with center(tmp_path) as c:
            _rt, store, app, pilot = c
            kept = await running_turn(c, "kept")
            handed = await running_turn(c, "handed")
            for turn in (kept, handed):
                select(app, "turns", turn)
                await pilot.press("t")
                await screen_is(pilot, app, ConfirmScreen)
                await pilot.press("y")
                await screen_is(pilot, app, TextEditScreen)
                await pilot.press("escape")  # keep holding it
                await until(pilot, lambda: not app.screen.is_modal, "the main screen")
                assert store.turn(turn)["state"] == "taken_over"

            select(app, "turns", kept)
            await pilot.press("c")
            editor_screen = await screen_is(pilot, app, TextEditScreen)
            await pilot.press("ctrl+s")  # an empty deliverable is refused on the spot
            await pilot.pause(0.1)
            assert app.screen is editor_screen and store.turn(kept)["state"] == "taken_over"
            await pilot.press(*"done")
            await pilot.press("ctrl+s")
            await recorded(pilot, store, "turn.completed", kept)
            assert json.loads(store.turn(kept)["deliverable"]) == {
                "text": "done", "completed_by": ACTOR,
            }  # fmt: skip

            await until(pilot, lambda: not app.screen.is_modal, "the main screen")
            select(app, "turns", handed)
            await pilot.press("u")
            await until(pilot, lambda: store.turn(handed)["state"] != "taken_over", "release")
            moves = [(e["from_state"], e["to_state"], e["actor"])
                     for e in store.ledger(subject=handed) if e["to_state"]]  # fmt: skip
            assert ("running", "taken_over", ACTOR) in moves
            assert ("taken_over", "queued", ACTOR) in moves
            await until(pilot, lambda: len(store.missions(handed)) == 2, "a fresh mission")
            assert store.turn(handed)["lease_owner"] != f"human:{ACTOR}"

    run(main())


def test_a_held_turn_is_requeued_with_n_and_a_waiting_one_cancelled_with_x(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with center(tmp_path) as c:
            rt, store, app, pilot = c
            doomed = await turn_of(store, await submit_one(rt, task("doomed", outcome="fail")))
            await until(pilot, lambda: store.turn(doomed)["dead_letter"] == "held", "held", 15)
            tries = len(store.missions(doomed))
            await pilot.press("2")
            await listed(pilot, app, "turns", doomed)
            select(app, "turns", doomed)
            await pilot.press("n")
            requeued = await recorded(pilot, store, "turn.requeued", doomed)
            assert requeued["actor"] == ACTOR
            await until(pilot, lambda: len(store.missions(doomed)) > tries, "a fresh try")

            await pilot.press("1")
            turn, row = await waiting(c, "cancel-me")
            await pilot.press("2")
            await listed(pilot, app, "turns", turn)
            select(app, "turns", turn)
            await pilot.press("X")
            await screen_is(pilot, app, ConfirmScreen)
            await pilot.press("escape")  # Cancel is the default: nothing happens
            await until(pilot, lambda: not app.screen.is_modal, "the main screen")
            assert store.turn(turn)["state"] == "awaiting_approval"
            await pilot.press("X")
            await screen_is(pilot, app, ConfirmScreen)
            await pilot.press("y")
            cancelled = await recorded(pilot, store, "turn.cancelled", turn)
            assert (cancelled["actor"], cancelled["from_state"]) == (ACTOR, "awaiting_approval")
            decided = approval(store, row["id"])
            assert (decided["state"], decided["reason_code"]) == ("rejected", "cancelled")
            assert {m["state"] for m in store.missions(turn)} == {"cancelled"}
            await pilot.press("1")
            await until(pilot, lambda: row["id"] not in pane(app, "approvals").lines, "gone")
            await pilot.press("2")
            select(app, "turns", turn)
            await pilot.press("X")
            await screen_is(pilot, app, ConfirmScreen)
            await pilot.press("y")
            await until(
                pilot, lambda: any("already cancelled" in n for n in notes(app)), "the refusal"
            )

    run(main())


# --- lanes ---------------------------------------------------------------------------------------


def test_pause_then_resume_the_selected_items_lane(tmp_path: Path) -> None:
    def paused(store: Store) -> Any:
        return store.value("SELECT paused FROM lane_flags WHERE lane = 'sim'")

    async def main() -> None:
        async with center(tmp_path) as c:
            _rt, store, app, pilot = c
            turn = await running_turn(c, "lane")
            select(app, "turns", turn)
            await pilot.press("p")
            await until(pilot, lambda: paused(store) == 1, "the lane to pause")
            assert entry(store, "lane.paused", "sim")["actor"] == ACTOR
            await until(pilot, lambda: "paused: sim" in header_text(app), "the header")
            await pilot.press("p")
            await until(pilot, lambda: paused(store) == 0, "the lane to resume")
            assert entry(store, "lane.resumed", "sim")["actor"] == ACTOR
            await until(pilot, lambda: "paused" not in header_text(app), "the header")

    run(main())


def test_force_fallback_for_a_lane_and_for_every_lane(tmp_path: Path) -> None:
    def forced(store: Store, lane: str) -> Any:
        return store.value("SELECT force_fallback FROM lane_flags WHERE lane = ?", lane)

    async def main() -> None:
        async with center(tmp_path) as c:
            _rt, store, app, pilot = c
            turn = await running_turn(c, "fb")
            select(app, "turns", turn)
            await pilot.press("f")
            confirm = await screen_is(pilot, app, ConfirmScreen)
            assert "Force fallback for lane sim" in confirm.question
            await pilot.press("y")
            await until(pilot, lambda: forced(store, "sim") == 1, "sim forced")
            on = entry(store, "lane.force_fallback_on", "sim")
            assert on["actor"] == ACTOR and on["payload"] == {"force_fallback": True}
            await until(pilot, lambda: "FORCE FALLBACK: sim" in header_text(app), "the header")

            await pilot.press("F")
            confirm = await screen_is(pilot, app, ConfirmScreen)
            assert "EVERY lane" in confirm.question
            await pilot.press("y")
            await until(pilot, lambda: forced(store, "*") == 1, "every lane forced")
            assert entry(store, "lane.force_fallback_on", "*")["actor"] == ACTOR
            await until(
                pilot, lambda: "FORCE FALLBACK: ALL LANES" in header_text(app), "the header"
            )

            await pilot.press("F")  # again: stop forcing
            confirm = await screen_is(pilot, app, ConfirmScreen)
            assert confirm.question.startswith("Stop forcing")
            await pilot.press("y")
            await until(pilot, lambda: forced(store, "*") == 0, "every lane released")
            assert entry(store, "lane.force_fallback_off", "*")["actor"] == ACTOR
            await until(pilot, lambda: "ALL LANES" not in header_text(app), "the header")
            assert "FORCE FALLBACK: sim" in header_text(app)

    run(main())


def test_the_header_lays_itself_out_again_when_the_terminal_is_resized(tmp_path: Path) -> None:
    async def main() -> None:
        async with center(tmp_path) as c:
            _rt, _store, app, pilot = c
            wide = header_text(app).split("\n")
            assert len(wide) == 2 and wide[1].startswith(" turns ")
            assert all(len(line) <= SIZE[0] for line in wide)
            await pilot.resize_terminal(70, 30)
            await until(pilot, lambda: header_text(app).split("\n") != wide, "a narrow header")
            narrow = header_text(app).split("\n")
            # Still two lines, each within the width: shorter forms, never a figure split.
            assert len(narrow) == 2 and all(len(line) <= 70 for line in narrow), narrow
            assert "approvals 0" in narrow[1] and "alerts 0" in narrow[1]
            await pilot.resize_terminal(*SIZE)
            await until(pilot, lambda: header_text(app).split("\n") == wide, "the wide header")

    run(main())


# --- alerts --------------------------------------------------------------------------------------


def slo_alert(txn: WriteTxn) -> tuple[str, bool]:
    """Open an SLO breach alert, where the runtime's monitor opens them (the runtime's own
    workspace, which every supervisor sees and no command envelope may name)."""
    return open_alert(
        txn, (), workspace=RUNTIME_WORKSPACE, alert_type="slo_breach", severity="warn",
        subject_type="metric", subject_id="failure_rate", dedupe="test:slo",
        message="failure rate 40% over 10%", data={}, actor="test",
    )  # fmt: skip


def test_ack_then_resolve_an_alert(tmp_path: Path) -> None:
    async def main() -> None:
        async with center(tmp_path) as c:
            rt, store, app, pilot = c

            alert_id, opened = await rt.writer.submit(slo_alert)
            assert opened
            await pilot.press("4")
            await listed(pilot, app, "alerts", alert_id)
            await until(pilot, lambda: "alerts 1" in header_text(app), "the header count")
            await pilot.press("o")
            acked = await recorded(pilot, store, "alert.acked", alert_id)
            assert acked["actor"] == ACTOR and acked["from_state"] == "open"
            await until(
                pilot, lambda: pane(app, "alerts").lines[alert_id].state == "acked", "the row"
            )
            await pilot.press("R")
            resolved = await recorded(pilot, store, "alert.resolved", alert_id)
            assert resolved["actor"] == ACTOR and resolved["from_state"] == "acked"
            assert store.value("SELECT state FROM alerts WHERE id = ?", alert_id) == "resolved"

    run(main())


def test_rebaseline_accepts_a_drifted_attested_file_and_resumes_the_lane(tmp_path: Path) -> None:
    prompt = tmp_path / "prompt.md"
    prompt.write_text("You are a careful agent.\n", encoding="utf-8")
    data = config()
    data["lanes"]["sim"].update(attest=[str(prompt)], on_drift="pause")

    async def main() -> None:
        async with center(tmp_path, data) as c:
            _rt, store, app, pilot = c
            await until(pilot, lambda: store.ledger(action="lane.baselined"), "the baseline")
            prompt.write_text("You are a reckless agent.\n", encoding="utf-8")
            alert = await until(
                pilot,
                lambda: store.one("SELECT * FROM alerts WHERE alert_type = 'attested_file' "
                                  "AND state = 'open'"),
                "a drift alert",
            )  # fmt: skip
            await until(
                pilot, lambda: store.value("SELECT paused FROM lane_flags WHERE lane = 'sim'"),
                "drift to pause the lane",
            )  # fmt: skip
            await pilot.press("4")
            await listed(pilot, app, "alerts", alert["id"])
            select(app, "alerts", alert["id"])
            await pilot.press("b")
            confirm = await screen_is(pilot, app, ConfirmScreen)
            assert "lane sim" in confirm.question
            await pilot.press("y")
            rebaselined = await recorded(pilot, store, "lane.rebaselined", "sim")
            assert rebaselined["actor"] == ACTOR
            await until(
                pilot,
                lambda: (
                    store.value("SELECT state FROM alerts WHERE id = ?", alert["id"]) == "resolved"
                ),
                "the alert to resolve",
            )
            assert store.value("SELECT paused FROM lane_flags WHERE lane = 'sim'") == 0
            assert entry(store, "lane.resumed", "sim")["actor"] == ACTOR

    run(main())


# --- the rest ------------------------------------------------------------------------------------


def test_verify_ledger_says_ok(tmp_path: Path) -> None:
    async def main() -> None:
        async with center(tmp_path) as (_rt, store, app, pilot):
            await pilot.press("V")
            [note] = await until(
                pilot, lambda: [n for n in notes(app) if n.startswith("ledger: ledger ok")],
                "the verdict",
            )  # fmt: skip
            verified = int(note.removeprefix("ledger: ledger ok: ").removesuffix(" entries"))
            assert 0 < verified <= store.value("SELECT count(*) FROM ledger")
            assert app.sent == []

    run(main())


def test_filter_shows_only_matching_rows_and_escape_clears_it(tmp_path: Path) -> None:
    async def main() -> None:
        async with center(tmp_path) as c:
            rt, store, app, pilot = c
            alpha = await turn_of(store, await submit_one(rt, task("f1", objective="alpha job")))
            beta = await turn_of(store, await submit_one(rt, task("f2", objective="beta job")))
            await pilot.press("2")
            turns = pane(app, "turns")
            await until(pilot, lambda: {alpha, beta} <= set(turns.lines), "both turns")

            await pilot.press("slash")
            bar = await until(pilot, lambda: isinstance(app.focused, Input) and app.focused, "bar")
            await pilot.press(*"alpha", "enter")  # typed keys are text, not actions (p, a)
            await until(pilot, lambda: set(turns.lines) == {alpha}, "only the alpha turn")
            assert turns.row_count == 1 and "filter: alpha" in str(turns.border_subtitle)
            assert not bar.display and app.focused is turns
            assert app.sent == [] and not store.ledger(action="lane.paused")

            await pilot.press("slash")
            await until(pilot, lambda: app.focused is bar, "the bar again")
            assert bar.value == "alpha"
            await pilot.press("escape")
            await until(pilot, lambda: {alpha, beta} <= set(turns.lines), "every turn again")
            assert turns.filter_text == "" and app.focused is turns

    run(main())


def test_help_lists_the_keys(tmp_path: Path) -> None:
    async def main() -> None:
        async with center(tmp_path) as (_rt, _store, app, pilot):
            await pilot.press("question_mark")
            helper = await screen_is(pilot, app, HelpScreen)
            described = [row[1] for row in helper.rows]
            assert described[: len(ACTIONS)] == [action.description for action in ACTIONS]
            assert described[len(ACTIONS) :] == [row[1] for row in MOVES]
            await pilot.press("escape")
            await until(pilot, lambda: not app.screen.is_modal, "the main screen")

    run(main())


def test_enter_goes_into_the_detail_and_claims_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        async with center(tmp_path) as c:
            _rt, store, app, pilot = c
            _turn, row = await waiting(c, "look")
            view = app.query_one(DetailView)
            await until(pilot, lambda: view.loaded_key == row["id"], "the approval's detail")
            await pilot.press("enter")
            await until(pilot, lambda: app.focused is view, "the detail view focused")
            assert view.item is not None and view.item["tool"] == "deploy"
            await pilot.press("escape")
            await until(pilot, lambda: app.focused is pane(app, "approvals"), "the list again")
            await pilot.pause(0.3)
            assert not store.ledger(action="approval.claimed", subject=row["id"])
            assert approval(store, row["id"])["claimed_by"] is None
            assert app.sent == []

    run(main())


def test_the_command_palette_lists_every_action(tmp_path: Path) -> None:
    async def main() -> None:
        async with center(tmp_path) as (_rt, _store, app, pilot):
            titles = {command.title for command in app.get_system_commands(app.screen)}
            expected = {a.description for a in ACTIONS if a.name not in ("filter", "next_pane")}
            assert expected <= titles

            await pilot.press("ctrl+p")
            palette = await screen_is(pilot, app, CommandPalette)
            await pilot.press(*"Approve")
            results = palette.query_one(CommandList)

            def prompts() -> list[str]:
                return [str(results.get_option_at_index(i).prompt)
                        for i in range(results.option_count)]  # fmt: skip

            found = await until(
                pilot, lambda: [p for p in prompts() if p.startswith("Approve")], "entries"
            )
            assert any(p.startswith("Approve all shown") for p in found), found
            assert any("key a (approvals)" in p for p in found), found
            await pilot.press("escape")

    run(main())


def test_a_new_approval_rings_the_bell_and_shows_a_toast(tmp_path: Path) -> None:
    async def main() -> None:
        async with center(tmp_path) as c:
            _rt, _store, app, pilot = c
            rings: list[None] = []
            app.bell = lambda: rings.append(None)  # type: ignore[method-assign]
            await waiting(c, "ring")
            toast = await until(
                pilot, lambda: [n for n in notes(app) if n.startswith(": new approval:")], "toast"
            )
            assert toast == [": new approval: deploy on sim"]  # one short line, no title
            assert len(rings) == 1

    run(main())


def test_a_keymap_override_rebinds_approve(tmp_path: Path) -> None:
    async def main() -> None:
        async with center(tmp_path, keymap={"approve": "y"}) as c:
            _rt, store, app, pilot = c
            _turn, row = await waiting(c, "remap")
            await pilot.press("a")
            await pilot.pause(0.2)
            assert app.sent == [] and approval(store, row["id"])["state"] == "pending"
            await pilot.press("y")
            decided = await recorded(pilot, store, "approval.approved", row["id"])
            assert decided["actor"] == ACTOR
            footer = app.query_one(KeyFooter)
            assert ("y", "Approve") in footer.shown and "approve" in footer.actions

    run(main())


# --- attached to a daemon in another process -----------------------------------------------------

LABEL = f"{pwd.getpwuid(os.getuid()).pw_name} (uid {os.getuid()})"
"""How the daemon names this OS user on its socket."""


async def attached(state: Path, **options: Any) -> ApiConsole:
    """The console ``attach`` opens on the daemon of ``state``: through its control API."""
    return await ApiConsole.open(ApiAddress(socket_path=state / "quarterdeck.sock"), **options)


def test_a_read_only_console_refuses_and_sends_nothing(tmp_path: Path) -> None:
    """Attached ``--read-only``: the screen refuses the actions and sends nothing (the daemon
    would refuse them too: see the control API's tests)."""
    with headless_runtime(tmp_path) as daemon:
        state = daemon.state_dir

        async def main() -> None:
            async with Client.from_state_dir(state) as client:
                [result] = await client.submit([deploy_task("ro")])
                assert result.status == "accepted", result
            found = wait_until(
                lambda: query(state, "SELECT id FROM approvals WHERE tool = 'deploy'"), 15,
                "the daemon's approval",
            )  # fmt: skip
            approval_id = found[0]["id"]
            app = create_app(await attached(state, read_only=True))
            async with app.run_test(size=SIZE) as pilot:
                await listed(pilot, app, "approvals", approval_id)
                assert "READ-ONLY" in header_text(app)
                await pilot.press("a")
                await until(
                    pilot, lambda: any(n.startswith("read-only:") for n in notes(app)),
                    "the refusal",
                )  # fmt: skip
                await pilot.press("A")
                await pilot.pause(0.1)
                assert not isinstance(app.screen, ConfirmScreen)
                assert app.sent == []
            [row] = query(state, "SELECT state FROM approvals WHERE id = ?", (approval_id,))
            assert row["state"] == "pending"
            assert not query(state, "SELECT seq FROM ledger WHERE action = 'approval.approved'")
            assert not query(state, "SELECT seq FROM ledger WHERE action = 'command.refused'")

        run(main())


def deploy_task(key: str) -> dict[str, Any]:
    """A task on the headless daemon's lane whose agent asks to deploy (which needs approval)."""
    return {
        "idempotency_key": key,
        "workspace": "default",
        "kind": "task",
        "payload": {
            "objective": "ship from afar",
            "lane": "work",
            "input": {"sim": {"latency_ms": 10, "progress": 1, "outcome": "complete",
                              "actions": [{"tool": "deploy", "args": {"env": "prod"}}]}},
        },
    }  # fmt: skip


def test_attached_to_a_headless_daemon_ack_an_alert_about_the_runtime(tmp_path: Path) -> None:
    """The alert belongs to the runtime's workspace, which no envelope may name: the attached
    console sends the acknowledgement as a default-workspace command, and the daemon applies
    it to the runtime's alert."""
    with headless_runtime(tmp_path) as daemon:
        state = daemon.state_dir

        async def main() -> None:
            db = await open_database(str(state / "quarterdeck.db"))
            try:
                async with Writer(db) as writer:
                    alert_id, _ = await writer.submit(slo_alert)
                app = create_app(await attached(state))
                async with app.run_test(size=SIZE) as pilot:
                    await until(
                        pilot, lambda: "daemon alive" in header_text(app), "alive", timeout=15
                    )
                    await pilot.press("4")
                    await until(
                        pilot, lambda: alert_id in pane(app, "alerts").lines,
                        "the alert in the attached pane", timeout=15,
                    )  # fmt: skip
                    select(app, "alerts", alert_id)
                    await pilot.press("o")
                    [sent] = await until(pilot, lambda: app.sent, "the daemon's answer", timeout=15)
                    assert sent["result"]["ok"], sent
                    assert sent["result"]["state"] == "acked"
            finally:
                await db.dispose()
            [acked] = query(
                state, "SELECT workspace, actor FROM ledger WHERE action = 'alert.acked' "
                "AND subject_id = ?", (alert_id,),
            )  # fmt: skip
            assert dict(acked) == {"workspace": RUNTIME_WORKSPACE, "actor": LABEL}

        run(main())


def test_attached_to_a_headless_daemon_approve_reaches_the_agent(tmp_path: Path) -> None:
    envelope = {
        "idempotency_key": "attach-deploy",
        "workspace": "default",
        "kind": "task",
        "payload": {
            "objective": "ship from afar",
            "lane": "work",
            "input": {"sim": {"latency_ms": 10, "progress": 1, "outcome": "complete",
                              "actions": [{"tool": "deploy", "args": {"env": "prod"}}]}},
        },
    }  # fmt: skip

    with headless_runtime(tmp_path) as daemon:
        state = daemon.state_dir

        def one(sql: str, *args: Any) -> Any:
            rows = query(state, sql, args)
            return dict(rows[0]) if rows else None

        async def main() -> None:
            async with Client.from_state_dir(state) as client:
                [result] = await client.submit([envelope])
                assert result.status == "accepted", result
            app = create_app(await attached(state))
            try:
                async with app.run_test(size=SIZE) as pilot:
                    found = await until(
                        pilot, lambda: one("SELECT * FROM approvals WHERE tool = 'deploy'"),
                        "the daemon's approval", timeout=15,
                    )  # fmt: skip
                    await listed(pilot, app, "approvals", found["id"])
                    await until(pilot, lambda: "daemon alive" in header_text(app), "alive")
                    await pilot.press("a")
                    await until(
                        pilot,
                        lambda: one("SELECT state FROM approvals WHERE id = ?", found["id"])
                        == {"state": "approved"},
                        "the daemon to apply the approval", timeout=15,
                    )  # fmt: skip
                    turn = await until(
                        pilot,
                        lambda: one("SELECT * FROM turns WHERE id = ? AND state = 'completed'",
                                    found["turn_id"]),
                        "the turn to complete", timeout=15,
                    )  # fmt: skip
                    assert json.loads(turn["deliverable"])["actions"] == [
                        {"tool": "deploy", "outcome": "approved", "args": {"env": "prod"}}
                    ]
                    decided = one(
                        "SELECT actor FROM ledger WHERE action = 'approval.approved' "
                        "AND subject_id = ?",
                        found["id"],
                    )
                    assert decided == {"actor": LABEL}  # the daemon names who decided
                    # The app hears the command's result through its own wait, which may end a
                    # moment after the daemon's commit is visible here.
                    [sent] = await until(pilot, lambda: app.sent, "the app to hear the result")
                    assert sent["result"]["ok"] and sent["result"]["state"] == "approved"
            finally:
                await app.source.close()

        run(main())
