"""``quarterdeck db``: the schema version, and migrations up or down."""

from __future__ import annotations

import argparse
from typing import IO

from quarterdeck.cli.common import UsageError, print_json
from quarterdeck.store.database import Database
from quarterdeck.store.migrations import HEAD_VERSION


async def db_command(db: Database, args: argparse.Namespace, out: IO[str]) -> int:
    """Print the schema version, or migrate to ``--to`` and print the steps taken."""
    if args.db_command == "version":
        print_json({"version": await db.schema_version(), "head": HEAD_VERSION}, out)
        return 0
    current = await db.schema_version()
    if args.to is None:
        args.to = HEAD_VERSION
    if args.db_command == "upgrade" and args.to < current:
        raise UsageError(f"upgrade --to {args.to} is below the current version {current}")
    if args.db_command == "downgrade" and args.to > current:
        raise UsageError(f"downgrade --to {args.to} is above the current version {current}")
    steps = await db.migrate(args.to)
    print_json({"from": current, "to": args.to, "steps": steps}, out)
    return 0
