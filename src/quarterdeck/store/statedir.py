"""The state directory's file modes: what the daemon keeps there is private to its OS user.

The directory is 0700, or 0710 and owned by the supervisors' group when one is configured (the
group may reach a file inside by name, such as a control socket, but can neither list the
directory nor read the files); the files the daemon creates there (the database, SQLite's
``-wal``, ``-shm`` and ``-journal``, the control center's log) are 0600. Modes are set
explicitly, whatever the process umask. SQLite creates its ``-wal``, ``-shm`` and ``-journal``
files with the mode (and, as root, the owner) of the database file, so creating that file 0600
first is enough for all of them.
"""

from __future__ import annotations

import grp
import os
import stat
from pathlib import Path
from typing import Final

DB_FILENAME: Final = "quarterdeck.db"
LOG_FILENAME: Final = "quarterdeck.log"
"""The control center's log, written while the screen owns the terminal."""
DIR_MODE: Final = 0o700
GROUP_DIR_MODE: Final = 0o710
FILE_MODE: Final = 0o600
DAEMON_FILES: Final = (
    DB_FILENAME,
    f"{DB_FILENAME}-wal",
    f"{DB_FILENAME}-shm",
    f"{DB_FILENAME}-journal",
    LOG_FILENAME,
)
"""The files the daemon creates in the state directory (kept 0600)."""
_OPEN_BITS: Final = 0o066
"""Read or write permission for the group or for others."""


class StateDirError(Exception):
    """The state directory cannot be given the modes or the group it must have."""


def make_private_dir(path: Path, mode: int = DIR_MODE) -> bool:
    """Create ``path`` with ``mode`` exactly (its missing parents get the umask's modes);
    returns whether it was created. An existing directory is left as it is."""
    if path.is_dir():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode)  # the umask can only take bits away: never more open than ``mode``
    except FileExistsError:
        return False
    os.chmod(path, mode)
    return True


def create_private_file(path: Path) -> bool:
    """Create ``path`` empty and 0600 (whatever the umask); returns whether it was created."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, FILE_MODE)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    return True


def secure_state_dir(state_dir: Path, group: str | None = None) -> list[str]:
    """Create the state directory if needed and give it, and the daemon's files in it, their
    modes: 0700 (0710 and ``group``'s when a supervisors' group is named), files 0600. An
    existing directory opened wider is closed again. Returns what was changed, one line each.

    Raises:
        StateDirError: the group does not exist, or the directory or a file cannot be given
            its group or mode (the daemon's user owns neither it nor root).
    """
    make_private_dir(state_dir)
    changes: list[str] = []
    info = state_dir.stat()
    want = DIR_MODE
    if group is not None:
        want = GROUP_DIR_MODE
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise StateDirError(f"control.supervisors_group: no OS group {group!r}") from None
        if info.st_gid != gid:
            try:
                os.chown(state_dir, -1, gid)
            except OSError as exc:
                raise StateDirError(
                    f"control.supervisors_group: cannot give {state_dir} to group {group!r}"
                    f" ({exc.strerror}; the daemon must run as root or as a member of the group)"
                ) from None
            changes.append(f"{state_dir}: group {info.st_gid} -> {group} ({gid})")
    _set_mode(state_dir, stat.S_IMODE(info.st_mode), want, changes)
    for name in DAEMON_FILES:
        path = state_dir / name
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue
        mode = stat.S_IMODE(info.st_mode)
        if stat.S_ISREG(info.st_mode) and mode & 0o077:
            _set_mode(path, mode, mode & ~0o077, changes)
    return changes


def _set_mode(path: Path, mode: int, want: int, changes: list[str]) -> None:
    if mode == want:
        return
    try:
        os.chmod(path, want)
    except OSError as exc:
        raise StateDirError(
            f"cannot make {path} private (mode {mode:04o}, wanted {want:04o}): {exc.strerror}"
        ) from None
    changes.append(f"{path}: mode {mode:04o} -> {want:04o}")


def exposure(state_dir: Path) -> str | None:
    """What makes the state directory open to other users (its group or others may read or
    write it, or a database file it lets them reach), or None when nothing does."""
    try:
        info = state_dir.stat()
    except OSError:
        return None
    mode = stat.S_IMODE(info.st_mode)
    if mode & _OPEN_BITS:
        return f"the state directory {state_dir} is {_access(mode)} by other users" + (
            f" (mode {mode:04o}); run: chmod 700 {state_dir}"
        )
    if not mode & 0o011:
        return None  # nobody else can reach what is inside
    for name in DAEMON_FILES:
        path = state_dir / name
        try:
            file_mode = stat.S_IMODE(path.stat().st_mode)
        except OSError:
            continue
        if file_mode & _OPEN_BITS:
            return f"{path} is {_access(file_mode)} by other users" + (
                f" (mode {file_mode:04o}); run: chmod 600 {path}"
            )
    return None


def _access(mode: int) -> str:
    readable, writable = bool(mode & 0o044), bool(mode & 0o022)
    if readable and writable:
        return "readable and writable"
    return "readable" if readable else "writable"
