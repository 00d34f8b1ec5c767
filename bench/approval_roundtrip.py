"""Approval round trip: an SDK request, decided by another process, back to the SDK; through
the daemon's control API and through the database, in the same run.

Usage: python bench/approval_roundtrip.py [--rounds N] [--warmup W] [--poll-ms P]

Three processes on one fresh state directory: a headless runtime (``quarterdeck run
--headless --listen 127.0.0.1:0`` with a policy that makes the tool ``deploy`` need approval);
this process, which asks ``Client.request_approval("deploy", ...)`` once per round; and a
long-lived decider subprocess (this script with ``--decider``), so that no round pays for a
Python start-up.

**api** (the SDK on the state directory's socket, as this OS user; the decider a supervisor
with its own token over TCP, ``token:decider``):

- **request → pending visible**: from the call to ``request_approval`` until the decider sees
  the approval in ``GET /v1/approvals`` (woken by the ``/v1/console/changes`` long poll);
- **decision sent → SDK returns**: from the decider's ``POST /v1/commands`` (its
  ``time.monotonic()`` just before; ``CLOCK_MONOTONIC`` is one clock for every process on the
  machine) until ``request_approval`` returned the decision (the decision long poll).

**database** (``find_daemon=False``: envelopes written to the database, the runtime noticing
other processes' commits within ~50 ms, the SDK polling every ``--poll-ms``, default 50):

- **request → pending visible**: until the approval row is visible in the database (a
  separate connection here watches ``PRAGMA data_version`` every 2 ms);
- **decision sent → SDK returns**: from the decider's approve command (through the state
  directory's socket, as this OS user: a decision written into the database would be an
  unauthenticated agent's, and refused) until ``request_approval`` returned.

Warm-up rounds are not counted. Prints JSON: p50, p95 and max of each leg in milliseconds, per
path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from quarterdeck.client import Client
from quarterdeck.client.api import ControlClient
from quarterdeck.domain.commands import ApprovalApprove
from quarterdeck.runtime.config import daemon_user
from quarterdeck.store.database import sqlite_url

POLICY = """
[defaults]
outcome = "allow"

[[rules]]
name = "deploys"
tool = "deploy"
outcome = "require_approval"
deadline_s = 3600
"""

CONFIG = """
default_lane = "work"
policy = "policy.toml"

