"""Sessions: durable worker identities that outlive runtime nodes."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from tests.conftest import Store, run

from quarterdeck.runtime.config import parse_config
from quarterdeck.runtime.runtime import Runtime
from quarterdeck.store.database import open_database
from quarterdeck.store.sessions import acquire_sessions, sweep_sessions
from quarterdeck.store.writer import Writer


def _config(**lane: Any) -> Any:
    return parse_config(
        {
            "lease_s": 2,
            "sweep_interval_s": 0.3,
            "lanes": {
                "sim": {"adapter": "sim", "concurrency": 3, "backoff_initial_s": 0.01, **lane}
            },
        }
    )


def _rows(url: str, sql: str, *args: object) -> list[tuple[Any, ...]]:
    """Rows of a raw query on the database under test, as tuples."""
    return [tuple(row.values()) for row in Store(url).rows(sql, *args)]


async def _wait(predicate: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def _task(i: int, lane: str = "sim", **sim: Any) -> str:
    return json.dumps(
        {
            "idempotency_key": f"t{i}",
            "workspace": "w",
            "kind": "task",
            "payload": {"lane": lane, "input": {"sim": {"latency_ms": 0, "progress": 0, **sim}}},
        }
    )


def test_sessions_are_held_used_released_and_resumed_in_order(
    tmp_path: Path, database: str
) -> None:
    async def main() -> None:
        db = await open_database(database)
        first = Runtime(db, _config(), state_dir=tmp_path, node_id="node-a")
        await first.start()
        held = _rows(database, "SELECT id, state, lease_owner, workdir FROM sessions ORDER BY id")
        assert [(state, owner) for _, state, owner, _ in held] == [("active", "node-a")] * 3
        await first.submit([_task(i) for i in range(6)])
        await _wait(
            lambda: (
                _rows(database, "SELECT count(*) FROM turns WHERE state = 'completed'")[0][0] == 6
            )
        )
        used = {row[0] for row in _rows(database, "SELECT session_id FROM missions")}
        assert used <= {row[0] for row in held} and used
        await first.stop()
        released = _rows(database, "SELECT id, state, lease_owner FROM sessions ORDER BY id")
        assert [(state, owner) for _, state, owner in released] == [("idle", None)] * 3

        second = Runtime(db, _config(concurrency=2), state_dir=tmp_path, node_id="node-b")
        await second.start()
        resumed = _rows(database, "SELECT id, state, lease_owner FROM sessions ORDER BY id")
        # The oldest identities come back first, with their directories.
        assert [row[0] for row in resumed[:2]] == [row[0] for row in held[:2]]
        assert [(s, o) for _, s, o in resumed[:2]] == [("active", "node-b")] * 2
        assert resumed[2][1:] == ("idle", None)
        await second.stop()
        await db.dispose()

    run(main())


def test_a_vanished_holders_sessions_are_recovered(tmp_path: Path, database: str) -> None:
    async def main() -> None:
        db = await open_database(database)
        async with Writer(db) as writer:
            gone = await writer.submit(
                lambda txn: acquire_sessions(txn, "sim", 2, "dead-node", 0.05, tmp_path)
            )
            await asyncio.sleep(0.1)
            assert await writer.submit(lambda txn: sweep_sessions(txn, "sweeper")) == 2
            assert {row[0] for row in _rows(database, "SELECT state FROM sessions")} == {
                "recovering"
            }
            back = await writer.submit(
                lambda txn: acquire_sessions(txn, "sim", 2, "new-node", 5, tmp_path)
            )
        assert [s.id for s in back] == [s.id for s in gone]
        assert [s.attempt for s in back] == [2, 2]
        history = _rows(
            database,
            "SELECT action FROM ledger WHERE subject_id = ? ORDER BY seq",
            gone[0].id,
        )
        assert [a for (a,) in history] == [
            "session.created",
            "session.active",
            "session.recovering",
            "session.active",
        ]
        counters = dict(_rows(database, "SELECT name, value FROM counters"))
        assert counters["sessions_orphaned"] == 2
        await db.dispose()

    run(main())


def test_paused_lane_pauses_its_sessions(tmp_path: Path, database: str) -> None:
    async def main() -> None:
        db = await open_database(database)
        rt = Runtime(db, _config(), state_dir=tmp_path)
        await rt.start()
        await rt.command("w", {"command": "lane.pause", "lane": "sim"}, actor="test")
        await _wait(
            lambda: {r[0] for r in _rows(database, "SELECT state FROM sessions")} == {"paused"}
        )
        await rt.command("w", {"command": "lane.resume", "lane": "sim"}, actor="test")
        await _wait(
            lambda: {r[0] for r in _rows(database, "SELECT state FROM sessions")} == {"active"}
        )
        await rt.stop()
        await db.dispose()

    run(main())


def test_repeated_failures_degrade_a_session_and_success_restores_it(
    tmp_path: Path, database: str
) -> None:
    async def main() -> None:
        db = await open_database(database)
        config = _config(concurrency=1, max_attempts=3)
        rt = Runtime(db, config, state_dir=tmp_path)
        await rt.start()
        await rt.submit([_task(1, outcome="fail")])
        await _wait(lambda: _rows(database, "SELECT state FROM sessions")[0][0] == "degraded")
        await _wait(lambda: _rows(database, "SELECT dead_letter FROM turns")[0][0] == "held")
        await rt.submit([_task(2, outcome="complete")])
        await _wait(lambda: _rows(database, "SELECT state FROM sessions")[0][0] == "active")
        await rt.stop()
        await db.dispose()

    run(main())


def test_sync_python_agent_runs_in_a_thread_in_its_session_directory(
    tmp_path: Path, database: str
) -> None:
    async def main() -> None:
        db = await open_database(database)
        config = parse_config(
            {
                "lanes": {
                    "py": {"adapter": "python", "options": {"callable": "tests.agents:sync_agent"}}
                }
            }
        )
        rt = Runtime(db, config, state_dir=tmp_path)
        await rt.start()
        await rt.submit([_task(1, lane="py")])
        await _wait(lambda: _rows(database, "SELECT state FROM turns")[0][0] == "completed")
        await rt.stop()
        (deliverable,) = _rows(database, "SELECT deliverable FROM turns")[0]
        (session_dir,) = _rows(
            database, "SELECT s.workdir FROM sessions s JOIN missions m ON m.session_id = s.id"
        )[0]
        assert json.loads(deliverable) == {
            "workdir": session_dir,
            "decision": "approved",
            "args": {"path": "notes.txt"},
        }
        actions = [
            a
            for (a,) in _rows(
                database, "SELECT action FROM ledger WHERE action LIKE ? ORDER BY seq", "action.%"
            )
        ]
        assert actions == ["action.requested", "action.decided", "action.released"]
        progress = _rows(database, "SELECT type FROM mission_events")
        assert ("progress",) in progress
        await db.dispose()

    run(main())
