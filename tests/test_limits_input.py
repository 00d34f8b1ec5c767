"""Smaller holes an agent could use, each tried on a real state directory through the real
command line: an envelope with a key twice or a control character in ``submitted_at`` (refused
and kept as a rejected receipt, on SQLite and PostgreSQL), integer options past what a database
stores (usage errors, not tracebacks), and control characters in what an agent names (escaped in
every human-readable output, CLI and TUI)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import Store, envelope, quarterdeck, run
from tests.headless import CONFIG, headless_runtime, wait_until

from quarterdeck.domain.display import escape_controls
from quarterdeck.store.database import open_database
from quarterdeck.store.queries import get_item
from quarterdeck.tui.cells import fit
from quarterdeck.tui.detail import render_item


def submit(db: str, state_dir: Path, data: bytes) -> tuple[int, list[dict[str, Any]]]:
    result = quarterdeck("--db", db, "submit", "-", state_dir=state_dir, stdin=data)
    assert "Traceback" not in result.stderr.decode(), result.stderr.decode()
    return result.returncode, [json.loads(text) for text in result.stdout.splitlines()]


def test_duplicate_keys_and_a_nul_in_submitted_at_are_rejected_and_kept(
    tmp_path: Path, database: str
) -> None:
    duplicate = (
        b'{"idempotency_key": "k1", "workspace": "public", "kind": "task", '
        b'"payload": {}, "workspace": "prod"}'
    )
    nested = (
        b'{"idempotency_key": "k2", "workspace": "public", "kind": "task", '
        b'"payload": {"tool": "read_docs", "tool": "drop_database"}}'
    )
    nul = json.dumps(envelope(3, "public", submitted_at="2026-01-01T00:00:00+00:00\u0000"))
    good = json.dumps(envelope(4, "public"))
    code, results = submit(
        database, tmp_path / "state", b"\n".join([duplicate, nested, nul.encode(), good.encode()])
    )
    assert code == 1
    assert [r["status"] for r in results] == ["rejected", "rejected", "rejected", "accepted"]
    assert results[0]["errors"] == [
        '$: duplicate key "workspace" in a JSON object: which value is meant is ambiguous'
    ]
    assert results[1]["errors"] == [
        '$: duplicate key "tool" in a JSON object: which value is meant is ambiguous'
    ]
    assert results[2]["errors"] == [
        "submitted_at: holds control character U+0000: must be an ISO-8601 instant with a time zone"
    ]
    store = Store(database)
    for result, raw in zip(results[:3], [duplicate, nested, nul.encode()], strict=True):
        row = store.one("SELECT * FROM receipts WHERE id = ?", result["receipt"])
        assert row is not None and row["status"] == "rejected"
        assert bytes(row["raw"]) == raw and row["raw_size"] == len(raw)  # nothing lost
    # Neither workspace got a turn from the ambiguous envelope.
    assert store.value("SELECT count(*) FROM receipts WHERE status = 'accepted'") == 1


@pytest.mark.parametrize(
    "args",
    [
        ("ledger", "export", "--since", "99999999999999999999999"),
        ("ls", "turns", "--limit", "99999999999999999999"),
        ("ls", "receipts", "--limit", "9223372036854775808"),
        ("approvals", "--limit", "99999999999999999999"),
        ("db", "upgrade", "--to", "99999999999999999999"),
        ("db", "downgrade", "--to", "99999999999999999999"),
        ("run", "--headless", "--metrics-port", "70000"),
        ("snooze", str(uuid.uuid4()), "--for", "99999999999999999999h"),
    ],
)
def test_integer_options_past_what_a_database_stores_are_usage_errors(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    state_dir = tmp_path / "state"
    quarterdeck("db", "upgrade", state_dir=state_dir, check=True)
    result = quarterdeck(*args, state_dir=state_dir)
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert "Traceback" not in err and "OverflowError" not in err, err
    assert err.startswith("usage:") or err.startswith("quarterdeck: error:"), err
    assert "expected a" in err, err


def test_the_largest_stored_integer_is_still_taken(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    quarterdeck("db", "upgrade", state_dir=state_dir, check=True)
    result = quarterdeck("ledger", "export", "--since", str(2**63 - 1), state_dir=state_dir)
    assert result.returncode == 0 and result.stdout == b"", result.stderr.decode()


def test_escape_controls() -> None:
    assert escape_controls("read_docs") == "read_docs"
    assert escape_controls("a\x1b[2K\rb\n\t\x00\x7f\x9b") == "a\\x1b[2K\\rb\\n\\t\\x00\\x7f\\x9b"
    assert escape_controls("evil\u202etxt.exe") == "evil\\u202etxt.exe"
    assert escape_controls("café ✓ 日本") == "café ✓ 日本"


SPOOF_TOOL = "drop_database\x1b[2K\r\x1b[1Gread_docs"
"""Drawn raw, a terminal shows ``read_docs``: the line is cleared and the cursor sent home."""
SPOOF_ARGS = {"table": "users\x1b[8m hidden", "note": "line\nbreak"}
ASK_EVERYTHING = """
[defaults]
outcome = "allow"

