"""Watching files: reading a file only when it is a regular file under a size cap, each
file's SHA-256, and :class:`FileWatch`, which hands batches of changed files to a handler.

A watched file may be replaced by anyone who can write its folder: a link to ``/dev/zero``,
a FIFO or a huge file must not hang the daemon or exhaust its memory. Files are opened without
blocking (``O_NONBLOCK``: opening a FIFO does not wait for a writer), their kind and size are
checked on the open descriptor (``fstat``), and at most the cap plus one byte is read.

Files are watched with ``watchfiles`` through their folders, so that editors that save by
writing a new file and renaming it over the old one are seen as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import stat
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from watchfiles import Change, awatch

log = logging.getLogger("quarterdeck.runtime.drift")

MISSING = "missing"
"""The hash of a file that does not exist or cannot be read."""
NOT_REGULAR = "not-regular"
"""The hash of a path that is not a regular file (a device, a FIFO, a socket, a folder)."""
TOO_LARGE = "too-large"
"""The hash of a file larger than the cap."""
MAX_ATTESTED_BYTES = 16 * 1024 * 1024
"""The size cap of an attested file."""
DEBOUNCE_MS = 50
STEP_MS = 20
_CHUNK = 1 << 20
_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


class UnreadableFile(Exception):
    """A file that is not read: it is missing, not a regular file or over the cap.

    ``marker`` is :data:`MISSING`, :data:`NOT_REGULAR` or :data:`TOO_LARGE`; the message says
    why in words."""

    def __init__(self, marker: str, reason: str) -> None:
        super().__init__(reason)
        self.marker = marker
        self.reason = reason


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def read_regular(path: Path, max_bytes: int) -> bytes:
    """A regular file's bytes, read without blocking and never more than ``max_bytes``.

    Symbolic links are followed (a configuration file is often one), but what they lead to
    must be a regular file.

    Raises:
        UnreadableFile: the file is missing or unreadable, not a regular file, or larger than
            ``max_bytes``; the message names which.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise UnreadableFile(MISSING, f"cannot read: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableFile(NOT_REGULAR, f"is {_kind(info.st_mode)}, not a regular file")
        if info.st_size > max_bytes:
            raise UnreadableFile(
                TOO_LARGE, f"is {info.st_size} bytes, over the {max_bytes}-byte limit"
            )
        chunks: list[bytes] = []
        size = 0
        while size <= max_bytes:
            chunk = os.read(fd, min(_CHUNK, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > max_bytes:  # it grew while being read
            raise UnreadableFile(TOO_LARGE, f"is over the {max_bytes}-byte limit")
        return b"".join(chunks)
    except OSError as exc:
        raise UnreadableFile(MISSING, f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class FileState:
    """What an attested file is now: its SHA-256 (or a marker), and why when it is not read."""

    digest: str
    """Lowercase hex SHA-256, or :data:`MISSING`, :data:`NOT_REGULAR` or :data:`TOO_LARGE`."""
    problem: str | None = None
    """Why the file was not read (None when it was, or when it is simply missing)."""


def file_state(path: Path, max_bytes: int = MAX_ATTESTED_BYTES) -> FileState:
    """The SHA-256 of a regular file of at most ``max_bytes``, else a marker and the reason
    (a missing file has no problem of its own: its baseline may be "missing")."""
    try:
        data = read_regular(path, max_bytes)
    except UnreadableFile as exc:
        return FileState(exc.marker, None if exc.marker == MISSING else exc.reason)
    return FileState(hashlib.sha256(data).hexdigest())


def hash_file(path: Path, max_bytes: int = MAX_ATTESTED_BYTES) -> str:
    """SHA-256 (lowercase hex) of a regular file's bytes; :data:`MISSING`,
    :data:`NOT_REGULAR` or :data:`TOO_LARGE` when it is not read (see :func:`read_regular`)."""
    return file_state(path, max_bytes).digest


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
