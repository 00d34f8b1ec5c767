"""The ``quarterdeck`` command line, run as a real subprocess against a real database: each
test that reads or writes data runs once on a SQLite file and once on PostgreSQL (``--db URL``)."""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import Store, envelope, is_postgres, line, quarterdeck, run, unguard_ledger

from quarterdeck.domain.ids import short_id
from quarterdeck.domain.states import MACHINES, Kind
from quarterdeck.runtime.ingest import Ingestor
from quarterdeck.store.database import open_database
from quarterdeck.store.items import create_item, transition
from quarterdeck.store.sessions import acquire_sessions
from quarterdeck.store.writer import Writer

KINDS = ("receipts", "turns", "missions", "sessions", "approvals", "alerts")
ITEM_KINDS = {
    "turns": Kind.TURN,
    "missions": Kind.MISSION,
    "sessions": Kind.SESSION,
    "approvals": Kind.APPROVAL,
    "alerts": Kind.ALERT,
}
MOVED_TO = {
    "turns": "leased",
    "missions": "cancelled",
    "sessions": "active",
    "approvals": "approved",
    "alerts": "acked",
}
GENESIS = "0" * 64


@dataclass
class World:
    """A database (and a state dir) the commands run on: the populated one the read-only tests
    of this module share, or a fresh one."""

    state_dir: Path
    db: str
    """The database URL (a SQLite file or ``postgresql://...``), passed as ``--db``."""
    receipts: dict[str, list[str]] = field(default_factory=dict)
    """Receipt ids by name: alpha, alpha_rejected, beta, beta_rejected, unknown_rejected."""
    items: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    """Item ids by (KIND, workspace), oldest first; the first alpha item of each was moved."""
    raw_unknown: bytes = b""


def cli(world_or_dir: World | Path, *args: str, stdin: bytes | None = None) -> Any:
    """Run the command line on a world's database (``--db``), or on a bare state dir."""
    if isinstance(world_or_dir, World):
        command = ("--db", world_or_dir.db, *args)
        return quarterdeck(*command, state_dir=world_or_dir.state_dir, stdin=stdin)
    return quarterdeck(*args, state_dir=world_or_dir, stdin=stdin)


def ok_json(world: World | Path, *args: str) -> Any:
    result = cli(world, *args)
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout)


def json_lines(world: World | Path, *args: str) -> list[dict[str, Any]]:
    result = cli(world, *args)
    assert result.returncode == 0, result.stderr.decode()
    return [json.loads(text) for text in result.stdout.splitlines()]


def one_line_error(result: Any) -> str:
    """The process reported a single-line error on stderr, without a traceback."""
    err = result.stderr.decode()
    assert "Traceback" not in err, err
    assert err.endswith("\n") and err.count("\n") == 1, err
    return err


@pytest.fixture
def fresh(tmp_path: Path, database: str) -> World:
    """An empty database of the backend under test."""
    return World(tmp_path / "state", database)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, module_database: str) -> World:
    state_dir = tmp_path_factory.mktemp("cli") / "state"
    built = World(state_dir, module_database)
    built.raw_unknown = b"\xff\xfe not utf-8 \x00"

    async def populate() -> None:
        db = await open_database(module_database)
        async with Writer(db) as writer:
            ingest = Ingestor(writer).ingest
            alpha = await ingest([line(envelope(i, "alpha")) for i in range(5)])
            again = await ingest(
                [
                    line(envelope(0, "alpha")),  # duplicate
                    line(envelope(9, "alpha", kind="job")),  # rejected, filed under alpha
                    built.raw_unknown,  # rejected, workspace unreadable: _unknown
                ]
            )
            beta = await ingest([line(envelope(i, "beta")) for i in range(3)])
            beta_bad = await ingest([json.dumps({"idempotency_key": "b", "workspace": "beta"})])
            built.receipts = {
                "alpha": [r.receipt for r in alpha],
                "alpha_rejected": [again[1].receipt],
                "unknown_rejected": [again[2].receipt],
                "beta": [r.receipt for r in beta],
                "beta_rejected": [beta_bad[0].receipt],
            }
            assert [r.status for r in again] == ["duplicate", "rejected", "rejected"]
            for name, kind in ITEM_KINDS.items():
                for workspace, count in (("alpha", 3), ("beta", 1)):
                    created = [
                        await writer.submit(
                            partial(
                                create_item, kind=kind, workspace=workspace, actor="test",
                                data={"n": n, "name": name},
                            )
                        )
                        for n in range(count)
                    ]  # fmt: skip
                    built.items[(name, workspace)] = [c.id for c in created]
                first = built.items[(name, "alpha")][0]
                leased = MACHINES[kind].leased
                await writer.submit(
                    partial(
                        transition,
                        kind=kind,
                        item_id=first,
                        to_state=MOVED_TO[name],
                        workspace="alpha",
                        actor="test",
                        expected_version=1,
                        expected_attempt=0 if leased else None,
                        bump_attempt=leased,
                        # a decided approval names who decided it, as the ledger does
                        fields={"decided_by": "test"} if kind is Kind.APPROVAL else None,
                    )
                )
        await db.dispose()

    run(populate())
    return built


