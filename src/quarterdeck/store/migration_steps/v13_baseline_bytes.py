"""Step 13: an attested file's baseline keeps its bytes (under a size cap), so that a drift
alert can show what changed."""

from __future__ import annotations

from sqlalchemy import Connection


def up(conn: Connection) -> None:
    """``attestations.content``: the baseline's bytes (NULL when over the cap, or baselined
    before this step)."""
    kind = "BYTEA" if conn.dialect.name == "postgresql" else "BLOB"
    conn.exec_driver_sql(f"ALTER TABLE attestations ADD COLUMN content {kind}")


def down(conn: Connection) -> None:
    conn.exec_driver_sql("ALTER TABLE attestations DROP COLUMN content")
