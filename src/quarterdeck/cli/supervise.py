"""The supervision commands (``approve``, ``reject``, ``escalate``, ``snooze``, ``claim``,
``takeover``, ``release``, ``complete``, ``requeue``, ``cancel``, ``fallback``, ``lane``,
``alert``, ``rebaseline``): each builds one command payload, sends it as a command envelope and
waits (``--wait``) for a running runtime to apply it. The result is printed as JSON; exit 0 when
it was applied, 1 when it was refused (each error on stderr), 3 when no runtime applied it in
time (it stays queued)."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from typing import IO, Any

from quarterdeck.cli.common import UsageError, database_url, print_json, workspace

EXIT_NOT_APPLIED = 3
SUPERVISION = (
    "approve", "reject", "escalate", "snooze", "claim", "takeover", "release", "complete",
    "requeue", "cancel", "fallback", "lane", "alert", "rebaseline",
)  # fmt: skip
"""The commands this module sends."""


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
    """``approve``/``reject``: one approval by ID, or every open one matching (``--all``)."""
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


async def supervise_command(args: argparse.Namespace, out: IO[str]) -> int:
    """Send one command envelope and wait for its result (exit 0 ok, 1 refused, 3 not
    applied in time)."""
    from quarterdeck.client import Client, CommandRejected, CommandTimeout

    payload = command_payload(args)
    payload["actor"] = args.actor or default_actor()
    async with Client(database_url(args), workspace=workspace(args)) as client:
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
    print_json(result, out)
    if result.get("ok"):
        return 0
    for error in result.get("errors") or ["refused"]:
        sys.stderr.write(f"quarterdeck: refused: {error}\n")
    return 1
