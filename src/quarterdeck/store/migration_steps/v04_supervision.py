"""Step 4: supervision: decisions, action releases, the approvals' and alerts' details, the
outbox and attestations, and the triggers that refuse a dispatch or a release without an
allowing decision."""

from __future__ import annotations

from sqlalchemy import Column, Connection, Float, Index, Integer, MetaData, String, Table, Text

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


def up(conn: Connection) -> None:
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


def down(conn: Connection) -> None:
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
