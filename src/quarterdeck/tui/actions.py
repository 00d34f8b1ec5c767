"""The supervision actions: what the control center does to the runtime, each on the pane that
owns it.

Keys are bound on the app from :mod:`quarterdeck.tui.keymap` (so the footer lists them in the
keymap's order); an action offered on some panes only runs on the pane in view, which takes it
from the mixins here: :class:`ApprovalActions`, :class:`TurnActions`, :class:`LaneActions` and
:class:`AlertActions`. An action reads the pane's selection, asks first when it must, builds its
command with :mod:`quarterdeck.tui.commands` and hands it to :class:`SupervisorApp`, the app's
one way to the runtime, which also holds the runtime-wide actions (force fallback everywhere,
verify the ledger). Actions that change the runtime run as workers, so input never waits on the
store.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from textual import work
from textual.app import App

from quarterdeck.client.console import (
    AlertLine,
    ApprovalLine,
    Console,
    ReadOnly,
    Snapshot,
    remaining_s,
)
from quarterdeck.domain.clock import Clock, format_instant, utc_now
from quarterdeck.domain.states import APPROVAL_OPEN
from quarterdeck.tui import commands
from quarterdeck.tui.commands import Addressed
from quarterdeck.tui.screens import (
    ConfirmScreen,
    JsonEditScreen,
    ReasonScreen,
    SnoozeScreen,
    TextEditScreen,
)
from quarterdeck.tui.table import LivePane, short

REJECT_REASONS = ("unsafe", "wrong_target", "needs_context", "policy", "other")
"""Reject reason codes offered when the runtime names none."""

CLAIM_RENEW_MIN_S = 1.0
"""The shortest wait between two renewals of a claim held while a dialog is open."""


class SupervisorApp(App[None]):
    """The app's side of supervision: the console it is attached to, its one way to send a
    command (the console applies it on an embedded runtime or sends it to a daemon), what it
    sent, and the actions on the whole runtime. The app that composes the screen builds on it.
    """

    def __init__(self, console: Console, *, live: bool) -> None:
        super().__init__()
        self.source = console
        self.live = live
        self.clock: Clock = utc_now
        """The console's current time (the app that composes the screen injects one)."""
        self.snapshot: Snapshot | None = None
        self.sent: list[dict[str, Any]] = []
        """Every command this app sent, with its result (for the record and for tests)."""
        self._decided: set[str] = set()
        """Approvals decided here that the last snapshot still listed."""

    async def refresh_now(self) -> None:
        """Read a snapshot and show it (the app that composes the screen does)."""
        raise NotImplementedError

    # --- sending ---------------------------------------------------------------------------------

    async def command(self, addressed: Addressed) -> dict[str, Any] | None:
        """Send a command; its result, or None (with a notice) when it could not be sent."""
        try:
            result = await self.source.command(addressed.command, addressed.workspace)
        except ReadOnly as exc:
            self.notify(str(exc), title="read-only", severity="error")
            return None
        except Exception as exc:
            self.notify(f"{type(exc).__name__}: {exc}", title="not sent", severity="error")
            return None
        self.sent.append({"payload": addressed.payload(), "result": result})
        return dict(result)

    @work(group="commands")
    async def send(
        self,
        addressed: Addressed,
        done: str,
        after: Callable[[Mapping[str, Any] | None], object] | None = None,
    ) -> None:
        """Send a command and report how it went (then call ``after`` with its result); a
        snapshot confirms it afterwards."""
        result = await self.command(addressed)
        if after is not None:
            after(result)
        if result is None:
            return
        if result.get("ok"):
            self._settled(result)
            self.notify(done + (" (already decided)" if result.get("already") else ""))
        else:
            self.notify("; ".join(result.get("errors", ["refused"])), title="refused",
                        severity="error")  # fmt: skip
        await self.confirm()

    async def confirm(self) -> None:
        """After a command: read a snapshot to confirm what it did, unless the live loop is
        about to (the command's commit wakes it), so keys pressed in a row do not each add a
        read of the store to the loop's."""
        if not self.live:
            await self.refresh_now()

    def hold(self, line: ApprovalLine) -> Callable[[Mapping[str, Any] | None], None]:
        """Claim the approval of ``line`` while a dialog about it is open (sent at once, the
        dialog does not wait for it; a claim someone else holds is shown), renewed before it
        runs out for as long as the dialog stays open. Returns what lets the claim go when the
        dialog closes: with the decision's result when one was sent, nothing is sent when the
        decision settled the approval (which lets go of its claim)."""
        claiming = self.run_worker(self._claim(line), group="claims")
        renewing = self.run_worker(self._renew(line, claiming.wait()), group="claims")

        def let_go(result: Mapping[str, Any] | None = None) -> None:
            renewing.cancel()
            if result and result.get("ok") and result.get("state") not in APPROVAL_OPEN:
                return
            self.run_worker(self._unclaim(line, claiming.wait()), group="claims")

        return let_go

    async def _claim(self, line: ApprovalLine, *, quiet: bool = False) -> str | None:
        """Claim; when this console now holds the claim, the time it runs out (else None)."""
        result = await self.command(commands.claim(line.id, workspace=line.workspace))
        if result is None:
            return None
        if not result.get("ok"):
            if not quiet:
                self.notify("; ".join(result.get("errors", ["refused"])), title="not claimed",
                            severity="warning")  # fmt: skip
            return None
        if result.get("already"):
            return None
        return str(result.get("claim_expires_at") or "") or None

    async def _renew(self, line: ApprovalLine, claimed: Awaitable[str | None]) -> None:
        """Claim again each time half of the claim's time has passed, until cancelled (the
        dialog closed) or the claim is no longer this console's to renew."""
        until = await claimed
        while until is not None:
            left = remaining_s(until, self.clock())
            await asyncio.sleep(max(CLAIM_RENEW_MIN_S, (left or 0.0) / 2))
            until = await self._claim(line, quiet=True)

    async def _unclaim(self, line: ApprovalLine, claimed: Awaitable[str | None]) -> None:
        """Let go of the claim once it is known to be held."""
        if await claimed:
            await self.command(commands.unclaim(line.id, workspace=line.workspace))

    def writable(self) -> bool:
        """Whether actions may change the runtime (else say why not)."""
        if self.source.read_only:
            self.notify(
                "attached with --read-only: no actions",
                title="read-only", severity="error",
            )  # fmt: skip
            return False
        return True

    def _settled(self, result: Mapping[str, Any]) -> None:
        """Show a decided approval as decided at once (the runtime committed it; the next
        snapshot agrees)."""
        approval = result.get("approval")
        if self.snapshot is None or not approval or result.get("state") in APPROVAL_OPEN:
            return
        self._decided.add(str(approval))
        remaining = tuple(line for line in self.snapshot.approvals if line.id != approval)
        if len(remaining) != len(self.snapshot.approvals):
            self.snapshot = replace(self.snapshot, approvals=remaining)
            self.query_one("#approvals", LivePane).discard(str(approval))

    def undecided(self, snapshot: Snapshot) -> Snapshot:
        """A snapshot just read, without the approvals decided here that it still lists (it
        was read before their commits), so that a decided row does not come back for a
        moment."""
        listed = {line.id for line in snapshot.approvals}
        self._decided &= listed  # a snapshot without them was read after: they are done with
        if not self._decided:
            return snapshot
        kept = tuple(line for line in snapshot.approvals if line.id not in self._decided)
        return replace(snapshot, approvals=kept)

    def ask(self, question: str, button: str, then: Callable[[], object]) -> None:
        """Ask ``question`` (Cancel is the default); on yes, call ``then()``."""

        def confirmed(yes: bool | None) -> None:
            if yes:
                then()

        self.push_screen(ConfirmScreen(question, button), confirmed)

    # --- the whole runtime -----------------------------------------------------------------------

    def action_fallback_all(self) -> None:
        """Force (or stop forcing) fallback on every lane, after confirmation."""
        if not self.writable():
            return
        on = not (self.snapshot is not None and self.snapshot.header.force_all)
        verb = "Force" if on else "Stop forcing"
        self.ask(
            f"{verb} fallback on EVERY lane?",
            verb,
            lambda: self.send(commands.force_fallback_all(on=on),
                              f"force fallback {'on' if on else 'off'} for every lane"),
        )  # fmt: skip

    @work(group="verify")
    async def action_verify(self) -> None:
        """Verify the ledger's chain."""
        self.notify("verifying the ledger…")
        result = await self.source.verify_ledger()
        if result["ok"]:
            self.notify(f"ledger ok: {result['entries']} entries", title="ledger")
        else:
            self.notify(f"ledger broken at seq {result['first_bad_seq']}: {result['reason']}",
                        title="ledger", severity="error", timeout=30)  # fmt: skip


