"""Shared and exclusive write transactions on PostgreSQL (``Writer.submit(concurrent=...)``).

Two writers in one process stand for two nodes: each has its own connections. An operation
holds its transaction open with ``pg_sleep`` so the other's can be seen running beside it, or
waiting for it. Whatever overlaps, the ledger stays one gap-free chain whose times never go
backwards along ``seq``. A command receipt met by a shared apply is applied exclusively."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text
from tests.conftest import run
from tests.pgcluster import PgCluster

from quarterdeck.domain.authority import Kind, Principal, Roster
from quarterdeck.runtime.ingest import Ingestor
from quarterdeck.store.apply import apply_receipts
from quarterdeck.store.database import Database, open_database
from quarterdeck.store.ledger import iter_entries, verify_ledger
from quarterdeck.store.plan import LanePlan, WorkPlan
from quarterdeck.store.writer import ExclusiveRequired, Writer, WriteTxn

HOLD_S = 0.6


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> Iterator[str]:
    url = pg_cluster.create_database()
    try:
        yield url
    finally:
        pg_cluster.drop_database(url)


def note(name: str, hold_s: float = 0.0, *, decide: bool = False) -> Any:
    """An operation that (optionally takes the deciders' lock, then) holds its transaction
    ``hold_s`` seconds and appends one entry; it returns (name, exclusive, when it began)."""

    def op(txn: WriteTxn) -> tuple[str, bool, float]:
        began = time.monotonic()
        if decide:
            txn.lock_decisions()
        if hold_s:
            txn.conn.execute(text("SELECT pg_sleep(:s)"), {"s": hold_s})
        txn.ledger.append(
            at=txn.at, workspace="w", actor=name, action="test.noted", subject_type="test",
            subject_id=name,
        )  # fmt: skip
        return name, txn.exclusive, began

    return op


async def finished_order(db: Database, first: Any, second: Any, gap_s: float = 0.15) -> list[str]:
    """Submit ``first`` (on one writer), then ``second`` (on another) ``gap_s`` later; the
    names in the order their submissions returned."""
    done: list[str] = []
    async with Writer(db) as one, Writer(db) as two:

        async def go(writer: Writer, op: Any, concurrent: bool, delay: float) -> None:
            await asyncio.sleep(delay)
            name, _exclusive, _began = await writer.submit(op, concurrent=concurrent)
            done.append(name)

        await asyncio.gather(go(one, *first, 0.0), go(two, *second, gap_s))
    return done


async def chain_checked(db: Database) -> list[dict[str, Any]]:
    """The ledger's entries, after checking it verifies and its times never go back."""
    assert (await verify_ledger(db)).ok
    entries = [entry async for entry in iter_entries(db)]
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    assert [e["at"] for e in entries] == sorted(e["at"] for e in entries)
    return entries


def test_shared_transactions_overlap_and_chain_in_commit_order(pg_url: str) -> None:
    async def main() -> None:
        db = await open_database(pg_url)
        try:
            # The slow one started first and holds its transaction; the quick one is not held
            # up by it, commits first and takes seq 1.
            order = await finished_order(db, (note("slow", HOLD_S), True), (note("quick"), True))
            assert order == ["quick", "slow"]
            entries = await chain_checked(db)
            assert [e["actor"] for e in entries] == ["quick", "slow"]
            # "slow" began first, so its own time is earlier: it takes the time of the entry
            # it follows instead of going back.
            assert entries[1]["at"] == entries[0]["at"]
        finally:
            await db.dispose()

    run(main())


@pytest.mark.parametrize(
    ("first_concurrent", "second_concurrent"), [(False, True), (True, False), (False, False)]
)
def test_an_exclusive_transaction_runs_alone(
    pg_url: str, first_concurrent: bool, second_concurrent: bool
) -> None:
    async def main() -> None:
        db = await open_database(pg_url)
        try:
            order = await finished_order(
                db, (note("first", HOLD_S), first_concurrent), (note("second"), second_concurrent)
            )
            assert order == ["first", "second"]
            assert [e["actor"] for e in await chain_checked(db)] == ["first", "second"]
        finally:
            await db.dispose()

    run(main())


def test_deciders_in_shared_transactions_take_turns(pg_url: str) -> None:
    async def main() -> None:
        db = await open_database(pg_url)
        try:
            order = await finished_order(
                db,
                (note("first", HOLD_S, decide=True), True),
                (note("second", decide=True), True),
            )
            assert order == ["first", "second"]
            await chain_checked(db)
        finally:
            await db.dispose()

    run(main())


def test_an_operation_may_ask_to_run_exclusively(pg_url: str) -> None:
    runs: list[bool] = []

    def needs_exclusion(txn: WriteTxn) -> str:
        runs.append(txn.exclusive)
        txn.ledger.append(at=txn.at, workspace="w", actor="t", action="test.tried",
                          subject_type="test", subject_id=str(len(runs)))  # fmt: skip
        if not txn.exclusive:
            raise ExclusiveRequired("this one needs the database to itself")
        return "done"

    async def main() -> None:
        db = await open_database(pg_url)
        try:
            async with Writer(db) as writer:
                results = await asyncio.gather(
                    writer.submit(needs_exclusion, concurrent=True),
                    writer.submit(note("beside"), concurrent=True),
                )
            assert results[0] == "done"
            assert results[1][:2] == ("beside", False)
            assert runs == [False, True]
            # The shared attempt's entry went with its savepoint; the exclusive run's stands.
            entries = await chain_checked(db)
            assert sorted(e["action"] for e in entries) == ["test.noted", "test.tried"]
        finally:
            await db.dispose()

    run(main())


def test_many_shared_writers_keep_one_chain(pg_url: str) -> None:
    async def main() -> None:
        db = await open_database(pg_url)
        try:
            writers = [Writer(db) for _ in range(4)]
            for writer in writers:
                writer.start()
            await asyncio.gather(
                *(
                    writer.submit(note(f"{w}-{i}", 0.01 * (i % 3)), concurrent=i % 5 != 0)
                    for i in range(40)
                    for w, writer in enumerate(writers)
                )
            )
            for writer in writers:
                await writer.stop()
            entries = await chain_checked(db)
            assert len(entries) == 160
            assert len({e["actor"] for e in entries}) == 160
        finally:
            await db.dispose()

    run(main())


def test_a_command_receipt_is_applied_exclusively(pg_url: str) -> None:
    plan = WorkPlan(
        lanes={"sim": LanePlan("sim", None, 3, 0.1, 1.0)},
        default_lane="sim",
        hold_s=60,
        roster=Roster.default("ops"),
    )
    seen: list[bool] = []
    given: dict[str, Principal] = {}
    """The pause's receipt and who gives it (as the runtime passes them when it is given)."""

    def apply(txn: WriteTxn) -> list[str]:
        seen.append(txn.exclusive)
        return [a.produced_type for a in apply_receipts(txn, plan, principals=given)]

    def task(key: str) -> dict[str, Any]:
        return {"idempotency_key": key, "workspace": "w", "kind": "task",
                "payload": {"lane": "sim", "objective": key, "input": {}}}  # fmt: skip

    pause = {"idempotency_key": "pause", "workspace": "w", "kind": "command",
             "payload": {"command": "lane.pause", "lane": "sim"}}  # fmt: skip

    async def main() -> None:
        db = await open_database(pg_url)
        try:
            async with Writer(db) as writer:
                results = await Ingestor(writer).ingest([task("t1"), pause, task("t2")])
                assert [r.status for r in results] == ["accepted"] * 3
                given[results[1].receipt] = Principal(Kind.SUPERVISOR, "ops")
                # A shared apply stops before the command...
                assert await writer.submit(apply, concurrent=True) == ["turn"]
                # ...and the next, meeting the command first, runs again exclusively.
                assert await writer.submit(apply, concurrent=True) == ["command", "turn"]
                assert seen == [False, False, True]
                assert await writer.submit(apply, concurrent=True) == []
            async with db.read() as conn:
                paused = (
                    await conn.execute(text("SELECT paused FROM lane_flags WHERE lane = 'sim'"))
                ).scalar()
            assert paused == 1
            await chain_checked(db)
        finally:
            await db.dispose()

    run(main())
