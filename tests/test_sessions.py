"""Sessions: durable worker identities that outlive runtime nodes."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text
from tests.conftest import Store, run

from quarterdeck.domain.authority import Kind, Principal
from quarterdeck.runtime.config import daemon_user, parse_config
from quarterdeck.runtime.prometheus import render
from quarterdeck.runtime.runtime import Runtime
from quarterdeck.store.database import open_database
from quarterdeck.store.sessions import (
    HeldSession,
    acquire_sessions,
    heartbeat_sessions,
    sweep_sessions,
)
from quarterdeck.store.writer import Writer, WriteTxn


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


def test_a_holder_that_comes_back_takes_its_recovering_sessions_back(
    tmp_path: Path, database: str
) -> None:
    """A frozen node's sessions are swept ``recovering``; if nobody took them meanwhile, its
    next heartbeat makes them its own again: ``active``, or ``paused`` on a paused lane."""

    async def main() -> None:
        db = await open_database(database)
        async with Writer(db) as writer:
            held = await writer.submit(
                lambda txn: acquire_sessions(txn, "sim", 2, "slow-node", 0.05, tmp_path)
            )
            held += await writer.submit(
                lambda txn: acquire_sessions(txn, "quiet", 1, "slow-node", 0.05, tmp_path)
            )
            await asyncio.sleep(0.1)
            assert await writer.submit(lambda txn: sweep_sessions(txn, "sweeper")) == 3
            lost = await writer.submit(
                lambda txn: heartbeat_sessions(txn, held, 5, frozenset({"quiet"}))
            )
            assert lost == []
            assert dict(_rows(database, "SELECT lane, state FROM sessions")) == {
                "sim": "active",
                "quiet": "paused",
            }
            # Renewed: the next sweep leaves them alone.
            assert await writer.submit(lambda txn: sweep_sessions(txn, "sweeper")) == 0
            again = await writer.submit(lambda txn: heartbeat_sessions(txn, held, 5))
            assert again == []
        history = _rows(
            database,
            "SELECT action, actor, payload FROM ledger WHERE subject_id = ? ORDER BY seq",
            held[0].id,
        )
        assert [(action, actor) for action, actor, _ in history] == [
            ("session.created", "slow-node"),
            ("session.active", "slow-node"),
            ("session.recovering", "sweeper"),
            ("session.active", "slow-node"),
        ]
        assert json.loads(history[-1][2])["reason"] == "holder returned"
        await db.dispose()

    run(main())


def test_sessions_taken_over_meanwhile_are_reported_lost_and_left_alone(
    tmp_path: Path, database: str
) -> None:
    async def main() -> None:
        db = await open_database(database)
        async with Writer(db) as writer:
            held = await writer.submit(
                lambda txn: acquire_sessions(txn, "sim", 2, "slow-node", 0.05, tmp_path)
            )
            await asyncio.sleep(0.1)
            await writer.submit(lambda txn: sweep_sessions(txn, "sweeper"))
            (taken,) = await writer.submit(
                lambda txn: acquire_sessions(txn, "sim", 1, "new-node", 5, tmp_path)
            )
            before = _rows(
                database, "SELECT lease_expires_at, version FROM sessions WHERE id = ?", taken.id
            )
            lost = await writer.submit(lambda txn: heartbeat_sessions(txn, held, 5))
        assert taken.id == held[0].id and lost == [held[0]]
        rows = {
            id_: (state, owner, attempt)
            for id_, state, owner, attempt in _rows(
                database, "SELECT id, state, lease_owner, attempt FROM sessions"
            )
        }
        assert rows == {
            held[0].id: ("active", "new-node", 2),
            held[1].id: ("active", "slow-node", 1),
        }
        after = _rows(
            database, "SELECT lease_expires_at, version FROM sessions WHERE id = ?", taken.id
        )
        assert after == before, "the old holder's heartbeat touched a session it lost"
        await db.dispose()

    run(main())


def test_a_node_whose_session_was_taken_over_leases_another_and_stops_using_it(
    tmp_path: Path, database: str
) -> None:
    async def main() -> None:
        db = await open_database(database)
        rt = Runtime(db, _config(), state_dir=tmp_path, node_id="node-a")
        await rt.start()
        mine = sorted(rt._sessions["sim"])
        async with Writer(db) as writer:
            # As if node-a had been frozen past its lease and another node started meanwhile
            # (in one transaction, so that node-a's heartbeat cannot renew the lease between).
            def take_over(txn: WriteTxn) -> list[HeldSession]:
                txn.conn.execute(
                    text("UPDATE sessions SET lease_expires_at = :past WHERE id = :id"),
                    {"past": "2000-01-01T00:00:00.000000Z", "id": mine[0]},
                )
                return acquire_sessions(txn, "sim", 1, "node-z", 60, tmp_path)

            (taken,) = await writer.submit(take_over)
        assert taken.id == mine[0]
        await _wait(lambda: taken.id not in rt._sessions["sim"] and len(rt._sessions["sim"]) == 3)
        assert taken.id not in rt.sessions.free["sim"]
        assert rt.metrics.sessions_lost == 1
        assert 'quarterdeck_node_sessions_lost_total{node="node-a"} 1.0\n' in await render(rt)
        held = _rows(database, "SELECT id FROM sessions WHERE lease_owner = ?", "node-a")
        assert sorted(i for (i,) in held) == sorted(rt._sessions["sim"])
        await rt.submit([_task(i) for i in range(9)])
        await _wait(
            lambda: (
                _rows(database, "SELECT count(*) FROM turns WHERE state = 'completed'")[0][0] == 9
            )
        )
        used = {i for (i,) in _rows(database, "SELECT session_id FROM missions")}
        assert used and taken.id not in used
        assert _rows(database, "SELECT lease_owner FROM sessions WHERE id = ?", taken.id) == [
            ("node-z",)
        ]
        await rt.stop()
        await db.dispose()

    run(main())


def test_a_drained_node_hands_back_every_session_it_holds(tmp_path: Path, database: str) -> None:
    """Including one its lists do not know yet (a replacement leased as the drain began)."""

    async def main() -> None:
        db = await open_database(database)
        rt = Runtime(db, _config(), state_dir=tmp_path, node_id="node-a")
        await rt.start()
        async with Writer(db) as writer:
            (extra,) = await writer.submit(
                lambda txn: acquire_sessions(txn, "sim", 1, "node-a", 60, tmp_path)
            )
        assert extra.id not in rt._sessions["sim"]
        await rt.stop()
        rows = _rows(database, "SELECT state, lease_owner FROM sessions")
        assert rows == [("idle", None)] * 4
        released = _rows(
            database,
            "SELECT count(*) FROM ledger WHERE action = 'session.idle' AND actor = ?",
            "node-a",
        )
        assert released == [(4,)]
        await db.dispose()

    run(main())


def test_paused_lane_pauses_its_sessions(tmp_path: Path, database: str) -> None:
    async def main() -> None:
        db = await open_database(database)
        rt = Runtime(db, _config(), state_dir=tmp_path)
        await rt.start()
        me = Principal(Kind.SUPERVISOR, daemon_user())  # admin: no roster is configured
        await rt.command("w", {"command": "lane.pause", "lane": "sim"}, me)
        await _wait(
            lambda: {r[0] for r in _rows(database, "SELECT state FROM sessions")} == {"paused"}
        )
        await rt.command("w", {"command": "lane.resume", "lane": "sim"}, me)
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
        (session_id,) = _rows(
            database, "SELECT s.id FROM sessions s JOIN missions m ON m.session_id = s.id"
        )[0]
        # The session's directory in the mission's workspace, outside the state directory.
        session_dir = str(tmp_path.parent / f"{tmp_path.name}.agents" / "w" / session_id)
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
