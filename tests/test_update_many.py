"""``WriteTxn.update_many`` counts exactly and keeps one-row-at-a-time semantics on both
databases, on each of its paths: row by row, the pipelined executemany (PostgreSQL), and a
set-based ``postgres`` form, which is only used when the rows' keys are distinct."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text
from tests.conftest import Store, run

from quarterdeck.store.database import open_database
from quarterdeck.store.sql import Bulk
from quarterdeck.store.writer import Writer, WriteTxn

BUMP = text("UPDATE counters SET value = value + 1 WHERE name = :id AND value = :value")
BUMP_SET = text(
    "WITH changed AS (UPDATE counters AS c SET value = c.value + 1 FROM unnest("
    "CAST(:id AS TEXT[]), CAST(:value AS INTEGER[])) AS r(id, value) "
    "WHERE c.name = r.id AND c.value = r.value RETURNING 1) SELECT COUNT(*) FROM changed"
)
NAMES = [f"c{i}" for i in range(8)]


def _apply(database: str, rows: list[dict[str, Any]], **kwargs: Any) -> int:
    """Seed every counter at 0, then run ``update_many`` in one write transaction."""

    def seed(txn: WriteTxn) -> None:
        txn.conn.execute(
            text("INSERT INTO counters (name, value) VALUES (:n, 0)"), [{"n": n} for n in NAMES]
        )

    async def main() -> int:
        db = await open_database(database)
        try:
            async with Writer(db) as writer:
                await writer.submit(seed)
                bulk = Bulk(BUMP, kwargs.get("postgres"))
                return await writer.submit(lambda txn: txn.update_many(bulk, rows))
        finally:
            await db.dispose()

    return run(main())


def _values(database: str) -> dict[str, int]:
    return {str(r["name"]): int(r["value"]) for r in Store(database).rows("SELECT * FROM counters")}


@pytest.mark.parametrize("size", [2, 6])
@pytest.mark.parametrize("set_based", [False, True])
def test_counts_only_the_rows_that_matched(database: str, size: int, set_based: bool) -> None:
    # Every other row names a value the counter does not have: it changes nothing.
    rows = [{"id": NAMES[i], "value": 0 if i % 2 == 0 else 5} for i in range(size)]
    kwargs = {"postgres": BUMP_SET} if set_based else {}
    assert _apply(database, rows, **kwargs) == size // 2
    values = _values(database)
    assert [values[NAMES[i]] for i in range(size)] == [1 - i % 2 for i in range(size)]
    assert all(values[name] == 0 for name in NAMES[size:])


@pytest.mark.parametrize("set_based", [False, True])
def test_rows_run_in_order_each_seeing_the_last(database: str, set_based: bool) -> None:
    # One counter named four times: one at a time, each row matches what the previous one
    # left (0->1->2->3->4). A single set-based UPDATE would change it once, so repeated keys
    # must not take the ``postgres`` form.
    rows = [{"id": "c0", "value": v} for v in range(4)] + [{"id": "c1", "value": 0}]
    kwargs = {"postgres": BUMP_SET} if set_based else {}
    assert _apply(database, rows, **kwargs) == 5
    values = _values(database)
    assert (values["c0"], values["c1"]) == (4, 1)
