"""Agent processes as the kernel sees them: ``/proc`` (a process's start time, group and
session, the boot), cgroup v2 (finding where this process may create cgroups, one cgroup per
agent, killing a whole cgroup), and killing what a recorded agent left running, after checking
that each process really is the one recorded (a recycled pid is never killed).

Linux only; elsewhere every reading answers "unknown" and agents are contained by their process
group alone.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

PROC: Final = Path("/proc")
CGROUP_EMPTY_WAIT_S: Final = 1.0
"""How long a kill waits for a killed cgroup to empty before removing it."""
_CGROUP_PREFIX: Final = "qd-agent-"


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` used here."""

    pid: int
    state: str
    ppid: int
    pgid: int
    sid: int
    start_ticks: int
    """When the process started, in clock ticks since boot: with the boot id, it tells a
    process from a later one that got the same pid."""


def proc_stat(pid: int) -> ProcStat | None:
    """The process's stat line, or None when there is no such process (or no ``/proc``)."""
    try:
        raw = (PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold anything, ")" included.
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        return ProcStat(
            pid=pid,
            state=fields[0].decode(),
            ppid=int(fields[1]),
            pgid=int(fields[2]),
            sid=int(fields[3]),
            start_ticks=int(fields[19]),
        )
    except (IndexError, ValueError):
        return None


def start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), or None if it does not exist."""
    found = proc_stat(pid)
    return None if found is None else found.start_ticks


def is_running(pid: int, started: int) -> bool:
    """Whether process ``pid`` exists and is the one that started at ``started`` (a zombie
    does not count: it runs nothing)."""
    found = proc_stat(pid)
    return found is not None and found.start_ticks == started and found.state != "Z"


def boot_id() -> str:
    """This boot's id (``/proc/sys/kernel/random/boot_id``); pids and start times compare only
    within one boot. Empty when unknown."""
    try:
        return (PROC / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def host_name() -> str:
    """The name this host's records carry."""
    return socket.gethostname()


def all_processes() -> Iterator[ProcStat]:
    """Every process visible in ``/proc``."""
    try:
        entries = os.listdir(PROC)
    except OSError:
        return
    for entry in entries:
        if entry.isdigit() and (found := proc_stat(int(entry))) is not None:
            yield found


# --- cgroup v2 ---------------------------------------------------------------------------------


