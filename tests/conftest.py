"""Shared test helpers: every test gets its own database (a SQLite file under pytest's
tmp_path, or a fresh PostgreSQL database on a throwaway local cluster)."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest
from tests.pgcluster import CURRENT, ENABLE_HINT, PgCluster, find_bin_dir

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent


def run(coro: Awaitable[T]) -> T:
    """Run a coroutine to completion on a fresh event loop."""

    async def wrapper() -> T:
        return await coro

    return asyncio.run(wrapper())


def envelope(i: int, workspace: str = "acme", **overrides: Any) -> dict[str, Any]:
    """A valid task envelope whose idempotency key is derived from ``i``."""
    value: dict[str, Any] = {
        "idempotency_key": f"key-{i}",
        "workspace": workspace,
        "kind": "task",
        "payload": {"objective": f"objective {i}", "input": {"n": i}},
    }
    value.update(overrides)
    return value


def line(value: Any) -> bytes:
    """One JSON line (no newline) as bytes."""
    return json.dumps(value).encode()


def quarterdeck(
    *args: str,
    state_dir: Path | None = None,
    stdin: bytes | None = None,
    check: bool = False,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run the real ``quarterdeck`` command line in a subprocess (with ``state_dir`` as its
    state directory and ``env`` on top of this process's environment)."""
    environment = {**os.environ, **(env or {})}
    if state_dir is not None:
        environment["QUARTERDECK_STATE_DIR"] = str(state_dir)
    environment.pop("QUARTERDECK_WORKSPACE", None)
    return subprocess.run(
        [sys.executable, "-m", "quarterdeck", *args],
        input=stdin,
        capture_output=True,
        env=environment,
        check=check,
        timeout=300,
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Path of a fresh SQLite database file for this test."""
    return tmp_path / "state" / "quarterdeck.db"


RunAsync = Callable[[Awaitable[T]], T]


# --- the database under test: SQLite, and PostgreSQL where its server binaries are installed ---


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 for the whole run (skipped, saying how to
    enable it, when the server binaries are missing)."""
    cluster = _started_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def own_pg_cluster() -> Iterator[PgCluster]:
    """A throwaway PostgreSQL cluster for one test alone (one that stops and starts its
    server); skipped like :func:`pg_cluster`."""
    cluster = _started_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


def _started_cluster() -> PgCluster:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        if os.environ.get("REQUIRE_POSTGRES_TESTS"):
            pytest.fail(ENABLE_HINT, pytrace=False)  # CI sets it: no silent skips there
        pytest.skip(ENABLE_HINT)
    return PgCluster(bin_dir).start()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a fresh, empty database: a SQLite file, or a new PostgreSQL database.

    Modules whose suites run on both backends use it with
    ``pytestmark = pytest.mark.usefixtures("database")``; their helpers find the URL through
    :func:`current_database`.
    """
    cluster: PgCluster | None = None
    if request.param == "sqlite":
        url = str(tmp_path / "state" / "quarterdeck.db")
    else:
        cluster = request.getfixturevalue("pg_cluster")
        url = cluster.create_database()
    CURRENT["url"] = url
    try:
        yield url
    finally:
        CURRENT.pop("url", None)
        if cluster is not None:
            cluster.drop_database(url)


def another_database(request: pytest.FixtureRequest, tmp_path: Path, name: str) -> str:
    """A further fresh database on the running test's backend (for tests that need several)."""
    url = CURRENT.get("url")
    if url and is_postgres(url):
        created: str = request.getfixturevalue("pg_cluster").create_database()
        return created
    return str(tmp_path / name)


def current_database(tmp_path: Path, name: str = "q.db") -> str:
    """The URL the running test's ``database`` fixture chose; a SQLite file under
    ``tmp_path`` for tests that do not use it."""
    return CURRENT.get("url") or str(tmp_path / name)


def is_postgres(url: str) -> bool:
    """Whether ``url`` names a PostgreSQL database."""
    return url.startswith(("postgresql", "postgres:"))


class Store:
    """Raw, read-only SQL on the database under test (``?`` placeholders, a fresh connection
    per call): SQLite through ``sqlite3``, PostgreSQL through psycopg."""

    def __init__(self, url: str | Path) -> None:
        self.url = str(url)
        self.path = Path(self.url) if not is_postgres(self.url) else None

    def rows(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        if self.path is None:
            import psycopg
            from psycopg.rows import dict_row

            with psycopg.connect(self.url, autocommit=True, row_factory=dict_row) as pg:
                return list(pg.execute(sql.replace("%", "%%").replace("?", "%s"), args).fetchall())  # type: ignore[arg-type]
        conn = sqlite3.connect(self.path, timeout=10)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute(sql, args).fetchall()]
        finally:
            conn.close()

    def execute(self, sql: str, *args: Any) -> None:
        """Run one statement that changes data (tests that damage or seed rows)."""
        if self.path is None:
            import psycopg

            with psycopg.connect(self.url, autocommit=True) as pg:
                pg.execute(sql.replace("%", "%%").replace("?", "%s"), args)  # type: ignore[arg-type]
            return
        conn = sqlite3.connect(self.path, timeout=10)
        try:
            with conn:
                conn.execute(sql, args)
        finally:
            conn.close()

    def one(self, sql: str, *args: Any) -> dict[str, Any] | None:
        found = self.rows(sql, *args)
        return found[0] if found else None

    def value(self, sql: str, *args: Any) -> Any:
        row = self.one(sql, *args)
        return None if row is None else next(iter(row.values()))

    def turn(self, turn_id: str) -> dict[str, Any]:
        row = self.one("SELECT * FROM turns WHERE id = ?", turn_id)
        assert row is not None, turn_id
        return row

    def missions(self, turn_id: str) -> list[dict[str, Any]]:
        return self.rows("SELECT * FROM missions WHERE turn_id = ? ORDER BY id", turn_id)

    def produced(self, receipt_id: str) -> tuple[str | None, str | None]:
        row = self.one("SELECT produced_type, produced_id FROM receipts WHERE id = ?", receipt_id)
        assert row is not None, receipt_id
        return row["produced_type"], row["produced_id"]

    def ledger(self, *, action: str | None = None, subject: str | None = None) -> list[dict]:
        sql = "SELECT seq, actor, action, subject_type, subject_id, from_state, to_state, payload "
        sql += "FROM ledger WHERE 1 = 1"
        args: list[Any] = []
        if action is not None:
            sql += " AND action = ?"
            args.append(action)
        if subject is not None:
            sql += " AND subject_id = ?"
            args.append(subject)
        entries = self.rows(sql + " ORDER BY seq", *args)
        for entry in entries:
            entry["payload"] = json.loads(entry["payload"])
        return entries

    def counter(self, name: str) -> int:
        return int(self.value("SELECT value FROM counters WHERE name = ?", name) or 0)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """Like ``database``, for module-scoped fixtures (a runtime that a module's tests share):
    the URL of a fresh, empty database per module and backend. (It does not set
    :func:`current_database`.)"""
    if request.param == "sqlite":
        return str(tmp_path_factory.mktemp("db") / "state" / "quarterdeck.db")
    url: str = request.getfixturevalue("pg_cluster").create_database()
    return url


LEDGER_TABLES = ("ledger", "ledger_head", "ledger_checkpoints")


def unguard_ledger(url: str | Path) -> list[str]:
    """Drop the triggers that keep the ledger's rows append-only (schema step 7), as an
    attacker holding the database file (or owning its tables) would before tampering with
    them; return their names."""
    raw = RawConnection(url)
    try:
        if is_postgres(str(url)):
            found = raw.execute(
                "SELECT tgname, tgrelid::regclass::text FROM pg_trigger WHERE NOT tgisinternal"
                " AND tgrelid::regclass::text IN (?, ?, ?)",
                *LEDGER_TABLES,
            )
            for name, table in found:
                raw.execute(f"DROP TRIGGER {name} ON {table}")
        else:
            found = raw.execute(
                "SELECT name, tbl_name FROM sqlite_master WHERE type = 'trigger'"
                " AND tbl_name IN (?, ?, ?)",
                *LEDGER_TABLES,
            )
            for name, _table in found:
                raw.execute(f"DROP TRIGGER {name}")
    finally:
        raw.close()
    assert found, "no ledger triggers to drop"
    return sorted(str(name) for name, _table in found)


class RawConnection:
    """One raw connection to the database under test, kept open (``?`` placeholders, every
    statement committed at once): ``sqlite3`` for a SQLite file, psycopg for PostgreSQL. For
    tests that query after every step and cannot afford a connection per query."""

    def __init__(self, url: str | Path) -> None:
        self.url = str(url)
        self._pg: Any = None
        self._sqlite: sqlite3.Connection | None = None
        if is_postgres(self.url):
            import psycopg

            self._pg = psycopg.connect(self.url, autocommit=True)
        else:
            self._sqlite = sqlite3.connect(self.url, isolation_level=None, timeout=10)

    def execute(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Run one statement; its rows as tuples (none for a statement that returns none)."""
        if self._pg is not None:
            cursor = self._pg.execute(sql.replace("%", "%%").replace("?", "%s"), args)
            return [tuple(row) for row in cursor.fetchall()] if cursor.description else []
        assert self._sqlite is not None
        return [tuple(row) for row in self._sqlite.execute(sql, args).fetchall()]

    def close(self) -> None:
        if self._pg is not None:
            self._pg.close()
        if self._sqlite is not None:
            self._sqlite.close()
