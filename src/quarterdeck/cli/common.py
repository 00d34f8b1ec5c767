"""What every command module shares: the usage error (one line, exit 2), the global options
read as a database URL, a state directory and a workspace, and JSON output for scripts."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from quarterdeck.store.statedir import DB_FILENAME, exposure

if TYPE_CHECKING:  # the database's modules load when a command opens one
    from quarterdeck.store.database import Database

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
    from quarterdeck.store.database import sqlite_url

    return sqlite_url(state_directory(args))


def existing_database_url(args: argparse.Namespace) -> str:
    """:func:`database_url`, for a command that reads: the state directory and its database
    file (or the ``--db`` SQLite file) must already exist, since opening one would create it.
    (A PostgreSQL database must exist to be connected to; :func:`open_existing_database`
    refuses an empty one.)

    Raises:
        UsageError: naming the path that does not exist.
    """
    url = database_url(args)
    if args.db:
        from sqlalchemy.engine import make_url

        from quarterdeck.store.database import DatabaseError, normalize_url

        try:
            parsed = make_url(normalize_url(url))
        except DatabaseError:
            return url  # reported as it always was when opened
        path = parsed.database
        if parsed.get_backend_name() == "sqlite" and path and not Path(path).is_file():
            raise UsageError(f"no database at {path} (--db): nothing to read")
        return url
    state = state_directory(args)
    if not state.is_dir():
        raise UsageError(
            f"no state directory at {state} (give --state-dir or QUARTERDECK_STATE_DIR;"
            " run, demo and submit make one)"
        )
    if not (state / DB_FILENAME).is_file():
        raise UsageError(f"no database in the state directory {state}: nothing to read")
    return url


async def open_existing_database(args: argparse.Namespace) -> Database:
    """The database a reading command reads, opened without creating anything: it must exist
    (see :func:`existing_database_url`) and hold a schema (an older one is migrated, as every
    command does).

    Raises:
        UsageError: the database or its state directory does not exist, or is empty.
    """
    from quarterdeck.store.database import open_database
    from quarterdeck.store.migrations import HEAD_VERSION

    db = await open_database(existing_database_url(args), upgrade=False)
    try:
        version = await db.schema_version()
        if version == 0:
            raise UsageError(
                f"{db.display_url} holds no Quarterdeck data (run, submit or db upgrade makes it)"
            )
        if version < HEAD_VERSION:
            await db.migrate()
    except BaseException:
        await db.dispose()
        raise
    return db


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
