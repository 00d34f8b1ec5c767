"""The master-detail layout of the control center, driven with Textual's pilot against a real
runtime on a real SQLite file: the selected approval's whole context beside the list, live;
acting from the detail; viewing claims nothing, an edit or a reject claims the approval while
its dialog is open and lets go when it closes; at 80x24 ``enter`` shows the detail instead of
the list and ``escape`` brings the list back. Checked by what the runtime recorded (rows and
ledger entries), not only by what the screen shows.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tests.conftest import run
from tests.test_runtime import config, person, runtime, submit_one, turn_of
from tests.test_supervision import acting, approval_of, policy
from tests.test_tui_actions import (
    ACTOR,
    POLICY,
    Center,
    approval,
    listed,
    notes,
    pane,
    recorded,
    replace_text,
    screen_is,
    select,
    until,
    waiting,
)
from textual.widgets import Static, TextArea

from quarterdeck.client.console import EmbeddedConsole
from quarterdeck.domain.clock import format_instant, utc_now
from quarterdeck.domain.commands import ApprovalClaim
from quarterdeck.tui.app import create_app
from quarterdeck.tui.detail import DetailView, MasterDetail
from quarterdeck.tui.screens import DetailScreen, JsonEditScreen, ReasonScreen, SnoozeScreen
from quarterdeck.tui.table import LivePane

SMALL = (80, 24)
LARGE = (120, 40)
LONG = "notifications-and-billing-gateway-eu-west-1"
"""An argument longer than the list's Arguments column."""


@contextlib.asynccontextmanager
async def center(tmp_path: Path, size: tuple[int, int], **top: Any) -> AsyncIterator[Center]:
    """A runtime on ``tmp_path`` (``top`` on top of its configuration) and the control center
    on it, at ``size``."""
    async with runtime(tmp_path, config(**top), policy=policy(POLICY)) as (rt, store):
        app = create_app(EmbeddedConsole(rt, principal=person(ACTOR)))
        async with app.run_test(size=size) as pilot:
            await until(
                pilot,
                lambda: app.snapshot is not None and isinstance(app.focused, LivePane),
                "the first snapshot",
            )
            yield rt, store, app, pilot


def view_of(c: Center) -> DetailView:
    return c[2].query_one(DetailView)


async def showing(c: Center, key: str) -> DetailView:
    """Wait until the detail view shows what the store holds of ``key``."""
    view = view_of(c)
    await until(c[3], lambda: view.loaded_key == key and view.settled, f"the detail of {key}")
    return view


def sla_seconds(text: str) -> int:
    found = re.search(r"SLA (\d+)m(\d\d)s left", text)
    assert found, text
    return int(found[1]) * 60 + int(found[2])


async def settled_claims(c: Center) -> None:
    """Wait until the claims the app sent (and let go of) are done with."""
    app, pilot = c[2], c[3]
    await until(
        pilot, lambda: not [w for w in app.workers if w.group == "claims" and w.is_running],
        "the claims settled",
    )  # fmt: skip
    await pilot.pause(0.2)


def claims(store: Any, approval_id: str) -> list[str]:
    """The claim entries on the ledger for the approval, in order."""
    return [
        entry["action"]
        for entry in store.ledger(subject=approval_id)
        if entry["action"] in ("approval.claimed", "approval.unclaimed")
    ]


