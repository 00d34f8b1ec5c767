"""The gate's added latency for an auto-allowed tool call, next to a baseline in the same run.

Usage: python bench/gate_overhead.py [--calls N]

One real daemon (``quarterdeck run --headless --listen 127.0.0.1:PORT`` on a fresh SQLite state
directory, a policy that allows ``Read``) with the hooks ``quarterdeck integrate claude-code``
installs. Each path runs ``--calls`` calls, one at a time, each a new ``PreToolUse`` of a
``Read`` (a new ``tool_use_id``) in a session whose prompt is a turn, so every call is decided,
recorded and made an action of the turn:

- **http_hook**: ``POST /v1/hooks/claude-code/http`` over one keep-alive loopback connection
  with the agent token; baseline: the same request shape answered by a bare HTTP server in
  this process (a raw loopback round trip).
- **command_hook**: the command ``integrate`` writes, started once per call (the CLIs start
  it per call) with the payload on stdin; baseline: a bare ``python -c pass`` start of the
  same interpreter (and ``python -I -S -c pass``, the flags the hook starts with). Also the
  hook's import time (``-X importtime``, its own modules from the package's ``__main__``).

Prints JSON: per path p50/p95 (ms) of the path and of its baseline, and the added p50/p95.
Each path is one function; :func:`main` runs them all.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

POLICY = """
[defaults]
outcome = "require_approval"

[[rules]]
name = "reads"
tool = "Read"
outcome = "allow"
"""
CONFIG = """
default_lane = "work"
policy = "policy.toml"

[lanes.work]
adapter = "sim"
"""
SESSION = "bench-session"


@dataclass(frozen=True)
class Daemon:
    """A running daemon and what a hook needs to reach it."""

    root: Path
    port: int
    token: str
    command: list[str]
    """The command hook's argv, as ``integrate`` wrote it."""


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    """p50 and p95 of ``samples_ms``, rounded to 0.01 ms."""
    ordered = sorted(samples_ms)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50_ms": round(statistics.median(ordered), 2), "p95_ms": round(p95, 2)}


def timed(call: Callable[[int], None], calls: int) -> list[float]:
    """The time of each ``call(i)``, in ms."""
    samples = []
    for i in range(calls):
        started = time.perf_counter()
        call(i)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def compared(path: list[float], baseline: list[float]) -> dict[str, Any]:
    """A path's figures next to its baseline's, and the difference."""
    mine, base = percentiles(path), percentiles(baseline)
    return {
        "path": mine, "baseline": base,
        "added": {k: round(mine[k] - base[k], 2) for k in mine},
    }  # fmt: skip


def pre_tool_use(cwd: str, call: str) -> dict[str, Any]:
    """A Claude Code ``PreToolUse`` of a ``Read``."""
    return {
        "session_id": SESSION, "transcript_path": "/dev/null", "cwd": cwd,
        "permission_mode": "default", "hook_event_name": "PreToolUse", "tool_name": "Read",
        "tool_input": {"file_path": f"{cwd}/notes.txt"}, "tool_use_id": call,
    }  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def quarterdeck(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quarterdeck", *args], capture_output=True, text=True,
        env={**os.environ, **(env or {})}, timeout=120, check=False,
    )  # fmt: skip


@contextlib.contextmanager
def daemon() -> Iterator[Daemon]:
    """A daemon on a fresh state directory, the hooks installed for a project, a turn."""
    root = Path(tempfile.mkdtemp(prefix="qd-bench-gate-"))
    state, project, home = root / "state", root / "project", root / "home"
    project.mkdir()
    home.mkdir()
    (root / "policy.toml").write_text(POLICY)
    (root / "quarterdeck.toml").write_text(CONFIG)
    port = free_port()
    log = (root / "runtime.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "quarterdeck", "--state-dir", str(state), "run", "--headless",
         "--config", str(root / "quarterdeck.toml"), "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=log, cwd=root, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while b"daemon running" not in (root / "runtime.log").read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the daemon did not start: {(root / 'runtime.log').read_text()}")
            time.sleep(0.05)
        done = quarterdeck("--state-dir", str(state), "integrate", "claude-code", "--project",
                           str(project), env={"HOME": str(home)})  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"integrate failed: {done.stderr}")
        settings = json.loads((project / ".claude" / "settings.json").read_text())
        command = shlex.split(settings["hooks"]["PreToolUse"][-1]["hooks"][0]["command"])
        credential = Path(command[command.index("--credential") + 1])
        token = json.loads(credential.read_text())["workspaces"][0]["token"]
        prompt = {"session_id": SESSION, "transcript_path": "/dev/null", "cwd": str(project),
                  "hook_event_name": "UserPromptSubmit", "prompt": "benchmark"}  # fmt: skip
        started = subprocess.run(command, input=json.dumps(prompt), text=True, check=False)
        if started.returncode != 0:
            raise SystemExit("the prompt's hook failed")
        yield Daemon(project, port, token, command)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