# --------------------------------------------------------------------------------------
# submit


def test_submit_file_and_stdin(tmp_path: Path, fresh: World) -> None:
    first, second = envelope(1, "default"), envelope(2, "default")
    data = (
        line(first)
        + b"\n"
        + line(second)
        + b"\r\n"  # CRLF is a line ending, not part of the input
        + line({**first, "payload": {"other": True}})  # same key, other content
        + b"\n{not json\n"
        + line(envelope(3, "default"))  # last line without a newline
    )
    path = tmp_path / "in.jsonl"
    path.write_bytes(data)
    result = cli(fresh, "submit", str(path))
    assert result.returncode == 1, result.stderr  # a line was rejected
    assert result.stderr == b""
    answers = [json.loads(text) for text in result.stdout.splitlines()]
    assert all(set(a) == {"line", "status", "receipt", "errors"} for a in answers)
    assert [a["line"] for a in answers] == [1, 2, 3, 4, 5]
    assert [a["status"] for a in answers] == [
        "accepted",
        "accepted",
        "duplicate",
        "rejected",
        "accepted",
    ]
    assert answers[2]["receipt"] == answers[0]["receipt"]
    assert answers[2]["errors"] == [
        "idempotency_key: already used for different content; the original receipt stands"
    ]
    assert answers[3]["errors"][0].startswith("$: not JSON")
    assert len({a["receipt"] for a in answers}) == 4

    # stdin: a new envelope and a redelivery; no rejected line, so exit 0
    stdin = line(envelope(4, "default")) + b"\n" + line(first) + b"\n"
    piped = cli(fresh, "submit", "-", stdin=stdin)
    assert piped.returncode == 0, piped.stderr
    answers2 = [json.loads(text) for text in piped.stdout.splitlines()]
    assert [(a["line"], a["status"]) for a in answers2] == [(1, "accepted"), (2, "duplicate")]
    assert answers2[1] == {
        "line": 2,
        "status": "duplicate",
        "receipt": answers[0]["receipt"],
        "errors": [],
    }

    empty = cli(fresh, "submit", "-", stdin=b"")
    assert (empty.returncode, empty.stdout, empty.stderr) == (0, b"", b"")

    counts = ok_json(fresh, "status", "--json")
    assert counts["receipts"] == {"accepted": 4, "duplicate": 2, "rejected": 0}
    everywhere = ok_json(fresh, "status", "--json", "-A")
    assert everywhere["receipts"] == {"accepted": 4, "duplicate": 2, "rejected": 1}


def test_submit_survives_a_lone_surrogate_field_name(fresh: World) -> None:
    """Bug: see tests/test_ingest.py::test_lone_surrogate_as_a_field_name_is_rejected_not_raised.

    Through the CLI the whole chunk is lost and the command dies with a traceback instead of
    answering one line per input.
    """
    poisoned = b'{"\\ud800": 1, "idempotency_key": "k", "workspace": "default", "kind": "task", "payload": {}}'
    stdin = line(envelope(1, "default")) + b"\n" + poisoned + b"\n"
    result = cli(fresh, "submit", "-", stdin=stdin)
    assert b"Traceback" not in result.stderr, result.stderr.decode()[-600:]
    answers = [json.loads(text) for text in result.stdout.splitlines()]
    assert [a["status"] for a in answers] == ["accepted", "rejected"]
    assert result.returncode == 1


# --------------------------------------------------------------------------------------
# status


