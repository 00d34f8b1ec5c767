"""The ``http`` lane: a model behind an OpenAI-compatible chat completions API.

Options:

- ``providers``: tables tried in order, each with ``url`` (the API base, e.g.
  ``http://127.0.0.1:8081/v1``) and optional ``model``, ``api_key_env`` (the name of an
  environment variable holding a bearer key) and ``timeout_s`` (per request, default 30);
- ``model``: the model for providers that name none (omitted from the request when unset);
- ``system_prompt``: the system message (a short default otherwise);
- ``tools``: OpenAI tool definitions, passed through unchanged;
- ``max_rounds``: how many tool-call rounds a mission may take (default 8);
- ``mcp_servers``: MCP servers whose tools the model is offered (tables as in
  ``[[mcp.servers]]``: ``name`` and ``command``/``args``/``env``/``cwd`` or ``url``).

A request fails over to the next provider on a connection error, a timeout, a 5xx or a 429;
any other 4xx fails the mission at once (the request itself is bad). Each tool call the model
makes becomes an action request. A call of an MCP server's tool is asked as ``server__tool``
with the tool's annotations (:data:`~quarterdeck.domain.policy.ANNOTATIONS_ARG`), and once
allowed it runs on that server with the decided arguments: the server's real result goes back
to the model (and its SHA-256 and size on the mission's record). Any other call is only
decided: the decision (outcome, possibly edited args, reason) goes back as its result. The final
assistant message is the deliverable.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final

import httpx
from pydantic import Field

from quarterdeck.domain.policy import ANNOTATIONS_ARG
from quarterdeck.runtime.lanes.base import Adapter, LaneFailure, LaneOptions, MissionContext
from quarterdeck.runtime.mcp_config import McpServer
from quarterdeck.runtime.mcp_tools import McpTools
from quarterdeck.runtime.validation import otherwise, required, says

DEFAULT_TIMEOUT_S: Final = 30.0
DEFAULT_MAX_ROUNDS: Final = 8
DEFAULT_SYSTEM_PROMPT: Final = (
    "You are an agent working on a mission for an operator. The user message gives the "
    "objective and its input as JSON. Use the tools offered when you need to act; each tool "
    "result tells you whether the operator approved, rejected or edited the call. Finish with "
    "a concise answer."
)
_BODY_SNIPPET: Final = 200


@dataclass(frozen=True, slots=True)
class Provider:
    """One OpenAI-compatible endpoint."""

    url: str
    model: str | None = None
    api_key_env: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def endpoint(self) -> str:
        """The chat completions URL."""
        return self.url.rstrip("/") + "/chat/completions"


class _ProviderDown(Exception):
    """This provider cannot answer now; try the next one."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _Reply:
    message: dict[str, Any]
    model: str | None
    usage: Mapping[str, Any] | None


class ProviderOptions(LaneOptions):
    """One entry of ``providers``; a ``model`` or ``api_key_env`` that is not a usable string
    is ignored, as it always was."""

    url: Annotated[str, says("a URL string is required")] = required()
    model: Annotated[str | None, otherwise(None)] = None
    """Absent: the lane's ``model``."""
    api_key_env: Annotated[str | None, otherwise(None)] = None
    timeout_s: Annotated[float, Field(gt=0)] = DEFAULT_TIMEOUT_S


class HttpOptions(LaneOptions):
    """The options listed in the module's docstring; a ``model``, ``system_prompt``, ``tools``
    or ``max_rounds`` that is unusable falls back to its default, as it always did."""

    providers: Annotated[
        list[ProviderOptions],
        Field(min_length=1),
        says("a non-empty list of provider tables is required", parts=False),
    ] = required()
    model: Annotated[str | None, otherwise(None)] = None
    system_prompt: Annotated[str, otherwise(DEFAULT_SYSTEM_PROMPT)] = DEFAULT_SYSTEM_PROMPT
    tools: Annotated[list[Any] | None, otherwise(None)] = None
    max_rounds: Annotated[int, Field(gt=0), otherwise(DEFAULT_MAX_ROUNDS)] = DEFAULT_MAX_ROUNDS
    mcp_servers: list[McpServer] = Field(default_factory=list)

    def provider_list(self) -> list[Provider]:
        """The providers in order, each with its model (or the lane's)."""
        return [
            Provider(
                url=entry.url,
                model=entry.model if "model" in entry.model_fields_set else self.model,
                api_key_env=entry.api_key_env or None,
                timeout_s=entry.timeout_s,
            )
            for entry in self.providers
        ]


