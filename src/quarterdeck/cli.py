"""The ``quarterdeck`` command line.

Global options (accepted before or after the command): ``--state-dir`` (default ``./state``,
env ``QUARTERDECK_STATE_DIR``), ``--db URL`` (overrides the state dir), ``--workspace W``
(default ``default``, env ``QUARTERDECK_WORKSPACE``) and ``--all-workspaces``.

Usage errors print one line on stderr and exit 2; a failed check (a broken ledger, an unknown
id, a rejected line) exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

from sqlalchemy.exc import OperationalError

from quarterdeck.runtime.config import ConfigError, RuntimeConfig
from quarterdeck.store.database import Database, DatabaseError, open_database, sqlite_url
from quarterdeck.store.migrations import HEAD_VERSION, MigrationError

DEFAULT_WORKSPACE = "default"
SUBMIT_CHUNK = 1_000
KINDS = ("receipts", "turns", "missions", "sessions", "approvals", "alerts")


class UsageError(Exception):
    """A mistake in how the command was called; reported in one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _global_options(defaults: bool) -> _Parser:
    """Options every command takes; only the top level sets defaults, so that an option
    given after the command wins and one given before it is not reset."""
    parent = _Parser(add_help=False)
    default: Any = None if defaults else argparse.SUPPRESS
    parent.add_argument(
        "--state-dir",
        default=default,
        help="runtime data directory (default ./state, env QUARTERDECK_STATE_DIR)",
    )
    parent.add_argument("--db", default=default, metavar="URL", help="database URL or file")
    parent.add_argument(
        "--workspace",
        "-w",
        default=default,
        help="workspace (default env QUARTERDECK_WORKSPACE or 'default')",
    )
    parent.add_argument(
        "--all-workspaces",
        "-A",
        action="store_true",
        default=False if defaults else argparse.SUPPRESS,
        help="read across every workspace",
    )
    return parent


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every command."""
    common = _global_options(defaults=False)
    parser = _Parser(
        prog="quarterdeck",
        description="Quarterdeck: a terminal control center for supervising AI agents.",
        parents=[_global_options(defaults=True)],
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    submit = commands.add_parser(
        "submit", parents=[common], help="ingest envelopes, one JSON object per line"
    )
    submit.add_argument("file", metavar="FILE|-", help="a JSON-lines file, or - for stdin")

    status = commands.add_parser(
        "status", parents=[common], help="counts by state and the ledger head"
    )
    status.add_argument("--json", action="store_true", help="one JSON object")

    ls = commands.add_parser("ls", parents=[common], help="list items of one kind, newest first")
    ls.add_argument("kind", choices=KINDS, metavar="KIND", help=", ".join(KINDS))
    ls.add_argument("--state", help="only items in this state (a receipt's status)")
    ls.add_argument(
        "--limit", type=_non_negative, default=100, help="at most N (0: all; default 100)"
    )
    ls.add_argument("--json", action="store_true", help="one JSON object per line")

    show = commands.add_parser("show", parents=[common], help="one item with all its fields")
    show.add_argument("id")
    show.add_argument("--json", action="store_true", help="one JSON object")

    ledger = commands.add_parser("ledger", parents=[common], help="verify or export the ledger")
    ledger_commands = ledger.add_subparsers(
        dest="ledger_command", metavar="ACTION", parser_class=_Parser
    )
    ledger_commands.required = True
    verify = ledger_commands.add_parser("verify", parents=[common], help="check the hash chain")
    verify.add_argument("--json", action="store_true", help="one JSON object")
    export = ledger_commands.add_parser("export", parents=[common], help="entries as JSON lines")
    export.add_argument(
        "--since", type=_non_negative, default=0, metavar="SEQ", help="entries after SEQ"
    )

    run = commands.add_parser("run", parents=[common], help="run the runtime")
    run.add_argument(
        "--config",
        metavar="FILE",
        help="quarterdeck.toml (default: ./quarterdeck.toml if present, else built-in)",
    )
    run.add_argument(
        "--headless", action="store_true", help="no screen: run as a daemon until SIGTERM"
    )
    run.add_argument(
        "--metrics-port", type=_non_negative, metavar="N", help="serve Prometheus text on this port"
    )
    run.add_argument(
        "--metrics-host", default="127.0.0.1", metavar="HOST", help="(default 127.0.0.1)"
    )
    run.add_argument("--node-id", metavar="NAME", help="this node's name (default: a fresh UUID)")
    run.add_argument(
        "--until-idle", action="store_true", help="with --headless: exit once no work is left"
    )

    db = commands.add_parser("db", parents=[common], help="schema version and migrations")
    db_commands = db.add_subparsers(dest="db_command", metavar="ACTION", parser_class=_Parser)
    db_commands.required = True
    db_commands.add_parser("version", parents=[common], help="the schema version")
    upgrade = db_commands.add_parser("upgrade", parents=[common], help="migrate up")
    upgrade.add_argument("--to", type=_non_negative, default=HEAD_VERSION, metavar="N")
    downgrade = db_commands.add_parser("downgrade", parents=[common], help="migrate down")
    downgrade.add_argument("--to", type=_non_negative, required=True, metavar="N")
    return parser


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def database_url(args: argparse.Namespace) -> str:
    """The database the options name: ``--db``, else the state dir's SQLite file."""
    if args.db:
        return str(args.db)
    state_dir = args.state_dir or os.environ.get("QUARTERDECK_STATE_DIR") or "state"
    return sqlite_url(Path(state_dir))


