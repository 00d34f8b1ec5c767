"""Duplicates of keys this process saw committed skip the insert attempt; answers are the same."""

from __future__ import annotations

import pytest
from tests.conftest import envelope, line, run

from quarterdeck.runtime.ingest import Ingestor
from quarterdeck.store.database import open_database
from quarterdeck.store.ledger import verify_ledger
from quarterdeck.store.queries import status
from quarterdeck.store.receipts import KnownKeys
from quarterdeck.store.writer import Writer, WriterClosed

BATCH = [
    line(envelope(1)),
    line(envelope(2, payload={"objective": "other"})),
    b"{broken",
]
AGAIN = [
    line(envelope(1)),  # a true redelivery
    line(envelope(2, payload={"objective": "changed"})),  # the key reused for other content
    b"{broken",  # the same bad line
]


def _answers(results: list) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(r.status, r.receipt, tuple(e.split(":")[0] for e in r.errors)) for r in results]


def test_cached_and_database_answers_agree(database: str) -> None:
    async def main() -> None:
        db = await open_database(database)
        async with Writer(db) as writer:
            warm = Ingestor(writer)
            first = await warm.ingest(BATCH)
            assert warm.known.get(("acme", "key:key-1")) is not None
            from_cache = await warm.ingest(AGAIN)
            from_database = await Ingestor(writer).ingest(AGAIN)  # a fresh process's view
        assert _answers(from_cache) == _answers(from_database)
        assert [r.receipt for r in from_cache] == [r.receipt for r in first]
        assert [r.status for r in from_cache] == ["duplicate", "duplicate", "rejected"]
        assert from_cache[1].errors and "different content" in from_cache[1].errors[0]
        counts = await status(db, "acme")
        assert counts["receipts"] == {"accepted": 2, "duplicate": 4, "rejected": 0}
        assert (await verify_ledger(db)).ok
        await db.dispose()

    run(main())


def test_only_committed_operations_teach_keys(database: str) -> None:
    async def main() -> None:
        db = await open_database(database)
        writer = Writer(db)
        writer.start()
        ingestor = Ingestor(writer)
        await writer.stop()
        with pytest.raises(WriterClosed):
            await ingestor.ingest([line(envelope(9))])
        assert ingestor.known.get(("acme", "key:key-9")) is None
        await db.dispose()

    run(main())


def test_known_keys_forget_the_least_recent() -> None:
    known = KnownKeys(capacity=2)
    known.learn({("w", "key:0"): object(), ("w", "key:1"): object()})  # type: ignore[dict-item]
    assert known.get(("w", "key:0")) is not None  # now the most recent
    known.learn({("w", "key:2"): object()})  # type: ignore[dict-item]
    assert known.get(("w", "key:1")) is None
    assert known.get(("w", "key:0")) is not None and known.get(("w", "key:2")) is not None
