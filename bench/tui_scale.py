"""The control center at scale: first frame, approve-to-decided latency, peak memory.

Usage: python bench/tui_scale.py [--turns N] [--ledger N] [--approvals N] [--presses N]

A child process seeds a fresh SQLite store with N turns (default 100,000), a ledger of N
entries (default 1,000,000, appended through the store's own chain) and N pending approvals
(default 1,000). Then this process starts an embedded runtime on it whose simulated lane is fed
30 tasks a second, paced by the clock (about 200 ledger events a second), and the app
(headless, 120x40) on the same event loop.

Measured: seconds from creating the app to the first complete frame (the header and the
approvals pane filled, and the screen painted), and from pressing ``5`` to the ledger pane's
first page; milliseconds from an ``a`` keypress on the first approval to that approval gone
from the pane as decided (the key posted to the app as a terminal delivers it, not through the
test pilot, which waits for the screen to go idle), p50/p95 over N presses (default 100); this
process's peak RSS; the load the app ran under: tasks fed a second, and ledger entries committed
a second (the runtime's and the decisions').
Prints JSON next to the targets (1.5 s, 150 ms, 300 MB).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from quarterdeck.domain.canonical import canonical_text
from quarterdeck.domain.clock import format_instant, utc_now
from quarterdeck.domain.ids import new_ids
from quarterdeck.store.database import open_database
from quarterdeck.store.writer import Writer, WriteTxn

BLOCK = 20_000
FEED_PER_S = 30.0
FEED_TICK_S = 0.1
TARGETS = {"first_frame_s": 1.5, "approve_p95_ms": 150.0, "peak_rss_mb": 300.0}


def _ledger_block(txn: WriteTxn, start: int, count: int) -> None:
    for i in range(start, start + count):
        txn.ledger.append(
            at=txn.at, workspace="default", actor="seed", action="turn.running",
            subject_type="turn", subject_id=f"seed-{i // 4:08d}", from_state="leased",
            to_state="running", payload={"version": 2, "n": i},
        )  # fmt: skip


def _items(txn: WriteTxn, turns: int, approvals: int) -> None:
    at = txn.at
    rows = []
    for turn_id in new_ids(turns):
        rows.append({"id": turn_id, "at": at})
    txn.conn.exec_driver_sql(
        "INSERT INTO turns (id, workspace, state, version, attempt, created_at, updated_at, "
        "data, lane, objective) VALUES (?, 'default', 'completed', 3, 1, ?, ?, '{}', 'sim', "
        "'seeded')",
        [(r["id"], r["at"], r["at"]) for r in rows],
    )
    deadline = format_instant(utc_now().replace(year=utc_now().year + 1))
    decisions, items = [], []
    for n, (approval_id, decision_id) in enumerate(
        zip(new_ids(approvals), new_ids(approvals), strict=True)
    ):
        key = f"sdk:seed-{n}"
        decisions.append((decision_id, at, key, approval_id))
        items.append((approval_id, at, at, decision_id, key, f"seed-{n}", deadline))
    txn.conn.exec_driver_sql(
        "INSERT INTO decisions (id, workspace, at, kind, action_key, lane, tool, args, outcome, "
        "verdict, trace, policy_hash, approval_id) VALUES (?, 'default', ?, 'sdk', ?, 'sim', "
        "'deploy', '{}', 'require_approval', 'pending', '[]', 'seed', ?)",
        decisions,
    )
    txn.conn.exec_driver_sql(
        "INSERT INTO approvals (id, workspace, state, version, attempt, created_at, updated_at, "
        "data, decision_id, action_key, action_id, kind, lane, tool, args, approver, level, "
        "ladder, on_expiry, deadline_s, deadline_at) VALUES (?, 'default', 'pending', 1, 0, ?, "
        "?, '{}', ?, ?, ?, 'sdk', 'sim', 'deploy', '{\"env\": \"prod\"}', 'supervisor', 0, "
        "'[]', 'reject', 86400, ?)",
        items,
    )


async def seed(path: Path, turns: int, ledger: int, approvals: int) -> None:
    """Fill a fresh store (run in a child process, so its memory is not counted)."""
    db = await open_database(str(path))
    async with Writer(db) as writer:
        for start in range(0, ledger, BLOCK):
            count = min(BLOCK, ledger - start)
            await writer.submit(lambda txn, s=start, c=count: _ledger_block(txn, s, c))
        await writer.submit(lambda txn: _items(txn, turns, approvals))
    await db.dispose()


def _task(n: int) -> dict[str, Any]:
    return {
        "idempotency_key": f"load-{n}",
        "workspace": "default",
        "kind": "task",
        "payload": {"lane": "sim", "objective": f"load {n}",
                    "input": {"sim": {"latency_ms": 0, "progress": 0, "outcome": "complete",
                                      "actions": []}}},
    }  # fmt: skip


async def feed(runtime: Any, stop: asyncio.Event, per_s: float = FEED_PER_S) -> int:
    """Submit tasks at ``per_s`` until stopped (about seven ledger entries each): paced by the
    clock, each tick submitting what fell due since the last, so that a slow commit does not
    lower the rate."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    n = 0
    while not stop.is_set():
        due = int((loop.time() - began) * per_s) + 1
        if due > n:
            await runtime.submit([canonical_text(_task(i)).encode() for i in range(n, due)])
            n = due
        await asyncio.sleep(FEED_TICK_S)
    return n