def workspace_scope(args: argparse.Namespace) -> str | None:
    """The workspace to read, or None for every workspace (``--all-workspaces``)."""
    if args.all_workspaces:
        if args.workspace:
            raise UsageError("--workspace and --all-workspaces exclude each other")
        return None
    return str(args.workspace or os.environ.get("QUARTERDECK_WORKSPACE") or DEFAULT_WORKSPACE)


def _print_json(value: Any, out: IO[str]) -> None:
    out.write(json.dumps(value, ensure_ascii=False) + "\n")


def _read_lines(source: str) -> Iterator[bytes]:
    if source == "-":
        stream: IO[bytes] = sys.stdin.buffer
    else:
        try:
            stream = open(source, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise UsageError(f"cannot read {source}: {exc.strerror}") from exc
    try:
        for line in stream:
            yield line.rstrip(b"\r\n") if line.endswith(b"\n") else line
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


async def _submit(db: Database, args: argparse.Namespace, out: IO[str]) -> int:
    from quarterdeck.runtime.ingest import Ingestor
    from quarterdeck.store.writer import Writer

    rejected = 0
    line_number = 0
    async with Writer(db) as writer:
        ingestor = Ingestor(writer)
        chunk: list[bytes] = []

        async def flush() -> None:
            nonlocal rejected, line_number
            for result in await ingestor.ingest(chunk):
                line_number += 1
                rejected += result.status == "rejected"
                _print_json({"line": line_number, **result.to_dict()}, out)
            out.flush()
            chunk.clear()

        for line in _read_lines(args.file):
            chunk.append(line)
            if len(chunk) >= SUBMIT_CHUNK:
                await flush()
        if chunk:
            await flush()
    return 1 if rejected else 0


async def _status(db: Database, args: argparse.Namespace, out: IO[str]) -> int:
    from quarterdeck.store.queries import slo, status

    result = await status(db, workspace_scope(args))
    result["slo"] = await slo(db, workspace_scope(args))
    if args.json:
        _print_json(result, out)
        return 0
    scope = workspace_scope(args) or "all workspaces"
    out.write(f"workspace: {scope}\n")
    for kind, counts in result.items():
        if kind in ("ledger", "slo"):
            continue
        shown = "  ".join(f"{state} {count}" for state, count in counts.items() if count) or "-"
        out.write(f"{kind:<10} {shown}\n")
    out.write(
        f"{'ledger':<10} {result['ledger']['entries']} entries, head {result['ledger']['head']}\n"
    )
    return 0


_TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "receipts": ("id", "status", "workspace", "received_at", "kind", "idempotency_key", "errors"),
}
_ITEM_COLUMNS = ("id", "state", "workspace", "version", "attempt", "updated_at")


def _cell(item: dict[str, Any], column: str) -> str:
    value = item.get(column)
    if value is None and "envelope" in item:
        value = item["envelope"].get(column)
    if isinstance(value, list):
        return "; ".join(str(v) for v in value)
    return "" if value is None else str(value)


