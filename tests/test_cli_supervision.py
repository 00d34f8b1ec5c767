"""The supervision commands of the CLI, each against a real headless runtime in another process
(one per module, on SQLite and on PostgreSQL): its happy path and its refusal path. Every
command goes through the daemon's control API: as the OS user on the state directory's socket,
or as a named person (``by="alice"``) with a bearer token over TCP (``token:alice`` on the
ledger).

Exit codes: 0 applied, 1 refused (each error on stderr), 2 usage error, 3 no daemon.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import quarterdeck, run
from tests.headless import Headless, headless_runtime, query, wait_until

from quarterdeck.domain.clock import parse_instant
from quarterdeck.domain.envelope import RUNTIME_WORKSPACE
from quarterdeck.domain.ids import short_id
from quarterdeck.store.alerts import open_alert
from quarterdeck.store.database import open_database
from quarterdeck.store.writer import Writer, WriteTxn

UNKNOWN = " (not a full id, short id or prefix of one in scope)"
"""How an id that names nothing in the command's workspace is refused (after the id)."""
REASONS = ("unsafe", "wrong_target", "needs_context", "policy", "other")


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory, module_database: str) -> Iterator[Headless]:
    """One headless runtime for the module, on SQLite and on PostgreSQL."""
    root = tmp_path_factory.mktemp("cli-supervision")
    with headless_runtime(
        root, db=module_database, run_args=("--listen", "127.0.0.1:0")
    ) as started:
        yield started


