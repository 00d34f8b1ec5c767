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
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

from sqlalchemy.exc import OperationalError

from quarterdeck.runtime.config import ConfigError, RuntimeConfig
from quarterdeck.store.database import (
    DB_FILENAME,
    Database,
    DatabaseError,
    open_database,
    sqlite_url,
)
from quarterdeck.store.migrations import HEAD_VERSION, MigrationError

DEFAULT_WORKSPACE = "default"
SUBMIT_CHUNK = 1_000
KINDS = ("receipts", "turns", "missions", "sessions", "approvals", "alerts")
DEFAULT_WAIT_S = 10.0
EXIT_NOT_APPLIED = 3
SUPERVISION = (
    "approve", "reject", "escalate", "snooze", "claim", "takeover", "release", "complete",
    "requeue", "cancel", "fallback", "lane", "alert", "rebaseline",
)  # fmt: skip


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

    run.add_argument("--theme", metavar="NAME", help="the screen's theme (see themes/)")

    demo = commands.add_parser(
        "demo", parents=[common], help="the control center on a simulated fleet (fresh state)"
    )
    demo.add_argument("--theme", metavar="NAME", help="the screen's theme (see themes/)")

    attach = commands.add_parser(
        "attach", parents=[common], help="the control center on a running daemon's state"
    )
    attach.add_argument("--read-only", action="store_true", help="show everything, change nothing")
    attach.add_argument("--theme", metavar="NAME", help="the screen's theme (see themes/)")
    attach.add_argument(
        "--config", metavar="FILE", help="the daemon's quarterdeck.toml (lanes, keymap, policy)"
    )

    _supervision_parsers(commands, common)

    db = commands.add_parser("db", parents=[common], help="schema version and migrations")
    db_commands = db.add_subparsers(dest="db_command", metavar="ACTION", parser_class=_Parser)
    db_commands.required = True
    db_commands.add_parser("version", parents=[common], help="the schema version")
    upgrade = db_commands.add_parser("upgrade", parents=[common], help="migrate up")
    upgrade.add_argument("--to", type=_non_negative, default=HEAD_VERSION, metavar="N")
    downgrade = db_commands.add_parser("downgrade", parents=[common], help="migrate down")
    downgrade.add_argument("--to", type=_non_negative, required=True, metavar="N")
    return parser


