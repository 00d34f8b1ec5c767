"""Engines and connection settings. Engines are made here on request, never at import.

SQLite: WAL journal, ``busy_timeout``, ``synchronous=NORMAL``, foreign keys on; write
transactions begin ``IMMEDIATE`` (a deferred transaction that later writes can fail with
``SQLITE_BUSY_SNAPSHOT``, which ``busy_timeout`` does not retry); reads begin deferred on a
separate engine so readers never take the write lock.

PostgreSQL: asyncpg for writes and reads. The same synchronous write functions run on it
through SQLAlchemy's ``run_sync`` bridge, so the layers above never know which database
they talk to. Write transactions take a writers' advisory lock (:func:`begin_write`),
exclusive unless all their operations are safe beside other writers, and serialize only their
ledger append on the head row (see :class:`quarterdeck.store.ledger.LedgerAppender`). That
keeps every single-writer promise the SQLite code relies on across any number of nodes.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine.url import make_url
from sqlalchemy.exc import DBAPIError, OperationalError, PendingRollbackError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from quarterdeck.store.migrations import HEAD_VERSION, current_version, migrate
from quarterdeck.store.statedir import DB_FILENAME as DB_FILENAME
from quarterdeck.store.statedir import create_private_file, make_private_dir

BUSY_TIMEOUT_MS = 10_000
"""Readers' busy timeout (they rarely wait at all under WAL)."""
LOCK_RETRIES = 60
"""How often a write that met another process's lock is tried again (backoff up to 1 s)."""
WRITER_BUSY_TIMEOUT_MS = 200
"""The in-loop writer's busy timeout: short, so the event loop never waits long for a lock."""
POSTGRES_LOCK_TIMEOUT_MS = 30_000
"""How long a PostgreSQL write waits for a row lock before it fails and is retried."""
POSTGRES_IDLE_IN_TRANSACTION_MS = 5_000
"""How long PostgreSQL lets a write transaction sit idle before it ends the session. Every
write transaction holds the writers' lock (and, while it appends, the ledger head), so a node
frozen inside one (SIGSTOP, a VM pause, a debugger) would hold up other nodes' writes until it
woke; the server ends its session instead, its transaction rolls back, and the others go on
(the frozen node's leases then expire)."""
WAL_CHECKPOINT_COMMITS = 64
"""SQLite, with checkpoints in the background (:meth:`Database.checkpoint_in_background`): how
many commits go by between two checkpoints."""
WRITER_APPLICATION = "quarterdeck-writer"
"""The ``application_name`` of write connections (what :meth:`Database.end_stalled_writers`
may end)."""
_END_STALLED_WRITERS = text(
    "SELECT pg_terminate_backend(h.pid) AS ended FROM pg_stat_activity h "
    "WHERE h.datname = current_database() AND h.pid <> pg_backend_pid() "
    "AND h.application_name = :app AND h.state = 'active' AND h.wait_event = 'ClientRead' "
    "AND pg_has_role(h.usesysid, 'MEMBER') "
    "AND h.state_change < clock_timestamp() - make_interval(secs => :stale_s) "
    "AND EXISTS (SELECT 1 FROM pg_stat_activity w WHERE w.datname = current_database() "
    "AND w.wait_event_type = 'Lock' AND h.pid = ANY(pg_blocking_pids(w.pid)))"
)
"""Write sessions that block another session while the server waits, in the middle of a
statement, for their client (frozen between two protocol messages: the server's idle timeout
does not apply there)."""
TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "55P03", "57014"})
"""PostgreSQL errors after which the same transaction may simply be tried again
(serialization failure, deadlock, lock not available, statement timeout); so may one that lost
its connection (:func:`is_connection_lost`)."""
NOTIFY_ENV = "QUARTERDECK_PG_NOTIFY"
"""Set to ``0``/``off`` to run PostgreSQL without ``LISTEN/NOTIFY`` (everyone polls)."""


WRITERS_LOCK_KEY = 0x5144_5752
"""The PostgreSQL advisory lock every write transaction takes first: shared by transactions
whose operations are all safe beside other writers, exclusive otherwise."""
DECISIONS_LOCK_KEY = 0x5144_4443
"""The PostgreSQL advisory lock a shared write transaction takes before a policy decision
reads counts or spend, so concurrent deciders see each other's decisions."""


def begin_write(conn: Connection, *, exclusive: bool) -> datetime | None:
    """The first statement of a write transaction; returns the database clock (PostgreSQL).

    On PostgreSQL the transaction takes the writers' advisory lock: ``exclusive`` (no other
    write transaction runs beside it, as on SQLite) or shared (only beside other shared ones,
    whose operations lock or fence every row they read before writing). SQLite's write
    transaction excludes every other writer already: nothing is done and None returned.
    """
    if conn.dialect.name != "postgresql":
        return None
    lock = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    now: datetime = conn.execute(
        text(f"SELECT {lock}({WRITERS_LOCK_KEY}), clock_timestamp()")
    ).one()[1]
    return now


