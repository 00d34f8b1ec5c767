"""The supervision commands of the CLI, each against a real headless runtime in another process
(one per module, on SQLite and on PostgreSQL): its happy path and its refusal path.

Exit codes: 0 applied, 1 refused (each error on stderr), 2 usage error, 3 not applied in time.
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
from quarterdeck.store.alerts import open_alert
from quarterdeck.store.database import open_database
from quarterdeck.store.writer import Writer, WriteTxn

REASONS = ("unsafe", "wrong_target", "needs_context", "policy", "other")


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory, module_database: str) -> Iterator[Headless]:
    """One headless runtime for the module, on SQLite and on PostgreSQL."""
    root = tmp_path_factory.mktemp("cli-supervision")
    with headless_runtime(root, db=module_database) as started:
        yield started


def cli(runtime: Headless, *args: str) -> subprocess.CompletedProcess[bytes]:
    return runtime.cli(*args)


def applied(runtime: Headless, *args: str) -> dict[str, Any]:
    """Run a command that must be applied (exit 0); its printed result."""
    result = cli(runtime, *args)
    assert result.returncode == 0, result.stderr.decode()
    answer: dict[str, Any] = json.loads(result.stdout)
    assert answer["ok"] is True
    return answer


def refused(runtime: Headless, *args: str) -> list[str]:
    """Run a command that must be refused (exit 1); its stderr lines."""
    result = cli(runtime, *args)
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
    """Open ``count`` SDK approvals for ``tool``; their ids."""

    async def main() -> list[str]:
        async with runtime.client(workspace=workspace) as client:
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
    answer = applied(runtime, "approve", plain, "--actor", "alice", "--note", "looks fine")
    assert (answer["state"], answer["decided_by"], answer["reason"]) == (
        "approved", "alice", "looks fine",
    )  # fmt: skip
    answer = applied(runtime, "approve", edited, "--edit", '{"n": 2}')
    assert (answer["state"], answer["effective_args"]) == ("edited", {"n": 2})
    assert refused(runtime, "approve", "no-such-id") == ["quarterdeck: refused: no such approval"]
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
        "quarterdeck: refused: no such approval"
    ]


def test_claim(runtime: Headless) -> None:
    [approval] = open_approvals(runtime, "deploy")
    assert applied(runtime, "claim", approval, "--actor", "alice")["claimed_by"] == "alice"
    [line] = refused(runtime, "approve", approval, "--actor", "bob")
    assert line.startswith("quarterdeck: refused: approval is claimed by alice until ")
    assert (
        applied(runtime, "claim", approval, "--release", "--actor", "alice")["claimed_by"] is None
    )
    assert applied(runtime, "approve", approval, "--actor", "bob")["decided_by"] == "bob"
    assert refused(runtime, "claim", "nope") == ["quarterdeck: refused: no such approval"]


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
    applied(runtime, "claim", second, "--actor", "dana", "-w", workspace)
    applied(runtime, "approve", first, "-w", workspace)
    listed = cli(runtime, "approvals", "--json", "-w", workspace)
    assert listed.returncode == 0, listed.stderr
    [item] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (item["id"], item["tool"], item["lane"], item["approver"], item["claimed_by"]) == (
        second, "deploy", "l1", "release-lead", "dana",
    )  # fmt: skip
    table = cli(runtime, "approvals", "-w", workspace).stdout.decode().splitlines()
    assert table[0].split() == ["ID", "STATE", "TOOL", "LANE", "APPROVER", "DEADLINE", "CLAIMED_BY"]
    assert table[1].split() == [second, "pending", "deploy", "l1", "release-lead",
                                item["deadline_at"], "dana"]  # fmt: skip
    empty = cli(runtime, "approvals", "-w", "nobody-here").stdout.decode()
    assert "(no open approvals)" in empty


# --- turns -------------------------------------------------------------------------------------


def test_takeover_complete_and_release(runtime: Headless, tmp_path: Path) -> None:
    as_json, as_text, released = new_turns(runtime, 3)
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"summary": "done by hand"}))
    notes = tmp_path / "notes.txt"
    notes.write_text("plain words")

    for turn in (as_json, as_text, released):
        answer = applied(runtime, "takeover", turn, "--actor", "erin")
        assert answer["holder"] == "human:erin"
    assert refused(
        runtime, "complete", as_json, "--deliverable", str(report), "--actor", "bob"
    ) == ["quarterdeck: refused: turn is held by human:erin"]
    applied(runtime, "complete", as_json, "--deliverable", str(report), "--actor", "erin")
    applied(runtime, "complete", as_text, "--deliverable", str(notes), "--actor", "erin")
    done = turn_state(runtime, as_json)
    assert done["state"] == "completed"
    assert json.loads(done["deliverable"]) == {"summary": "done by hand", "completed_by": "erin"}
    assert json.loads(turn_state(runtime, as_text)["deliverable"])["text"] == "plain words"

    answer = applied(runtime, "release", released, "--actor", "erin")
    assert answer["turn"] == released and turn_state(runtime, released)["state"] == "queued"
    assert refused(runtime, "release", released, "--actor", "erin") == [
        "quarterdeck: refused: turn is queued, not taken over"
    ]
    assert refused(runtime, "takeover", "no-such-turn") == ["quarterdeck: refused: no such turn"]
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
    answer = applied(runtime, "requeue", doomed, "--actor", "erin")
    assert answer["turn"] == doomed and answer["mission"] not in {row["id"] for row in tries}
    [mission] = query(runtime, "SELECT turn_id FROM missions WHERE id = ?", (answer["mission"],))
    assert mission["turn_id"] == doomed  # a fresh try (which fails too, and is held again)
    requeued = query(
        runtime, "SELECT actor FROM ledger WHERE action = 'turn.requeued' AND subject_id = ?",
        (doomed,),
    )  # fmt: skip
    assert [row["actor"] for row in requeued] == ["erin"]

    answer = applied(runtime, "cancel", waiting, "--actor", "erin")
    assert answer == {"ok": True, "command": "turn.cancel", "turn": waiting,
                      "rejected_approvals": 0}  # fmt: skip
    assert turn_state(runtime, waiting)["state"] == "cancelled"
    states = query(runtime, "SELECT state FROM missions WHERE turn_id = ?", (waiting,))
    assert [row["state"] for row in states] == ["cancelled"]
    assert refused(runtime, "cancel", waiting) == [
        "quarterdeck: refused: turn is already cancelled"
    ]
    assert refused(runtime, "requeue", "no-such-turn") == ["quarterdeck: refused: no such turn"]


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
    assert "no such alert" in line


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
    assert (
        applied(runtime, "alert", "ack", shared, "-w", "acme", "--actor", "ann")["state"] == "acked"
    )
    assert applied(runtime, "alert", "resolve", shared, "-w", "gamma")["state"] == "resolved"
    [line] = refused(runtime, "alert", "ack", theirs, "-w", "acme")
    assert "no such alert" in line
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
    assert trail[1]["actor"] == "ann"
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


def test_idempotency_key_and_actor(runtime: Headless) -> None:
    key = f"pause-{uuid.uuid4()}"
    first = applied(runtime, "lane", "pause", "ops", "--idempotency-key", key, "--actor", "fay")
    again = applied(runtime, "lane", "resume", "ops", "--idempotency-key", key)
    assert again == first  # the same envelope: the original result stands, nothing new ran
    assert flags(runtime, "ops")["paused"] == 1
    applied(runtime, "lane", "resume", "ops")
    entries = query(
        runtime,
        "SELECT actor FROM ledger WHERE action = 'lane.paused' AND subject_id = 'ops'",
    )
    assert "fay" in [row["actor"] for row in entries]


def test_without_a_runtime_it_exits_3(tmp_path: Path, database: str) -> None:
    result = quarterdeck(
        "--db", database, "lane", "pause", "work", "--wait", "0.5", state_dir=tmp_path / "state"
    )
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert result.stdout == b""
    err = result.stderr.decode()
    assert err.count("\n") == 1 and "no runtime applied the command within 0.5 s" in err


def test_a_value_the_catalogue_refuses_is_refused_without_being_sent(
    tmp_path: Path, database: str
) -> None:
    """No runtime runs here: the command line refuses the command as a runtime would (exit 1,
    each problem on stderr), instead of leaving it queued."""
    for args, problems in [
        (("takeover", ""), ["payload.turn_id: is required"]),
        (("reject", "a-1", "--reason", ""), ["payload.reason_code: is required"]),
        (
            ("snooze", "", "--for", "99999999999s"),
            ["payload.approval_id: is required",
             "payload.for_s: must be a number of seconds greater than 0"],
        ),
    ]:  # fmt: skip
        result = quarterdeck("--db", database, *args, "--wait", "0.5", state_dir=tmp_path / "s")
        assert result.returncode == 1, (result.stdout, result.stderr)
        assert json.loads(result.stdout) == {"ok": False, "errors": problems}
        lines = result.stderr.decode().splitlines()
        assert lines == [f"quarterdeck: refused: {problem}" for problem in problems]
