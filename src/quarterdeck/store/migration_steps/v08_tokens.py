"""Step 8: bearer tokens for remote supervisors (only their secrets' hashes)."""

from __future__ import annotations

from sqlalchemy import Column, Connection, MetaData, String, Table


def _tables_v8(metadata: MetaData) -> list[Table]:
    tokens = Table(
        "tokens",
        metadata,
        Column("id", String, primary_key=True),
        Column("name", String, nullable=False),
        Column("role", String, nullable=False),
        Column("workspace", String),
        Column("secret_hash", String, nullable=False),
        Column("created_at", String, nullable=False),
        Column("created_by", String, nullable=False),
        Column("expires_at", String),
        Column("revoked_at", String),
        Column("revoked_by", String),
    )
    return [tokens]


def up(conn: Connection) -> None:
    """Bearer tokens for remote supervisors: only each secret's hash is kept."""
    metadata = MetaData()
    _tables_v8(metadata)
    metadata.create_all(conn)


def down(conn: Connection) -> None:
    metadata = MetaData()
    _tables_v8(metadata)
    metadata.drop_all(conn)
