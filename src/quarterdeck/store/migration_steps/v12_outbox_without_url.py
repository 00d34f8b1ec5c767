"""Step 12: outbox rows name their webhook, without its URL."""

from __future__ import annotations

from sqlalchemy import Column, Connection, Index, Integer, MetaData, String, Table, Text

_OUTBOX_V12_COLUMNS = (
    "id, workspace, created_at, event, subject_type, subject_id, webhook, format, payload, "
    "state, attempts, next_attempt_at, last_error, delivered_at"
)
"""The outbox's columns from step 10 on (step 4's but ``url``)."""


def _outbox_v9(metadata: MetaData) -> Table:
    """The outbox as step 4 made it (frozen copy): with each webhook's URL on its rows."""
    return Table(
        "outbox",
        metadata,
        Column("id", String, primary_key=True),
        Column("workspace", String, nullable=False),
        Column("created_at", String, nullable=False),
        Column("event", String, nullable=False),
        Column("subject_type", String, nullable=False),
        Column("subject_id", String, nullable=False),
        Column("webhook", String, nullable=False),
        Column("url", String, nullable=False),
        Column("format", String, nullable=False),
        Column("payload", Text, nullable=False),
        Column("state", String, nullable=False),
        Column("attempts", Integer, nullable=False),
        Column("next_attempt_at", String, nullable=False),
        Column("last_error", Text),
        Column("delivered_at", String),
        Index("ix_outbox_due", "state", "next_attempt_at"),
    )


def up(conn: Connection) -> None:
    """Outbox rows stop holding their webhook's URL (a credential for many receivers): each row
    already names its webhook, whose URL and secret the relay takes from the configuration at
    send time. Nothing else to convert: a pending row whose webhook is no longer configured
    is dead-lettered by the relay, naming why."""
    conn.exec_driver_sql("ALTER TABLE outbox DROP COLUMN url")


def down(conn: Connection) -> None:
    """Rebuild the outbox with ``url`` where step 4 put it; the URLs are gone, so each row gets
    an empty one (a relay of that version fails to post it and dead-letters it in time)."""
    conn.exec_driver_sql(f"CREATE TABLE qd_outbox_v12 AS SELECT {_OUTBOX_V12_COLUMNS} FROM outbox")
    conn.exec_driver_sql("DROP TABLE outbox")
    metadata = MetaData()
    _outbox_v9(metadata).create(conn)
    conn.exec_driver_sql(
        f"INSERT INTO outbox ({_OUTBOX_V12_COLUMNS}, url) "
        f"SELECT {_OUTBOX_V12_COLUMNS}, '' FROM qd_outbox_v12"
    )
    conn.exec_driver_sql("DROP TABLE qd_outbox_v12")