def cli(runtime: Headless, *args: str, by: str | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run a command as the OS user (on the state directory's socket), or as ``token:<by>``
    over TCP."""
    return runtime.cli(*args, by=by)


def applied(runtime: Headless, *args: str, by: str | None = None) -> dict[str, Any]:
    """Run a command that must be applied (exit 0); its printed result."""
    result = cli(runtime, *args, by=by)
    assert result.returncode == 0, result.stderr.decode()
    answer: dict[str, Any] = json.loads(result.stdout)
    assert answer["ok"] is True
    return answer


def refused(runtime: Headless, *args: str, by: str | None = None) -> list[str]:
    """Run a command that must be refused (exit 1); its stderr lines."""
    result = cli(runtime, *args, by=by)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert json.loads(result.stdout)["ok"] is False
    lines = result.stderr.decode().splitlines()
    assert lines and all(line.startswith("quarterdeck: refused: ") for line in lines), lines
    return lines


def usage_error(runtime: Headless, *args: str) -> str:
    result = cli(runtime, *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    err = result.stderr.decode()
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


def open_approvals(
    runtime: Headless, tool: str, count: int = 1, *, workspace: str = "default", lane: str = "sdk"
) -> list[str]:
    """Open ``count`` SDK approvals for ``tool``; their ids. They are asked on the database
    path, so that their requester is not the OS user who decides them here."""

    async def main() -> list[str]:
        async with runtime.client(workspace=workspace, daemon=False) as client:
            ids = []
            for _ in range(count):
                result = await client.command(
                    {"command": "approval.request", "action_id": str(uuid.uuid4()), "tool": tool,
                     "lane": lane, "args": {"n": 1}}
                )  # fmt: skip
                assert result["verdict"] == "pending", result
                ids.append(str(result["approval"]))
            return ids

    return run(main())


def new_turns(
    runtime: Headless, count: int, lane: str = "held", task_input: dict[str, Any] | None = None
) -> list[str]:
    """Submit ``count`` tasks (by default to the paused lane ``held``, where their turns stay
    queued); the ids of their turns."""

    async def main() -> list[str]:
        async with runtime.client() as client:
            tasks = [
                {"idempotency_key": str(uuid.uuid4()), "workspace": "default", "kind": "task",
                 "payload": {"lane": lane, "objective": "wait",
                             "input": {"i": i, **(task_input or {})}}}
                for i in range(count)
            ]  # fmt: skip
            results = await client.submit(tasks)
        return [result.receipt for result in results]

    receipts = run(main())

    def turns() -> list[str] | None:
        rows = query(
            runtime,
            f"SELECT produced_id FROM receipts WHERE id IN ({', '.join('?' * len(receipts))}) "
            "AND produced_type = 'turn'",
            tuple(receipts),
        )
        return [row["produced_id"] for row in rows] if len(rows) == len(receipts) else None

    return wait_until(turns, 10, "the turns")


def turn_state(runtime: Headless, turn_id: str) -> Any:
    return query(runtime, "SELECT * FROM turns WHERE id = ?", (turn_id,))[0]


def flags(runtime: Headless, lane: str) -> Any:
    return query(runtime, "SELECT * FROM lane_flags WHERE lane = ?", (lane,))[0]


# --- approvals ---------------------------------------------------------------------------------


def test_approve(runtime: Headless) -> None:
    plain, edited = open_approvals(runtime, "deploy", 2)
    answer = applied(runtime, "approve", plain, "--note", "looks fine", by="alice")
    assert (answer["state"], answer["decided_by"], answer["reason"]) == (
        "approved", "token:alice", "looks fine",
    )  # fmt: skip
    answer = applied(runtime, "approve", edited, "--edit", '{"n": 2}')
    assert (answer["state"], answer["effective_args"]) == ("edited", {"n": 2})
    assert refused(runtime, "approve", "no-such-id") == [
        f"quarterdeck: refused: no approval 'no-such-id'{UNKNOWN}"
    ]
    assert "expected a JSON object" in usage_error(runtime, "approve", plain, "--edit", "[1]")
    assert "give an approval ID" in usage_error(runtime, "approve")
    assert "only go with --all" in usage_error(runtime, "approve", plain, "--lane", "x")


def test_reject(runtime: Headless) -> None:
    [approval] = open_approvals(runtime, "deploy")
    [line] = refused(runtime, "reject", approval, "--reason", "bogus")
    assert line == ("quarterdeck: refused: reason code 'bogus' is not one of " + ", ".join(REASONS))
    answer = applied(runtime, "reject", approval, "--reason", "unsafe", "--note", "no")
    assert (answer["state"], answer["reason_code"], answer["reason"]) == (
        "rejected",
        "unsafe",
        "no",
    )
    assert "--reason" in usage_error(runtime, "reject", approval)


def test_escalate(runtime: Headless) -> None:
    [approval] = open_approvals(runtime, "release")
    answer = applied(runtime, "escalate", approval)
    assert (answer["state"], answer["level"], answer["approver"]) == ("escalated", 1, "oncall")
    applied(runtime, "approve", approval)
    assert refused(runtime, "escalate", approval) == [
        "quarterdeck: refused: approval is already approved"
    ]


def test_snooze(runtime: Headless) -> None:
    [approval] = open_approvals(runtime, "deploy")
    before = datetime.now(UTC)
    answer = applied(runtime, "snooze", approval, "--for", "10m")
    until = parse_instant(answer["snoozed_until"])
    assert timedelta(minutes=10) <= until - before < timedelta(minutes=10, seconds=30)
    assert "expected a duration" in usage_error(runtime, "snooze", approval, "--for", "10x")
    assert "expected a duration" in usage_error(runtime, "snooze", approval, "--for", "0s")
    assert refused(runtime, "snooze", "nope", "--for", "1h") == [
        f"quarterdeck: refused: no approval 'nope'{UNKNOWN}"
    ]


def test_claim(runtime: Headless) -> None:
    [approval] = open_approvals(runtime, "deploy")
    assert applied(runtime, "claim", approval, by="alice")["claimed_by"] == "token:alice"
    [line] = refused(runtime, "approve", approval, by="bob")
    assert line.startswith("quarterdeck: refused: approval is claimed by token:alice until ")
    assert applied(runtime, "claim", approval, "--release", by="alice")["claimed_by"] is None
    assert applied(runtime, "approve", approval, by="bob")["decided_by"] == "token:bob"
    assert refused(runtime, "claim", "nope") == [
        f"quarterdeck: refused: no approval 'nope'{UNKNOWN}"
    ]


def test_bulk_approve_and_reject(runtime: Headless) -> None:
    workspace = f"bulk-{uuid.uuid4().hex[:8]}"
    picked = open_approvals(runtime, "deploy", 2, workspace=workspace, lane="bulk-a")
    other_tool = open_approvals(runtime, "release", 1, workspace=workspace, lane="bulk-a")
    other_lane = open_approvals(runtime, "deploy", 1, workspace=workspace, lane="elsewhere")
    answer = applied(
        runtime, "approve", "--all", "--lane", "bulk-*", "--tool", "deploy", "-w", workspace
    )
    assert sorted(answer["decided"]) == sorted(picked) and answer["skipped"] == []
    [line] = refused(runtime, "reject", "--all", "--reason", "nope", "-w", workspace)
    assert "is not one of " + ", ".join(REASONS) in line
    answer = applied(runtime, "reject", "--all", "--reason", "policy", "-w", workspace)
    assert sorted(answer["decided"]) == sorted(other_tool + other_lane)
    states = query(runtime, "SELECT state FROM approvals WHERE workspace = ?", (workspace,))
    assert sorted(row["state"] for row in states) == [
        "approved",
        "approved",
        "rejected",
        "rejected",
    ]
    assert "not both" in usage_error(runtime, "approve", picked[0], "--all")


def test_approvals_lists_the_open_ones(runtime: Headless) -> None:
    workspace = f"list-{uuid.uuid4().hex[:8]}"
    first, second = open_approvals(runtime, "deploy", 2, workspace=workspace, lane="l1")
    applied(runtime, "claim", second, "-w", workspace, by="dana")
    applied(runtime, "approve", first, "-w", workspace)
    listed = cli(runtime, "approvals", "--json", "-w", workspace)
    assert listed.returncode == 0, listed.stderr
    [item] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (item["id"], item["tool"], item["lane"], item["approver"], item["claimed_by"]) == (
        second, "deploy", "l1", "release-lead", "token:dana",
    )  # fmt: skip
    table = cli(runtime, "approvals", "-w", workspace).stdout.decode().splitlines()
    assert table[0].split() == [
        "ID", "STATE", "TOOL", "LANE", "DEADLINE", "APPROVER", "CLAIMED_BY", "ARGS",
    ]  # fmt: skip
    assert table[1].split() == [short_id(second), "pending", "deploy", "l1", item["deadline_at"],
                                "release-lead", "token:dana", '{"n":1}']  # fmt: skip
    empty = cli(runtime, "approvals", "-w", "nobody-here").stdout.decode()
    assert "(no open approvals in workspace nobody-here)" in empty


# --- turns -------------------------------------------------------------------------------------


def test_takeover_complete_and_release(runtime: Headless, tmp_path: Path) -> None:
    as_json, as_text, released = new_turns(runtime, 3)
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"summary": "done by hand"}))
    notes = tmp_path / "notes.txt"
    notes.write_text("plain words")

    for turn in (as_json, as_text, released):
        answer = applied(runtime, "takeover", turn, by="erin")
        assert answer["holder"] == "human:token:erin"
    assert refused(runtime, "complete", as_json, "--deliverable", str(report), by="bob") == [
        "quarterdeck: refused: turn is held by human:token:erin"
    ]
    applied(runtime, "complete", as_json, "--deliverable", str(report), by="erin")
    applied(runtime, "complete", as_text, "--deliverable", str(notes), by="erin")
    done = turn_state(runtime, as_json)
    assert done["state"] == "completed"
    assert json.loads(done["deliverable"]) == {
        "summary": "done by hand",
        "completed_by": "token:erin",
    }
    assert json.loads(turn_state(runtime, as_text)["deliverable"])["text"] == "plain words"

    answer = applied(runtime, "release", released, by="erin")
    assert answer["turn"] == released and turn_state(runtime, released)["state"] == "queued"
    assert refused(runtime, "release", released, by="erin") == [
        "quarterdeck: refused: turn is queued, not taken over"
    ]
    assert refused(runtime, "takeover", "no-such-turn") == [
        f"quarterdeck: refused: no turn 'no-such-turn'{UNKNOWN}"
    ]
    err = usage_error(runtime, "complete", released, "--deliverable", str(tmp_path / "gone.json"))
    assert "cannot read deliverable" in err and "No such file or directory" in err


def test_requeue_a_held_turn_and_cancel_a_waiting_one(runtime: Headless) -> None:
    [doomed] = new_turns(runtime, 1, "work", {"sim": {"outcome": "fail", "actions": []}})
    [waiting] = new_turns(runtime, 1)  # queued on the paused lane: live, not held
    assert refused(runtime, "requeue", waiting) == [
        "quarterdeck: refused: turn is not held (dead_letter=None)"
    ]
    wait_until(lambda: turn_state(runtime, doomed)["dead_letter"] == "held", 20, "held")
    tries = query(runtime, "SELECT id FROM missions WHERE turn_id = ?", (doomed,))
    answer = applied(runtime, "requeue", doomed, by="erin")
    assert answer["turn"] == doomed and answer["mission"] not in {row["id"] for row in tries}
    [mission] = query(runtime, "SELECT turn_id FROM missions WHERE id = ?", (answer["mission"],))
    assert mission["turn_id"] == doomed  # a fresh try (which fails too, and is held again)
    requeued = query(
        runtime, "SELECT actor FROM ledger WHERE action = 'turn.requeued' AND subject_id = ?",
        (doomed,),
    )  # fmt: skip
    assert [row["actor"] for row in requeued] == ["token:erin"]

    answer = applied(runtime, "cancel", waiting, by="erin")
    assert answer == {"ok": True, "command": "turn.cancel", "turn": waiting,
                      "rejected_approvals": 0}  # fmt: skip
    assert turn_state(runtime, waiting)["state"] == "cancelled"
    states = query(runtime, "SELECT state FROM missions WHERE turn_id = ?", (waiting,))
    assert [row["state"] for row in states] == ["cancelled"]
    assert refused(runtime, "cancel", waiting) == [
        "quarterdeck: refused: turn is already cancelled"
    ]
    assert refused(runtime, "requeue", "no-such-turn") == [
        f"quarterdeck: refused: no turn 'no-such-turn'{UNKNOWN}"
    ]


# --- lanes, fallback, alerts, rebaseline -------------------------------------------------------


def test_fallback_force(runtime: Headless) -> None:
    assert applied(runtime, "fallback", "--force", "on")["force_fallback"] is True
    assert flags(runtime, "*")["force_fallback"] == 1
    assert applied(runtime, "fallback", "--force", "off")["force_fallback"] is False
    assert flags(runtime, "*")["force_fallback"] == 0
    answer = applied(runtime, "fallback", "--force", "on", "--lane", "work")
    assert (answer["command"], answer["lane"]) == ("lane.force_fallback", "work")
    assert flags(runtime, "work")["force_fallback"] == 1
    applied(runtime, "fallback", "--force", "off", "--lane", "work")
    assert refused(runtime, "fallback", "--force", "on", "--lane", "nope") == [
        "quarterdeck: refused: payload.lane: no lane named 'nope'"
    ]
    assert "invalid choice" in usage_error(runtime, "fallback", "--force", "maybe")


def test_lane_pause_and_resume(runtime: Headless) -> None:
    assert applied(runtime, "lane", "pause", "work")["paused"] is True
    assert flags(runtime, "work")["paused"] == 1
    assert applied(runtime, "lane", "resume", "work")["paused"] is False
    assert flags(runtime, "work")["paused"] == 0
    assert refused(runtime, "lane", "pause", "nope") == [
        "quarterdeck: refused: payload.lane: no lane named 'nope'"
    ]


def raise_alert(runtime: Headless, workspace: str = "default") -> str:
    """Open an alert in ``workspace`` straight on the store; its id."""

    async def main() -> str:
        db = await open_database(runtime.url)
        try:
            async with Writer(db) as writer:

                def op(txn: WriteTxn) -> str:
                    alert_id, _ = open_alert(
                        txn, (), workspace=workspace, alert_type="test", severity="warning",
                        subject_type="lane", subject_id="work", dedupe=str(uuid.uuid4()),
                        message="something moved", data={}, actor="test",
                    )  # fmt: skip
                    return alert_id

                return await writer.submit(op)
        finally:
            await db.dispose()

    return run(main())


def test_alert_ack_and_resolve(runtime: Headless) -> None:
    alert = raise_alert(runtime)
    applied(runtime, "alert", "ack", alert)
    state = query(runtime, "SELECT state FROM alerts WHERE id = ?", (alert,))
    assert state[0]["state"] == "acked"
    applied(runtime, "alert", "resolve", alert)
    state = query(runtime, "SELECT state FROM alerts WHERE id = ?", (alert,))
    assert state[0]["state"] == "resolved"
    [line] = refused(runtime, "alert", "ack", "no-such-alert")
    assert "no alert" in line  # named by id, within the workspace's view


def test_an_alert_about_the_runtime_is_every_workspaces_to_see_and_act_on(
    runtime: Headless,
) -> None:
    """A lane's drift concerns every tenant whose work runs on it: the runtime's alerts are in
    each workspace's view and any of them acknowledges and resolves them; a tenant's own
    alerts stay its own."""
    shared = raise_alert(runtime, RUNTIME_WORKSPACE)
    theirs = raise_alert(runtime, "beta")
    listed = cli(runtime, "ls", "alerts", "-w", "acme", "--json", "--limit", "0")
    assert listed.returncode == 0, listed.stderr.decode()
    seen = {json.loads(raw)["id"] for raw in listed.stdout.splitlines() if raw.strip()}
    assert shared in seen and theirs not in seen
    assert applied(runtime, "alert", "ack", shared, "-w", "acme", by="ann")["state"] == "acked"
    assert applied(runtime, "alert", "resolve", shared, "-w", "gamma")["state"] == "resolved"
    [line] = refused(runtime, "alert", "ack", theirs, "-w", "acme")
    assert "no alert" in line  # named by id, within the workspace's view
    trail = query(
        runtime,
        "SELECT workspace, actor, action FROM ledger WHERE subject_id = ? ORDER BY seq",
        (shared,),
    )
    assert [(e["workspace"], e["action"]) for e in trail] == [
        (RUNTIME_WORKSPACE, "alert.opened"),
        (RUNTIME_WORKSPACE, "alert.acked"),
        (RUNTIME_WORKSPACE, "alert.resolved"),
    ]
    assert trail[1]["actor"] == "token:ann"
    still = query(runtime, "SELECT state FROM alerts WHERE id = ?", (theirs,))
    assert still[0]["state"] == "open"


def test_rebaseline(runtime: Headless) -> None:
    answer = applied(runtime, "rebaseline", "work")
    assert (answer["command"], answer["lane"], answer["resumed"]) == (
        "lane.rebaseline", "work", False,
    )  # fmt: skip
    assert refused(runtime, "rebaseline", "nope") == [
        "quarterdeck: refused: payload.lane: no lane named 'nope'"
    ]


# --- envelopes ---------------------------------------------------------------------------------


def test_idempotency_key_and_who_gives_the_command(runtime: Headless) -> None:
    key = f"pause-{uuid.uuid4()}"
    first = applied(runtime, "lane", "pause", "ops", "--idempotency-key", key, by="fay")
    again = applied(runtime, "lane", "resume", "ops", "--idempotency-key", key)
    assert again == first  # the same envelope: the original result stands, nothing new ran
    assert flags(runtime, "ops")["paused"] == 1
    applied(runtime, "lane", "resume", "ops")
    entries = query(
        runtime,
        "SELECT actor FROM ledger WHERE action = 'lane.paused' AND subject_id = 'ops'",
    )
    assert "token:fay" in [row["actor"] for row in entries]


def test_without_a_daemon_a_command_is_refused_and_nothing_is_queued(
    tmp_path: Path, database: str
) -> None:
    async def receipts() -> int:
        await (await open_database(database)).dispose()  # made (and migrated) if it was not
        return len(query(database, "SELECT id FROM receipts"))

    state = tmp_path / "state"
    for args in (("lane", "pause", "work"), ("approve", "a-1"), ("token", "revoke", "0" * 12)):
        result = quarterdeck("--db", database, *args, "--wait", "0.5", state_dir=state)
        assert result.returncode == 3, (result.stdout, result.stderr)
        assert result.stdout == b""
        err = result.stderr.decode()
        assert err.count("\n") == 1, err
        assert f"no daemon is running on {state}" in err
        assert "start one with 'quarterdeck run --headless'" in err
        assert "the command was not sent" in err
    assert run(receipts()) == 0  # nothing was queued for a daemon to apply later


def test_a_value_the_catalogue_refuses_is_refused_without_being_sent(
    tmp_path: Path, database: str
) -> None:
    """No runtime runs here: the command line refuses the command as a runtime would (exit 1,
    each problem on stderr), instead of leaving it queued."""
    for args, problems in [
        (("takeover", ""), ["payload.turn_id: is required"]),
        (("reject", "a-1", "--reason", ""), ["payload.reason_code: is required"]),
        (("snooze", "", "--for", "60s"), ["payload.approval_id: is required"]),
        # (a duration past 10**9 s never gets this far: the command line's parser refuses it)
    ]:  # fmt: skip
        result = quarterdeck("--db", database, *args, "--wait", "0.5", state_dir=tmp_path / "s")
        assert result.returncode == 1, (result.stdout, result.stderr)
        assert json.loads(result.stdout) == {"ok": False, "errors": problems}
        lines = result.stderr.decode().splitlines()
        assert lines == [f"quarterdeck: refused: {problem}" for problem in problems]
