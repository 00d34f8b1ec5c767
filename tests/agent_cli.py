"""Driving the real Claude Code and Codex CLIs (from ``node_modules``, pinned in
``package-lock.json``) offline: scripted model servers on 127.0.0.1 that speak the Anthropic
Messages API and the OpenAI Responses API (streaming), each asking for one scripted tool call
and then finishing, and logging every request so a test can read what the model was told.

The tests that use them skip when Node or the CLIs are missing, unless ``REQUIRE_AGENT_TESTS``
is set (CI), where they fail instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "node_modules" / ".bin"


def agent_binary(name: str) -> Path:
    """The CLI ``name`` installed by ``npm ci``; skip (or fail under REQUIRE_AGENT_TESTS)."""
    path = BIN / name
    if shutil.which("node") is not None and path.exists():
        return path
    message = f"{name} is not installed: run `npm ci` (needs Node.js)"
    if os.environ.get("REQUIRE_AGENT_TESTS"):
        pytest.fail(f"REQUIRE_AGENT_TESTS is set but {message}")
    pytest.skip(message)


@dataclass
class ScriptedModel:
    """A scripted model: the tool call to ask for (``tool``: name, ``input``: arguments), how
    many times in a row before it finishes (``calls``: a new call for each tool result, as
    long as the agent's loop goes on), and every request received (``requests``)."""

    tool: str = "Bash"
    input: Mapping[str, Any] = field(default_factory=dict)
    calls: int = 1
    final_text: str = "done"
    requests: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0

    def tool_results(self) -> list[Any]:
        """Every tool result the CLI sent back to the model (Anthropic or Responses form)."""
        found: list[Any] = []
        for body in self.requests:
            for message in body.get("messages") or []:
                content = message.get("content")
                if isinstance(content, list):
                    found += [b for b in content if b.get("type") == "tool_result"]
            for item in body.get("input") or []:
                if isinstance(item, dict) and item.get("type", "").endswith("call_output"):
                    found.append(item)
        return found


def _has_tool_result(body: Mapping[str, Any]) -> bool:
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "user":
            content = message.get("content")
            return isinstance(content, list) and any(
                isinstance(b, dict) and b.get("type") == "tool_result" for b in content
            )
    return False


def _tool_results_in(body: Mapping[str, Any]) -> int:
    return sum(
        1
        for message in body.get("messages") or []
        if isinstance(message.get("content"), list)
        for b in message["content"]
        if isinstance(b, dict) and b.get("type") == "tool_result"
    )


def _sse(event: str, data: Mapping[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def anthropic_stream(model: str, blocks: list[dict[str, Any]], stop: str) -> bytes:
    """A Messages API answer as server-sent events."""
    usage = {"input_tokens": 10, "output_tokens": 1, "cache_creation_input_tokens": 0,
             "cache_read_input_tokens": 0}  # fmt: skip
    start = {"id": "msg_" + uuid.uuid4().hex[:24], "type": "message", "role": "assistant",
             "model": model, "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": usage}  # fmt: skip
    out = [_sse("message_start", {"type": "message_start", "message": start})]
    for index, block in enumerate(blocks):
        if block["type"] == "text":
            first = {"type": "text", "text": ""}
            delta = {"type": "text_delta", "text": block["text"]}
        else:
            first = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        out.append(_sse("content_block_start", {"type": "content_block_start", "index": index,
                                                "content_block": first}))  # fmt: skip
        out.append(_sse("content_block_delta", {"type": "content_block_delta", "index": index,
                                                "delta": delta}))  # fmt: skip
        out.append(_sse("content_block_stop", {"type": "content_block_stop", "index": index}))
    out.append(_sse("message_delta", {"type": "message_delta",
                                      "delta": {"stop_reason": stop, "stop_sequence": None},
                                      "usage": {"output_tokens": 20}}))  # fmt: skip
    out.append(_sse("message_stop", {"type": "message_stop"}))
    return "".join(out).encode()


def _responses_item(model: ScriptedModel, body: Mapping[str, Any]) -> dict[str, Any]:
    items = body.get("input") or []
    if any(isinstance(i, dict) and str(i.get("type", "")).endswith("call_output") for i in items):
        return {"type": "message", "role": "assistant", "id": "msg_" + uuid.uuid4().hex[:16],
                "status": "completed",
                "content": [{"type": "output_text", "text": model.final_text,
                             "annotations": []}]}  # fmt: skip
    names = [t.get("name") for t in body.get("tools") or [] if isinstance(t, dict)]
    assert model.tool in names, f"the CLI offers no {model.tool} tool: {names}"
    return {"type": "function_call", "id": "fc_" + uuid.uuid4().hex[:16], "status": "completed",
            "name": model.tool, "arguments": json.dumps(dict(model.input)),
            "call_id": "call_" + uuid.uuid4().hex[:16]}  # fmt: skip


def responses_stream(model_name: str, item: dict[str, Any]) -> bytes:
    """A Responses API answer as server-sent events."""
    rid = "resp_" + uuid.uuid4().hex[:16]
    usage = {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 0},
             "output_tokens": 20, "output_tokens_details": {"reasoning_tokens": 0},
             "total_tokens": 30}  # fmt: skip

    def response(output: list[Any], status: str) -> dict[str, Any]:
        return {"id": rid, "object": "response", "created_at": 0, "status": status,
                "model": model_name, "output": output, "usage": usage}  # fmt: skip

    parts = [
        {"type": "response.created", "response": response([], "in_progress")},
        {"type": "response.output_item.added", "output_index": 0, "item": item},
        {"type": "response.output_item.done", "output_index": 0, "item": item},
        {"type": "response.completed", "response": response([item], "completed")},
    ]
    return "".join(_sse(p["type"], p) for p in parts).encode()


def _handler(model: ScriptedModel) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_args: Any) -> None:
            pass

        def send(self, code: int, body: bytes, kind: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path.split("?")[0].endswith("/models"):
                data = [{"id": "gpt-fake", "object": "model", "created": 0, "owned_by": "test"}]
                self.send(200, json.dumps({"object": "list", "data": data}).encode())
                return
            self.send(404, b'{"type": "error", "error": {"type": "not_found_error"}}')

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                body = json.loads(raw)
            except ValueError:
                self.send(400, b"{}")
                return
            path = self.path.split("?")[0]
            if path.endswith("/v1/messages/count_tokens"):
                self.send(200, b'{"input_tokens": 42}')
                return
            if path.endswith("/v1/messages"):
                model.requests.append(body)
                tools = [t.get("name") for t in body.get("tools") or []]
                if _has_tool_result(body) and _tool_results_in(body) >= model.calls:
                    blocks, stop = [{"type": "text", "text": model.final_text}], "end_turn"
                elif model.tool in tools:
                    blocks = [{"type": "tool_use", "id": "toolu_" + uuid.uuid4().hex[:24],
                               "name": model.tool, "input": dict(model.input)}]  # fmt: skip
                    stop = "tool_use"
                else:
                    blocks, stop = [{"type": "text", "text": "ok"}], "end_turn"
                name = str(body.get("model", "claude-fake"))
                self.send(200, anthropic_stream(name, blocks, stop), "text/event-stream")
                return
            if path.endswith("/responses"):
                model.requests.append(body)
                item = _responses_item(model, body)
                name = str(body.get("model", "gpt-fake"))
                self.send(200, responses_stream(name, item), "text/event-stream")
                return
            self.send(404, b'{"type": "error", "error": {"type": "not_found_error"}}')

    return Handler


@contextmanager
def scripted_model() -> Iterator[ScriptedModel]:
    """A scripted model server on 127.0.0.1 (both APIs), stopped at the end."""
    model = ScriptedModel()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(model))
    model.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield model
    finally:
        server.shutdown()
        server.server_close()


def run_claude(
    claude: Path, project: Path, home: Path, model: ScriptedModel, prompt: str = "go"
) -> dict[str, Any]:
    """``claude -p`` in ``project`` against ``model``; its JSON result."""
    env = {
        **os.environ, "HOME": str(home), "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{model.port}",
        "ANTHROPIC_API_KEY": "sk-test", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1", "DISABLE_ERROR_REPORTING": "1",
    }  # fmt: skip
    done = subprocess.run(
        [str(claude), "-p", prompt, "--output-format", "json", "--permission-mode", "default"],
        cwd=project, env=env, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode in (0, 1), f"claude failed ({done.returncode}): {done.stderr[-2000:]}"
    try:
        result: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        raise AssertionError(f"claude printed no JSON: {done.stdout[-2000:]}") from None
    return result


CODEX_CONFIG = """
model = "gpt-fake"
model_provider = "fake"
approval_policy = "never"
sandbox_mode = "danger-full-access"

[model_providers.fake]
name = "fake"
base_url = "http://127.0.0.1:{port}/v1"
wire_api = "responses"
env_key = "FAKE_API_KEY"
"""


def run_codex(
    codex: Path,
    project: Path,
    home: Path,
    codex_home: Path,
    model: ScriptedModel,
    *,
    bypass_trust: bool = True,
    prompt: str = "go",
) -> list[dict[str, Any]]:
    """``codex exec`` in ``project`` against ``model``; its JSON events."""
    config = codex_home / "config.toml"
    if not config.exists():
        config.write_text(CODEX_CONFIG.format(port=model.port))
    env = {**os.environ, "HOME": str(home), "CODEX_HOME": str(codex_home),
           "FAKE_API_KEY": "sk-test", "RUST_LOG": "warn"}  # fmt: skip
    command = [str(codex), "exec", "--skip-git-repo-check", "--disable", "plugins", "--json"]
    if bypass_trust:
        command.append("--dangerously-bypass-hook-trust")
    done = subprocess.run(
        [*command, prompt], cwd=project, env=env, capture_output=True, text=True, timeout=180,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    events = []
    for raw in done.stdout.splitlines():
        try:
            events.append(json.loads(raw))
        except ValueError:
            continue
    assert events, f"codex printed nothing ({done.returncode}): {done.stderr[-2000:]}"
    return events
