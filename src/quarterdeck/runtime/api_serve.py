"""How a runtime serves its control API: where (the state directory's socket, the agents'
socket, optionally TCP with TLS), checked before anything is bound, and the server built from a
runtime's parts.

The agents' socket is in a fresh private folder of the temporary directory
(``quarterdeck-api-*``, made at each start), not in the state directory nor beside it: an
agent's environment names it, and must not lead to the state directory.

A TCP address that is not loopback is refused without a certificate and key: tokens must not
cross a network in clear text.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from quarterdeck.domain.authority import Principal, Roster
from quarterdeck.domain.commands import TokenRevoke
from quarterdeck.runtime.api import Command, ControlServer, Submit, VerifyToken
from quarterdeck.runtime.api_agents import AgentRegistry
from quarterdeck.runtime.api_common import HeadWatch
from quarterdeck.runtime.config import RuntimeConfig
from quarterdeck.runtime.listeners import default_socket_path
from quarterdeck.runtime.mcp_config import McpConfig
from quarterdeck.runtime.metrics import Metrics
from quarterdeck.runtime.token_cache import TokenCache
from quarterdeck.store.database import Database
from quarterdeck.store.tokens import TokenGrant, token_grant

AGENT_SOCKET_NAME: Final = "api.sock"
AGENT_FOLDER_PREFIX: Final = "quarterdeck-api-"
PASS_MODE: Final = 0o711
"""The agents' socket's folder when agents run as other OS users (they pass, not list)."""


class ServeError(Exception):
    """The control API cannot be served as asked (the message says what to change)."""


@dataclass(frozen=True, slots=True)
class ControlOptions:
    """Where a runtime serves its control API."""

    socket_path: Path
    agent_socket: bool = True
    """Serve agents on a socket of their own (see the module's docstring)."""
    group: str | None = None
    listen: tuple[str, int] | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    verify_token: VerifyToken | None = None
    """How bearer tokens are checked; None: against the tokens stored in the database."""
    agents_elsewhere: bool = False
    """Some lane runs its agents as another OS user: the agents' socket is opened to them."""
    mcp: McpConfig | None = None
    """The MCP gateway served at ``/mcp`` (its upstream servers' stderr goes to
    ``<state dir>/mcp``)."""

    @classmethod
    def for_state_dir(
        cls,
        state_dir: Path,
        config: RuntimeConfig,
        *,
        listen: str | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        socket_path: Path | None = None,
    ) -> ControlOptions:
        """The options of a runtime on ``state_dir`` (``listen`` as ``HOST:PORT``;
        ``socket_path``: the supervisors' socket when not the state directory's own, for
        several nodes that share one state directory).

        Raises:
            ServeError: ``listen`` is malformed, not loopback without TLS, or only one of
                the certificate and the key is given.
        """
        address = None if listen is None else parse_listen(listen)
        if (tls_cert is None) != (tls_key is None):
            raise ServeError("--tls-cert and --tls-key go together")
        if (tls_cert is not None) and address is None:
            raise ServeError("--tls-cert and --tls-key need --listen")
        if address is not None and tls_cert is None and not is_loopback(address[0]):
            raise ServeError(
                f"--listen {listen}: not a loopback address; serving tokens over a network"
                " needs TLS (--tls-cert and --tls-key)"
            )
        elsewhere = any(lane.options.get("run_as") is not None for lane in config.lanes.values())
        return cls(
            socket_path=socket_path or default_socket_path(state_dir),
            group=config.control.supervisors_group,
            listen=address,
            tls_cert=tls_cert,
            tls_key=tls_key,
            agents_elsewhere=elsewhere,
            mcp=config.mcp,
        )


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as a host and a port.

    Raises:
        ServeError: it is not shaped so, or the port is not 0-65535.
    """
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or int(port) > 65_535:
        raise ServeError(f"--listen {text!r}: expected HOST:PORT, such as 127.0.0.1:8470")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback address."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(found) and all(ipaddress.ip_address(a[4][0]).is_loopback for a in found)


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server TLS context (TLS 1.2 at least) from a certificate chain and its key.

    Raises:
        ServeError: the files cannot be read or do not match.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ServeError(f"--tls-cert {cert} / --tls-key {key}: {exc}") from None
    return context


def socket_in_use(path: Path) -> bool:
    """Whether a process accepts connections on the Unix socket ``path`` (another node on
    the same state directory serves the API: this one serves none)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def build_server(
    options: ControlOptions,
    *,
    roster: Roster,
    submit: Submit,
    command: Command,
    db: Database,
    node_id: str,
    metrics: Metrics,
    exposition: Callable[[], Awaitable[bytes]],
    agents: AgentRegistry,
    on_commit: Callable[[Callable[[int], None]], None],
    record: Submit | None = None,
) -> ControlServer:
    """The control server of a runtime (not yet started); its agents' folder is created
    (the runtime removes it when the server stops). ``record``: how the MCP gateway's events
    are recorded (``submit`` unless given).

    Raises:
        ServeError: the TLS files cannot be used, or the agents' folder cannot be created.
    """
    tls = None
    if options.tls_cert is not None and options.tls_key is not None:
        tls = tls_context(options.tls_cert, options.tls_key)
    agent_socket = None
    if options.agent_socket:
        try:
            folder = Path(tempfile.mkdtemp(prefix=AGENT_FOLDER_PREFIX))
            if options.agents_elsewhere:
                os.chmod(folder, PASS_MODE)
        except OSError as exc:
            raise ServeError(f"cannot create the agents' socket folder: {exc}") from None
        agent_socket = folder / AGENT_SOCKET_NAME
    watch = HeadWatch(db)
    on_commit(watch.notify)

    async def stored_token(token: str) -> TokenGrant | None:
        async with db.read() as conn:
            return await token_grant(conn, token)

    tokens = TokenCache(stored_token)

    async def command_then_forget(
        workspace: str,
        payload: Mapping[str, Any],
        principal: Principal,
        idempotency_key: str | None,
    ) -> Mapping[str, Any]:
        """A command; after a token's revocation, no token is trusted without looking."""
        try:
            return await command(workspace, payload, principal, idempotency_key)
        finally:
            if payload.get("command") == TokenRevoke.name:
                tokens.forget_all()

    return ControlServer(
        roster=roster, submit=submit, command=command_then_forget,
        socket_path=options.socket_path, exposition=exposition, group=options.group,
        listen=options.listen, tls=tls, verify_token=options.verify_token or tokens.principal,
        agents=agents, agent_socket_path=agent_socket,
        agent_socket_mode=0o666 if options.agents_elsewhere else None,
        db=db, watch=watch, node_id=node_id,
        counters=(metrics.api_requests, metrics.api_refusals),
        mcp=options.mcp, mcp_stderr_dir=options.socket_path.parent / "mcp", record=record,
    )  # fmt: skip
