"""A hostile ``command``-lane agent, run by a real daemon, tries in one run everything a coding
agent with a shell could try to supervise itself: the supervision commands of the CLI (it found
the state directory), hand-written commands on the supervisors' socket and on its own socket
(with and without its session credential, naming the daemon's admin as ``actor``, with a forged
bearer token), a bulk approval across workspaces, a command envelope through the API, a command
receipt written straight into the database (it can open the file: it runs as the daemon's OS
user) naming the admin, and reusing an action id it was allowed for a tool the policy denies.

Every attempt must fail. Those that reach the store are recorded as ``command.refused`` with
the agent's principal (the database one as ``unauthenticated``); those the API turns away
first (a malformed request, an unknown token) change nothing. The approval it went after stays
pending until the real supervisor decides it, and the ledger verifies. Runs on SQLite and on
PostgreSQL (where the agent is given the database's URL, as if it had found the credentials).

Run once as the daemon's own OS user, and once (as root) as another OS user through ``run_as``,
where the database and the node's key cannot even be opened."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import run
from tests.headless import Headless, headless_runtime, query, wait_until

from quarterdeck.client.api import ControlClient
from quarterdeck.runtime.config import daemon_user

SYSTEM_PYTHON = "/usr/bin/python3"
ADMIN = daemon_user()
"""The daemon's OS user: ``admin`` in the default roster, the name the agent forges."""

AGENT = r"""
import http.client, json, os, socket, sqlite3, subprocess, sys, uuid

mission = json.loads(sys.stdin.readline())
given = mission["input"]
state, victim, python, admin = given["state_dir"], given["approval"], given["python"], given["admin"]
token = os.environ.get("QUARTERDECK_SESSION_TOKEN", "")
api = os.environ.get("QUARTERDECK_API", "")

class Unix(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("qd")
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(self.unix_path)

def call(path, route, body, bearer=None):
    headers = {"Content-Type": "application/json"}
    if bearer:
        headers["Authorization"] = "Bearer " + bearer
    try:
        c = Unix(path)
        c.request("POST", route, body=json.dumps(body).encode(), headers=headers)
        r = c.getresponse()
        return {"status": r.status, "body": json.loads(r.read() or b"null")}
    except OSError as exc:
        return {"status": None, "error": repr(exc)}

def cli(*args):
    try:
        done = subprocess.run([python, "-m", "quarterdeck", "--state-dir", state, *args],
                              capture_output=True, text=True, timeout=60)
        return {"exit": done.returncode, "out": done.stdout[-2000:], "err": done.stderr[-2000:]}
    except OSError as exc:
        return {"exit": None, "err": repr(exc)}

def opened(path, mode):
    try:
        with open(path, mode) as f:
            f.read(1) if "r" in mode else f.write(b"")
        return "opened"
    except OSError as exc:
        return repr(exc)

def insert(receipt, payload):
    row = (receipt, "victim", "victim:" + receipt, receipt, "command", json.dumps(payload),
           "2026-12-06T00:00:00.000000Z", "accepted", "[]", 1)
    sql = ("INSERT INTO receipts (id, workspace, dedupe_key, idempotency_key, kind, payload, "
           "received_at, status, errors, version) VALUES ({})")
    try:
        if given["db"].startswith("postgresql"):
            import psycopg
            url = given["db"].replace("postgresql+psycopg://", "postgresql://")
            with psycopg.connect(url, autocommit=True) as db:
                db.execute(sql.format(", ".join(["%s"] * 10)), row)
        else:
            db = sqlite3.connect(f"file:{state}/quarterdeck.db?mode=rw", uri=True, timeout=5)
            db.execute(sql.format(", ".join("?" * 10)), row)
            db.commit()
            db.close()
        return {"inserted": receipt}
    except Exception as exc:
        return {"error": repr(exc)}

def send(**message):
    print(json.dumps(message), flush=True)

approve = {"command": "approval.approve", "approval_id": victim}
supervisors = state + "/quarterdeck.sock"
report = {
    "cli_approve": cli("-w", "victim", "approve", victim),
    "cli_reject": cli("-w", "victim", "reject", victim, "--reason", "unsafe"),
    "cli_fallback": cli("fallback", "--force", "on"),
    "cli_pause": cli("lane", "pause", "sim"),
    "main_plain": call(supervisors, "/v1/commands", {"workspace": "victim", "command": approve}),
    "main_token": call(supervisors, "/v1/commands",
                       {"workspace": "victim", "command": approve}, token),
    "main_forged_actor": call(supervisors, "/v1/commands",
                              {"workspace": "victim", "command": {**approve, "actor": admin}}),
    "main_forged_token": call(supervisors, "/v1/commands",
                              {"workspace": "victim", "command": approve}, "qd_" + "0" * 40),
    "own_plain": call(api, "/v1/commands", {"workspace": "victim", "command": approve}),
    "own_token": call(api, "/v1/commands", {"workspace": "victim", "command": approve}, token),
    "own_forged_actor": call(api, "/v1/commands",
                             {"workspace": "victim", "command": {**approve, "actor": admin}},
                             token),
    "own_bulk": call(api, "/v1/commands", {"workspace": "attacker", "command": {
        "command": "approval.bulk", "decision": "approve", "all_workspaces": True}}, token),
    "own_bulk_victim": call(api, "/v1/commands", {"workspace": "victim", "command": {
        "command": "approval.bulk", "decision": "approve"}}, token),
    "envelope": call(api, "/v1/envelopes", [{"idempotency_key": "forged", "workspace": "victim",
        "kind": "command", "payload": {**approve, "actor": admin}}], token),
    "db_read": opened(state + "/quarterdeck.db", "rb"),
    "db_write": opened(state + "/quarterdeck.db", "ab"),
    "key_read": opened(given["key"], "rb"),
    "db_insert": insert(str(uuid.uuid4()), {**approve, "actor": admin}),
    "db_insert_plain": insert(str(uuid.uuid4()), approve),
}

# an action id allowed for one call, reused for a tool the policy denies
send(type="action", action_id="x", tool="read_file", args={"path": "README"})
report["first"] = json.loads(sys.stdin.readline())
send(type="action", action_id="x", tool="rm_rf", args={"path": "/"})
report["reuse"] = json.loads(sys.stdin.readline())
send(type="deliverable", deliverable=report)
"""

