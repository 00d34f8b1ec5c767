"""The command line tells the truth: reads never create a state directory or database, ids are
taken in every form a table shows them, blank JSONL lines are skipped, approvals come nearest
deadline first everywhere, and tables show each kind's useful columns. Each runs the real
``quarterdeck`` in a subprocess, on a SQLite file and on PostgreSQL; the id commands also
against a real headless runtime (its control API)."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.conftest import Store, envelope, is_postgres, line, quarterdeck, run
from tests.headless import Headless, headless_runtime, query, wait_until

from quarterdeck import __version__
from quarterdeck.client.api import ControlClient, ControlError
from quarterdeck.domain.ids import short_id
from quarterdeck.store.database import open_database
from quarterdeck.store.queries.panes import read_panes

READS = (
    ("status",), ("ls", "turns"), ("show", "b6490002"), ("approvals",), ("ledger", "verify"),
    ("ledger", "export"), ("token", "ls"),
)  # fmt: skip


def common_prefix(ids: list[str]) -> str:
    """The longest prefix every id shares."""
    shared = ""
    for chars in zip(*ids, strict=False):
        if len(set(chars)) > 1:
            break
        shared += chars[0]
    return shared


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def test_version() -> None:
    result = quarterdeck("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == f"quarterdeck {__version__}\n"


@pytest.mark.parametrize("args", READS, ids=" ".join)
def test_reads_refuse_a_state_directory_that_does_not_exist(tmp_path: Path, args: tuple[str, ...]):
    missing = tmp_path / "typo"
    result = quarterdeck(*args, "--state-dir", str(missing))
    assert result.returncode == 2, (result.stdout, result.stderr)
    err = result.stderr.decode()
    assert f"no state directory at {missing}" in err and err.count("\n") == 1, err
    assert not missing.exists() and _tree(tmp_path) == []

    empty = tmp_path / "empty"  # a directory without a database
    empty.mkdir(mode=0o700)
    result = quarterdeck(*args, state_dir=empty)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert f"no database in the state directory {empty}" in result.stderr.decode()
    assert _tree(empty) == []


def test_reads_refuse_a_database_that_does_not_exist(tmp_path: Path, database: str) -> None:
    """``--db``: a SQLite file that is not there is not created; an empty PostgreSQL database
    is not given a schema."""
    for args in READS[:-1]:
        result = quarterdeck("--db", database, *args, state_dir=tmp_path / "state")
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        err = result.stderr.decode()
        if is_postgres(database):
            assert "holds no Quarterdeck data" in err, err
            tables = Store(database).rows(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
            assert tables == []
        else:
            assert f"no database at {database}" in err, err
            assert not Path(database).exists()
    assert not (tmp_path / "state").exists()
    # what creates one still does
    created = quarterdeck("--db", database, "submit", "-", stdin=line(envelope(1)) + b"\n",
                          state_dir=tmp_path / "state")  # fmt: skip
    assert created.returncode == 0, created.stderr
    status = quarterdeck("--db", database, "status", "--json", "-A", state_dir=tmp_path / "state")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["receipts"]["accepted"] == 1


def test_blank_lines_are_skipped_and_lines_keep_their_numbers(
    tmp_path: Path, database: str
) -> None:
    state = tmp_path / "state"
    body = b"\n".join(
        [b"", line(envelope(1)), b"   ", b"\t\r", line(envelope(2)), b"{", b"", b""]
    )  # a blank last line, and one without a line end
    path = tmp_path / "tasks.jsonl"
    path.write_bytes(body)
    result = quarterdeck("--db", database, "submit", str(path), state_dir=state)
    assert result.returncode == 1, result.stderr  # the "{" line is rejected
    results = [json.loads(text) for text in result.stdout.splitlines()]
    assert [(r["line"], r["status"]) for r in results] == [
        (2, "accepted"), (5, "accepted"), (6, "rejected"),
    ]  # fmt: skip
    listed = quarterdeck("--db", database, "ls", "receipts", "--json", "-w", "acme",
                         state_dir=state)  # fmt: skip
    assert len(listed.stdout.splitlines()) == 2


def test_ids_in_every_form_through_the_database(tmp_path: Path, database: str) -> None:
    """Receipts of one batch share all but their last digits: the short form tells them apart,
    a common prefix is ambiguous (exit 2, every candidate listed), a foreign one unknown."""
    state = tmp_path / "state"

    def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
        return quarterdeck("--db", database, *args, "-w", "acme", state_dir=state)

    lines = b"".join(line(envelope(i)) + b"\n" for i in range(3))
    submitted = quarterdeck("--db", database, "submit", "-", stdin=lines, state_dir=state)
    ids = [json.loads(text)["receipt"] for text in submitted.stdout.splitlines()]
    target = ids[1]
    for typed in (
        target,
        target.upper(),
        target.replace("-", ""),
        short_id(target),
        target[:-1] if target[:-1] not in (ids[0][:-1], ids[2][:-1]) else target,
    ):
        shown = cli("show", typed, "--json")
        assert shown.returncode == 0, (typed, shown.stderr)
        assert json.loads(shown.stdout)["id"] == target

    common = common_prefix(ids)
    ambiguous = cli("show", common.replace("-", ""))
    assert ambiguous.returncode == 2, ambiguous
    err = ambiguous.stderr.decode()
    assert err.count("\n") == 1 and "is ambiguous" in err
    assert all(i in err for i in ids), err

    unknown = cli("show", "ffffffff")
    assert unknown.returncode == 1
    assert unknown.stderr.decode() == "quarterdeck: no item ffffffff in workspace acme\n"
    elsewhere = quarterdeck("--db", database, "show", short_id(target), "-w", "other",
                            state_dir=state)  # fmt: skip
    assert elsewhere.returncode == 1  # another workspace's item is not found

    table = cli("ls", "receipts").stdout.decode().splitlines()
    assert [row.split()[0] for row in table[1:]] == [short_id(i) for i in reversed(ids)]
    text = cli("show", short_id(target)).stdout.decode()
    assert "\nhistory:\nSEQ  AT" in text and "receipts.recorded" in text


# --- against a running daemon ------------------------------------------------------------------


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory, module_database: str) -> Iterator[Headless]:
    root = tmp_path_factory.mktemp("cli-honest")
    with headless_runtime(root, db=module_database) as started:
        yield started


def open_approvals(runtime: Headless, count: int) -> list[str]:
    """``count`` pending SDK approvals (asked on the database, so that their requester is not
    the OS user who decides them)."""

    async def main() -> list[str]:
        async with runtime.client(daemon=False) as client:
            ids = []
            for n in range(count):
                result = await client.command(
                    {"command": "approval.request", "action_id": str(uuid.uuid4()),
                     "tool": "deploy", "lane": "sdk", "args": {"service": f"s{n}"}}
                )  # fmt: skip
                assert result["verdict"] == "pending", result
                ids.append(str(result["approval"]))
            return ids

    return run(main())


def approval_state(runtime: Headless, approval: str) -> str:
    return str(query(runtime, "SELECT state FROM approvals WHERE id = ?", (approval,))[0]["state"])


def test_supervision_commands_take_short_ids_and_prefixes(runtime: Headless) -> None:
    first, second, third = open_approvals(runtime, 3)
    done = runtime.cli("approve", short_id(first))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ok"] is True
    assert approval_state(runtime, first) == "approved"

    rejected = runtime.cli("reject", second.replace("-", "")[:30], "--reason", "unsafe")
    assert rejected.returncode == 0, rejected.stderr
    assert approval_state(runtime, second) == "rejected"

    # a prefix that two open approvals share: refused before anything is sent
    fourth, fifth = open_approvals(runtime, 2)
    common = common_prefix([fourth, fifth])
    ambiguous = runtime.cli("approve", common)
    assert ambiguous.returncode == 2, ambiguous
    err = ambiguous.stderr.decode()
    assert err.count("\n") == 1 and fourth in err and fifth in err, err
    assert approval_state(runtime, fourth) == approval_state(runtime, fifth) == "pending"
    unknown = runtime.cli("approve", "ffffffff")
    assert unknown.returncode == 1
    assert unknown.stderr.decode().startswith("quarterdeck: refused: no approval 'ffffffff'")

    snoozed = runtime.cli("snooze", short_id(third), "--for", "10m")
    assert snoozed.returncode == 0, snoozed.stderr

    async def submit() -> str:
        async with runtime.client() as client:
            [result] = await client.submit(
                [{"idempotency_key": str(uuid.uuid4()), "workspace": "default", "kind": "task",
                  "payload": {"lane": "held", "objective": "wait for a person"}}]
            )  # fmt: skip
        return result.receipt

    receipt = run(submit())
    turn = wait_until(
        lambda: [r["produced_id"] for r in query(
            runtime, "SELECT produced_id FROM receipts WHERE id = ? AND produced_type = 'turn'",
            (receipt,),
        )], 10, "the turn",
    )[0]  # fmt: skip
    cancelled = runtime.cli("cancel", short_id(turn))
    assert cancelled.returncode == 0, cancelled.stderr
    assert (
        query(runtime, "SELECT state FROM turns WHERE id = ?", (turn,))[0]["state"] == "cancelled"
    )
    turns = runtime.cli("ls", "turns").stdout.decode().splitlines()
    assert turns[0].split()[-1] == "OBJECTIVE"
    assert any(row.startswith(short_id(turn)) and "wait for a person" in row for row in turns)


def test_the_control_api_resolves_ids(runtime: Headless) -> None:
    first, second = open_approvals(runtime, 2)

    async def main() -> None:
        async with ControlClient.for_state_dir(runtime.state_dir) as api:
            shown = await api.show(short_id(first))
            assert shown is not None and shown["id"] == first
            found = await api.resolve_id(first.replace("-", "")[:28], "approval")
            assert found == {"id": first, "kind": "approval", "workspace": "default"}
            with pytest.raises(ControlError) as raised:
                await api.resolve_id(common_prefix([first, second]))
            assert raised.value.status == 409 and raised.value.code == "ambiguous_id"
            assert first in raised.value.message and second in raised.value.message
            with pytest.raises(ControlError) as raised:
                await api.resolve_id(short_id(first), "turn")
            assert raised.value.status == 404
            assert await api.show("ffffffff") is None
            decision = await api.approval_decision(short_id(first), wait_s=0)
            assert decision["approval"] == first and decision["decided"] is False

    run(main())


def test_approvals_come_nearest_deadline_first_everywhere(runtime: Headless) -> None:
    """Snoozing the older approval moves its deadline past the newer one's: every listing
    follows the deadline, not the creation order."""
    older, newer = open_approvals(runtime, 2)
    assert runtime.cli("snooze", older, "--for", "2h").returncode == 0

    def order(ids: list[str]) -> list[str]:
        return [i for i in ids if i in (older, newer)]

    listed = [json.loads(t)["id"] for t in runtime.cli("approvals", "--json").stdout.splitlines()]
    assert order(listed) == [newer, older]
    table = runtime.cli("approvals").stdout.decode().splitlines()
    shown = [row.split()[0] for row in table[1:]]
    assert order([i for s in shown for i in (older, newer) if short_id(i) == s]) == [newer, older]

    async def main() -> tuple[list[str], list[str], list[str]]:
        async with ControlClient.for_state_dir(runtime.state_dir) as api:
            through_api = [a["id"] for a in await api.approvals()]
            snapshot = [a["id"] for a in (await api.console_snapshot())["approvals"]]
        db = await open_database(runtime.url, upgrade=False)
        try:
            panes = await read_panes(db, approvals=100, turns=1, missions=1, alerts=1)
        finally:
            await db.dispose()
        return through_api, snapshot, [a.id for a in panes.approvals]

    for ids in run(main()):
        assert order(ids) == [newer, older]