async def _ls(db: Database, args: argparse.Namespace, out: IO[str]) -> int:
    from quarterdeck.store.queries import list_items

    items = await list_items(
        db,
        args.kind,
        workspace=workspace_scope(args),
        state=args.state,
        limit=args.limit or None,
    )
    if args.json:
        for item in items:
            _print_json(item, out)
        return 0
    columns = _TABLE_COLUMNS.get(args.kind, _ITEM_COLUMNS)
    rows = [[_cell(item, c) for c in columns] for item in items]
    widths = [max([len(c), *(len(r[i][:60]) for r in rows)]) for i, c in enumerate(columns)]
    out.write(
        "  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip() + "\n"
    )
    for row in rows:
        out.write(
            "  ".join(v[:60].ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() + "\n"
        )
    if not rows:
        out.write(f"(no {args.kind})\n")
    return 0


async def _show(db: Database, args: argparse.Namespace, out: IO[str]) -> int:
    from quarterdeck.store.queries import get_item

    scope = workspace_scope(args)
    item = await get_item(db, args.id, workspace=scope)
    if item is None:
        where = f"workspace {scope}" if scope else "any workspace"
        sys.stderr.write(f"quarterdeck: no item {args.id} in {where}\n")
        return 1
    if args.json:
        _print_json(item, out)
        return 0
    for key, value in item.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        out.write(f"{key:<16} {text}\n")
    return 0


async def _ledger(db: Database, args: argparse.Namespace, out: IO[str]) -> int:
    from quarterdeck.store.ledger import iter_entries, verify_ledger

    if args.ledger_command == "verify":
        result = await verify_ledger(db)
        if args.json:
            _print_json(result.to_dict(), out)
        elif result.ok:
            out.write(f"ledger ok: {result.entries} entries, head {result.head}\n")
        else:
            out.write(f"ledger BROKEN at seq {result.first_bad_seq}: {result.reason}\n")
        return 0 if result.ok else 1
    from quarterdeck.domain.canonical import canonical_text

    async for entry in iter_entries(db, since=args.since, workspace=workspace_scope(args)):
        out.write(canonical_text(entry) + "\n")
    return 0


async def _db(db: Database, args: argparse.Namespace, out: IO[str]) -> int:
    if args.db_command == "version":
        _print_json({"version": await db.schema_version(), "head": HEAD_VERSION}, out)
        return 0
    current = await db.schema_version()
    if args.db_command == "upgrade" and args.to < current:
        raise UsageError(f"upgrade --to {args.to} is below the current version {current}")
    if args.db_command == "downgrade" and args.to > current:
        raise UsageError(f"downgrade --to {args.to} is above the current version {current}")
    steps = await db.migrate(args.to)
    _print_json({"from": current, "to": args.to, "steps": steps}, out)
    return 0


def _load_run_config(args: argparse.Namespace) -> tuple[RuntimeConfig, str]:
    from quarterdeck.runtime.config import load_config

    if args.config:
        path: Path | None = Path(args.config)
    elif Path("quarterdeck.toml").is_file():
        path = Path("quarterdeck.toml")
    else:
        path = None
    return load_config(path), str(path) if path else "built-in"


async def _run_command(db: Database, args: argparse.Namespace, out: IO[str]) -> int:
    from quarterdeck.runtime.daemon import configure_logging, run_headless

    config, source = args.run_config
    configure_logging()
    return await run_headless(
        db,
        config,
        state_dir=Path(args.state_dir or os.environ.get("QUARTERDECK_STATE_DIR") or "state"),
        node_id=args.node_id,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        config_source=source,
        until_idle=args.until_idle,
    )


_COMMANDS = {
    "submit": _submit,
    "status": _status,
    "ls": _ls,
    "show": _show,
    "ledger": _ledger,
    "db": _db,
    "run": _run_command,
}


async def _run(args: argparse.Namespace, out: IO[str]) -> int:
    workspace_scope(args)  # report option conflicts before touching the database
    if args.command == "run":
        if not args.headless:
            raise UsageError("the control center screen is not built yet: use 'run --headless'")
        args.run_config = _load_run_config(args)
        if args.run_config[0].database_url and not args.db:
            args.db = args.run_config[0].database_url
    db = await open_database(database_url(args), upgrade=args.command != "db")
    try:
        return await _COMMANDS[args.command](db, args, out)
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
    except (DatabaseError, MigrationError) as exc:
        sys.stderr.write(f"quarterdeck: error: {exc}\n")
        return 2
    except OperationalError as exc:
        sys.stderr.write(f"quarterdeck: database error: {exc.orig or exc}\n")
        return 1
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130