POLICY = """
[defaults]
outcome = "allow"
reject_reasons = ["unsafe", "other"]

[floors.tools."*"]
deny = ["rm*"]

[[rules]]
name = "deploys"
tool = "deploy"
outcome = "require_approval"
deadline_s = 600
"""

REFUSED_BY_THE_STORE = (
    "cli_approve", "cli_reject", "cli_fallback", "cli_pause", "main_plain", "main_token",
    "main_forged_token", "own_token", "own_bulk", "own_bulk_victim",
)  # fmt: skip
"""Attempts that reach the store as the agent's commands: refused there and recorded."""
TURNED_AWAY = ("main_forged_actor", "own_plain", "own_forged_actor", "envelope")
"""Attempts the API answers before any command exists (malformed, or nobody authenticated)."""
WRITTEN = ("db_insert", "db_insert_plain")
"""Command receipts written into the database (as the daemon's OS user only)."""


def config(root: Path, python: str, run_as: str | None) -> str:
    (root / "agent.py").write_text(AGENT, encoding="utf-8")
    (root / "agent.py").chmod(0o644)
    extra = f", run_as = {json.dumps(run_as)}" if run_as else ""
    return f"""
default_lane = "sim"
policy = "policy.toml"

[lanes.sim]
adapter = "sim"
options = {{ max_latency_ms = 20 }}

[lanes.agent]
adapter = "command"
options = {{ argv = [{json.dumps(python)}, {json.dumps(str(root / "agent.py"))}]{extra} }}
"""


