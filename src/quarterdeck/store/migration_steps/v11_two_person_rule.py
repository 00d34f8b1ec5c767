"""Step 11: approvals count who approved (the two-person rule)."""

from __future__ import annotations

from sqlalchemy import Connection

_V11_COLUMNS = (("approvals_required", "INTEGER"), ("approved_by", "TEXT"))
"""How many people must approve (NULL: one), and who approved so far (a JSON list)."""


def up(conn: Connection) -> None:
    """A policy rule may ask for two different people's approval: each approval counts."""
    for name, kind in _V11_COLUMNS:
        conn.exec_driver_sql(f"ALTER TABLE approvals ADD COLUMN {name} {kind}")


def down(conn: Connection) -> None:
    for name, _kind in reversed(_V11_COLUMNS):
        conn.exec_driver_sql(f"ALTER TABLE approvals DROP COLUMN {name}")
