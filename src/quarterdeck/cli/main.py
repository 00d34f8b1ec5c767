"""The ``quarterdeck`` command line (every command but ``hook``, which
:mod:`quarterdeck.cli` sends to :mod:`~quarterdeck.cli.hook` without loading this).

Global options (accepted before or after the command): ``--state-dir`` (default ``./state``,
env ``QUARTERDECK_STATE_DIR``), ``--db URL`` (overrides the state dir), ``--workspace W``
(default ``default``, env ``QUARTERDECK_WORKSPACE``) and ``--all-workspaces``.

Usage errors print one line on stderr and exit 2; a failed check (a broken ledger, an unknown
id, a rejected line) exits 1.

How a command reaches Quarterdeck (:mod:`~quarterdeck.cli.daemon`, over
:mod:`quarterdeck.client.reach`): when a daemon serves the state directory's socket (or
``--api URL`` with a token, or ``QUARTERDECK_API``, names one), ``submit``, the reads
(``status``, ``ls``, ``show``, ``approvals``) and every command go through its control API, and
what it answers is printed. With no daemon, the reads and ``submit`` use the database itself
(``submit`` records receipts, command envelopes included, that a daemon applies when it
starts), as do the maintenance commands (``db``, ``ledger``, ``token ls``) always. ``attach``
needs a running daemon, as does ``serve-web`` (:mod:`~quarterdeck.cli.serve_web`), which
serves ``attach`` to browsers.

Supervision commands (``approve``, ``reject``, ``escalate``, ``snooze``, ``claim``,
``takeover``, ``release``, ``complete``, ``requeue``, ``cancel``, ``fallback``, ``lane``,
``alert``, ``rebaseline``) each give one command to the running daemon (waiting up to
``--wait``, default 10 s, for its answer): the result is printed as JSON; exit 0 when it was
applied, 1 when it was refused (each error on stderr), 3 when no daemon runs (nothing is sent
or queued) or it did not answer. ``token create``, ``token revoke`` do the same.

The package: :mod:`~quarterdeck.cli.parser` (every command and flag),
:mod:`~quarterdeck.cli.read` (status, ls, show, approvals), :mod:`~quarterdeck.cli.ledger`
(verify, export, prove, key),
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
from collections.abc import Awaitable, Callable, Sequence
from typing import IO

from sqlalchemy.exc import OperationalError

from quarterdeck.cli.common import (
    UsageError,
    database_url,
    open_existing_database,
    warn_if_exposed,
    workspace_scope,
)
from quarterdeck.cli.daemon import EXIT_NOT_SENT, NotSent, daemon_address
from quarterdeck.cli.db import db_command
from quarterdeck.cli.integrate import integrate_command
from quarterdeck.cli.ledger import key_command, ledger_command
from quarterdeck.cli.mcp import mcp_command
from quarterdeck.cli.parser import build_parser
from quarterdeck.cli.read import approvals_command, ls_command, show_command, status_command
from quarterdeck.cli.run import attach_command, demo_command, prepare_run, run_command
from quarterdeck.cli.serve_web import serve_web_command
from quarterdeck.cli.submit import submit_command
from quarterdeck.cli.supervise import SUPERVISION, supervise_command
from quarterdeck.cli.tokens import token_command
from quarterdeck.client.api import (
    ControlClient,
    ControlError,
    ControlRefused,
    ControlUnavailable,
)
from quarterdeck.runtime.config import ConfigError
from quarterdeck.runtime.keys import KeyFileError
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
_CREATING = frozenset({"submit", "run", "db"})
"""The commands that create the database they are given (``demo`` makes a fresh one); every
other command reads, and refuses a state directory or database that does not exist."""
_THROUGH_DAEMON: dict[
    str, Callable[[ControlClient, argparse.Namespace, IO[str]], Awaitable[int]]
] = {
    "approvals": approvals_command,
    "submit": submit_command,
    "status": status_command,
    "ls": ls_command,
    "show": show_command,
}
"""The commands that go through a running daemon's control API when there is one."""


async def _run(args: argparse.Namespace, out: IO[str]) -> int:
    workspace_scope(args)  # report option conflicts before touching the database
    if args.command != "demo":
        warn_if_exposed(args, sys.stderr)
    if args.command in SUPERVISION:
        return await supervise_command(args, out)
    if args.command == "token":
        return await token_command(args, out)
    if args.command == "hook":  # only reached with options before it
        raise UsageError("hook comes first and takes no global options: quarterdeck hook AGENT")
    if args.command == "integrate":
        return await integrate_command(args, out)
    if args.command == "mcp":
        return await mcp_command(args)
    if args.command == "demo":
        return await demo_command(args)
    if args.command == "attach":
        return await attach_command(args)
    if args.command == "serve-web":
        return await serve_web_command(args, out)
    if args.command == "ledger" and args.ledger_command == "key":
        return key_command(args, out)  # the key file alone: no database
    if args.command == "run":
        prepare_run(args)
    if args.command in _THROUGH_DAEMON and (address := daemon_address(args)) is not None:
        async with address.client() as api:
            return await _THROUGH_DAEMON[args.command](api, args, out)
    if args.command in _CREATING:
        db = await open_database(database_url(args), upgrade=args.command != "db")
    else:
        db = await open_existing_database(args)
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
    except NotSent as exc:
        sys.stderr.write(f"quarterdeck: {exc}\n")
        return EXIT_NOT_SENT
    except ControlUnavailable as exc:
        sys.stderr.write(f"quarterdeck: {exc.message}\n")
        return EXIT_NOT_SENT
    except ControlRefused as exc:
        sys.stderr.write(f"quarterdeck: refused: {exc.message}\n")
        return 1
    except ControlError as exc:
        sys.stderr.write(f"quarterdeck: error: the daemon answered {exc.status}: {exc.message}\n")
        return 1
    except ConfigError as exc:
        sys.stderr.write(f"quarterdeck: error: bad configuration {exc.source}:\n")
        for problem in exc.problems:
            sys.stderr.write(f"  {problem}\n")
        return 2
    except (DatabaseError, MigrationError, StateDirError, KeyFileError) as exc:
        sys.stderr.write(f"quarterdeck: error: {exc}\n")
        return 2
    except OperationalError as exc:
        sys.stderr.write(f"quarterdeck: database error: {exc.orig or exc}\n")
        return 1
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130