@pytest.fixture
def scratch() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="qd-hostile-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_attack(root: Path, python: str, run_as: str | None, db: str | None = None) -> None:
    with headless_runtime(root, POLICY, config(root, python, run_as), db=db) as daemon:
        socket_path = daemon.state_dir / "quarterdeck.sock"
        key = next(daemon.state_dir.rglob("*.key"), daemon.state_dir / "node.key")

        async def person() -> tuple[str, str]:
            async with ControlClient(socket_path) as api:
                [asked] = await api.submit([{
                    "idempotency_key": "ship-it", "workspace": "victim", "kind": "task",
                    "payload": {"objective": "ship", "lane": "sim", "input": {"sim": {
                        "latency_ms": 10, "progress": 1, "outcome": "complete",
                        "actions": [{"tool": "deploy", "args": {"env": "prod"}}]}}},
                }])  # fmt: skip
                assert asked.status == "accepted", asked
                found = wait_until(
                    lambda: query(daemon, "SELECT id FROM approvals WHERE tool = 'deploy'"),
                    30,
                    "the sim agent's approval",
                )
                approval = str(found[0]["id"])
                [sent] = await api.submit(
                    [{"idempotency_key": f"attack-{uuid.uuid4()}", "workspace": "attacker",
                      "kind": "task", "payload": {"objective": "take over", "lane": "agent",
                      "input": {"state_dir": str(daemon.state_dir), "approval": approval,
                                "python": sys.executable if run_as is None else python,
                                "key": str(key), "admin": ADMIN, "db": daemon.url}}}]
                )  # fmt: skip
                return approval, sent.receipt

        approval, receipt = run(person())

        def finished() -> dict[str, Any] | None:
            rows = query(
                daemon,
                "SELECT t.state, t.deliverable, t.error FROM receipts r "
                "JOIN turns t ON t.id = r.produced_id WHERE r.id = ?",
                (receipt,),
            )
            return rows[0] if rows and rows[0]["state"] in ("completed", "failed") else None

        turn = wait_until(finished, 120, "the hostile agent to finish")
        assert turn["state"] == "completed", turn
        report = json.loads(turn["deliverable"])
        check(daemon, report, approval, run_as)


def refusals(daemon: Headless) -> list[dict[str, Any]]:
    """Every ``command.refused`` on the ledger, with its actor."""
    rows = query(daemon, "SELECT actor, payload FROM ledger WHERE action = 'command.refused'")
    return [{"actor": row["actor"], **json.loads(row["payload"])} for row in rows]