def _supervision_parsers(commands: Any, common: _Parser) -> None:
    """The supervision commands: each sends one command envelope and waits for its result."""
    sending = _Parser(add_help=False)
    sending.add_argument("--actor", help="who gives the command (default: the OS user)")
    sending.add_argument(
        "--wait",
        type=_wait_seconds,
        default=DEFAULT_WAIT_S,
        metavar="SECONDS",
        help=f"how long to wait for a runtime to apply it (default {DEFAULT_WAIT_S:g})",
    )
    sending.add_argument(
        "--idempotency-key", metavar="KEY", help="send again as the same envelope (default: fresh)"
    )
    parents = [common, sending]

    def add(name: str, text: str) -> _Parser:
        parser: _Parser = commands.add_parser(name, parents=parents, help=text)
        return parser

    for verb in ("approve", "reject"):
        decide = add(verb, f"{verb} an approval, or every open one matching (--all)")
        decide.add_argument("id", nargs="?", metavar="ID", help="the approval")
        decide.add_argument(
            "--all", action="store_true", help="every open approval (filtered by --lane, --tool)"
        )
        decide.add_argument("--lane", metavar="GLOB", help="with --all: only on these lanes")
        decide.add_argument("--tool", metavar="GLOB", help="with --all: only for these tools")
        decide.add_argument("--note", metavar="TEXT", help="a note recorded with the decision")
        if verb == "approve":
            decide.add_argument(
                "--edit", type=_json_object, metavar="JSON",
                help="approve with these arguments instead (a JSON object; replaces them)",
            )  # fmt: skip
        else:
            decide.add_argument(
                "--reason", required=True, metavar="CODE", help="reject reason code (policy's)"
            )
    add("escalate", "raise an approval to the next role of its ladder").add_argument("id")
    snooze = add("snooze", "hide an approval for a while (its deadline moves too)")
    snooze.add_argument("id")
    snooze.add_argument(
        "--for", dest="for_s", type=_duration, required=True, metavar="DURATION",
        help="e.g. 90s, 10m, 2h",
    )  # fmt: skip
    claim = add("claim", "hold an approval so that nobody else decides it meanwhile")
    claim.add_argument("id")
    claim.add_argument(
        "--for", dest="for_s", type=_duration, metavar="DURATION", help="(default: claim_s)"
    )
    claim.add_argument("--release", action="store_true", help="let go of the claim")
    add("takeover", "take a live turn from its agent").add_argument("turn", metavar="TURN")
    add("release", "hand a taken-over turn back to its lane").add_argument("turn", metavar="TURN")
    complete = add("complete", "complete a taken-over turn with a deliverable")
    complete.add_argument("turn", metavar="TURN")
    complete.add_argument(
        "--deliverable", required=True, metavar="FILE|-",
        help="a JSON object, or text (becomes {\"text\": ...})",
    )  # fmt: skip
    add("requeue", "give a held (dead-lettered) turn a fresh try on its lane").add_argument(
        "turn", metavar="TURN"
    )
    add("cancel", "cancel a live turn (its agent is stopped, its approvals rejected)").add_argument(
        "turn", metavar="TURN"
    )
    fallback = add("fallback", "force (or stop forcing) fallback lanes")
    fallback.add_argument("--force", required=True, choices=("on", "off"))
    fallback.add_argument("--lane", metavar="L", help="only this lane (default: every lane)")
    lane = add("lane", "pause or resume a lane")
    lane.add_argument("action", choices=("pause", "resume"))
    lane.add_argument("lane", metavar="L")
    alert = add("alert", "acknowledge or resolve an alert")
    alert.add_argument("action", choices=("ack", "resolve"))
    alert.add_argument("id")
    add("rebaseline", "accept a lane's attested files as they are now").add_argument(
        "lane", metavar="LANE"
    )
    approvals = commands.add_parser(
        "approvals", parents=[common], help="open approvals, nearest deadline first"
    )
    approvals.add_argument("--lane", metavar="GLOB", help="only on these lanes")
    approvals.add_argument("--tool", metavar="GLOB", help="only for these tools")
    approvals.add_argument(
        "--limit", type=_non_negative, default=0, help="at most N (default 0: all)"
    )
    approvals.add_argument("--json", action="store_true", help="one JSON object per line")


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smh]?)")


def _duration(text: str) -> float:
    """``90``, ``90s``, ``10m``, ``1.5h`` as seconds (more than 0)."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(
            f"expected a duration such as 90s, 10m or 2h, got {text!r}"
        )
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def _wait_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {type(value).__name__}")
    return value


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
    _write_table(columns, rows, out)
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


def _need_terminal() -> None:
    """The control center draws on a terminal; without one, say so instead of hanging."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("the control center needs a terminal (use 'run --headless' without one)")


async def _demo(args: argparse.Namespace) -> int:
    """A fresh state directory (unless one is given), the demo fleet, the control center."""
    import tempfile

    from quarterdeck.runtime.config import load_config
    from quarterdeck.runtime.demo import prepare_demo
    from quarterdeck.tui.launch import run_embedded

    if args.state_dir:
        state_dir = Path(args.state_dir)
    else:
        state_dir = Path(tempfile.mkdtemp(prefix="quarterdeck-demo-"))
    config = load_config(prepare_demo(state_dir))
    db = await open_database(sqlite_url(state_dir))
    try:
        code = await run_embedded(
            db, config, state_dir=state_dir, theme=args.theme, keymap=config.keymap, demo=True
        )
    finally:
        await db.dispose()
    sys.stderr.write(f"quarterdeck: the demo's state is in {state_dir}\n")
    return code


