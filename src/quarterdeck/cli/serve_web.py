"""``quarterdeck serve-web``: the control center in a browser. textual-serve serves a page, and
for each browser that opens it runs ``quarterdeck attach`` (with the same state directory and
API options) as a subprocess that draws through Textual's web driver.

Who the served console is: without a token, the OS user who started ``serve-web`` (the attach
process reaches the daemon on the state directory's socket, which names it by
``SO_PEERCRED``), with that user's role. With ``--api URL`` and a token (``--token-file`` or
``QUARTERDECK_TOKEN``), the token's principal, with its role.

Who may open the page: only a browser that shows the secret once, as ``?token=`` in the URL;
it then holds an HttpOnly, SameSite=Strict cookie for this run. The secret is the daemon token
when one is given, else a fresh one printed with the URL at start (as Jupyter does), so that
another user of the same machine, or a web page the browser visits, cannot drive the console.
The server binds 127.0.0.1 by default (reach it through an SSH tunnel); any other interface is
refused unless a daemon token is given, and TLS (``--tls-cert``, ``--tls-key``), as the daemon's
own ``--listen`` wants.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import os
import secrets
import shlex
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final

from quarterdeck.cli.common import UsageError, state_directory
from quarterdeck.cli.daemon import daemon_address
from quarterdeck.client.reach import START_HINT, ApiAddress

if TYPE_CHECKING:
    from aiohttp import web
    from aiohttp.typedefs import Middleware
    from textual_serve.server import Server

WEB_DRIVER: Final = "textual.drivers.web_driver:WebDriver"
"""The Textual driver textual-serve names in its subprocesses' ``TEXTUAL_DRIVER``."""
TOKEN_HINT: Final = "TOKEN: the token given for --api (--token-file or QUARTERDECK_TOKEN)"


def served_to_a_browser() -> bool:
    """Whether this process draws for textual-serve (its web driver), not on a terminal."""
    return os.environ.get("TEXTUAL_DRIVER") == WEB_DRIVER


def attach_argv(args: argparse.Namespace, address: ApiAddress) -> list[str]:
    """The ``quarterdeck attach`` each browser gets: this interpreter, the same state
    directory, API and attach options (paths made absolute)."""
    argv = [
        sys.executable,
        "-m",
        "quarterdeck",
        "--state-dir",
        str(state_directory(args).absolute()),
    ]
    if address.url is not None and args.api:
        argv += ["--api", args.api]
        if args.token_file:
            argv += ["--token-file", str(Path(args.token_file).absolute())]
    argv.append("attach")
    if args.read_only:
        argv.append("--read-only")
    if args.theme:
        argv += ["--theme", args.theme]
    if args.config:
        argv += ["--config", str(Path(args.config).absolute())]
    return argv


