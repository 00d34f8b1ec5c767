"""The single writer: one task that applies write operations in group commits.

An operation is a plain synchronous function of a :class:`WriteTxn`; callers hand it in and
await its result. The writer takes whatever operations are queued, runs them in one
transaction (each in its own savepoint when there are several), appends their ledger entries,
commits once, then answers every caller. A failing operation rolls back alone (its savepoint
and its ledger entries); the others still commit.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError, OperationalError

from quarterdeck.domain.clock import Clock, format_instant, utc_now
from quarterdeck.store.database import (
    LOCK_RETRIES,
    WAL_CHECKPOINT_COMMITS,
    Database,
    begin_write,
    is_connection_lost,
    is_transient,
    lock_decisions,
)
from quarterdeck.store.ledger import LedgerAppender, LedgerHeadMoved
from quarterdeck.store.sql import Bulk

T = TypeVar("T")
log = logging.getLogger(__name__)

MAX_OPS_PER_COMMIT = 256
RETRIES = LOCK_RETRIES


@dataclass
class WriteTxn:
    """What an operation gets: the connection, the transaction's time and the ledger."""

    conn: Connection
    now: datetime
    ledger: LedgerAppender
    exclusive: bool = True
    """Whether no other write transaction runs beside this one (always on SQLite; on
    PostgreSQL unless every operation in it was submitted as ``concurrent``)."""
    at: str = ""
    """The transaction's time as ledger text."""
    stirred: bool = False
    """Set by an operation that made work for the dispatcher: a commit of quiet operations
    (see :meth:`Writer.submit`) is quiet only while this stays False."""
    _decisions_locked: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        self.at = format_instant(self.now)

    def lock_decisions(self) -> None:
        """Call before a policy decision reads counts or spend: a shared transaction then takes
        the deciders' lock (held to commit), so that no concurrent transaction decides on
        counts that miss this one's decisions. An exclusive one needs nothing."""
        if not self.exclusive and not self._decisions_locked:
            lock_decisions(self.conn)
            self._decisions_locked = True

    def insert_many(self, statement: Bulk, rows: list[dict[str, Any]]) -> None:
        """Insert ``rows`` (dicts with the same keys): ``statement.each`` as one
        ``executemany``, or on PostgreSQL its ``postgres`` form over column arrays."""
        if not rows:
            return
        if statement.postgres is not None and self.conn.dialect.name == "postgresql":
            self.conn.execute(statement.postgres, _as_columns(rows))
            return
        self.conn.execute(statement.each, rows)

    def update_many(self, statement: Bulk, rows: list[dict[str, Any]], *, key: str = "id") -> int:
        """Run an UPDATE once per parameter row; return how many rows it changed in all.

        SQLite counts an executemany's rows exactly. asyncpg's executemany reports no count,
        so on PostgreSQL the rows run one by one (fences that check the count need it) unless
        the statement has a set-based ``postgres`` form. That form is used when the rows' ``key``
        values are distinct (each row then changes its own target, exactly as one by one would).
        """
        if not rows:
            return 0
        if self.conn.dialect.name != "postgresql":
            return int(self.conn.execute(statement.each, rows).rowcount)
        if statement.postgres is not None and len({row[key] for row in rows}) == len(rows):
            return int(self.conn.execute(statement.postgres, _as_columns(rows)).scalar_one())
        return sum(int(self.conn.execute(statement.each, row).rowcount) for row in rows)


