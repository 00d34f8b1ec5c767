"""The argument parser: the global options (accepted before or after the command), every
command with its flags, and the argument types (durations, seconds, JSON objects, counts).

A mistake in the command line raises :class:`~quarterdeck.cli.common.UsageError` instead of
argparse's usage text, so that it is reported in one line with exit code 2."""

from __future__ import annotations

import argparse
import json
import re
from typing import Any, NoReturn

from quarterdeck import __version__
from quarterdeck.cli.common import UsageError
from quarterdeck.cli.integrate import add_integrate_parser
from quarterdeck.cli.mcp import add_mcp_parsers
from quarterdeck.cli.tokens import add_token_parsers

KINDS = ("receipts", "turns", "missions", "sessions", "approvals", "alerts")
DEFAULT_WAIT_S = 10.0


class _Parser(argparse.ArgumentParser):
    """A parser whose errors raise :class:`UsageError` (one line, exit 2)."""

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
        "--api",
        default=default,
        metavar="URL",
        help="a daemon's control API over TCP (token in env QUARTERDECK_TOKEN or --token-file)",
    )
    parent.add_argument(
        "--token-file", default=default, metavar="FILE", help="the bearer token for --api"
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
    parser.add_argument(
        "--version", action="version", version=f"quarterdeck {__version__}",
        help="print the version and exit",
    )  # fmt: skip
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

    ledger = commands.add_parser(
        "ledger", parents=[common], help="verify, export or prove the ledger; the node's key"
    )
    ledger_commands = ledger.add_subparsers(
        dest="ledger_command", metavar="ACTION", parser_class=_Parser
    )
    ledger_commands.required = True
    config = _Parser(add_help=False)
    config.add_argument(
        "--config", metavar="FILE", help="quarterdeck.toml naming the key file (default as run)"
    )
    verify = ledger_commands.add_parser(
        "verify", parents=[common, config], help="check the hash chain (and its checkpoints)"
    )
    verify.add_argument("--json", action="store_true", help="one JSON object")
    verify.add_argument(
        "--checkpoints", metavar="FILE", help="also check the signed checkpoints in FILE"
    )
    verify.add_argument(
        "--keys", metavar="FILE", help="trusted public keys, one per line (default: the node's)"
    )
    export = ledger_commands.add_parser("export", parents=[common], help="entries as JSON lines")
    export.add_argument(
        "--since", type=_non_negative, default=0, metavar="SEQ", help="entries after SEQ"
    )
    prove = ledger_commands.add_parser(
        "prove", parents=[common], help="entries from SEQ to the next checkpoint, as JSON"
    )
    prove.add_argument("seq", type=_non_negative, metavar="SEQ")
    prove.add_argument(
        "--checkpoints", metavar="FILE", help="take the checkpoint from FILE (default: stored)"
    )
    key = ledger_commands.add_parser(
        "key", parents=[common, config], help="the node's public key for its checkpoints"
    )
    key.add_argument("--json", action="store_true", help="one JSON object")

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
        "--metrics-port", type=_port, metavar="N", help="serve Prometheus text on this port"
    )
    run.add_argument(
        "--metrics-host", default="127.0.0.1", metavar="HOST", help="(default 127.0.0.1)"
    )
    run.add_argument("--node-id", metavar="NAME", help="this node's name (default: a fresh UUID)")
    run.add_argument(
        "--until-idle", action="store_true", help="with --headless: exit once no work is left"
    )

    run.add_argument("--theme", metavar="NAME", help="the screen's theme (see themes/)")
    run.add_argument(
        "--listen", metavar="HOST:PORT", help="also serve the control API over TCP (tokens only)"
    )
    run.add_argument(
        "--socket",
        metavar="PATH",
        help="serve the control API on PATH instead of STATE/quarterdeck.sock (one per node"
        " when several nodes share a state directory)",
    )
    run.add_argument("--tls-cert", metavar="FILE", help="with --listen: serve TLS (certificate)")
    run.add_argument("--tls-key", metavar="FILE", help="with --listen: serve TLS (private key)")

    demo = commands.add_parser(
        "demo", parents=[common], help="the control center on a simulated fleet (fresh state)"
    )
    demo.add_argument("--theme", metavar="NAME", help="the screen's theme (see themes/)")
    demo.add_argument(
        "--speed", metavar="N", type=float, default=1.0,
        help="run the demo N times faster (tasks come N times as often and run N times faster; "
        "a state directory prepared at this speed gets approval deadlines N times shorter)",
    )  # fmt: skip

    attach = commands.add_parser(
        "attach", parents=[common], help="the control center on a running daemon's state"
    )
    attach.add_argument("--read-only", action="store_true", help="show everything, change nothing")
    attach.add_argument("--theme", metavar="NAME", help="the screen's theme (see themes/)")
    attach.add_argument(
        "--config", metavar="FILE", help="the daemon's quarterdeck.toml (lanes, keymap, policy)"
    )

    web = commands.add_parser(
        "serve-web", parents=[common], help="the control center in a browser (textual-serve)"
    )
    web.add_argument(
        "--host", default="127.0.0.1",
        help="bind this address (default 127.0.0.1; any other needs a token and TLS)",
    )  # fmt: skip
    web.add_argument(
        "--port", type=_port, default=8080, metavar="N", help="(default 8080; 0: any free one)"
    )
    web.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS (certificate)")
    web.add_argument("--tls-key", metavar="FILE", help="serve HTTPS (private key)")
    web.add_argument("--read-only", action="store_true", help="the consoles change nothing")
    web.add_argument("--theme", metavar="NAME", help="the screen's theme (see themes/)")
    web.add_argument(
        "--config", metavar="FILE", help="the daemon's quarterdeck.toml (lanes, keymap, policy)"
    )

    _supervision_parsers(commands, common)
    add_token_parsers(commands, common)
    add_integrate_parser(commands, common)
    hook = commands.add_parser(
        "hook", parents=[common], help="the agent CLIs' command hook (quarterdeck integrate)"
    )
    hook.add_argument("rest", nargs=argparse.REMAINDER, help="AGENT --credential FILE")

    db = commands.add_parser("db", parents=[common], help="schema version and migrations")
    db_commands = db.add_subparsers(dest="db_command", metavar="ACTION", parser_class=_Parser)
    db_commands.required = True
    db_commands.add_parser("version", parents=[common], help="the schema version")
    upgrade = db_commands.add_parser("upgrade", parents=[common], help="migrate up")
    upgrade.add_argument(
        "--to", type=_non_negative, metavar="N", help="(default: the newest version)"
    )
    downgrade = db_commands.add_parser("downgrade", parents=[common], help="migrate down")
    downgrade.add_argument("--to", type=_non_negative, required=True, metavar="N")
    add_mcp_parsers(commands, common)
    return parser


def _supervision_parsers(commands: Any, common: _Parser) -> None:
    """The supervision commands: each sends one command envelope and waits for its result."""
    sending = _Parser(add_help=False)
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
    seconds = float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]
    if seconds >= 10**9:
        raise argparse.ArgumentTypeError(f"expected a duration under 10**9 seconds, got {text!r}")
    return seconds


def _wait_seconds(text: str) -> float:
    """Seconds to wait: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


def _json_object(text: str) -> dict[str, Any]:
    """A JSON object given on the command line."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {type(value).__name__}")
    return value


MAX_WHOLE = 2**63 - 1
"""The largest whole number an option takes: the largest integer both databases store."""


def _non_negative(text: str) -> int:
    """A whole number from 0 to :data:`MAX_WHOLE`."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    if value > MAX_WHOLE:
        raise argparse.ArgumentTypeError(f"expected a number <= {MAX_WHOLE}, got {text}")
    return value


def _port(text: str) -> int:
    """A TCP port, 0-65535."""
    value = _non_negative(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {value}")
    return value
