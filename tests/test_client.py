"""The SDK submits from its own process into the same durable receipts."""

from __future__ import annotations

import pytest
from tests.conftest import envelope, run

from quarterdeck.client import Client
from quarterdeck.store.database import open_database
from quarterdeck.store.ledger import verify_ledger
from quarterdeck.store.queries import status


def test_client_submits_and_dedupes(database: str) -> None:
    async def main() -> None:
        async with Client(database) as client:
            first = await client.submit([envelope(1), envelope(2), b"{oops"])
            again = await client.submit([envelope(1)])
        assert [r.status for r in first] == ["accepted", "accepted", "rejected"]
        assert again[0].status == "duplicate" and again[0].receipt == first[0].receipt
        db = await open_database(database)
        counts = await status(db, "acme")
        assert counts["receipts"] == {"accepted": 2, "duplicate": 1, "rejected": 0}
        assert (await verify_ledger(db)).ok
        await db.dispose()

    run(main())


def test_closed_client_refuses() -> None:
    async def main() -> None:
        with pytest.raises(RuntimeError, match="not open"):
            await Client("unused.db").submit([envelope(1)])

    run(main())
