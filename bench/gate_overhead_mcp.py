"""What the gate adds to an auto-allowed tool call, the MCP part (``bench/gate_overhead.py``
runs it after the hooks' part): ``git_status`` of
``mcp-server-git`` on a scratch repository, called through the daemon's MCP gateway (``/mcp``,
streamable HTTP on its Unix socket; optionally through ``quarterdeck mcp serve`` too) and
directly on the same upstream server's command in the same run, the two alternating call by
call.

Usage: python bench/gate_overhead_mcp.py [--calls N] [--stdio]

A headless daemon runs on a fresh state directory with a policy that allows read-only MCP
tools; each gateway call is decided (an ``approval.request`` with its ledger entries), forwarded
and its result recorded (an event envelope). Prints JSON: p50/p95 (ms) of each path and of the
per-call difference (gateway minus direct, paired by call); the target is a p50 overhead of at
most 5 ms. ``transport_only`` is a call of a tool no server has, refused by the gateway before
any decision: what the streamable HTTP round trip alone costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from quarterdeck.domain.figures import percentile

POLICY = """
[defaults]
outcome = "require_approval"

[[rules]]
name = "mcp-read-only"
lane = "mcp"
annotations = { readOnlyHint = true }
outcome = "allow"
"""

CONFIG = """
policy = "policy.toml"

[lanes.sim]
adapter = "sim"

[[mcp.servers]]
name = "git"
command = "mcp-server-git"
args = ["--repository", {repo}]
"""


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@asynccontextmanager
async def daemon(root: Path) -> AsyncIterator[Path]:
    """A headless daemon with the gateway; yields its socket."""
    repo = root / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    git(repo, "-c", "user.email=b@example.org", "-c", "user.name=b", "commit", "-q",
        "--allow-empty", "-m", "init")  # fmt: skip
    (root / "policy.toml").write_text(POLICY)
    (root / "quarterdeck.toml").write_text(CONFIG.format(repo=json.dumps(str(repo))))
    state = root / "state"
    log = open(root / "daemon.log", "ab")  # noqa: SIM115 (held while the daemon runs)
    proc = subprocess.Popen(
        [sys.executable, "-m", "quarterdeck", "--state-dir", str(state), "run", "--headless",
         "--config", str(root / "quarterdeck.toml")],
        stdout=subprocess.DEVNULL, stderr=log, cwd=root, start_new_session=True,
    )  # fmt: skip
    try:
        socket_path = state / "quarterdeck.sock"
        for _ in range(600):
            if b"daemon running" in (root / "daemon.log").read_bytes():
                break
            await asyncio.sleep(0.05)
        else:
            raise SystemExit("the daemon did not start:\n" + (root / "daemon.log").read_text())
        yield socket_path
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        import shutil

        shutil.copy(root / "daemon.log", "/tmp/bench-daemon.log")
        proc.wait(timeout=30)
        log.close()


def summary(times: list[float]) -> dict[str, float]:
    """p50 and p95 in milliseconds."""
    ordered = sorted(times)
    return {"p50_ms": round(percentile(ordered, 0.5) * 1e3, 3),
            "p95_ms": round(percentile(ordered, 0.95) * 1e3, 3)}  # fmt: skip


async def timed(call: Callable[[], Awaitable[Any]]) -> float:
    start = time.perf_counter()
    result = await call()
    elapsed = time.perf_counter() - start
    if getattr(result, "is_error", False):
        raise SystemExit(f"a call failed: {result}")
    return elapsed


async def main(calls: int, stdio: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="qd-gate-") as folder:
        root = Path(folder)
        async with daemon(root) as socket_path, AsyncExitStack() as stack:
            repo = str(root / "repo")
            args = {"repo_path": repo}
            direct = await stack.enter_async_context(
                Client(StdioServerParameters(command="mcp-server-git",
                                             args=["--repository", repo]), mode="legacy")
            )  # fmt: skip
            http = httpx2.AsyncClient(
                transport=httpx2.AsyncHTTPTransport(uds=str(socket_path)),
                timeout=httpx2.Timeout(30, read=None),
            )
            gateway = await stack.enter_async_context(
                Client(streamable_http_client("http://quarterdeck/mcp", http_client=http))
            )
            paths: dict[str, Client] = {"direct": direct, "gateway_http": gateway}
            if stdio:
                env = {k: os.environ[k] for k in ("PYTHONPATH", "PATH", "HOME") if k in os.environ}
                paths["gateway_stdio"] = await stack.enter_async_context(
                    Client(StdioServerParameters(
                        command=sys.executable, env=env,
                        args=["-m", "quarterdeck", "--state-dir", str(socket_path.parent),
                              "mcp", "serve"]))
                )  # fmt: skip
            for client in paths.values():  # warm up: connections, first listing, caches
                for _ in range(20):
                    await client.call_tool("git_status", args)
            times: dict[str, list[float]] = {name: [] for name in paths}
            for _ in range(calls):
                for name, client in paths.items():
                    times[name].append(
                        await timed(lambda c=client: c.call_tool("git_status", args))  # type: ignore[misc]
                    )
            bare: list[float] = []
            for _ in range(calls):
                bare.append(await timed(lambda: _refused(gateway)))
            report: dict[str, Any] = {"calls": calls, "tool": "git__git_status"}
            report["transport_only"] = summary(bare)
            for name, series in times.items():
                report[name] = summary(series)
            for name in paths:
                if name != "direct":
                    paired = [g - d for g, d in zip(times[name], times["direct"], strict=True)]
                    report[f"overhead_{name.removeprefix('gateway_')}"] = summary(paired)
            report["target_overhead_p50_ms"] = 5.0
            return report


async def _refused(client: Client) -> None:
    """A call of a tool no server has (the gateway refuses it at once)."""
    result = await client.call_tool("no_such_tool", {})
    assert result.is_error


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--stdio", action="store_true", help="also through quarterdeck mcp serve")
    options = parser.parse_args()
    print(json.dumps(asyncio.run(main(options.calls, options.stdio)), indent=2))
