"""Ids as people write them: the short form every table shows, and the store's resolver that
finds an item by its full id, its short form or a unique prefix of its id (with or without
dashes), within the workspaces the caller may read — on a real SQLite file and on PostgreSQL."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conftest import Store, is_postgres, run

from quarterdeck.domain.ids import AmbiguousId, IdMatch, UnknownId, id_query, new_ids, short_id
from quarterdeck.store.database import open_database
from quarterdeck.store.queries.ids import CANDIDATES_SHOWN, find_ids, resolve_id
from quarterdeck.tui.cells import short

AT = "2030-01-01T00:00:00.000000Z"
_workspaces = itertools.count()


def test_the_short_form_is_what_the_console_draws() -> None:
    ids = new_ids(3)
    assert [short_id(i) for i in ids] == [short(i) for i in ids]
    assert short_id("01a24995-d445-7c2e-bafa-b64900000002") == "b6490002"
    assert len({short_id(i) for i in ids}) == 3  # one batch: told apart by the counter
    assert short_id(None) == short_id("") == "-"


def test_a_typed_id_is_read_without_case_or_dashes() -> None:
    full = "01a24995-d445-7c2e-bafa-b64900000002"
    assert id_query(full.upper()).prefix == full and id_query(full).complete
    assert id_query(full.replace("-", "")).prefix == full
    assert id_query("01a24995d4").prefix == "01a24995-d4"
    assert id_query(" b6490002 ").short == "b6490002"
    assert id_query("no-such-id").prefix is None
    with pytest.raises(ValueError):
        id_query("  ")


def _uuid(digits: str) -> str:
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


# Ids from a two-letter alphabet share prefixes and short forms often: ambiguity is common.
ids_strategy = st.lists(
    st.text("0a", min_size=32, max_size=32).map(_uuid), min_size=1, max_size=8, unique=True
)


def _expected(typed: str, ids: list[str]) -> set[str]:
    """What the resolver must find, said plainly: ids that begin with the typed digits, or
    whose short form they are."""
    digits = typed.lower().replace("-", "")
    return {i for i in ids if i.replace("-", "").startswith(digits) or short_id(i) == digits}


@pytest.fixture
def resolver_db(database: str) -> str:
    async def create() -> None:
        db = await open_database(database)
        await db.dispose()

    run(create())
    return database


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ids=ids_strategy, data=st.data())
def test_full_ids_short_forms_and_unique_prefixes_resolve(
    resolver_db: str, ids: list[str], data: st.DataObject
) -> None:
    """A full id, its short form and any unique prefix resolve to it; an ambiguous one never
    resolves and lists every candidate; nothing outside the caller's workspaces is found."""
    workspace, other = f"ws{next(_workspaces)}", f"ws{next(_workspaces)}"
    store = Store(resolver_db)
    try:
        for item_id in ids:
            store.execute(
                "INSERT INTO alerts (id, workspace, state, version, attempt, created_at,"
                " updated_at, data) VALUES (?, ?, 'open', 1, 0, ?, ?, '{}')",
                item_id, workspace, AT, AT,
            )  # fmt: skip
        run(_check(resolver_db, ids, workspace, other, data))
    finally:  # ids are unique across workspaces: the next example may draw the same ones
        store.execute("DELETE FROM alerts WHERE workspace IN (?, ?)", workspace, other)


async def _check(url: str, ids: list[str], workspace: str, other: str, data: st.DataObject) -> None:
    target = data.draw(st.sampled_from(ids))
    cut = data.draw(st.integers(1, 36))
    dashed = data.draw(st.booleans())
    prefix = target[:cut] if dashed else target.replace("-", "")[:cut]
    prefix = prefix if prefix.strip("-") else target[0]
    db = await open_database(url)
    try:
        for text in (target, target.replace("-", "").upper(), short_id(target), prefix):
            expected = _expected(text, ids)
            assert target in expected
            if len(expected) == 1:
                match = await resolve_id(db, text, workspaces={workspace})
                assert match == IdMatch(target, "alert", workspace)
            else:
                with pytest.raises(AmbiguousId) as raised:
                    await resolve_id(db, text, workspaces={workspace})
                listed = {m.id for m in raised.value.candidates}
                assert listed == expected if len(expected) <= CANDIDATES_SHOWN else listed
                assert all(i in raised.value.message for i in listed)
            with pytest.raises(UnknownId, match=repr(text.strip())):
                await resolve_id(db, text, workspaces={other})
            assert await find_ids(db, text, kinds=("turn", "approval")) == []
    finally:
        await db.dispose()


def test_an_unknown_id_is_named(resolver_db: str) -> None:
    async def check() -> None:
        db = await open_database(resolver_db)
        try:
            for typed in ("no-such-id", "ffffffff", "0" * 32):
                with pytest.raises(UnknownId, match=typed):
                    await resolve_id(db, typed, what="approval")
        finally:
            await db.dispose()

    run(check())


def test_the_resolver_reads_indexes(resolver_db: str) -> None:
    """A short form reads its index and a prefix the primary key's, never the whole table (on
    SQLite, which plans without statistics; PostgreSQL's plans depend on them)."""
    if is_postgres(resolver_db):
        names = {
            r["indexname"] for r in Store(resolver_db).rows("SELECT indexname FROM pg_indexes")
        }
    else:
        with sqlite3.connect(Path(resolver_db)) as conn:
            names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            plans = [
                " ".join(str(row[3]) for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", args))
                for sql, args in [
                    ("SELECT id, workspace FROM turns WHERE substr(id, 25, 4) || substr(id, 33, 4)"
                     " = ? AND +workspace IN (?, ?) ORDER BY id LIMIT 11", ("a", "b", "c")),
                    ("SELECT id, workspace FROM turns WHERE id >= ? AND id < ?"
                     " AND +workspace IN (?, ?) ORDER BY id LIMIT 11", ("a", "b", "c", "d")),
                ]
            ]  # fmt: skip
        assert "USING INDEX ix_turns_short" in plans[0], plans
        assert "USING INDEX sqlite_autoindex_turns_1 (id>? AND id<?)" in plans[1], plans
    for table in ("receipts", "turns", "missions", "sessions", "approvals", "alerts"):
        assert f"ix_{table}_short" in names
