"""The control API's listening sockets: the Unix socket in the state directory, created with its
final mode (0600, or 0660 for a supervisors' group) before anyone can reach it, and an
optional TCP socket."""

from __future__ import annotations

import contextlib
import grp
import os
import socket
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

SOCKET_NAME: Final = "quarterdeck.sock"
OWNER_MODE: Final = 0o600
GROUP_MODE: Final = 0o660
BACKLOG: Final = 128


class ListenError(Exception):
    """A control socket could not be opened (another daemon holds it, or a setting is wrong)."""


def default_socket_path(state_dir: Path) -> Path:
    """Where the control socket of the daemon on ``state_dir`` lives."""
    return state_dir / SOCKET_NAME


@dataclass(frozen=True, slots=True)
class UnixListener:
    """A bound, listening Unix socket and the identity of the file it is reachable at (so
    that only that file is removed when it closes, not a later daemon's)."""

    sock: socket.socket
    path: Path
    inode: tuple[int, int]

    def close(self) -> None:
        """Close the socket and remove its file if it is still this socket's."""
        self.sock.close()
        with contextlib.suppress(OSError):
            found = self.path.lstat()
            if (found.st_dev, found.st_ino) == self.inode:
                self.path.unlink()


def listen_unix(path: Path, *, group: str | None = None) -> UnixListener:
    """Bind and listen on the Unix socket ``path``: mode 0600, or 0660 with group ``group``.

    The socket is bound in a fresh private directory (0700) beside ``path``, given its mode
    and group there, then linked into place, so it is never reachable with a wider mode and
    the process's umask (shared by every thread) is never changed. A stale socket file (no one listening) is replaced.

    Raises:
        ListenError: a daemon is listening on ``path`` already, ``path`` is some other
            file, or ``group`` does not exist or may not be given to the socket.
    """
    gid = None if group is None else _group_id(group)
    _clear_stale(path)
    staging = Path(tempfile.mkdtemp(prefix=".qd", dir=path.parent))
    staged = staging / "s"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(staged))
        if gid is not None:
            try:
                os.chown(staged, -1, gid)
            except PermissionError as exc:
                raise ListenError(
                    f"cannot give the control socket to group {group!r}: {exc.strerror}"
                ) from None
        os.chmod(staged, OWNER_MODE if gid is None else GROUP_MODE)
        try:
            os.link(staged, path)  # unlike a rename, never replaces what appeared meanwhile
        except FileExistsError:
            raise ListenError(f"{path} appeared while the control socket was opened") from None
        found = path.lstat()
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    finally:
        with contextlib.suppress(OSError):
            staged.unlink()
        with contextlib.suppress(OSError):
            staging.rmdir()
    return UnixListener(sock, path, (found.st_dev, found.st_ino))


def listen_tcp(host: str, port: int) -> socket.socket:
    """Bind and listen on ``host:port`` (port 0: any free port; read it from the socket)."""
    family, kind, proto, _name, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _group_id(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ListenError(f"no group named {name!r} (the supervisors' group)") from None


def _clear_stale(path: Path) -> None:
    try:
        found = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(found.st_mode):
        raise ListenError(f"{path} exists and is not a socket; remove it or choose another path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)  # stale: whoever bound it is gone
        return
    finally:
        probe.close()
    raise ListenError(
        f"a daemon is already listening on {path} (several nodes on one state directory:"
        " give each its own with run --socket PATH)"
    )
