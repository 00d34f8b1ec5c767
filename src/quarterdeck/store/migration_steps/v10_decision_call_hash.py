"""Step 10: decisions bind an action key to its call's hash."""

from __future__ import annotations

from sqlalchemy import Connection

_V10_KEY_INDEX = (
    "CREATE INDEX ix_decisions_key ON decisions (workspace, action_key, at) "
    "WHERE kind <> 'dispatch'"
)


def up(conn: Connection) -> None:
    """An action key is bound to the call first asked under it: each decision keeps the
    SHA-256 of its canonical ``[tool, args]`` (older rows are hashed from their stored
    columns when read), and the first decision of an action or SDK key is found by index
    (dispatch decisions, one per mission and never looked up by key, stay out of it)."""
    conn.exec_driver_sql("ALTER TABLE decisions ADD COLUMN call_hash VARCHAR")
    conn.exec_driver_sql(_V10_KEY_INDEX)


def down(conn: Connection) -> None:
    conn.exec_driver_sql("DROP INDEX ix_decisions_key")
    conn.exec_driver_sql("ALTER TABLE decisions DROP COLUMN call_hash")
