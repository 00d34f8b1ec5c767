"""The group-commit writer: batching, isolation of failing operations, ledger atomicity."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import text
from tests.conftest import run

from quarterdeck.domain.states import IllegalTransition, Kind
from quarterdeck.store.database import WAL_CHECKPOINT_COMMITS, open_database
from quarterdeck.store.items import create_item, transition
from quarterdeck.store.ledger import iter_entries, verify_ledger
from quarterdeck.store.writer import Writer, WriterClosed, WriteTxn


def test_concurrent_operations_share_commits(database: str) -> None:
    async def main() -> tuple[int, int, bool]:
        db = await open_database(database)
        async with Writer(db) as writer:
            created = await asyncio.gather(
                *(
                    writer.submit(
                        lambda txn: create_item(txn, Kind.ALERT, workspace="w", actor="test")
                    )
                    for _ in range(200)
                )
            )
            assert len({c.id for c in created}) == 200
            commits = writer.commits
        entries = [entry async for entry in iter_entries(db)]
        assert [e["seq"] for e in entries] == list(range(1, 201))
        assert {e["subject_id"] for e in entries} == {c.id for c in created}
        ok = (await verify_ledger(db)).ok
        await db.dispose()
        return commits, len(created), ok

    commits, count, ok = run(main())
    assert ok
    assert commits < count


def test_failing_operation_rolls_back_alone(database: str) -> None:
    async def main() -> None:
        db = await open_database(database)
        async with Writer(db) as writer:
            alert = await writer.submit(
                lambda txn: create_item(txn, Kind.ALERT, workspace="w", actor="t")
            )

            def half_done(txn: WriteTxn) -> None:
                txn.ledger.append(
                    at=txn.at,
                    workspace="w",
                    actor="t",
                    action="x",
                    subject_type="x",
                    subject_id="x",
                )
                txn.conn.execute(text("UPDATE alerts SET state = 'acked'"))
                raise RuntimeError("boom")

            results = await asyncio.gather(
                writer.submit(half_done),
                writer.submit(lambda txn: create_item(txn, Kind.ALERT, workspace="w", actor="t")),
                writer.submit(
                    lambda txn: transition(
                        txn,
                        Kind.ALERT,
                        alert.id,
                        "open",
                        workspace="w",
                        actor="t",
                        expected_version=1,
                    )
                ),
                return_exceptions=True,
            )
            assert isinstance(results[0], RuntimeError)
            assert not isinstance(results[1], BaseException)
            assert isinstance(results[2], IllegalTransition)
        async with db.read() as conn:
            states = (await conn.execute(text("SELECT state FROM alerts"))).scalars().all()
            actions = (
                (await conn.execute(text("SELECT action FROM ledger ORDER BY seq"))).scalars().all()
            )
        assert states == ["open", "open"]
        assert actions == ["alert.created", "alert.created"]
        assert (await verify_ledger(db)).ok
        await db.dispose()

    run(main())


def test_submit_after_stop_is_refused(database: str) -> None:
    async def main() -> None:
        db = await open_database(database)
        writer = Writer(db)
        writer.start()
        await writer.stop()
        with pytest.raises(WriterClosed):
            await writer.submit(lambda txn: None)
        await db.dispose()

    run(main())


def test_two_writers_on_one_file_keep_one_chain(database: str) -> None:
    """Two writers (as two processes would be) interleave; the head moves under each."""

    async def main() -> None:
        first_db = await open_database(database)
        second_db = await open_database(database)
        async with Writer(first_db) as first, Writer(second_db) as second:
            for _ in range(20):
                await first.submit(lambda t: create_item(t, Kind.ALERT, workspace="w", actor="a"))
                await second.submit(lambda t: create_item(t, Kind.ALERT, workspace="w", actor="b"))
        result = await verify_ledger(first_db)
        assert result.ok and result.entries == 40
        await first_db.dispose()
        await second_db.dispose()

    run(main())


def test_commit_listeners_hear_the_head(database: str) -> None:
    async def main() -> list[int]:
        db = await open_database(database)
        heard: list[int] = []
        async with Writer(db) as writer:
            writer.on_commit(heard.append)
            await writer.submit(lambda t: create_item(t, Kind.ALERT, workspace="w", actor="t"))
            await writer.submit(lambda t: create_item(t, Kind.ALERT, workspace="w", actor="t"))
        await db.dispose()
        return heard

    assert run(main()) == [1, 2]


def test_a_commit_is_quiet_only_when_all_its_operations_are(database: str) -> None:
    """Quiet operations make a quiet commit unless one of them stirred the transaction; one
    operation that is not quiet in the same group commit makes it loud."""

    def alert(txn: WriteTxn) -> None:
        create_item(txn, Kind.ALERT, workspace="w", actor="t")

    def stirring(txn: WriteTxn) -> None:
        alert(txn)
        txn.stirred = True

    async def main() -> list[bool]:
        db = await open_database(database)
        heard: list[bool] = []
        async with Writer(db) as writer:
            writer.on_commit(lambda _head: heard.append(writer.last_quiet))
            await writer.submit(alert, quiet=True)
            await writer.submit(stirring, quiet=True)
            await writer.submit(alert)
            await asyncio.gather(writer.submit(alert, quiet=True), writer.submit(alert))
            await writer.submit(alert, quiet=True)
        await db.dispose()
        return heard

    assert run(main()) == [True, False, False, False, True]


def test_a_running_writer_checkpoints_the_wal_on_a_thread(tmp_path: Path) -> None:
    """SQLite: while a writer runs, its commits checkpoint nothing themselves; it copies the WAL
    into the database file every so many commits, off the event loop."""
    path = tmp_path / "q.db"

    async def main() -> tuple[int, int, int, int]:
        db = await open_database(str(path))
        start = path.stat().st_size

        def setting(txn: WriteTxn) -> int:
            return int(txn.conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one())

        async with Writer(db) as writer:
            inline = await writer.submit(setting)
            for _ in range(WAL_CHECKPOINT_COMMITS + 1):
                await writer.submit(lambda t: create_item(t, Kind.ALERT, workspace="w", actor="t"))
            for _ in range(200):  # the checkpoint runs on a thread
                if path.stat().st_size > start:
                    break
                await asyncio.sleep(0.05)
            grown = path.stat().st_size
        after = await db.run_write(
            lambda conn: int(conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one())
        )
        await db.dispose()
        return start, grown, inline, after

    start, grown, inline, after = run(main())
    assert grown > start
    assert (inline, after) == (0, 1000)