[[rules]]
name = "everything"
tool = "*"
outcome = "require_approval"
deadline_s = 600
"""


def test_control_characters_an_agent_sends_are_escaped_in_every_human_output(
    tmp_path: Path,
) -> None:
    with headless_runtime(tmp_path, ASK_EVERYTHING, CONFIG) as runtime:
        action_id = f"spoof-{uuid.uuid4()}"

        async def ask() -> None:
            # The database path: the tool and arguments are whatever the envelope says.
            async with runtime.client(daemon=False) as client:
                with contextlib.suppress(Exception):
                    await client.request_approval(
                        SPOOF_TOOL, SPOOF_ARGS, action_id=action_id, timeout_s=20
                    )

        async def main() -> None:
            asking = asyncio.create_task(ask())
            try:
                row = await asyncio.to_thread(runtime.approval_for, action_id, 20)
                assert row["tool"] == SPOOF_TOOL  # stored as sent: nothing lost
                outputs = {
                    "approvals": runtime.cli("approvals"),
                    "ls": runtime.cli("ls", "approvals"),
                    "show": runtime.cli("show", row["id"]),
                }
                for name, result in outputs.items():
                    assert result.returncode == 0, (name, result.stderr)
                    text = result.stdout.decode()
                    for char in ("\x1b", "\r", "\x07", "\u202e"):
                        assert char not in text, (name, text)
                shown = outputs["show"].stdout.decode()
                assert escape_controls(SPOOF_TOOL) in shown
                # the requester is no name the agent chose: nobody authenticated it
                assert "unauthenticated:receipt/" in shown
                assert "drop_database\\x1b[2K\\r" in outputs["approvals"].stdout.decode()
                # JSON for scripts stays exact.
                exact = json.loads(runtime.cli("show", row["id"], "--json").stdout)
                assert exact["tool"] == SPOOF_TOOL

                db = await open_database(runtime.url, upgrade=False)
                try:
                    item = await get_item(db, row["id"], workspace=None)
                finally:
                    await db.dispose()
                assert item is not None
                detail = render_item(item).plain
                for char in ("\x1b", "\r", "\x07", "\u202e"):
                    assert char not in detail, detail
                assert escape_controls(SPOOF_TOOL) in detail
                assert "users\\u001b[8m hidden" in detail  # the arguments, as JSON
                cell = fit(SPOOF_TOOL, 60)
                assert cell.startswith("drop_database\\x1b[2K\\r") and "\x1b" not in cell
                assert fit("line\nbreak", 12) == "line\\nbreak "
            finally:
                asking.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asking

        run(main())
        wait_until(lambda: runtime.proc.poll() is None, 1, "the runtime to be alive")