[lanes.work]
adapter = "sim"
"""
TARGET_P95_MS = {"api": 100.0, "database": 250.0}
DECIDER = "decider"
OS_USER = f"{daemon_user()} (uid {os.getuid()})"
"""How the daemon names this OS user on its socket."""
VISIBLE_POLL_S = 0.002


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def figures(values: list[float]) -> dict[str, float]:
    millis = [v * 1000 for v in values]
    return {
        "p50": round(percentile(millis, 0.5), 1),
        "p95": round(percentile(millis, 0.95), 1),
        "max": round(max(millis), 1),
    }


async def decider(state_dir: Path) -> int:
    """Database path: approve each approval id read on stdin (through the daemon's socket);
    answer ``<id> <monotonic time sent>``."""
    async with Client.from_state_dir(state_dir) as client:
        assert client.api is not None
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                return 0
            approval_id = line.strip()
            sent_at = time.monotonic()
            # This OS user, as the socket's kernel credentials say (admin without a roster).
            result = await client.command(ApprovalApprove(approval_id=approval_id))
            assert result["ok"], result
            sys.stdout.write(f"{approval_id} {sent_at!r}\n")
            sys.stdout.flush()


async def api_decider(url: str, token: str) -> int:
    """API path: for each round number read on stdin, wait until its approval is listed, approve
    it; answer ``<approval id> <monotonic time seen> <monotonic time sent>``."""
    async with ControlClient(url=url, token=token) as api:
        head = (await api.console_snapshot())["header"]["head_seq"]
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                return 0
            number = int(line)
            while True:
                found = [a for a in await api.approvals() if a["args"] == {"round": number}]
                if found:
                    break
                head = await api.console_changes(head, wait_s=5)
            seen_at = time.monotonic()
            approval_id = found[0]["id"]
            sent_at = time.monotonic()
            result = await api.command(
                "default", {"command": "approval.approve", "approval_id": approval_id}
            )
            assert result["ok"], result
            sys.stdout.write(f"{approval_id} {seen_at!r} {sent_at!r}\n")
            sys.stdout.flush()


def start_runtime(root: Path) -> subprocess.Popen[bytes]:
    (root / "policy.toml").write_text(POLICY, encoding="utf-8")
    (root / "quarterdeck.toml").write_text(CONFIG, encoding="utf-8")
    log = root / "runtime.log"
    with open(log, "ab") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "quarterdeck", "--state-dir", str(root / "state"), "run",
             "--headless", "--config", str(root / "quarterdeck.toml"),
             "--listen", "127.0.0.1:0"],
            stdout=subprocess.DEVNULL, stderr=err, cwd=root, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while b'"daemon running"' not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the runtime did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.05)
    return proc


async def wait_visible(db_file: Path, action_key: str) -> tuple[float, str]:
    """The monotonic time the approval for ``action_key`` was first seen, and its id."""
    conn = sqlite3.connect(db_file, isolation_level=None)
    try:
        seen = -1
        while True:
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            if version != seen:
                seen = version
                found = conn.execute(
                    "SELECT id FROM approvals WHERE action_key = ?", (action_key,)
                ).fetchone()
                if found is not None:
                    return time.monotonic(), str(found[0])
            await asyncio.sleep(VISIBLE_POLL_S)
    finally:
        conn.close()


def api_url(root: Path) -> str:
    """The URL the runtime serves its control API on over TCP (from its log)."""
    for raw in (root / "runtime.log").read_text().splitlines():
        entry = json.loads(raw) if raw.startswith("{") else {}
        if entry.get("message") == "control API served" and entry.get("tcp"):
            host, port = entry["tcp"]
            return f"http://{host}:{port}"
    raise SystemExit("the runtime serves no TCP address")


def make_token(root: Path) -> str:
    """A token for the decider (``token:decider``, supervisor), given by this OS user."""
    made = subprocess.run(
        [sys.executable, "-m", "quarterdeck", "--state-dir", str(root / "state"), "token",
         "create", "--principal", DECIDER, "--role", "supervisor"],
        capture_output=True, text=True, check=True, cwd=root,
    )  # fmt: skip
    return made.stdout.strip()


def summary(
    visible: list[float], returned: list[float], rounds: int, target: float
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "rounds": rounds,
        "request_to_pending_visible_ms": figures(visible),
        "decision_sent_to_sdk_return_ms": figures(returned),
        "target_p95_ms": target,
    }
    result["within_target"] = all(
        result[leg]["p95"] < target
        for leg in ("request_to_pending_visible_ms", "decision_sent_to_sdk_return_ms")
    )
    return result


async def measure_api(root: Path, rounds: int, warmup: int) -> dict[str, Any]:
    """The round trip through the control API (see the module's docstring)."""
    state_dir = root / "state"
    helper = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--api-decider", api_url(root), make_token(root),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert helper.stdin is not None and helper.stdout is not None
    visible: list[float] = []
    returned: list[float] = []
    try:
        async with Client.from_state_dir(state_dir) as client:
            assert client.api is not None
            for number in range(warmup + rounds):
                action_id = f"bench-api-{number}"
                helper.stdin.write(f"{number}\n".encode())
                await helper.stdin.drain()
                began = time.monotonic()
                decision = await client.request_approval(
                    "deploy", {"round": number}, action_id=action_id, timeout_s=30
                )
                done_at = time.monotonic()
                _approval, seen_at, sent_at = (await helper.stdout.readline()).decode().split()
                assert (decision.outcome, decision.decided_by) == ("approved", f"token:{DECIDER}")
                if number >= warmup:
                    visible.append(float(seen_at) - began)
                    returned.append(done_at - float(sent_at))
    finally:
        helper.stdin.close()
        await helper.wait()
    return summary(visible, returned, rounds, TARGET_P95_MS["api"])


async def measure(root: Path, rounds: int, warmup: int, poll_s: float) -> dict[str, Any]:
    """The round trip through the database (see the module's docstring)."""
    state_dir = root / "state"
    helper = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--decider", str(state_dir),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert helper.stdin is not None and helper.stdout is not None
    visible: list[float] = []
    returned: list[float] = []
    try:
        async with Client(sqlite_url(state_dir), find_daemon=False) as client:
            for number in range(warmup + rounds):
                action_id = f"bench-{number}"
                began = time.monotonic()
                request = asyncio.create_task(
                    client.request_approval(
                        "deploy", {"round": number}, action_id=action_id, poll_s=poll_s,
                        timeout_s=30,
                    )
                )  # fmt: skip
                seen_at, approval_id = await wait_visible(
                    state_dir / "quarterdeck.db", f"sdk:{action_id}"
                )
                helper.stdin.write(f"{approval_id}\n".encode())
                await helper.stdin.drain()
                answer = (await helper.stdout.readline()).decode().split()
                decision = await request
                done_at = time.monotonic()
                assert answer[0] == approval_id, answer
                assert (decision.outcome, decision.decided_by) == ("approved", OS_USER)
                if number >= warmup:
                    visible.append(seen_at - began)
                    returned.append(done_at - float(answer[1]))
    finally:
        helper.stdin.close()
        await helper.wait()
    return {**summary(visible, returned, rounds, TARGET_P95_MS["database"]),
            "sdk_poll_ms": poll_s * 1000}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--poll-ms", type=float, default=50.0, help="the SDK's poll interval")
    parser.add_argument("--decider", metavar="STATE_DIR", help=argparse.SUPPRESS)
    parser.add_argument("--api-decider", nargs=2, metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.decider:
        return asyncio.run(decider(Path(args.decider)))
    if args.api_decider:
        return asyncio.run(api_decider(*args.api_decider))
    with tempfile.TemporaryDirectory(prefix="qd-approval-bench-") as tmp:
        root = Path(tmp)
        runtime = start_runtime(root)
        try:
            result = {
                "warmup": args.warmup,
                "api": asyncio.run(measure_api(root, args.rounds, args.warmup)),
                "database": asyncio.run(
                    measure(root, args.rounds, args.warmup, args.poll_ms / 1000)
                ),
            }
        finally:
            os.kill(runtime.pid, signal.SIGTERM)
            runtime.wait(timeout=30)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
