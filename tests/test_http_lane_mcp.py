"""The ``http`` lane with ``mcp_servers``: a real headless daemon runs the lane against a scripted
OpenAI-compatible server on 127.0.0.1 and ``mcp-server-git`` on a scratch repository. The
model's ``git_commit`` waits for a supervisor; it runs only once approved, and the server's real
output is what the model reads next; a rejected call never runs."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import quarterdeck
from tests.headless import headless_runtime, query, wait_until
from tests.test_mcp_gateway import git

from quarterdeck.client.api import ControlClient

WS = "default"

POLICY = """
[defaults]
outcome = "allow"
reject_reasons = ["unsafe", "wrong_target", "needs_context", "policy", "other"]

[[rules]]
name = "read-only-tools"
lane = "llm"
annotations = { readOnlyHint = true }
outcome = "allow"

[[rules]]
name = "tool-changes"
lane = "llm"
tool = "*__*"
outcome = "require_approval"
deadline_s = 600
"""

CONFIG = """
default_lane = "llm"
policy = "policy.toml"

[lanes.llm]
adapter = "http"
timeout_s = 300
options = {{ providers = [{{ url = {url}, model = "scripted" }}], mcp_servers = [
    {{ name = "git", command = "mcp-server-git", args = ["--repository", {repo}] }},
] }}
"""


class Model:
    """A scripted chat completions server: asks for ``git_commit``, then answers with the tool
    result it was given. Every request body is kept."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self.requests: list[dict[str, Any]] = []
        model = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                model.requests.append(body)
                answer = json.dumps(model.reply(body)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def reply(self, body: dict[str, Any]) -> dict[str, Any]:
        tool_messages = [m for m in body["messages"] if m["role"] == "tool"]
        if tool_messages:
            message = {"role": "assistant", "content": "done: " + tool_messages[-1]["content"]}
        else:
            objective = body["messages"][1]["content"]
            wanted = objective.split("commit:", 1)[1].split("\n", 1)[0].strip()
            args = {"repo_path": str(self.repo), "message": wanted}
            message = {
                "role": "assistant", "content": None,
                "tool_calls": [{"id": "call-1", "type": "function", "function": {
                    "name": "git_commit", "arguments": json.dumps(args)}}],
            }  # fmt: skip
        return {"model": "scripted", "choices": [{"message": message}], "usage": {"tokens": 1}}


@pytest.fixture
def model(tmp_path: Path) -> Iterator[Model]:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    git(repo, "-c", "user.email=t@example.org", "-c", "user.name=t", "commit", "-q",
        "--allow-empty", "-m", "init")  # fmt: skip
    (repo / "notes.txt").write_text("staged\n")
    git(repo, "add", "notes.txt")
    scripted = Model(repo)
    thread = threading.Thread(target=scripted.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield scripted
    finally:
        scripted.server.shutdown()
        scripted.server.server_close()


def submit(state_dir: Path, key: str, message: str) -> str:
    """Submit a task to the lane; its turn's id."""

    async def send() -> str:
        async with ControlClient.for_state_dir(state_dir) as api:
            [sent] = await api.submit(
                [{"idempotency_key": key, "workspace": WS, "kind": "task",
                  "payload": {"objective": f"commit: {message}", "lane": "llm"}}]
            )  # fmt: skip
            assert sent.status == "accepted", sent
            for _ in range(600):
                item = await api.show(sent.receipt)
                if item is not None and item.get("produced"):
                    return str(item["produced"]["id"])
                await asyncio.sleep(0.05)
        raise AssertionError("the task made no turn")

    return asyncio.run(send())


def turn(state_dir: Path, turn_id: str) -> dict[str, Any] | None:
    async def read() -> dict[str, Any] | None:
        async with ControlClient.for_state_dir(state_dir) as api:
            found = await api.show(turn_id)
        if found is not None and found["state"] in ("completed", "failed"):
            return found
        return None

    return asyncio.run(read())


def approval_for(state_dir: Path, turn_id: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        rows = query(state_dir, "SELECT * FROM approvals WHERE turn_id = ?", (turn_id,))
        return rows[0] if rows else None

    return wait_until(find, 60, "the tool call's approval", step=0.1)


def test_the_tool_runs_only_after_approval_and_its_output_reaches_the_model(
    tmp_path: Path, model: Model
) -> None:
    config = CONFIG.format(url=json.dumps(model.url), repo=json.dumps(str(model.repo)))
    with headless_runtime(tmp_path, policy=POLICY, config=config) as daemon:
        state = daemon.state_dir
        first = submit(state, "approve-me", "from the model")
        approval = approval_for(state, first)
        assert approval["tool"] == "git__git_commit"
        offered = {t["function"]["name"] for t in model.requests[0]["tools"]}
        assert {"git_status", "git_commit", "git_log"} <= offered
        # Waiting for the person: the commit has not run and the model was not asked again.
        assert "from the model" not in git(model.repo, "log", "--format=%s")
        assert len(model.requests) == 1
        approved = quarterdeck("approve", approval["id"], state_dir=state)
        assert approved.returncode == 0, approved.stderr.decode()
        done = wait_until(lambda: turn(state, first), 60, "the turn to finish")
        assert done["state"] == "completed", done
        assert "from the model" in git(model.repo, "log", "--format=%s")
        fed = [m for m in model.requests[-1]["messages"] if m["role"] == "tool"][-1]
        assert "Changes committed successfully with hash" in fed["content"]
        head = git(model.repo, "rev-parse", "HEAD").strip()
        assert head in fed["content"]  # the real output of the real server
        assert done["deliverable"]["content"] == "done: " + fed["content"]

        def tool_events() -> list[dict[str, Any]]:
            # A mission's events are stored with the next batch after it ends.
            rows = query(state, "SELECT data FROM mission_events WHERE turn_id = ?", (first,))
            return [json.loads(r["data"]) for r in rows if "sha256" in r["data"]]

        [ran] = wait_until(tool_events, 30, "the tool's result among the mission's events")
        assert ran["tool"] == "git__git_commit" and ran["bytes"] > 0 and not ran["is_error"]

        second = submit(state, "reject-me", "never lands")
        refused = approval_for(state, second)
        rejected = quarterdeck(
            "reject", refused["id"], "--reason", "unsafe", "--note", "not today", state_dir=state
        )
        assert rejected.returncode == 0, rejected.stderr.decode()
        done = wait_until(lambda: turn(state, second), 60, "the second turn to finish")
        assert done["state"] == "completed", done
        fed = [m for m in model.requests[-1]["messages"] if m["role"] == "tool"][-1]
        answer = json.loads(fed["content"])
        assert answer["outcome"] == "rejected" and answer["ran"] is False
        assert "never lands" not in git(model.repo, "log", "--format=%s")