def test_beside_the_list_the_whole_request_live_and_viewing_claims_nothing(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with center(tmp_path, LARGE) as c:
            rt, store, app, pilot = c
            _turn, first = await waiting(c, "one", env="prod", service=LONG, replicas=12)
            _turn, second = await waiting(c, "two", env="staging")
            split = app.query_one(MasterDetail)
            view = view_of(c)
            assert split.split and view.display and pane(app, "approvals").display
            select(app, "approvals", first["id"])
            view = await showing(c, first["id"])
            text = view.shown
            # The full arguments, pretty-printed, first; then the SLA, the turn's objective,
            # the rule trace one line per rule.
            assert text.index("deploy") < text.index(f'"service": "{LONG}"') < text.index("SLA")
            assert '"replicas": 12' in text and "objective one" in text
            assert "✓ deploys: " in text and "rule trace" in text
            assert "unclaimed" in text

            # Live: the SLA ticks, and someone else's claim shows without a key pressed.
            before = sla_seconds(view.shown)
            await until(pilot, lambda: sla_seconds(view.shown) < before, "the SLA ticking")
            claim = ApprovalClaim(approval_id=first["id"])
            result = await rt.command("w", claim, person("bob"))
            assert result["ok"], result
            await until(pilot, lambda: "claimed by bob" in view.shown, "bob's claim shown")

            # The cursor moves: the detail follows.
            select(app, "approvals", second["id"])
            view = await showing(c, second["id"])
            assert '"env": "staging"' in view.shown and LONG not in view.shown
            assert claims(store, second["id"]) == [] and app.sent == []

    run(main())


def test_at_80x24_enter_shows_the_detail_instead_of_the_list_and_escape_brings_it_back(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with center(tmp_path, SMALL) as c:
            _rt, store, app, pilot = c
            _turn, row = await waiting(c, "small", env="prod", service=LONG)
            split = app.query_one(MasterDetail)
            view = view_of(c)
            assert not split.split and not view.display  # the list alone
            await pilot.press("enter")
            await until(pilot, lambda: app.focused is view, "the detail view focused")
            assert view.display and not app.query_one("#panes").display
            view = await showing(c, row["id"])
            assert f'"service": "{LONG}"' in view.shown
            await pilot.press("escape")
            await until(pilot, lambda: app.focused is pane(app, "approvals"), "the list")
            assert not view.display and app.query_one("#panes").display
            # A pane key from the detail goes to that pane's list.
            await pilot.press("enter")
            await until(pilot, lambda: app.focused is view, "the detail view again")
            await pilot.press("2")
            await until(pilot, lambda: app.focused is pane(app, "turns"), "the Turns list")
            assert not view.display
            assert claims(store, row["id"]) == []

    run(main())


def test_deciding_the_oldest_approval_with_its_arguments_on_screen_takes_two_keys_at_80x24(
    tmp_path: Path,
) -> None:
    """From start at 80x24: ``enter`` (the detail with the full arguments), ``a``: approved;
    at 120x40 the detail is already shown and ``a`` alone decides."""

    async def main() -> None:
        for size, keys in ((SMALL, ("enter", "a")), (LARGE, ("a",))):
            async with center(tmp_path / f"{size[0]}", size) as c:
                _rt, store, app, pilot = c
                _turn, oldest = await waiting(c, "oldest", env="prod", service=LONG)
                _turn, newer = await waiting(c, "newer", env="prod")
                table = pane(app, "approvals")
                assert table.selected_key() == oldest["id"]  # the first row, selected
                *before, last = keys
                await pilot.press(*before)
                view = await showing(c, oldest["id"])
                assert view.display and f'"service": "{LONG}"' in view.shown
                await pilot.press(last)
                decided = await recorded(pilot, store, "approval.approved", oldest["id"])
                assert decided["actor"] == ACTOR
                assert approval(store, newer["id"])["state"] == "pending"

    run(main())


def test_every_approval_key_acts_from_the_detail(tmp_path: Path) -> None:
    async def main() -> None:
        async with center(tmp_path, SMALL) as c:
            _rt, store, app, pilot = c
            view = view_of(c)
            _turn, first = await waiting(c, "x1")
            await pilot.press("enter")
            await until(pilot, lambda: app.focused is view, "the detail view")
            await pilot.press("x")
            await recorded(pilot, store, "approval.escalated", first["id"])
            assert approval(store, first["id"])["level"] == 1
            await pilot.press("z")
            await screen_is(pilot, app, SnoozeScreen)
            await pilot.press("1")  # five minutes
            await recorded(pilot, store, "approval.snoozed", first["id"])
            await until(pilot, lambda: app.focused is view, "back in the detail view")
            await pilot.press("r")
            await screen_is(pilot, app, ReasonScreen)
            await pilot.press("1")
            rejected = await recorded(pilot, store, "approval.rejected", first["id"])
            assert rejected["actor"] == ACTOR and rejected["payload"]["reason_code"] == "unsafe"
            await until(pilot, lambda: app.focused is view, "back in the detail view")
            assert approval(store, first["id"])["state"] == "rejected"

    run(main())


def test_an_edit_claims_while_the_editor_is_open_and_lets_go_when_it_closes(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with center(tmp_path, SMALL) as c:
            _rt, store, app, pilot = c
            view = view_of(c)
            _turn, row = await waiting(c, "edit", env="prod")
            await pilot.press("enter")
            await until(pilot, lambda: app.focused is view, "the detail view")
            await showing(c, row["id"])
            assert claims(store, row["id"]) == []

            # Cancelled: claimed while open, let go on escape.
            await pilot.press("e")
            await screen_is(pilot, app, JsonEditScreen)
            claimed = await recorded(pilot, store, "approval.claimed", row["id"])
            assert claimed["actor"] == ACTOR
            assert approval(store, row["id"])["claimed_by"] == ACTOR
            await until(pilot, lambda: "claimed by tess" in view.shown, "the claim shown")
            await pilot.press("escape")
            await recorded(pilot, store, "approval.unclaimed", row["id"])
            assert approval(store, row["id"])["claimed_by"] is None
            assert approval(store, row["id"])["state"] == "pending"

            # Done: the decision lets go of the claim (no unclaim needed).
            await until(pilot, lambda: app.focused is view, "back in the detail view")
            await pilot.press("e")
            editor = (await screen_is(pilot, app, JsonEditScreen)).query_one("#editor", TextArea)
            await until(pilot, lambda: len(claims(store, row["id"])) == 3, "the second claim")
            await replace_text(pilot, editor, '{"env": "staging"}')
            await pilot.press("ctrl+s")
            await recorded(pilot, store, "approval.edited", row["id"])
            await settled_claims(c)
            assert approval(store, row["id"])["claimed_by"] is None
            assert claims(store, row["id"]) == [
                "approval.claimed", "approval.unclaimed", "approval.claimed",
            ]  # fmt: skip

    run(main())


def test_a_claim_is_renewed_while_the_dialog_stays_open_and_not_after(tmp_path: Path) -> None:
    async def main() -> None:
        async with center(tmp_path, LARGE, claim_s=2) as c:
            _rt, store, app, pilot = c
            _turn, row = await waiting(c, "slow")
            await pilot.press("e")
            await screen_is(pilot, app, JsonEditScreen)
            await recorded(pilot, store, "approval.claimed", row["id"])
            # Three times the claim's length later, the person still holds it.
            await pilot.pause(6.0)
            renewals = claims(store, row["id"])
            assert renewals.count("approval.claimed") >= 3, renewals
            assert "approval.unclaimed" not in renewals
            held = approval(store, row["id"])
            assert held["claimed_by"] == ACTOR
            assert held["claim_expires_at"] > format_instant(utc_now())

            await pilot.press("escape")
            await recorded(pilot, store, "approval.unclaimed", row["id"])
            await settled_claims(c)
            after = claims(store, row["id"])
            await pilot.pause(2.5)
            assert claims(store, row["id"]) == after and after[-1] == "approval.unclaimed"
            assert approval(store, row["id"])["claimed_by"] is None

    run(main())


def test_a_reject_claims_while_the_picker_is_open_and_someone_elses_claim_is_respected(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with center(tmp_path, LARGE) as c:
            rt, store, app, pilot = c
            _turn, row = await waiting(c, "rej")
            await pilot.press("r")
            await screen_is(pilot, app, ReasonScreen)
            await recorded(pilot, store, "approval.claimed", row["id"])
            await pilot.press("escape")
            await recorded(pilot, store, "approval.unclaimed", row["id"])
            assert approval(store, row["id"])["claimed_by"] is None

            # Bob holds it: the picker says so, and leaving it takes nothing from bob.
            result = await rt.command("w", ApprovalClaim(approval_id=row["id"]), person("bob"))
            assert result["ok"], result
            await pilot.press("r")
            await screen_is(pilot, app, ReasonScreen)
            await until(
                pilot, lambda: any("claimed by bob" in note for note in notes(app)), "the notice"
            )
            await pilot.press("escape")
            await settled_claims(c)
            assert approval(store, row["id"])["claimed_by"] == "bob"
            assert claims(store, row["id"]) == [
                "approval.claimed", "approval.unclaimed", "approval.claimed",
            ]  # fmt: skip
            assert [e["actor"] for e in store.ledger(subject=row["id"])
                    if e["action"] == "approval.claimed"][-1] == "bob"  # fmt: skip

    run(main())


def test_the_ledger_detail_of_an_open_approval_offers_its_actions_and_runs_them(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with center(tmp_path, LARGE) as c:
            _rt, store, app, pilot = c
            _turn, row = await waiting(c, "from-ledger", env="prod", service=LONG)
            await pilot.press("5")
            ledger = pane(app, "ledger")

            def requested() -> str | None:
                return next(
                    (key for key, line in ledger.lines.items()
                     if line.action == "approval.requested" and line.subject_id == row["id"]),
                    None,
                )  # fmt: skip

            key = await until(pilot, requested, "the request on the ledger")
            ledger.move_cursor(ledger.get_row_index(key))
            await pilot.press("enter")
            screen = await screen_is(pilot, app, DetailScreen)
            body = str(screen.query_one("#detail-body", Static).content)
            assert f'"service": "{LONG}"' in body
            offered = set(screen.active_bindings)
            assert {"a", "e", "r", "x", "z"} <= offered and "A" not in offered
            await pilot.press("a")
            decided = await recorded(pilot, store, "approval.approved", row["id"])
            assert decided["actor"] == ACTOR
            assert app.current == "approvals" and not app.screen.is_modal
            assert claims(store, row["id"]) == []

    run(main())


def test_the_detail_shows_what_the_agent_did_before_asking(tmp_path: Path) -> None:
    async def main() -> None:
        async with center(tmp_path, LARGE) as c:
            rt, store, app, pilot = c
            envelope = acting(
                "before",
                {"tool": "read_file", "args": {"path": "notes.md"}},
                {"tool": "deploy", "args": {"env": "prod"}},
            )
            turn = await turn_of(store, await submit_one(rt, envelope))
            row = await approval_of(store, turn)
            await listed(pilot, app, "approvals", row["id"])
            view = await showing(c, row["id"])
            text = view.shown
            assert "objective before" in text
            before = text.index("before the request")
            assert text.index('read_file {"path": "notes.md"} → allow') > before
            assert "deploy" not in text[before:].split("\n\n")[0].split("\n", 1)[1]

    run(main())
