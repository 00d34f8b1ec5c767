"""Who is at the other end of a Unix socket: the kernel's peer credentials (``SO_PEERCRED``),
the supervisor principal they name, and whether the peer process descends from a known agent
process (its ``PPid`` chain in ``/proc``)."""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from quarterdeck.domain.authority import Kind, Principal

_UCRED: Final = struct.Struct("3i")
"""``struct ucred``: pid, uid, gid (each a C int)."""
MAX_ANCESTRY: Final = 4096
"""How many parents :func:`descends_from` climbs at most (a chain is far shorter; the bound
only guards against a cycle a broken reader could report)."""
PROC: Final = Path("/proc")

ParentOf = Callable[[int], int | None]
"""A process's parent pid, or None when the process is gone."""


class HasSockopt(Protocol):
    """What :func:`peer_credentials` needs of a socket (a ``socket.socket`` or the socket an
    asyncio transport exposes)."""

    def getsockopt(self, level: int, optname: int, buflen: int, /) -> bytes: ...


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """The peer process as the kernel saw it when it connected."""

    pid: int
    uid: int
    gid: int


def peer_credentials(sock: HasSockopt) -> PeerCredentials:
    """The credentials of the process at the other end of the connected Unix socket ``sock``.

    Raises:
        OSError: ``sock`` is not a connected Unix socket.
    """
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return PeerCredentials(pid, uid, gid)


def supervisor_principal(credentials: PeerCredentials) -> Principal:
    """The person the peer runs as: its OS user name (``uid:<n>`` when the uid has no passwd
    entry) and the names of its groups (the user's groups and the peer's own gid)."""
    try:
        entry = pwd.getpwuid(credentials.uid)
    except KeyError:
        name = f"uid:{credentials.uid}"
        gids = [credentials.gid]
    else:
        name = entry.pw_name
        gids = os.getgrouplist(entry.pw_name, credentials.gid)
    groups: set[str] = set()
    for gid in gids:
        try:
            groups.add(grp.getgrgid(gid).gr_name)
        except KeyError:
            continue  # a gid without a group entry names no group a roster could list
    return Principal(Kind.SUPERVISOR, name, uid=credentials.uid, groups=frozenset(groups))


def proc_parent(pid: int) -> int | None:
    """The parent pid of ``pid`` from ``/proc/<pid>/status``; None when it is gone."""
    try:
        status = (PROC / str(pid) / "status").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("PPid:"):
            try:
                return int(line.split(":", 1)[1])
            except ValueError:
                return None
    return None


def descends_from(pid: int, pids: Collection[int], parent_of: ParentOf = proc_parent) -> bool:
    """Whether process ``pid`` is one of ``pids`` or descends from one of them. A process
    that vanished on the way up counts as not descending; so does a chain that reaches pid 1
    (or 0), loops, or climbs past :data:`MAX_ANCESTRY`."""
    if not pids:
        return False
    seen: set[int] = set()
    current = pid
    for _ in range(MAX_ANCESTRY):
        if current in pids:
            return True
        if current <= 1 or current in seen:
            return False
        seen.add(current)
        parent = parent_of(current)
        if parent is None:
            return False
        current = parent
    return False
