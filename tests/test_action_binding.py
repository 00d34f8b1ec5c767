"""The gate as an attacker meets it, on SQLite and PostgreSQL: an action id bound to the call
first asked under it (a real command-lane agent, an HTTP lane whose model reuses a tool call's
id, a hand-made SDK client), and the caps on a call's size and a mission's number of actions
(a real agent flooding the gate)."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import run
from tests.headless import Headless, headless_runtime, query
from tests.test_lane_command import agent
from tests.test_lane_http import FakeProvider, Reply, Request, completion
from tests.test_runtime import (
    WS,
    Store,
    assert_ledger_ok,
    config,
    person,
    runtime,
    submit_one,
    turn_in,
    turn_of,
    wait_until,
)

from quarterdeck.domain.canonical import canonical_json, sha256_hex
from quarterdeck.domain.policy import Policy, parse_policy

pytestmark = pytest.mark.usefixtures("database")

POLICY = """
[defaults]
outcome = "allow"
reject_reasons = ["unsafe", "other"]

[[rules]]
name = "reads-need-a-person"
tool = "read_file"
outcome = "require_approval"
approver = "supervisor"
deadline_s = 600

[floors.tools."*"]
deny = ["rm*"]
"""
REUSED = "out_of_sequence: action 'x' was decided for other tool or arguments"


def policy() -> Policy:
    parsed = parse_policy(POLICY)
    assert isinstance(parsed, Policy), parsed
    return parsed


def call_hash(tool: str, args: dict[str, Any]) -> str:
    return sha256_hex(canonical_json([tool, args]))


def task_on(lane: str, key: str) -> dict[str, Any]:
    return {"idempotency_key": key, "workspace": "w", "kind": "task",
            "payload": {"objective": "tidy up", "lane": lane}}  # fmt: skip


def decisions_of(store: Store, key: str) -> list[dict[str, Any]]:
    return store.rows(
        "SELECT tool, args, verdict, reason, call_hash, approval_id FROM decisions "
        "WHERE action_key = ? ORDER BY at, id",
        key,
    )


# --- a command-lane agent reuses an approved action id for a denied tool ---------------------

REUSING_AGENT = """
def ask(tool, args):
    send(type="action", action_id="x", tool=tool, args=args)

ask("read_file", {"path": "README"})
ask("rm_rf", {"path": "/"})                 # while the first waits for a person
while_pending = json.loads(sys.stdin.readline())
first = json.loads(sys.stdin.readline())    # the person's decision on read_file
ask("rm_rf", {"path": "/"})                 # the approved id, for a denied tool
after_approval = json.loads(sys.stdin.readline())
ask("read_file", {"path": "README"})        # an honest retry
retry = json.loads(sys.stdin.readline())
send(type="deliverable", deliverable={
    "while_pending": while_pending, "first": first, "after_approval": after_approval,
    "retry": retry})
