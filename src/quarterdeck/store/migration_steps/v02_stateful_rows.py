"""Step 2: turns, missions, sessions, approvals and alerts, each a row with a state, a
version and an attempt."""

from __future__ import annotations

from sqlalchemy import Column, Connection, Index, Integer, MetaData, String, Table

_STATEFUL_EXTRA: dict[str, list[str]] = {
    "turns": ["receipt_id", "lane", "lease_owner", "lease_expires_at"],
    "missions": ["turn_id", "lane", "lease_owner", "lease_expires_at"],
    "sessions": [
        "lane",
        "lease_owner",
        "lease_expires_at",
        "heartbeat_at",
        "last_error",
        "workdir",
    ],
    "approvals": ["turn_id", "action_id"],
    "alerts": ["alert_type", "severity"],
}


def _tables_v2(metadata: MetaData) -> list[Table]:
    tables = []
    for name, extra in _STATEFUL_EXTRA.items():
        tables.append(
            Table(
                name,
                metadata,
                Column("id", String, primary_key=True),
                Column("workspace", String, nullable=False),
                Column("state", String, nullable=False),
                Column("version", Integer, nullable=False),
                Column("attempt", Integer, nullable=False),
                Column("created_at", String, nullable=False),
                Column("updated_at", String, nullable=False),
                Column("data", String, nullable=False),
                *(Column(column, String) for column in extra),
                Index(f"ix_{name}_state", "workspace", "state"),
            )
        )
    return tables


def up(conn: Connection) -> None:
    metadata = MetaData()
    _tables_v2(metadata)
    metadata.create_all(conn)


def down(conn: Connection) -> None:
    metadata = MetaData()
    _tables_v2(metadata)
    metadata.drop_all(conn)
