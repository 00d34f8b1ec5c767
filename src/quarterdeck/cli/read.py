"""The read commands: ``status``, ``ls``, ``show`` and ``approvals`` (the open ones, nearest
deadline first). Each prints tables or lines for a human, or JSON with ``--json``; exit 1 when
the item is missing. (``ledger`` is :mod:`quarterdeck.cli.ledger`.)

Tables show ids in their short form (:func:`~quarterdeck.domain.ids.short_id`); ``show`` and
every supervision command take the full id, the short form or a unique prefix of the full id
(:func:`resolve_command_ids`); one that matches several items is a usage error listing them.

Each reads from a ``Source``: the running daemon's control API when there is one (what it
answers is printed, within what the caller's roles may read), else the database itself. A
listing through the API holds at most :data:`API_LIMIT` items (``--limit 0`` included)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Mapping, Sequence
from typing import IO, Any

from quarterdeck.cli.common import UsageError, print_json, workspace, workspace_scope
from quarterdeck.client.api import ControlClient, ControlError, ControlRefused
from quarterdeck.domain.display import escape_controls
from quarterdeck.domain.ids import AmbiguousId, UnknownId, short_id
from quarterdeck.store.database import Database

Source = Database | ControlClient
"""Where a read reads: the daemon's control API, or the database."""
API_LIMIT = 1_000
"""The most items one listing through the control API holds."""
MAX_CELL = 60
"""The widest a cell is shown, but the one column that takes the terminal's spare width."""

_LS_COLUMNS: dict[str, tuple[str, ...]] = {
    "receipts": ("id", "status", "workspace", "received_at", "kind", "idempotency_key", "errors"),
    "turns": ("id", "state", "workspace", "lane", "attempt", "updated_at", "objective"),
    "missions": ("id", "state", "turn", "lane", "role", "attempt", "updated_at"),
    "sessions": ("id", "state", "lane", "lease_owner", "updated_at", "cwd"),
    "approvals": ("id", "state", "tool", "lane", "deadline", "args"),
    "alerts": ("id", "state", "severity", "alert_type", "subject", "updated_at", "message"),
}
"""The columns ``ls`` shows of each kind; the last one takes the spare width."""
_SHORT = frozenset({"id", "turn", "subject"})
"""Columns that hold ids (shown short)."""


def _value(item: Mapping[str, Any], column: str) -> Any:
    """The item's field that ``column`` shows (else its envelope's)."""
    if column == "turn":
        return short_id(item.get("turn_id"))
    if column == "subject":
        return short_id(item.get("subject_id"))
    if column == "deadline":
        return item.get("deadline_at")
    if column == "cwd":
        return item.get("cwd") or item.get("workdir")
    if column == "args":  # a listing's are stored JSON text, open approvals' an object
        args = item.get("args") or {}
        return args if isinstance(args, str) else json.dumps(args, separators=(",", ":"))
    value = item.get(column)
    if value is None and "envelope" in item:
        value = item["envelope"].get(column)
    return short_id(value) if column == "id" else value


def _cell(item: Mapping[str, Any], column: str) -> str:
    """A table cell: the item's field, lists joined with ``; ``, control characters
    escaped."""
    value = _value(item, column)
    if isinstance(value, list):
        return escape_controls("; ".join(str(v) for v in value))
    return "" if value is None else escape_controls(str(value))


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def write_table(columns: Sequence[str], rows: list[list[str]], out: IO[str]) -> None:
    """Aligned columns under an upper-case header; cells cut at :data:`MAX_CELL` characters,
    but the last column's, which takes what is left of the terminal's width."""
    if not columns:
        return
    fixed = [
        max([len(c), *(len(_cut(r[i], MAX_CELL)) for r in rows)])
        for i, c in enumerate(columns[:-1])
    ]
    spare = shutil.get_terminal_size((120, 24)).columns - sum(w + 2 for w in fixed)
    last = max(spare, len(columns[-1]), 20)
    widths = [*fixed, last]
    for row in [[c.upper() for c in columns], *rows]:
        cells = [_cut(v, w).ljust(w) for v, w in zip(row, widths, strict=True)]
        out.write("  ".join(cells).rstrip() + "\n")


def _nothing(kind: str, args: argparse.Namespace, filters: Mapping[str, str | None]) -> str:
    """What an empty listing says: that nothing matches the filters given, or that there is
    nothing yet, and where."""
    scope = workspace_scope(args)
    where = f"in workspace {scope}" if scope else "in any workspace"
    given = [f"--{name} {value}" for name, value in filters.items() if value is not None]
    if given:
        return f"(no {kind} match {' '.join(given)} {where})"
    return f"(no {kind} {where})"


async def status_command(source: Source, args: argparse.Namespace, out: IO[str]) -> int:
    """Counts by state, the SLO figures and the ledger head."""
    from quarterdeck.store.queries import slo, status

    if isinstance(source, ControlClient):
        result = await source.status(workspace_scope(args))
    else:
        result = await status(source, workspace_scope(args))
        result["slo"] = await slo(source, workspace_scope(args))
    if args.json:
        print_json(result, out)
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