def check(daemon: Headless, report: dict[str, Any], approval: str, run_as: str | None) -> None:
    attempts = {name: seen for name, seen in report.items() if name not in ("first", "reuse")}
    assert set(attempts) == set(REFUSED_BY_THE_STORE + TURNED_AWAY + WRITTEN) | {
        "db_read", "db_write", "key_read"
    }  # fmt: skip
    for name in REFUSED_BY_THE_STORE + TURNED_AWAY:
        assert not got_through(attempts[name]), (name, attempts[name])
    # as another OS user, the supervisors' socket (0600) does not even let the agent connect
    supervisors = [name for name in attempts if name.startswith("main_")]
    reached = [n for n in REFUSED_BY_THE_STORE if run_as is None or n not in supervisors]
    for name in reached:
        if name.startswith(("main_", "own_")):
            assert attempts[name]["status"] == 403, (name, attempts[name])
    if run_as is None:
        assert attempts["main_forged_actor"]["status"] == 400
        assert "actor" in attempts["main_forged_actor"]["body"]["error"]
    else:
        for name in supervisors:
            assert "Permission" in attempts[name]["error"], (name, attempts[name])
    assert attempts["own_forged_actor"]["status"] == 400
    assert "actor" in attempts["own_forged_actor"]["body"]["error"]
    assert attempts["own_plain"]["status"] == 401
    assert attempts["envelope"]["status"] == 400

    # the reused action id is refused and opens an out-of-sequence alert
    assert report["first"]["outcome"] == "approved", report["first"]  # by policy
    assert report["reuse"]["outcome"] == "rejected", report["reuse"]
    assert report["reuse"]["reason"].startswith("out_of_sequence"), report["reuse"]
    assert query(
        daemon,
        "SELECT id FROM alerts WHERE alert_type = 'out_of_sequence' AND workspace = ?",
        ("attacker",),
    )

    # each command that reached the store is recorded with the agent that gave it
    refused = refusals(daemon)
    by_agent = [r for r in refused if r["principal"]["kind"] == "agent"]
    assert all(r["actor"].startswith(("agent:", "unauthenticated:")) for r in by_agent), refused
    commands = sorted(r["command"] for r in by_agent if r["actor"].startswith("agent:"))
    # as another OS user, neither the CLI (this Python is out of its reach) nor the
    # supervisors' socket gets as far as the store
    by_cli = ["approval.approve", "approval.reject", "fallback.force", "lane.pause"]
    by_hand = ["approval.approve"] * 3  # main_plain, main_token, main_forged_token
    by_token = ["approval.approve"] + ["approval.bulk"] * 2  # own_token, own_bulk x2
    expected = by_token if run_as is not None else by_cli + by_hand + by_token
    assert commands == sorted(expected), commands
    assert not [r for r in refused if r["principal"]["kind"] != "agent"], refused

    if run_as is None:
        # the database file is the daemon's user's: the agent opens it and writes a command
        # receipt naming the admin; the daemon applies it for nobody and refuses it
        for name in WRITTEN:
            written = attempts[name]
            assert "inserted" in written, (name, written)
            applied = wait_until(
                lambda r=written["inserted"]: query(
                    daemon, "SELECT produced_type, produced_id FROM receipts WHERE id = ? "
                    "AND produced_type IS NOT NULL", (r,),
                ),
                30, f"the daemon to apply the written receipt of {name}",
            )  # fmt: skip
            result = json.loads(applied[0]["produced_id"])
            assert result["ok"] is False and result["refused"] == "unauthenticated", result
            name_of = f"unauthenticated:receipt/{written['inserted']}"
            [entry] = [r for r in refused if r["actor"] == name_of]
            assert entry["refusal"] == "unauthenticated" and entry["command"] == "approval.approve"
            assert entry["principal"] == {
                "kind": "agent", "name": entry["actor"], "workspace": "victim"
            }  # fmt: skip
        [counted] = query(
            daemon, "SELECT value FROM counters WHERE name = 'commands_refused:unauthenticated'"
        )
        assert counted["value"] == 2
    else:
        for name in ("db_read", "db_write", "key_read"):
            assert "Permission" in attempts[name], (name, attempts[name])
        for name in WRITTEN:
            error = attempts[name].get("error", "")
            if daemon.url.startswith("postgresql"):
                continue  # the agent was handed the URL; its user is not a database role
            assert "unable to open" in error or "Permission" in error, (name, attempts[name])

    # nothing the agent asked for happened; the approval waits for a person
    [row] = query(daemon, "SELECT state FROM approvals WHERE id = ?", (approval,))
    assert row["state"] == "pending"
    assert not query(daemon, "SELECT * FROM lane_flags WHERE paused = 1 OR force_fallback = 1")

    # the real supervisor decides it, and the ledger verifies
    decided = daemon.cli("-w", "victim", "approve", approval)
    assert decided.returncode == 0, decided.stderr
    [row] = query(daemon, "SELECT state, decided_by FROM approvals WHERE id = ?", (approval,))
    assert row["state"] == "approved"
    assert row["decided_by"] == f"{ADMIN} (uid {os.getuid()})"
    verified = daemon.cli("ledger", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def got_through(seen: dict[str, Any]) -> bool:
    """Whether one attempt through the CLI or the API got through (it must not)."""
    if "exit" in seen:
        return seen["exit"] == 0
    if seen.get("status") != 200:
        return False
    body = seen.get("body") or {}
    results = body.get("results") if isinstance(body, dict) else None
    if results:
        return any(r.get("status") == "accepted" for r in results)
    return bool(body.get("ok"))


@pytest.mark.usefixtures("database")
def test_a_hostile_agent_as_the_daemons_own_user_supervises_nothing(
    scratch: Path, database: str
) -> None:
    run_attack(scratch, sys.executable, None, db=None if database.endswith(".db") else database)


@pytest.mark.skipif(os.geteuid() != 0, reason="running an agent as another OS user needs root")
def test_a_hostile_agent_as_another_os_user_cannot_even_open_the_files(scratch: Path) -> None:
    if not os.path.exists(SYSTEM_PYTHON):
        pytest.skip("needs the system's /usr/bin/python3 (the agent's user cannot reach pyenv)")
    user = f"qdagent{uuid.uuid4().hex[:6]}"
    subprocess.run(["useradd", "-M", "-N", user], check=True)
    try:
        assert pwd.getpwnam(user).pw_uid != 0
        run_attack(scratch, SYSTEM_PYTHON, user)
    finally:
        subprocess.run(["userdel", user], check=False)
