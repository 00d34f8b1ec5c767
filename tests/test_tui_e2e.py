"""End to end in a real terminal: ``quarterdeck demo`` under tmux, keys sent, the screen read
back, an approval decided from the keyboard, the ledger checked afterwards.

Needs tmux (``apt-get install -y tmux``; ``.ci/run`` installs it); skipped without it.
"""

from __future__ import annotations

import getpass
import os
import shutil
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.conftest import quarterdeck

from quarterdeck.store.database import DB_FILENAME

pytestmark = pytest.mark.skipif(
    shutil.which("tmux") is None,
    reason="tmux is not installed: apt-get install -y tmux to run the terminal test",
)


def tmux(*args: str) -> str:
    return subprocess.run(
        ["tmux", *args], check=True, capture_output=True, text=True, timeout=10
    ).stdout


def wait_for(probe: Callable[[], object], what: str, timeout: float = 20.0) -> object:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


@pytest.fixture
def session(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    name = f"qd-{uuid.uuid4().hex[:8]}"
    state = tmp_path / "demo"
    tmux(
        "new-session", "-d", "-s", name, "-x", "120", "-y", "40",
        f"quarterdeck demo --state-dir {state}; sleep 5",
    )  # fmt: skip
    try:
        yield name, state
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True, check=False)


def screen(name: str) -> str:
    return tmux("capture-pane", "-p", "-t", name)


def approvals_decided(state: Path) -> list[tuple[str, str, str]]:
    path = state / DB_FILENAME
    if not path.exists():
        return []
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT subject_id, actor, action FROM ledger WHERE action = 'approval.approved'"
        ).fetchall()


def test_demo_in_a_real_terminal_decides_an_approval_from_the_keyboard(
    session: tuple[str, Path],
) -> None:
    name, state = session
    wait_for(lambda: "1 Approvals" in screen(name), "the control center to draw")
    wait_for(lambda: "pending" in screen(name), "a pending approval on screen")
    drawn = screen(name)
    assert "QUARTERDECK" in drawn and f"demo · state in {str(state)[:20]}" in drawn
    assert "Approve" in drawn  # the footer offers the approvals pane's actions
    tmux("send-keys", "-t", name, "a")
    decided = wait_for(lambda: approvals_decided(state), "the approval on the ledger")
    assert isinstance(decided, list)
    [(approval, actor, _action)] = decided
    assert actor == f"{getpass.getuser()} (uid {os.getuid()})"  # the console's OS user
    wait_for(lambda: "approved" in screen(name), "the toast confirming it")
    for keys in (["5"], ["/"], ["-l", "approval.approved"], ["Enter"]):
        tmux("send-keys", "-t", name, *keys)
        time.sleep(0.3)  # a person's pace; the screen handles each key in turn
    wait_for(lambda: "approval.approved" in screen(name), "the filtered ledger pane showing it")
    tmux("send-keys", "-t", name, "C-q")
    wait_for(lambda: "the demo's state is in" in screen(name), "the demo to drain and exit", 30)
    verified = quarterdeck("ledger", "verify", "--json", state_dir=state)
    assert verified.returncode == 0, verified.stderr
    shown = quarterdeck("show", approval, "--json", state_dir=state)
    assert b'"approved"' in shown.stdout
