"""Step 1: receipts, their duplicate counters, the ledger and its head."""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Connection,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    insert,
)


def _tables_v1(metadata: MetaData) -> list[Table]:
    receipts = Table(
        "receipts",
        metadata,
        Column("id", String, primary_key=True),
        Column("workspace", String, nullable=False),
        Column("dedupe_key", String, nullable=False),
        Column("envelope_id", String),
        Column("idempotency_key", String),
        Column("correlation_id", String),
        Column("causation_id", String),
        Column("schema_version", Integer),
        Column("kind", String),
        Column("payload", Text),
        Column("submitted_at", String),
        Column("received_at", String, nullable=False),
        Column("status", String, nullable=False),
        Column("errors", Text, nullable=False),
        Column("raw", LargeBinary),
        Column("raw_size", Integer),
        Column("produced_type", String),
        Column("produced_id", String),
        Column("version", Integer, nullable=False),
        Index("ux_receipts_dedupe", "workspace", "dedupe_key", unique=True),
        Index("ix_receipts_status", "workspace", "status"),
    )
    ledger = Table(
        "ledger",
        metadata,
        Column("seq", Integer, primary_key=True, autoincrement=False),
        Column("at", String, nullable=False),
        Column("workspace", String, nullable=False),
        Column("actor", String, nullable=False),
        Column("action", String, nullable=False),
        Column("subject_type", String, nullable=False),
        Column("subject_id", String, nullable=False),
        Column("from_state", String),
        Column("to_state", String),
        Column("payload", Text, nullable=False),
        Column("prev_hash", String, nullable=False),
        Column("hash", String, nullable=False),
        Index("ix_ledger_subject", "subject_type", "subject_id"),
        Index("ix_ledger_workspace", "workspace", "seq"),
    )
    counters = Table(
        "receipt_counters",
        metadata,
        Column("workspace", String, primary_key=True),
        Column("duplicates", Integer, nullable=False),
    )
    head = Table(
        "ledger_head",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("seq", Integer, nullable=False),
        Column("hash", String, nullable=False),
    )
    return [receipts, counters, ledger, head]


def up(conn: Connection) -> None:
    metadata = MetaData()
    tables = _tables_v1(metadata)
    metadata.create_all(conn)
    conn.execute(insert(tables[3]).values(id=1, seq=0, hash="0" * 64))


def down(conn: Connection) -> None:
    metadata = MetaData()
    _tables_v1(metadata)
    metadata.drop_all(conn)