def lock_decisions(conn: Connection) -> None:
    """Take the deciders' advisory lock (PostgreSQL; held to commit)."""
    conn.execute(text(f"SELECT pg_advisory_xact_lock({DECISIONS_LOCK_KEY})"))


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
    if parsed.get_backend_name() in ("postgresql", "postgres"):
        if "+" in parsed.drivername and parsed.get_driver_name() != "asyncpg":
            raise DatabaseError(
                f"unsupported PostgreSQL driver {parsed.get_driver_name()!r}: use postgresql://"
            )
        if not parsed.database:
            raise DatabaseError(f"the PostgreSQL URL names no database: {url!r}")
        return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    raise DatabaseError(
        f"unsupported database {parsed.get_backend_name()!r}: this build supports sqlite "
        "and postgresql"
    )


CONNECTION_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "08000", "08001", "08003", "08004",
                                  "08006"})  # fmt: skip
"""PostgreSQL errors that end the session: the server shutting down, restarting or starting up,
or the connection failed or lost."""


def _sqlstate(exc: BaseException | None) -> str | None:
    """The SQLSTATE a driver error carries (asyncpg's ``sqlstate``, psycopg's ``pgcode``)."""
    state = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    return state if isinstance(state, str) else None


def is_connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` means the connection to the server is gone (refused, reset, closed by a
    restart), so that the whole transaction failed, whatever statement met it."""
    if isinstance(exc, ConnectionError | TimeoutError | socket.gaierror | PendingRollbackError):
        return True  # refused, reset, unreachable; or a statement after it was invalidated
    cause: BaseException | None = exc
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        cause = exc.orig
    # The driver's own error (asyncpg's, when it fails to connect) or the one SQLAlchemy wraps.
    return _sqlstate(cause) in CONNECTION_SQLSTATES


def is_transient(exc: BaseException) -> bool:
    """Whether a failed write transaction may simply be run again: another process held
    SQLite's write lock, or PostgreSQL reported a deadlock, serialization failure or lock
    timeout, or the connection to the server was lost (a restart, a failover)."""
    if isinstance(exc, OperationalError) and "locked" in str(exc):
        return True
    if is_connection_lost(exc):
        return True  # the pool hands out a fresh connection next
    return isinstance(exc, DBAPIError) and _sqlstate(exc.orig) in TRANSIENT_SQLSTATES


def notifications_enabled() -> bool:
    """Whether PostgreSQL ``LISTEN/NOTIFY`` is on (the default; see :data:`NOTIFY_ENV`)."""
    return os.environ.get(NOTIFY_ENV, "1").strip().lower() not in ("0", "off", "false", "no")


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

    On PostgreSQL both sides use asyncpg; a write function runs through ``run_sync``, each of
    its statements awaited without blocking the loop.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        self.notify = notifications_enabled()
        self._writer_engine: Engine | None = None
        self._reader_sync_engine: Engine | None = None
        self._pg_writer: AsyncEngine | None = None
        if self.dialect == "postgresql":
            settings = {
                "server_settings": {
                    "lock_timeout": str(POSTGRES_LOCK_TIMEOUT_MS),
                    "idle_in_transaction_session_timeout": str(POSTGRES_IDLE_IN_TRANSACTION_MS),
                    "application_name": WRITER_APPLICATION,
                }
            }
            self._pg_writer = create_async_engine(
                url, pool_size=2, max_overflow=2, connect_args=settings
            )
            # Readers check a pooled connection before use, so that the first reads after a
            # server restart do not fail on connections it closed (the writer instead retries
            # a transaction that fails on one, see Writer).
            self.reader_engine = create_async_engine(
                url, pool_size=4, max_overflow=8, pool_pre_ping=True
            )
            return
        sync_url = parsed.set(drivername="sqlite+pysqlite")
        self._writer_engine = create_engine(
            sync_url, connect_args={"timeout": WRITER_BUSY_TIMEOUT_MS / 1000}
        )
        _sqlite_events(self._writer_engine, "BEGIN IMMEDIATE", WRITER_BUSY_TIMEOUT_MS)
        self._background_checkpoints = False

        @event.listens_for(self._writer_engine, "connect")
        def _no_inline_checkpoints(dbapi_connection: Any, _record: Any) -> None:
            if self._background_checkpoints:
                dbapi_connection.execute("PRAGMA wal_autocheckpoint=0")

        self._reader_sync_engine = create_engine(
            sync_url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
        )
        _sqlite_events(self._reader_sync_engine, "BEGIN", BUSY_TIMEOUT_MS)
        self.reader_engine = create_async_engine(
            url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000}
        )
        _sqlite_events(self.reader_engine.sync_engine, "BEGIN", BUSY_TIMEOUT_MS)

    @property
    def is_postgres(self) -> bool:
        """Whether this is a PostgreSQL database."""
        return self.dialect == "postgresql"

    async def run_write(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` inside one write transaction, committed on return.

        If ``fn`` raises, the transaction is rolled back and the exception propagates. If
        another process holds a lock past the short wait (SQLite's busy timeout), or
        PostgreSQL reports a deadlock, this raises an error that :func:`is_transient` accepts
        and the caller retries later.
        """
        if self._pg_writer is not None:
            async with self._pg_writer.begin() as conn:
                return await conn.run_sync(fn)
        assert self._writer_engine is not None
        with self._writer_engine.begin() as sync_conn:
            return fn(sync_conn)

    def checkpoint_in_background(self, on: bool) -> bool:
        """SQLite: whether commits leave checkpointing the WAL to :meth:`checkpoint`, run by
        the caller in a thread. A commit that checkpoints copies the WAL into the database
        file and syncs it: milliseconds, on the event loop's thread, now and then. Call when
        no write runs. Returns whether it applies (False on PostgreSQL)."""
        if self._writer_engine is None:
            return False
        if self._background_checkpoints != on:
            self._background_checkpoints = on
            self._writer_engine.dispose()  # its connections were opened with the other setting
        return True

    def checkpoint(self) -> None:
        """SQLite: copy what the WAL holds into the database file, waiting for no reader or
        writer (``PRAGMA wal_checkpoint(PASSIVE)``); call from a thread."""
        assert self._reader_sync_engine is not None, "checkpoint is for SQLite"
        raw = self._reader_sync_engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
            cursor.fetchall()
            cursor.close()
        finally:
            raw.close()

    @property
    def sqlite_path(self) -> str | None:
        """The database file, for SQLite."""
        if self.dialect != "sqlite":
            return None
        return make_url(self.url).database

    @property
    def display_url(self) -> str:
        """The URL as a person writes it (no driver name) with any password masked, for logs
        and headers."""
        url = make_url(self.url)
        return url.set(drivername=url.get_backend_name()).render_as_string(hide_password=True)

    @property
    def dsn(self) -> str:
        """The plain driver URL (``postgresql://...``), for a raw asyncpg connection."""
        return make_url(self.url).set(drivername="postgresql").render_as_string(hide_password=False)

    def run_read_sync(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in one read snapshot on a plain driver connection (SQLite; call from a
        thread)."""
        assert self._reader_sync_engine is not None, "run_read_sync is for SQLite"
        with self._reader_sync_engine.connect() as conn, conn.begin():
            return fn(conn)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only snapshot transaction, rolled back at the end."""
        async with self.reader_engine.connect() as conn:
            if self._pg_writer is not None:
                await conn.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
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
            except DBAPIError as exc:
                if not is_transient(exc) or attempt == LOCK_RETRIES - 1:
                    raise
                await asyncio.sleep(min(0.05 * 2**attempt, 1.0) * random.random())
        raise AssertionError("unreachable")

    async def end_stalled_writers(
        self, stale_s: float = POSTGRES_IDLE_IN_TRANSACTION_MS / 1000
    ) -> int:
        """PostgreSQL: end the sessions of write transactions that block others while the
        server has waited ``stale_s`` or more for their client in the middle of a statement
        (a process frozen there holds the writers' lock or the ledger head, and so other
        nodes' writes, until it wakes; the server's idle timeout only covers a freeze between
        statements). Their transactions roll back; a woken process retries on a new
        connection. Returns how many sessions were ended (always 0 on SQLite)."""
        if self._pg_writer is None:
            return 0
        async with self.reader_engine.connect() as conn:
            rows = (
                await conn.execute(
                    _END_STALLED_WRITERS, {"app": WRITER_APPLICATION, "stale_s": stale_s}
                )
            ).all()
            await conn.rollback()
        return sum(1 for row in rows if row.ended)

    async def dispose(self) -> None:
        """Close every pooled connection."""
        if self._writer_engine is not None:
            self._writer_engine.dispose()
        if self._reader_sync_engine is not None:
            self._reader_sync_engine.dispose()
        if self._pg_writer is not None:
            await self._pg_writer.dispose()
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
    if make_url(async_url).get_backend_name() == "sqlite" and database_path:
        # A new folder 0700 and a new file 0600, whatever the umask; SQLite gives its -wal and
        # -shm files the database file's mode.
        make_private_dir(Path(database_path).parent)
        create_private_file(Path(database_path))
    db = Database(async_url)
    try:
        try:
            version = await db.schema_version()
        except (OSError, DBAPIError) as exc:
            reason = exc.orig if isinstance(exc, DBAPIError) else exc
            raise DatabaseError(f"cannot open {db.display_url}: {reason}") from exc
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