class LedgerRate:
    """Ledger entries a second over a window, from the writer's commits."""

    def __init__(self, runtime: Any) -> None:
        self.first: tuple[float, int] | None = None
        self.last: tuple[float, int] | None = None
        runtime.writer.on_commit(self._committed)

    def _committed(self, head_seq: int) -> None:
        self.last = (time.perf_counter(), head_seq)
        if self.first is None:
            self.first = self.last

    def per_s(self) -> float:
        """Entries a second from the first commit seen to the last."""
        if self.first is None or self.last is None or self.last[0] <= self.first[0]:
            return 0.0
        return (self.last[1] - self.first[1]) / (self.last[0] - self.first[0])


async def measure(path: Path, presses: int) -> dict[str, Any]:
    """Start runtime and app on the seeded store; time the first frame and the presses."""
    from quarterdeck.client.console import EmbeddedConsole
    from quarterdeck.runtime.config import parse_config
    from quarterdeck.runtime.runtime import Runtime
    from quarterdeck.tui.app import create_app

    db = await open_database(str(path))
    config = parse_config(
        {"lanes": {"sim": {"adapter": "sim", "concurrency": 8,
                           "options": {"action_rate": 0.0, "failure_rate": 0.0}}}}
    )  # fmt: skip
    runtime = Runtime(db, config, state_dir=path.parent / "state")
    await runtime.start()
    stop = asyncio.Event()
    rate = LedgerRate(runtime)
    feeder = asyncio.get_running_loop().create_task(feed(runtime, stop))
    started = time.perf_counter()
    app = create_app(EmbeddedConsole(runtime))
    first_frame = None
    samples: list[float] = []
    async with app.run_test(size=(120, 40)) as pilot:
        approvals = app.query_one("#approvals")
        while first_frame is None:
            if app.snapshot is not None and approvals.row_count:
                # The screen painted with them (not pilot.pause(), which waits for the process
                # to go idle, up to a second: never, with the runtime fed).
                await approvals.wait_for_refresh()
                first_frame = time.perf_counter() - started
            await asyncio.sleep(0.005)
        ledger_started = time.perf_counter()
        app.simulate_key("5")
        ledger = app.query_one("#ledger")
        while not ledger.row_count:
            await asyncio.sleep(0.005)
        ledger_s = time.perf_counter() - ledger_started
        app.simulate_key("1")
        await pilot.pause(0.3)
        for _ in range(presses):
            target = approvals.selected_key()  # type: ignore[attr-defined]
            pressed = time.perf_counter()
            app.simulate_key("a")  # as a terminal delivers it: posted, not awaited
            while target in approvals.lines:  # type: ignore[attr-defined]
                await asyncio.sleep(0.002)
            samples.append((time.perf_counter() - pressed) * 1000)
    stop.set()
    fed_s = time.perf_counter() - started
    events_per_s = rate.per_s()
    submitted = await feeder
    await runtime.stop(grace_s=1.0)
    await db.dispose()
    ordered = sorted(samples)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "first_frame_s": round(first_frame, 3),
        "approve_to_decided_ms": {
            "p50": round(statistics.median(ordered), 1),
            "p95": round(ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))], 1),
            "max": round(ordered[-1], 1),
        },
        "ledger_pane_s": round(ledger_s, 3),
        "presses": presses,
        "peak_rss_mb": round(peak_mb, 1),
        "tasks_fed": submitted,
        "feed_tasks_per_s": round(submitted / fed_s, 1),
        "ledger_events_per_s": round(events_per_s, 1),
    }


def main() -> None:
    """Seed in a child process, measure here, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=100_000)
    parser.add_argument("--ledger", type=int, default=1_000_000)
    parser.add_argument("--approvals", type=int, default=1_000)
    parser.add_argument("--presses", type=int, default=100)
    parser.add_argument("--seed-only", metavar="DB", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.seed_only:
        asyncio.run(seed(Path(args.seed_only), args.turns, args.ledger, args.approvals))
        return
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "q.db"
        began = time.perf_counter()
        subprocess.run(
            [sys.executable, __file__, "--seed-only", str(path), "--turns", str(args.turns),
             "--ledger", str(args.ledger), "--approvals", str(args.approvals)],
            check=True,
        )  # fmt: skip
        seeded_s = time.perf_counter() - began
        figures = asyncio.run(measure(path, min(args.presses, args.approvals)))
    result = {
        "turns": args.turns,
        "ledger_entries": args.ledger,
        "approvals": args.approvals,
        "seed_s": round(seeded_s, 1),
        **figures,
        "targets": TARGETS,
        "within_targets": figures["first_frame_s"] < TARGETS["first_frame_s"]
        and figures["approve_to_decided_ms"]["p95"] < TARGETS["approve_p95_ms"]
        and figures["peak_rss_mb"] < TARGETS["peak_rss_mb"],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
