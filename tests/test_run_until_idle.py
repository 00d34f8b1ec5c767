"""`quarterdeck run --headless --until-idle`: work through what is queued, then exit."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from tests.conftest import REPO, quarterdeck


def test_until_idle_works_through_the_queue_and_exits(tmp_path: Path) -> None:
    state = tmp_path / "state"
    submitted = quarterdeck("submit", str(REPO / "examples" / "envelopes.jsonl"), state_dir=state)
    assert submitted.returncode == 0, submitted.stderr
    ran = quarterdeck("run", "--headless", "--until-idle", state_dir=state)
    assert ran.returncode == 0, ran.stderr
    logs = [json.loads(line) for line in ran.stderr.decode().splitlines()]
    assert [entry["message"] for entry in logs][-1] == "daemon stopped"
    with sqlite3.connect(state / "quarterdeck.db") as conn:
        turns = conn.execute("SELECT state FROM turns").fetchall()
        unapplied = conn.execute(
            "SELECT count(*) FROM receipts WHERE status = 'accepted' AND produced_type IS NULL"
        ).fetchone()[0]
        live = conn.execute(
            "SELECT count(*) FROM missions WHERE state IN ('queued', 'running', 'blocked')"
        ).fetchone()[0]
    assert len(turns) == 3 and {state for (state,) in turns} <= {"completed", "failed"}
    assert (unapplied, live) == (0, 0)
    verified = quarterdeck("ledger", "verify", "--json", state_dir=state)
    assert json.loads(verified.stdout)["ok"] is True


def test_until_idle_needs_headless(tmp_path: Path) -> None:
    result = quarterdeck("run", "--until-idle", state_dir=tmp_path / "state")
    assert result.returncode == 2
    assert len(result.stderr.decode().strip().splitlines()) == 1