"""


def test_a_command_lane_agent_cannot_reuse_an_approved_action_id(tmp_path: Path) -> None:
    argv = agent(tmp_path, REUSING_AGENT)
    lanes = {"cmd": {"adapter": "command", "timeout_s": 30, "max_attempts": 1,
                     "options": {"argv": argv}}}  # fmt: skip

    async def main() -> None:
        async with runtime(tmp_path, config(lanes=lanes, default_lane="cmd"), policy=policy()) as (
            rt,
            store,
        ):
            turn = await turn_of(store, await submit_one(rt, task_on("cmd", "reuse")))
            key = f"turn:{turn}:x"
            alert = await wait_until(
                lambda: store.one("SELECT * FROM alerts WHERE alert_type = 'out_of_sequence'"),
                10, "the out_of_sequence alert",
            )  # fmt: skip
            approval = store.one("SELECT * FROM approvals WHERE action_key = ?", key)
            assert approval is not None and approval["state"] == "pending"
            assert (approval["tool"], json.loads(approval["args"])) == (
                "read_file", {"path": "README"},
            )  # fmt: skip
            decided = await rt.command(
                WS, {"command": "approval.approve", "approval_id": approval["id"]}, person("alice")
            )
            assert decided["ok"], decided
            await turn_in(store, turn, "completed", timeout=20)
            mission = store.missions(turn)[0]["id"]
            assert (alert["severity"], alert["subject_type"], alert["subject_id"]) == (
                "error", "mission", mission,
            )  # fmt: skip
            assert alert["dedupe"] == f"sequence:{key}" and "'rm_rf'" in alert["message"]
            data = json.loads(alert["data"])
            assert data["call_hash"] == call_hash("rm_rf", {"path": "/"})
            assert data["bound_hash"] == call_hash("read_file", {"path": "README"})
            await assert_ledger_ok(rt.db)
        result = json.loads(store.turn(turn)["deliverable"])
        for refused in ("while_pending", "after_approval"):
            assert result[refused]["outcome"] == "rejected", result
            assert result[refused]["reason"] == REUSED
            assert result[refused]["args"] == {"path": "/"}
        assert result["first"]["outcome"] == "approved"
        assert result["first"]["args"] == {"path": "README"}
        assert result["retry"]["outcome"] == "approved" and "alice" in result["retry"]["reason"]
        rows = decisions_of(store, key)
        assert [(r["tool"], r["verdict"]) for r in rows] == [
            ("read_file", "allow"), ("rm_rf", "deny"), ("rm_rf", "deny"), ("read_file", "allow"),
        ]  # fmt: skip
        assert {r["call_hash"] for r in rows[1:3]} == {call_hash("rm_rf", {"path": "/"})}
        assert rows[1]["reason"] == REUSED and rows[1]["approval_id"] is None
        released = store.rows("SELECT args FROM action_releases WHERE action_key = ?", key)
        assert [json.loads(r["args"]) for r in released] == [{"path": "README"}] * 2
        asked = [e["payload"] for e in store.ledger(action="action.requested")]
        assert [(p["tool"], p["args"]) for p in asked if p["tool"] == "rm_rf"] == [
            ("rm_rf", {"path": "/"})
        ] * 2
        decided = [e["payload"] for e in store.ledger(action="action.decided")]
        assert [p["verdict"] for p in decided if p.get("code") == "out_of_sequence"] == ["deny"] * 2
        assert len(store.ledger(action="alert.opened")) == 1

    run(main())


# --- an HTTP lane whose model reuses a tool call's id ----------------------------------------


def test_an_http_lane_tool_call_reusing_an_id_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    calls = iter(
        [
            ("call_1", "list_files", {"path": "."}),
            ("call_1", "rm_rf", {"path": "/"}),
            ("call_1", "list_files", {"path": "."}),
            ("call_2", "list_files", '{"depth": NaN}'),
        ]
    )

    def respond(request: Request) -> Reply:
        step = next(calls, None)
        if step is None:
            return completion("done")
        call_id, tool, args = step
        return completion(
            None,
            tool_calls=[{"id": call_id, "type": "function",
                         "function": {"name": tool, "arguments": args if isinstance(args, str)
                                      else json.dumps(args)}}],
        )  # fmt: skip

    async def main() -> None:
        async with FakeProvider(respond) as provider:
            lanes = {"llm": {"adapter": "http", "timeout_s": 30, "max_attempts": 1,
                             "options": {"providers": [{"url": provider.url}]}}}  # fmt: skip
            data = config(lanes=lanes, default_lane="llm")
            async with runtime(tmp_path, data, policy=policy()) as (rt, store):
                turn = await turn_of(store, await submit_one(rt, task_on("llm", "model")))
                await turn_in(store, turn, "completed", timeout=20)
                await assert_ledger_ok(rt.db)
            told = [
                json.loads(message["content"])
                for message in provider.requests[-1].body["messages"]
                if message["role"] == "tool"
            ]
        assert [t["outcome"] for t in told] == ["approved", "rejected", "approved", "rejected"]
        assert told[3]["reason"] == "arguments are not a JSON object"
        assert told[1]["reason"] == "out_of_sequence: action 'call_1' was decided for other " \
            "tool or arguments"  # fmt: skip
        key = f"turn:{turn}:call_1"
        rows = decisions_of(store, key)
        assert [(r["tool"], r["verdict"]) for r in rows] == [
            ("list_files", "allow"), ("rm_rf", "deny"), ("list_files", "allow"),
        ]  # fmt: skip
        alert = store.one("SELECT * FROM alerts WHERE alert_type = 'out_of_sequence'")
        assert alert is not None and alert["dedupe"] == f"sequence:{key}"

    run(main())


# --- a flooding agent ------------------------------------------------------------------------

FLOODING_AGENT = """
big = "A" * 900_000
for i in range(int(os.environ["FLOOD_BIG"])):
    send(type="action", action_id=f"big-{i}", tool="write_file", args={"data": big})
for i in range(int(os.environ["FLOOD_SMALL"])):
    send(type="action", action_id=f"small-{i}", tool="write_file", args={"n": i})
