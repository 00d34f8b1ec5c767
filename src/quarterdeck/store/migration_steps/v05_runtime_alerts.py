"""Step 5 (data only): alerts about the runtime itself move to the runtime's workspace."""

from __future__ import annotations

from sqlalchemy import Connection, text

_V5_RUNTIME_ALERTS = "('attested_file', 'policy_invalid', 'slo_breach')"
"""The alert types about the runtime itself, which step 5 moves to its own workspace."""


def _move_v5(conn: Connection, source: str, target: str) -> None:
    """Move the runtime's alerts from ``source`` to ``target``, except an unresolved alert
    whose condition is unresolved in ``target`` already (one per workspace and condition)."""
    conn.execute(
        text(
            "UPDATE alerts SET workspace = :target "
            f"WHERE workspace = :source AND alert_type IN {_V5_RUNTIME_ALERTS} "
            "AND NOT (state != 'resolved' AND EXISTS (SELECT 1 FROM alerts AS twin "
            "WHERE twin.workspace = :target AND twin.dedupe = alerts.dedupe "
            "AND twin.state != 'resolved'))"
        ),
        {"source": source, "target": target},
    )


def up(conn: Connection) -> None:
    """Alerts about the runtime (drift, the policy file, SLO breaches) were written to workspace
    ``default``; they concern every workspace's work and move to the runtime's workspace."""
    _move_v5(conn, "default", "_runtime")


def down(conn: Connection) -> None:
    """Back to ``default`` (an older node running meanwhile may have opened a condition there
    again: that alert's moved twin stays)."""
    _move_v5(conn, "_runtime", "default")
