"""The ``http`` lane against real HTTP servers on 127.0.0.1 (asyncio, minimal HTTP/1.1)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from quarterdeck.runtime.lanes.base import Decision, LaneFailure, MissionContext
from quarterdeck.runtime.lanes.http import HttpLane


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


Reply = tuple[int, Any] | None
"""(status, JSON body), or None to accept the request and never answer."""


class FakeProvider:
    """An OpenAI-compatible server on an ephemeral port; ``respond`` decides each reply."""

    def __init__(self, respond: Callable[[Request], Reply]) -> None:
        self.respond = respond
        self.requests: list[Request] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> FakeProvider:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            request_line, *header_lines = head.split("\r\n")
            method, path, _ = request_line.split(" ", 2)
            headers = {}
            for line in header_lines:
                if line:
                    key, _, value = line.partition(":")
                    headers[key.strip().lower()] = value.strip()
            raw = await reader.readexactly(int(headers.get("content-length", "0")))
            request = Request(method, path, headers, json.loads(raw) if raw else None)
            self.requests.append(request)
            reply = self.respond(request)
            if reply is None:
                await asyncio.Event().wait()
                return
            status, payload = reply
            data = json.dumps(payload).encode()
            writer.write(
                f"HTTP/1.1 {status} Status\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
                + data
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()


def completion(content: str | None = None, **message: Any) -> tuple[int, Any]:
    return 200, {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "test-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, **message},
                "finish_reason": "tool_calls" if message.get("tool_calls") else "stop",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


def answer(text: str) -> Callable[[Request], Reply]:
    return lambda request: completion(text)


def status(code: int) -> Callable[[Request], Reply]:
    return lambda request: (code, {"error": {"message": f"status {code}"}})


def hang(request: Request) -> Reply:
    return None


def refused_url() -> str:
    """A base URL on a port with nothing listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@dataclass
class Harness:
    events: list[tuple[str, dict[str, Any]]]
    actions: list[tuple[str, str, dict[str, Any]]]
    ctx: MissionContext

    def progress(self) -> list[str]:
        return [data["message"] for kind, data in self.events if kind == "progress"]


def harness(decide: Callable[[str, str, Mapping[str, Any]], Decision] | None = None) -> Harness:
    events: list[tuple[str, dict[str, Any]]] = []
    actions: list[tuple[str, str, dict[str, Any]]] = []

    def emit(kind: str, data: Mapping[str, Any]) -> None:
        events.append((kind, dict(data)))

    async def request_action(action_id: str, tool: str, args: Mapping[str, Any]) -> Decision:
        actions.append((action_id, tool, dict(args)))
        if decide is not None:
            return decide(action_id, tool, args)
        return Decision(action_id, "approved", args)

    ctx = MissionContext(
        mission_id="m-1",
        turn_id="t-1",
        workspace="acme",
        lane="llm",
        attempt=1,
        objective="summarise the ticket",
        input={"ticket": 42, "text": "printer on fire"},
        workdir=Path("."),
        emit=emit,
        request_action=request_action,
    )
    return Harness(events, actions, ctx)


async def run_lane(providers: list[dict[str, Any]], h: Harness, **options: Any) -> dict[str, Any]:
    lane = HttpLane("llm", {"providers": providers, **options})
    try:
        return await lane.run(h.ctx)
    finally:
        await lane.close()


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)


def test_answer_becomes_the_deliverable() -> None:
    h = harness()
    tools = [{"type": "function", "function": {"name": "search", "parameters": {}}}]

    async def scenario() -> tuple[dict[str, Any], FakeProvider]:
        async with FakeProvider(answer("all good")) as good:
            result = await run_lane(
                [{"url": good.url, "model": "m-small"}], h, tools=tools, system_prompt="be brief"
            )
            return result, good

    result, good = asyncio.run(scenario())
    assert result == {
        "content": "all good",
        "provider": good.url,
        "model": "test-model",
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }
    [request] = good.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert "authorization" not in request.headers
    body = request.body
    assert body["model"] == "m-small"
    assert body["tools"] == tools
    system, user = body["messages"]
    assert system == {"role": "system", "content": "be brief"}
    assert user["role"] == "user"
    assert "summarise the ticket" in user["content"]
    assert '"printer on fire"' in user["content"]
    assert h.progress() == []


def test_fails_over_from_a_5xx() -> None:
    h = harness()

    async def scenario() -> tuple[dict[str, Any], str, str]:
        async with FakeProvider(status(500)) as bad, FakeProvider(answer("ok")) as good:
            result = await run_lane([{"url": bad.url}, {"url": good.url}], h)
            assert len(bad.requests) == 1
            return result, bad.url, good.url

    result, bad_url, good_url = asyncio.run(scenario())
    assert result["content"] == "ok"
    assert result["provider"] == good_url
    assert h.progress() == [f"provider {bad_url} failed (HTTP 500), trying {good_url}"]


def test_fails_over_from_a_provider_that_never_answers() -> None:
    h = harness()

    async def scenario() -> tuple[dict[str, Any], float, str]:
        async with FakeProvider(hang) as silent, FakeProvider(answer("ok")) as good:
            started = time.monotonic()
            result = await run_lane([{"url": silent.url, "timeout_s": 0.5}, {"url": good.url}], h)
            assert len(silent.requests) == 1
            return result, time.monotonic() - started, silent.url

    result, elapsed, silent_url = asyncio.run(scenario())
    assert result["content"] == "ok"
    assert 0.4 < elapsed < 5
    [message] = h.progress()
    assert message.startswith(f"provider {silent_url} failed (timed out after 0.5 s), trying ")