def _snippet(response: httpx.Response) -> str:
    text = " ".join(response.text.split())
    return text if len(text) <= _BODY_SNIPPET else text[:_BODY_SNIPPET] + "..."


def _add_usage(
    total: dict[str, Any] | None, usage: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """Sum the numeric fields of ``usage`` into ``total`` (the usage over every round)."""
    if usage is None:
        return total
    total = {} if total is None else total
    for key, value in usage.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            previous = total.get(key, 0)
            total[key] = (previous if isinstance(previous, int | float) else 0) + value
        elif key not in total:
            total[key] = value
    return total


class HttpLane:
    """Runs missions against OpenAI-compatible providers, failing over in order."""

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        self.name = name
        parsed = HttpOptions.parse(name, options)
        self.providers = parsed.provider_list()
        self.system_prompt = parsed.system_prompt
        self.tools: list[Any] | None = list(parsed.tools) if parsed.tools else None
        self.max_rounds = parsed.max_rounds
        self.mcp = McpTools(parsed.mcp_servers) if parsed.mcp_servers else None
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(follow_redirects=False)
        return self._client

    async def run(self, ctx: MissionContext) -> dict[str, Any]:
        """Converse with the model until it answers without tool calls."""
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": self._user_message(ctx)},
        ]
        usage: dict[str, Any] | None = None
        current = 0
        tools = self.tools
        if self.mcp is not None:
            tools = [*(self.tools or []), *await self.mcp.definitions()]
        for round_number in range(1, self.max_rounds + 1):
            current, reply = await self._complete(ctx, messages, current, tools)
            usage = _add_usage(usage, reply.usage)
            tool_calls = reply.message.get("tool_calls")
            if not isinstance(tool_calls, list) or not tool_calls:
                provider = self.providers[current]
                content = reply.message.get("content")
                return {
                    "content": content if content is not None else "",
                    "provider": provider.url,
                    "model": reply.model or provider.model,
                    "usage": usage,
                }
            calls = [
                self._normalise_call(ctx, call, round_number, index)
                for index, call in enumerate(tool_calls)
            ]
            messages.append(
                {"role": "assistant", "content": reply.message.get("content"), "tool_calls": calls}
            )
            for call in calls:
                messages.append(await self._decide(ctx, call))
        raise LaneFailure(f"no final answer after {self.max_rounds} rounds of tool calls")

    async def close(self) -> None:
        """Close the shared HTTP client and stop the MCP servers."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
        if self.mcp is not None:
            await self.mcp.close()

    @staticmethod
    def _user_message(ctx: MissionContext) -> str:
        payload = json.dumps(dict(ctx.input), ensure_ascii=False, indent=2, default=str)
        return f"Objective: {ctx.objective}\n\nInput (JSON):\n{payload}"

    @staticmethod
    def _normalise_call(
        ctx: MissionContext, call: Any, round_number: int, index: int
    ) -> dict[str, Any]:
        """The tool call as it goes back to the model, with an id even if the server gave none."""
        normal: dict[str, Any] = dict(call) if isinstance(call, Mapping) else {}
        if not isinstance(normal.get("id"), str) or not normal["id"]:
            normal["id"] = f"{ctx.mission_id}:{round_number}:{index}"
        normal.setdefault("type", "function")
        return normal

    async def _decide(self, ctx: MissionContext, call: dict[str, Any]) -> dict[str, Any]:
        """Ask for a decision on one tool call; the ``tool`` message reporting it."""
        function = call.get("function")
        function = function if isinstance(function, Mapping) else {}
        tool = function.get("name")
        raw_args = function.get("arguments") or "{}"
        try:
            args = (
                json.loads(raw_args, parse_constant=_not_json)
                if isinstance(raw_args, str) else raw_args
            )  # fmt: skip
        except ValueError:  # JSONDecodeError, or NaN / Infinity (no canonical JSON has them)
            args = None
        result: dict[str, Any]
        entry = None if self.mcp is None or not isinstance(tool, str) else self.mcp.entry(tool)
        if entry is not None and isinstance(args, Mapping) and ANNOTATIONS_ARG not in args:
            assert self.mcp is not None
            content = await self.mcp.decide_and_run(ctx, call["id"], entry, args)
            return {"role": "tool", "tool_call_id": call["id"], "content": content}
        if isinstance(tool, str) and tool and isinstance(args, Mapping):
            if ANNOTATIONS_ARG in args:
                problem = f"the argument {ANNOTATIONS_ARG!r} is reserved"
                ctx.emit("log", {"message": f"tool call {call['id']} not requested: {problem}"})
                result = {"outcome": "rejected", "args": {}, "reason": problem}
                return {"role": "tool", "tool_call_id": call["id"], "content": json.dumps(result)}
            decision = await ctx.request_action(call["id"], tool, args)
            result = {
                "outcome": decision.outcome,
                "args": dict(decision.args),
                "reason": decision.reason,
            }
        else:
            problem = "arguments are not a JSON object" if tool else "no function name"
            ctx.emit("log", {"message": f"tool call {call['id']} not requested: {problem}"})
            result = {"outcome": "rejected", "args": {}, "reason": problem}
        return {
            "role": "tool",
            "tool_call_id": call["id"],
            "content": json.dumps(result, ensure_ascii=False, default=str),
        }

    async def _complete(
        self,
        ctx: MissionContext,
        messages: list[dict[str, Any]],
        start: int,
        tools: list[Any] | None,
    ) -> tuple[int, _Reply]:
        """One completion, starting with provider ``start`` (the one that last answered)."""
        order = [*range(start, len(self.providers)), *range(start)]
        failures: list[str] = []
        for position, index in enumerate(order):
            provider = self.providers[index]
            try:
                return index, await self._post(provider, messages, tools)
            except _ProviderDown as down:
                failures.append(f"{provider.url}: {down.reason}")
                if position + 1 < len(order):
                    following = self.providers[order[position + 1]]
                    ctx.emit(
                        "progress",
                        {
                            "message": f"provider {provider.url} failed ({down.reason}), "
                            f"trying {following.url}"
                        },
                    )
        raise LaneFailure("all providers failed: " + "; ".join(failures))

    async def _post(
        self, provider: Provider, messages: list[dict[str, Any]], tools: list[Any] | None
    ) -> _Reply:
        """POST to one provider.

        Raises:
            _ProviderDown: unreachable, timed out, 5xx, 429 or a malformed answer.
            LaneFailure: any other non-2xx status (the request is bad; no failover).
        """
        body: dict[str, Any] = {"messages": messages}
        if provider.model is not None:
            body["model"] = provider.model
        if tools:
            body["tools"] = tools
        headers = {"Accept": "application/json"}
        key = os.environ.get(provider.api_key_env) if provider.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        try:
            async with asyncio.timeout(provider.timeout_s):
                response = await self._http().post(
                    provider.endpoint,
                    json=body,
                    headers=headers,
                    timeout=httpx.Timeout(provider.timeout_s),
                )
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise _ProviderDown(f"timed out after {provider.timeout_s:g} s") from exc
        except httpx.TransportError as exc:
            detail = str(exc) or "connection failed"
            raise _ProviderDown(f"{type(exc).__name__}: {detail}") from exc
        status = response.status_code
        if status == 429 or status >= 500:
            raise _ProviderDown(f"HTTP {status}")
        if 400 <= status < 500:
            hint = ""
            if status in (401, 403) and provider.api_key_env and not key:
                hint = f" (environment variable {provider.api_key_env} is not set)"
            raise LaneFailure(
                f"provider {provider.url} rejected the request: HTTP {status}{hint}: "
                f"{_snippet(response)}"
            )
        if not 200 <= status < 300:
            raise _ProviderDown(f"unexpected HTTP {status}")
        return self._reply(response)

    @staticmethod
    def _reply(response: httpx.Response) -> _Reply:
        try:
            data = response.json()
        except ValueError as exc:
            raise _ProviderDown(f"answer is not JSON: {_snippet(response)}") from exc
        choices = data.get("choices") if isinstance(data, Mapping) else None
        first = choices[0] if isinstance(choices, list) and choices else None
        message = first.get("message") if isinstance(first, Mapping) else None
        if not isinstance(message, Mapping):
            raise _ProviderDown("answer has no choices[0].message")
        model = data.get("model")
        usage = data.get("usage")
        return _Reply(
            message=dict(message),
            model=model if isinstance(model, str) else None,
            usage=usage if isinstance(usage, Mapping) else None,
        )


ADAPTER = Adapter("http", HttpOptions, HttpLane)


def _not_json(name: str) -> Any:
    """``NaN`` and the infinities are not JSON: a tool call's arguments holding one are
    refused like any other arguments that are not a JSON object."""
    raise ValueError(f"{name} is not JSON")
