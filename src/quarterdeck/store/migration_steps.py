"""The schema's migration steps: each version's (up, down) pair, in order.

Each step holds its own frozen copy of the tables it touches (never the live models, which
move on), so that an old step always builds the schema it built when it was written. Steps are
written with SQLAlchemy Core DDL so that they run on SQLite and PostgreSQL alike; the runner
that applies them and records the versions is :mod:`quarterdeck.store.migrations`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import (
    Column,
    Connection,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    insert,
    text,
)


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step and its inverse."""

    version: int
    name: str
    up: Callable[[Connection], None]
    down: Callable[[Connection], None]
    changes_schema: bool = True
    """False for a step that only moves data (the schema stays as the step before left it)."""


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


def _up_v1(conn: Connection) -> None:
    metadata = MetaData()
    tables = _tables_v1(metadata)
    metadata.create_all(conn)
    conn.execute(insert(tables[3]).values(id=1, seq=0, hash="0" * 64))


def _down_v1(conn: Connection) -> None:
    metadata = MetaData()
    _tables_v1(metadata)
    metadata.drop_all(conn)


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


def _up_v2(conn: Connection) -> None:
    metadata = MetaData()
    _tables_v2(metadata)
    metadata.create_all(conn)


def _down_v2(conn: Connection) -> None:
    metadata = MetaData()
    _tables_v2(metadata)
    metadata.drop_all(conn)


_V3_COLUMNS: dict[str, list[tuple[str, str]]] = {
    "turns": [
        ("objective", "TEXT"),
        ("input", "TEXT"),
        ("budget", "TEXT"),
        ("deliverable", "TEXT"),
        ("error", "TEXT"),
        ("dead_letter", "VARCHAR"),
        ("held_until", "VARCHAR"),
    ],
    "missions": [
        ("role", "VARCHAR"),
        ("number", "INTEGER"),
        ("not_before", "VARCHAR"),
        ("routed_lane", "VARCHAR"),
        ("session_id", "VARCHAR"),
        ("started_at", "VARCHAR"),
        ("finished_at", "VARCHAR"),
        ("result", "TEXT"),
        ("error", "TEXT"),
    ],
}
_V3_INDEXES = (
    "CREATE UNIQUE INDEX ux_turns_receipt ON turns (receipt_id)",
    "CREATE INDEX ix_missions_claim ON missions (state, lane, not_before)",
    "CREATE INDEX ix_missions_turn ON missions (turn_id)",
    "CREATE INDEX ix_missions_lease ON missions (state, lease_expires_at)",
    "CREATE INDEX ix_receipts_unapplied ON receipts (id) "
    "WHERE status = 'accepted' AND produced_type IS NULL",
)


def _tables_v3(metadata: MetaData) -> list[Table]:
    flags = Table(
        "lane_flags",
        metadata,
        Column("lane", String, primary_key=True),
        Column("paused", Integer, nullable=False),
        Column("shadow", Integer, nullable=False),
        Column("force_fallback", Integer, nullable=False),
        Column("version", Integer, nullable=False),
        Column("updated_at", String, nullable=False),
    )
    events = Table(
        "mission_events",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("mission_id", String, nullable=False),
        Column("turn_id", String, nullable=False),
        Column("workspace", String, nullable=False),
        Column("at", String, nullable=False),
        Column("type", String, nullable=False),
        Column("data", Text, nullable=False),
        Index("ix_mission_events_turn", "turn_id", "id"),
    )
    counters = Table(
        "counters",
        metadata,
        Column("name", String, primary_key=True),
        Column("value", Integer, nullable=False),
    )
    return [flags, events, counters]


def _up_v3(conn: Connection) -> None:
    for table, columns in _V3_COLUMNS.items():
        for name, kind in columns:
            conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
    for statement in _V3_INDEXES:
        conn.exec_driver_sql(statement)
    metadata = MetaData()
    _tables_v3(metadata)
    metadata.create_all(conn)


def _down_v3(conn: Connection) -> None:
    metadata = MetaData()
    _tables_v3(metadata)
    metadata.drop_all(conn)
    for statement in _V3_INDEXES:
        conn.exec_driver_sql(f"DROP INDEX {statement.split(' ON ')[0].split()[-1]}")
    for table, columns in _V3_COLUMNS.items():
        for name, _kind in columns:
            conn.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN {name}")