def test_fails_over_from_a_refused_connection() -> None:
    h = harness()
    dead = refused_url()

    async def scenario() -> tuple[dict[str, Any], str]:
        async with FakeProvider(answer("ok")) as good:
            return await run_lane([{"url": dead}, {"url": good.url}], h), good.url

    result, good_url = asyncio.run(scenario())
    assert result["provider"] == good_url
    [message] = h.progress()
    assert message.startswith(f"provider {dead} failed (ConnectError")
    assert message.endswith(f"trying {good_url}")


def test_all_providers_failing_names_each() -> None:
    h = harness()
    dead = refused_url()

    async def scenario() -> tuple[str, list[str]]:
        async with (
            FakeProvider(status(503)) as unavailable,
            FakeProvider(status(429)) as limited,
            FakeProvider(hang) as silent,
        ):
            urls = [unavailable.url, limited.url, dead, silent.url]
            providers = [{"url": url, "timeout_s": 0.3} for url in urls]
            with pytest.raises(LaneFailure) as caught:
                await run_lane(providers, h)
            return caught.value.reason, urls

    reason, urls = asyncio.run(scenario())
    assert reason.startswith("all providers failed: ")
    assert f"{urls[0]}: HTTP 503" in reason
    assert f"{urls[1]}: HTTP 429" in reason
    assert f"{urls[2]}: ConnectError" in reason
    assert f"{urls[3]}: timed out after 0.3 s" in reason
    assert len(h.progress()) == 3


def test_a_4xx_fails_without_failover() -> None:
    h = harness()

    async def scenario() -> tuple[str, str, int]:
        async with FakeProvider(status(400)) as bad, FakeProvider(answer("ok")) as good:
            with pytest.raises(LaneFailure) as caught:
                await run_lane([{"url": bad.url}, {"url": good.url}], h)
            return caught.value.reason, bad.url, len(good.requests)

    reason, bad_url, good_requests = asyncio.run(scenario())
    assert reason.startswith(f"provider {bad_url} rejected the request: HTTP 400")
    assert "status 400" in reason
    assert good_requests == 0
    assert h.progress() == []


def test_tool_call_round_trip_carries_the_edited_args() -> None:
    def decide(action_id: str, tool: str, args: Mapping[str, Any]) -> Decision:
        return Decision(action_id, "edited", {"env": "staging"}, "prod is frozen")

    h = harness(decide)
    tool_call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "deploy", "arguments": json.dumps({"env": "prod"})},
    }

    def respond(request: Request) -> Reply:
        if request.body["messages"][-1]["role"] == "tool":
            return completion("deployed to staging")
        return completion(None, tool_calls=[tool_call])

    async def scenario() -> tuple[dict[str, Any], list[Request]]:
        async with FakeProvider(respond) as provider:
            return await run_lane([{"url": provider.url}], h), provider.requests

    result, requests = asyncio.run(scenario())
    assert h.actions == [("call_1", "deploy", {"env": "prod"})]
    assert result["content"] == "deployed to staging"
    assert result["usage"] == {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30}
    assert len(requests) == 2
    follow_up = requests[1].body["messages"]
    assert [m["role"] for m in follow_up] == ["system", "user", "assistant", "tool"]
    assert follow_up[2]["tool_calls"] == [tool_call]
    assert follow_up[3]["tool_call_id"] == "call_1"
    assert json.loads(follow_up[3]["content"]) == {
        "outcome": "edited",
        "args": {"env": "staging"},
        "reason": "prod is frozen",
    }


def test_endless_tool_calls_hit_the_round_cap() -> None:
    h = harness()
    tool_call = {"id": "c", "type": "function", "function": {"name": "search", "arguments": "{}"}}

    async def scenario() -> tuple[str, int]:
        async with FakeProvider(lambda r: completion(None, tool_calls=[tool_call])) as loop:
            with pytest.raises(LaneFailure) as caught:
                await run_lane([{"url": loop.url}], h, max_rounds=3)
            return caught.value.reason, len(loop.requests)

    reason, requests = asyncio.run(scenario())
    assert reason == "no final answer after 3 rounds of tool calls"
    assert requests == 3
    assert len(h.actions) == 3


def test_authorization_header_from_the_named_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QD_TEST_LLM_KEY", "sekret")
    monkeypatch.delenv("QD_TEST_UNSET_KEY", raising=False)
    h = harness()

    async def scenario() -> list[Request]:
        async with FakeProvider(answer("ok")) as provider:
            await run_lane([{"url": provider.url, "api_key_env": "QD_TEST_LLM_KEY"}], h)
            await run_lane([{"url": provider.url, "api_key_env": "QD_TEST_UNSET_KEY"}], h)
            return provider.requests

    keyed, unkeyed = asyncio.run(scenario())
    assert keyed.headers["authorization"] == "Bearer sekret"
    assert "authorization" not in unkeyed.headers


def test_cancellation_stops_a_waiting_request() -> None:
    h = harness()

    async def scenario() -> float:
        async with FakeProvider(hang) as silent:
            lane = HttpLane("llm", {"providers": [{"url": silent.url, "timeout_s": 30}]})
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(lane.run(h.ctx), 0.3)
            elapsed = time.monotonic() - started
            await lane.close()
            await lane.close()
            return elapsed

    assert asyncio.run(scenario()) < 2
    assert h.progress() == []