def test_status_json_has_the_documented_shape(world: World) -> None:
    scoped = ok_json(world, "status", "--json", "--workspace", "alpha")
    assert set(scoped) == {
        "receipts",
        "turns",
        "missions",
        "sessions",
        "approvals",
        "alerts",
        "ledger",
        "slo",
    }
    assert set(scoped["slo"]) == {
        "mission_latency_p50_s",
        "mission_latency_p95_s",
        "fallback_rate",
        "recovery_success_rate",
        "orphaned_rate",
        "orphaned_session_rate",
        "sessions_orphaned",
        "retries",
        "dead_letters",
        "lease_conflicts",
        "leases_reclaimed",
    }
    assert set(scoped["receipts"]) == {"accepted", "duplicate", "rejected"}
    assert set(scoped["ledger"]) == {"entries", "head"}
    for name, kind in ITEM_KINDS.items():
        assert list(scoped[name]) == list(MACHINES[kind].states)
        assert all(type(count) is int for count in scoped[name].values())
    assert scoped["receipts"] == {"accepted": 5, "duplicate": 1, "rejected": 1}
    for name, kind in ITEM_KINDS.items():
        expected = dict.fromkeys(MACHINES[kind].states, 0)
        expected[MACHINES[kind].initial] = 2
        expected[MOVED_TO[name]] = 1
        assert scoped[name] == expected, name
    assert isinstance(scoped["ledger"]["entries"], int)
    assert len(scoped["ledger"]["head"]) == 64

    everywhere = ok_json(world, "status", "--json", "-A")
    assert everywhere["receipts"] == {"accepted": 8, "duplicate": 1, "rejected": 3}
    for name, kind in ITEM_KINDS.items():
        assert everywhere[name][MACHINES[kind].initial] == 3
        assert sum(everywhere[name].values()) == 4
    assert everywhere["ledger"] == scoped["ledger"]  # the chain is one, whatever the scope

    default = ok_json(world, "status", "--json")  # the default workspace is empty
    assert default["receipts"] == {"accepted": 0, "duplicate": 0, "rejected": 0}
    assert all(not any(default[name].values()) for name in ITEM_KINDS)

    # global options may come before the command too
    before = ok_json(world, "--workspace", "alpha", "status", "--json")
    assert before == scoped


def test_status_text(world: World) -> None:
    counts = ok_json(world, "status", "--json", "-w", "alpha")
    result = cli(world, "status", "-w", "alpha")
    assert result.returncode == 0
    lines = result.stdout.decode().splitlines()
    assert lines[0] == "workspace: alpha"
    rows = {text.split()[0]: text.split(None, 1)[1] for text in lines[1:]}
    assert list(rows) == [*KINDS, "ledger"]
    assert rows["receipts"].split() == ["accepted", "5", "duplicate", "1", "rejected", "1"]
    assert rows["turns"].split() == ["queued", "2", "leased", "1"]
    ledger = counts["ledger"]
    assert rows["ledger"] == f"{ledger['entries']} entries, head {ledger['head']}"

    empty = cli(world, "status").stdout.decode().splitlines()
    assert empty[0] == "workspace: default"
    assert all(text.split()[1] == "-" for text in empty[1:-1])
    assert cli(world, "status", "-A").stdout.decode().startswith("workspace: all workspaces\n")


# --------------------------------------------------------------------------------------
# ls


def expected_ids(world: World, kind: str, workspace: str) -> list[str]:
    if kind == "receipts":
        names = [workspace, f"{workspace}_rejected"]
        ids = [i for name in names for i in world.receipts.get(name, [])]
    else:
        ids = list(world.items[(kind, workspace)])
    return sorted(ids, reverse=True)  # newest first: ids are time-ordered UUIDv7s


@pytest.mark.parametrize("kind", KINDS)
def test_ls_each_kind(world: World, kind: str) -> None:
    singular = kind.removesuffix("s")
    alpha = json_lines(world, "ls", kind, "--workspace", "alpha", "--json")
    assert [item["id"] for item in alpha] == expected_ids(world, kind, "alpha")
    assert all(item["type"] == singular and item["workspace"] == "alpha" for item in alpha)

    # --state and --limit, across every workspace
    if kind == "receipts":
        state, field_name = "rejected", "status"
        names = ("alpha_rejected", "beta_rejected", "unknown_rejected")
        matching = [i for name in names for i in world.receipts[name]]
    else:
        state, field_name = MACHINES[ITEM_KINDS[kind]].initial, "state"
        moved = world.items[(kind, "alpha")][0]
        everywhere = world.items[(kind, "alpha")] + world.items[(kind, "beta")]
        matching = [i for i in everywhere if i != moved]
    matching.sort(reverse=True)
    assert len(matching) == 3
    filtered = json_lines(world, "ls", kind, "-A", "--state", state, "--limit", "2", "--json")
    assert [item["id"] for item in filtered] == matching[:2]
    assert all(item[field_name] == state for item in filtered)

    table = cli(world, "ls", kind, "-w", "alpha")
    assert table.returncode == 0
    rows = table.stdout.decode().splitlines()
    header = rows[0].split()
    assert header[0] == "ID" and all(column.isupper() for column in header)
    assert ("STATUS" if kind == "receipts" else "STATE") in header
    assert [row.split()[0] for row in rows[1:]] == [
        short_id(i) for i in expected_ids(world, kind, "alpha")
    ]


