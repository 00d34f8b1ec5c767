"""Where agents work: one directory per workspace and session, outside the state directory.

A mission's working directory is ``<agents root>/<workspace>/<session id>`` (``turn-<turn id>``
for a mission run outside a session). The root is the configuration's ``agents_dir``, else
``<state dir>.agents`` beside the state directory: on the same filesystem, kept across
restarts (a session keeps its files from one mission to the next) and one per state directory,
so nodes sharing a host never share it. Nothing under the state directory is an agent's.

Every folder is created 0700 and the daemon's; an agent run as another OS user (a lane's
``run_as``) owns its working directory, while the root and the workspace folders above it are
0711, so that it can pass through them but not list them.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final

from quarterdeck.store.statedir import DIR_MODE, make_private_dir

AGENTS_SUFFIX: Final = ".agents"
TRAVERSE_MODE: Final = 0o711
"""The root's and workspace folders' mode when agents run as another user."""
_PASS: Final = 0o011


def agents_root(state_dir: Path, agents_dir: Path | None = None) -> Path:
    """The folder every workspace's working directories are in (absolute)."""
    if agents_dir is not None:
        return agents_dir.absolute()
    state = state_dir.resolve()
    return state.with_name(state.name + AGENTS_SUFFIX)


def mission_workdir(
    state_dir: Path,
    agents_dir: Path | None,
    workspace: str,
    session_id: str | None,
    turn_id: str,
) -> Path:
    """A mission's working directory: its session's in its workspace, else its turn's."""
    leaf = session_id if session_id is not None else f"turn-{turn_id}"
    return agents_root(state_dir, agents_dir) / workspace / leaf


def prepare_workdir(workdir: Path, owner: tuple[int, int] | None = None) -> None:
    """Create ``workdir`` (from :func:`mission_workdir`) and the folders above it up to the
    root, 0700 and the daemon's; with ``owner`` (uid, gid), ``workdir`` is given to it and the
    folders above are created 0711 (an existing one gains only the right to pass through).

    Raises:
        OSError: a folder cannot be created, or given its owner or mode.
    """
    shared = DIR_MODE if owner is None else TRAVERSE_MODE
    for folder in (workdir.parent.parent, workdir.parent):
        if not make_private_dir(folder, shared) and owner is not None:
            mode = stat.S_IMODE(folder.stat().st_mode)
            if mode & _PASS != _PASS:  # made by a lane whose agents run as the daemon's user
                os.chmod(folder, mode | _PASS)
    make_private_dir(workdir)
    if owner is not None:
        os.chown(workdir, *owner)
        os.chmod(workdir, DIR_MODE)