class _Bare(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # as the daemon's server does: no delayed-ACK stalls

    def log_message(self, *_args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def post_each(
    port: int, path: str, token: str, bodies: Callable[[int], bytes]
) -> Callable[[int], None]:
    """A call that POSTs ``bodies(i)`` over one keep-alive connection and checks the 200."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def call(i: int) -> None:
        connection.request("POST", path, bodies(i), headers)
        answer = connection.getresponse()
        data = answer.read()
        if answer.status != 200:
            raise SystemExit(f"{path}: {answer.status} {data[:200]!r}")

    return call


def http_hook(gate: Daemon, calls: int) -> dict[str, Any]:
    """The http hook route next to a raw loopback HTTP round trip."""
    run = uuid.uuid4().hex[:8]

    def body(i: int) -> bytes:
        return json.dumps(pre_tool_use(str(gate.root), f"http-{run}-{i}")).encode()

    bare = ThreadingHTTPServer(("127.0.0.1", 0), _Bare)
    threading.Thread(target=bare.serve_forever, daemon=True).start()
    try:
        baseline = timed(post_each(bare.server_address[1], "/", gate.token, body), calls)
    finally:
        bare.shutdown()
        bare.server_close()
    route = post_each(gate.port, "/v1/hooks/claude-code/http", gate.token, body)
    route(-1)  # the first call opens the connection and warms the route
    return compared(timed(route, calls), baseline)


def command_hook(gate: Daemon, calls: int) -> dict[str, Any]:
    """The command hook, a process start per call, next to a bare interpreter's start."""
    run = uuid.uuid4().hex[:8]

    def hook(i: int) -> None:
        payload = json.dumps(pre_tool_use(str(gate.root), f"cmd-{run}-{i}"))
        done = subprocess.run(gate.command, input=payload, capture_output=True, text=True,
                              check=False)  # fmt: skip
        if done.returncode != 0 or '"allow"' not in done.stdout:
            raise SystemExit(f"the hook did not allow: {done.returncode} {done.stderr}")

    def start(*flags: str) -> Callable[[int], None]:
        return lambda _i: subprocess.run([sys.executable, *flags, "-c", "pass"], check=True)

    bare = timed(start(), calls)
    isolated = timed(start("-I", "-S"), calls)
    result = compared(timed(hook, calls), bare)
    result["baseline_isolated"] = percentiles(isolated)
    result["import_ms"] = hook_import_ms(gate)
    return result


def hook_import_ms(gate: Daemon) -> dict[str, float]:
    """What ``-X importtime`` says the hook's start imports cost (cumulative, ms)."""
    argv = [gate.command[0], "-X", "importtime", *gate.command[1:]]
    payload = json.dumps(pre_tool_use(str(gate.root), f"imp-{uuid.uuid4().hex}"))
    done = subprocess.run(argv, input=payload, capture_output=True, text=True, check=False)
    found: dict[str, float] = {}
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _self, cumulative, name = line[len("import time:") :].split("|")
            if name.strip() in ("quarterdeck.cli.hook", "quarterdeck.domain.hooks", "encodings"):
                found[name.strip()] = round(int(cumulative) / 1000, 2)
    return found


PATHS: dict[str, Callable[[Daemon, int], dict[str, Any]]] = {
    "http_hook": http_hook,
    "command_hook": command_hook,
}
"""Each path measured, by name (one function each)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--only", choices=sorted([*PATHS, "mcp"]), action="append")
    args = parser.parse_args()
    results: dict[str, Any] = {"calls": args.calls, "cpus": os.cpu_count()}
    with daemon() as gate:
        for name, path in PATHS.items():
            if not args.only or name in args.only:
                results[name] = path(gate, args.calls)
    if not args.only or "mcp" in args.only:
        # the MCP gateway against calling the same upstream server directly, in this run
        mcp = subprocess.run(
            [sys.executable, str(Path(__file__).with_name("gate_overhead_mcp.py")),
             "--calls", str(args.calls)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        results["mcp"] = json.loads(mcp.stdout)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