def test_ls_empty_table(world: World) -> None:
    result = cli(world, "ls", "missions", "--state", "no-such-state", "-A")
    assert result.returncode == 0
    assert result.stdout.decode().splitlines()[1:] == [
        "(no missions match --state no-such-state in any workspace)"
    ]
    assert json_lines(world, "ls", "turns", "--json") == []  # the default workspace is empty


def test_ls_limit_defaults_to_100_and_0_means_all(fresh: World) -> None:
    lines = b"".join(line(envelope(i, "default")) + b"\n" for i in range(130))
    assert cli(fresh, "submit", "-", stdin=lines).returncode == 0
    assert len(json_lines(fresh, "ls", "receipts", "--json")) == 100
    everything = json_lines(fresh, "ls", "receipts", "--json", "--limit", "0")
    assert len(everything) == 130
    assert json_lines(fresh, "ls", "receipts", "--json", "--limit", "7") == everything[:7]


# --------------------------------------------------------------------------------------
# show


def test_show_receipt(world: World) -> None:
    receipt = world.receipts["alpha"][2]
    item = ok_json(world, "show", receipt, "--json", "-w", "alpha")
    assert item["type"] == "receipt" and item["id"] == receipt
    assert item["status"] == "accepted" and item["workspace"] == "alpha"
    assert item["envelope"]["idempotency_key"] == "key-2"
    assert item["envelope"]["payload"] == envelope(2)["payload"]
    assert item["envelope"]["kind"] == "task"
    assert item["envelope"]["id"] == receipt  # an envelope without an id gets its receipt's
    assert item["errors"] == []
    assert item["produced"] is None
    assert isinstance(item["history"], list)

    rejected = ok_json(world, "show", world.receipts["alpha_rejected"][0], "--json", "-w", "alpha")
    assert rejected["status"] == "rejected"
    assert rejected["errors"] and rejected["errors"][0].startswith("kind: ")
    assert json.loads(rejected["raw"]) == envelope(9, "alpha", kind="job")
    assert rejected["raw_size"] == len(line(envelope(9, "alpha", kind="job")))

    undecodable = ok_json(world, "show", world.receipts["unknown_rejected"][0], "--json", "-A")
    assert undecodable["workspace"] == "_unknown"
    assert base64.b64decode(undecodable["raw_base64"]) == world.raw_unknown
    assert undecodable["errors"][0].startswith("$: not UTF-8")

    text = cli(world, "show", receipt, "-w", "alpha")
    assert text.returncode == 0
    fields_text, history = text.stdout.decode().split("\n\nhistory:\n")
    fields = {row.split()[0]: row.split(None, 1)[1] for row in fields_text.splitlines()}
    assert history.split()[:6] == ["SEQ", "AT", "ACTOR", "ACTION", "FROM_STATE", "TO_STATE"]
    assert fields["id"] == receipt and fields["status"] == "accepted"
    assert json.loads(fields["envelope"])["idempotency_key"] == "key-2"


def test_show_item_has_its_history(world: World) -> None:
    turn = world.items[("turns", "alpha")][0]
    item = ok_json(world, "show", turn, "--json", "-w", "alpha")
    assert item["type"] == "turn" and item["state"] == "leased"
    assert (item["version"], item["attempt"]) == (2, 1)
    assert item["data"] == {"n": 0, "name": "turns"}
    assert [h["action"] for h in item["history"]] == ["turn.created", "turn.leased"]
    assert [(h["from_state"], h["to_state"]) for h in item["history"]] == [
        (None, "queued"),
        ("queued", "leased"),
    ]


def test_show_unknown_id_exits_1(world: World) -> None:
    result = cli(world, "show", "no-such-id", "-A")
    assert result.returncode == 1
    assert result.stdout == b""
    assert "no-such-id" in one_line_error(result)


