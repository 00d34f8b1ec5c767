"""Step 6: claims read a lane's queued missions in order, by an index of exactly those."""

from __future__ import annotations

from sqlalchemy import Connection

_V6_OLD_CLAIM_INDEX = "CREATE INDEX ix_missions_claim ON missions (state, lane, not_before)"
_V6_QUEUED_INDEX = "CREATE INDEX ix_missions_queued ON missions (lane, id) WHERE state = 'queued'"


def up(conn: Connection) -> None:
    """Claims take a lane's queued missions in id order: an index of exactly those, in that
    order, lets a claim read the first few instead of sorting the lane's whole backlog."""
    conn.exec_driver_sql("DROP INDEX ix_missions_claim")
    conn.exec_driver_sql(_V6_QUEUED_INDEX)


def down(conn: Connection) -> None:
    conn.exec_driver_sql("DROP INDEX ix_missions_queued")
    conn.exec_driver_sql(_V6_OLD_CLAIM_INDEX)
