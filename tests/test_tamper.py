"""Tamper evidence: one changed byte anywhere in a stored ledger entry is found at its seq.

A ledger of a few dozen entries (item creates and transitions, ingest batches; non-ASCII text,
control characters and escapes in the payloads) is built once on a real SQLite file. Each test
works on its own copy; every tamper is made with plain ``sqlite3`` on the file, checked with
:func:`verify_ledger`, then undone (and the undo checked), so that one copy serves many cases.
The tests damage the ledger as someone holding the database would: having dropped the triggers
that refuse changes to ledger rows (:func:`conftest.unguard_ledger`). Those byte-level tests are
about SQLite's file (bytes that are not UTF-8, text retyped as a
BLOB); PostgreSQL refuses such values. The last section damages the same ledger through plain
SQL (payloads, columns, seqs, deleted entries, the head row) on SQLite and on PostgreSQL, and
checks that :func:`verify_ledger` and ``quarterdeck ledger verify --db URL`` name the seq.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Store, envelope, line, quarterdeck, run, unguard_ledger
from quarterdeck.domain.ledger import GENESIS_HASH, LedgerEntry, VerifyResult, make_entry
from quarterdeck.domain.states import Kind
from quarterdeck.runtime.ingest import Ingestor
from quarterdeck.store.database import Database, open_database
from quarterdeck.store.items import create_item, transition
from quarterdeck.store.ledger import verify_ledger
from quarterdeck.store.writer import Writer

TEXT_COLUMNS = (
    "at",
    "workspace",
    "actor",
    "action",
    "subject_type",
    "subject_id",
    "from_state",
    "to_state",
    "payload",
    "prev_hash",
    "hash",
)
QUOTED_COLUMNS = TEXT_COLUMNS[:8]
"""The columns verification quotes as JSON strings."""

NOTE = 'naïve ☃ 🚀 "quoted" \\ back\tslash \x01 \u2028 end'


async def _build(path: Path | str) -> None:
    db = await open_database(str(path))
    async with Writer(db) as writer:
        ingestor = Ingestor(writer)

        async def walk(kind: Kind, workspace: str, *moves: tuple[str, bool]) -> None:
            item = await writer.submit(
                lambda txn: create_item(txn, kind, workspace=workspace, actor="ops-ü✓")
            )
            for i, (state, bump) in enumerate(moves):
                item = await writer.submit(
                    partial(
                        transition,
                        kind=kind,
                        item_id=item.id,
                        to_state=state,
                        workspace=workspace,
                        actor="agent/ß",
                        expected_version=item.version,
                        expected_attempt=item.attempt,
                        bump_attempt=bump,
                        payload={"note": NOTE, "step": i, "nested": {"b": [1, 2.5, None, True]}},
                        # a decided approval names who decided it, as the ledger does
                        fields={"decided_by": "agent/ß"} if state == "approved" else None,
                    )
                )

        await walk(Kind.TURN, "acme", ("leased", True), ("running", False), ("completed", False))
        await ingestor.ingest([line(envelope(i)) for i in range(3)])
        await walk(Kind.MISSION, "équipe-β", ("cancelled", False))
        await ingestor.ingest(
            [
                line(envelope(1)),  # a duplicate
                b"{not json \xff\xfe",
                line(envelope(7, workspace="beta")),
                line(envelope(8, payload={"objective": NOTE})),
            ]
        )
        # Submitted together, so that they share group commits.
        await asyncio.gather(
            walk(Kind.SESSION, "acme", ("active", False), ("paused", False), ("retired", False)),
            walk(Kind.APPROVAL, "acme", ("escalated", False), ("approved", False)),
            walk(Kind.ALERT, "beta", ("acked", False), ("resolved", False)),
            ingestor.ingest([line(envelope(20 + i, workspace="gamma")) for i in range(4)]),
        )
        for i in range(3):
            await walk(Kind.TURN, "acme", ("cancelled", False))
            await ingestor.ingest([line(envelope(40 + i)), b"\x00\x01 binary \x80"])
        await walk(Kind.TURN, "acme", ("leased", True), ("queued", False), ("leased", True))
    result = await verify_ledger(db)
    await db.dispose()
    assert result.ok, result


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pristine") / "quarterdeck.db"
    run(_build(path))
    unguard_ledger(path)
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


@pytest.fixture
def ledger_file(pristine: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "quarterdeck.db"
    shutil.copyfile(pristine, copy)
    return copy


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=10)
    conn.text_factory = bytes
    return conn


def _rows(path: Path) -> list[dict[str, Any]]:
    """Every entry's columns, text as raw bytes."""
    with closing(_connect(path)) as conn:
        cursor = conn.execute("SELECT * FROM ledger ORDER BY seq")
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _stored(conn: sqlite3.Connection, seq: int, column: str) -> tuple[bytes | None, str]:
    value, kind = conn.execute(
        f"SELECT CAST({column} AS BLOB), typeof({column}) FROM ledger WHERE seq = ?", (seq,)
    ).fetchone()
    return value, kind.decode()