_V4_COLUMNS: dict[str, list[tuple[str, str]]] = {
    "missions": [("decision_id", "VARCHAR")],
    "approvals": [
        ("mission_id", "VARCHAR"),
        ("decision_id", "VARCHAR"),
        ("action_key", "VARCHAR"),
        ("kind", "VARCHAR"),
        ("lane", "VARCHAR"),
        ("tool", "VARCHAR"),
        ("args", "TEXT"),
        ("edited_args", "TEXT"),
        ("approver", "VARCHAR"),
        ("level", "INTEGER"),
        ("ladder", "TEXT"),
        ("on_expiry", "VARCHAR"),
        ("deadline_s", "INTEGER"),
        ("deadline_at", "VARCHAR"),
        ("snoozed_until", "VARCHAR"),
        ("claimed_by", "VARCHAR"),
        ("claim_expires_at", "VARCHAR"),
        ("reason_code", "VARCHAR"),
        ("reason_text", "TEXT"),
        ("decided_by", "VARCHAR"),
        ("decided_at", "VARCHAR"),
        ("requested_by", "VARCHAR"),
        ("estimated_cost", "FLOAT"),
    ],
    "alerts": [
        ("subject_type", "VARCHAR"),
        ("subject_id", "VARCHAR"),
        ("dedupe", "VARCHAR"),
        ("message", "TEXT"),
        ("acked_by", "VARCHAR"),
        ("resolved_by", "VARCHAR"),
    ],
}
_V4_INDEXES = (
    "CREATE UNIQUE INDEX ux_approvals_action ON approvals (workspace, action_key)",
    "CREATE INDEX ix_approvals_turn ON approvals (turn_id)",
    "CREATE UNIQUE INDEX ux_alerts_open ON alerts (workspace, dedupe) WHERE state != 'resolved'",
)
_V4_TRIGGERS_SQLITE = (
    # No mission reaches an agent without a persisted decision that allows its dispatch.
    "CREATE TRIGGER qd_dispatch_needs_decision BEFORE UPDATE OF state ON missions "
    "WHEN NEW.state = 'running' AND OLD.state = 'queued' AND NOT EXISTS ("
    "SELECT 1 FROM decisions d WHERE d.id = NEW.decision_id AND d.mission_id = NEW.id "
    "AND d.verdict = 'allow') "
    "BEGIN SELECT RAISE(ABORT, 'no dispatch without an allowing decision'); END",
    "CREATE TRIGGER qd_mission_born_queued BEFORE INSERT ON missions "
    "WHEN NEW.state NOT IN ('queued', 'cancelled', 'failed') "
    "BEGIN SELECT RAISE(ABORT, 'no dispatch without an allowing decision'); END",
    # No action is released to an agent without one either, nor while a person holds the turn.
    "CREATE TRIGGER qd_release_needs_decision BEFORE INSERT ON action_releases "
    "WHEN NOT EXISTS (SELECT 1 FROM decisions d WHERE d.id = NEW.decision_id "
    "AND d.verdict = 'allow' AND d.action_key = NEW.action_key "
    "AND d.mission_id IS NEW.mission_id) "
    "OR EXISTS (SELECT 1 FROM turns t WHERE t.id = NEW.turn_id AND t.state = 'taken_over') "
    "BEGIN SELECT RAISE(ABORT, 'no release without an allowing decision'); END",
)
_V4_TRIGGERS_POSTGRES = (
    "CREATE FUNCTION qd_dispatch_needs_decision() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "BEGIN IF NEW.state = 'running' AND OLD.state = 'queued' AND NOT EXISTS ("
    "SELECT 1 FROM decisions d WHERE d.id = NEW.decision_id AND d.mission_id = NEW.id "
    "AND d.verdict = 'allow') THEN "
    "RAISE EXCEPTION 'no dispatch without an allowing decision' USING ERRCODE = '23514'; "
    "END IF; RETURN NEW; END $$",
    "CREATE TRIGGER qd_dispatch_needs_decision BEFORE UPDATE OF state ON missions "
    "FOR EACH ROW EXECUTE FUNCTION qd_dispatch_needs_decision()",
    "CREATE FUNCTION qd_mission_born_queued() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "BEGIN IF NEW.state NOT IN ('queued', 'cancelled', 'failed') THEN "
    "RAISE EXCEPTION 'no dispatch without an allowing decision' USING ERRCODE = '23514'; "
    "END IF; RETURN NEW; END $$",
    "CREATE TRIGGER qd_mission_born_queued BEFORE INSERT ON missions "
    "FOR EACH ROW EXECUTE FUNCTION qd_mission_born_queued()",
    "CREATE FUNCTION qd_release_needs_decision() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "BEGIN IF NOT EXISTS (SELECT 1 FROM decisions d WHERE d.id = NEW.decision_id "
    "AND d.verdict = 'allow' AND d.action_key = NEW.action_key "
    "AND d.mission_id IS NOT DISTINCT FROM NEW.mission_id) "
    "OR EXISTS (SELECT 1 FROM turns t WHERE t.id = NEW.turn_id AND t.state = 'taken_over') "
    "THEN RAISE EXCEPTION 'no release without an allowing decision' USING ERRCODE = '23514'; "
    "END IF; RETURN NEW; END $$",
    "CREATE TRIGGER qd_release_needs_decision BEFORE INSERT ON action_releases "
    "FOR EACH ROW EXECUTE FUNCTION qd_release_needs_decision()",
)
"""The same refusals as PL/pgSQL trigger functions (raised as check violations)."""
_V4_TRIGGER_NAMES = (
    "qd_dispatch_needs_decision",
    "qd_mission_born_queued",
    "qd_release_needs_decision",
)


def _tables_v4(metadata: MetaData) -> list[Table]:
    decisions = Table(
        "decisions",
        metadata,
        Column("id", String, primary_key=True),
        Column("workspace", String, nullable=False),
        Column("at", String, nullable=False),
        Column("kind", String, nullable=False),
        Column("turn_id", String),
        Column("mission_id", String),
        Column("action_key", String),
        Column("lane", String),
        Column("tool", String, nullable=False),
        Column("args", Text, nullable=False),
        Column("estimated_cost", Float),
        Column("outcome", String, nullable=False),
        Column("verdict", String, nullable=False),
        Column("rule", String),
        Column("trace", Text, nullable=False),
        Column("policy_hash", String, nullable=False),
        Column("approval_id", String),
        Column("decided_by", String),
        Column("reason", Text),
        Index("ix_decisions_mission", "mission_id", "action_key"),
        Index("ix_decisions_tool", "tool", "at"),
        Index("ix_decisions_lane", "lane", "at"),
        Index("ix_decisions_workspace", "workspace", "at"),
    )
    releases = Table(
        "action_releases",
        metadata,
        Column("id", String, primary_key=True),
        Column("workspace", String, nullable=False),
        Column("at", String, nullable=False),
        Column("turn_id", String),
        Column("mission_id", String),
        Column("action_key", String, nullable=False),
        Column("decision_id", String, nullable=False),
        Column("args", Text, nullable=False),
        Index("ix_action_releases_mission", "mission_id"),
    )
    outbox = Table(
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
    attestations = Table(
        "attestations",
        metadata,
        Column("lane", String, primary_key=True),
        Column("path", String, primary_key=True),
        Column("sha256", String, nullable=False),
        Column("baselined_at", String, nullable=False),
        Column("baselined_by", String, nullable=False),
    )
    return [decisions, releases, outbox, attestations]


def _up_v4(conn: Connection) -> None:
    for table, columns in _V4_COLUMNS.items():
        for name, kind in columns:
            conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
    for statement in _V4_INDEXES:
        conn.exec_driver_sql(statement)
    metadata = MetaData()
    _tables_v4(metadata)
    metadata.create_all(conn)
    triggers = _V4_TRIGGERS_POSTGRES if conn.dialect.name == "postgresql" else _V4_TRIGGERS_SQLITE
    for statement in triggers:
        conn.exec_driver_sql(statement)


def _down_v4(conn: Connection) -> None:
    for name in _V4_TRIGGER_NAMES:
        if conn.dialect.name == "postgresql":
            table = "action_releases" if name == "qd_release_needs_decision" else "missions"
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name} ON {table}")
            conn.exec_driver_sql(f"DROP FUNCTION IF EXISTS {name}()")
        else:
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}")
    metadata = MetaData()
    _tables_v4(metadata)
    metadata.drop_all(conn)
    for statement in _V4_INDEXES:
        conn.exec_driver_sql(f"DROP INDEX {statement.split(' ON ')[0].split()[-1]}")
    for table, columns in _V4_COLUMNS.items():
        for name, _kind in columns:
            conn.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN {name}")


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


def _up_v5(conn: Connection) -> None:
    """Alerts about the runtime (drift, the policy file, SLO breaches) were written to workspace
    ``default``; they concern every workspace's work and move to the runtime's workspace."""
    _move_v5(conn, "default", "_runtime")


def _down_v5(conn: Connection) -> None:
    """Back to ``default`` (an older node running meanwhile may have opened a condition there
    again: that alert's moved twin stays)."""
    _move_v5(conn, "_runtime", "default")


_V6_OLD_CLAIM_INDEX = "CREATE INDEX ix_missions_claim ON missions (state, lane, not_before)"
_V6_QUEUED_INDEX = "CREATE INDEX ix_missions_queued ON missions (lane, id) WHERE state = 'queued'"


def _up_v6(conn: Connection) -> None:
    """Claims take a lane's queued missions in id order: an index of exactly those, in that
    order, lets a claim read the first few instead of sorting the lane's whole backlog."""
    conn.exec_driver_sql("DROP INDEX ix_missions_claim")
    conn.exec_driver_sql(_V6_QUEUED_INDEX)


def _down_v6(conn: Connection) -> None:
    conn.exec_driver_sql("DROP INDEX ix_missions_queued")
    conn.exec_driver_sql(_V6_OLD_CLAIM_INDEX)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "receipts and ledger", _up_v1, _down_v1),
    Migration(2, "turns, missions, sessions, approvals, alerts", _up_v2, _down_v2),
    Migration(3, "work: turn and mission details, lane flags, mission events", _up_v3, _down_v3),
    Migration(
        4,
        "supervision: decisions, releases, approvals, alerts, outbox, attestations",
        _up_v4,
        _down_v4,
    ),
    Migration(5, "alerts about the runtime move to its workspace", _up_v5, _down_v5, False),
    Migration(6, "claims read a lane's queued missions in order", _up_v6, _down_v6),
)