class PaneActions:
    """What the panes' action mixins share: the app they act through and the item under the
    cursor (both given by the pane they are mixed into)."""

    if TYPE_CHECKING:
        app: App[object]

        def selected(self) -> Any:
            """The item under the cursor."""

    @property
    def supervisor(self) -> SupervisorApp:
        """The app, as the actions use it."""
        app = self.app
        assert isinstance(app, SupervisorApp)
        return app


class ApprovalActions(PaneActions):
    """The approvals pane's actions: approve (as asked, with edited arguments, or every one
    shown), reject with a reason code, escalate, snooze."""

    if TYPE_CHECKING:
        lines: dict[str, Any]

    def _approval(self) -> ApprovalLine | None:
        line: ApprovalLine | None = self.selected()
        if line is None:
            self.supervisor.notify("no approval selected", severity="warning")
        return line

    def action_approve(self) -> None:
        """Approve the selected approval."""
        line = self._approval()
        if line is not None and self.supervisor.writable():
            self.supervisor.send(_approve(line), f"approved {line.tool} ({short(line.id)})")

    def action_edit_approve(self) -> None:
        """Edit the arguments (validated JSON), then approve with them; the approval is
        claimed while the editor is open."""
        line = self._approval()
        app = self.supervisor
        if line is None or not app.writable():
            return
        let_go = app.hold(line)

        def sent(value: dict[str, Any] | None) -> None:
            if value is None:
                let_go(None)
            else:
                app.send(_approve(line, value), f"approved {line.tool} with edits", let_go)

        app.push_screen(JsonEditScreen(f"Edit {line.tool} arguments", json.loads(line.args)), sent)

    def action_reject(self) -> None:
        """Reject with a reason code picked by one key; the approval is claimed while the
        picker is open."""
        line = self._approval()
        app = self.supervisor
        if line is None or not app.writable():
            return
        codes = (app.snapshot.reject_reasons if app.snapshot else ()) or REJECT_REASONS
        let_go = app.hold(line)

        def sent(choice: tuple[str, str] | None) -> None:
            if choice is None:
                let_go(None)
                return
            code, note = choice
            payload = commands.reject(line.id, action_key=line.action_key, reason_code=code,
                                      workspace=line.workspace, reason=note)  # fmt: skip
            app.send(payload, f"rejected {line.tool}: {code}", let_go)

        app.push_screen(ReasonScreen(codes), sent)

    def action_escalate(self) -> None:
        """Escalate the selected approval."""
        line = self._approval()
        if line is not None and self.supervisor.writable():
            self.supervisor.send(
                commands.escalate(line.id, workspace=line.workspace), f"escalated {line.tool}"
            )

    def action_snooze(self) -> None:
        """Snooze the selected approval for a duration picked in a dialog that shows its
        deadline."""
        line = self._approval()
        app = self.supervisor
        if line is None or not app.writable():
            return

        def picked(seconds: int | None) -> None:
            if seconds is not None:
                app.send(
                    commands.snooze(line.id, for_s=seconds, workspace=line.workspace),
                    f"snoozed {line.tool} for {duration(seconds)}",
                )

        now = app.clock()
        subject = f"{line.tool} on {line.lane}"
        app.push_screen(SnoozeScreen(subject, deadline_text(line, now)), picked)

    def action_approve_all(self) -> None:
        """Approve every approval shown (after confirmation), each on its own record."""
        lines: list[ApprovalLine] = list(self.lines.values())
        if not lines or not self.supervisor.writable():
            return
        self.supervisor.ask(
            f"Approve all {len(lines)} approvals shown?",
            "Approve all",
            lambda: self._approve_each(lines),
        )

    @work(group="commands")
    async def _approve_each(self, lines: list[ApprovalLine]) -> None:
        app = self.supervisor
        done = 0
        for line in lines:
            result = await app.command(_approve(line))
            done += bool(result and result.get("ok") and not result.get("already"))
        app.notify(f"approved {done} of {len(lines)}")
        await app.confirm()


