"""A headless runtime in a subprocess, for tests that supervise it from other processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tests.conftest import Store, quarterdeck

from quarterdeck.client import Client
from quarterdeck.client.reach import ApiAddress
from quarterdeck.client.submit import DEFAULT_WORKSPACE
from quarterdeck.store.database import DB_FILENAME, WRITER_APPLICATION

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


class JsonLog:
    """Reading a daemon's JSON-lines log (stderr of ``quarterdeck run --headless``)."""

    log: Path

    def log_entries(self) -> list[dict[str, Any]]:
        """Every JSON object logged so far (other lines skipped)."""
        entries = []
        for raw in self.log.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                value = json.loads(raw)
                if isinstance(value, dict):
                    entries.append(value)
        return entries

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the log, for a failure message."""
        return self.log.read_text(encoding="utf-8", errors="replace")[-chars:]

    def logged(self, message: str) -> dict[str, Any] | None:
        """The first entry with this message, if logged yet."""
        return next((e for e in self.log_entries() if e.get("message") == message), None)


def client_ports(pid: int) -> set[int]:
    """The local TCP ports of the sockets process ``pid`` has open (``/proc``)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def in_write_transaction(url: str, pid: int) -> bool:
    """Whether process ``pid`` has a PostgreSQL write session inside a transaction (holding the
    writers' lock, and perhaps rows or the ledger head), found by its sessions' client ports."""
    ports = sorted(client_ports(pid))
    if not ports:
        return False
    found = Store(url).value(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = ? AND xact_start IS NOT NULL AND client_port = ANY(?)",
        WRITER_APPLICATION,
        ports,
    )
    return bool(found)


def query(
    where: Headless | Path | str, sql: str, params: tuple[Any, ...] = ()
) -> list[dict[str, Any]]:
    """Rows of one read query (``?`` placeholders): on a headless runtime's database, on the
    SQLite file of a state directory (a ``Path``), or on a database URL (a ``str``)."""
    if isinstance(where, Headless):
        url = where.url
    elif isinstance(where, Path):
        url = str(where / DB_FILENAME)
    else:
        url = where
    return Store(url).rows(sql, *params)


@dataclass
class Headless:
    """A running ``quarterdeck run --headless`` and its state directory."""

    root: Path
    state_dir: Path
    proc: subprocess.Popen[bytes]
    log: Path
    url: str
    """The database it runs on: the state directory's SQLite file, or a PostgreSQL URL."""

    tokens: dict[str, str] = field(default_factory=dict)
    """Bearer tokens made by :meth:`token`, by principal name."""

    def client(self, *, workspace: str = DEFAULT_WORKSPACE, daemon: bool = True) -> Client:
        """An SDK client of the runtime: through its control API (the state directory's
        socket), or with ``daemon=False`` on its database."""
        if not daemon:
            return Client(self.url, workspace=workspace, find_daemon=False)
        socket_path = self.state_dir / "quarterdeck.sock"
        return Client(self.url, workspace=workspace, daemon=ApiAddress(socket_path=socket_path))

    def cli(self, *args: str, by: str | None = None) -> subprocess.CompletedProcess[bytes]:
        """Run ``quarterdeck --db URL ARGS`` in a subprocess: as this OS user (on the state
        directory's socket), or as ``token:<by>`` over TCP (the runtime must ``--listen``)."""
        if by is None:
            return quarterdeck("--db", self.url, *args, state_dir=self.state_dir)
        return quarterdeck(
            "--api", self.api_url(), *args, state_dir=self.state_dir,
            env={"QUARTERDECK_TOKEN": self.token(by)},
        )  # fmt: skip

    def token(self, name: str, role: str = "admin") -> str:
        """A bearer token for ``token:<name>`` with ``role`` (made once per name)."""
        if name not in self.tokens:
            made = self.cli("token", "create", "--principal", name, "--role", role)
            assert made.returncode == 0, made.stderr.decode()
            self.tokens[name] = made.stdout.decode().strip()
        return self.tokens[name]

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-chars:]

    def started(self) -> bool:
        assert self.proc.poll() is None, f"runtime exited:\n{self.log_tail()}"
        for raw in self.log.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                if json.loads(raw).get("message") == "daemon running":
                    return True
        return False

    def api_url(self) -> str:
        """The URL of the control API over TCP (started with ``--listen``)."""

        def served() -> list[Any] | None:
            for raw in self.log.read_text(encoding="utf-8", errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    entry = json.loads(raw)
                    if entry.get("message") == "control API served" and entry.get("tcp"):
                        return list(entry["tcp"])
            return None

        host, port = wait_until(served, 10, "the control API over TCP")
        return f"http://{host}:{port}"

    def approval_for(self, action_id: str, timeout: float = 10) -> dict[str, Any]:
        """The approval row of an SDK request, once it is visible."""

        def find() -> dict[str, Any] | None:
            rows = query(
                self, "SELECT * FROM approvals WHERE action_key = ?", (f"sdk:{action_id}",)
            )
            return rows[0] if rows else None

        return wait_until(find, timeout, f"the approval of {action_id}")

    def approval(self, approval_id: str) -> dict[str, Any]:
        return query(self, "SELECT * FROM approvals WHERE id = ?", (approval_id,))[0]


@contextlib.contextmanager
def headless_runtime(
    root: Path,
    policy: str = POLICY,
    config: str = CONFIG,
    *,
    db: str | None = None,
    run_args: Sequence[str] = (),
) -> Iterator[Headless]:
    """Start a headless runtime on ``root/state`` with ``policy``; stop it at the end.

    ``db`` names the database (``--db``): by default the state directory's SQLite file;
    ``run_args`` go to ``run`` as they are (``--listen 127.0.0.1:0``, ...)."""
    state_dir = root / "state"
    (root / "policy.toml").write_text(policy, encoding="utf-8")
    (root / "quarterdeck.toml").write_text(config, encoding="utf-8")
    log = root / "runtime.log"
    env = {**os.environ, "QUARTERDECK_STATE_DIR": str(state_dir)}
    env.pop("QUARTERDECK_WORKSPACE", None)
    command = [sys.executable, "-m", "quarterdeck", "--state-dir", str(state_dir), "run",
               "--headless", "--config", str(root / "quarterdeck.toml")]  # fmt: skip
    if db is not None:
        command += ["--db", db]
    command += list(run_args)
    with open(log, "ab") as err:
        proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=root,
            start_new_session=True,
        )  # fmt: skip
    runtime = Headless(root, state_dir, proc, log, db or str(state_dir / DB_FILENAME))
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
