"""``quarterdeck mcp serve``: the MCP gateway over stdio, for clients that launch their servers.

It relays the client's messages, unchanged, to the daemon's gateway at ``/mcp`` (streamable
HTTP) and back; the daemon runs the upstream servers and asks for every call as an agent
(:mod:`quarterdeck.runtime.api_mcp`). Where it connects, first match wins:

- inside a ``command``-lane mission (``QUARTERDECK_API`` and ``QUARTERDECK_SESSION_TOKEN`` set):
  the agents' socket with that session credential;
- ``--url URL`` (TCP): with the bearer token in the environment variable ``--token-env``
  (default ``QUARTERDECK_TOKEN``);
- otherwise the state directory's socket, as this OS user: the daemon then takes this process
  and its parent (the MCP client) for agent processes.

Nothing but protocol messages is written to stdout; problems go to stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import IO, TYPE_CHECKING, Any, Final

from quarterdeck.cli.common import state_directory

if TYPE_CHECKING:  # the command line builds its parser from here: the SDK loads on use
    import httpx2

DEFAULT_TOKEN_ENV: Final = "QUARTERDECK_TOKEN"
PATH: Final = "/mcp"


def add_mcp_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """``mcp serve`` on the command line's subparsers."""
    mcp = commands.add_parser("mcp", parents=[common], help="the MCP gateway")
    actions = mcp.add_subparsers(dest="mcp_command", metavar="ACTION", parser_class=type(mcp))
    actions.required = True
    serve = actions.add_parser(
        "serve", parents=[common], help="serve the daemon's MCP gateway over stdio"
    )
    serve.add_argument("--url", metavar="URL", help="the daemon's TCP address (http[s]://...)")
    serve.add_argument(
        "--token-env", default=DEFAULT_TOKEN_ENV, metavar="VAR",
        help=f"the variable holding the bearer token for --url (default {DEFAULT_TOKEN_ENV})",
    )  # fmt: skip


def _client(args: argparse.Namespace) -> tuple[str, httpx2.AsyncClient, str]:
    """The gateway's URL, an HTTP client that reaches it as described above, and where that
    is (for messages)."""
    import httpx2

    from quarterdeck.runtime.api_mcp import RELAY_HEADER
    from quarterdeck.runtime.listeners import default_socket_path

    timeout = httpx2.Timeout(30.0, read=None)
    api, credential = os.environ.get("QUARTERDECK_API"), os.environ.get("QUARTERDECK_SESSION_TOKEN")
    if api and credential:
        headers = {"Authorization": f"Bearer {credential}"}
        transport = httpx2.AsyncHTTPTransport(uds=api)
        client = httpx2.AsyncClient(transport=transport, headers=headers, timeout=timeout)
        return "http://quarterdeck" + PATH, client, api
    if args.url:
        token = os.environ.get(args.token_env)
        if not token:
            raise SystemExit(f"quarterdeck mcp serve: {args.token_env} holds no token for --url")
        headers = {"Authorization": f"Bearer {token}"}
        url = args.url.rstrip("/") + PATH
        return url, httpx2.AsyncClient(headers=headers, timeout=timeout), url
    socket_path = default_socket_path(state_directory(args))
    transport = httpx2.AsyncHTTPTransport(uds=str(socket_path))
    headers = {RELAY_HEADER: "stdio"}
    client = httpx2.AsyncClient(transport=transport, headers=headers, timeout=timeout)
    return "http://quarterdeck" + PATH, client, str(socket_path)


async def relay(url: str, http: httpx2.AsyncClient, err: IO[str]) -> None:
    """Relay stdio to the gateway at ``url`` until the client closes stdin (``http`` is
    closed by the caller)."""
    import anyio
    from mcp.client.streamable_http import streamable_http_client
    from mcp.server.stdio import stdio_server

    async with (
        stdio_server() as (client_read, client_write),
        streamable_http_client(url, http_client=http) as (gateway_read, gateway_write),
        anyio.create_task_group() as group,
    ):

        async def down() -> None:
            async for message in client_read:
                if isinstance(message, Exception):
                    err.write(f"quarterdeck mcp serve: unreadable message: {message}\n")
                    continue
                await gateway_write.send(message)
            group.cancel_scope.cancel()

        async def up() -> None:
            async for message in gateway_read:
                if isinstance(message, Exception):
                    err.write(f"quarterdeck mcp serve: the gateway: {message}\n")
                    continue
                await client_write.send(message)
            group.cancel_scope.cancel()

        group.start_soon(down)
        group.start_soon(up)


async def mcp_command(args: argparse.Namespace) -> int:
    """``quarterdeck mcp serve``: exit 1 with the reason on stderr when the daemon is not there,
    refuses, or the relay breaks."""
    url, http, where = _client(args)
    try:
        problem = await _check(url, http, where)
        if problem is not None:
            sys.stderr.write(f"quarterdeck mcp serve: {problem}\n")
            return 1
        await relay(url, http, sys.stderr)
    except Exception as exc:  # the client sees the pipe close; say why on stderr
        sys.stderr.write(f"quarterdeck mcp serve: the relay stopped: {_leaf(exc)}\n")
        return 1
    finally:
        await http.aclose()
    return 0


async def _check(url: str, http: httpx2.AsyncClient, where: str) -> str | None:
    """Why the daemon cannot serve us (None: it answers and knows us)."""
    import httpx2

    whoami = url.removesuffix(PATH) + "/v1/whoami"
    try:
        answer = await http.get(whoami)
    except httpx2.TransportError as exc:
        return (
            f"no daemon answers at {where} ({type(exc).__name__}: {exc}); is `quarterdeck run "
            "--headless` running on this state directory?"
        )
    if answer.status_code != 200:
        try:
            reason = answer.json().get("error", answer.text)
        except ValueError:
            reason = answer.text
        return f"the daemon refused us: HTTP {answer.status_code}: {reason}"
    return None


def _leaf(exc: BaseException) -> str:
    """The first exception inside ``exc`` that is not a group, as text."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"