async def _attach(args: argparse.Namespace) -> int:
    """The control center on a running daemon's database, in this process."""
    from quarterdeck.domain.policy import DEFAULT_REJECT_REASONS, Policy, parse_policy
    from quarterdeck.runtime.config import load_config
    from quarterdeck.tui.launch import run_attached

    url = database_url(args)
    state_dir = Path(args.state_dir or os.environ.get("QUARTERDECK_STATE_DIR") or "state")
    if not args.db and not (state_dir / DB_FILENAME).is_file():
        raise UsageError(f"no database in {state_dir}: start a daemon there first")
    config = load_config(Path(args.config)) if args.config else None
    reasons = tuple(DEFAULT_REJECT_REASONS)
    if config is not None and config.policy is not None and config.policy.is_file():
        policy = parse_policy(config.policy.read_text(encoding="utf-8"))
        if isinstance(policy, Policy):
            reasons = tuple(policy.reject_reasons)
    db = await open_database(url, upgrade=False)
    try:
        return await run_attached(
            db, read_only=args.read_only, theme=args.theme, themes_dir=state_dir / "themes",
            keymap=config.keymap if config else None, reject_reasons=reasons,
            lanes=tuple(config.lanes) if config else (),
        )  # fmt: skip
    finally:
        await db.dispose()


async def _run_command(db: Database, args: argparse.Namespace, out: IO[str]) -> int:
    from quarterdeck.runtime.daemon import configure_logging, run_headless

    config, source = args.run_config
    if not args.headless:
        from quarterdeck.tui.launch import run_embedded

        return await run_embedded(
            db,
            config,
            state_dir=Path(args.state_dir or os.environ.get("QUARTERDECK_STATE_DIR") or "state"),
            theme=args.theme,
            keymap=config.keymap,
            node_id=args.node_id,
        )
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