def _write_text(conn: sqlite3.Connection, seq: int, column: str, data: bytes) -> None:
    conn.execute(f"UPDATE ledger SET {column} = CAST(? AS TEXT) WHERE seq = ?", (data, seq))
    assert _stored(conn, seq, column) == (data, "text")


def _replaced(data: bytes, position: int, new: int) -> bytes:
    assert data[position] != new
    return data[:position] + bytes([new]) + data[position + 1 :]


def _replacements(old: int) -> list[int]:
    """A spread of new values for one byte: a bit flip, a stray continuation byte, a byte
    never valid in UTF-8, a NUL, a lead byte with no continuation, and printable ASCII."""
    candidates = [old ^ 0x01, 0x80, 0xFF, 0x00, 0xC3, ord("x")]
    return list(dict.fromkeys(c for c in candidates if c != old))


def _positions(data: bytes) -> list[int]:
    """The first and last bytes, the middle, and every byte of the first multi-byte character."""
    chosen = {0, len(data) - 1, len(data) // 2}
    for i, byte in enumerate(data):
        if byte >= 0x80:
            chosen.update(range(i, min(i + 4, len(data))))
            break
    return sorted(chosen)


async def _verify(db: Database) -> VerifyResult:
    return await verify_ledger(db)


def _verify_file(path: Path | str) -> VerifyResult:
    async def go() -> VerifyResult:
        db = await open_database(str(path))
        try:
            return await verify_ledger(db)
        finally:
            await db.dispose()

    return run(go())


def _bad_at(result: VerifyResult, seq: int, what: str) -> None:
    assert not result.ok, f"{what}: not detected"
    assert result.first_bad_seq == seq, f"{what}: reported at {result.first_bad_seq} ({result})"
    assert result.reason


# --- the untampered ledger ---------------------------------------------------------------------


def test_untampered_ledger_verifies(ledger_file: Path):
    rows = _rows(ledger_file)
    assert 30 <= len(rows) <= 80
    actions = {row["action"].decode() for row in rows}
    assert "receipts.recorded" in actions
    assert {"turn.created", "turn.leased", "approval.approved", "alert.resolved"} <= actions
    assert any(row["from_state"] is None for row in rows)
    result = _verify_file(ledger_file)
    assert result.ok, result
    assert result.entries == len(rows)
    assert result.head == rows[-1]["hash"].decode()
    assert [row["seq"] for row in rows] == list(range(1, len(rows) + 1))
    assert rows[0]["prev_hash"].decode() == GENESIS_HASH


def test_empty_ledger_verifies(database: str):
    result = _verify_file(database)
    assert (result.ok, result.entries, result.head) == (True, 0, GENESIS_HASH)


# --- one byte of one column, everywhere --------------------------------------------------------


@pytest.mark.parametrize("column", TEXT_COLUMNS)
def test_one_changed_byte_is_found_at_its_seq(ledger_file: Path, column: str):
    rows = _rows(ledger_file)
    cases = 0

    async def go() -> None:
        nonlocal cases
        db = await open_database(str(ledger_file))
        try:
            with closing(_connect(ledger_file)) as conn:
                for row in rows:
                    seq = row["seq"]
                    original, kind = _stored(conn, seq, column)
                    if original is None:
                        assert kind == "null" and column in ("from_state", "to_state")
                        continue
                    assert kind == "text"
                    for position in _positions(original):
                        for new in _replacements(original[position]):
                            what = (
                                f"seq {seq} {column}[{position}] {original[position]:#x}->{new:#x}"
                            )
                            _write_text(conn, seq, column, _replaced(original, position, new))
                            _bad_at(await _verify(db), seq, what)
                            _write_text(conn, seq, column, original)
                            cases += 1
            assert (await _verify(db)).ok
        finally:
            await db.dispose()

    run(go())
    assert cases >= 4 * len(rows)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_any_changed_byte_is_found_at_its_seq(ledger_file: Path, data: st.DataObject):
    """Hypothesis picks the entry, column, byte and new value; the copy is restored after."""
    with closing(_connect(ledger_file)) as conn:
        last = conn.execute("SELECT max(seq) FROM ledger").fetchone()[0]
        seq = data.draw(st.integers(1, last), label="seq")
        present = [c for c in TEXT_COLUMNS if _stored(conn, seq, c)[0] is not None]
        column = data.draw(st.sampled_from(present), label="column")
        original, _ = _stored(conn, seq, column)
        assert original is not None
        position = data.draw(st.integers(0, len(original) - 1), label="position")
        new = data.draw(
            st.integers(0, 255).filter(lambda b: b != original[position]), label="new byte"
        )
        _write_text(conn, seq, column, _replaced(original, position, new))
        try:
            _bad_at(_verify_file(ledger_file), seq, f"seq {seq} {column}[{position}] -> {new:#x}")
        finally:
            _write_text(conn, seq, column, original)


def _new_seqs(seq: int, last: int) -> Iterator[int]:
    """Values ``seq`` may be changed into that no entry uses: fixed picks below and above the
    range, and every one-character change of its decimal text that parses to such a value."""
    yield from (0, -1, -seq, last + 1, last + seq, 10 * last + 7, 2**63 - 1, -(2**63))
    text = str(seq)
    for i in range(len(text)):
        for char in "0123456789-":
            changed = text[:i] + char + text[i + 1 :]
            try:
                value = int(changed)
            except ValueError:
                continue
            if not 1 <= value <= last:
                yield value
    yield int(text + "0") if int(text + "0") > last else last + 2


def test_changed_seq_is_found_at_its_seq(ledger_file: Path):
    rows = _rows(ledger_file)
    last = len(rows)
    cases = 0

    async def go() -> None:
        nonlocal cases
        db = await open_database(str(ledger_file))
        try:
            with closing(_connect(ledger_file)) as conn:
                for row in rows:
                    seq = row["seq"]
                    for new in dict.fromkeys(_new_seqs(seq, last)):
                        assert not 1 <= new <= last
                        conn.execute("UPDATE ledger SET seq = ? WHERE seq = ?", (new, seq))
                        _bad_at(await _verify(db), seq, f"seq {seq} -> {new}")
                        conn.execute("UPDATE ledger SET seq = ? WHERE seq = ?", (seq, new))
                        cases += 1
            assert (await _verify(db)).ok
        finally:
            await db.dispose()

    run(go())
    assert cases >= 8 * last


# --- whole entries and the head ----------------------------------------------------------------


def _execute(path: Path, sql: str, params: tuple[Any, ...] = ()) -> None:
    with closing(_connect(path)) as conn:
        conn.execute(sql, params)


def _last(path: Path) -> int:
    with closing(_connect(path)) as conn:
        value: int = conn.execute("SELECT max(seq) FROM ledger").fetchone()[0]
    return value


def test_deleting_the_last_entry_is_detected(ledger_file: Path):
    last = _last(ledger_file)
    _execute(ledger_file, "DELETE FROM ledger WHERE seq = ?", (last,))
    _bad_at(_verify_file(ledger_file), last, "last entry deleted")


@pytest.mark.parametrize("where", ["first", "second", "middle", "before last"])
def test_deleting_an_entry_is_detected(ledger_file: Path, where: str):
    last = _last(ledger_file)
    seq = {"first": 1, "second": 2, "middle": last // 2, "before last": last - 1}[where]
    _execute(ledger_file, "DELETE FROM ledger WHERE seq = ?", (seq,))
    _bad_at(_verify_file(ledger_file), seq, f"entry {seq} deleted")


def forged_entry(seq: int, prev_hash: str) -> LedgerEntry:
    """A well-formed entry linked to ``prev_hash`` that no writer made."""
    return make_entry(
        seq=seq,
        prev_hash=prev_hash,
        at="2030-01-01T00:00:00.000000Z",
        workspace="acme",
        actor="mallory",
        action="turn.completed",
        subject_type="turn",
        subject_id="forged",
        from_state="running",
        to_state="completed",
    )


def test_an_entry_appended_beyond_the_head_is_detected(ledger_file: Path):
    """A well-formed next entry that the head does not record."""
    with closing(sqlite3.connect(ledger_file)) as conn:
        seq, head = conn.execute("SELECT seq, hash FROM ledger_head WHERE id = 1").fetchone()
        entry = forged_entry(seq + 1, head)
        conn.execute(
            "INSERT INTO ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                entry.seq,
                entry.at,
                entry.workspace,
                entry.actor,
                entry.action,
                entry.subject_type,
                entry.subject_id,
                entry.from_state,
                entry.to_state,
                entry.payload_json,
                entry.prev_hash,
                entry.hash,
            ),
        )
        conn.commit()
    _bad_at(_verify_file(ledger_file), seq + 1, "entry beyond the head")


def test_changed_head_seq_is_detected(ledger_file: Path):
    last = _last(ledger_file)
    for new, reported in [
        (last - 1, last),  # the last entry lies beyond the head
        (0, 1),
        (1, 2),
        (last + 1, last + 1),  # the head records an entry that is not there
        (last * 10, last + 1),
        (-1, None),
    ]:
        _execute(ledger_file, "UPDATE ledger_head SET seq = ? WHERE id = 1", (new,))
        result = _verify_file(ledger_file)
        if reported is None:
            assert not result.ok, f"head seq {last} -> {new}: not detected"
        else:
            _bad_at(result, reported, f"head seq {last} -> {new}")
    _execute(ledger_file, "UPDATE ledger_head SET seq = ? WHERE id = 1", (last,))
    assert _verify_file(ledger_file).ok


def test_changed_head_hash_byte_is_detected(ledger_file: Path):
    last = _last(ledger_file)
    with closing(_connect(ledger_file)) as conn:
        (original,) = conn.execute("SELECT hash FROM ledger_head WHERE id = 1").fetchone()
    for position in range(len(original)):
        new = ord("0") if original[position] != ord("0") else ord("f")
        changed = _replaced(original, position, new)
        _execute(ledger_file, "UPDATE ledger_head SET hash = CAST(? AS TEXT)", (changed,))
        _bad_at(_verify_file(ledger_file), last, f"head hash[{position}]")
    _execute(ledger_file, "UPDATE ledger_head SET hash = CAST(? AS TEXT)", (original,))
    assert _verify_file(ledger_file).ok


def test_deleted_head_row_is_detected(ledger_file: Path):
    last = _last(ledger_file)
    _execute(ledger_file, "DELETE FROM ledger_head")
    _bad_at(_verify_file(ledger_file), last, "head row deleted")


@pytest.mark.parametrize(
    "column, damage",
    [
        ("hash", "invalid utf-8"),
        ("hash", "nul"),
        ("seq", "non-digit"),
    ],
)
def test_damaged_head_row_is_reported_not_raised(ledger_file: Path, column: str, damage: str):
    """One byte of the head row changed into something that does not read back as the type
    it should: verification must report a broken ledger, not raise."""
    last = _last(ledger_file)
    with closing(_connect(ledger_file)) as conn:
        (original,) = conn.execute(
            f"SELECT CAST({column} AS BLOB) FROM ledger_head WHERE id = 1"
        ).fetchone()
        new = {"invalid utf-8": 0xFF, "nul": 0x00, "non-digit": ord("x")}[damage]
        changed = _replaced(original, len(original) - 1, new)
        conn.execute(f"UPDATE ledger_head SET {column} = CAST(? AS TEXT)", (changed,))
    _bad_at(_verify_file(ledger_file), last, f"head {column} {damage}")


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_text_retyped_as_blob_is_reported_not_raised(ledger_file: Path, where: str):
    """The same bytes stored as a BLOB instead of TEXT cannot be quoted as a JSON string:
    verification must report the entry, wherever it is, rather than raise."""
    last = _last(ledger_file)
    seq = {"first": 1, "middle": last // 2, "last": last}[where]
    _execute(ledger_file, "UPDATE ledger SET actor = CAST(actor AS BLOB) WHERE seq = ?", (seq,))
    _bad_at(_verify_file(ledger_file), seq, f"actor of {seq} as a blob")


# --- damage made through SQL, on SQLite and PostgreSQL -----------------------------------------

_ENTRY_COLUMNS = ("seq", *TEXT_COLUMNS)


@pytest.fixture
def built(database: str) -> str:
    """The URL of the database under test, holding the ledger that :func:`_build` writes
    (unguarded, to be damaged)."""
    run(_build(database))
    unguard_ledger(database)
    return database


def _entry(store: Store, seq: int) -> dict[str, Any]:
    row = store.one(f"SELECT {', '.join(_ENTRY_COLUMNS)} FROM ledger WHERE seq = ?", seq)
    assert row is not None, seq
    return row


def _head(store: Store) -> tuple[int, str]:
    row = store.one("SELECT seq, hash FROM ledger_head WHERE id = 1")
    assert row is not None
    return int(row["seq"]), str(row["hash"])


def _put_back(store: Store, row: dict[str, Any]) -> None:
    """Insert a deleted entry again, exactly as it was."""
    marks = ", ".join("?" for _ in _ENTRY_COLUMNS)
    store.execute(
        f"INSERT INTO ledger ({', '.join(_ENTRY_COLUMNS)}) VALUES ({marks})",
        *(row[c] for c in _ENTRY_COLUMNS),
    )


def _other_hash(digest: str) -> str:
    """A well-formed hash that differs from ``digest`` in its last digit."""
    return digest[:-1] + ("0" if digest[-1] != "0" else "1")


def _changed(column: str, value: str | None) -> str | None:
    """Another value for an entry's text column (a NULL state becomes a state, and back)."""
    if column in ("hash", "prev_hash"):
        assert value is not None
        return _other_hash(value)
    if column == "payload":
        assert value is not None
        return value[:-1] + ',"forged":true}' if value != "{}" else '{"forged":true}'
    if value is None:
        return "completed"
    return None if column in ("from_state", "to_state") else value + "x"


Damage = tuple[
    str, int | None, list[tuple[str, tuple[Any, ...]]], list[tuple[str, tuple[Any, ...]]]
]
"""(what, the seq verification must name (None: only "not ok"), the damaging statements, the
statements that undo them)."""


def _sql_damages(store: Store) -> list[Damage]:
    """Damage of every sort a person with SQL access could do, each with its undo."""
    last = int(store.value("SELECT max(seq) FROM ledger"))
    head_seq, head_hash = _head(store)
    assert head_seq == last
    middle = last // 2
    damages: list[Damage] = []
    for seq in (1, middle, last):
        row = _entry(store, seq)
        for column in TEXT_COLUMNS:
            update = f"UPDATE ledger SET {column} = ? WHERE seq = ?"
            damages.append(
                (
                    f"seq {seq}: {column} changed",
                    seq,
                    [(update, (_changed(column, row[column]), seq))],
                    [(update, (row[column], seq))],
                )
            )
        # the same JSON with other spacing: equal as data, not as the bytes that were hashed
        spaced = row["payload"].replace(":", ": ", 1) if ":" in row["payload"] else "{ }"
        update = "UPDATE ledger SET payload = ? WHERE seq = ?"
        damages.append(
            (
                f"seq {seq}: payload respaced",
                seq,
                [(update, (spaced, seq))],
                [(update, (row["payload"], seq))],
            )
        )
        delete = ("DELETE FROM ledger WHERE seq = ?", (seq,))
        damages.append((f"seq {seq}: deleted", seq, [delete], [("put back", (row,))]))
        for new in (0, -1, -seq, last + 1, last + 100):
            move = "UPDATE ledger SET seq = ? WHERE seq = ?"
            damages.append(
                (
                    f"seq {seq}: seq changed to {new}",
                    seq,
                    [(move, (new, seq))],
                    [(move, (seq, new))],
                )
            )
    # one entry's content replaced by another's, hash and links included
    first, second = _entry(store, middle), _entry(store, middle + 1)
    swap = "UPDATE ledger SET payload = ?, hash = ? WHERE seq = ?"
    damages.append(
        (
            f"seq {middle}: content and hash of seq {middle + 1}",
            middle,
            [(swap, (second["payload"], second["hash"], middle))],
            [(swap, (first["payload"], first["hash"], middle))],
        )
    )
    head = "UPDATE ledger_head SET seq = ?, hash = ? WHERE id = 1"
    undo_head = [(head, (head_seq, head_hash))]
    for new, reported in [
        (last - 1, last),
        (0, 1),
        (1, 2),
        (last + 1, last + 1),
        (last * 10, last + 1),
    ]:
        damages.append(
            (f"head seq {last} -> {new}", reported, [(head, (new, head_hash))], undo_head)
        )
    damages.append((f"head seq {last} -> -1", None, [(head, (-1, head_hash))], undo_head))
    damages.append(
        ("head hash changed", last, [(head, (head_seq, _other_hash(head_hash)))], undo_head)
    )
    damages.append(
        (
            "head names the entry before",
            last,
            [(head, (last - 1, _entry(store, last - 1)["hash"]))],
            undo_head,
        )
    )
    damages.append(
        (
            "head row deleted",
            last,
            [("DELETE FROM ledger_head", ())],
            [("INSERT INTO ledger_head (id, seq, hash) VALUES (1, ?, ?)", (head_seq, head_hash))],
        )
    )
    # a forged entry appended beyond the head, well formed and linked
    forged = forged_entry(last + 1, head_hash)
    values = {c: getattr(forged, c) for c in _ENTRY_COLUMNS if c != "payload"}
    values["payload"] = forged.payload_json
    damages.append(
        (
            "an entry appended beyond the head",
            last + 1,
            [("put back", (values,))],
            [("DELETE FROM ledger WHERE seq = ?", (last + 1,))],
        )
    )
    return damages


def _apply(store: Store, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
    for sql, args in statements:
        if sql == "put back":
            _put_back(store, args[0])
        else:
            store.execute(sql, *args)


def test_sql_damage_is_found_at_its_seq(built: str):
    """Every damage is found at its seq, then undone; the undone ledger verifies again."""
    store = Store(built)
    damages = _sql_damages(store)
    assert len(damages) >= 60

    async def go() -> None:
        db = await open_database(built)
        try:
            for what, seq, damage, undo in damages:
                _apply(store, damage)
                result = await _verify(db)
                if seq is None:
                    assert not result.ok, f"{what}: not detected"
                else:
                    _bad_at(result, seq, what)
                _apply(store, undo)
                assert (await _verify(db)).ok, f"{what}: still broken after the undo"
        finally:
            await db.dispose()

    run(go())


def test_cli_ledger_verify_names_the_damaged_seq(built: str, tmp_path: Path):
    """``quarterdeck ledger verify --db URL``: a changed payload, a deleted entry, a changed
    hash, a changed head row; each reported at its seq (text and JSON, exit 1)."""
    store = Store(built)
    last = int(store.value("SELECT max(seq) FROM ledger"))
    middle = last // 2
    row = _entry(store, middle)
    head_seq, head_hash = _head(store)
    cases = [
        ("payload", middle, [("UPDATE ledger SET payload = ? WHERE seq = ?", ('{"forged":true}', middle))],
         [("UPDATE ledger SET payload = ? WHERE seq = ?", (row["payload"], middle))]),
        ("delete", middle, [("DELETE FROM ledger WHERE seq = ?", (middle,))], [("put back", (row,))]),
        ("hash", middle, [("UPDATE ledger SET hash = ? WHERE seq = ?", (_other_hash(row["hash"]), middle))],
         [("UPDATE ledger SET hash = ? WHERE seq = ?", (row["hash"], middle))]),
        ("head", last, [("UPDATE ledger_head SET hash = ?", (_other_hash(head_hash),))],
         [("UPDATE ledger_head SET hash = ?", (head_hash,))]),
    ]  # fmt: skip

    def verify(*args: str) -> Any:
        return quarterdeck("--db", built, "ledger", "verify", *args, state_dir=tmp_path / "state")

    for what, seq, damage, undo in cases:
        _apply(store, damage)
        report = verify("--json")
        assert report.returncode == 1, (what, report.stdout, report.stderr)
        found = json.loads(report.stdout)
        assert (found["ok"], found["first_bad_seq"]) == (False, seq), (what, found)
        text = verify()
        assert text.returncode == 1, (what, text.stderr)
        assert text.stdout.decode().startswith(f"ledger BROKEN at seq {seq}: "), (what, text.stdout)
        _apply(store, undo)
    final = verify("--json")
    assert final.returncode == 0, final.stdout
    assert json.loads(final.stdout) == {"ok": True, "entries": last, "head": head_hash}
    assert head_seq == last
