"""Agent functions for the ``python`` lane, imported by path (``tests.agents:NAME``) by the
runtime in the test process and by ``quarterdeck run --headless`` daemons the tests start.

The switches below are module state: a test flips them in its own process only, so a daemon
(a separate process, with a fresh module) always sees the defaults.
"""

from __future__ import annotations

import os
import time
from typing import Any

from quarterdeck.runtime.lanes.base import LaneFailure, MissionContext

FLAKY: dict[str, bool] = {"fail": False}
"""``flaky`` fails while ``FLAKY["fail"]`` is true."""

BLOCK: dict[str, Any] = {}
"""When ``BLOCK["db"]`` names a database (a SQLite file or a PostgreSQL URL), ``blocking``
blocks the event loop (``time.sleep``, no await) until the mission's turn is completed in that
database by someone else, or for ``BLOCK["max_s"]`` seconds. Empty (the default, and always in a daemon): it returns at once."""


async def flaky(ctx: MissionContext) -> dict[str, Any]:
    """Fail while told to, else return a small deliverable."""
    if FLAKY["fail"]:
        raise LaneFailure("flaky: told to fail")
    return {"flaky": "ok", "objective": ctx.objective}


async def blocking(ctx: MissionContext) -> dict[str, Any]:
    """An agent that (in the test process) wrongly blocks the event loop past its lease."""
    database = BLOCK.get("db")
    if not database:
        return {"by": "daemon", "pid": os.getpid(), "attempt": ctx.attempt}
    from tests.conftest import Store  # only in the test process: daemons never get here

    store = Store(database)
    deadline = time.monotonic() + float(BLOCK.get("max_s", 20))
    BLOCK["blocked_at"] = time.monotonic()
    while time.monotonic() < deadline:
        if store.value("SELECT state FROM turns WHERE id = ?", ctx.turn_id) == "completed":
            break
        time.sleep(0.05)  # deliberately blocking: no await
    BLOCK["unblocked_at"] = time.monotonic()
    return {"by": "blocked", "pid": os.getpid(), "attempt": ctx.attempt}


def sync_agent(ctx: MissionContext) -> dict[str, Any]:
    """A plain function: runs in a worker thread, reports progress and asks for an action."""
    ctx.emit("progress", {"message": "working in a thread"})
    decision = ctx.request_action("sync-1", "write_file", {"path": "notes.txt"})
    return {"workdir": str(ctx.workdir), "decision": decision.outcome, "args": dict(decision.args)}
