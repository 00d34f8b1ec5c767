"""A real headless browser for tests: Debian's Chromium, driven over the DevTools protocol
(a websocket, through aiohttp). Tests that need it skip when ``/usr/bin/chromium`` is missing,
and fail instead when ``REQUIRE_AGENT_TESTS`` is set (CI installs it)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1280,800", "--remote-debugging-port=0",
)  # fmt: skip

RECORD_SOCKETS = """
(() => {
  const Native = window.WebSocket;
  const decoder = new TextDecoder();
  window.__received = "";
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", (event) => {
        if (typeof event.data === "string") return;
        const text = window.__received + decoder.decode(event.data, {stream: true});
        window.__received = text.slice(-400000);
      });
    }
  };
})();
"""
"""Keeps what the page's websockets receive (as text) in ``window.__received``: the served
terminal draws on a canvas, so the page's own text says nothing about what it shows."""


def need_chromium() -> Path:
    """Chromium's path; skip without it (fail under ``REQUIRE_AGENT_TESTS``)."""
    if CHROMIUM.is_file():
        return CHROMIUM
    message = f"no {CHROMIUM} (install Debian's chromium package: apt-get install chromium)"
    if os.environ.get("REQUIRE_AGENT_TESTS"):
        pytest.fail(f"REQUIRE_AGENT_TESTS is set but {message}", pytrace=False)
    pytest.skip(message)


class Page:
    """One page of the browser, over its DevTools websocket."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self._socket = socket
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and return its result (events on the way are dropped)."""
        me = next(self._ids)
        await self._socket.send_json({"id": me, "method": method, "params": params})
        async for message in self._socket:
            answer = json.loads(message.data)
            if answer.get("id") == me:
                if "error" in answer:
                    raise AssertionError(f"{method}: {answer['error']}")
                result: dict[str, Any] = answer["result"]
                return result
        raise AssertionError(f"{method}: the browser closed the connection")

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (None while it cannot run)."""
        found = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return found["result"].get("value")

    async def wait_for(self, expression: str, timeout: float, what: str) -> Any:
        """Poll a JavaScript expression until it is truthy."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (value := await self.evaluate(expression)):
            if loop.time() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            await asyncio.sleep(0.1)
        return value

    async def press(self, key: str) -> None:
        """Type one character into the focused element."""
        for kind in ("keyDown", "keyUp"):
            await self.call(
                "Input.dispatchKeyEvent", type=kind, key=key, text=key if kind == "keyDown" else ""
            )

    async def screenshot(self, path: Path) -> bytes:
        """Save a PNG of the viewport to ``path``; its bytes."""
        shot = await self.call("Page.captureScreenshot", format="png")
        data = base64.b64decode(shot["data"])
        path.write_bytes(data)
        return data


@contextlib.asynccontextmanager
async def chromium(record_sockets: bool = True) -> AsyncIterator[Page]:
    """A fresh headless Chromium (its own profile) and its first page; stopped at the end."""
    binary = need_chromium()
    with tempfile.TemporaryDirectory(prefix="qd-chromium-") as profile:
        proc = subprocess.Popen(
            [str(binary), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            active = Path(profile) / "DevToolsActivePort"
            for _ in range(300):
                if active.is_file() and active.read_text().strip():
                    break
                assert proc.poll() is None, f"chromium exited with {proc.returncode}"
                await asyncio.sleep(0.1)
            port = int(active.read_text().split()[0])
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/json") as listing:
                    targets = await listing.json()
                [first] = [t for t in targets if t["type"] == "page"]
                async with http.ws_connect(first["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                    page = Page(ws)
                    await page.call("Page.enable")
                    if record_sockets:
                        await page.call(
                            "Page.addScriptToEvaluateOnNewDocument", source=RECORD_SOCKETS
                        )
                    yield page
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