def duration(seconds: int) -> str:
    """A snooze's duration as it reads (5m, 1h)."""
    return f"{seconds // 3600}h" if seconds % 3600 == 0 else f"{seconds // 60}m"


def deadline_text(line: ApprovalLine, now: datetime) -> str:
    """An approval's deadline as the snooze dialog shows it: when, how far off, and a snooze
    running now."""
    left = remaining_s(line.deadline_at, now)
    text = f"deadline {line.deadline_at[11:19]} UTC"
    if left is not None:
        text += f" (in {int(left) // 60}m{int(left) % 60:02d}s)" if left > 0 else " (overdue)"
    if line.snoozed_until and line.snoozed_until > format_instant(now):
        text += f" · snoozed until {line.snoozed_until[11:19]}"
    return text


def _approve(line: ApprovalLine, args: Mapping[str, Any] | None = None) -> Addressed:
    """The command approving ``line`` (with edited arguments when ``args`` is given)."""
    return commands.approve(line.id, action_key=line.action_key, workspace=line.workspace,
                            args=args)  # fmt: skip


class TurnActions(PaneActions):
    """Actions on the turn of the selected item: take over (then write its deliverable),
    complete a turn you hold, release it, requeue a held one, cancel."""

    def selected_turn(self) -> str | None:
        """The turn of the item under the cursor (the turns pane: the item itself)."""
        line = self.selected()
        turn = getattr(line, "turn_id", None) if line is not None else None
        return str(turn) if turn else None

    def _turn_workspace(self, turn: str) -> str:
        """The workspace of the selected item's turn (turn commands are applied in it): the
        line's own, else (a mission) its turn's as last read."""
        workspace = getattr(self.selected(), "workspace", None)
        if workspace:
            return str(workspace)
        snapshot = self.supervisor.snapshot
        turns = snapshot.turns if snapshot is not None else ()
        return next((line.workspace for line in turns if line.id == turn), "default")

    def _confirm_for_turn(
        self, question: str, button: str, then: Callable[[str, str], object]
    ) -> None:
        """Ask ``question`` (``{turn}`` is the selected turn's short id); on yes, call
        ``then(turn, workspace)``."""
        turn = self.selected_turn()
        if turn is None or not self.supervisor.writable():
            return
        workspace = self._turn_workspace(turn)
        self.supervisor.ask(
            question.format(turn=short(turn)), button, lambda: then(turn, workspace)
        )

    def action_takeover(self) -> None:
        """Take the selected turn over (after confirmation), then write its deliverable."""
        self._confirm_for_turn(
            "Take over turn {turn}? Its agent is stopped.", "Take over", self._take_over
        )

    @work(group="commands")
    async def _take_over(self, turn: str, workspace: str) -> None:
        app = self.supervisor
        result = await app.command(commands.take_over(turn, workspace=workspace))
        if result is None:
            return
        if not result.get("ok"):
            app.notify("; ".join(result.get("errors", [])), title="refused", severity="error")
            return
        app.notify(f"you hold turn {short(turn)}")
        await app.confirm()
        self._write_deliverable(turn, workspace)

    def _write_deliverable(self, turn: str, workspace: str) -> None:
        app = self.supervisor

        def written(text: str | None) -> None:
            if text is not None:
                app.send(commands.complete(turn, text=text, workspace=workspace),
                         f"completed turn {short(turn)}")  # fmt: skip

        app.push_screen(TextEditScreen(f"Deliverable for turn {short(turn)}"), written)

    def action_complete(self) -> None:
        """Write the deliverable for a turn you hold."""
        turn = self.selected_turn()
        if turn is not None and self.supervisor.writable():
            self._write_deliverable(turn, self._turn_workspace(turn))

    def action_release(self) -> None:
        """Hand a turn you hold back to its lane."""
        turn = self.selected_turn()
        if turn is not None and self.supervisor.writable():
            workspace = self._turn_workspace(turn)
            self.supervisor.send(
                commands.release(turn, workspace=workspace), f"released {short(turn)}"
            )

    def action_requeue(self) -> None:
        """Give the selected held (dead-lettered) turn a fresh try on its lane."""
        turn = self.selected_turn()
        if turn is not None and self.supervisor.writable():
            workspace = self._turn_workspace(turn)
            self.supervisor.send(
                commands.requeue(turn, workspace=workspace), f"requeued {short(turn)}"
            )

    def action_cancel_turn(self) -> None:
        """Cancel the selected turn (after confirmation): its agent is stopped and its open
        approvals are rejected."""

        def cancel(turn: str, workspace: str) -> None:
            self.supervisor.send(
                commands.cancel(turn, workspace=workspace), f"cancelled {short(turn)}"
            )

        self._confirm_for_turn(
            "Cancel turn {turn}? Its agent is stopped and it gets no deliverable.",
            "Yes, cancel it",
            cancel,
        )


