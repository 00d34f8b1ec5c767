"""People known by the kernel: OS users created for the test (``useradd``, as root) reach a
real daemon's control socket through its supervisors' group, and the daemon knows each of them
by the peer credentials of the connection (``SO_PEERCRED``), never by a name they send.

Each request is made by a hand-written HTTP client (the standard library only, run by the
system's Python as that user), so nothing on the client's side could choose who it is."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.headless import CONFIG, Headless, headless_runtime

SYSTEM_PYTHON = "/usr/bin/python3"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="creating OS users (useradd) needs root"),
    pytest.mark.skipif(
        shutil.which("useradd") is None or not os.path.exists(SYSTEM_PYTHON),
        reason="needs useradd and the system's /usr/bin/python3",
    ),
]

CLIENT = r"""
import http.client, json, socket, sys

class Unix(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("quarterdeck")
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(self.unix_path)

path, method, route, body = sys.argv[1:5]
connection = Unix(path)
try:
    connection.request(method, route, body=body.encode() if body else None,
                       headers={"Content-Type": "application/json"})
except OSError as exc:
    print(json.dumps({"status": None, "error": str(exc)}))
    raise SystemExit(0)
answer = connection.getresponse()
raw = answer.read()
print(json.dumps({"status": answer.status, "body": json.loads(raw) if raw else None}))
"""

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
name = "transfers"
tool = "transfer"
outcome = "require_approval"
approver = "release-lead"
deadline_s = 600
approvals_required = 2
"""


class People:
    """Three OS users in one supervisors' group: two release leads and one without the role."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.group = f"qdsup{tag}"
        self.alice, self.bob, self.carl = (f"qd{name}{tag}" for name in ("a", "b", "c"))
        subprocess.run(["groupadd", self.group], check=True)
        for user in (self.alice, self.bob, self.carl):
            subprocess.run(["useradd", "-M", "-N", "-G", self.group, user], check=True)

    def remove(self) -> None:
        for user in (self.alice, self.bob, self.carl):
            subprocess.run(["userdel", user], check=False)
        subprocess.run(["groupdel", self.group], check=False)

    def label(self, user: str) -> str:
        """How the ledger names ``user``: the kernel's name and uid."""
        return f"{user} (uid {pwd.getpwnam(user).pw_uid})"


@pytest.fixture(scope="module")
def people() -> Iterator[People]:
    made = People()
    try:
        yield made
    finally:
        made.remove()


@pytest.fixture
def daemon(people: People) -> Iterator[Headless]:
    """A daemon (run by root) whose roster names the test's users; its root is reachable by
    anyone (the state directory inside stays the daemon's: 0710, the group's)."""
    root = Path(tempfile.mkdtemp(prefix="qd-os-users-"))
    root.chmod(0o755)
    (root / "client.py").write_text(CLIENT, encoding="utf-8")
    (root / "client.py").chmod(0o644)
    roster = (
        f'\n[control]\nsupervisors_group = "{people.group}"\n'
        f'\n[roster]\nroot = ["admin"]\n'
        f'{people.alice} = ["supervisor", "release-lead"]\n'
        f'{people.bob} = ["supervisor", "release-lead"]\n'
        f'{people.carl} = ["supervisor"]\n'
    )
    try:
        with headless_runtime(root, POLICY, CONFIG + roster) as started:
            yield started
    finally:
        shutil.rmtree(root, ignore_errors=True)


def as_user(daemon: Headless, user: str, method: str, route: str, body: Any = None) -> Any:
    """One request to the daemon's socket, made by ``user``'s own process."""
    done = subprocess.run(
        [SYSTEM_PYTHON, str(daemon.root / "client.py"), str(daemon.state_dir / "quarterdeck.sock"),
         method, route, "" if body is None else json.dumps(body)],
        capture_output=True, check=True, **login(user),
    )  # fmt: skip
    return json.loads(done.stdout)


def login(user: str) -> dict[str, Any]:
    """How a process of ``user`` starts: its uid, its primary and supplementary groups (as a
    login gives them), a plain environment."""
    entry = pwd.getpwnam(user)
    return {
        "user": entry.pw_uid, "group": entry.pw_gid,
        "extra_groups": os.getgrouplist(user, entry.pw_gid), "cwd": "/",
        "env": {"PATH": "/usr/bin:/bin"},
    }  # fmt: skip


def ask(daemon: Headless, user: str, tool: str) -> str:
    answer = as_user(
        daemon, user, "POST", "/v1/approvals/request",
        {"workspace": "default", "action_id": str(uuid.uuid4()), "tool": tool, "args": {}},
    )  # fmt: skip
    assert answer["status"] == 200, answer
    assert answer["body"]["verdict"] == "pending", answer
    return str(answer["body"]["approval"])


def approve(daemon: Headless, user: str, approval: str) -> Any:
    return as_user(
        daemon, user, "POST", "/v1/commands",
        {"workspace": "default", "command": {"command": "approval.approve", "approval_id": approval}},
    )  # fmt: skip


def approval_row(daemon: Headless, approval: str) -> dict[str, Any]:
    [row] = daemon_query(daemon, "SELECT * FROM approvals WHERE id = ?", approval)
    return row


def daemon_query(daemon: Headless, sql: str, *args: Any) -> list[dict[str, Any]]:
    from tests.headless import query

    return [dict(row) for row in query(daemon, sql, args)]


def test_the_kernel_names_each_person_and_their_roles_decide(
    daemon: Headless, people: People
) -> None:
    for user in (people.alice, people.bob, people.carl):
        me = as_user(daemon, user, "GET", "/v1/whoami")
        assert me["status"] == 200, me
        assert (me["body"]["name"], me["body"]["uid"]) == (user, pwd.getpwnam(user).pw_uid)
        assert people.group in me["body"]["groups"]
    # the socket and the state directory are the group's, and nobody else's
    socket_mode = (daemon.state_dir / "quarterdeck.sock").stat()
    assert socket_mode.st_mode & 0o777 == 0o660
    assert grp.getgrgid(socket_mode.st_gid).gr_name == people.group
    assert daemon.state_dir.stat().st_mode & 0o777 == 0o710

    approval = ask(daemon, people.alice, "deploy")
    own = approve(daemon, people.alice, approval)
    assert (own["status"], own["body"]["code"]) == (403, "own_request"), own
    lacking = approve(daemon, people.carl, approval)
    assert (lacking["status"], lacking["body"]["code"]) == (403, "missing_role"), lacking
    assert "'release-lead'" in lacking["body"]["error"]
    assert approval_row(daemon, approval)["state"] == "pending"
    decided = approve(daemon, people.bob, approval)
    assert decided["status"] == 200 and decided["body"]["ok"], decided
    row = approval_row(daemon, approval)
    assert (row["state"], row["requested_by"], row["decided_by"]) == (
        "approved", people.label(people.alice), people.label(people.bob),
    )  # fmt: skip
    refusals = daemon_query(
        daemon, "SELECT actor, payload FROM ledger WHERE action = 'command.refused' "
        "AND subject_id = ? ORDER BY seq", approval,
    )  # fmt: skip
    assert [(r["actor"], json.loads(r["payload"])["refusal"]) for r in refusals] == [
        (people.label(people.alice), "own_request"), (people.label(people.carl), "missing_role"),
    ]  # fmt: skip


def test_a_two_person_rule_needs_both_release_leads(daemon: Headless, people: People) -> None:
    approval = ask(daemon, people.carl, "transfer")  # carl asks; he cannot decide it anyway
    first = approve(daemon, people.alice, approval)
    assert first["status"] == 200 and first["body"]["ok"], first
    assert approval_row(daemon, approval)["state"] == "pending"
    twice = approve(daemon, people.alice, approval)
    assert (twice["status"], twice["body"]["code"]) == (403, "second_approval"), twice
    second = approve(daemon, people.bob, approval)
    assert second["status"] == 200 and second["body"]["state"] == "approved", second
    [approved] = daemon_query(
        daemon, "SELECT actor, payload FROM ledger WHERE action = 'approval.approved' "
        "AND subject_id = ?", approval,
    )  # fmt: skip
    assert approved["actor"] == people.label(people.bob)
    assert json.loads(approved["payload"])["approved_by"] == [
        people.label(people.alice), people.label(people.bob),
    ]  # fmt: skip


def test_a_user_outside_the_group_cannot_reach_the_daemon_or_its_files(
    daemon: Headless, people: People
) -> None:
    outsider = f"qdout{uuid.uuid4().hex[:6]}"
    subprocess.run(["useradd", "-M", "-N", outsider], check=True)
    try:
        answer = as_user(daemon, outsider, "GET", "/v1/whoami")
        assert answer["status"] is None and "Permission denied" in answer["error"], answer
        for path in (daemon.state_dir / "quarterdeck.db", daemon.state_dir):
            read = subprocess.run(
                [SYSTEM_PYTHON, "-c", f"open({str(path)!r}, 'rb').read()"
                 if path.name.endswith(".db") else f"import os; os.listdir({str(path)!r})"],
                capture_output=True, **login(outsider),
            )  # fmt: skip
            assert read.returncode != 0 and b"PermissionError" in read.stderr, read.stderr
        # a member of the group reaches the socket by name, yet lists and reads nothing
        listing = subprocess.run(
            [SYSTEM_PYTHON, "-c", f"import os; os.listdir({str(daemon.state_dir)!r})"],
            capture_output=True, **login(people.alice),
        )  # fmt: skip
        assert listing.returncode != 0 and b"PermissionError" in listing.stderr
    finally:
        subprocess.run(["userdel", outsider], check=False)
