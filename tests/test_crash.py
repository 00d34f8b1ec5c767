"""Crash safety: a process ingesting 20,000 envelopes is SIGKILLed part-way, then everything is
re-submitted by a new process. Nothing may be lost, doubled or left half-written. Each case runs
on a SQLite file and on PostgreSQL (the child processes get the database URL).

Each batch commits its receipts and its ledger entries in one transaction, so at any kill point
the database holds exactly the batches that committed, and a full re-submission fills in the rest.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import Store, envelope, is_postgres, line, quarterdeck

TOTAL = 20_000
WORKSPACES = ("acme", "beta")

CHILD = """
import asyncio, sys
from quarterdeck.runtime.ingest import Ingestor
from quarterdeck.store.database import open_database
from quarterdeck.store.writer import Writer

db_path, lines_path, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
# split exactly as `quarterdeck submit` does: on b"\\n", one input per line
lines = open(lines_path, "rb").read().split(b"\\n")[:-1]


async def main():
    db = await open_database(db_path)
    async with Writer(db) as writer:
        ingestor = Ingestor(writer)
        for start in range(0, len(lines), batch):
            results = await ingestor.ingest(lines[start:start + batch])
            assert len(results) == len(lines[start:start + batch])
    await db.dispose()


asyncio.run(main())
"""


def make_lines() -> tuple[list[bytes], set[int]]:
    """20,000 input lines (valid keys unique per workspace) and the indexes of malformed ones."""
    lines: list[bytes] = []
    bad: set[int] = set()
    malformed = [
        b"{not json",
        b"null",
        b"\xff\xfe\x00 not utf-8",
        b"[1, 2, 3]",
        line(envelope(1, "acme", kind="job")),
        line(envelope(2, "beta", payload="text")),
        b'{"idempotency_key": "x", "workspace": "acme", "kind": "task", "payload": {"v": NaN}}',
        b'{"idempotency_key": "\\ud800", "workspace": "acme", "kind": "task", "payload": {}}',
        line(envelope(3, "Not A Slug")),
        b"[" * 50_000,
    ]
    for i in range(TOTAL):
        if i % 1_999 == 7 and malformed:
            bad.add(i)
            lines.append(malformed.pop())
            continue
        obj = envelope(i, WORKSPACES[i % 2], payload={"objective": f"objective {i}", "n": i})
        lines.append(line(obj))
    assert not malformed and len(lines) == TOTAL
    assert all(b"\n" not in raw and not raw.endswith(b"\r") for raw in lines)
    return lines, bad


def receipts_count(db: str) -> int:
    """How many receipts the database holds (0 before it exists or is migrated)."""
    if not is_postgres(db) and not Path(db).exists():
        return 0
    try:
        return int(Store(db).value("SELECT count(*) FROM receipts"))
    except Exception as exc:  # not migrated yet: sqlite3 or psycopg says "no such table"
        if "receipts" in str(exc) or "locked" in str(exc):
            return 0
        raise


def run_and_kill(
    command: list[str], env: dict[str, str], db: str, kill_at: int, delay: float
) -> int:
    """Start ``command``; SIGKILL it ``delay`` seconds after ``kill_at`` receipts exist (the
    delay moves the kill into the next batch's work). Returns the count seen."""
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    try:
        while True:
            assert proc.poll() is None, (
                f"the child ended before the kill (exit {proc.returncode}): "
                + proc.stderr.read().decode(errors="replace")[-2000:]
            )
            seen = receipts_count(db)
            if seen >= kill_at:
                time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
                break
            assert time.monotonic() < deadline, f"only {seen} receipts after 60 s"
            time.sleep(0.002)
    finally:
        proc.wait(timeout=30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return seen


def stored(db: str) -> list[dict[str, Any]]:
    return Store(db).rows("SELECT id, workspace, status, idempotency_key, raw FROM receipts")


def ledger_receipt_ids(db: str) -> Counter[str]:
    """How often each receipt id is listed as accepted or rejected on the ledger."""
    listed: Counter[str] = Counter()
    for entry in Store(db).ledger():
        listed.update(entry["payload"].get("accepted", []) + entry["payload"].get("rejected", []))
    return listed


def key_of(number: int) -> tuple[str, str]:
    """(workspace, idempotency_key) of the valid envelope on line ``number`` (0-based)."""
    return WORKSPACES[number % 2], f"key-{number}"


def check_consistent(
    state_dir: Path, db: str, lines: list[bytes], bad: set[int], batch: int
) -> int:
    """After a kill: the ledger verifies and the stored receipts are exactly a prefix of whole
    batches, each recorded once on the ledger. Returns the number of lines in that prefix."""
    verify = quarterdeck("--db", db, "ledger", "verify", "--json", state_dir=state_dir)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert json.loads(verify.stdout)["ok"] is True
    rows = stored(db)
    keys = {(r["workspace"], r["idempotency_key"]) for r in rows if r["status"] == "accepted"}
    raws = {bytes(r["raw"]) for r in rows if r["status"] == "rejected"}
    present = [
        raw in raws if number in bad else key_of(number) in keys for number, raw in enumerate(lines)
    ]
    prefix = present.index(False) if False in present else len(present)
    assert not any(present[prefix:]), "receipts exist beyond the first missing one"
    assert prefix % batch == 0 or prefix == len(lines), f"a batch was half-committed: {prefix}"
    assert len(rows) == prefix
    listed = ledger_receipt_ids(db)
    assert set(listed) == {r["id"] for r in rows}, "receipts and ledger disagree"
    assert set(listed.values()) <= {1}
    return prefix


@pytest.mark.slow
@pytest.mark.parametrize(
    ("child", "batch", "kill_points"),
    [
        ("api", 250, ((1, 0.0),)),
        ("api", 250, ((7_000, 0.004),)),
        ("api", 500, ((16_000, 0.011),)),
        ("api", 250, ((3_000, 0.0), (12_000, 0.007))),  # killed twice, then completed
        ("cli", 1_000, ((9_000, 0.02),)),
    ],
    ids=["api-first-batch", "api-7000", "api-16000", "api-twice", "cli-9000"],
)
def test_killed_ingest_loses_and_doubles_nothing(
    tmp_path: Path,
    database: str,
    child: str,
    batch: int,
    kill_points: tuple[tuple[int, float], ...],
) -> None:
    lines, bad = make_lines()
    lines_path = tmp_path / "input.jsonl"
    lines_path.write_bytes(b"".join(raw + b"\n" for raw in lines))
    state_dir = tmp_path / "state"
    db = database

    def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
        return quarterdeck("--db", db, *args, state_dir=state_dir)

    if child == "api":
        script = tmp_path / "child.py"
        script.write_text(CHILD)
        command = [sys.executable, str(script), db, str(lines_path), str(batch)]
    else:  # the real command line, which submits in chunks of 1,000 lines
        command = [sys.executable, "-m", "quarterdeck", "--db", db]
        command += ["submit", str(lines_path)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUARTERDECK_")}

    def valid_before(prefix: int) -> int:
        return prefix - len({n for n in bad if n < prefix})

    prefix = duplicates = 0
    for kill_at, delay in kill_points:
        seen = run_and_kill(command, env, db, kill_at, delay)
        before, prefix = prefix, check_consistent(state_dir, db, lines, bad, batch)
        assert before < kill_at <= seen <= prefix < TOTAL, (before, kill_at, seen, prefix)
        duplicates += valid_before(before)  # this run re-sent them, and committed past them

    # A new process re-submits everything.
    again = cli("submit", str(lines_path))
    assert again.returncode == 1, again.stderr  # malformed lines are reported as rejected
    assert b"Traceback" not in again.stderr
    answers = [json.loads(text) for text in again.stdout.splitlines()]
    assert [a["line"] for a in answers] == list(range(1, TOTAL + 1))
    for number, answer in enumerate(answers):
        if number in bad:
            assert answer["status"] == "rejected", answer
        elif number < prefix:
            assert answer["status"] == "duplicate", answer  # committed before the kill
            assert answer["errors"] == []
        else:
            assert answer["status"] == "accepted", answer

    # Exactly one receipt per envelope, one rejected receipt per malformed line.
    rows = stored(db)
    accepted = Counter(
        (r["workspace"], r["idempotency_key"]) for r in rows if r["status"] == "accepted"
    )
    assert set(accepted) == {key_of(i) for i in range(TOTAL) if i not in bad}
    assert set(accepted.values()) == {1}
    rejected = Counter(bytes(r["raw"]) for r in rows if r["status"] == "rejected")
    assert rejected == Counter(lines[i] for i in bad)
    assert len(rows) == TOTAL
    receipt_of = {(r["workspace"], r["idempotency_key"]): r["id"] for r in rows}
    for number, answer in enumerate(answers):
        if number not in bad:
            assert answer["receipt"] == receipt_of[key_of(number)]

    status = cli("status", "--json", "-A")
    assert status.returncode == 0, status.stderr
    counts = json.loads(status.stdout)
    duplicates += valid_before(prefix)  # the re-submission acknowledged these
    assert counts["receipts"] == {
        "accepted": TOTAL - len(bad),
        "duplicate": duplicates,
        "rejected": len(bad),
    }
    tally = Counter(a["status"] for a in answers)
    assert tally["accepted"] + tally["duplicate"] + tally["rejected"] == TOTAL
    assert tally["duplicate"] == valid_before(prefix)

    verify = cli("ledger", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.startswith(b"ledger ok: ")
    assert json.loads(cli("ledger", "verify", "--json").stdout) == {
        "ok": True,
        "entries": counts["ledger"]["entries"],
        "head": counts["ledger"]["head"],
    }
    listed = ledger_receipt_ids(db)
    assert set(listed) == {r["id"] for r in rows} and set(listed.values()) == {1}