class LaneActions(PaneActions):
    """Actions on the lane of the selected item: pause or resume it, force fallback for it."""

    def _selected_lane(self) -> str | None:
        line = self.selected()
        lane = getattr(line, "lane", None) or getattr(line, "subject_id", None)
        return str(lane) if lane else None

    def action_pause_lane(self) -> None:
        """Pause the selected item's lane, or resume it when paused."""
        lane = self._selected_lane()
        app = self.supervisor
        if lane is None or not app.writable():
            return
        if app.snapshot is not None and lane in app.snapshot.header.paused:
            app.send(commands.resume_lane(lane), f"resumed lane {lane}")
        else:
            app.send(commands.pause_lane(lane), f"paused lane {lane}")

    def action_fallback_lane(self) -> None:
        """Force (or stop forcing) fallback for the selected item's lane, after confirmation."""
        lane = self._selected_lane()
        app = self.supervisor
        if lane is None or not app.writable():
            return
        on = not (app.snapshot is not None and lane in app.snapshot.header.forced)
        verb = "Force" if on else "Stop forcing"
        app.ask(
            f"{verb} fallback for lane {lane}?",
            verb,
            lambda: app.send(commands.force_fallback(lane, on=on),
                             f"force fallback {'on' if on else 'off'} for {lane}"),
        )  # fmt: skip


class AlertActions(PaneActions):
    """The alerts pane's actions: acknowledge, resolve, rebaseline the alert's lane."""

    def _alert(self) -> AlertLine | None:
        line: AlertLine | None = self.selected()
        if line is None:
            self.supervisor.notify("no alert selected", severity="warning")
        return line

    def action_ack(self) -> None:
        """Acknowledge the selected alert."""
        line = self._alert()
        if line is not None and self.supervisor.writable():
            self.supervisor.send(
                commands.ack(line.id, workspace=line.workspace), f"acknowledged {line.alert_type}"
            )

    def action_resolve(self) -> None:
        """Resolve the selected alert."""
        line = self._alert()
        if line is not None and self.supervisor.writable():
            self.supervisor.send(
                commands.resolve(line.id, workspace=line.workspace), f"resolved {line.alert_type}"
            )

    def action_rebaseline(self) -> None:
        """Accept the selected alert's lane's attested files as they are now."""
        line = self._alert()
        app = self.supervisor
        if line is None or not app.writable():
            return
        lane = line.subject_id
        app.ask(
            f"Accept lane {lane}'s attested files as they are now?",
            "Rebaseline",
            lambda: app.send(commands.rebaseline(lane), f"rebaselined {lane}"),
        )
