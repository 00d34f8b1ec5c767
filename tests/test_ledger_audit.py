"""``ledger verify`` cross-checks the state it records, on real state directories.

A headless node does real work as a subprocess: tasks whose agents ask for allowed, denied and
held actions, a dispatch the policy holds for a person and one it denies; people approve,
edit and reject the approvals through the CLI while it runs. Its chain and state agree. Each
test then edits a copy of what it left by hand, as issue 16 did (an approval's decider, every
decision's verdict, a turn's state, a mission's version, a deleted row, the whole ledger), and
``quarterdeck ledger verify`` names each disagreement: table, id, field, ledger seq. SQLite and
PostgreSQL."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import RawConnection, Store, is_postgres, quarterdeck, unguard_ledger
from headless import CONFIG, headless_runtime, query, wait_until

POLICY = """
[defaults]
outcome = "allow"
reject_reasons = ["unsafe", "other"]

[[rules]]
name = "deploys"
tool = "deploy"
outcome = "require_approval"
approver = "release-lead"
deadline_s = 600

[[rules]]
name = "no-removals"
tool = "rm*"
outcome = "deny"

[[rules]]
name = "held-dispatch"
tool = "mission.dispatch"
args = { hold = "yes" }
outcome = "require_approval"

[[rules]]
name = "denied-dispatch"
tool = "mission.dispatch"
args = { deny = "yes" }
outcome = "deny"
"""


def _task(key: str, sim: dict[str, Any], **extra: Any) -> str:
    payload = {"objective": key, "input": {"sim": {"outcome": "complete", **sim}, **extra}}
    return json.dumps({"idempotency_key": key, "workspace": "default", "kind": "task",
                       "payload": payload})  # fmt: skip


TASKS = [
    _task("search", {"actions": [{"tool": "search", "args": {"q": "x"}}]}),
    _task("remove", {"actions": [{"tool": "rm_rf", "args": {"path": "/"}}]}),
    _task("deploy-prod", {"actions": [{"tool": "deploy", "args": {"env": "prod"}}]}),
    _task("deploy-stage", {"actions": [{"tool": "deploy", "args": {"env": "stage"}}]}),
    _task("deploy-dev", {"actions": [{"tool": "deploy", "args": {"env": "dev"}}]}),
    _task("held", {"actions": []}, hold="yes"),
    _task("denied", {"actions": []}, deny="yes"),
    _task("failing", {"actions": [], "outcome": "fail"}),
    *(_task(f"plain-{i}", {"actions": []}) for i in range(6)),
]
LIVE = "('queued', 'running', 'blocked')"


@dataclass
class Node:
    state: Path
    db: str

    def cli(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return quarterdeck("--db", self.db, *args, state_dir=self.state)

    def verify(self) -> tuple[int, dict[str, Any], str]:
        shown = self.cli("ledger", "verify", "--json")
        assert "Traceback" not in shown.stderr.decode(), shown.stderr.decode()
        human = self.cli("ledger", "verify")
        assert human.returncode == shown.returncode
        return shown.returncode, json.loads(shown.stdout), human.stdout.decode()

    def rows(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        return Store(self.db).rows(sql, *args)

    def edit(self, *statements: str) -> None:
        raw = RawConnection(self.db)
        try:
            for statement in statements:
                raw.execute(statement)
        finally:
            raw.close()

    def entry(self, subject_id: str, to_state: str) -> int:
        """The seq of the entry that moved ``subject_id`` to ``to_state`` (the last one)."""
        rows = self.rows(
            "SELECT max(seq) AS seq FROM ledger WHERE subject_id = ? AND to_state = ?",
            subject_id, to_state,
        )  # fmt: skip
        return int(rows[0]["seq"])


def _decide(runtime: Any, tool_args: str, *command: str) -> None:
    approval = wait_until(
        lambda: query(
            runtime, "SELECT id FROM approvals WHERE state = 'pending' AND args = ?", (tool_args,)
        ),
        60,
        f"the approval of {tool_args}",
    )[0]["id"]
    done = runtime.cli(*command[:1], approval, *command[1:])
    assert done.returncode == 0, done.stderr.decode()


@pytest.fixture(scope="module")
def worked(module_database: str, tmp_path_factory: pytest.TempPathFactory) -> Node:
    """A node's state after real work decided by people through the CLI."""
    root = tmp_path_factory.mktemp("audited")
    db = module_database if is_postgres(module_database) else None
    with headless_runtime(root, POLICY, CONFIG, db=db) as runtime:
        sent = quarterdeck(
            "--db", runtime.url, "submit", "-", state_dir=runtime.state_dir,
            stdin=("\n".join(TASKS) + "\n").encode(),
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr.decode()
        _decide(runtime, '{"env":"prod"}', "approve")
        _decide(runtime, '{"env":"stage"}', "reject", "--reason", "unsafe")
        _decide(runtime, '{"env":"dev"}', "approve", "--edit", '{"env":"test"}')
        _decide(runtime, '{"hold":"yes","sim":{"actions":[],"outcome":"complete"}}', "approve")
        wait_until(
            lambda: (
                not query(runtime, f"SELECT id FROM missions WHERE state IN {LIVE}")
                and not query(runtime, "SELECT id FROM receipts WHERE status = 'pending'")
            ),
            120,
            "the work to finish",
        )
        url = runtime.url
    return Node(root / "state", url)


@pytest.fixture
def node(worked: Node, tmp_path: Path, request: pytest.FixtureRequest) -> Node:
    """A copy of the worked node's state to edit by hand."""
    state = tmp_path / "state"
    shutil.copytree(worked.state, state, ignore=shutil.ignore_patterns("quarterdeck.db*"))
    if is_postgres(worked.db):
        return Node(state, request.getfixturevalue("pg_cluster").clone_database(worked.db))
    db = str(state / "quarterdeck.db")
    with sqlite3.connect(worked.db) as source, sqlite3.connect(db) as copy:
        source.backup(copy)
    return Node(state, db)


def _named(shown: dict[str, Any]) -> set[tuple[str, str, str, int | None]]:
    return {(d["table"], d["id"], d["field"], d["seq"]) for d in shown["disagreements"]}


def test_the_work_covers_every_kind_of_decision_and_the_state_agrees(worked: Node):
    decisions = {
        (row["kind"], row["verdict"], row["approval_id"] is not None)
        for row in worked.rows("SELECT kind, verdict, approval_id FROM decisions")
    }
    assert decisions >= {
        ("action", "allow", False), ("action", "deny", False), ("action", "allow", True),
        ("action", "deny", True), ("dispatch", "allow", False), ("dispatch", "deny", False),
        ("dispatch", "allow", True),
    }  # fmt: skip
    states = {row["state"] for row in worked.rows("SELECT state FROM approvals")}
    assert states == {"approved", "edited", "rejected"}
    code, shown, human = worked.verify()
    assert code == 0, shown
    assert shown["ok"] is True and "disagreements" not in shown
    assert human.startswith(f"ledger ok: {shown['entries']} entries, head {shown['head']}")


def test_a_deciding_principal_rewritten_by_hand_is_named(node: Node):
    approval = node.rows("SELECT id FROM approvals WHERE state = 'approved'")[0]["id"]
    node.edit(f"UPDATE approvals SET decided_by = 'mallory' WHERE id = '{approval}'")
    code, shown, human = node.verify()
    assert code == 1
    seq = node.entry(approval, "approved")
    assert _named(shown) == {("approvals", approval, "decided_by", seq)}
    [found] = shown["disagreements"]
    assert found["stored"] == "mallory" and found["ledger"] != "mallory"
    assert f"approvals {approval} decided_by: stored 'mallory'" in human
    assert f"(ledger seq {seq})" in human


def test_every_verdict_set_to_allow_names_each_denied_decision(node: Node):
    denied = node.rows("SELECT id, approval_id FROM decisions WHERE verdict = 'deny'")
    assert len(denied) >= 3
    node.edit("UPDATE decisions SET verdict = 'allow'")
    code, shown, _ = node.verify()
    assert code == 1
    named = _named(shown)
    assert {(table, id_, field) for table, id_, field, _ in named} == {
        ("decisions", row["id"], "verdict") for row in denied
    }
    assert all(seq is not None for *_, seq in named)
    assert {d["stored"] for d in shown["disagreements"]} == {"allow"}
    assert {d["ledger"] for d in shown["disagreements"]} == {"deny"}
    for row in denied:
        if row["approval_id"] is not None:  # the verdict of the approval that decided it
            seq = node.entry(row["approval_id"], "rejected")
            assert ("decisions", row["id"], "verdict", seq) in named


def test_states_and_versions_edited_by_hand_are_named(node: Node):
    turn = node.rows("SELECT id FROM turns WHERE state = 'failed' ORDER BY id")[0]["id"]
    mission = node.rows("SELECT id, version FROM missions WHERE state = 'completed'")[0]
    approval = node.rows("SELECT id FROM approvals WHERE state = 'rejected'")[0]["id"]
    node.edit(
        f"UPDATE turns SET state = 'completed' WHERE id = '{turn}'",
        f"UPDATE missions SET version = version + 5 WHERE id = '{mission['id']}'",
        f"UPDATE approvals SET state = 'approved' WHERE id = '{approval}'",
        f"UPDATE decisions SET verdict = 'allow' WHERE approval_id = '{approval}'",
    )
    code, shown, _ = node.verify()
    assert code == 1
    rejected = node.entry(approval, "rejected")
    named = _named(shown)
    assert ("turns", turn, "state", node.entry(turn, "failed")) in named
    assert ("missions", mission["id"], "version", node.entry(mission["id"], "completed")) in named
    assert ("approvals", approval, "state", rejected) in named
    decision = node.rows("SELECT id FROM decisions WHERE approval_id = ?", approval)[0]["id"]
    assert ("decisions", decision, "verdict", rejected) in named
    assert len(named) == 4


def test_a_removed_row_and_a_forged_one_are_named(node: Node):
    gone = node.rows("SELECT id FROM missions WHERE state = 'completed' ORDER BY id")[0]["id"]
    created = node.rows(
        "SELECT min(seq) AS seq FROM ledger WHERE subject_id = ? AND from_state IS NULL", gone
    )[0]["seq"]
    node.edit(
        f"DELETE FROM missions WHERE id = '{gone}'",
        "INSERT INTO approvals (id, workspace, state, version, attempt, created_at, updated_at, "
        "data, action_key, kind, tool, args, approver, level, ladder, on_expiry, deadline_s, "
        "deadline_at, requested_by, decided_by) SELECT 'forged', workspace, 'approved', 2, 0, "
        "created_at, updated_at, data, 'forged-key', kind, tool, args, approver, level, ladder, "
        "on_expiry, deadline_s, deadline_at, requested_by, 'mallory' FROM approvals LIMIT 1",
    )
    code, shown, human = node.verify()
    assert code == 1
    assert _named(shown) == {
        ("missions", gone, "row", created),
        ("approvals", "forged", "state", None),
    }
    assert "approvals forged state: stored 'approved', the ledger says None" in human
    assert "no ledger entry records it" in human


def test_a_deleted_ledger_leaves_every_row_unrecorded(node: Node):
    unguard_ledger(node.db)
    node.edit("DELETE FROM ledger_checkpoints", "DELETE FROM ledger", "DELETE FROM ledger_head")
    code, shown, _ = node.verify()
    assert code == 1
    assert shown["entries"] == 0
    turns = {row["id"] for row in node.rows("SELECT id FROM turns")}
    named = _named(shown)
    assert {(id_, seq) for table, id_, _, seq in named if table == "turns"} == {
        (turn, None) for turn in turns
    }
    assert shown["disagreements_total"] == len(
        node.rows("SELECT id FROM turns UNION ALL SELECT id FROM missions "
                  "UNION ALL SELECT id FROM approvals UNION ALL SELECT id FROM decisions")
    )  # fmt: skip
