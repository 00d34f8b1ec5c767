"""One upstream MCP server kept connected for the gateway and the ``http`` lane: started over
stdio (its stderr appended to a file, whose tail is kept) or reached over streamable HTTP with
the official SDK's client; when it exits or stops answering it is started again, with backoff."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TextIO

import mcp_types as types
from mcp import Client, MCPDeprecationWarning, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from quarterdeck.runtime.mcp_config import McpServer

log = logging.getLogger(__name__)

PING_S: Final = 2.0
"""How often a connected server is pinged (a server that does not answer is restarted)."""
PING_TIMEOUT_S: Final = 10.0
DOWN_WAIT_S: Final = 2.0
"""How long a call waits for a server that already failed (it is being started again)."""
BACKOFF_INITIAL_S: Final = 0.5
BACKOFF_MAX_S: Final = 30.0
STDERR_TAIL: Final = 4000


class UpstreamDown(Exception):
    """The server is not connected (it is being started again); the message says why."""


OnExit = Callable[[str, str, str], None]
"""``on_exit(server, reason, stderr_tail)``: the server exited or stopped answering."""


class Upstream:
    """One server (see the module's docstring). ``start`` launches the keeper task; calls wait
    for a connection up to their timeout."""

    def __init__(
        self,
        server: McpServer,
        *,
        stderr_path: Path | None = None,
        on_exit: OnExit | None = None,
        backoff_initial_s: float = BACKOFF_INITIAL_S,
        backoff_max_s: float = BACKOFF_MAX_S,
    ) -> None:
        self.server = server
        self.name = server.name
        self.restarts = 0
        self.last_error: str | None = None
        self._stderr_path = stderr_path
        self._stderr: TextIO | None = None
        self._on_exit = on_exit
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._client: Client | None = None
        self._tools: list[types.Tool] = []
        self._ready = asyncio.Event()
        self._broken = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Launch the keeper (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self._keep(), name=f"mcp-upstream-{self.name}")

    async def ready(self, timeout_s: float) -> Client:
        """The connected client, waiting up to ``timeout_s`` for one.

        Raises:
            UpstreamDown: not connected within the timeout.
        """
        self.start()
        if self.last_error is not None:  # it failed before: say so rather than wait long
            timeout_s = min(timeout_s, DOWN_WAIT_S)
        try:
            async with asyncio.timeout(timeout_s):
                await self._ready.wait()
        except TimeoutError:
            reason = f": {self.last_error}" if self.last_error else ""
            raise UpstreamDown(f"MCP server {self.name!r} is not running{reason}") from None
        assert self._client is not None
        return self._client

    async def close(self) -> None:
        """Stop the server and the keeper."""
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    # --- calls -------------------------------------------------------------------------------

    async def tools(self, timeout_s: float = 30.0) -> list[types.Tool]:
        """The server's tools as listed when it last connected; while it is being started
        again, that listing at once (or UpstreamDown at once if it never connected); before
        its first start, after waiting up to ``timeout_s`` for it.

        Raises:
            UpstreamDown: it is not connected (see above).
        """
        self.start()
        if not self._ready.is_set() and self.last_error is not None:
            if self._tools:
                return list(self._tools)
            raise UpstreamDown(f"MCP server {self.name!r} is not running: {self.last_error}")
        await self.ready(timeout_s)
        return list(self._tools)

    async def call(
        self, tool: str, arguments: dict[str, Any], timeout_s: float
    ) -> types.CallToolResult:
        """Call ``tool``; a broken connection marks the server for a restart.

        Raises:
            UpstreamDown: not connected, or the connection broke during the call.
            mcp.MCPError: the server answered with a protocol error.
        """
        client = await self.ready(timeout_s)
        try:
            return await client.call_tool(tool, arguments, read_timeout_seconds=timeout_s)
        except (OSError, EOFError, ConnectionError) as exc:
            self._broken.set()
            raise UpstreamDown(f"MCP server {self.name!r} broke off: {exc}") from exc
        except Exception as exc:
            if _closed(exc):
                self._broken.set()
                raise UpstreamDown(f"MCP server {self.name!r} broke off: {exc!r}") from exc
            raise

    def stderr_tail(self, chars: int = STDERR_TAIL) -> str:
        """The end of what the server wrote to stderr (every run of it)."""
        if self._stderr is None or self._stderr_path is None:
            return ""
        self._stderr.flush()
        path = self._stderr_path
        with contextlib.suppress(OSError), path.open("rb") as raw:
            size = path.stat().st_size
            raw.seek(max(0, size - chars))
            return raw.read().decode("utf-8", "replace")
        return ""

    # --- the keeper --------------------------------------------------------------------------

    def _transport(self) -> Any:
        server = self.server
        if server.url is not None:
            return streamable_http_client(server.url)
        assert server.command is not None
        if self._stderr is None:
            if self._stderr_path is not None:
                self._stderr_path.parent.mkdir(parents=True, exist_ok=True)
                self._stderr = self._stderr_path.open("a", encoding="utf-8")
            else:
                handle, name = tempfile.mkstemp(prefix=f"mcp-{self.name}-", suffix=".stderr")
                self._stderr_path = Path(name)
                self._stderr = os.fdopen(handle, "a", encoding="utf-8")
        params = StdioServerParameters(
            command=server.command, args=list(server.args), env=dict(server.env) or None,
            cwd=server.cwd,
        )  # fmt: skip
        return stdio_client(params, errlog=self._stderr)

    async def _keep(self) -> None:
        initial, most = self._backoff
        delay = initial
        while not self._closing:
            reason = "exited"
            try:
                async with Client(self._transport(), mode="legacy") as client:
                    tools: list[types.Tool] = []
                    cursor: str | None = None
                    while True:
                        page = await client.list_tools(cursor=cursor)
                        tools.extend(page.tools)
                        cursor = page.next_cursor
                        if not cursor:
                            break
                    self._client, self._tools = client, tools
                    self.last_error = None
                    self._broken.clear()
                    self._ready.set()
                    delay = initial
                    reason = await self._watch(client)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
            finally:
                self._ready.clear()
                self._client = None
            if self._closing:
                return
            self.last_error = reason
            self.restarts += 1
            log.warning(
                "MCP server stopped; starting it again",
                extra={"server": self.name, "reason": reason, "in_s": delay},
            )
            if self._on_exit is not None:
                self._on_exit(self.name, reason, self.stderr_tail())
            await asyncio.sleep(delay)
            delay = min(delay * 2, most)

    async def _watch(self, client: Client) -> str:
        """Returns once the connection is gone (a failed call or ping), with the reason."""
        while True:
            broken = asyncio.ensure_future(self._broken.wait())
            try:
                await asyncio.wait([broken], timeout=PING_S)
            finally:
                broken.cancel()
            if self._broken.is_set():
                return "the connection broke"
            try:
                async with asyncio.timeout(PING_TIMEOUT_S):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", MCPDeprecationWarning)
                        await client.send_ping()
            except TimeoutError:
                return f"no answer to a ping within {PING_TIMEOUT_S:g} s"
            except Exception as exc:
                return f"ping failed: {type(exc).__name__}: {exc}"


def _closed(exc: BaseException) -> bool:
    """Whether ``exc`` says the connection is gone (anyio's closed streams, the SDK's
    "connection closed")."""
    name = type(exc).__name__
    if name in ("ClosedResourceError", "BrokenResourceError", "EndOfStream"):
        return True
    return "connection closed" in str(exc).lower()
