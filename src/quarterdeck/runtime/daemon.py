"""The headless daemon: the runtime without a screen, until SIGTERM or SIGINT, then a drain.

Logs are JSON lines on stderr. The control API is served on ``<state-dir>/quarterdeck.sock``
(and over TCP with ``--listen``); ``--metrics-port`` serves Prometheus text on 127.0.0.1 too. At
start the state directory is made private (:func:`~quarterdeck.store.statedir.secure_state_dir`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from quarterdeck.domain.clock import format_instant, utc_now
from quarterdeck.runtime.api_serve import ControlOptions
from quarterdeck.runtime.config import RuntimeConfig
from quarterdeck.runtime.runtime import Runtime
from quarterdeck.store.database import Database
from quarterdeck.store.statedir import secure_state_dir

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as one JSON line."""
        entry: dict[str, Any] = {
            "at": format_instant(utc_now()),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: int = logging.INFO) -> None:
    """Send the runtime's logs to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("quarterdeck")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


async def serve_metrics(runtime: Runtime, host: str, port: int) -> asyncio.Server:
    """Serve ``GET /metrics`` (Prometheus text) for ``runtime`` on ``host:port``."""
    from quarterdeck.runtime.prometheus import render

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), timeout=5)
            while (await asyncio.wait_for(reader.readline(), timeout=5)) not in (
                b"\r\n",
                b"\n",
                b"",
            ):
                pass
            path = request.split()[1].decode() if len(request.split()) > 1 else "/"
            if path.split("?")[0] == "/metrics":
                body = (await render(runtime)).encode()
                head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4"
            else:
                body, head = b"not found\n", "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain"
            writer.write(
                f"{head}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            )
            writer.write(body)
            await writer.drain()
        except (TimeoutError, ConnectionError, IndexError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)


async def _stop_when_idle(db: Database, stop: asyncio.Event, poll_s: float = 0.25) -> None:
    """Set ``stop`` once no receipt waits to be applied and no mission is queued or running
    (dead-lettered turns waiting for an operator do not count as work)."""
    from quarterdeck.store.queries import pending_work

    while not stop.is_set():
        await asyncio.sleep(poll_s)
        if await pending_work(db) == 0:
            stop.set()


async def run_headless(
    db: Database,
    config: RuntimeConfig,
    *,
    state_dir: Path,
    node_id: str | None = None,
    metrics_host: str = "127.0.0.1",
    metrics_port: int | None = None,
    config_source: str = "built-in",
    until_idle: bool = False,
    control: ControlOptions | None = None,
) -> int:
    """Run until SIGTERM/SIGINT (or, with ``until_idle``, until no work is left), then drain.
    Returns the exit code.

    ``control``: where the control API is served (None: the state directory's socket).

    Raises:
        StateDirError: the state directory cannot be given its modes or group.
        ServeError, ListenError: the control API cannot be served as asked.
    """
    log = logging.getLogger("quarterdeck.daemon")
    changed = secure_state_dir(state_dir, config.control.supervisors_group)
    if changed:
        log.warning("state directory made private", extra={"changed": changed})
    if control is None:
        control = ControlOptions.for_state_dir(state_dir, config)
    runtime = Runtime(db, config, state_dir=state_dir, node_id=node_id, control=control)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await runtime.start()
    # What exists now (modules, configuration, the runtime) lives as long as the daemon: leave
    # it out of the collector's full passes, which otherwise rescan it all now and then.
    gc.freeze()
    server = None
    if metrics_port is not None:
        server = await serve_metrics(runtime, metrics_host, metrics_port)
        bound = server.sockets[0].getsockname()[1] if server.sockets else metrics_port
        log.info("metrics served", extra={"host": metrics_host, "port": bound})
    if runtime.control is not None:
        log.info(
            "control API served",
            extra={"socket": str(runtime.control.socket_path),
                   "agents_socket": str(runtime.control.agent_socket_path),
                   "tcp": runtime.control.tcp_address},
        )  # fmt: skip
    log.info(
        "daemon running",
        extra={"node": runtime.node_id, "config": config_source, "database": db.display_url,
               "lanes": sorted(config.lanes)},
    )  # fmt: skip
    if until_idle:
        watcher = loop.create_task(_stop_when_idle(db, stop))
    await stop.wait()
    if until_idle:
        watcher.cancel()
    log.info("draining", extra={"node": runtime.node_id, "running": runtime.running,
                                "grace_s": config.drain_grace_s})  # fmt: skip
    if server is not None:
        server.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()
    await runtime.stop()
    log.info("daemon stopped", extra={"node": runtime.node_id})
    return 0
