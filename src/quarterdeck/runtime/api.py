"""The control API: HTTP (JSON) over the daemon's Unix socket and, optionally, over TCP.

Every request is made by an authenticated principal: on the Unix socket the kernel names the
peer (``SO_PEERCRED``), and a peer that is, or descends from, a registered agent process (or any
process this one started: the daemon runs no supervisors) is that agent; a session credential
the runtime issued (``Authorization: Bearer qds_...``) makes the request its agent's, pinned to
its workspace; on the agents' socket only a session credential counts, and on TCP only a bearer
token. Nothing the client sends names it. The routes here:

- ``GET /v1/whoami``: the principal (``kind``, ``name``, ``label``, ``uid``, ``groups``,
  ``workspace``, ``roles``);
- ``POST /v1/envelopes``: a JSON array of envelope objects -> ``{"results": [{"status",
  "receipt", "errors"}, ...]}`` (commands go to ``/v1/commands``);
- ``POST /v1/commands``: ``{"workspace", "command": {"command": NAME, ...},
  "idempotency_key"?}`` -> the command's result;
- ``GET /metrics``: Prometheus text exposition.

A request with the header ``Quarterdeck-Read-Only: 1`` may only read (``attach --read-only``).
The reads are in :mod:`.api_reads`, approval requests in :mod:`.api_approvals`, the MCP gateway
(``/mcp``, when ``[[mcp.servers]]`` are configured) in :mod:`.api_mcp`; the OpenAPI
description is ``docs/api/openapi.yaml``. Errors are ``{"error": message, "code": code}`` with 400, 401, 403, 404, 405, 413 or 500.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from quarterdeck.domain.authority import (
    Kind,
    Principal,
    Refusal,
    Roster,
    may_read,
    may_supervise,
)
from quarterdeck.runtime.api_agents import CREDENTIAL_PREFIX, AgentRegistry
from quarterdeck.runtime.api_approvals import Approvals
from quarterdeck.runtime.api_common import (
    HTTP_CODES,
    PRINCIPAL,
    ApiError,
    HeadWatch,
    error_response,
    json_body,
    principal_of,
)
from quarterdeck.runtime.api_hooks import Hooks
from quarterdeck.runtime.api_mcp import McpRoutes
from quarterdeck.runtime.api_reads import Reads
from quarterdeck.runtime.listeners import UnixListener, listen_tcp, listen_unix
from quarterdeck.runtime.mcp_config import McpConfig
from quarterdeck.runtime.peers import (
    PeerCredentials,
    descends_from,
    peer_credentials,
    supervisor_principal,
)
from quarterdeck.store.database import Database
from quarterdeck.store.receipts import UNKNOWN_WORKSPACE, IngestResult

log = logging.getLogger(__name__)

MAX_BODY: Final = 1024 * 1024
"""Largest request body accepted (bytes); a larger one is refused with 413."""
COMMAND_FIELDS: Final = frozenset({"workspace", "command", "idempotency_key"})
READ_ONLY_HEADER: Final = "Quarterdeck-Read-Only"
"""A client that sends this header (``1``) is refused every request but reads (``attach
--read-only``): the daemon holds it to that, whatever the client does later."""
AGENT_SOCKET_MODE: Final = 0o666
"""The agents' socket when agents run as other OS users (only a session credential counts
there, so reaching it grants nothing by itself)."""

Submit = Callable[[Sequence[Mapping[str, Any]]], Awaitable[Sequence[IngestResult]]]
"""Records envelopes, one result each, in order."""
VerifyToken = Callable[[str], Awaitable[Principal | None]]
"""The principal a bearer token stands for, or None (it must compare in constant time)."""


class Command(Protocol):
    """Carries out one command for ``principal`` in ``workspace``; returns its result."""

    def __call__(
        self,
        workspace: str,
        payload: Mapping[str, Any],
        principal: Principal,
        idempotency_key: str | None,
    ) -> Awaitable[Mapping[str, Any]]: ...


class ControlServer:
    """The control API of one runtime. It holds no runtime: it is given what it serves (the
    roster, how to submit envelopes and carry out commands, the metrics, and for the reads the
    database and a watch on its ledger head).

    ``agent_pids``: the pids of the agent processes the runtime runs (``agents.pids`` when an
    agent registry is given); a Unix peer that is, or descends from, one of them is that agent
    (the runtime adds and removes them). ``agent_socket_path``: a second Unix socket where only
    the session credentials of ``agents`` count (the address agents are given).
    """

    def __init__(
        self,
        *,
        roster: Roster,
        submit: Submit,
        command: Command,
        socket_path: Path,
        registry: CollectorRegistry | None = None,
        exposition: Callable[[], Awaitable[bytes]] | None = None,
        group: str | None = None,
        listen: tuple[str, int] | None = None,
        tls: ssl.SSLContext | None = None,
        verify_token: VerifyToken | None = None,
        agents: AgentRegistry | None = None,
        agent_socket_path: Path | None = None,
        agent_socket_mode: int | None = None,
        db: Database | None = None,
        watch: HeadWatch | None = None,
        node_id: str = "",
        counters: tuple[Counter[str], Counter[str]] | None = None,
        max_body: int = MAX_BODY,
        mcp: McpConfig | None = None,
        mcp_stderr_dir: Path | None = None,
        record: Submit | None = None,
    ) -> None:
        """``record``: how the MCP gateway's events are recorded (``submit`` unless given)."""
        self.roster = roster
        self.agents = agents or AgentRegistry()
        self.agent_pids: set[int] = self.agents.pids
        self.socket_path = socket_path
        self.agent_socket_path = agent_socket_path
        self._agent_socket_mode = agent_socket_mode
        self._submit = submit
        self._command = command
        self._registry = registry
        self._exposition = exposition
        self._group = group
        self._listen = listen
        self._tls = tls
        self._verify_token = verify_token
        self._max_body = max_body
        self._requests, self._refusals = counters or (Counter(), Counter())
        self._runner: web.AppRunner | None = None
        self._unix: UnixListener | None = None
        self._agent_unix: UnixListener | None = None
        self._agent_name: str | None = None
        self._tcp: socket.socket | None = None
        self._own_pid = os.getpid()
        self.app = web.Application(
            client_max_size=max_body, middlewares=[self._errors, self._authenticate]
        )
        self.app.router.add_get("/v1/whoami", self._whoami)
        self.app.router.add_post("/v1/envelopes", self._envelopes)
        self.app.router.add_post("/v1/commands", self._commands)
        self.app.router.add_get("/metrics", self._metrics)
        if db is not None:
            watch = watch or HeadWatch(db)
            self.app.router.add_routes(Reads(lambda: self.roster, db, watch, node_id).routes())
            self.app.router.add_routes(
                Approvals(lambda: self.roster, db, watch, command, self._may_submit).routes()
            )
            self.app.router.add_routes(Hooks(db, watch, command, submit, self._may_submit).routes())
            if mcp is not None and mcp.servers:
                McpRoutes(
                    mcp, command=command, submit=record or submit, db=db, watch=watch,
                    agents=self.agents, stderr_dir=mcp_stderr_dir,
                ).install(self.app)  # fmt: skip

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on the Unix socket (and the TCP address, if any).

        Raises:
            ListenError: the socket is held by another daemon, or the group is wrong.
            OSError: the TCP address cannot be bound.
        """
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        self._runner = runner
        try:
            self._unix = listen_unix(self.socket_path, group=self._group)
            await web.SockSite(runner, self._unix.sock).start()
            if self.agent_socket_path is not None:
                self._agent_unix = listen_unix(self.agent_socket_path)
                self._agent_name = self._agent_unix.sock.getsockname()
                if self._agent_socket_mode is not None:
                    os.chmod(self.agent_socket_path, self._agent_socket_mode)
                await web.SockSite(runner, self._agent_unix.sock).start()
            if self._listen is not None:
                self._tcp = listen_tcp(*self._listen)
                await web.SockSite(runner, self._tcp, ssl_context=self._tls).start()
        except BaseException:
            await self.stop()
            raise
        log.info("control API listening", extra={"socket": str(self.socket_path)})

    async def stop(self) -> None:
        """Stop serving; remove the socket file."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for listener in (self._unix, self._agent_unix):
            if listener is not None:
                listener.close()
        self._unix = self._agent_unix = None
        if self._tcp is not None:
            self._tcp.close()
            self._tcp = None

    @property
    def tcp_address(self) -> tuple[str, int] | None:
        """The TCP address served (with the port actually bound), or None."""
        if self._tcp is None:
            return None
        host, port = self._tcp.getsockname()[:2]
        return str(host), int(port)

    # --- middleware --------------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every error becomes JSON; nothing unexpected leaks out (it is logged here). Answers
        are counted by status, refusals by reason."""
        response = await self._answer(request, handler)
        self._requests[str(response.status)] += 1
        return response

    async def _answer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            if exc.status in (401, 403):
                self._refusals[exc.code] += 1
            response = error_response(exc.status, exc.code, exc.message)
            if exc.status == 401:
                response.headers["WWW-Authenticate"] = 'Bearer realm="quarterdeck"'
            return response
        except web.HTTPRequestEntityTooLarge:
            return error_response(
                413, "too_large", f"the request body exceeds {self._max_body} bytes"
            )
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            message = {
                404: f"no such route: {request.path}",
                405: f"{request.method} is not allowed on {request.path}",
            }.get(exc.status, exc.reason)
            return error_response(exc.status, HTTP_CODES.get(exc.status, "http_error"), message)
        except Exception:
            log.exception("control API request failed", extra={"path": request.path})
            return error_response(500, "internal", "internal error (see the daemon's log)")

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Resolve the request's principal before anything else looks at it."""
        transport = request.transport
        sock = None if transport is None else transport.get_extra_info("socket")
        if sock is None:
            raise ApiError(400, "closed", "the connection is closed")
        if sock.family != socket.AF_UNIX:
            principal = await self._token_principal(request)
        else:
            bearer = _bearer(request)
            agent_token = None
            if bearer is not None and not bearer.startswith(CREDENTIAL_PREFIX):
                agent_token = await self._agent_token(bearer)
                bearer = None  # on the socket the kernel names people; only agents send one
            try:
                credentials = peer_credentials(sock)
            except OSError as exc:
                raise ApiError(401, "unauthenticated", f"no peer credentials: {exc}") from None
            if agent_token is not None:
                principal = agent_token
            elif bearer is not None:
                principal = self._session_principal(credentials, bearer)
            elif self._agent_name is not None and sock.getsockname() == self._agent_name:
                raise ApiError(
                    401, "unauthenticated",
                    "this socket serves agents: send your session credential as a bearer token",
                )  # fmt: skip
            else:
                principal = self._peer_principal(credentials)
        request[PRINCIPAL] = principal
        read_only = request.headers.get(READ_ONLY_HEADER, "").lower() in ("1", "true", "yes")
        if read_only and request.method not in ("GET", "HEAD"):
            raise ApiError(
                403, "read_only",
                f"this connection is read-only ({READ_ONLY_HEADER}; attach --read-only):"
                f" {principal.label} may only read through it",
            )  # fmt: skip
        return await handler(request)

    def _peer_principal(self, credentials: PeerCredentials) -> Principal:
        """The person the kernel names, unless the peer is an agent process: a registered
        one or its descendant, or any process this one started (it may not be registered
        yet: the window between its start and its registration is closed this way)."""
        pid = credentials.pid
        if pid != self._own_pid and descends_from(pid, self.agent_pids | {self._own_pid}):
            return Principal(Kind.AGENT, f"agent:pid/{pid}")
        return supervisor_principal(credentials)

    def _session_principal(self, credentials: PeerCredentials, text: str) -> Principal:
        """The agent whose session credential ``text`` is (401 when it is none)."""
        principal = self.agents.principal(text)
        if principal is None:
            raise ApiError(
                401, "unauthenticated", "the session credential is unknown or its session ended"
            )
        if self.agents.foreign(credentials.pid, text):
            raise ApiError(
                403, "foreign_credential",
                f"process {credentials.pid} belongs to another session than {principal.label}",
            )  # fmt: skip
        return principal

    async def _agent_token(self, token: str) -> Principal | None:
        """The agent an agent token stands for (a hook's credential): on the socket it makes
        the caller that agent, never more than the kernel's name would; any other token is
        ignored there."""
        if self._verify_token is None:
            return None
        principal = await self._verify_token(token)
        return principal if principal is not None and principal.kind is Kind.AGENT else None

    async def _token_principal(self, request: web.Request) -> Principal:
        if self._verify_token is None:
            raise ApiError(
                401, "unauthenticated", "this daemon accepts no tokens: use its Unix socket"
            )
        token = _bearer(request)
        if token is None:
            raise ApiError(401, "unauthenticated", "a bearer token is required over TCP")
        principal = await self._verify_token(token)
        if principal is None:
            raise ApiError(401, "unauthenticated", "the token is unknown, expired or revoked")
        return principal

    # --- routes ------------------------------------------------------------------------------

    async def _whoami(self, request: web.Request) -> web.Response:
        principal = principal_of(request)
        return web.json_response(
            {
                "kind": principal.kind.value,
                "name": principal.name,
                "label": principal.label,
                "uid": principal.uid,
                "groups": sorted(principal.groups),
                "workspace": principal.workspace,
                "roles": sorted(self.roster.roles(principal)),
            }
        )

    async def _envelopes(self, request: web.Request) -> web.Response:
        principal = principal_of(request)
        body = await json_body(request)
        if not isinstance(body, list):
            raise ApiError(400, "bad_request", "the body must be a JSON array of envelopes")
        workspaces: set[str] = set()
        for index, envelope in enumerate(body):
            if not isinstance(envelope, dict):
                raise ApiError(400, "bad_request", f"envelope {index} is not a JSON object")
            if envelope.get("kind") == "command":
                raise ApiError(
                    400, "command_envelope", f"envelope {index} is a command: POST /v1/commands"
                )
            workspace = envelope.get("workspace")
            workspaces.add(workspace if isinstance(workspace, str) else UNKNOWN_WORKSPACE)
        for workspace in sorted(workspaces):
            refusal = self._may_submit(principal, workspace)
            if refusal is not None:
                raise ApiError.refused(refusal)
        results = await self._submit(body)
        return web.json_response({"results": [result.to_dict() for result in results]})

    def _may_submit(self, principal: Principal, workspace: str) -> Refusal | None:
        """Agents submit only within the workspace their credential pins; people need
        ``supervisor`` there."""
        if principal.kind is Kind.AGENT:
            if principal.workspace is None:
                return Refusal("agent", f"{principal.label} has no workspace to submit to")
            if principal.workspace != workspace:
                return Refusal(
                    "agent", f"{principal.label} may submit only to {principal.workspace!r}"
                )
            return None
        return may_supervise(self.roster, principal, workspace)

    async def _commands(self, request: web.Request) -> web.Response:
        """Carry out one command for the caller. Who may give it is decided by the store, in
        the command's own transaction (:mod:`quarterdeck.store.commands`), which records a
        refusal with the principal; a refused principal gets it as a 403."""
        principal = principal_of(request)
        body = await json_body(request)
        workspace, payload, key = _command_request(body)
        result = await self._command(workspace, payload, principal, key)
        code = result.get("refused")
        if isinstance(code, str):
            errors = result.get("errors") or [code]
            raise ApiError.refused(Refusal(code, str(errors[0])))
        return web.json_response(dict(result))

    async def _metrics(self, request: web.Request) -> web.Response:
        refusal = may_read(self.roster, principal_of(request), None)
        if refusal is not None:
            raise ApiError.refused(refusal)
        if self._exposition is not None:
            body = await self._exposition()
        else:
            body = generate_latest(self._registry or CollectorRegistry(auto_describe=False))
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _bearer(request: web.Request) -> str | None:
    """The request's bearer token, if it sends one."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _command_request(body: Any) -> tuple[str, dict[str, Any], str | None]:
    """``workspace``, the command payload and the idempotency key of a command request."""
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "the body must be a JSON object")
    problems = [f"{field}: unknown field" for field in sorted(set(body) - COMMAND_FIELDS)]
    workspace = body.get("workspace")
    if not isinstance(workspace, str) or not workspace:
        problems.append("workspace: is required (a workspace name)")
    payload = body.get("command")
    if not isinstance(payload, dict):
        problems.append('command: is required (an object {"command": NAME, ...})')
    else:
        if not isinstance(payload.get("command"), str) or not payload["command"]:
            problems.append("command.command: is required (the command's name)")
        if "actor" in payload:
            problems.append("command.actor: the actor is whoever sends the request; omit it")
    key = body.get("idempotency_key")
    if key is not None and (not isinstance(key, str) or not key):
        problems.append("idempotency_key: must be a non-empty string")
    if problems:
        raise ApiError(400, "bad_request", "; ".join(problems))
    assert isinstance(workspace, str) and isinstance(payload, dict)
    return workspace, payload, key