async def ls_command(source: Source, args: argparse.Namespace, out: IO[str]) -> int:
    """Items of one kind, newest first."""
    from quarterdeck.store.queries import list_items

    if isinstance(source, ControlClient):
        items = await source.items(
            args.kind, workspace=workspace_scope(args), state=args.state,
            limit=min(args.limit or API_LIMIT, API_LIMIT),
        )  # fmt: skip
    else:
        items = await list_items(
            source, args.kind, workspace=workspace_scope(args), state=args.state,
            limit=args.limit or None,
        )  # fmt: skip
    if args.json:
        for item in items:
            print_json(item, out)
        return 0
    columns = list(_LS_COLUMNS[args.kind])
    if workspace_scope(args) is not None and "workspace" in columns:
        columns.remove("workspace")
    write_table(columns, [[_cell(item, c) for c in columns] for item in items], out)
    if not items:
        out.write(_nothing(args.kind, args, {"state": args.state}) + "\n")
    return 0


_HISTORY_COLUMNS = ("seq", "at", "actor", "action", "from_state", "to_state")
_MISSION_COLUMNS = ("id", "state", "lane", "role", "attempt", "started_at", "finished_at", "error")


async def _find(source: Source, typed: str, scope: str | None) -> dict[str, Any] | None:
    """The item ``typed`` names in scope, None when none does.

    Raises:
        UsageError: several items match (each is listed).
    """
    from quarterdeck.store.queries import get_item
    from quarterdeck.store.queries.ids import resolve_id

    if isinstance(source, ControlClient):
        try:
            return await source.show(typed, scope)
        except ControlError as exc:
            if exc.status == 409:
                raise UsageError(exc.message) from None
            raise
    try:
        match = await resolve_id(source, typed, workspaces=None if scope is None else {scope})
    except UnknownId:
        return None
    except AmbiguousId as exc:
        raise UsageError(exc.message) from None
    except ValueError as exc:
        raise UsageError(f"id: {exc}") from None
    return await get_item(source, match.id, workspace=scope)


async def show_command(source: Source, args: argparse.Namespace, out: IO[str]) -> int:
    """One item with all its fields (by its full id, short id or a unique prefix of its id);
    its missions and history as tables. Exit 1 when there is none in scope."""
    scope = workspace_scope(args)
    item = await _find(source, args.id, scope)
    if item is None:
        where = f"workspace {scope}" if scope else "any workspace"
        sys.stderr.write(f"quarterdeck: no item {escape_controls(args.id)} in {where}\n")
        return 1
    if args.json:
        print_json(item, out)
        return 0
    tables = {"missions": _MISSION_COLUMNS, "history": _HISTORY_COLUMNS}
    for key, value in item.items():
        if key in tables:
            continue
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        out.write(f"{escape_controls(key):<16} {escape_controls(text)}\n")
    for key, columns in tables.items():
        rows = item.get(key)
        if rows is None:
            continue
        out.write(f"\n{key}:\n")
        write_table(columns, [[_cell(row, c) for c in columns] for row in rows], out)
        if not rows:
            out.write(f"(no {key})\n")
    return 0


async def approvals_command(source: Source, args: argparse.Namespace, out: IO[str]) -> int:
    """Open approvals, nearest deadline first; a claim shows only while it holds."""
    from quarterdeck.domain.clock import format_instant, utc_now
    from quarterdeck.store.queries import open_approvals

    scope = workspace_scope(args)
    if isinstance(source, ControlClient):
        items = await source.approvals(
            scope, lane=args.lane, tool=args.tool, limit=args.limit or None
        )
    else:
        items = await open_approvals(
            source, scope, lane=args.lane, tool=args.tool, limit=args.limit or None
        )
    if args.json:
        for item in items:
            print_json(item, out)
        return 0
    now = format_instant(utc_now())
    columns = ["id", "state", "tool", "lane", "deadline", "approver", "claimed_by"]
    if scope is None:
        columns.insert(1, "workspace")
    if any("session" in item for item in items):
        columns += ["session", "cwd"]  # an agent CLI's call (Claude Code, Codex)
    columns.append("args")
    rows = []
    for item in items:
        claimed = item["claimed_by"] if (item["claim_expires_at"] or "") > now else None
        rows.append([_cell({**item, "claimed_by": claimed}, c) for c in columns])
    write_table(columns, rows, out)
    if not rows:
        out.write(_nothing("open approvals", args, {"lane": args.lane, "tool": args.tool}) + "\n")
    return 0


_COMMAND_IDS: dict[str, tuple[str, str]] = {
    "approve": ("id", "approval"), "reject": ("id", "approval"), "escalate": ("id", "approval"),
    "snooze": ("id", "approval"), "claim": ("id", "approval"), "alert": ("id", "alert"),
    "takeover": ("turn", "turn"), "release": ("turn", "turn"), "complete": ("turn", "turn"),
    "requeue": ("turn", "turn"), "cancel": ("turn", "turn"),
}  # fmt: skip
"""The supervision commands that name an item: the argument that holds its id, and its kind."""


async def resolve_command_ids(args: argparse.Namespace, api: ControlClient) -> str | None:
    """Replace the id a supervision command names (its full id, short id or a unique prefix)
    with the full id, asking the daemon (within the command's workspace). Returns why nothing
    was found (naming the id), else None.

    Raises:
        UsageError: several items match (each is listed), or the id is empty.
    """
    if args.command not in _COMMAND_IDS:
        return None
    name, kind = _COMMAND_IDS[args.command]
    typed = getattr(args, name, None)
    if typed is None or getattr(args, "all", False):
        return None  # ``--all`` with an id is the usage error the command reports
    try:
        match = await api.resolve_id(typed, kind, workspace(args))
    except ControlRefused:
        return None  # not the caller's to read: the command is refused as it always was
    except ControlError as exc:
        if exc.status in (400, 409):
            raise UsageError(exc.message) from None
        if exc.status == 404:
            return exc.message
        raise
    setattr(args, name, str(match["id"]))
    return None
