"""``/mcp`` on the control API: the MCP gateway (:mod:`quarterdeck.runtime.mcp_gateway`) served
over streamable HTTP, the official SDK's session manager run behind aiohttp.

Whoever connects, the gateway asks as an **agent**: a caller holding an agent credential asks as
itself (in its own workspace); anyone else's session asks as ``agent:mcp/<session>`` in the
configured ``[mcp] workspace``, so no call through the gateway is ever decided by the one who
made it. A Unix-socket caller that is not already an agent is registered as an agent process,
and so is the parent of ``quarterdeck mcp serve`` (the MCP client that started it): their later
commands on the socket are an agent's, which decides nothing.

Each call is an ``approval.request`` (the path of ``POST /v1/approvals/request``), so it shows in
the Approvals pane and on the ledger; results and sessions are recorded as event envelopes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any, Final

from aiohttp import web
from mcp.server.context import ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings

from quarterdeck.domain.authority import AGENT_PREFIX, Kind, Principal
from quarterdeck.runtime.api_agents import AgentRegistry
from quarterdeck.runtime.api_approvals import DECISION_FIELDS, CarryOut, idempotency_key
from quarterdeck.runtime.api_common import ApiError, HeadWatch, principal_of
from quarterdeck.runtime.mcp_config import McpConfig
from quarterdeck.runtime.mcp_gateway import LANE, Gateway, Session
from quarterdeck.runtime.peers import peer_credentials, proc_parent
from quarterdeck.store.database import Database
from quarterdeck.store.queries import get_item
from quarterdeck.store.queries.supervision import decided_approvals
from quarterdeck.store.receipts import IngestResult

log = logging.getLogger(__name__)

PATH: Final = "/mcp"
SCOPE_KEY: Final = "quarterdeck.session"
SESSION_HEADER: Final = "mcp-session-id"
MAX_DEPTH: Final = 64
MAX_SESSIONS: Final = 1000
"""Sessions remembered at once (the oldest is forgotten past it)."""
RELAY_HEADER: Final = "X-Quarterdeck-Relay"
"""Sent by ``quarterdeck mcp serve`` (``stdio``): its parent is the MCP client."""

Submit = Callable[[Sequence[Mapping[str, Any]]], Awaitable[Sequence[IngestResult]]]
"""Records envelopes (the control server's own ``submit``)."""


class DaemonSupervisor:
    """The gateway's :class:`~quarterdeck.runtime.mcp_gateway.Supervisor` inside the daemon:
    ``approval.request`` carried out for the session's agent principal, decisions read from the
    database as commits land, events submitted as envelopes (``submit``: the runtime's
    :meth:`~quarterdeck.runtime.runtime.Runtime.record` records and applies them in one
    commit)."""

    def __init__(self, command: CarryOut, submit: Submit, db: Database, watch: HeadWatch) -> None:
        self._command = command
        self._submit = submit
        self._db = db
        self._watch = watch

    async def ask(
        self, session: Session, action_id: str, tool: str, args: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        payload = {"command": "approval.request", "action_id": action_id, "tool": tool,
                   "args": dict(args), "lane": LANE}  # fmt: skip
        key = idempotency_key(action_id)
        return await self._command(session.workspace, payload, session.principal, key)

    async def decision(
        self, session: Session, approval_id: str, wait_s: float
    ) -> Mapping[str, Any] | None:
        async def check() -> dict[str, Any] | None:
            if not await decided_approvals(self._db, [approval_id]):
                return None
            item = await get_item(self._db, approval_id, workspace=session.workspace)
            return None if item is None else {k: item.get(k) for k in DECISION_FIELDS}

        return await self._watch.until(check, wait_s)

    async def record(self, events: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        envelopes = [
            {"idempotency_key": f"mcp:{uuid.uuid4().hex}", "workspace": workspace,
             "kind": "event", "payload": dict(event)}
            for workspace, event in events
        ]  # fmt: skip
        results = await self._submit(envelopes)
        for result in results:
            if result.status == "rejected":
                log.warning("MCP event not recorded", extra={"errors": list(result.errors)})


class McpRoutes:
    """The ``/mcp`` route of one control server (see the module's docstring)."""

    def __init__(
        self,
        config: McpConfig,
        *,
        command: CarryOut,
        submit: Submit,
        db: Database,
        watch: HeadWatch,
        agents: AgentRegistry,
        stderr_dir: Path | None = None,
    ) -> None:
        self.config = config
        self.gateway = Gateway(config, DaemonSupervisor(command, submit, db, watch),
                               stderr_dir=stderr_dir)  # fmt: skip
        self._agents = agents
        self._owners: dict[int, Principal] = {}
        self._sessions: dict[tuple[str, str], Session] = {}
        self._manager: StreamableHTTPSessionManager | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._starting = asyncio.Lock()

    def install(self, app: web.Application) -> None:
        """Add the route, and stop the gateway with the application."""
        app.router.add_route("*", PATH, self.handle)
        app.on_startup.append(self._startup)
        app.on_shutdown.append(self._shutdown)

    async def _startup(self, _app: web.Application) -> None:
        """The upstream servers start with the API, so the first call does not wait for them."""
        await self._started()

    async def _started(self) -> StreamableHTTPSessionManager:
        async with self._starting:
            if self._manager is None:
                self._manager = await self._start()
            return self._manager

    async def _start(self) -> StreamableHTTPSessionManager:
        server = self.gateway.server(self._session_of)
        manager = StreamableHTTPSessionManager(
            app=server, json_response=False,
            security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )  # fmt: skip
        ready = asyncio.Event()

        async def serve() -> None:
            async with manager.run():
                ready.set()
                await self._stop.wait()

        self._task = asyncio.create_task(serve(), name="mcp-gateway")
        await ready.wait()
        self.gateway.start()
        return manager

    async def _shutdown(self, _app: web.Application) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
        await self.gateway.close()

    # --- sessions ----------------------------------------------------------------------------

    def _session_of(self, ctx: ServerRequestContext[Any]) -> Session:
        scope = getattr(ctx.request, "scope", None)
        found = scope.get(SCOPE_KEY) if isinstance(scope, MutableMapping) else None
        if not isinstance(found, Session):
            raise RuntimeError("a gateway request without its session")
        return found

    def _session(self, caller: Principal, mcp_session: str | None) -> Session:
        """The gateway session of ``caller``'s MCP session (one per caller and session id)."""
        key = (caller.label, mcp_session or "")
        session = self._sessions.get(key)
        if session is not None:
            return session
        sid = mcp_session or uuid.uuid4().hex
        short = sid[:16]
        if caller.kind is Kind.AGENT and caller.workspace is not None:
            principal, workspace = caller, caller.workspace
        else:
            workspace = self.config.workspace
            name = f"{AGENT_PREFIX}mcp/{short}"
            principal = Principal(Kind.AGENT, name, workspace=workspace)
        session = Session(short, principal, workspace)
        self._sessions[key] = session
        while len(self._sessions) > MAX_SESSIONS:  # clients that never said goodbye
            del self._sessions[next(iter(self._sessions))]
        event = {"type": "mcp.session.started", "session": short, "agent": principal.label,
                 "caller": caller.label}  # fmt: skip
        self.gateway.note(workspace, event)
        return session

    def _ended(self, caller: Principal, mcp_session: str | None) -> None:
        """The client closed its session (``DELETE``): on the record, and forgotten."""
        session = self._sessions.pop((caller.label, mcp_session or ""), None)
        if session is not None:
            event = {"type": "mcp.session.ended", "session": session.id,
                     "agent": session.principal.label, "calls": session.calls}  # fmt: skip
            self.gateway.note(session.workspace, event)

    def _caller(self, request: web.Request) -> Principal:
        """Who a session belongs to: the request's principal, except for a Unix-socket
        process registered here as an agent, which stays who it was when it first came
        (it still asks as an agent: see :meth:`_session`).

        Raises:
            ApiError: 403 for an agent that has no workspace and was not registered here.
        """
        principal = principal_of(request)
        transport = request.transport
        sock = None if transport is None else transport.get_extra_info("socket")
        pid = None
        if sock is not None and sock.family == socket.AF_UNIX:
            pid = peer_credentials(sock).pid
        if principal.kind is Kind.AGENT and principal.workspace is None:
            first = None if pid is None else self._owner(pid)
            if first is None:
                raise ApiError(
                    403, "agent", f"{principal.label} has no workspace: use its session credential"
                )
            return first
        if principal.kind is Kind.SUPERVISOR and pid is not None:
            relayed = request.headers.get(RELAY_HEADER) == "stdio"
            self._register(pid, principal, relayed)
        return principal

    def _owner(self, pid: int) -> Principal | None:
        """Who first came as ``pid`` or as one of its ancestors (registered here)."""
        current: int | None = pid
        for _ in range(MAX_DEPTH):
            if current is None or current <= 1:
                return None
            if current in self._owners:
                return self._owners[current]
            current = proc_parent(current)
        return None

    def _register(self, pid: int, principal: Principal, relayed: bool) -> None:
        """``pid`` (and, when it is ``quarterdeck mcp serve``, its parent: the MCP client)
        become agent processes of the daemon."""
        for gone in [p for p in self._owners if not _alive(p)]:
            self._owners.pop(gone, None)
            self._agents.exited(gone)
        parent = proc_parent(pid) if relayed else None
        for each in (pid, parent):
            if each is not None and each > 1 and each != os.getpid():
                self._owners[each] = principal
                self._agents.started(each, None)

    # --- the route ---------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Serve one HTTP request of the streamable HTTP transport."""
        caller = self._caller(request)
        manager = await self._started()
        body = await request.read()
        session = self._session(caller, request.headers.get(SESSION_HEADER))
        scope: dict[str, Any] = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": request.method, "scheme": "http", "path": PATH, "raw_path": PATH.encode(),
            "query_string": request.query_string.encode(), "root_path": "",
            "headers": [(k.lower().encode("latin-1"), v.encode("latin-1"))
                        for k, v in request.headers.items()],
            "client": None, "server": ("quarterdeck", 0), SCOPE_KEY: session,
        }  # fmt: skip
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # cancelled once the response is done
            return {"type": "http.disconnect"}

        response: web.StreamResponse | None = None

        async def send(message: Mapping[str, Any]) -> None:
            nonlocal response
            if message["type"] == "http.response.start":
                response = web.StreamResponse(status=int(message["status"]))
                for name, value in message.get("headers", []):
                    response.headers.add(name.decode("latin-1"), value.decode("latin-1"))
                await response.prepare(request)
            elif message["type"] == "http.response.body" and response is not None:
                chunk = message.get("body", b"")
                if chunk:
                    await response.write(chunk)
                if not message.get("more_body"):
                    await response.write_eof()

        await manager.handle_request(scope, receive, send)
        if request.method == "DELETE":
            self._ended(caller, request.headers.get(SESSION_HEADER))
        if response is None:
            raise ApiError(500, "internal", "the MCP transport gave no answer")
        return response


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()
