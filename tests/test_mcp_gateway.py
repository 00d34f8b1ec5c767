"""The MCP gateway with the official ``mcp`` client against real servers from the registries:
``mcp-server-git`` (PyPI) on a scratch repository and ``@modelcontextprotocol/server-filesystem``
(npm), through ``quarterdeck mcp serve`` (stdio) and ``/mcp`` (streamable HTTP over TCP with a
token), decided by a real headless daemon and a supervisor using the CLI and the API; and an
upstream reached by URL over streamable HTTP (``@modelcontextprotocol/server-everything``, npm).

The MCP client runs in its own process (the agent); this test process is the supervisor."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from tests.conftest import quarterdeck
from tests.headless import query, wait_until

from quarterdeck.client.api import ControlClient
from quarterdeck.runtime.mcp_gateway import Catalogue

ROOT = Path(__file__).resolve().parents[1]
FILESYSTEM = ROOT / "node_modules" / ".bin" / "mcp-server-filesystem"
EVERYTHING = ROOT / "node_modules" / ".bin" / "mcp-server-everything"
WS = "default"

POLICY = """
[defaults]
outcome = "allow"
reject_reasons = ["unsafe", "wrong_target", "needs_context", "policy", "other"]

[[rules]]
name = "no-secret-writes"
lane = "mcp"
tool = "*__write_file"
args = { path = { glob = "{secret}/*" } }
outcome = "deny"

[[rules]]
name = "mcp-read-only"
lane = "mcp"
annotations = { readOnlyHint = true }
outcome = "allow"

[[rules]]
name = "mcp-changes"
lane = "mcp"
outcome = "require_approval"
deadline_s = 600
"""

CONFIG = """
policy = "policy.toml"

[lanes.sim]
adapter = "sim"

[mcp]
workspace = "default"
progress_interval_s = 0.3

[[mcp.servers]]
name = "git"
command = "mcp-server-git"
args = ["--repository", {repo}]
{filesystem}
"""

FILESYSTEM_SERVER = """
[[mcp.servers]]
name = "files"
command = {command}
args = [{root}]
"""

AGENT = r'''
import json, os, subprocess, sys
import anyio, httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

mode, target, calls = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])

def out(**fields):
    print(json.dumps(fields), flush=True)

async def approve_myself(state_dir):
    """What a hostile agent tries: approve through the daemon's socket as its own OS user."""
    await anyio.sleep(1.0)
    transport = httpx2.AsyncHTTPTransport(uds=os.path.join(state_dir, "quarterdeck.sock"))
    async with httpx2.AsyncClient(transport=transport, base_url="http://qd") as api:
        body = {"workspace": "default", "command": {"command": "approval.bulk",
                "decision": "approve", "all_workspaces": True}}
        answer = await api.post("/v1/commands", json=body)
    out(kind="hostile", status=answer.status_code, body=answer.json())

async def main():
    if mode == "stdio":
        env = {k: os.environ[k] for k in ("PYTHONPATH", "PATH", "HOME") if k in os.environ}
        server = StdioServerParameters(
            command=sys.executable,
            args=["-m", "quarterdeck", "--state-dir", target, "mcp", "serve"], env=env,
        )
    else:
        http = httpx2.AsyncClient(
            headers={"Authorization": "Bearer " + os.environ["QD_TOKEN"]},
            timeout=httpx2.Timeout(30, read=None),
        )
        server = streamable_http_client(target + "/mcp", http_client=http)
    async with Client(server) as client, anyio.create_task_group() as group:
        listed = await client.list_tools()
        out(kind="tools", names=sorted(t.name for t in listed.tools))
        for name, args, hostile in calls:
            if hostile:
                group.start_soon(approve_myself, target)

            async def progress(done, total, message, name=name):
                out(kind="progress", tool=name, message=message)

            result = await client.call_tool(name, args, progress_callback=progress)
            text = "\n".join(b.text for b in result.content if getattr(b, "type", "") == "text")
            out(kind="result", tool=name, is_error=bool(result.is_error), text=text)

