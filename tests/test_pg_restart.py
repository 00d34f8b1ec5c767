"""The database server restarts under a running writer and runtime (the recovery drill's
"restart the database" step, docs/deploy.md): writes wait and go through once it is back,
and no finished mission is lost and run again."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from tests.conftest import Store, run
from tests.pgcluster import PgCluster

from quarterdeck.runtime.config import parse_config
from quarterdeck.runtime.ingest import Ingestor
from quarterdeck.runtime.runtime import Runtime
from quarterdeck.store.database import open_database
from quarterdeck.store.ledger import verify_ledger
from quarterdeck.store.writer import Writer

DOWN_S = 1.5
"""How long the server stays down: longer than a connection attempt takes to be refused."""


def _envelope(i: int, **sim: Any) -> bytes:
    return json.dumps(
        {
            "idempotency_key": f"k{i}",
            "workspace": "w",
            "kind": "task",
            "payload": {
                "lane": "sim",
                "input": {"sim": {"latency_ms": 0, "progress": 0, "outcome": "complete", **sim}},
            },
        }
    ).encode()


async def _restart(cluster: PgCluster) -> None:
    await asyncio.to_thread(cluster.stop_server)
    await asyncio.sleep(DOWN_S)
    await asyncio.to_thread(cluster.start_server)


def test_a_write_submitted_while_the_server_is_down_goes_through_once_it_is_back(
    own_pg_cluster: PgCluster,
) -> None:
    url = own_pg_cluster.url()

    async def main() -> None:
        db = await open_database(url)
        try:
            async with Writer(db) as writer:
                ingest = Ingestor(writer).ingest
                assert [r.status for r in await ingest([_envelope(0)])] == ["accepted"]
                await asyncio.to_thread(own_pg_cluster.stop_server)
                # Refused connections, then the server starting up: the writer keeps trying.
                pending = asyncio.create_task(ingest([_envelope(1)]))
                await asyncio.sleep(DOWN_S)
                assert not pending.done()
                await asyncio.to_thread(own_pg_cluster.start_server)
                assert [r.status for r in await asyncio.wait_for(pending, 60)] == ["accepted"]
                again = await ingest([_envelope(1)])
                assert [r.status for r in again] == ["duplicate"]
            result = await verify_ledger(db)
            assert result.ok, result
        finally:
            await db.dispose()

    run(main())
    assert Store(url).value("SELECT count(*) FROM receipts WHERE status = 'accepted'") == 2


def test_missions_finishing_across_a_server_restart_are_recorded_not_run_again(
    own_pg_cluster: PgCluster, tmp_path: Path
) -> None:
    url = own_pg_cluster.url()
    count = 24
    config = parse_config(
        {
            "lease_s": 30,  # far longer than the restart: a re-run could only come from a lost finish
            "sweep_interval_s": 0.5,
            "lanes": {"sim": {"adapter": "sim", "concurrency": 8, "backoff_initial_s": 0.01}},
        }
    )

    async def main() -> float:
        db = await open_database(url)
        rt = Runtime(db, config, state_dir=tmp_path, node_id="node-r")
        await rt.start()
        try:
            await rt.submit([_envelope(i, latency_ms=400) for i in range(count)])
            store = Store(url)
            deadline = time.monotonic() + 30
            while not store.value("SELECT count(*) FROM missions WHERE state = 'running'"):
                assert time.monotonic() < deadline, "nothing started"
                await asyncio.sleep(0.02)
            await _restart(own_pg_cluster)  # the running missions finish while it is down
            started = time.monotonic()
            while store.value("SELECT count(*) FROM turns WHERE state = 'completed'") < count:
                assert time.monotonic() - started < 25, "turns did not complete after the restart"
                await asyncio.sleep(0.1)
            took = time.monotonic() - started
            await rt.stop()
            result = await verify_ledger(db)
            assert result.ok, result
            return took
        finally:
            await rt.stop()
            await db.dispose()

    took = run(main())
    store = Store(url)
    print(f"figures: {count} turns completed {took:.2f} s after the server came back")
    assert store.rows("SELECT state, attempt, count(*) AS n FROM missions GROUP BY 1, 2") == [
        {"state": "completed", "attempt": 1, "n": count}
    ]
    assert store.value("SELECT count(*) FROM ledger WHERE action = 'mission.lease_expired'") == 0
    assert store.value("SELECT count(*) FROM ledger WHERE action = 'mission.completed'") == count


class _DriverError(Exception):
    """Stands for a driver exception carrying a SQLSTATE (asyncpg's do, as ``sqlstate``)."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


def test_which_failures_count_as_a_lost_connection() -> None:
    from sqlalchemy.exc import DBAPIError, PendingRollbackError

    from quarterdeck.store.database import is_connection_lost, is_transient

    def wrapped(sqlstate: str) -> DBAPIError:
        return DBAPIError("SELECT 1", None, _DriverError(sqlstate))

    lost = [
        ConnectionRefusedError(111, "refused"),
        ConnectionResetError(104, "reset"),
        TimeoutError("connect timed out"),
        PendingRollbackError("invalid transaction"),
        _DriverError("57P03"),  # the server is starting up (raised by asyncpg on connect)
        wrapped("57P01"),  # terminated by an administrator (a fast shutdown)
        wrapped("08006"),
    ]
    for exc in lost:
        assert is_connection_lost(exc) and is_transient(exc), exc
    # Transient, but the connection is fine: only the one operation's statement failed.
    assert is_transient(wrapped("40P01")) and not is_connection_lost(wrapped("40P01"))
    # An operation's own failure, never retried as a lost connection.
    for exc in (FileNotFoundError("prompt.md"), ValueError("bad"), wrapped("23505")):
        assert not is_connection_lost(exc) and not is_transient(exc), exc