def _as_columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Rows with the same keys as one list of values per key (``unnest`` parameters)."""
    return {name: [row[name] for row in rows] for name in rows[0]}


WriteOp = Callable[[WriteTxn], T]


class ExclusiveRequired(Exception):
    """Raised by an operation that met work it may only do with no other writer beside it;
    the writer runs it again in an exclusive transaction."""


@dataclass
class _Pending(Generic[T]):
    op: WriteOp[T]
    concurrent: bool = False
    quiet: bool = False
    future: asyncio.Future[T] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class _OperationFailed(Exception):
    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class WriterClosed(RuntimeError):
    """The writer has stopped and takes no more operations."""


CommitListener = Callable[[int], None]
"""Called after each commit with the ledger head seq (on PostgreSQL, where the head is read
only to append, after each commit that appended)."""

_Outcome = tuple[bool, Any]


class Writer:
    """Owns all writes of one process to one database, committing in groups."""

    def __init__(self, db: Database, clock: Clock = utc_now) -> None:
        self.db = db
        self.clock = clock
        self._database_clock = db.is_postgres and clock is utc_now
        """On PostgreSQL a transaction's time is the database clock, read as it starts (one
        clock for every node's lease deadlines), unless a clock was injected."""
        self._notify = db.is_postgres and db.notify
        self._queue: asyncio.Queue[_Pending[Any] | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[CommitListener] = []
        self._head: tuple[int, str] | None = None
        self._checkpoints = False
        self._since_checkpoint = 0
        self._checkpointing: asyncio.Task[None] | None = None
        self.commits = 0
        self.ops = 0
        self.last_quiet = False
        """Whether the last commit was quiet (see :meth:`submit`); commit listeners read it."""

    async def __aenter__(self) -> Writer:
        self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    def start(self) -> None:
        """Start the writer task on the running loop."""
        if self._task is None:
            self._checkpoints = self.db.checkpoint_in_background(True)
            self._task = asyncio.get_running_loop().create_task(self._run(), name="qd-writer")

    async def stop(self) -> None:
        """Finish the queued operations, then stop."""
        if self._task is None:
            return
        await self._queue.put(None)
        await self._task
        self._task = None
        if self._checkpointing is not None:
            await self._checkpointing
            self._checkpointing = None
        if self._checkpoints:
            self.db.checkpoint_in_background(False)

    def _committed(self) -> None:
        """Start a checkpoint in a thread every :data:`WAL_CHECKPOINT_COMMITS` commits (SQLite;
        see :meth:`Database.checkpoint_in_background`)."""
        self.commits += 1
        if not self._checkpoints:
            return
        self._since_checkpoint += 1
        running = self._checkpointing is not None and not self._checkpointing.done()
        if self._since_checkpoint >= WAL_CHECKPOINT_COMMITS and not running:
            self._since_checkpoint = 0
            self._checkpointing = asyncio.get_running_loop().create_task(
                self._checkpoint(), name="qd-wal-checkpoint"
            )

    async def _checkpoint(self) -> None:
        try:
            await asyncio.to_thread(self.db.checkpoint)
        except Exception as exc:  # the next one tries again; commits go on meanwhile
            log.warning("WAL checkpoint failed: %s", exc)

    def on_commit(self, listener: CommitListener) -> None:
        """Call ``listener(head_seq)`` after every commit (see :data:`CommitListener`)."""
        self._listeners.append(listener)

    async def submit(self, op: WriteOp[T], *, concurrent: bool = False, quiet: bool = False) -> T:
        """Queue ``op`` for the next group commit and wait for its result.

        ``quiet`` declares that ``op`` makes no work for the dispatcher unless it sets
        :attr:`WriteTxn.stirred`: a commit made only of quiet operations that none stirred is
        quiet (:attr:`last_quiet`), and the runtime does not wake its dispatcher for it.

        ``concurrent`` declares ``op`` safe beside write transactions of other processes: it
        locks (or skips, or fences with a compare-and-set) every row it reads before writing
        on it, and takes :meth:`WriteTxn.lock_decisions` before deciding on counts. On
        PostgreSQL, transactions made only of such operations run side by side on every node
        (only their ledger append is serialized); any other operation's transaction excludes
        all other writers. An operation may raise :class:`ExclusiveRequired` when it meets
        work that needs exclusion; it is then run again on its own, exclusively. SQLite has
        one writer at a time anyway.

        Raises:
            WriterClosed: the writer is not running.
            Exception: whatever ``op`` raised; nothing it did was committed.
        """
        if self._task is None or self._task.done():
            raise WriterClosed("the writer is not running")
        pending: _Pending[T] = _Pending(op, concurrent, quiet)
        await self._queue.put(pending)
        return await pending.future

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                break
            batch: list[_Pending[Any]] = [first]
            while len(batch) < MAX_OPS_PER_COMMIT and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            await self._commit_with_retry(batch)

    async def _commit_with_retry(self, batch: list[_Pending[Any]]) -> None:
        delay = 0.05
        ops = [pending.op for pending in batch]
        exclusive = not self.db.is_postgres or not all(pending.concurrent for pending in batch)
        for attempt in range(RETRIES + 1):
            try:
                outcomes, head_seq, stirred = await self.db.run_write(
                    lambda conn: self._commit(conn, ops, exclusive)
                )
            except _OperationFailed as failed:
                # A lone operation failed: its transaction rolled back and nothing else ran.
                outcomes, head_seq, stirred = [(False, failed.error)], -1, False
            except Exception as exc:
                # Anything else failed the transaction as a whole (no operation ran to an
                # outcome): a lost ledger head race, a lock, a dropped or refused connection.
                self._head = None
                retryable = isinstance(exc, LedgerHeadMoved | IntegrityError) or is_transient(exc)
                if retryable and attempt < RETRIES:
                    log.info("group commit retried (%s)", type(exc).__name__)
                    if attempt == 0 and isinstance(exc, LedgerHeadMoved):
                        # Another process appended since our cached head: re-read it and go
                        # again at once (no contention to back off from).
                        continue
                    await asyncio.sleep(delay * random.random())
                    delay = min(delay * 2, 1.0)
                    continue
                self._fail(batch, exc)
                return
            break
        self._committed()
        self.ops += len(batch)
        self.last_quiet = not stirred and all(pending.quiet for pending in batch)
        again: list[_Pending[Any]] = []
        for pending, (ok, value) in zip(batch, outcomes, strict=True):
            if pending.future.done():
                continue
            if not ok and isinstance(value, ExclusiveRequired) and pending.concurrent:
                pending.concurrent = False
                again.append(pending)
            elif ok:
                pending.future.set_result(value)
            else:
                pending.future.set_exception(value)
        if head_seq >= 0:
            for listener in self._listeners:
                try:
                    listener(head_seq)
                except Exception:
                    log.exception("commit listener failed")
        for pending in again:
            await self._commit_with_retry([pending])

    def _commit(
        self, conn: Connection, ops: list[WriteOp[Any]], exclusive: bool
    ) -> tuple[list[_Outcome], int, bool]:
        """Run the operations in the caller's transaction; a lone one needs no savepoint."""
        outcomes: list[_Outcome] = []
        database_now = begin_write(conn, exclusive=exclusive)
        now = database_now if self._database_clock else None
        ledger = LedgerAppender.open(conn, self._head, notify=self._notify)
        txn = WriteTxn(conn=conn, now=now or self.clock(), ledger=ledger, exclusive=exclusive)
        if len(ops) == 1:
            try:
                outcomes.append((True, ops[0](txn)))
            except (OperationalError, LedgerHeadMoved):
                raise
            except Exception as exc:
                if is_transient(exc):
                    raise  # the transaction failed, not the operation: it is tried again
                raise _OperationFailed(exc) from exc
        else:
            for op in ops:
                mark = ledger.mark()
                savepoint = conn.begin_nested()
                try:
                    value = op(txn)
                except Exception as exc:
                    if is_connection_lost(exc):
                        raise  # the transaction is gone, not just this operation: retried
                    savepoint.rollback()
                    ledger.rollback_to(mark)
                    outcomes.append((False, exc))
                else:
                    savepoint.commit()
                    outcomes.append((True, value))
        ledger.flush()
        self._head = (ledger.head_seq, ledger.head_hash)
        return outcomes, ledger.head_seq, txn.stirred

    @staticmethod
    def _fail(batch: list[_Pending[Any]], exc: BaseException) -> None:
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(exc)
