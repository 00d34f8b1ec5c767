"""Schema migrations on real databases, SQLite files and PostgreSQL: up from anywhere, down and
up again with data surviving, the head schema equal to the SQLModel tables, refusals, nodes
migrating one new database at once, and the ``db`` commands.

Nothing here is written for one particular head version: the schema of every version is taken
from a database migrated up to it, and going down must give back exactly that schema. Every
test that touches a database runs once per backend (the ``database`` fixture: a fresh database
per test); the schema of each version is built once per backend.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import closing, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Connection, create_engine, inspect, text
from sqlalchemy.engine import Dialect
from sqlalchemy.engine.url import make_url
from sqlmodel import SQLModel

from conftest import REPO, RawConnection, Store, envelope, is_postgres, line, quarterdeck, run
from quarterdeck.domain.ledger import GENESIS_HASH
from quarterdeck.domain.states import Kind
from quarterdeck.runtime.ingest import Ingestor
from quarterdeck.store.database import DB_FILENAME, Database, DatabaseError, open_database
from quarterdeck.store.items import create_item, transition
from quarterdeck.store.ledger import verify_ledger
from quarterdeck.store.migrations import (
    HEAD_VERSION,
    MIGRATIONS,
    MigrationError,
    current_version,
    migrate,
)
from quarterdeck.store.tables import STATEFUL_TABLES, table_of
from quarterdeck.store.writer import Writer

VERSIONS = [0, *(m.version for m in MIGRATIONS)]
LOWER_VERSIONS = VERSIONS[:-1]
V1_TABLES = {"receipts", "receipt_counters", "ledger", "ledger_head"}
V2_TABLES = {table_of(model).name for model in STATEFUL_TABLES.values()}

Schema = dict[str, Any]
"""``{"tables": {name: ((column, type, notnull, pk), ...)}, "indexes": {(name, table, sql)},
"triggers": {(name, table)}, "functions": {name}}``."""


# --- helpers -----------------------------------------------------------------------------------


def sync_url(url: str | Path) -> str:
    """The synchronous SQLAlchemy URL of a database under test (pysqlite or psycopg)."""
    if is_postgres(str(url)):
        return make_url(str(url)).set(drivername="postgresql+psycopg").render_as_string(False)
    return f"sqlite:///{url}"


@contextmanager
def sync_conn(url: str | Path) -> Iterator[Connection]:
    """A plain SQLAlchemy connection in one transaction (committed on success)."""
    if not is_postgres(str(url)):
        Path(url).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(sync_url(url))
    try:
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()


def _normalized(sql: str) -> str:
    return re.sub(r"\s+", " ", sql).strip().lower()


def schema_of(url: str | Path) -> Schema:
    """The schema as the database reports it: every table's columns, every named index (not
    the primary keys' own), every trigger and (PostgreSQL) trigger function."""
    if is_postgres(str(url)):
        return _postgres_schema(str(url))
    with closing(sqlite3.connect(url)) as conn:
        names = [
            name
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        tables = {
            name: tuple(
                (column, kind, bool(notnull), pk)
                for _, column, kind, notnull, _, pk in conn.execute(f"PRAGMA table_info({name})")
            )
            for name in names
        }
        indexes = {
            (name, table, _normalized(sql))
            for name, table, sql in conn.execute(
                "SELECT name, tbl_name, sql FROM sqlite_master"
                " WHERE type = 'index' AND name NOT LIKE 'sqlite_%'"
            )
        }
        triggers = set(
            conn.execute("SELECT name, tbl_name FROM sqlite_master WHERE type = 'trigger'")
        )
    return {"tables": tables, "indexes": indexes, "triggers": triggers, "functions": set()}


def _postgres_schema(url: str) -> Schema:
    raw = RawConnection(url)
    try:
        names = [
            name
            for (name,) in raw.execute(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
            )
        ]
        keys = {
            (table, column): position
            for table, column, position in raw.execute(
                "SELECT k.table_name, k.column_name, k.ordinal_position"
                " FROM information_schema.key_column_usage k"
                " JOIN information_schema.table_constraints c"
                " ON c.constraint_name = k.constraint_name AND c.table_name = k.table_name"
                " AND c.table_schema = k.table_schema"
                " WHERE c.constraint_type = 'PRIMARY KEY' AND k.table_schema = 'public'"
            )
        }
        tables = {
            name: tuple(
                (column, kind, nullable == "NO", keys.get((name, column), 0))
                for column, kind, nullable in raw.execute(
                    "SELECT column_name, data_type, is_nullable FROM information_schema.columns"
                    " WHERE table_schema = 'public' AND table_name = ? ORDER BY ordinal_position",
                    name,
                )
            )
            for name in names
        }
        indexes = {
            (name, table, _normalized(sql))
            for name, table, sql in raw.execute(
                "SELECT indexname, tablename, indexdef FROM pg_indexes"
                " WHERE schemaname = 'public' AND indexname NOT IN"
                " (SELECT conname FROM pg_constraint WHERE contype = 'p')"
            )
        }
        triggers = set(
            raw.execute(
                "SELECT trigger_name, event_object_table FROM information_schema.triggers"
                " WHERE trigger_schema = 'public'"
            )
        )
        functions = {
            name
            for (name,) in raw.execute(
                "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
                " WHERE n.nspname = 'public'"
            )
        }
    finally:
        raw.close()
    return {"tables": tables, "indexes": indexes, "triggers": triggers, "functions": functions}


def tables_of(url: str | Path) -> set[str]:
    return set(schema_of(url)["tables"])


def columns_of(schema: Schema) -> dict[str, list[str]]:
    return {table: [c[0] for c in columns] for table, columns in schema["tables"].items()}


def snapshot(url: str | Path, columns: dict[str, list[str]]) -> dict[str, list[tuple[Any, ...]]]:
    """The rows of the given tables, only the given columns, sorted (SQLite: text as raw
    bytes)."""
    if is_postgres(str(url)):
        raw = RawConnection(url)
        try:
            return {
                table: sorted(raw.execute(f"SELECT {', '.join(names)} FROM {table}"), key=repr)
                for table, names in sorted(columns.items())
            }
        finally:
            raw.close()
    with closing(sqlite3.connect(url)) as conn:
        conn.text_factory = bytes
        return {
            table: sorted(
                conn.execute(f"SELECT {', '.join(names)} FROM {table}").fetchall(), key=repr
            )
            for table, names in sorted(columns.items())
        }


def data_columns(schema: Schema) -> dict[str, list[str]]:
    """The columns of every table but ``schema_migrations`` (whose times differ on re-apply)."""
    return {t: c for t, c in columns_of(schema).items() if t != "schema_migrations"}


def kept_columns(lower: Schema, higher: Schema) -> dict[str, list[str]]:
    """The data columns of ``lower`` that ``higher`` still has (what the steps between them do
    not drop, such as step 12's ``outbox.url``)."""
    theirs = columns_of(higher)
    return {
        table: [column for column in columns if column in theirs.get(table, [])]
        for table, columns in data_columns(lower).items()
    }


def migration_rows(url: str | Path) -> list[tuple[Any, ...]]:
    return [
        tuple(row.values())
        for row in Store(url).rows(
            "SELECT version, name, applied_at FROM schema_migrations ORDER BY version"
        )
    ]


def backend(url: str) -> str:
    return "postgresql" if is_postgres(url) else "sqlite"


@pytest.fixture(scope="module")
def schema_cache() -> dict[str, dict[int, Schema]]:
    """The schemas of every version, per backend, built once for the module."""
    return {}


@pytest.fixture
def schemas(
    database: str,
    schema_cache: dict[str, dict[int, Schema]],
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> dict[int, Schema]:
    """The schema of every version on the backend under test, from an empty database (not the
    test's own) migrated up one step at a time."""
    if backend(database) not in schema_cache:
        if is_postgres(database):
            url = str(request.getfixturevalue("pg_cluster").create_database())
        else:
            url = str(tmp_path_factory.mktemp("schemas") / "quarterdeck.db")
        found: dict[int, Schema] = {}
        for version in VERSIONS:
            with sync_conn(url) as conn:
                assert migrate(conn, version) == ([version] if version else [])
            found[version] = schema_of(url)
        schema_cache[backend(database)] = found
    return schema_cache[backend(database)]


TURN_EXTRAS = {"objective": "write the report", "input": '{"n":1}', "budget": '{"usd":2}'}
MISSION_EXTRAS = {"role": "primary", "number": 1, "not_before": "2030-01-01T00:00:00.000000Z"}


async def add_data(db: Database, schema: Schema, tag: str) -> None:
    """Write whatever data ``schema`` can hold: receipts (ingest), items of every kind (with
    the extra item columns it has), and rows of the other tables it has."""
    tables = columns_of(schema)
    async with Writer(db) as writer:
        if "receipts" in tables:
            ingestor = Ingestor(writer)
            lines = [line(envelope(i, workspace=f"ws-{tag}")) for i in range(3)]
            results = await ingestor.ingest([*lines, b"{broken " + tag.encode()])
            assert [r.status for r in results] == ["accepted"] * 3 + ["rejected"]
            assert (await ingestor.ingest(lines[:1]))[0].status == "duplicate"
        if set(tables) >= V2_TABLES:
            for kind in Kind:
                extras = {"turn": TURN_EXTRAS, "mission": MISSION_EXTRAS}.get(str(kind), {})
                fields = {k: v for k, v in extras.items() if k in tables[f"{kind}s"]}
                item = await writer.submit(
                    partial(
                        create_item, kind=kind, workspace=f"ws-{tag}", actor=tag,
                        data={"tag": tag}, fields=fields,
                    )
                )  # fmt: skip
                if kind in (Kind.TURN, Kind.ALERT):
                    await writer.submit(
                        partial(
                            transition,
                            kind=kind,
                            item_id=item.id,
                            to_state="leased" if kind is Kind.TURN else "acked",
                            workspace=item.workspace,
                            actor=tag,
                            expected_version=1,
                            expected_attempt=0,
                            bump_attempt=kind is Kind.TURN,
                        )
                    )

    def others(conn: Connection) -> None:
        if "lane_flags" in tables:
            conn.execute(
                text(
                    "INSERT INTO lane_flags VALUES"
                    " (:lane, 1, 0, 1, 1, '2030-01-01T00:00:00.000000Z')"
                ),
                {"lane": f"lane-{tag}"},
            )
        if "mission_events" in tables:
            conn.execute(
                text(
                    "INSERT INTO mission_events (mission_id, turn_id, workspace, at, type, data)"
                    " VALUES ('m', 't', :ws, '2030-01-01T00:00:00.000000Z', 'log', '{}')"
                ),
                {"ws": f"ws-{tag}"},
            )

    await db.run_write(others)


async def assert_ledger_ok(db: Database) -> int:
    result = await verify_ledger(db)
    assert result.ok, result
    return result.entries


# --- the versions ------------------------------------------------------------------------------


def test_the_versions_this_build_knows(schemas: dict[int, Schema]):
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert HEAD_VERSION == MIGRATIONS[-1].version >= 2
    assert len({m.name for m in MIGRATIONS}) == len(MIGRATIONS)
    assert set(schemas[0]["tables"]) == {"schema_migrations"}
    assert schemas[0]["indexes"] == set()
    assert set(schemas[1]["tables"]) >= V1_TABLES
    assert set(schemas[2]["tables"]) >= V1_TABLES | V2_TABLES
    changes_schema = {m.version: m.changes_schema for m in MIGRATIONS}
    for lower, higher in itertools.pairwise(VERSIONS):
        if changes_schema[higher]:
            assert schemas[lower] != schemas[higher], f"migration {higher} changes nothing"
        else:
            assert schemas[lower] == schemas[higher], f"data step {higher} changes the schema"
        assert set(schemas[lower]["tables"]) <= set(schemas[higher]["tables"])


# --- upgrades ----------------------------------------------------------------------------------


def test_empty_database_to_head(database: str, schemas: dict[int, Schema]):
    async def go() -> None:
        db = await open_database(database, upgrade=False)
        try:
            assert await db.schema_version() == 0
            assert tables_of(database) == set()
            assert await db.migrate() == list(range(1, HEAD_VERSION + 1))
            assert await db.schema_version() == HEAD_VERSION
            assert await db.migrate() == []
            assert await db.migrate(HEAD_VERSION) == []
            assert await assert_ledger_ok(db) == 0
        finally:
            await db.dispose()

    run(go())
    assert schema_of(database) == schemas[HEAD_VERSION]
    head = Store(database).rows("SELECT id, seq, hash FROM ledger_head")
    assert head == [{"id": 1, "seq": 0, "hash": GENESIS_HASH}]
    assert [(v, n) for v, n, _ in migration_rows(database)] == [
        (m.version, m.name) for m in MIGRATIONS
    ]


def test_open_database_creates_at_head(tmp_path: Path, database: str, schemas: dict[int, Schema]):
    """A new database is created at head (SQLite: with the folders of its file)."""
    path = database if is_postgres(database) else str(tmp_path / "deep" / "er" / DB_FILENAME)

    async def go() -> int:
        db = await open_database(path)
        try:
            return await db.schema_version()
        finally:
            await db.dispose()

    assert run(go()) == HEAD_VERSION
    assert schema_of(path) == schemas[HEAD_VERSION]


@pytest.mark.parametrize("start", LOWER_VERSIONS)
def test_every_earlier_version_to_head(database: str, schemas: dict[int, Schema], start: int):
    async def at_start() -> None:
        db = await open_database(database, upgrade=False)
        try:
            assert await db.migrate(start) == list(range(1, start + 1))
            assert await db.schema_version() == start
            await add_data(db, schemas[start], "old")
        finally:
            await db.dispose()

    run(at_start())
    assert schema_of(database) == schemas[start]
    kept = kept_columns(schemas[start], schemas[HEAD_VERSION])
    before = snapshot(database, kept)

    async def upgrade() -> None:
        db = await open_database(database)  # upgrades on open
        try:
            assert await db.schema_version() == HEAD_VERSION
            assert snapshot(database, kept) == before, "rows changed by the upgrade"
            await assert_ledger_ok(db)
            await add_data(db, schemas[HEAD_VERSION], "new")  # the new schema takes new data
            await assert_ledger_ok(db)
        finally:
            await db.dispose()

    run(upgrade())
    assert schema_of(database) == schemas[HEAD_VERSION]
    assert [v for v, _, _ in migration_rows(database)] == list(range(1, HEAD_VERSION + 1))
    assert_schema_matches_models(database)


def test_migrate_walks_every_path(database: str, schemas: dict[int, Schema]):
    """Up and down between every pair of versions, in one transaction each."""
    with sync_conn(database) as conn:
        assert current_version(conn) == 0
    path = [0]
    for here, there in itertools.permutations(VERSIONS, 2):
        path += [here, there]
    for here, there in itertools.pairwise(path):
        with sync_conn(database) as conn:
            steps = migrate(conn, there)
            if there >= here:
                assert steps == list(range(here + 1, there + 1)), (here, there)
            else:
                assert steps == list(range(here, there, -1)), (here, there)
            assert current_version(conn) == there
        assert schema_of(database) == schemas[there], (here, there)


# --- down and up again, with data --------------------------------------------------------------


@pytest.mark.parametrize("lower", LOWER_VERSIONS)
def test_downgrade_and_upgrade_keep_data(database: str, schemas: dict[int, Schema], lower: int):
    """Down to ``lower`` gives back exactly that version's schema; the rows of what it keeps
    (tables and columns) are unchanged by going down and up again; data written while at the
    lower version survives the way back up."""
    head = schemas[HEAD_VERSION]
    kept = kept_columns(schemas[lower], head)

    async def go() -> None:
        db = await open_database(database)
        try:
            await add_data(db, head, "head")
            await assert_ledger_ok(db)
            before = snapshot(database, kept)
            applied = migration_rows(database)

            assert await db.migrate(lower) == list(range(HEAD_VERSION, lower, -1))
            assert await db.schema_version() == lower
            assert schema_of(database) == schemas[lower]
            assert snapshot(database, kept) == before
            assert migration_rows(database) == applied[:lower]

            await add_data(db, schemas[lower], "low")
            at_lower = snapshot(database, kept)
            if lower >= 1:
                assert len(at_lower["receipts"]) > len(before["receipts"])
                assert await assert_ledger_ok(db) > 0

            assert await db.migrate() == list(range(lower + 1, HEAD_VERSION + 1))
            assert await db.schema_version() == HEAD_VERSION
            assert schema_of(database) == head
            assert snapshot(database, kept) == at_lower
            assert migration_rows(database)[:lower] == applied[:lower]

            await add_data(db, head, "again")
            await assert_ledger_ok(db)
        finally:
            await db.dispose()

    run(go())
    assert_schema_matches_models(database)


def test_downgrade_one_step_at_a_time_then_back(database: str, schemas: dict[int, Schema]):
    """Each step keeps the rows of what it does not drop, down and up."""

    async def go() -> None:
        db = await open_database(database)
        try:
            for version in range(HEAD_VERSION, 0, -1):
                await add_data(db, schemas[version], f"down{version}")
                kept = kept_columns(schemas[version - 1], schemas[version])
                before = snapshot(database, kept)
                assert await db.migrate(version - 1) == [version]
                assert schema_of(database) == schemas[version - 1]
                assert snapshot(database, kept) == before
            assert await db.schema_version() == 0
            for version in range(1, HEAD_VERSION + 1):
                kept = kept_columns(schemas[version - 1], schemas[version])
                before = snapshot(database, kept)
                assert await db.migrate(version) == [version]
                assert schema_of(database) == schemas[version]
                assert snapshot(database, kept) == before
                await assert_ledger_ok(db)
                await add_data(db, schemas[version], f"up{version}")
                await assert_ledger_ok(db)
        finally:
            await db.dispose()

    run(go())


def test_step_5_moves_the_runtimes_alerts_to_its_workspace_and_back(database: str):
    """Alerts about the runtime (drift, policy file, SLO) leave workspace ``default`` for the
    runtime's own; a tenant's alerts stay. Either way, an unresolved alert whose condition is
    unresolved where it would go stays put (one unresolved alert per condition there)."""

    def alert(conn: Connection, alert_id: str, workspace: str, kind: str, state: str) -> None:
        conn.execute(
            text(
                "INSERT INTO alerts (id, workspace, state, version, attempt, created_at, "
                "updated_at, data, alert_type, severity, dedupe, message) VALUES (:id, :w, "
                ":state, 1, 0, '2030-01-01T00:00:00.000000Z', '2030-01-01T00:00:00.000000Z', "
                "'{}', :kind, 'warn', :dedupe, 'm')"
            ),
            {"id": alert_id, "w": workspace, "state": state, "kind": kind, "dedupe": f"d-{kind}"},
        )

    def placed(conn: Connection) -> dict[str, str]:
        rows = conn.execute(text("SELECT id, workspace FROM alerts ORDER BY id")).all()
        return {str(r.id): str(r.workspace) for r in rows}

    with sync_conn(database) as conn:
        migrate(conn, 4)
        alert(conn, "a-drift", "default", "attested_file", "open")
        alert(conn, "a-policy", "default", "policy_invalid", "resolved")
        alert(conn, "a-slo", "default", "slo_breach", "acked")
        alert(conn, "a-late", "default", "out_of_sequence", "open")
        alert(conn, "a-tenant", "acme", "out_of_sequence", "open")
    with sync_conn(database) as conn:
        assert migrate(conn, 5) == [5]
        assert placed(conn) == {
            "a-drift": "_runtime", "a-policy": "_runtime", "a-slo": "_runtime",
            "a-late": "default", "a-tenant": "acme",
        }  # fmt: skip
        # An older node, still up during the rolling upgrade, opens the SLO condition again.
        alert(conn, "b-slo", "default", "slo_breach", "open")
    with sync_conn(database) as conn:
        assert migrate(conn, 4) == [5]
        assert placed(conn) == {
            "a-drift": "default", "a-policy": "default", "a-slo": "_runtime",
            "a-late": "default", "a-tenant": "acme", "b-slo": "default",
        }  # fmt: skip
    with sync_conn(database) as conn:  # and up again: the twin left in default stays there
        assert migrate(conn, 5) == [5]
        assert placed(conn) == {
            "a-drift": "_runtime", "a-policy": "_runtime", "a-slo": "_runtime",
            "a-late": "default", "a-tenant": "acme", "b-slo": "default",
        }  # fmt: skip


# --- the head schema is the models' schema -----------------------------------------------------


_SAME_TYPES = {"DOUBLE PRECISION": "FLOAT"}
"""PostgreSQL's name of what a plain ``FLOAT`` (SQLAlchemy's ``Float``) creates."""


def _type_name(column_type: Any, dialect: Dialect) -> str:
    name = str(column_type.compile(dialect=dialect))
    return _SAME_TYPES.get(name, name)


def assert_schema_matches_models(url: str | Path) -> None:
    """The database at ``url`` has the tables of ``SQLModel.metadata``: same tables, column
    names, types, nullability and primary keys; same index names, columns and uniqueness."""
    metadata = SQLModel.metadata
    engine = create_engine(sync_url(url))
    dialect = engine.dialect
    try:
        with engine.connect() as conn:
            inspector = inspect(conn)
            assert set(inspector.get_table_names()) == set(metadata.tables)
            for name, table in metadata.tables.items():
                reflected = {c["name"]: c for c in inspector.get_columns(name)}
                assert set(reflected) == {c.name for c in table.columns}, name
                for column in table.columns:
                    found = reflected[column.name]
                    where = f"{name}.{column.name}"
                    assert found["nullable"] == column.nullable, where
                    assert _type_name(found["type"], dialect) == _type_name(column.type, dialect), (
                        where
                    )
                pk = inspector.get_pk_constraint(name)["constrained_columns"]
                assert pk == [c.name for c in table.primary_key.columns], name
                # Indexes on expressions (not every dialect reflects them) are compared by
                # their SQL in test_models_create_the_schema_the_migrations_build.
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", "Skipped unsupported reflection")
                    found_indexes = inspector.get_indexes(name)
                indexes = {
                    i["name"]: (tuple(i["column_names"]), bool(i["unique"]))
                    for i in found_indexes
                    if None not in i["column_names"]
                }
                declared = {
                    i.name: (tuple(c.name for c in i.columns), bool(i.unique))
                    for i in table.indexes
                    if all(isinstance(e, Column) for e in i.expressions)
                }
                assert indexes == declared, name
                assert inspector.get_foreign_keys(name) == []
    finally:
        engine.dispose()


def test_head_schema_matches_the_sqlmodel_tables(database: str):
    with sync_conn(database) as conn:
        migrate(conn)
    assert_schema_matches_models(database)


def test_models_create_the_schema_the_migrations_build(
    tmp_path: Path, database: str, schemas: dict[int, Schema]
):
    """``create_all`` of the models and the migrations give the same columns (in any order)
    and the same indexes, partial-index conditions included."""
    created = database if is_postgres(database) else str(tmp_path / "created.db")
    engine = create_engine(sync_url(created))
    SQLModel.metadata.create_all(engine)
    engine.dispose()
    ours, theirs = schemas[HEAD_VERSION], schema_of(created)
    assert set(ours["tables"]) == set(theirs["tables"])
    for table, columns in ours["tables"].items():
        assert sorted(columns) == sorted(theirs["tables"][table]), table
    if is_postgres(database):  # PostgreSQL reports every index in one canonical form
        assert ours["indexes"] == theirs["indexes"]
        return

    def index_parts(indexes: set[tuple[str, str, str]]) -> set[tuple[str, str, str, str]]:
        parts = set()
        for name, table, sql in indexes:
            match = re.fullmatch(
                r"create (unique )?index (\w+) on (\w+) ?\(((?:[^()]|\([^()]*\))*)\)(.*)", sql
            )
            assert match, sql
            unique, _, _, columns, where = match.groups()
            parts.add((name, table, f"{unique or ''}{columns.replace(' ', '')}", where.strip()))
        return parts

    assert index_parts(ours["indexes"]) == index_parts(theirs["indexes"])


# --- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [-1, HEAD_VERSION + 1, 99, 10**9])
def test_unknown_target_version_raises(database: str, schemas: dict[int, Schema], target: int):
    with sync_conn(database) as conn:
        migrate(conn, 1)
    with sync_conn(database) as conn, pytest.raises(MigrationError, match="unknown schema version"):
        migrate(conn, target)

    async def via_database() -> int:
        db = await open_database(database, upgrade=False)
        try:
            with pytest.raises(MigrationError):
                await db.migrate(target)
            return await db.schema_version()
        finally:
            await db.dispose()

    assert run(via_database()) == 1
    assert schema_of(database) == schemas[1]


@pytest.mark.parametrize("upgrade", [True, False])
def test_newer_database_is_refused(database: str, schemas: dict[int, Schema], upgrade: bool):
    async def make() -> None:
        db = await open_database(database)
        await add_data(db, schemas[HEAD_VERSION], "x")
        await db.dispose()

    run(make())
    Store(database).execute(
        "INSERT INTO schema_migrations VALUES (?, 'from the future', '2099-01-01T00:00:00Z')",
        HEAD_VERSION + 1,
    )
    everything = columns_of(schema_of(database))
    before = snapshot(database, everything)

    async def reopen() -> None:
        await open_database(database, upgrade=upgrade)

    with pytest.raises(DatabaseError, match="newer than this build"):
        run(reopen())
    with sync_conn(database) as conn, pytest.raises(MigrationError, match="newer"):
        migrate(conn, HEAD_VERSION)
    with sync_conn(database) as conn, pytest.raises(MigrationError, match="newer"):
        migrate(conn, 0)
    assert snapshot(database, everything) == before


# --- the command line --------------------------------------------------------------------------


def _json(result: Any) -> Any:
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout)


def test_cli_db_commands(tmp_path: Path, database: str, schemas: dict[int, Schema]):
    state = tmp_path / "state"
    all_steps = list(range(1, HEAD_VERSION + 1))

    def cli(*args: str, stdin: bytes | None = None) -> Any:
        return quarterdeck("--db", database, *args, state_dir=state, stdin=stdin)

    assert _json(cli("db", "version")) == {
        "version": 0,
        "head": HEAD_VERSION,
    }
    assert _json(cli("db", "upgrade")) == {
        "from": 0,
        "to": HEAD_VERSION,
        "steps": all_steps,
    }
    submitted = cli(
        "submit",
        "-",
        stdin=b"\n".join(line(envelope(i)) for i in range(3)) + b"\n",
    )
    assert submitted.returncode == 0, submitted.stderr.decode()
    assert _json(cli("db", "version"))["version"] == HEAD_VERSION

    assert _json(cli("db", "downgrade", "--to", "1")) == {
        "from": HEAD_VERSION,
        "to": 1,
        "steps": all_steps[:0:-1],
    }
    assert _json(cli("db", "version")) == {
        "version": 1,
        "head": HEAD_VERSION,
    }
    assert schema_of(database) == schemas[1]

    # Refused: each exits 2 with one line on stderr and leaves the version where it was.
    for args, message in [
        (("db", "downgrade", "--to", "2"), b"above the current version"),
        (("db", "downgrade"), b"--to"),
        (("db", "upgrade", "--to", "99"), b"unknown schema version 99"),
        (("db", "upgrade", "--to", "-1"), b"expected a number >= 0"),
        (("db", "sideways"), b"invalid choice"),
    ]:
        refused = cli(*args)
        assert refused.returncode == 2, (args, refused)
        assert message in refused.stderr, (args, refused.stderr)
        assert refused.stderr.count(b"\n") == 1, refused.stderr
    assert _json(cli("db", "version"))["version"] == 1

    assert _json(cli("db", "upgrade")) == {
        "from": 1,
        "to": HEAD_VERSION,
        "steps": all_steps[1:],
    }
    assert _json(cli("db", "upgrade")) == {
        "from": HEAD_VERSION,
        "to": HEAD_VERSION,
        "steps": [],
    }
    assert schema_of(database) == schemas[HEAD_VERSION]
    assert _json(cli("ledger", "verify", "--json"))["ok"] is True
    listed = cli("ls", "receipts", "--json", "-w", "acme")
    assert listed.returncode == 0, listed.stderr.decode()
    assert len(listed.stdout.splitlines()) == 3


def test_cli_refuses_a_newer_database(tmp_path: Path, database: str):
    state = tmp_path / "state"
    upgraded = quarterdeck("--db", database, "db", "upgrade", state_dir=state)
    assert _json(upgraded)["to"] == HEAD_VERSION
    Store(database).execute("INSERT INTO schema_migrations VALUES (99, 'future', 'then')")
    for args in (("status",), ("db", "version"), ("db", "downgrade", "--to", "0")):
        refused = quarterdeck("--db", database, *args, state_dir=state)
        assert refused.returncode == 2, (args, refused)
        assert b"newer than this build" in refused.stderr, refused.stderr


# --- nodes migrating one new database at once --------------------------------------------------

MIGRATING_CHILD = """
import asyncio, os, sys, time
from pathlib import Path
from quarterdeck.store.database import open_database

url, ready, go = sys.argv[1:]
Path(ready).touch()
while not os.path.exists(go):
    time.sleep(0.001)


async def main():
    db = await open_database(url)  # migrates a new database to head
    try:
        print(await db.schema_version())
    finally:
        await db.dispose()


asyncio.run(main())
"""


def _assert_migrated_once(url: str, schemas: dict[int, Schema]) -> None:
    """At head, each step recorded exactly once, the head schema, an empty ledger that verifies."""
    assert [(v, n) for v, n, _ in migration_rows(url)] == [(m.version, m.name) for m in MIGRATIONS]
    assert schema_of(url) == schemas[HEAD_VERSION]
    assert Store(url).rows("SELECT id, seq FROM ledger_head") == [{"id": 1, "seq": 0}]


def test_concurrent_open_database_calls_migrate_once(database: str, schemas: dict[int, Schema]):
    """Several ``open_database`` calls on one new database at once (each with its own engines
    and connections): all of them succeed, and the steps run once."""

    async def go() -> list[int]:
        opened = await asyncio.gather(*(open_database(database) for _ in range(4)))
        try:
            return [await db.schema_version() for db in opened]
        finally:
            for db in opened:
                await db.dispose()

    assert run(go()) == [HEAD_VERSION] * 4
    _assert_migrated_once(database, schemas)


def test_processes_migrating_one_new_database_at_once_all_succeed(
    tmp_path: Path, database: str, schemas: dict[int, Schema]
):
    """Three processes (nodes starting together) open one new database at the same moment:
    every one of them comes up at head (on PostgreSQL they take turns on the migration's
    advisory lock; on SQLite on the write lock)."""
    script = tmp_path / "child.py"
    script.write_text(MIGRATING_CHILD)
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    names = ("a", "b", "c")
    procs = {
        name: subprocess.Popen(
            [sys.executable, str(script), database, str(tmp_path / f"{name}.ready"), str(go)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name in names
    }
    try:
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"{name}.ready").exists() for name in names):
            assert all(p.poll() is None for p in procs.values()), "a child died before starting"
            assert time.monotonic() < deadline, "the children did not start"
            time.sleep(0.01)
        go.touch()
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, f"{name}: {err.decode(errors='replace')[-3000:]}"
            assert out.decode().split() == [str(HEAD_VERSION)], (name, out, err)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    _assert_migrated_once(database, schemas)
