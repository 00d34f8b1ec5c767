"""Step 14: every table whose ids people type (receipts, turns, missions, sessions, approvals,
alerts) indexes each id's short form, the eight hex digits every table shows, so that a command
given a short id finds its item without reading the whole table. (A prefix of an id reads the
primary key.)"""

from __future__ import annotations

from sqlalchemy import Connection

TABLES = ("receipts", "turns", "missions", "sessions", "approvals", "alerts")
SHORT = "substr(id, 25, 4) || substr(id, 33, 4)"
"""A canonical id's short form (frozen copy: the digits 25-28 and 33-36)."""


def up(conn: Connection) -> None:
    """Add ``ix_<table>_short`` on the short form of each table's ids."""
    expression = f"({SHORT})" if conn.dialect.name == "postgresql" else SHORT
    for table in TABLES:
        conn.exec_driver_sql(f"CREATE INDEX ix_{table}_short ON {table} ({expression})")


def down(conn: Connection) -> None:
    """Drop them."""
    for table in TABLES:
        conn.exec_driver_sql(f"DROP INDEX ix_{table}_short")
