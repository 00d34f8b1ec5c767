"""Step 7: signed ledger checkpoints; the ledger's rows become append-only."""

from __future__ import annotations

from sqlalchemy import Column, Connection, Index, Integer, MetaData, String, Table


def _tables_v7(metadata: MetaData) -> list[Table]:
    checkpoints = Table(
        "ledger_checkpoints",
        metadata,
        Column("hash", String, primary_key=True),
        Column("seq", Integer, nullable=False),
        Column("head", String, nullable=False),
        Column("at", String, nullable=False),
        Column("node", String, nullable=False),
        Column("prev", String, nullable=False),
        Column("key_id", String, nullable=False),
        Column("signature", String, nullable=False),
        Index("ix_ledger_checkpoints_seq", "seq"),
    )
    return [checkpoints]


_V7_GUARDED = ("ledger", "ledger_checkpoints")
"""The tables whose rows, once written, are never changed or removed."""
_V7_TRIGGERS_SQLITE = (
    *(
        f"CREATE TRIGGER qd_{table}_no_{verb.lower()} BEFORE {verb} ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: {verb} refused'); END"
        for table in _V7_GUARDED
        for verb in ("UPDATE", "DELETE")
    ),
    "CREATE TRIGGER qd_ledger_head_forward BEFORE UPDATE ON ledger_head "
    "WHEN NEW.seq <= OLD.seq OR NEW.id IS NOT OLD.id "
    "BEGIN SELECT RAISE(ABORT, 'the ledger head only moves forward: UPDATE refused'); END",
    "CREATE TRIGGER qd_ledger_head_no_delete BEFORE DELETE ON ledger_head "
    "BEGIN SELECT RAISE(ABORT, 'the ledger head only moves forward: DELETE refused'); END",
)
_V7_TRIGGERS_POSTGRES = (
    "CREATE FUNCTION qd_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "BEGIN RAISE EXCEPTION USING ERRCODE = '23514', "
    "MESSAGE = TG_TABLE_NAME || ' is append-only: ' || TG_OP || ' refused'; END $$",
    *(
        statement
        for table in _V7_GUARDED
        for statement in (
            f"CREATE TRIGGER qd_{table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION qd_append_only()",
            f"CREATE TRIGGER qd_{table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION qd_append_only()",
        )
    ),
    "CREATE FUNCTION qd_ledger_head_forward() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "BEGIN IF TG_OP <> 'UPDATE' OR NEW.seq <= OLD.seq OR NEW.id <> OLD.id THEN "
    "RAISE EXCEPTION USING ERRCODE = '23514', "
    "MESSAGE = 'the ledger head only moves forward: ' || TG_OP || ' refused'; "
    "END IF; RETURN NEW; END $$",
    "CREATE TRIGGER qd_ledger_head_forward BEFORE UPDATE OR DELETE ON ledger_head "
    "FOR EACH ROW EXECUTE FUNCTION qd_ledger_head_forward()",
    "CREATE TRIGGER qd_ledger_head_no_truncate BEFORE TRUNCATE ON ledger_head "
    "FOR EACH STATEMENT EXECUTE FUNCTION qd_ledger_head_forward()",
)
"""The same refusals in PL/pgSQL (raised as check violations); TRUNCATE, which skips row
triggers, is refused by a statement trigger."""


def up(conn: Connection) -> None:
    """Signed checkpoints get their table, and the ledger's rows (its entries, its
    checkpoints, its head moving backwards) can no longer be changed or removed in place."""
    metadata = MetaData()
    _tables_v7(metadata)
    metadata.create_all(conn)
    triggers = _V7_TRIGGERS_POSTGRES if conn.dialect.name == "postgresql" else _V7_TRIGGERS_SQLITE
    for statement in triggers:
        conn.exec_driver_sql(statement)


def down(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        for table in _V7_GUARDED:
            conn.exec_driver_sql(f"DROP TRIGGER qd_{table}_append_only ON {table}")
            conn.exec_driver_sql(f"DROP TRIGGER qd_{table}_no_truncate ON {table}")
        conn.exec_driver_sql("DROP TRIGGER qd_ledger_head_forward ON ledger_head")
        conn.exec_driver_sql("DROP TRIGGER qd_ledger_head_no_truncate ON ledger_head")
        conn.exec_driver_sql("DROP FUNCTION qd_ledger_head_forward()")
        conn.exec_driver_sql("DROP FUNCTION qd_append_only()")
    else:
        for table in _V7_GUARDED:
            conn.exec_driver_sql(f"DROP TRIGGER qd_{table}_no_update")
            conn.exec_driver_sql(f"DROP TRIGGER qd_{table}_no_delete")
        conn.exec_driver_sql("DROP TRIGGER qd_ledger_head_forward")
        conn.exec_driver_sql("DROP TRIGGER qd_ledger_head_no_delete")
    metadata = MetaData()
    _tables_v7(metadata)
    metadata.drop_all(conn)
