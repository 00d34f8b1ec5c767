"""The ledger is append-only in the database itself (schema step 7): on SQLite and PostgreSQL,
triggers refuse to change or remove ledger entries and checkpoints and to move the head back,
with a clear message, while appends go on; and on PostgreSQL the nodes can run as the
insert-only role ``docs/deploy.md`` describes, which cannot even drop the triggers."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, RawConnection, Store, is_postgres, quarterdeck, run
from quarterdeck.domain.states import Kind
from quarterdeck.store.database import open_database
from quarterdeck.store.items import create_item
from quarterdeck.store.ledger import verify_ledger
from quarterdeck.store.writer import Writer

CHECKPOINT_ROW = {
    "hash": "a" * 64, "seq": 1, "head": "b" * 64, "at": "2030-01-01T00:00:00.000000Z",
    "node": "node-x", "prev": "0" * 64, "key_id": "c" * 32, "signature": "d" * 128,
}  # fmt: skip


def _write_entries(url: str, count: int) -> int:
    async def go() -> int:
        db = await open_database(url)
        try:
            async with Writer(db) as writer:
                for _ in range(count):
                    await writer.submit(
                        lambda txn: create_item(txn, Kind.ALERT, workspace="acme", actor="t")
                    )
            result = await verify_ledger(db)
            assert result.ok, result
            return result.entries
        finally:
            await db.dispose()

    return run(go())


def _refused(raw: RawConnection, sql: str, *args: object) -> str:
    """Run ``sql``; it must fail. Return the database's message."""
    with pytest.raises(Exception) as caught:
        raw.execute(sql, *args)
    return str(caught.value)


def test_ledger_rows_cannot_be_changed_or_removed(database: str):
    entries = _write_entries(database, 3)
    store = Store(database)
    columns = ", ".join(CHECKPOINT_ROW)
    store.execute(
        f"INSERT INTO ledger_checkpoints ({columns}) VALUES ({', '.join('?' * len(CHECKPOINT_ROW))})",
        *CHECKPOINT_ROW.values(),
    )
    before = store.rows("SELECT * FROM ledger ORDER BY seq")
    head = store.one("SELECT seq, hash FROM ledger_head")
    assert head is not None and head["seq"] == entries
    raw = RawConnection(database)
    try:
        cases = [
            ("UPDATE ledger SET actor = 'mallory' WHERE seq = 2", "ledger is append-only: UPDATE refused"),
            ("UPDATE ledger SET seq = seq + 100", "ledger is append-only: UPDATE refused"),
            ("DELETE FROM ledger WHERE seq = 3", "ledger is append-only: DELETE refused"),
            ("DELETE FROM ledger", "ledger is append-only: DELETE refused"),
            ("UPDATE ledger_checkpoints SET head = 'x'", "ledger_checkpoints is append-only: UPDATE refused"),
            ("DELETE FROM ledger_checkpoints", "ledger_checkpoints is append-only: DELETE refused"),
            ("UPDATE ledger_head SET seq = seq - 1", "the ledger head only moves forward: UPDATE refused"),
            ("UPDATE ledger_head SET hash = 'x'", "the ledger head only moves forward: UPDATE refused"),
            ("DELETE FROM ledger_head", "the ledger head only moves forward: DELETE refused"),
        ]  # fmt: skip
        if is_postgres(database):
            cases += [
                ("TRUNCATE ledger", "ledger is append-only: TRUNCATE refused"),
                ("TRUNCATE ledger_checkpoints", "ledger_checkpoints is append-only: TRUNCATE refused"),
                ("TRUNCATE ledger_head", "the ledger head only moves forward: TRUNCATE refused"),
            ]  # fmt: skip
        for sql, message in cases:
            assert message in _refused(raw, sql), sql
    finally:
        raw.close()
    assert store.rows("SELECT * FROM ledger ORDER BY seq") == before
    assert store.one("SELECT seq, hash FROM ledger_head") == head
    assert store.value("SELECT count(*) FROM ledger_checkpoints") == 1
    # appending goes on, and the head moves forward
    assert _write_entries(database, 2) == entries + 2


