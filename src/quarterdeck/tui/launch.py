"""Starting the control center: on an embedded runtime (``run``, ``demo``) or attached to a
running daemon's database (``attach``). The runtime's logs go to a file in the state
directory while the screen is up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from pathlib import Path

from quarterdeck.client.console import Console, EmbeddedConsole
from quarterdeck.runtime.api_serve import ControlOptions
from quarterdeck.runtime.config import RuntimeConfig
from quarterdeck.runtime.runtime import Runtime
from quarterdeck.store.database import Database
from quarterdeck.store.statedir import (
    LOG_FILENAME,
    create_private_file,
    secure_state_dir,
)
from quarterdeck.tui.app import create_app
from quarterdeck.tui.themes import resolve_theme


def log_to_file(state_dir: Path) -> Path:
    """Send the runtime's logs to ``<state_dir>/quarterdeck.log`` (the screen owns the
    terminal), a file only the daemon's user may read."""
    path = state_dir / LOG_FILENAME
    create_private_file(path)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return path


async def run_embedded(
    db: Database,
    config: RuntimeConfig,
    *,
    state_dir: Path,
    theme: str | None = None,
    keymap: Mapping[str, str] | None = None,
    demo: bool = False,
    speed: float = 1.0,
    node_id: str | None = None,
    control: ControlOptions | None = None,
) -> int:
    """The control center on a runtime in this process, which serves the control API
    (``control``; by default on the state directory's socket); the runtime drains when it
    quits. With ``demo``, the demo's feeder runs beside it (at ``speed``) and the header says
    where the demo's state is."""
    secure_state_dir(state_dir, config.control.supervisors_group)
    log_to_file(state_dir)
    if control is None:
        control = ControlOptions.for_state_dir(state_dir, config)
    runtime = Runtime(db, config, state_dir=state_dir, node_id=node_id, control=control)
    await runtime.start()
    stop = asyncio.Event()
    feeder: asyncio.Task[None] | None = None
    console = EmbeddedConsole(runtime)
    if demo:
        from quarterdeck.runtime.demo import DemoFeeder

        pace = f" at {speed:g}x speed" if speed != 1 else ""
        console.target = f"demo{pace} · state in {state_dir}"
        feeding = DemoFeeder(runtime.submit, speed=speed, lanes=console.lanes)
        feeder = asyncio.get_running_loop().create_task(feeding.run(stop))
    chosen, problem = resolve_theme(theme, state_dir / "themes")
    app = create_app(console, theme=chosen, theme_problem=problem, keymap=keymap)
    try:
        await app.run_async()
    finally:
        stop.set()
        if feeder is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(feeder, 5)
        await runtime.stop(grace_s=1.0)
    return 0


async def run_attached(
    console: Console,
    *,
    theme: str | None = None,
    themes_dir: Path | None = None,
    keymap: Mapping[str, str] | None = None,
) -> int:
    """The control center on another process's runtime (through its control API: see
    :class:`~quarterdeck.client.api_console.ApiConsole`); the console is closed at the end."""
    chosen, problem = resolve_theme(theme, themes_dir)
    app = create_app(console, theme=chosen, theme_problem=problem, keymap=keymap)
    try:
        await app.run_async()
    finally:
        await console.close()
    return 0
