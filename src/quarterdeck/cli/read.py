"""The read commands: ``status``, ``ls``, ``show``, ``ledger verify``/``ledger export`` and
``approvals`` (the open ones). Each prints a table or lines for a human, or JSON with ``--json``;
exit 1 when the item is missing or the ledger is broken."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import IO, Any

from quarterdeck.cli.common import print_json, workspace_scope
from quarterdeck.store.database import Database

_TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "receipts": ("id", "status", "workspace", "received_at", "kind", "idempotency_key", "errors"),
}
_ITEM_COLUMNS = ("id", "state", "workspace", "version", "attempt", "updated_at")


def _cell(item: dict[str, Any], column: str) -> str:
    """A table cell: the item's field (else its envelope's), lists joined with ``; ``."""
    value = item.get(column)
    if value is None and "envelope" in item:
        value = item["envelope"].get(column)
    if isinstance(value, list):
        return "; ".join(str(v) for v in value)
    return "" if value is None else str(value)


def _write_table(columns: Sequence[str], rows: list[list[str]], out: IO[str]) -> None:
    """Aligned columns under an upper-case header; cells cut at 60 characters."""
    widths = [max([len(c), *(len(r[i][:60]) for r in rows)]) for i, c in enumerate(columns)]
    out.write(
        "  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip() + "\n"
    )
    for row in rows:
        out.write(
            "  ".join(v[:60].ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() + "\n"
        )


async def status_command(db: Database, args: argparse.Namespace, out: IO[str]) -> int:
    """Counts by state, the SLO figures and the ledger head."""
    from quarterdeck.store.queries import slo, status

    result = await status(db, workspace_scope(args))
    result["slo"] = await slo(db, workspace_scope(args))
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


async def ls_command(db: Database, args: argparse.Namespace, out: IO[str]) -> int:
    """Items of one kind, newest first."""
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
            print_json(item, out)
        return 0
    columns = _TABLE_COLUMNS.get(args.kind, _ITEM_COLUMNS)
    rows = [[_cell(item, c) for c in columns] for item in items]
    _write_table(columns, rows, out)
    if not rows:
        out.write(f"(no {args.kind})\n")
    return 0


async def show_command(db: Database, args: argparse.Namespace, out: IO[str]) -> int:
    """One item with all its fields; exit 1 when there is none in scope."""
    from quarterdeck.store.queries import get_item

    scope = workspace_scope(args)
    item = await get_item(db, args.id, workspace=scope)
    if item is None:
        where = f"workspace {scope}" if scope else "any workspace"
        sys.stderr.write(f"quarterdeck: no item {args.id} in {where}\n")
        return 1
    if args.json:
        print_json(item, out)
        return 0
    for key, value in item.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        out.write(f"{key:<16} {text}\n")
    return 0


async def ledger_command(db: Database, args: argparse.Namespace, out: IO[str]) -> int:
    """Verify the hash chain (exit 1 when broken), or export entries as canonical JSON lines."""
    from quarterdeck.store.ledger import iter_entries, verify_ledger

    if args.ledger_command == "verify":
        result = await verify_ledger(db)
        if args.json:
            print_json(result.to_dict(), out)
        elif result.ok:
            out.write(f"ledger ok: {result.entries} entries, head {result.head}\n")
        else:
            out.write(f"ledger BROKEN at seq {result.first_bad_seq}: {result.reason}\n")
        return 0 if result.ok else 1
    from quarterdeck.domain.canonical import canonical_text

    async for entry in iter_entries(db, since=args.since, workspace=workspace_scope(args)):
        out.write(canonical_text(entry) + "\n")
    return 0


async def approvals_command(db: Database, args: argparse.Namespace, out: IO[str]) -> int:
    """Open approvals, nearest deadline first; a claim shows only while it holds."""
    from quarterdeck.domain.clock import format_instant, utc_now
    from quarterdeck.store.queries import open_approvals

    scope = workspace_scope(args)
    items = await open_approvals(
        db, scope, lane=args.lane, tool=args.tool, limit=args.limit or None
    )
    if args.json:
        for item in items:
            print_json(item, out)
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