# --------------------------------------------------------------------------------------
# workspaces


def test_workspaces_are_isolated(world: World) -> None:
    alpha = {i["id"] for i in json_lines(world, "ls", "receipts", "-w", "alpha", "--json")}
    beta = {i["id"] for i in json_lines(world, "ls", "receipts", "-w", "beta", "--json")}
    both = {i["id"] for i in json_lines(world, "ls", "receipts", "-A", "--json")}
    assert alpha == set(world.receipts["alpha"] + world.receipts["alpha_rejected"])
    assert beta == set(world.receipts["beta"] + world.receipts["beta_rejected"])
    assert alpha | beta | set(world.receipts["unknown_rejected"]) == both

    beta_turn = world.items[("turns", "beta")][0]
    hidden = cli(world, "show", beta_turn, "--workspace", "alpha")
    assert hidden.returncode == 1
    one_line_error(hidden)
    assert ok_json(world, "show", beta_turn, "--json", "-A")["workspace"] == "beta"

    beta_status = ok_json(world, "status", "--json", "-w", "beta")
    assert beta_status["receipts"] == {"accepted": 3, "duplicate": 0, "rejected": 1}
    assert all(sum(beta_status[name].values()) == 1 for name in ITEM_KINDS)

    exported = json_lines(world, "ledger", "export", "-w", "alpha")
    assert exported and {entry["workspace"] for entry in exported} == {"alpha"}
    complete = json_lines(world, "ledger", "export", "-A")
    assert [e for e in complete if e["workspace"] == "alpha"] == exported


def test_the_runtimes_sessions_are_in_every_workspaces_view(fresh: World) -> None:
    """Sessions belong to the runtime, not to a tenant: a workspace's status, listing and
    detail show them (a daemon's workers are everyone's concern), while tenants stay apart."""

    async def hold_sessions() -> list[str]:
        db = await open_database(fresh.db)
        async with Writer(db) as writer:
            held = await writer.submit(
                lambda txn: acquire_sessions(txn, "sim", 2, "node-a", 60, fresh.state_dir)
            )
            await Ingestor(writer).ingest([line(envelope(0, "beta"))])
        await db.dispose()
        return [s.id for s in held]

    held = run(hold_sessions())
    status = ok_json(fresh, "status", "--json", "-w", "alpha")
    assert status["sessions"]["active"] == 2
    assert status["receipts"]["accepted"] == 0  # beta's receipt stays beta's
    listed = json_lines(fresh, "ls", "sessions", "-w", "alpha", "--json")
    assert sorted(item["id"] for item in listed) == sorted(held)
    assert {item["workspace"] for item in listed} == {"_runtime"}
    assert ok_json(fresh, "show", held[0], "--json", "-w", "alpha")["lease_owner"] == "node-a"


# --------------------------------------------------------------------------------------
# ledger


def test_ledger_verify_ok(world: World) -> None:
    head = ok_json(world, "status", "--json", "-A")["ledger"]
    text = cli(world, "ledger", "verify")
    assert text.returncode == 0
    assert text.stdout.decode() == f"ledger ok: {head['entries']} entries, head {head['head']}\n"
    assert ok_json(world, "ledger", "verify", "--json") == {
        "ok": True,
        "entries": head["entries"],
        "head": head["head"],
    }


