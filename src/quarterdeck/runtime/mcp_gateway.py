"""The MCP gateway's core: an MCP server to the agent and a client of the upstream servers.

``tools/list`` lists the upstream servers' tools (a name two servers share is given as
``server__tool`` for both); each ``tools/call`` is asked of the runtime's supervision path as
an ``approval.request`` (lane ``mcp``, tool ``server__tool``, the call's arguments with the
tool's annotations under :data:`~quarterdeck.domain.policy.ANNOTATIONS_ARG`), waits for a
person when the policy says so (sending progress notifications meanwhile), is forwarded with
the arguments the decision allows, and its result is recorded (SHA-256, size, and at most
``max_result_bytes`` of it) as it is returned (the record is written beside the answer, not
before it: the decision is on the ledger before anything runs). A refusal is a tool result with ``isError``
and the reason, never a protocol error. How asking and recording reach the runtime is a
:class:`Supervisor`: in the daemon (:mod:`quarterdeck.runtime.api_mcp`)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import mcp_types as types
from mcp.server.caching import CacheHint
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server

from quarterdeck.domain.authority import Principal
from quarterdeck.domain.policy import ANNOTATIONS_ARG
from quarterdeck.domain.states import APPROVAL_ALLOWED
from quarterdeck.runtime.mcp_config import SEPARATOR, McpConfig, McpServer
from quarterdeck.runtime.mcp_upstream import Upstream, UpstreamDown

log = logging.getLogger(__name__)

LANE: Final = "mcp"
"""The lane every gateway call is asked under (rules on MCP tools name it)."""
CALL_TIMEOUT_S: Final = 300.0
RECORD_LINGER_S: Final = 0.05
"""How long events wait to be written together."""
LIST_TTL_MS: Final = 5000
"""How long a client may reuse the tool listing (servers restart, tools come and go)."""
SPEC_DEFAULTS: Final = {
    "readOnlyHint": False,
    "destructiveHint": True,
    "idempotentHint": False,
    "openWorldHint": True,
}
"""The protocol's meaning of an annotation a server leaves out."""


def annotations_of(tool: types.Tool) -> dict[str, bool]:
    """The tool's four hints, each filled with the protocol's default when absent."""
    given = tool.annotations
    found = {
        "readOnlyHint": None if given is None else given.read_only_hint,
        "destructiveHint": None if given is None else given.destructive_hint,
        "idempotentHint": None if given is None else given.idempotent_hint,
        "openWorldHint": None if given is None else given.open_world_hint,
    }
    return {k: SPEC_DEFAULTS[k] if v is None else bool(v) for k, v in found.items()}


@dataclass
class Session:
    """One connected client: who asks (an agent principal) and in which workspace."""

    id: str
    principal: Principal
    workspace: str
    calls: int = 0

    def next_action(self) -> str:
        """A fresh action id for this session's next call."""
        self.calls += 1
        return f"mcp/{self.id}/{self.calls}"


