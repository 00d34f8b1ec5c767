"""The supervision commands (``approve``, ``reject``, ``escalate``, ``snooze``, ``claim``,
``takeover``, ``release``, ``complete``, ``requeue``, ``cancel``, ``fallback``, ``lane``,
``alert``, ``rebaseline``): each builds one typed command and gives it to the running daemon
through its control API (:mod:`quarterdeck.cli.daemon`). The result is printed as JSON; exit 0
when it was applied, 1 when it was refused (each error on stderr), 3 when no daemon runs
(nothing is sent or queued) or it did not answer within ``--wait``.

An item is named by its full id, its short id or a unique prefix of its id (resolved by the
daemon within the command's workspace; several matches are a usage error listing them).

The command is given by whoever the daemon authenticates (the OS user on its socket, a token's
principal over TCP): there is no ``--actor``; ``--note`` carries free text."""

from __future__ import annotations

import argparse
import json
import sys
from typing import IO, Any

from pydantic import ValidationError

from quarterdeck.cli.common import UsageError, print_json
from quarterdeck.domain.commands import (
    AlertAck,
    AlertResolve,
    ApprovalApprove,
    ApprovalBulk,
    ApprovalClaim,
    ApprovalEscalate,
    ApprovalReject,
    ApprovalSnooze,
    ApprovalUnclaim,
    Command,
    FallbackForce,
    LaneForceFallback,
    LanePause,
    LaneRebaseline,
    LaneResume,
    TurnCancel,
    TurnComplete,
    TurnRelease,
    TurnRequeue,
    TurnTakeover,
    problems_of,
)

EXIT_NOT_APPLIED = 3
SUPERVISION = (
    "approve", "reject", "escalate", "snooze", "claim", "takeover", "release", "complete",
    "requeue", "cancel", "fallback", "lane", "alert", "rebaseline",
)  # fmt: skip
"""The commands this module sends."""
TURN_COMMANDS: dict[str, type[TurnTakeover | TurnRelease | TurnRequeue | TurnCancel]] = {
    "takeover": TurnTakeover, "release": TurnRelease, "requeue": TurnRequeue, "cancel": TurnCancel,
}  # fmt: skip
"""Turn commands that name nothing but the turn."""


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


def _decision(args: argparse.Namespace) -> Command:
    """``approve``/``reject``: one approval by ID, or every open one matching (``--all``)."""
    verb = args.command
    reason = args.note or None
    if args.all:
        if args.id is not None:
            raise UsageError(f"{verb}: give an approval ID or --all, not both")
        if verb == "approve" and args.edit is not None:
            raise UsageError("approve --all cannot --edit")
        selector = {k: v for k, v in (("lane", args.lane), ("tool", args.tool)) if v is not None}
        return ApprovalBulk(
            decision=verb, filter=selector, reason_code=args.reason if verb == "reject" else None,
            reason=reason,
            all_workspaces=args.all_workspaces,
        )  # fmt: skip
    if args.id is None:
        raise UsageError(f"{verb}: give an approval ID (or --all)")
    if args.lane is not None or args.tool is not None:
        raise UsageError(f"{verb}: --lane and --tool only go with --all")
    if verb == "reject":
        return ApprovalReject(approval_id=args.id, reason_code=args.reason, reason=reason)
    if args.edit is None:
        return ApprovalApprove(approval_id=args.id, reason=reason)
    return ApprovalApprove(approval_id=args.id, args=args.edit, reason=reason)


def build_command(args: argparse.Namespace) -> Command:
    """The command a supervision command line asks for.

    Raises:
        UsageError: the options do not make one command.
        pydantic.ValidationError: a value given is one the catalogue refuses.
    """
    name = args.command
    if args.all_workspaces and not (name in ("approve", "reject") and args.all):
        raise UsageError("--all-workspaces only goes with approve --all / reject --all")
    if name in ("approve", "reject"):
        return _decision(args)
    if name == "escalate":
        return ApprovalEscalate(approval_id=args.id)
    if name == "snooze":
        return ApprovalSnooze(approval_id=args.id, for_s=args.for_s)
    if name == "claim":
        claim = ApprovalUnclaim if args.release else ApprovalClaim
        if args.for_s is None:  # the configured claim time
            return claim(approval_id=args.id)
        return claim(approval_id=args.id, for_s=args.for_s)
    if name in TURN_COMMANDS:
        return TURN_COMMANDS[name](turn_id=args.turn)
    if name == "complete":
        deliverable = _read_deliverable(args.deliverable)
        return TurnComplete(turn_id=args.turn, deliverable=deliverable)
    if name == "fallback":
        on = args.force == "on"
        if args.lane is not None:
            return LaneForceFallback(lane=args.lane, on=on)
        return FallbackForce(on=on)
    if name == "lane":
        lane = LanePause if args.action == "pause" else LaneResume
        return lane(lane=args.lane)
    if name == "alert":
        alert = AlertAck if args.action == "ack" else AlertResolve
        return alert(alert_id=args.id)
    if name == "rebaseline":
        return LaneRebaseline(lane=args.lane)
    raise AssertionError(f"not a supervision command: {name}")


async def supervise_command(args: argparse.Namespace, out: IO[str]) -> int:
    """Give one command to the running daemon; print its result (exit 0 ok, 1 refused, 3 no
    daemon)."""
    from quarterdeck.cli.daemon import daemon_address, give_command
    from quarterdeck.cli.read import resolve_command_ids

    if (address := daemon_address(args)) is not None:  # a short id or prefix: the full id
        async with address.client() as api:
            unknown = await resolve_command_ids(args, api)
        if unknown is not None:
            return _answer({"ok": False, "errors": [unknown]}, out)
    try:
        command = build_command(args)
    except ValidationError as exc:
        # refused as a runtime would refuse it, without sending it
        return _answer({"ok": False, "errors": problems_of(exc)}, out)
    return _answer(await give_command(args, command), out)


def _answer(result: dict[str, Any], out: IO[str]) -> int:
    """Print a command's result; exit 0 when it was applied, 1 when refused (each error on
    stderr)."""
    print_json(result, out)
    if result.get("ok"):
        return 0
    for error in result.get("errors") or ["refused"]:
        sys.stderr.write(f"quarterdeck: refused: {error}\n")
    return 1