def cgroup2_mount() -> tuple[Path, str] | None:
    """Where the cgroup v2 hierarchy is mounted (``/sys/fs/cgroup``, or
    ``/sys/fs/cgroup/unified`` on a hybrid layout) and the hierarchy path of the mount's root."""
    try:
        lines = (PROC / "self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        head, _, tail = line.partition(" - ")
        if tail.split()[:1] == ["cgroup2"]:
            fields = head.split()
            return Path(_unescape(fields[4])), _unescape(fields[3])
    return None


def own_cgroup() -> str | None:
    """This process's cgroup v2 path (the ``0::`` line of ``/proc/self/cgroup``)."""
    try:
        lines = (PROC / "self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            return line[3:]
    return None


def find_cgroup_root(setting: str) -> tuple[Path | None, str]:
    """Where agents' cgroups are created for a lane's ``cgroup`` option, or None with the
    reason why there is nowhere.

    ``"auto"`` is this process's own cgroup v2 directory; an absolute path is taken as given;
    ``"off"`` is nowhere. The directory must be a cgroup v2 directory this process may create
    cgroups in.
    """
    if setting == "off":
        return None, "cgroups are off for this lane"
    if setting == "auto":
        mount = cgroup2_mount()
        own = own_cgroup()
        if mount is None or own is None:
            return None, "no cgroup v2 hierarchy is mounted"
        mount_point, mount_root = mount
        relative = os.path.relpath(own, mount_root)
        if relative.startswith(".."):
            return None, f"this process's cgroup {own} is outside the mounted hierarchy"
        root = (mount_point / relative).resolve()
    else:
        root = Path(setting)
    if not (root / "cgroup.procs").is_file():
        return None, f"{root} is not a cgroup v2 directory"
    if not os.access(root, os.W_OK):
        return None, f"cannot create cgroups in {root} (permission denied; delegate it)"
    return root, ""


@dataclass(frozen=True, slots=True)
class AgentCgroup:
    """One agent's cgroup: a directory of its own under the lane's cgroup root."""

    path: Path

    @classmethod
    def create(cls, root: Path, label: str) -> AgentCgroup:
        """A fresh cgroup under ``root`` (its name: a prefix, ``label``, a random part).

        Raises:
            OSError: it cannot be created.
        """
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in label)[:80]
        path = root / f"{_CGROUP_PREFIX}{safe}-{secrets.token_hex(4)}"
        path.mkdir(mode=0o755)
        return cls(path)

    def add(self, pid: int) -> None:
        """Move process ``pid`` into this cgroup.

        Raises:
            OSError: the kernel refused (no write access to a common ancestor, a domain
                controller enabled where processes live, no such process...).
        """
        (self.path / "cgroup.procs").write_text(f"{pid}\n")

    def pids(self) -> list[int]:
        """The processes in this cgroup now (none when it is gone)."""
        return cgroup_pids(self.path)

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to every process in the cgroup."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def kill(self) -> list[int]:
        """SIGKILL every process in the cgroup, those that fork meanwhile too; return the pids
        that were in it."""
        return kill_cgroup(self.path)

    def remove(self, wait_s: float = CGROUP_EMPTY_WAIT_S) -> bool:
        """Kill what is left, wait up to ``wait_s`` for the cgroup to empty, remove it."""
        return remove_cgroup(self.path, wait_s)


def cgroup_pids(path: Path) -> list[int]:
    """The processes in the cgroup at ``path`` (none when it is gone)."""
    try:
        return [int(line) for line in (path / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def kill_cgroup(path: Path) -> list[int]:
    """SIGKILL everything in the cgroup at ``path``: through ``cgroup.kill`` where the kernel
    has it (5.14+; it catches processes forking meanwhile), else pid by pid until it is
    empty. Returns the pids that were in it."""
    found = cgroup_pids(path)
    if not found:
        return []
    try:
        (path / "cgroup.kill").write_text("1\n")
        return found
    except OSError:
        pass
    seen = set(found)
    for _ in range(100):
        pids = cgroup_pids(path)
        if not pids:
            break
        seen.update(pids)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.005)
    return sorted(seen)


def remove_cgroup(path: Path, wait_s: float = CGROUP_EMPTY_WAIT_S) -> bool:
    """Kill what is left in the cgroup at ``path`` and remove it once empty; False when it is
    still there after ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            path.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError:
            kill_cgroup(path)
            if time.monotonic() >= deadline:
                return False
        time.sleep(0.01)


# --- killing what a recorded agent left -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecordedAgent:
    """What was recorded of an agent when it was started: enough to find what is left of it
    and to be sure it is the same process (the same boot, the same start time)."""

    pid: int
    pgid: int
    sid: int
    start_ticks: int
    cgroup: str | None


def leftover_pids(agent: RecordedAgent) -> list[int]:
    """The processes still running that belong to ``agent``: the agent itself if its start
    time matches, and the members of its process group and session that started no earlier
    than it. The group's and session's ids stay taken while any member lives, so while the
    agent's pid is not someone else's, their members are the agent's; a process started
    before the agent cannot descend from it. A pid now held by another process means the
    agent's group and session are gone: nothing is left."""
    if agent.pid <= 1:
        return []
    processes = [p for p in all_processes() if p.state != "Z"]
    holder = next((p for p in processes if p.pid == agent.pid), None)
    if holder is not None and holder.start_ticks != agent.start_ticks:
        return []
    return [
        p.pid
        for p in processes
        if p.start_ticks >= agent.start_ticks
        and (p.pid == agent.pid or p.pgid == agent.pgid or p.sid == agent.sid)
    ]


def kill_leftovers(agent: RecordedAgent) -> list[int]:
    """SIGKILL whatever ``agent`` left running: its whole cgroup when it had one, and the
    checked members of its process group and session. Returns the pids killed."""
    killed: set[int] = set()
    if agent.cgroup is not None:
        path = Path(agent.cgroup)
        if path.name.startswith(_CGROUP_PREFIX) and path.is_dir():
            killed.update(kill_cgroup(path))
            remove_cgroup(path)
    for pid in leftover_pids(agent):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            killed.add(pid)
    return sorted(killed)


def _unescape(field: str) -> str:
    r"""A mountinfo path field with its octal escapes (``\040`` for a space) decoded."""
    if "\\" not in field:
        return field
    return field.encode().decode("unicode_escape").encode("latin-1").decode()
