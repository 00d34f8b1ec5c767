"""Step 3: the work's details on turns and missions, lane flags, mission events and counters."""

from __future__ import annotations

from sqlalchemy import Column, Connection, Index, Integer, MetaData, String, Table, Text

_V3_COLUMNS: dict[str, list[tuple[str, str]]] = {
    "turns": [
        ("objective", "TEXT"),
        ("input", "TEXT"),
        ("budget", "TEXT"),
        ("deliverable", "TEXT"),
        ("error", "TEXT"),
        ("dead_letter", "VARCHAR"),
        ("held_until", "VARCHAR"),
    ],
    "missions": [
        ("role", "VARCHAR"),
        ("number", "INTEGER"),
        ("not_before", "VARCHAR"),
        ("routed_lane", "VARCHAR"),
        ("session_id", "VARCHAR"),
        ("started_at", "VARCHAR"),
        ("finished_at", "VARCHAR"),
        ("result", "TEXT"),
        ("error", "TEXT"),
    ],
}
_V3_INDEXES = (
    "CREATE UNIQUE INDEX ux_turns_receipt ON turns (receipt_id)",
    "CREATE INDEX ix_missions_claim ON missions (state, lane, not_before)",
    "CREATE INDEX ix_missions_turn ON missions (turn_id)",
    "CREATE INDEX ix_missions_lease ON missions (state, lease_expires_at)",
    "CREATE INDEX ix_receipts_unapplied ON receipts (id) "
    "WHERE status = 'accepted' AND produced_type IS NULL",
)


def _tables_v3(metadata: MetaData) -> list[Table]:
    flags = Table(
        "lane_flags",
        metadata,
        Column("lane", String, primary_key=True),
        Column("paused", Integer, nullable=False),
        Column("shadow", Integer, nullable=False),
        Column("force_fallback", Integer, nullable=False),
        Column("version", Integer, nullable=False),
        Column("updated_at", String, nullable=False),
    )
    events = Table(
        "mission_events",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("mission_id", String, nullable=False),
        Column("turn_id", String, nullable=False),
        Column("workspace", String, nullable=False),
        Column("at", String, nullable=False),
        Column("type", String, nullable=False),
        Column("data", Text, nullable=False),
        Index("ix_mission_events_turn", "turn_id", "id"),
    )
    counters = Table(
        "counters",
        metadata,
        Column("name", String, primary_key=True),
        Column("value", Integer, nullable=False),
    )
    return [flags, events, counters]


def up(conn: Connection) -> None:
    for table, columns in _V3_COLUMNS.items():
        for name, kind in columns:
            conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
    for statement in _V3_INDEXES:
        conn.exec_driver_sql(statement)
    metadata = MetaData()
    _tables_v3(metadata)
    metadata.create_all(conn)


def down(conn: Connection) -> None:
    metadata = MetaData()
    _tables_v3(metadata)
    metadata.drop_all(conn)
    for statement in _V3_INDEXES:
        conn.exec_driver_sql(f"DROP INDEX {statement.split(' ON ')[0].split()[-1]}")
    for table, columns in _V3_COLUMNS.items():
        for name, _kind in columns:
            conn.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN {name}")
