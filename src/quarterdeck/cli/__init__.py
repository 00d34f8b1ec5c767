"""The ``quarterdeck`` command line.

Global options (accepted before or after the command): ``--state-dir`` (default ``./state``,
env ``QUARTERDECK_STATE_DIR``), ``--db URL`` (overrides the state dir), ``--workspace W``
(default ``default``, env ``QUARTERDECK_WORKSPACE``) and ``--all-workspaces``.

Usage errors print one line on stderr and exit 2; a failed check (a broken ledger, an unknown
id, a rejected line) exits 1.

Supervision commands (``approve``, ``reject``, ``escalate``, ``snooze``, ``claim``,
``takeover``, ``release``, ``complete``, ``requeue``, ``cancel``, ``fallback``, ``lane``,
``alert``, ``rebaseline``) each
send one command envelope and wait (``--wait``, default 10 s) for a running runtime to apply
it: the result is printed as JSON; exit 0 when it was applied, 1 when it was refused (each
error on stderr), 3 when no runtime applied it in time (it stays queued).

The package: :mod:`~quarterdeck.cli.parser` (every command and flag),
:mod:`~quarterdeck.cli.read` (status, ls, show, ledger, approvals),
:mod:`~quarterdeck.cli.submit`, :mod:`~quarterdeck.cli.supervise` (the supervision commands),
:mod:`~quarterdeck.cli.run` (run, demo, attach), :mod:`~quarterdeck.cli.db` (migrations) and
:mod:`~quarterdeck.cli.common` (the global options, the usage error, JSON output); this module
dispatches and turns errors into exit codes. The parser stays on argparse rather than click
because every documented flag, exit code and error line must stay exactly as it is, and
argparse already produces them.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import IO

from sqlalchemy.exc import OperationalError

from quarterdeck.cli.common import UsageError, database_url, warn_if_exposed, workspace_scope
from quarterdeck.cli.db import db_command
from quarterdeck.cli.parser import build_parser
from quarterdeck.cli.read import (
    approvals_command,
    ledger_command,
    ls_command,
    show_command,
    status_command,
)
from quarterdeck.cli.run import attach_command, demo_command, prepare_run, run_command
from quarterdeck.cli.submit import submit_command
from quarterdeck.cli.supervise import SUPERVISION, supervise_command
from quarterdeck.runtime.config import ConfigError
from quarterdeck.store.database import DatabaseError, open_database
from quarterdeck.store.migrations import MigrationError
from quarterdeck.store.statedir import StateDirError

__all__ = ["main"]

_ON_DATABASE = {
    "approvals": approvals_command,
    "submit": submit_command,
    "status": status_command,
    "ls": ls_command,
    "show": show_command,
    "ledger": ledger_command,
    "db": db_command,
    "run": run_command,
}
"""The commands that run on an open database, by name."""


async def _run(args: argparse.Namespace, out: IO[str]) -> int:
    workspace_scope(args)  # report option conflicts before touching the database
    if args.command != "demo":
        warn_if_exposed(args, sys.stderr)
    if args.command in SUPERVISION:
        return await supervise_command(args, out)
    if args.command == "demo":
        return await demo_command(args)
    if args.command == "attach":
        return await attach_command(args)
    if args.command == "run":
        prepare_run(args)
    db = await open_database(database_url(args), upgrade=args.command != "db")
    try:
        return await _ON_DATABASE[args.command](db, args, out)
    finally:
        await db.dispose()


def main(argv: Sequence[str] | None = None, out: IO[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
        return asyncio.run(_run(args, out or sys.stdout))
    except UsageError as exc:
        sys.stderr.write(f"quarterdeck: error: {exc}\n")
        return 2
    except ConfigError as exc:
        sys.stderr.write(f"quarterdeck: error: bad configuration {exc.source}:\n")
        for problem in exc.problems:
            sys.stderr.write(f"  {problem}\n")
        return 2
    except (DatabaseError, MigrationError, StateDirError) as exc:
        sys.stderr.write(f"quarterdeck: error: {exc}\n")
        return 2
    except OperationalError as exc:
        sys.stderr.write(f"quarterdeck: database error: {exc.orig or exc}\n")
        return 1
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130
