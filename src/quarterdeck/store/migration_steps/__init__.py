"""The schema's migration steps, in order: each version's (up, down) pair.

One module a step (``vNN_what.py``), holding its ``up(conn)`` and ``down(conn)`` and its own
frozen copy of the tables it touches (never the live models, which move on), so that an old
step always builds the schema it built when it was written. Steps are written with SQLAlchemy
Core DDL so that they run on SQLite and PostgreSQL alike; the runner that applies them and
records the versions is :mod:`quarterdeck.store.migrations`.

A new step is a new module beside these and one line at the end of :data:`MIGRATIONS` (with
its import); an old step is never edited.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection

from quarterdeck.store.migration_steps import v01_receipts_ledger as v01
from quarterdeck.store.migration_steps import v02_stateful_rows as v02
from quarterdeck.store.migration_steps import v03_work as v03
from quarterdeck.store.migration_steps import v04_supervision as v04
from quarterdeck.store.migration_steps import v05_runtime_alerts as v05
from quarterdeck.store.migration_steps import v06_queued_index as v06
from quarterdeck.store.migration_steps import v07_ledger_checkpoints as v07
from quarterdeck.store.migration_steps import v08_tokens as v08
from quarterdeck.store.migration_steps import v09_agent_processes as v09
from quarterdeck.store.migration_steps import v10_decision_call_hash as v10
from quarterdeck.store.migration_steps import v11_two_person_rule as v11
from quarterdeck.store.migration_steps import v12_outbox_without_url as v12
from quarterdeck.store.migration_steps import v13_baseline_bytes as v13
from quarterdeck.store.migration_steps import v14_short_ids as v14


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step and its inverse."""

    version: int
    name: str
    up: Callable[[Connection], None]
    down: Callable[[Connection], None]
    changes_schema: bool = True
    """False for a step that only moves data (the schema stays as the step before left it)."""


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "receipts and ledger", v01.up, v01.down),
    Migration(2, "turns, missions, sessions, approvals, alerts", v02.up, v02.down),
    Migration(3, "work: turn and mission details, lane flags, mission events", v03.up, v03.down),
    Migration(
        4,
        "supervision: decisions, releases, approvals, alerts, outbox, attestations",
        v04.up,
        v04.down,
    ),
    Migration(5, "alerts about the runtime move to its workspace", v05.up, v05.down, False),
    Migration(6, "claims read a lane's queued missions in order", v06.up, v06.down),
    Migration(7, "signed ledger checkpoints; ledger rows are append-only", v07.up, v07.down),
    Migration(8, "bearer tokens (their secrets' hashes)", v08.up, v08.down),
    Migration(9, "agent processes recorded before they run", v09.up, v09.down),
    Migration(10, "decisions bind an action key to its call's hash", v10.up, v10.down),
    Migration(11, "approvals count who approved (two-person rule)", v11.up, v11.down),
    Migration(12, "outbox rows name their webhook, without its URL", v12.up, v12.down),
    Migration(13, "attested files' baselines keep their bytes", v13.up, v13.down),
    Migration(14, "ids are found by their short form", v14.up, v14.down),
)