class Supervisor(Protocol):
    """How the gateway reaches the runtime's supervision path."""

    async def ask(
        self, session: Session, action_id: str, tool: str, args: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        """The ``approval.request`` result (``verdict`` allow, deny or pending)."""

    async def decision(
        self, session: Session, approval_id: str, wait_s: float
    ) -> Mapping[str, Any] | None:
        """The approval's decision once made within ``wait_s`` (its state, edited args and
        reason), else None."""

    async def record(self, events: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        """Put events (each a workspace and an event: ``type`` and its fields) on the record,
        in one go."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One tool as the agent sees it."""

    name: str
    """The name the agent calls."""
    server: str
    tool: types.Tool

    @property
    def qualified(self) -> str:
        """The name policy rules see: ``server__tool``."""
        return f"{self.server}{SEPARATOR}{self.tool.name}"


def _object(value: Any) -> dict[str, Any] | None:
    """A JSON object given as such or as its text; None otherwise."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return dict(value) if isinstance(value, Mapping) else None


def refusal(reason: str) -> types.CallToolResult:
    """A refused call, as a tool result the agent reads."""
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=f"Quarterdeck refused this call: {reason}")],
        is_error=True,
    )


def result_record(result: types.CallToolResult, cap: int) -> dict[str, Any]:
    """What the ledger keeps of a result: its SHA-256 and size (of its canonical JSON), and
    at most ``cap`` bytes of it."""
    body = result.model_dump(mode="json", by_alias=True, exclude_none=True)
    body.pop("_meta", None)
    raw = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    kept = raw[:cap].decode("utf-8", "ignore")
    return {
        "sha256": hashlib.sha256(raw).hexdigest(),
        "bytes": len(raw),
        "is_error": bool(result.is_error),
        "result": kept,
        "truncated": len(raw) > cap,
    }


@dataclass
class Catalogue:
    """The tools offered, by the name the agent calls."""

    entries: dict[str, Entry] = field(default_factory=dict)

    @classmethod
    def of(cls, listed: Mapping[str, list[types.Tool]]) -> Catalogue:
        """Namespace the names two servers share."""
        seen: dict[str, int] = {}
        for tools in listed.values():
            for tool in tools:
                seen[tool.name] = seen.get(tool.name, 0) + 1
        entries: dict[str, Entry] = {}
        for server, tools in listed.items():
            for tool in tools:
                name = tool.name if seen[tool.name] == 1 else f"{server}{SEPARATOR}{tool.name}"
                entries[name] = Entry(name, server, tool)
        return cls(entries)


class Gateway:
    """The upstream servers of one configuration, and the calls made through them."""

    def __init__(
        self, config: McpConfig, supervisor: Supervisor, *, stderr_dir: Path | None = None
    ) -> None:
        self.config = config
        self.supervisor = supervisor
        self.upstreams = {
            server.name: self._upstream(server, stderr_dir) for server in config.servers
        }
        self._pending: list[tuple[str, Mapping[str, Any]]] = []
        self._flusher: asyncio.Future[None] | None = None
        self._listed = Catalogue.of({})
        """The catalogue as last listed (see :meth:`input_schema`)."""

    def _upstream(self, server: McpServer, stderr_dir: Path | None) -> Upstream:
        path = None if stderr_dir is None else stderr_dir / f"{server.name}.stderr"
        return Upstream(server, stderr_path=path, on_exit=self._exited)

    def _exited(self, server: str, reason: str, stderr: str) -> None:
        event = {"type": "mcp.server.exited", "server": server, "reason": reason, "stderr": stderr}
        self.note(self.config.workspace, event)

    def note(
        self, workspace: str, event: Mapping[str, Any], session: Session | None = None
    ) -> None:
        """Record ``event`` in the background (a result as it is returned, a refusal, a
        session starting, a server exiting): gathered for :data:`RECORD_LINGER_S` and written
        in one go, off the path of the answer."""
        payload = dict(event)
        if session is not None:
            payload.setdefault("session", session.id)
            payload.setdefault("agent", session.principal.label)
        self._pending.append((workspace, payload))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush(RECORD_LINGER_S))

    async def _flush(self, linger_s: float) -> None:
        await asyncio.sleep(linger_s)
        batch, self._pending = self._pending, []
        if batch:
            try:
                await self.supervisor.record(batch)
            except Exception:
                log.exception("MCP events not recorded", extra={"events": len(batch)})

    def start(self) -> None:
        """Start every upstream server."""
        for upstream in self.upstreams.values():
            upstream.start()

    async def close(self) -> None:
        """Stop every upstream server."""
        for upstream in self.upstreams.values():
            await upstream.close()
        if self._flusher is not None:
            await asyncio.wait([self._flusher], timeout=5)
        await self._flush(0)

    async def catalogue(self, timeout_s: float = 30.0) -> Catalogue:
        """The tools of every server that answers within ``timeout_s`` (one that does not is
        left out of this listing)."""
        listed: dict[str, list[types.Tool]] = {}
        for name, upstream in self.upstreams.items():
            try:
                listed[name] = await upstream.tools(timeout_s)
            except UpstreamDown as exc:
                log.warning("MCP server not listed", extra={"server": name, "reason": str(exc)})
        self._listed = Catalogue.of(listed)
        return self._listed

    def input_schema(self, name: str) -> Mapping[str, Any] | None:
        """A tool's input schema as last listed, or None (the MCP SDK checks a call's
        ``Mcp-Param-*`` headers against it; without this it would list every tool again on
        each call, a large part of the gateway's own cost)."""
        entry = self._listed.entries.get(name)
        return None if entry is None else entry.tool.input_schema

    async def list_tools(self) -> list[types.Tool]:
        """The tools as the agent sees them."""
        catalogue = await self.catalogue()
        return [e.tool.model_copy(update={"name": n}) for n, e in catalogue.entries.items()]

    async def call(
        self,
        session: Session,
        name: str,
        arguments: Mapping[str, Any] | None,
        progress: Callable[[float, str], Awaitable[None]] | None = None,
    ) -> types.CallToolResult:
        """Decide, forward and record one call (see the module's docstring)."""
        catalogue = await self.catalogue()
        entry = catalogue.entries.get(name)
        if entry is None:
            return refusal(f"no tool named {name!r}")
        args = dict(arguments or {})
        if ANNOTATIONS_ARG in args:
            return refusal(f"the argument {ANNOTATIONS_ARG!r} is reserved")
        action_id = session.next_action()
        asked = {**args, ANNOTATIONS_ARG: annotations_of(entry.tool)}
        answer = await self.supervisor.ask(session, action_id, entry.qualified, asked)
        allowed, effective, reason, approval = await self._verdict(session, answer, progress)
        base = {"session": session.id, "agent": session.principal.label, "action_id": action_id,
                "tool": entry.qualified, "approval": approval}  # fmt: skip
        if not allowed:
            self.note(session.workspace, {"type": "mcp.tool.refused", **base, "reason": reason})
            return refusal(reason or "refused")
        effective.pop(ANNOTATIONS_ARG, None)
        try:
            result = await self.upstreams[entry.server].call(
                entry.tool.name, effective, CALL_TIMEOUT_S
            )
        except UpstreamDown as exc:
            result = types.CallToolResult(
                content=[types.TextContent(type="text", text=str(exc))], is_error=True
            )
        except Exception as exc:
            result = types.CallToolResult(
                content=[types.TextContent(type="text", text=f"the MCP server failed: {exc}")],
                is_error=True,
            )
        kept = result_record(result, self.config.max_result_bytes)
        self.note(session.workspace, {"type": "mcp.tool.result", **base, **kept}, session)
        return result

    async def _verdict(
        self,
        session: Session,
        answer: Mapping[str, Any],
        progress: Callable[[float, str], Awaitable[None]] | None,
    ) -> tuple[bool, dict[str, Any], str | None, str | None]:
        """Whether the call may run, with which arguments, why not, and its approval."""
        if not answer.get("ok"):
            errors = answer.get("errors") or ["the request was refused"]
            return False, {}, "; ".join(map(str, errors)), None
        verdict = answer.get("verdict")
        args = dict(answer.get("effective_args") or answer.get("args") or {})
        if verdict == "allow":
            return True, args, None, None
        approval = answer.get("approval")
        if verdict != "pending" or not isinstance(approval, str):
            return False, {}, str(answer.get("reason") or "denied by policy"), None
        waited = 0
        while True:
            decision = await self.supervisor.decision(
                session, approval, self.config.progress_interval_s
            )
            if decision is not None:
                break
            waited += 1
            if progress is not None:
                await progress(float(waited), f"waiting for a supervisor to decide {approval}")
        state = str(decision.get("state"))
        if state in APPROVAL_ALLOWED:
            edited = _object(decision.get("edited_args"))
            return True, edited if edited is not None else args, None, approval
        why = decision.get("reason_code") or state
        note = decision.get("reason_text")
        by = decision.get("decided_by")
        reason = f"{state} ({why})" + (f": {note}" if note else "") + (f" by {by}" if by else "")
        return False, {}, reason, approval

    def server(self, session_of: Callable[[ServerRequestContext[Any]], Session]) -> Server[Any]:
        """The MCP server the agent talks to; ``session_of`` names each request's session."""

        async def list_tools(
            ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
        ) -> types.ListToolsResult:
            return types.ListToolsResult(tools=await self.list_tools())

        async def call_tool(
            ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
        ) -> types.CallToolResult:
            async def progress(done: float, message: str) -> None:
                await ctx.session.report_progress(done, None, message)

            return await self.call(session_of(ctx), params.name, params.arguments, progress)

        return Server(
            "quarterdeck", version="1", on_list_tools=list_tools, on_call_tool=call_tool,
            get_tool_input_schema=self.input_schema,
            cache_hints={"tools/list": CacheHint(ttl_ms=LIST_TTL_MS)},
            instructions="Every tool call is decided by Quarterdeck's policy and may wait for a "
            "person; a refusal comes back as a tool error with its reason.",
        )  # fmt: skip
