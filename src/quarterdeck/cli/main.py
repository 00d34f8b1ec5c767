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
dispatches and turns errors into exit codes. It imports a command's module only when that
command runs, so that a command starts without loading what others need (the MCP SDK, the
runtime, the console); an error is recognised by the module that raised it, which is then
loaded already. The parser stays on argparse rather than click
because every documented flag, exit code and error line must stay exactly as it is, and
argparse already produces them.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import IO

from quarterdeck.cli.common import (
    UsageError,
    database_url,
    open_existing_database,
    warn_if_exposed,
    workspace_scope,
)
from quarterdeck.cli.parser import build_parser

__all__ = ["main"]

_CREATING = frozenset({"submit", "run", "db"})
"""The commands that create the database they are given (``demo`` makes a fresh one); every
other command reads, and refuses a state directory or database that does not exist."""
_THROUGH_DAEMON = frozenset({"approvals", "submit", "status", "ls", "show"})
"""The commands that go through a running daemon's control API when there is one (the same
function as on the database, given the API's client)."""


def _command(name: str) -> Callable[..., Awaitable[int]]:
    """The function that runs command ``name`` (``submit``, ``ledger``, ``db``, ``run`` or a
    read) on a database, or through a daemon for those in :data:`_THROUGH_DAEMON`: its module
    loads now."""
    if name == "submit":
        from quarterdeck.cli.submit import submit_command

        return submit_command
    if name == "ledger":
        from quarterdeck.cli.ledger import ledger_command

        return ledger_command
    if name == "db":
        from quarterdeck.cli.db import db_command

        return db_command
    if name == "run":
        from quarterdeck.cli.run import run_command

        return run_command
    from quarterdeck.cli.read import approvals_command, ls_command, show_command, status_command

    reads = {"approvals": approvals_command, "status": status_command, "ls": ls_command,
             "show": show_command}  # fmt: skip
    return reads[name]


async def _run(args: argparse.Namespace, out: IO[str]) -> int:
    workspace_scope(args)  # report option conflicts before touching the database
    if args.command != "demo":
        warn_if_exposed(args, sys.stderr)
    from quarterdeck.cli.supervise import SUPERVISION

    if args.command in SUPERVISION:
        from quarterdeck.cli.supervise import supervise_command

        return await supervise_command(args, out)
    if args.command == "token":
        from quarterdeck.cli.tokens import token_command

        return await token_command(args, out)
    if args.command == "hook":  # only reached with options before it
        raise UsageError("hook comes first and takes no global options: quarterdeck hook AGENT")
    if args.command == "integrate":
        from quarterdeck.cli.integrate import integrate_command

        return await integrate_command(args, out)
    if args.command == "mcp":
        from quarterdeck.cli.mcp import mcp_command

        return await mcp_command(args)
    if args.command in ("demo", "attach"):
        from quarterdeck.cli.run import attach_command, demo_command

        return await (demo_command(args) if args.command == "demo" else attach_command(args))
    if args.command == "serve-web":
        from quarterdeck.cli.serve_web import serve_web_command

        return await serve_web_command(args, out)
    if args.command == "ledger" and args.ledger_command == "key":
        from quarterdeck.cli.ledger import key_command

        return key_command(args, out)  # the key file alone: no database
    if args.command == "run":
        from quarterdeck.cli.run import prepare_run

        prepare_run(args)
    if args.command in _THROUGH_DAEMON:
        from quarterdeck.cli.daemon import daemon_address

        if (address := daemon_address(args)) is not None:
            async with address.client() as api:
                return await _command(args.command)(api, args, out)
    from quarterdeck.store.database import open_database

    if args.command in _CREATING:
        db = await open_database(database_url(args), upgrade=args.command != "db")
    else:
        db = await open_existing_database(args)
    try:
        return await _command(args.command)(db, args, out)
    finally:
        await db.dispose()


def _loaded(module: str, name: str) -> type[BaseException]:
    """Class ``name`` of ``module`` when that module is loaded; else a class nothing raises
    (an error of a module never loaded cannot have been raised)."""
    found = getattr(sys.modules.get(module), name, None)
    return found if isinstance(found, type) and issubclass(found, BaseException) else _Never


class _Never(Exception):
    """Raised by nothing: what :func:`_loaded` answers for a module not loaded."""


def _failure(exc: Exception) -> int | None:
    """The exit code for an error the command line explains (written on stderr), or None."""
    from quarterdeck.cli.daemon import EXIT_NOT_SENT, NotSent

    api = "quarterdeck.client.api"
    if isinstance(exc, NotSent):
        sys.stderr.write(f"quarterdeck: {exc}\n")
        return EXIT_NOT_SENT
    if isinstance(exc, _loaded(api, "ControlUnavailable")):
        sys.stderr.write(f"quarterdeck: {getattr(exc, 'message', exc)}\n")
        return EXIT_NOT_SENT
    if isinstance(exc, _loaded(api, "ControlRefused")):
        sys.stderr.write(f"quarterdeck: refused: {getattr(exc, 'message', exc)}\n")
        return 1
    if isinstance(exc, _loaded(api, "ControlError")):
        status, message = getattr(exc, "status", "?"), getattr(exc, "message", exc)
        sys.stderr.write(f"quarterdeck: error: the daemon answered {status}: {message}\n")
        return 1
    if isinstance(exc, _loaded("quarterdeck.runtime.config", "ConfigError")):
        sys.stderr.write(f"quarterdeck: error: bad configuration {getattr(exc, 'source', '')}:\n")
        for problem in getattr(exc, "problems", ()):
            sys.stderr.write(f"  {problem}\n")
        return 2
    explained = (
        _loaded("quarterdeck.store.database", "DatabaseError"),
        _loaded("quarterdeck.store.migrations", "MigrationError"),
        _loaded("quarterdeck.store.statedir", "StateDirError"),
        _loaded("quarterdeck.runtime.keys", "KeyFileError"),
    )
    if isinstance(exc, explained):
        sys.stderr.write(f"quarterdeck: error: {exc}\n")
        return 2
    if isinstance(exc, _loaded("sqlalchemy.exc", "OperationalError")):
        sys.stderr.write(f"quarterdeck: database error: {getattr(exc, 'orig', None) or exc}\n")
        return 1
    return None


def main(argv: Sequence[str] | None = None, out: IO[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
        return asyncio.run(_run(args, out or sys.stdout))
    except UsageError as exc:
        sys.stderr.write(f"quarterdeck: error: {exc}\n")
        return 2
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        code = _failure(exc)
        if code is None:
            raise
        return code
