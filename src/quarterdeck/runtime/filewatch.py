"""Watching files: each file's SHA-256, and :class:`FileWatch`, which hands batches of changed
files to a handler.

Files are watched with ``watchfiles`` through their folders, so that editors that save by
writing a new file and renaming it over the old one are seen as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from watchfiles import Change, awatch

log = logging.getLogger("quarterdeck.runtime.drift")

MISSING = "missing"
"""The hash of a file that does not exist or cannot be read."""
DEBOUNCE_MS = 50
STEP_MS = 20
_CHUNK = 1 << 20


def hash_file(path: Path) -> str:
    """SHA-256 (lowercase hex) of a file's bytes; :data:`MISSING` when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    except OSError:
        return MISSING
    return digest.hexdigest()


def _key(path: Path) -> str:
    """A path as the watcher reports it: absolute folder (not resolved) plus the name."""
    return os.path.join(os.path.abspath(path.parent), path.name)


def _real_key(path: Path) -> str:
    """The same path with the folder's symbolic links resolved (some platforms report that)."""
    return os.path.join(os.path.realpath(path.parent), path.name)


ChangeHandler = Callable[[set[Path]], Awaitable[None]]


class FileWatch:
    """Watches exact files (through their folders) and hands each batch of changed files to
    an async handler. A folder that does not exist is logged and skipped."""

    def __init__(
        self,
        paths: Iterable[Path],
        on_change: ChangeHandler,
        *,
        debounce_ms: int = DEBOUNCE_MS,
        step_ms: int = STEP_MS,
    ) -> None:
        self._files = {_key(path): path for path in paths}
        self._aliases = {_real_key(path): path for path in self._files.values()}
        self._aliases.update(self._files)
        self._on_change = on_change
        self._debounce_ms = debounce_ms
        self._step_ms = step_ms
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def files(self) -> list[Path]:
        """The watched files, as given."""
        return list(self._files.values())

    async def start(self) -> None:
        """Start watching in a task; returns once the folders are being watched."""
        if self._task is not None:
            return
        self._stop = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self.run(self._stop), name="qd-watch")
        # The task's first step sets up the watcher before it first waits.
        await asyncio.sleep(0)

    async def stop(self) -> None:
        """Stop watching and wait for the task to end."""
        if self._task is None or self._stop is None:
            return
        self._stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=5.0)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None

    async def run(self, stop_event: asyncio.Event | None = None) -> None:
        """Watch until ``stop_event`` is set (forever without one)."""
        stop_event = stop_event or asyncio.Event()
        folders = []
        for folder in sorted({os.path.dirname(key) for key in self._files}):
            if os.path.isdir(folder):
                folders.append(folder)
            else:
                log.warning("not watching %s: no such folder", folder)
        if not folders:
            await stop_event.wait()
            return

        def wanted(_change: Change, path: str) -> bool:
            return path in self._aliases

        try:
            async for changes in awatch(
                *folders,
                watch_filter=wanted,
                debounce=self._debounce_ms,
                step=self._step_ms,
                stop_event=stop_event,
                recursive=False,
            ):
                changed = {
                    self._aliases[path] for _change, path in changes if path in self._aliases
                }
                if not changed:
                    continue
                try:
                    await self._on_change(changed)
                except Exception:
                    log.exception("file change handler failed")
        except OSError as exc:
            log.error("cannot watch %s: %s", ", ".join(folders), exc)
            await stop_event.wait()