answers = [json.loads(sys.stdin.readline()) for _ in range(10_000)]
"""


def test_configured_caps_hold_a_small_flood(tmp_path: Path) -> None:
    """``max_action_args_bytes`` and ``max_actions_per_mission`` from the configuration: calls
    under the size cap are decided by the policy and kept whole, until the count cap."""
    argv = agent(tmp_path, FLOODING_AGENT)
    lanes = {"cmd": {"adapter": "command", "timeout_s": 60, "max_attempts": 1,
                     "options": {"argv": argv, "env": {"FLOOD_BIG": "1", "FLOOD_SMALL": "30"}}}}  # fmt: skip

    async def main() -> None:
        data = config(lanes=lanes, default_lane="cmd", max_action_args_bytes=1_000,
                      max_actions_per_mission=12)  # fmt: skip
        async with runtime(tmp_path, data, policy=policy()) as (rt, store):
            turn = await turn_of(store, await submit_one(rt, task_on("cmd", "small-flood")))
            # the mission fails; its turn, out of attempts, is held for a person
            await wait_until(
                lambda: [m for m in store.missions(turn) if m["state"] == "failed"],
                30, "the flooding mission to fail",
            )  # fmt: skip
            await turn_in(store, turn, "queued", "failed")
            await assert_ledger_ok(rt.db)
        [mission] = store.missions(turn)
        assert "too_many_actions" in mission["error"] and "cap is 12" in mission["error"]
        rows = store.rows(
            "SELECT action_key, args, verdict, reason FROM decisions "
            "WHERE mission_id = ? AND kind = 'action' ORDER BY at, id",
            mission["id"],
        )
        # the agent keeps asking until it is stopped: how many more it sent is timing
        assert len(rows) >= 13
        assert rows[0]["reason"].startswith("args_too_large: the call is ")
        assert "the cap is 1000" in rows[0]["reason"]
        small = [r for r in rows[1:12] if r["verdict"] == "allow"]
        assert len(small) == 11
        assert all(json.loads(r["args"]).keys() == {"n"} for r in small)
        for late in rows[12:]:
            assert late["verdict"] == "deny" and "omitted" in json.loads(late["args"])
            assert late["reason"].startswith("too_many_actions: ")

    run(main())


# --- the SDK, from a hand-made client --------------------------------------------------------


@pytest.fixture
def daemon(tmp_path: Path, database: str) -> Any:
    with headless_runtime(tmp_path, POLICY, db=database) as started:
        yield started


def test_an_sdk_client_cannot_reuse_an_action_id_for_another_call(daemon: Headless) -> None:
    """A client that sends its own ``approval.request`` commands (fresh idempotency keys, so
    the SDK's own check never sees them) under one action id."""
    action_id = f"x-{uuid.uuid4()}"
    key = f"sdk:{action_id}"

    def request(tool: str, args: dict[str, Any]) -> dict[str, Any]:
        return {"command": "approval.request", "action_id": action_id, "tool": tool,
                "args": args}  # fmt: skip

    async def main() -> None:
        # asked on the database path, so that the OS user, who decides below, is not the asker
        async with daemon.client(daemon=False) as client:
            first = await client.command(request("read_file", {"path": "README"}))
            assert first["ok"] and first["verdict"] == "pending"
            refused = await client.command(request("rm_rf", {"path": "/"}))
            assert refused["ok"] is False
            assert refused["errors"] == [REUSED.replace("'x'", repr(action_id))]
            approval = daemon.approval_for(action_id)
            assert approval["state"] == "pending" and approval["tool"] == "read_file"
            decided = await asyncio.to_thread(daemon.cli, "approve", approval["id"])
            assert decided.returncode == 0, decided.stderr
            again = await client.command(request("rm_rf", {"path": "/"}))
            assert again["ok"] is False
            other = await client.command(request("read_file", {"path": "/etc/shadow"}))
            assert other["ok"] is False
            retry = await client.command(request("read_file", {"path": "README"}))
            assert retry["ok"] and retry["verdict"] == "allow"
            assert retry["args"] == {"path": "README"}

    run(main())
    rows = query(
        daemon,
        "SELECT tool, verdict, call_hash FROM decisions WHERE action_key = ? ORDER BY at, id",
        (key,),
    )
    assert [(r["tool"], r["verdict"]) for r in rows] == [
        ("read_file", "allow"), ("rm_rf", "deny"), ("rm_rf", "deny"), ("read_file", "deny"),
    ]  # fmt: skip
    assert rows[0]["call_hash"] == call_hash("read_file", {"path": "README"})
    assert rows[3]["call_hash"] == call_hash("read_file", {"path": "/etc/shadow"})
    alerts = query(
        daemon,
        "SELECT severity, subject_type, subject_id, state FROM alerts "
        "WHERE alert_type = 'out_of_sequence'",
    )
    assert alerts == [
        {"severity": "error", "subject_type": "action", "subject_id": key, "state": "open"}
    ]
    refusals = query(
        daemon,
        "SELECT payload FROM ledger WHERE action = 'command.refused' AND subject_id = ?",
        (key,),
    )
    payloads = [json.loads(r["payload"]) for r in refusals]
    assert [p["tool"] for p in payloads] == ["rm_rf", "rm_rf", "read_file"]
    assert payloads[0]["args"] == {"path": "/"} and payloads[0]["code"] == "out_of_sequence"


def test_an_sdk_request_over_the_size_cap_is_denied_and_kept_as_a_digest(
    daemon: Headless,
) -> None:
    action_id = f"big-{uuid.uuid4()}"
    args = {"blob": "B" * 200_000}

    async def main() -> dict[str, Any]:
        async with daemon.client() as client:
            return await client.command(
                {"command": "approval.request", "action_id": action_id, "tool": "upload",
                 "args": args},
                timeout_s=20,
            )  # fmt: skip

    result = run(main())
    assert result["ok"] and result["verdict"] == "deny" and result["code"] == "args_too_large"
    digest = {"omitted": {"bytes": len(canonical_json(["upload", args])),
                          "sha256": call_hash("upload", args)}}  # fmt: skip
    assert result["args"] == digest
    [row] = query(
        daemon, "SELECT args, verdict FROM decisions WHERE action_key = ?", (f"sdk:{action_id}",)
    )
    assert json.loads(row["args"]) == digest and row["verdict"] == "deny"