def secret_guard(secret: str, *, tls: bool = False) -> Middleware:
    """An aiohttp middleware that lets a browser in once it showed ``secret`` as ``?token=``:
    it answers with a redirect (the secret off the URL) that sets a cookie for this run.
    Without either: 401; a wrong token: 403; a websocket from another origin: 403."""
    from aiohttp import web

    session = secrets.token_urlsafe(32)
    cookie = "quarterdeck_" + hashlib.sha256(session.encode()).hexdigest()[:12]  # one a run
    expected = hashlib.sha256(secret.encode()).digest()

    @web.middleware
    async def guard(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        given = request.query.get("token")
        if given is not None:
            if not hmac.compare_digest(hashlib.sha256(given.encode()).digest(), expected):
                return web.Response(status=403, text="quarterdeck: wrong token\n")
            away = web.Response(status=303, headers={"Location": _without_token(request)})
            away.set_cookie(cookie, session, httponly=True, samesite="Strict", path="/", secure=tls)
            return away
        if not hmac.compare_digest(request.cookies.get(cookie, ""), session):
            return web.Response(
                status=401, text="quarterdeck: open the URL with ?token=SECRET (see serve-web)\n"
            )
        origin = request.headers.get("Origin")
        if request.path == "/ws" and origin and origin.split("://", 1)[-1] != request.host:
            return web.Response(status=403, text="quarterdeck: another origin\n")
        return await handler(request)

    return guard


def _without_token(request: web.Request) -> str:
    """The request's path and query, ``token`` left out."""
    query = [(k, v) for k, v in request.query.items() if k != "token"]
    return str(request.rel_url.with_query(query))


def console_server(command: str, secret: str, *, tls: bool = False) -> Server:
    """textual-serve's server of ``command``, behind :func:`secret_guard`; on shutdown each
    open console is told to quit (its websocket handler cancelled), so none outlives it."""
    from textual_serve.server import Server

    consoles: set[asyncio.Task[object]] = set()

    class ConsoleServer(Server):
        async def _make_app(self) -> web.Application:
            app = await super()._make_app()
            app.middlewares.append(secret_guard(secret, tls=tls))
            return app

        async def handle_index(self, request: web.Request) -> web.StreamResponse:
            # the page's websocket and assets at the address the browser used (a tunnel's port)
            self.public_url = f"{request.scheme}://{request.host}"
            response: web.StreamResponse = await super().handle_index(request)
            return response

        async def handle_websocket(self, request: web.Request) -> web.WebSocketResponse:
            task = asyncio.current_task()
            assert task is not None
            consoles.add(task)
            try:
                return await super().handle_websocket(request)
            finally:
                consoles.discard(task)

        async def on_startup(self, app: web.Application) -> None:
            pass  # no banner: serve_web_command says where it serves

        async def on_shutdown(self, app: web.Application) -> None:
            for task in consoles:
                task.cancel()

    return ConsoleServer(command, title="quarterdeck")


async def serve_web_command(args: argparse.Namespace, out: IO[str]) -> int:
    """Serve the control center to browsers until SIGINT or SIGTERM.

    Raises:
        UsageError: no daemon runs, a non-loopback ``--host`` without a daemon token and
            TLS, or the address cannot be bound.
    """
    from aiohttp import web

    from quarterdeck.runtime.api_serve import ServeError, is_loopback, tls_context

    if args.token_file and not args.api:
        raise UsageError("serve-web --token-file: give --api URL too (a token goes over TCP)")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UsageError("serve-web: --tls-cert and --tls-key go together")
    address = daemon_address(args)
    token = address.token if address is not None and address.url is not None else None
    if not is_loopback(args.host) and (token is None or args.tls_cert is None):
        raise UsageError(
            f"serve-web --host {args.host}: not a loopback address; serving the console to a"
            " network needs a token (--api URL --token-file FILE, from 'quarterdeck token"
            " create') and TLS (--tls-cert, --tls-key); or keep 127.0.0.1 and use an SSH tunnel"
        )
    if address is None:
        raise UsageError(
            f"no daemon is running on {state_directory(args)}: {START_HINT} there first"
        )
    tls = None
    if args.tls_cert is not None:
        try:
            tls = tls_context(Path(args.tls_cert), Path(args.tls_key))
        except ServeError as exc:
            raise UsageError(f"serve-web: {exc}") from None
    async with address.client() as api:  # who the consoles will be (a bad token stops here)
        me = await api.whoami()
    secret = token or secrets.token_urlsafe(24)
    server = console_server(shlex.join(attach_argv(args, address)), secret, tls=tls is not None)
    # textual-serve's own serve() would run a loop, signals and logging of its own: run its app
    runner = web.AppRunner(await server._make_app(), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, args.host, args.port, ssl_context=tls).start()
        except OSError as exc:
            raise UsageError(
                f"serve-web: cannot listen on {args.host}:{args.port}: {exc}"
            ) from None
        port = runner.addresses[0][1]
        shown = f"[{args.host}]" if ":" in args.host else args.host
        scheme = "http" if tls is None else "https"
        url = f"{scheme}://{shown}:{port}/?token=" + ("TOKEN" if token else secret)
        roles = ", ".join(sorted(me.roles)) or "none"
        out.write(
            f"quarterdeck: serving the control center (as {me.principal.label}, roles {roles})"
            f" on {url}\n" + (f"quarterdeck: {TOKEN_HINT}\n" if token else "")
        )
        out.flush()
        await _until_stopped()
    finally:
        await runner.cleanup()
    return 0


async def _until_stopped() -> None:
    """Wait for SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(number, stop.set)
    try:
        await stop.wait()
    finally:
        for number in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(number)
