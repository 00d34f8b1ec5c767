"""Schema migrations: the runner that moves the schema up or down the ordered steps of
:mod:`quarterdeck.store.migration_steps`, and the record of the versions applied.

The applied versions are recorded in ``schema_migrations``; the highest one is the schema
version. Nodes migrating together on PostgreSQL take turns under an advisory lock.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Connection,
    Integer,
    MetaData,
    String,
    Table,
    insert,
    inspect,
    select,
)
from sqlalchemy import func as sql_func

from quarterdeck.domain.clock import format_instant, utc_now
from quarterdeck.store.migration_steps import MIGRATIONS

__all__ = [
    "HEAD_VERSION",
    "MIGRATIONS",
    "MIGRATION_LOCK_KEY",
    "MigrationError",
    "current_version",
    "migrate",
]


class MigrationError(Exception):
    """The database's schema version is unknown to this build, or a step failed."""


HEAD_VERSION = MIGRATIONS[-1].version
MIGRATION_LOCK_KEY = 0x5144_4D49
"""The PostgreSQL advisory lock that migrating processes take in turn."""

_record_metadata = MetaData()
_record = Table(
    "schema_migrations",
    _record_metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("name", String, nullable=False),
    Column("applied_at", String, nullable=False),
)


def current_version(conn: Connection) -> int:
    """The schema version recorded in the database (0 for an empty database)."""
    if not inspect(conn).has_table("schema_migrations"):
        return 0
    version = conn.execute(select(sql_func.max(_record.c.version))).scalar()
    return int(version or 0)


def migrate(conn: Connection, target: int = HEAD_VERSION) -> list[int]:
    """Move the schema up or down to ``target``, one recorded step at a time.

    Runs inside the caller's transaction, so a failed step leaves the schema as it was.

    Returns:
        The versions applied (upwards) or reverted (downwards), in order.

    Raises:
        MigrationError: ``target`` or the database's version is unknown to this build.
    """
    known = {m.version for m in MIGRATIONS}
    if target != 0 and target not in known:
        raise MigrationError(f"unknown schema version {target} (this build knows 0-{HEAD_VERSION})")
    if conn.dialect.name == "postgresql":
        # Nodes starting together take turns; each then sees the version the last one left.
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
    _record_metadata.create_all(conn)
    version = current_version(conn)
    if version > HEAD_VERSION:
        raise MigrationError(
            f"the database is at schema version {version}, newer than this build ({HEAD_VERSION})"
        )
    done: list[int] = []
    for step in MIGRATIONS:
        if version < step.version <= target:
            step.up(conn)
            conn.execute(
                insert(_record).values(
                    version=step.version, name=step.name, applied_at=format_instant(utc_now())
                )
            )
            done.append(step.version)
    for step in reversed(MIGRATIONS):
        if target < step.version <= version:
            step.down(conn)
            conn.execute(_record.delete().where(_record.c.version == step.version))
            done.append(step.version)
    return done
