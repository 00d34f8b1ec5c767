"""A headless runtime in a subprocess, for tests that supervise it from other processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

POLICY = """
[defaults]
outcome = "allow"
reject_reasons = ["unsafe", "wrong_target", "needs_context", "policy", "other"]

[[rules]]
name = "deploys"
tool = "deploy"
outcome = "require_approval"
approver = "release-lead"
deadline_s = 600

[[rules]]
name = "releases"
tool = "release"
outcome = "require_approval"
approver = "release-lead"
deadline_s = 600
ladder = ["oncall", "cto"]

[[rules]]
name = "pages"
tool = "page"
outcome = "require_approval"
deadline_s = 1
ladder = ["oncall"]
on_expiry = "pause_lane"

[[rules]]
name = "no-removals"
tool = "rm*"
outcome = "deny"
"""

CONFIG = """
default_lane = "work"
policy = "policy.toml"
claim_s = 120

[lanes.work]
adapter = "sim"
options = { max_latency_ms = 20 }

[lanes.ops]
adapter = "sim"
options = { max_latency_ms = 20 }

[lanes.held]
adapter = "sim"
paused = true
"""


def wait_until(check: Callable[[], T | None], timeout: float, what: str, step: float = 0.02) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


def query(state_dir: Path, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
    """Rows of one read query on the state dir's database."""
    conn = sqlite3.connect(state_dir / "quarterdeck.db", timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


@dataclass
class Headless:
    """A running ``quarterdeck run --headless`` and its state directory."""

    root: Path
    state_dir: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-chars:]

    def started(self) -> bool:
        assert self.proc.poll() is None, f"runtime exited:\n{self.log_tail()}"
        for raw in self.log.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                if json.loads(raw).get("message") == "daemon running":
                    return True
        return False

    def approval_for(self, action_id: str, timeout: float = 10) -> sqlite3.Row:
        """The approval row of an SDK request, once it is visible."""

        def find() -> sqlite3.Row | None:
            rows = query(
                self.state_dir,
                "SELECT * FROM approvals WHERE action_key = ?",
                (f"sdk:{action_id}",),
            )
            return rows[0] if rows else None

        return wait_until(find, timeout, f"the approval of {action_id}")

    def approval(self, approval_id: str) -> sqlite3.Row:
        return query(self.state_dir, "SELECT * FROM approvals WHERE id = ?", (approval_id,))[0]


@contextlib.contextmanager
def headless_runtime(root: Path, policy: str = POLICY, config: str = CONFIG) -> Iterator[Headless]:
    """Start a headless runtime on ``root/state`` with ``policy``; stop it at the end."""
    state_dir = root / "state"
    (root / "policy.toml").write_text(policy, encoding="utf-8")
    (root / "quarterdeck.toml").write_text(config, encoding="utf-8")
    log = root / "runtime.log"
    env = {**os.environ, "QUARTERDECK_STATE_DIR": str(state_dir)}
    env.pop("QUARTERDECK_WORKSPACE", None)
    command = [sys.executable, "-m", "quarterdeck", "--state-dir", str(state_dir), "run",
               "--headless", "--config", str(root / "quarterdeck.toml")]  # fmt: skip
    with open(log, "ab") as err:
        proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=root,
            start_new_session=True,
        )  # fmt: skip
    runtime = Headless(root, state_dir, proc, log)
    try:
        wait_until(runtime.started, 60, "the runtime to start", step=0.05)
        yield runtime
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