def test_ledger_verify_reports_tampering(
    world: World, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if is_postgres(world.db):
        tampered = World(
            tmp_path / "state", request.getfixturevalue("pg_cluster").clone_database(world.db)
        )
    else:
        tampered = World(tmp_path / "state", str(tmp_path / "state" / "copy.db"))
        tampered.state_dir.mkdir()
        source = sqlite3.connect(world.db)
        copy = sqlite3.connect(tampered.db)
        source.backup(copy)
        source.close()
        copy.close()
    unguard_ledger(tampered.db)  # as someone holding the database would
    Store(tampered.db).execute("UPDATE ledger SET actor = 'mallory' WHERE seq = 3")
    result = cli(tampered, "ledger", "verify", "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert set(report) == {"ok", "first_bad_seq", "reason"}
    assert report["ok"] is False and report["first_bad_seq"] == 3
    assert isinstance(report["reason"], str) and report["reason"]
    text = cli(tampered, "ledger", "verify")
    assert text.returncode == 1
    assert text.stdout.decode().startswith("ledger BROKEN at seq 3: ")


def test_ledger_export_since(world: World) -> None:
    complete = cli(world, "ledger", "export", "-A").stdout.decode().splitlines()
    entries = [json.loads(text) for text in complete]
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    for text, entry in zip(complete, entries, strict=True):
        assert set(entry) == {
            "seq",
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
        }
        assert text == json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    since = len(entries) // 2
    tail = cli(world, "ledger", "export", "-A", "--since", str(since)).stdout.decode().splitlines()
    assert tail == complete[since:]
    assert all(json.loads(text)["seq"] > since for text in tail)
    assert cli(world, "ledger", "export", "-A", "--since", str(len(entries))).stdout == b""


def independent_verify(lines: list[str], prev: str = GENESIS, expected: int = 1) -> dict:
    """The algorithm of docs/specs/ledger.md, using only hashlib and json."""
    for number, text in enumerate(lines, 1):
        entry = json.loads(text)
        stored_prev, stored_hash = entry.pop("prev_hash"), entry.pop("hash")
        body = json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        if entry["seq"] != expected or stored_prev != prev:
            return {"ok": False, "seq": entry["seq"], "line": number, "why": "link"}
        if hashlib.sha256((prev + body).encode("utf-8")).hexdigest() != stored_hash:
            return {"ok": False, "seq": entry["seq"], "line": number, "why": "hash"}
        prev, expected = stored_hash, expected + 1
    return {"ok": True, "entries": expected - 1, "head": prev}


def test_independent_verifier_accepts_the_export(world: World) -> None:
    complete = cli(world, "ledger", "export", "-A").stdout.decode().splitlines()
    head = ok_json(world, "ledger", "verify", "--json")
    assert independent_verify(complete) == head
    assert json.loads(complete[0])["prev_hash"] == GENESIS

    # an export after --since SEQ verifies from the entry at SEQ
    since = 7
    anchor = json.loads(complete[since - 1])
    tail = cli(world, "ledger", "export", "-A", "--since", str(since)).stdout.decode()
    assert independent_verify(tail.splitlines(), anchor["hash"], since + 1) == head

    # and the verifier is not a rubber stamp
    damaged = list(complete)
    entry = json.loads(damaged[4])
    entry["payload"] = {**entry["payload"], "forged": True}
    damaged[4] = json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert independent_verify(damaged) == {"ok": False, "seq": 5, "line": 5, "why": "hash"}
    assert independent_verify(complete[:3] + complete[4:])["why"] == "link"


# --------------------------------------------------------------------------------------
# usage errors


@pytest.mark.parametrize(
    "args",
    [
        ["frobnicate"],
        [],
        ["ls", "widgets"],
        ["ls", "receipts", "--limit", "many"],
        ["ls", "alerts", "--limit", "-1"],
        ["ledger", "export", "--since", "x"],
        ["submit", "/no/such/file.jsonl"],
        ["--workspace", "alpha", "--all-workspaces", "status"],
        ["status", "-w", "alpha", "-A"],
        ["ls", "turns", "--workspace", "alpha", "--all-workspaces"],
        ["--db", "postgresql://user@localhost/quarterdeck", "status"],
        ["status", "--bogus-flag"],
    ],
    ids=lambda args: " ".join(args) or "(nothing)",
)
def test_usage_errors_exit_2_with_one_line(tmp_path: Path, args: list[str]) -> None:
    result = cli(tmp_path / "state", *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert one_line_error(result).startswith("quarterdeck: error: ")
    assert result.stdout == b""


def test_in_memory_database_url_is_refused_cleanly(tmp_path: Path) -> None:
    """Bug: ``--db sqlite://`` (or ``sqlite:///:memory:``) is accepted by ``normalize_url`` but
    cannot work: the writer and the readers are separate connections, each with its own
    private in-memory database, so the migrations land in one and the queries read another.
    ``status`` fails with "no such table: receipts" (exit 1; a traceback before the CLI
    caught OperationalError). It should be refused as an unsupported database: one line,
    exit 2."""
    result = cli(tmp_path / "state", "--db", "sqlite://", "status")
    assert result.returncode == 2, result.stderr.decode()[-300:]
    one_line_error(result)


@pytest.mark.parametrize("command", [["demo"], ["run"], ["attach"]])
def test_the_control_center_without_a_terminal_says_so(tmp_path: Path, command: list[str]) -> None:
    result = quarterdeck(*command, state_dir=tmp_path / "state", stdin=b"")
    assert result.returncode == 2
    assert "needs a terminal" in one_line_error(result)
