"""The control API: HTTP (JSON) over the daemon's Unix socket and, optionally, over TCP.

Every request is made by an authenticated principal: on the Unix socket the kernel names the
peer (``SO_PEERCRED``), and a peer that is, or descends from, a registered agent process is that
agent; on TCP only a bearer token counts. Nothing the client sends names it. The routes:

- ``GET /v1/whoami``: the principal (``kind``, ``name``, ``label``, ``uid``, ``groups``,
  ``workspace``, ``roles``);
- ``POST /v1/envelopes``: a JSON array of envelope objects -> ``{"results": [{"status",
  "receipt", "errors"}, ...]}`` (commands go to ``/v1/commands``);
- ``POST /v1/commands``: ``{"workspace", "command": {"command": NAME, ...},
  "idempotency_key"?}`` -> the command's result;
- ``GET /metrics``: Prometheus text exposition.

Errors are ``{"error": message, "code": code}`` with 400, 401, 403, 404, 405, 413 or 500.
"""

from __future__ import annotations

import json
import logging
import socket
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
    may_administer,
    may_read,
    may_supervise,
)
from quarterdeck.runtime.listeners import UnixListener, listen_tcp, listen_unix
from quarterdeck.runtime.peers import (
    descends_from,
    peer_credentials,
    supervisor_principal,
)
from quarterdeck.store.receipts import UNKNOWN_WORKSPACE, IngestResult

log = logging.getLogger(__name__)

MAX_BODY: Final = 1024 * 1024
"""Largest request body accepted (bytes); a larger one is refused with 413."""
ADMIN_PREFIXES: Final = ("lane.", "fallback.")
"""Commands that act on the whole runtime, whatever their workspace: ``admin`` only."""
COMMAND_FIELDS: Final = frozenset({"workspace", "command", "idempotency_key"})
_PRINCIPAL: Final = web.RequestKey("principal", Principal)

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


class ApiError(Exception):
    """A request that is answered with an error: its HTTP status, stable code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    @classmethod
    def refused(cls, refusal: Refusal) -> ApiError:
        """403 for an authorization refusal."""
        return cls(403, refusal.code, refusal.message)


_HTTP_CODES: Final = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
}


def error_response(status: int, code: str, message: str) -> web.Response:
    """The JSON body of every error."""
    return web.json_response({"error": message, "code": code}, status=status)


def principal_of(request: web.Request) -> Principal:
    """The principal the middleware resolved for ``request``."""
    return request[_PRINCIPAL]


class ControlServer:
    """The control API of one runtime. It holds no runtime: it is given what it serves (the
    roster, how to submit envelopes and carry out commands, the metrics registry).

    ``agent_pids``: the pids of the agent processes the runtime runs; a Unix peer that is,
    or descends from, one of them is that agent (the runtime adds and removes them).
    """

    def __init__(
        self,
        *,
        roster: Roster,
        submit: Submit,
        command: Command,
        registry: CollectorRegistry,
        socket_path: Path,
        group: str | None = None,
        listen: tuple[str, int] | None = None,
        verify_token: VerifyToken | None = None,
        max_body: int = MAX_BODY,
    ) -> None:
        self.roster = roster
        self.agent_pids: set[int] = set()
        self.socket_path = socket_path
        self._submit = submit
        self._command = command
        self._registry = registry
        self._group = group
        self._listen = listen
        self._verify_token = verify_token
        self._max_body = max_body
        self._runner: web.AppRunner | None = None
        self._unix: UnixListener | None = None
        self._tcp: socket.socket | None = None
        self.app = web.Application(
            client_max_size=max_body, middlewares=[self._errors, self._authenticate]
        )
        self.app.router.add_get("/v1/whoami", self._whoami)
        self.app.router.add_post("/v1/envelopes", self._envelopes)
        self.app.router.add_post("/v1/commands", self._commands)
        self.app.router.add_get("/metrics", self._metrics)

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
            if self._listen is not None:
                self._tcp = listen_tcp(*self._listen)
                await web.SockSite(runner, self._tcp).start()
        except BaseException:
            await self.stop()
            raise
        log.info("control API listening", extra={"socket": str(self.socket_path)})

    async def stop(self) -> None:
        """Stop serving; remove the socket file."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._unix is not None:
            self._unix.close()
            self._unix = None
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
        """Every error becomes JSON; nothing unexpected leaks out (it is logged here)."""
        try:
            return await handler(request)
        except ApiError as exc:
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
            return error_response(exc.status, _HTTP_CODES.get(exc.status, "http_error"), message)
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
        if sock.family == socket.AF_UNIX:
            principal = self._peer_principal(sock)
        else:
            principal = await self._token_principal(request)
        request[_PRINCIPAL] = principal
        return await handler(request)

    def _peer_principal(self, sock: Any) -> Principal:
        try:
            credentials = peer_credentials(sock)
        except OSError as exc:
            raise ApiError(401, "unauthenticated", f"no peer credentials: {exc}") from None
        if descends_from(credentials.pid, self.agent_pids):
            return Principal(Kind.AGENT, f"agent:pid/{credentials.pid}")
        return supervisor_principal(credentials)

    async def _token_principal(self, request: web.Request) -> Principal:
        if self._verify_token is None:
            raise ApiError(
                401, "unauthenticated", "this daemon accepts no tokens: use its Unix socket"
            )
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "unauthenticated", "a bearer token is required over TCP")
        principal = await self._verify_token(token.strip())
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
        body = await _json_body(request)
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
        principal = principal_of(request)
        body = await _json_body(request)
        workspace, payload, key = _command_request(body)
        refusal = self._may_command(principal, workspace, payload)
        if refusal is not None:
            raise ApiError.refused(refusal)
        result = await self._command(workspace, payload, principal, key)
        return web.json_response(dict(result))

    def _may_command(
        self, principal: Principal, workspace: str, payload: Mapping[str, Any]
    ) -> Refusal | None:
        """The coarse check by command name (the store decides the fine-grained ones): no
        agent; ``admin`` for lane flags, fallback and any command across every workspace;
        ``supervisor`` in the workspace for the rest."""
        if principal.kind is Kind.AGENT:
            return Refusal("agent", f"{principal.label} is an agent: agents do not supervise")
        name = str(payload["command"])
        if name.startswith(ADMIN_PREFIXES) or payload.get("all_workspaces"):
            return may_administer(self.roster, principal)
        return may_supervise(self.roster, principal, workspace)

    async def _metrics(self, request: web.Request) -> web.Response:
        refusal = may_read(self.roster, principal_of(request), None)
        if refusal is not None:
            raise ApiError.refused(refusal)
        return web.Response(
            body=generate_latest(self._registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def _json_body(request: web.Request) -> Any:
    """The request's body as JSON (a 400 naming the problem when it is not)."""
    raw = await request.read()
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise ApiError(400, "bad_json", f"the body is not UTF-8: {exc.reason}") from None
    except json.JSONDecodeError as exc:
        raise ApiError(
            400,
            "bad_json",
            f"the body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
        ) from None
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "bad_json", f"the body is not JSON: {exc}") from None


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
