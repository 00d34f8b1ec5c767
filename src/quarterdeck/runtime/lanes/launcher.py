"""The launcher a ``command``-lane agent starts as: a few lines of standard-library Python, run
with ``python -I -S -c`` (the daemon passes this file's text), that become the agent.

``launcher GATE STATUS PARENT USER ARGV...``: it takes the agent's OS user (USER is
``uid:gid``, or empty for the daemon's own: the daemon starts it with its own identity, so that
the daemon's interpreter runs whoever the agent is), asks the kernel to SIGKILL it when the
daemon's thread that started it dies (``PR_SET_PDEATHSIG``, set after the change of user, which
would clear it, and kept across ``exec``), gives up if that parent is already gone, then waits
on the GATE pipe. The daemon records the process (and puts it in its cgroup) first and then
writes ``1``: only then does the launcher ``exec`` the agent, in the same process. End of file
instead of ``1`` (the daemon died, or could not record it) ends it without running anything.
If a step fails, the reason goes to the STATUS pipe (closed on a successful ``exec``) and the
launcher exits 126 (127 for the ``exec`` itself).

Importing this module does nothing; nothing outside the standard library is imported, so that it
runs the same in an isolated interpreter and as any user.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
GO = b"1"
EXIT_NOT_STARTED = 125
"""The launcher ended before running the agent: the daemon is gone or did not give the go."""
EXIT_NOT_CONTAINED = 126
"""The agent's user or the death signal could not be set."""
EXIT_EXEC_FAILED = 127


def main(args: list[str]) -> None:
    """Become the agent's user, tie this process to its parent's life, wait for the go,
    become the agent."""
    gate, status, parent, user = int(args[0]), int(args[1]), int(args[2]), args[3]
    argv = args[4:]
    if user:
        uid, gid = (int(part) for part in user.split(":"))
        try:
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
        except OSError as exc:
            _report(status, f"cannot become uid {uid}: {exc.strerror or exc}")
            os._exit(EXIT_NOT_CONTAINED)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        _report(status, f"prctl(PR_SET_PDEATHSIG): {os.strerror(ctypes.get_errno())}")
        os._exit(EXIT_NOT_CONTAINED)
    if os.getppid() != parent:  # the daemon died before the death signal was set
        os._exit(EXIT_NOT_STARTED)
    try:
        go = os.read(gate, 1)
    except OSError:
        go = b""
    os.close(gate)
    if go != GO:
        os._exit(EXIT_NOT_STARTED)
    os.set_inheritable(status, False)
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        _report(status, exc.strerror or str(exc))
    os._exit(EXIT_EXEC_FAILED)


def _report(status: int, message: str) -> None:
    with contextlib.suppress(OSError):
        os.write(status, message.encode("utf-8", "replace")[:4096])


if __name__ == "__main__":
    main(sys.argv[1:])
