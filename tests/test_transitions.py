"""The one mover (``store/transitions.move``): it checks the table before it writes, fences on
the version (or the lease), and records a ledger entry only for a row that moved."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import pytest
from sqlalchemy import text
from tests.conftest import Store, run

from quarterdeck.domain.states import IllegalTransition, Kind
from quarterdeck.store.database import open_database
from quarterdeck.store.transitions import move, move_mission
from quarterdeck.store.writer import Writer, WriteTxn

pytestmark = pytest.mark.usefixtures("database")
T = TypeVar("T")


def _seed(txn: WriteTxn) -> None:
    txn.conn.execute(
        text(
            "INSERT INTO turns (id, workspace, state, version, attempt, created_at, updated_at, "
            "data, lane, lease_owner, lease_expires_at) VALUES ('t1', 'w', 'running', 3, 1, :at, "
            ":at, '{}', 'sim', 'node-a', :at)"
        ),
        {"at": txn.at},
    )
    txn.conn.execute(
        text(
            "INSERT INTO missions (id, workspace, state, version, attempt, created_at, "
            "updated_at, data, turn_id, lane, role, number) VALUES ('m1', 'w', 'queued', 1, 0, "
            ":at, :at, '{}', 't1', 'sim', 'primary', 1)"
        ),
        {"at": txn.at},
    )


def _in_writer(database: str, op: Callable[[WriteTxn], T]) -> T:
    async def main() -> T:
        db = await open_database(database)
        try:
            async with Writer(db) as writer:
                await writer.submit(_seed)
                return await writer.submit(op)
        finally:
            await db.dispose()

    return run(main())


def _entries(database: str, subject: str) -> list[tuple[str, str, str, int]]:
    return [
        (e["action"], e["from_state"], e["to_state"], e["payload"]["version"])
        for e in Store(database).ledger(subject=subject)
    ]


def test_a_stale_version_moves_nothing_and_records_nothing(database: str) -> None:
    def op(txn: WriteTxn) -> tuple[bool, bool]:
        stale = move_mission(txn, "w", "m1", "queued", "cancelled", 7, "tester")
        fresh = move_mission(txn, "w", "m1", "queued", "cancelled", 1, "tester")
        return stale, fresh

    assert _in_writer(database, op) == (False, True)
    assert _entries(database, "m1") == [("mission.cancelled", "queued", "cancelled", 2)]
    [mission] = Store(database).rows("SELECT state, version FROM missions WHERE id = 'm1'")
    assert mission == {"state": "cancelled", "version": 2}


def test_a_move_the_table_forbids_raises_before_writing(database: str) -> None:
    def op(txn: WriteTxn) -> None:
        move(
            txn, Kind.MISSION, "m1", "queued", "completed", workspace="w", actor="tester",
            version=1,
        )  # fmt: skip

    with pytest.raises(IllegalTransition):
        _in_writer(database, op)
    assert _entries(database, "m1") == []
    [mission] = Store(database).rows("SELECT state, version FROM missions WHERE id = 'm1'")
    assert mission == {"state": "queued", "version": 1}


def test_a_lease_fenced_move_needs_the_holder_and_returns_the_new_version(database: str) -> None:
    def op(txn: WriteTxn) -> tuple[int | None, int | None, int | None]:
        def block(lease: tuple[int, str]) -> int | None:
            return move(
                txn, Kind.TURN, "t1", "running", "awaiting_approval", workspace="w",
                actor=lease[1], version=None, lease=lease,
            )  # fmt: skip

        return block((1, "node-b")), block((2, "node-a")), block((1, "node-a"))

    assert _in_writer(database, op) == (None, None, 4)
    assert _entries(database, "t1") == [
        ("turn.awaiting_approval", "running", "awaiting_approval", 4)
    ]