def test_downgrading_step_7_lifts_the_refusals_and_upgrading_restores_them(
    database: str, tmp_path: Path
):
    _write_entries(database, 2)
    state = tmp_path / "cli-state"

    def db(*args: str) -> dict[str, object]:
        result = quarterdeck("--db", database, "db", *args, state_dir=state)
        assert result.returncode == 0, result.stderr.decode()
        return dict(json.loads(result.stdout))

    assert db("downgrade", "--to", "6")["steps"][-1] == 7  # later steps come off first
    Store(database).execute("UPDATE ledger SET actor = actor WHERE seq = 1")
    assert db("upgrade")["steps"][0] == 7
    raw = RawConnection(database)
    try:
        assert "append-only" in _refused(raw, "UPDATE ledger SET actor = actor WHERE seq = 1")
    finally:
        raw.close()


# --- the insert-only role of docs/deploy.md ----------------------------------------------------


def _deploy_sql() -> tuple[str, str]:
    """The two SQL blocks of the insert-only role section: the superuser's, the owner's."""
    text = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    section = text.split("### An insert-only role for the nodes", 1)[1].split("\n## ", 1)[0]
    first, second = re.findall(r"```sql\n(.*?)```", section, re.S)
    return first, second


def _statements(block: str, names: dict[str, str]) -> list[str]:
    for old, new in names.items():
        block = re.sub(rf"\b{old}\b", new, block)
    return [s.strip() for s in block.split(";") if s.strip()]


def test_nodes_work_as_the_insert_only_role_which_cannot_touch_the_ledger(
    pg_cluster: Any, tmp_path: Path
):
    import psycopg

    suffix = tmp_path.name.replace("-", "_").lower()[-20:]
    owner, node, name = f"qd_owner_{suffix}", f"qd_node_{suffix}", f"qd_role_{suffix}"
    names = {"quarterdeck_owner": owner, "quarterdeck_node": node, "quarterdeck": name}
    superuser_block, owner_block = _deploy_sql()
    admin_url = pg_cluster.url()
    with psycopg.connect(admin_url, autocommit=True) as admin:
        for statement in _statements(superuser_block, names):
            admin.execute(statement)
    base = admin_url.rsplit("@", 1)[1].rsplit("/", 1)[0]
    owner_url = f"postgresql://{owner}@{base}/{name}"
    node_url = f"postgresql://{node}@{base}/{name}"
    state = tmp_path / "state"
    upgraded = quarterdeck("--db", owner_url, "db", "upgrade", state_dir=state)
    assert upgraded.returncode == 0, upgraded.stderr.decode()
    with psycopg.connect(owner_url, autocommit=True) as conn:
        for statement in _statements(owner_block, names):
            conn.execute(statement)

    # real work as the node role: ingest, a daemon run to idle, checkpoints, verification
    lines = "".join(
        json.dumps({"idempotency_key": f"k{i}", "workspace": "default", "kind": "task",
                    "payload": {"objective": f"o{i}"}}) + "\n"
        for i in range(5)
    ).encode()  # fmt: skip
    submitted = quarterdeck("--db", node_url, "submit", "-", stdin=lines, state_dir=state)
    assert submitted.returncode == 0, submitted.stderr.decode()
    ran = quarterdeck("--db", node_url, "run", "--headless", "--until-idle", state_dir=state)
    assert ran.returncode == 0, ran.stderr.decode()[-3000:]
    verified = quarterdeck(
        "--db", node_url, "ledger", "verify", "--json", "--checkpoints",
        str(state / "ledger-checkpoints.jsonl"), state_dir=state,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout
    assert json.loads(verified.stdout)["checkpoints"] >= 1
    assert Store(node_url).value("SELECT count(*) FROM turns WHERE state = 'completed'") >= 1

    raw = RawConnection(node_url)
    try:
        for sql in (
            "UPDATE ledger SET actor = 'mallory' WHERE seq = 1",
            "DELETE FROM ledger",
            "TRUNCATE ledger",
            "DELETE FROM ledger_checkpoints",
            "DELETE FROM ledger_head",
        ):
            assert "permission denied" in _refused(raw, sql), sql
        for sql in (
            "DROP TRIGGER qd_ledger_append_only ON ledger",
            "ALTER TABLE ledger DISABLE TRIGGER ALL",
            "DROP FUNCTION qd_append_only() CASCADE",
        ):
            assert "must be owner" in _refused(raw, sql), sql
        assert "only moves forward" in _refused(raw, "UPDATE ledger_head SET seq = 0")
    finally:
        raw.close()
    # the owner is refused by the triggers too (it could drop them: keep its password away)
    raw = RawConnection(owner_url)
    try:
        assert "append-only" in _refused(raw, "DELETE FROM ledger")
    finally:
        raw.close()
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.execute(f"DROP ROLE {node}")
        admin.execute(f"DROP ROLE {owner}")