def default_actor() -> str:
    """The OS user's name (``uid:N`` when it cannot be found)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return f"uid:{os.getuid()}"


def _read_deliverable(source: str) -> dict[str, Any]:
    """A JSON object file as is; any other content becomes ``{"text": content}``."""
    try:
        if source == "-":
            content = sys.stdin.read()
        else:
            with open(source, encoding="utf-8") as stream:
                content = stream.read()
    except OSError as exc:
        raise UsageError(f"cannot read deliverable {source}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise UsageError(f"deliverable {source} is not UTF-8 text: {exc}") from exc
    try:
        value = json.loads(content)
    except ValueError:
        value = None
    return value if isinstance(value, dict) else {"text": content}


def _decision_payload(args: argparse.Namespace) -> dict[str, Any]:
    verb = args.command
    extra: dict[str, Any] = {}
    if args.note:
        extra["reason"] = args.note
    if verb == "reject":
        extra["reason_code"] = args.reason
    if args.all:
        if args.id is not None:
            raise UsageError(f"{verb}: give an approval ID or --all, not both")
        if verb == "approve" and args.edit is not None:
            raise UsageError("approve --all cannot --edit")
        selector = {k: v for k, v in (("lane", args.lane), ("tool", args.tool)) if v is not None}
        payload = {"command": "approval.bulk", "decision": verb, "filter": selector, **extra}
        if args.all_workspaces:
            payload["all_workspaces"] = True
        return payload
    if args.id is None:
        raise UsageError(f"{verb}: give an approval ID (or --all)")
    if args.lane is not None or args.tool is not None:
        raise UsageError(f"{verb}: --lane and --tool only go with --all")
    payload = {"command": f"approval.{verb}", "approval_id": args.id, **extra}
    if verb == "approve" and args.edit is not None:
        payload["args"] = args.edit
    return payload


def command_payload(args: argparse.Namespace) -> dict[str, Any]:
    """The command payload (without ``actor``) a supervision command line asks for.

    Raises:
        UsageError: the options do not make one command.
    """
    name = args.command
    if args.all_workspaces and not (name in ("approve", "reject") and args.all):
        raise UsageError("--all-workspaces only goes with approve --all / reject --all")
    if name in ("approve", "reject"):
        return _decision_payload(args)
    if name == "escalate":
        return {"command": "approval.escalate", "approval_id": args.id}
    if name == "snooze":
        return {"command": "approval.snooze", "approval_id": args.id, "for_s": args.for_s}
    if name == "claim":
        payload = {
            "command": "approval.unclaim" if args.release else "approval.claim",
            "approval_id": args.id,
        }
        if args.for_s is not None:
            payload["for_s"] = args.for_s
        return payload
    if name in ("takeover", "release", "requeue", "cancel"):
        return {"command": f"turn.{name}", "turn_id": args.turn}
    if name == "complete":
        deliverable = _read_deliverable(args.deliverable)
        return {"command": "turn.complete", "turn_id": args.turn, "deliverable": deliverable}
    if name == "fallback":
        on = args.force == "on"
        if args.lane is not None:
            return {"command": "lane.force_fallback", "lane": args.lane, "on": on}
        return {"command": "fallback.force", "on": on}
    if name == "lane":
        return {"command": f"lane.{args.action}", "lane": args.lane}
    if name == "alert":
        return {"command": f"alert.{args.action}", "alert_id": args.id}
    if name == "rebaseline":
        return {"command": "lane.rebaseline", "lane": args.lane}
    raise AssertionError(f"not a supervision command: {name}")


async def _supervise(args: argparse.Namespace, out: IO[str]) -> int:
    """Send one command envelope and wait for its result (exit 0 ok, 1 refused, 3 not
    applied in time)."""
    from quarterdeck.client import Client, CommandRejected, CommandTimeout

    payload = command_payload(args)
    payload["actor"] = args.actor or default_actor()
    workspace = str(args.workspace or os.environ.get("QUARTERDECK_WORKSPACE") or DEFAULT_WORKSPACE)
    async with Client(database_url(args), workspace=workspace) as client:
        try:
            sent = await client.send_command(payload, idempotency_key=args.idempotency_key)
            for note in sent.errors:
                sys.stderr.write(f"quarterdeck: note: {note}\n")
            result = await client.command_result(sent.receipt, timeout_s=args.wait)
        except CommandRejected as exc:
            raise UsageError("the command envelope is invalid: " + "; ".join(exc.errors)) from exc
        except CommandTimeout as exc:
            sys.stderr.write(f"quarterdeck: {exc}\n")
            return EXIT_NOT_APPLIED
    _print_json(result, out)
    if result.get("ok"):
        return 0
    for error in result.get("errors") or ["refused"]:
        sys.stderr.write(f"quarterdeck: refused: {error}\n")
    return 1


def _write_table(columns: Sequence[str], rows: list[list[str]], out: IO[str]) -> None:
    widths = [max([len(c), *(len(r[i][:60]) for r in rows)]) for i, c in enumerate(columns)]
    out.write(
        "  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip() + "\n"
    )
    for row in rows:
        out.write(
            "  ".join(v[:60].ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() + "\n"
        )


async def _approvals(db: Database, args: argparse.Namespace, out: IO[str]) -> int:
    from quarterdeck.domain.clock import format_instant, utc_now
    from quarterdeck.store.queries import open_approvals

    scope = workspace_scope(args)
    items = await open_approvals(
        db, scope, lane=args.lane, tool=args.tool, limit=args.limit or None
    )
    if args.json:
        for item in items:
            _print_json(item, out)
        return 0
    now = format_instant(utc_now())
    columns = ["id", "state", "tool", "lane", "approver", "deadline", "claimed_by"]
    if scope is None:
        columns.insert(1, "workspace")
    rows = []
    for item in items:
        claimed = item["claimed_by"] if (item["claim_expires_at"] or "") > now else None
        shown = {**item, "deadline": item["deadline_at"], "claimed_by": claimed}
        rows.append([_cell(shown, c) for c in columns])
    _write_table(columns, rows, out)
    if not rows:
        out.write("(no open approvals)\n")
    return 0


_COMMANDS = {
    "approvals": _approvals,
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
    if args.command in SUPERVISION:
        return await _supervise(args, out)
    if args.command == "run" and not args.headless:
        if args.until_idle:
            raise UsageError("--until-idle needs --headless")
        _need_terminal()
    if args.command in ("demo", "attach"):
        _need_terminal()
    if args.command == "demo":
        return await _demo(args)
    if args.command == "attach":
        return await _attach(args)
    if args.command == "run":
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