anyio.run(main)
'''


def node_ready() -> bool:
    """Whether Node and the filesystem server are installed; skips (or fails under
    ``REQUIRE_AGENT_TESTS=1``) with a message when they are not."""
    missing = []
    if shutil.which("node") is None:
        missing.append("node is not on PATH")
    if not FILESYSTEM.exists():
        missing.append(f"{FILESYSTEM} is missing (run npm ci)")
    if not missing:
        return True
    message = "MCP filesystem server tests need Node: " + "; ".join(missing)
    if os.environ.get("REQUIRE_AGENT_TESTS") == "1":
        pytest.fail(message + " (REQUIRE_AGENT_TESTS=1)")
    pytest.skip(message)
    return False


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    ).stdout


@dataclass
class Daemon:
    root: Path
    state_dir: Path
    proc: subprocess.Popen[bytes]
    log: Path
    repo: Path
    secret: Path
    url: str = ""

    def logged(self, message: str) -> dict[str, Any] | None:
        for raw in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(raw)
                if isinstance(entry, dict) and entry.get("message") == message:
                    return entry
        return None


@contextlib.contextmanager
def daemon(tmp_path: Path, *, files: bool, extra: str = "") -> Iterator[Daemon]:
    """A headless daemon with the gateway (git, and the filesystem server when ``files``),
    serving TCP on a free loopback port."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    git(repo, "-c", "user.email=t@example.org", "-c", "user.name=t", "commit", "-q",
        "--allow-empty", "-m", "init")  # fmt: skip
    (repo / "notes.txt").write_text("staged\n")
    git(repo, "add", "notes.txt")
    secret = tmp_path / "files" / "secret"
    secret.mkdir(parents=True)
    filesystem = ""
    if files:
        filesystem = FILESYSTEM_SERVER.format(
            command=json.dumps(str(FILESYSTEM)), root=json.dumps(str(tmp_path / "files"))
        )
    (tmp_path / "policy.toml").write_text(POLICY.replace("{secret}", str(secret)))
    (tmp_path / "quarterdeck.toml").write_text(
        CONFIG.format(repo=json.dumps(str(repo)), filesystem=filesystem + extra)
    )
    state_dir = tmp_path / "state"
    log = tmp_path / "runtime.log"
    command = [sys.executable, "-m", "quarterdeck", "--state-dir", str(state_dir), "run",
               "--headless", "--config", str(tmp_path / "quarterdeck.toml"),
               "--listen", "127.0.0.1:0"]  # fmt: skip
    with open(log, "ab") as err:
        proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=err, cwd=tmp_path, start_new_session=True
        )
    found = Daemon(tmp_path, state_dir, proc, log, repo, secret)
    try:
        served = wait_until(lambda: found.logged("control API served"), 60, "the daemon")
        host, port = served["tcp"]
        found.url = f"http://{host}:{port}"
        wait_until(lambda: found.logged("daemon running"), 60, "the daemon to run")
        yield found
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@dataclass
class Agent:
    """The MCP client process and the JSON lines it prints."""

    proc: subprocess.Popen[str]
    lines: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)
    seen: list[dict[str, Any]] = field(default_factory=list)

    def next(self, kind: str, timeout: float = 60) -> dict[str, Any]:
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no {kind!r} line from the agent; saw {self.seen}") from None
            self.seen.append(line)
            if line.get("kind") == kind:
                return line


def start_agent(
    tmp_path: Path, mode: str, target: str, calls: list[Any], token: str | None = None
) -> Agent:
    script = tmp_path / "agent.py"
    script.write_text(AGENT)
    env = {**os.environ, "QD_TOKEN": token or ""}
    with open(tmp_path / f"agent-{mode}.err", "w") as err:
        proc = subprocess.Popen(
            [sys.executable, str(script), mode, target, json.dumps(calls)],
            stdout=subprocess.PIPE, stderr=err, text=True, env=env,
        )  # fmt: skip
    agent = Agent(proc)

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            with contextlib.suppress(ValueError):
                agent.lines.put(json.loads(raw))

    threading.Thread(target=read, daemon=True).start()
    return agent


def pending(state_dir: Path, tool: str) -> dict[str, Any]:
    async def find() -> dict[str, Any] | None:
        async with ControlClient.for_state_dir(state_dir) as api:
            found = await api.approvals(WS, tool=tool)
        return found[0] if found else None

    return wait_until(lambda: asyncio.run(find()), 60, f"an approval for {tool}", step=0.2)


def new_token(daemon: Daemon) -> str:
    made = quarterdeck(
        "token", "create", "--principal", "mcp-client", "--role", "viewer",
        state_dir=daemon.state_dir,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr.decode()
    return made.stdout.decode().strip().splitlines()[-1]


def events(daemon: Daemon, kind: str) -> list[dict[str, Any]]:
    rows = query(daemon.state_dir, "SELECT payload FROM ledger WHERE action = 'event.recorded'")
    found = [json.loads(r["payload"])["payload"] for r in rows]
    return [event for event in found if event.get("type") == kind]


@pytest.mark.parametrize("mode", ["stdio", "http"])
def test_git_calls_are_decided_forwarded_and_recorded(tmp_path: Path, mode: str) -> None:
    files = node_ready()
    with daemon(tmp_path, files=files) as d:
        target = str(d.state_dir) if mode == "stdio" else d.url
        token = new_token(d) if mode == "http" else None
        repo = str(d.repo)
        calls = [
            ["git_status", {"repo_path": repo}, False],
            ["git_commit", {"repo_path": repo, "message": "approved commit"}, mode == "stdio"],
            ["git_commit", {"repo_path": repo, "message": "rejected commit"}, False],
            ["write_file", {"path": str(d.secret / "key.txt"), "content": "x"}, False],
            ["list_allowed_directories", {}, False],
        ]
        agent = start_agent(tmp_path, mode, target, calls, token)
        try:
            names = agent.next("tools")["names"]
            assert {"git_status", "git_commit", "write_file", "read_text_file"} <= set(names)

            status = agent.next("result")
            assert status["tool"] == "git_status" and not status["is_error"]
            assert "notes.txt" in status["text"]  # the real output of git status

            approval = pending(d.state_dir, "git__git_commit")
            assert approval["lane"] == "mcp"
            assert approval["requested_by"].startswith("agent:")
            assert approval["args"]["message"] == "approved commit"
            assert approval["args"]["_mcp_annotations"]["readOnlyHint"] is False
            agent.next("progress")  # the client hears that its call waits for a person
            if mode == "stdio":
                # The agent's own process tree cannot approve what it asked for.
                hostile = agent.next("hostile")
                assert hostile["status"] == 403 and hostile["body"]["code"] == "agent", hostile
                assert pending(d.state_dir, "git__git_commit")["id"] == approval["id"]
            approved = quarterdeck("approve", approval["id"], state_dir=d.state_dir)
            assert approved.returncode == 0, approved.stderr.decode()
            committed = agent.next("result")
            assert committed["tool"] == "git_commit" and not committed["is_error"], committed
            assert "approved commit" in git(d.repo, "log", "--format=%s")

            second = pending(d.state_dir, "git__git_commit")
            assert second["args"]["message"] == "rejected commit"

            async def reject() -> dict[str, Any]:
                async with ControlClient.for_state_dir(d.state_dir) as api:
                    return await api.command(
                        WS, {"command": "approval.reject", "approval_id": second["id"],
                             "reason_code": "unsafe", "reason": "not on main"},
                    )  # fmt: skip

            assert asyncio.run(reject())["ok"] is True
            refused = agent.next("result")
            assert refused["tool"] == "git_commit" and refused["is_error"]
            assert "rejected (unsafe): not on main" in refused["text"]
            assert "rejected commit" not in git(d.repo, "log", "--format=%s")

            denied = agent.next("result")
            assert denied["tool"] == "write_file" and denied["is_error"], denied
            assert "no-secret-writes" in denied["text"] or "denied" in denied["text"]
            assert not (d.secret / "key.txt").exists()

            listed = agent.next("result")
            assert not listed["is_error"] and str(tmp_path / "files") in listed["text"]
            assert agent.proc.wait(timeout=30) == 0
        finally:
            if agent.proc.poll() is None:
                agent.proc.kill()

        def committed_record() -> list[dict[str, Any]]:
            return [e for e in events(d, "mcp.tool.result") if e["tool"] == "git__git_commit"]

        [commit] = wait_until(committed_record, 30, "the commit's result on record")
        assert commit["approval"] == approval["id"]
        assert len(commit["sha256"]) == 64 and commit["bytes"] > 0
        assert "Changes committed" in commit["result"]
        refusals = events(d, "mcp.tool.refused")
        assert {e["tool"] for e in refusals} == {"git__git_commit", "files__write_file"}
        assert events(d, "mcp.session.started")
        if mode == "stdio":  # the relay speaks the handshake era, whose sessions end
            ended = wait_until(lambda: events(d, "mcp.session.ended"), 30, "the session's end")
            assert ended[0]["calls"] == len(calls)


@contextlib.contextmanager
def everything_over_http(tmp_path: Path) -> Iterator[str]:
    """``@modelcontextprotocol/server-everything`` serving streamable HTTP on a free loopback
    port; yields its ``/mcp`` URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    err = open(tmp_path / "everything.err", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(EVERYTHING), "streamableHttp"], env={**os.environ, "PORT": str(port)},
        stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
    )  # fmt: skip

    def listening() -> bool:
        with socket.socket() as client:
            return client.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_until(listening, 60, "the everything server to listen")
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
        err.close()


def test_an_upstream_reached_by_url_over_streamable_http(tmp_path: Path) -> None:
    node_ready()
    if not EVERYTHING.exists():
        message = f"{EVERYTHING} is missing (run npm ci)"
        if os.environ.get("REQUIRE_AGENT_TESTS") == "1":
            pytest.fail(message + " (REQUIRE_AGENT_TESTS=1)")
        pytest.skip(message)
    with everything_over_http(tmp_path) as url:
        upstream = f'[[mcp.servers]]\nname = "everything"\nurl = "{url}"\n'
        with daemon(tmp_path, files=False, extra=upstream) as d:
            calls = [
                ["echo", {"message": "over the wire"}, False],
                ["toggle-simulated-logging", {}, False],
            ]
            agent = start_agent(tmp_path, "http", d.url, calls, new_token(d))
            try:
                names = set(agent.next("tools")["names"])
                assert {"echo", "toggle-simulated-logging", "git_status"} <= names
                echoed = agent.next("result")  # read-only: allowed by policy, forwarded
                assert echoed == {"kind": "result", "tool": "echo", "is_error": False,
                                  "text": "Echo: over the wire"}  # fmt: skip
                approval = pending(d.state_dir, "everything__toggle-simulated-logging")
                assert approval["args"]["_mcp_annotations"]["readOnlyHint"] is False
                approved = quarterdeck("approve", approval["id"], state_dir=d.state_dir)
                assert approved.returncode == 0, approved.stderr.decode()
                toggled = agent.next("result")
                assert toggled["tool"] == "toggle-simulated-logging", toggled
                assert not toggled["is_error"] and "logging" in toggled["text"].lower()
                assert agent.proc.wait(timeout=30) == 0
            finally:
                if agent.proc.poll() is None:
                    agent.proc.kill()

            def recorded() -> list[dict[str, Any]]:
                found = events(d, "mcp.tool.result")
                return [e for e in found if e["tool"].startswith("everything__")]

            results = wait_until(lambda: len(recorded()) >= 2 and recorded(), 30, "the results")
            assert {e["tool"] for e in results} == {
                "everything__echo", "everything__toggle-simulated-logging",
            }  # fmt: skip


def test_serve_says_when_no_daemon_answers(tmp_path: Path) -> None:
    done = quarterdeck("mcp", "serve", state_dir=tmp_path / "state", stdin=b"")
    assert done.returncode == 1
    assert done.stdout == b""  # stdout is the protocol's alone
    message = done.stderr.decode()
    assert "no daemon answers at" in message and "quarterdeck.sock" in message


def test_an_upstream_server_that_exits_is_started_again(tmp_path: Path) -> None:
    broken = '[[mcp.servers]]\nname = "broken"\ncommand = "/nonexistent/mcp-server"\n'
    with daemon(tmp_path, files=False, extra=broken) as d:
        token = new_token(d)
        repo = str(d.repo)
        calls = [["git_status", {"repo_path": repo}, False]]
        first = start_agent(tmp_path, "http", d.url, calls, token)
        assert not first.next("result")["is_error"]
        assert first.proc.wait(timeout=30) == 0
        [pid] = [
            int(p.name) for p in Path("/proc").iterdir()
            if p.name.isdigit() and _is_git_server(p, d.proc.pid)
        ]  # fmt: skip
        os.kill(pid, signal.SIGKILL)

        def exits(server: str) -> list[dict[str, Any]]:
            return [e for e in events(d, "mcp.server.exited") if e["server"] == server]

        exited = wait_until(lambda: exits("git"), 30, "the exit on record")
        assert "stderr" in exited[0]
        # A server that cannot start is on record, and the others are served all the same.
        assert "nonexistent" in exits("broken")[0]["reason"]
        again = start_agent(tmp_path, "http", d.url, calls, token)
        result = again.next("result")
        assert not result["is_error"], result
        assert "notes.txt" in result["text"]
        assert again.proc.wait(timeout=30) == 0


def _is_git_server(proc: Path, daemon_pid: int) -> bool:
    try:
        cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        status = (proc / "status").read_text()
    except OSError:
        return False
    parent = next((line.split()[1] for line in status.splitlines() if line.startswith("PPid:")), "")
    return any(part.endswith(b"mcp-server-git") for part in cmdline[:2]) and parent == str(
        daemon_pid
    )


def test_names_two_servers_share_are_namespaced() -> None:
    def tool(name: str) -> types.Tool:
        return types.Tool(name=name, input_schema={"type": "object"})

    catalogue = Catalogue.of({"a": [tool("read"), tool("only_a")], "b": [tool("read")]})
    assert set(catalogue.entries) == {"a__read", "b__read", "only_a"}
    assert catalogue.entries["only_a"].qualified == "a__only_a"
    assert catalogue.entries["b__read"].server == "b"
