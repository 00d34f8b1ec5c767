"""Engines and connection settings. Engines are made here on request, never at import.

SQLite: WAL journal, ``busy_timeout``, ``synchronous=NORMAL``, foreign keys on; write
transactions begin ``IMMEDIATE`` (a deferred transaction that later writes can fail with
``SQLITE_BUSY_SNAPSHOT``, which ``busy_timeout`` does not retry); reads begin deferred on a
separate engine so readers never take the write lock.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine.url import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from quarterdeck.store.migrations import HEAD_VERSION, current_version, migrate

DB_FILENAME = "quarterdeck.db"
BUSY_TIMEOUT_MS = 10_000
"""Readers' busy timeout (they rarely wait at all under WAL)."""
LOCK_RETRIES = 60
"""How often a write that met another process's lock is tried again (backoff up to 1 s)."""
WRITER_BUSY_TIMEOUT_MS = 200
"""The in-loop writer's busy timeout: short, so the event loop never waits long for a lock."""


class DatabaseError(Exception):
    """The database cannot be opened or used as asked (bad URL, unknown schema version...)."""


def sqlite_url(state_dir: Path) -> str:
    """The SQLAlchemy URL of the default database file inside ``state_dir``."""
    return f"sqlite+aiosqlite:///{(state_dir / DB_FILENAME).resolve()}"


def normalize_url(url: str) -> str:
    """Map user-facing URLs (``sqlite:///f.db``, a bare path) onto async driver URLs.

    Raises:
        DatabaseError: the URL names a database this build does not support.
    """
    if "://" not in url:
        return f"sqlite+aiosqlite:///{Path(url).resolve()}"
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise DatabaseError(f"not a database URL: {url!r} ({exc})") from exc
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:") or "mode=memory" in str(parsed.query):
            raise DatabaseError(
                "in-memory SQLite is not supported: the writer and the readers share one file "
                "(give a file path)"
            )
        return parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    raise DatabaseError(
        f"unsupported database {parsed.get_backend_name()!r}: this build supports sqlite"
    )


def _sqlite_pragmas(dbapi_connection: Any, busy_timeout_ms: int) -> None:
    dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" event emits BEGIN itself
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_events(engine: Engine, begin: str, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        _sqlite_pragmas(dbapi_connection, busy_timeout_ms)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(begin)


T = TypeVar("T")


class Database:
    """One database: a writer that runs synchronous transaction functions, and async readers.

    On SQLite the writer runs each group commit inline on the event loop's thread through one
    pysqlite connection. A commit of a thousand receipts takes a few milliseconds; a writer
    thread (or aiosqlite, which is one) would add a hop per statement and, whenever the loop's
    thread is busy, stall on the GIL at every ``sqlite3_step`` (measured: 9 us/row idle, over
    200 us/row beside a busy loop). The writer's busy timeout is short so that a lock held by
    another process never freezes the loop; the writer task retries with backoff instead.
    Readers use aiosqlite on their own pool and never take the write lock.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        sync_url = parsed.set(drivername="sqlite+pysqlite")
        self._writer_engine = create_engine(
            sync_url, connect_args={"timeout": WRITER_BUSY_TIMEOUT_MS / 1000}
        )
        _sqlite_events(self._writer_engine, "BEGIN IMMEDIATE", WRITER_BUSY_TIMEOUT_MS)
        self._reader_sync_engine = create_engine(
            sync_url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
        )
        _sqlite_events(self._reader_sync_engine, "BEGIN", BUSY_TIMEOUT_MS)
        self.reader_engine = create_async_engine(
            url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000}
        )
        _sqlite_events(self.reader_engine.sync_engine, "BEGIN", BUSY_TIMEOUT_MS)

    async def run_write(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` inside one write transaction (``BEGIN IMMEDIATE``), committed on return.

        If ``fn`` raises, the transaction is rolled back and the exception propagates. If
        another process holds the write lock past the writer's short busy timeout, this
        raises ``OperationalError`` ("database is locked") and the caller retries later.
        """
        with self._writer_engine.begin() as conn:
            return fn(conn)

    @property
    def sqlite_path(self) -> str | None:
        """The database file, for SQLite."""
        if self.dialect != "sqlite":
            return None
        return make_url(self.url).database

    def run_read_sync(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in one read snapshot on a plain driver connection (call from a thread)."""
        with self._reader_sync_engine.connect() as conn, conn.begin():
            return fn(conn)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only snapshot transaction, rolled back at the end."""
        async with self.reader_engine.connect() as conn, conn.begin():
            yield conn

    async def schema_version(self) -> int:
        """The schema version recorded in the database."""
        async with self.read() as conn:
            return await conn.run_sync(current_version)

    async def migrate(self, target: int = HEAD_VERSION) -> list[int]:
        """Move the schema to ``target`` (default: the newest this build knows).

        Waits (up to about a minute) for a write lock held by another process, for example a
        second process migrating the same new database at the same moment.
        """
        for attempt in range(LOCK_RETRIES):
            try:
                return await self.run_write(lambda conn: migrate(conn, target))
            except OperationalError as exc:
                if "locked" not in str(exc) or attempt == LOCK_RETRIES - 1:
                    raise
                await asyncio.sleep(min(0.05 * 2**attempt, 1.0) * random.random())
        raise AssertionError("unreachable")

    async def dispose(self) -> None:
        """Close every pooled connection."""
        self._writer_engine.dispose()
        self._reader_sync_engine.dispose()
        await self.reader_engine.dispose()


async def open_database(url: str, *, upgrade: bool = True) -> Database:
    """Open (creating if needed) the database at ``url``.

    Args:
        url: a SQLAlchemy URL or a file path; ``sqlite:///`` URLs use aiosqlite for reads.
        upgrade: migrate the schema to the newest version this build knows.

    Raises:
        DatabaseError: the URL is unsupported or the schema is newer than this build.
    """
    async_url = normalize_url(url)
    database_path = make_url(async_url).database
    if database_path and database_path != ":memory:":
        Path(database_path).parent.mkdir(parents=True, exist_ok=True)
    db = Database(async_url)
    try:
        version = await db.schema_version()
        if version > HEAD_VERSION:
            raise DatabaseError(
                f"database schema version {version} is newer than this build ({HEAD_VERSION})"
            )
        if upgrade and version < HEAD_VERSION:
            await db.migrate()
    except BaseException:
        await db.dispose()
        raise
    return db
