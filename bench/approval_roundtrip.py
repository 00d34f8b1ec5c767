"""Approval round trip: an SDK request, decided by another process, back to the SDK.

Usage: python bench/approval_roundtrip.py [--rounds N] [--warmup W] [--poll-ms P]

Three processes on one fresh state directory: a headless runtime (``quarterdeck run
--headless`` with a policy that makes the tool ``deploy`` need approval); this process, which
asks ``Client.request_approval("deploy", ...)`` once per round; and a long-lived decider
subprocess (this script with ``--decider``), which reads approval ids on stdin and approves
each through the same command-envelope path the CLI uses (``Client.send_command``), so that no
round pays for a Python start-up.

Per round:

- **request → pending visible**: from the call to ``request_approval`` until the approval row
  is visible in the database (a separate connection here watches ``PRAGMA data_version`` every
  2 ms and then looks for the row);
- **decision sent → SDK returns**: from the decider's commit of the approve envelope (its
  ``time.monotonic()`` just before ``send_command``; ``CLOCK_MONOTONIC`` is one clock for every
  process on the machine) until ``request_approval`` returned the decision.

The runtime notices other processes' commits within ~50 ms and the SDK polls every
``--poll-ms`` (default 50), so each leg is bounded by about two polls plus the commits. Warm-up
rounds are not counted. Prints JSON: p50, p95 and max of each leg in milliseconds.
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
TARGET_P95_MS = 250.0
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
    """Approve each approval id read on stdin; answer ``<id> <monotonic time sent>``."""
    async with Client.from_state_dir(state_dir) as client:
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                return 0
            approval_id = line.strip()
            sent_at = time.monotonic()
            await client.send_command(
                {"command": "approval.approve", "approval_id": approval_id, "actor": "decider"}
            )
            sys.stdout.write(f"{approval_id} {sent_at!r}\n")
            sys.stdout.flush()


def start_runtime(root: Path) -> subprocess.Popen[bytes]:
    (root / "policy.toml").write_text(POLICY, encoding="utf-8")
    (root / "quarterdeck.toml").write_text(CONFIG, encoding="utf-8")
    log = root / "runtime.log"
    with open(log, "ab") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "quarterdeck", "--state-dir", str(root / "state"), "run",
             "--headless", "--config", str(root / "quarterdeck.toml")],
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


async def measure(root: Path, rounds: int, warmup: int, poll_s: float) -> dict[str, Any]:
    state_dir = root / "state"
    helper = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--decider", str(state_dir),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert helper.stdin is not None and helper.stdout is not None
    visible: list[float] = []
    returned: list[float] = []
    try:
        async with Client.from_state_dir(state_dir) as client:
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
                assert (decision.outcome, decision.decided_by) == ("approved", "decider")
                if number >= warmup:
                    visible.append(seen_at - began)
                    returned.append(done_at - float(answer[1]))
    finally:
        helper.stdin.close()
        await helper.wait()
    result = {
        "rounds": rounds,
        "warmup": warmup,
        "sdk_poll_ms": poll_s * 1000,
        "request_to_pending_visible_ms": figures(visible),
        "decision_sent_to_sdk_return_ms": figures(returned),
        "target_p95_ms": TARGET_P95_MS,
    }
    result["within_target"] = all(
        result[leg]["p95"] < TARGET_P95_MS
        for leg in ("request_to_pending_visible_ms", "decision_sent_to_sdk_return_ms")
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--poll-ms", type=float, default=50.0, help="the SDK's poll interval")
    parser.add_argument("--decider", metavar="STATE_DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.decider:
        return asyncio.run(decider(Path(args.decider)))
    with tempfile.TemporaryDirectory(prefix="qd-approval-bench-") as tmp:
        root = Path(tmp)
        runtime = start_runtime(root)
        try:
            result = asyncio.run(measure(root, args.rounds, args.warmup, args.poll_ms / 1000))
        finally:
            os.kill(runtime.pid, signal.SIGTERM)
            runtime.wait(timeout=30)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
