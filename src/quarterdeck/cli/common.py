"""What every command module shares: the usage error (one line, exit 2), the global options
read as a database URL, a state directory and a workspace, and JSON output for scripts."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import IO, Any

from quarterdeck.store.database import sqlite_url
from quarterdeck.store.statedir import exposure

DEFAULT_WORKSPACE = "default"


class UsageError(Exception):
    """A mistake in how the command was called; reported in one line, exit code 2."""


def state_directory(args: argparse.Namespace) -> Path:
    """The runtime data directory: ``--state-dir``, else ``QUARTERDECK_STATE_DIR``, else
    ``./state``."""
    return Path(args.state_dir or os.environ.get("QUARTERDECK_STATE_DIR") or "state")


def warn_if_exposed(args: argparse.Namespace, err: IO[str]) -> None:
    """One warning line on ``err`` when other users may read or write the state directory."""
    found = exposure(state_directory(args))
    if found:
        err.write(f"quarterdeck: warning: {found}\n")


def database_url(args: argparse.Namespace) -> str:
    """The database the options name: ``--db``, else the state dir's SQLite file."""
    if args.db:
        return str(args.db)
    return sqlite_url(state_directory(args))


def workspace(args: argparse.Namespace) -> str:
    """The one workspace the options name: ``--workspace``, else ``QUARTERDECK_WORKSPACE``,
    else ``default``."""
    return str(args.workspace or os.environ.get("QUARTERDECK_WORKSPACE") or DEFAULT_WORKSPACE)


def workspace_scope(args: argparse.Namespace) -> str | None:
    """The workspace to read, or None for every workspace (``--all-workspaces``)."""
    if args.all_workspaces:
        if args.workspace:
            raise UsageError("--workspace and --all-workspaces exclude each other")
        return None
    return workspace(args)


def print_json(value: Any, out: IO[str]) -> None:
    """``value`` as one line of JSON (non-ASCII kept as is)."""
    out.write(json.dumps(value, ensure_ascii=False) + "\n")
