"""`quarterdeck run --headless --until-idle`: work through what is queued, then exit (on SQLite
and on PostgreSQL)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import REPO, Store, quarterdeck


def test_until_idle_works_through_the_queue_and_exits(tmp_path: Path, database: str) -> None:
    state = tmp_path / "state"
    envelopes = str(REPO / "examples" / "envelopes.jsonl")
    submitted = quarterdeck("--db", database, "submit", envelopes, state_dir=state)
    assert submitted.returncode == 0, submitted.stderr
    ran = quarterdeck("--db", database, "run", "--headless", "--until-idle", state_dir=state)
    assert ran.returncode == 0, ran.stderr
    logs = [json.loads(line) for line in ran.stderr.decode().splitlines()]
    assert [entry["message"] for entry in logs][-1] == "daemon stopped"
    store = Store(database)
    turns = [row["state"] for row in store.rows("SELECT state FROM turns")]
    unapplied = store.value(
        "SELECT count(*) FROM receipts WHERE status = 'accepted' AND produced_type IS NULL"
    )
    live = store.value(
        "SELECT count(*) FROM missions WHERE state IN ('queued', 'running', 'blocked')"
    )
    assert len(turns) == 3 and set(turns) <= {"completed", "failed"}
    assert (unapplied, live) == (0, 0)
    verified = quarterdeck("--db", database, "ledger", "verify", "--json", state_dir=state)
    assert json.loads(verified.stdout)["ok"] is True


def test_until_idle_needs_headless(tmp_path: Path) -> None:
    result = quarterdeck("run", "--until-idle", state_dir=tmp_path / "state")
    assert result.returncode == 2
    assert len(result.stderr.decode().strip().splitlines()) == 1
