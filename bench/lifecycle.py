"""Lifecycle throughput: turns/s through the whole runtime path next to huey's SQLite queue,
or (with ``--db postgresql://...``) next to pgqueuer on a PostgreSQL server.

Usage: python bench/lifecycle.py [--turns N] [--huey-tasks N] [--concurrency C] [--batch B]
                                 [--huey-workers W] [--rounds R] [--profile]
       python bench/lifecycle.py --db postgresql://USER@HOST:PORT/DB [--nodes 1,3]
                                 [--pgqueuer-jobs M] [--pgqueuer-batch 100] [--turns N]
                                 [--concurrency C] [--batch B] [--rounds R] [--profile]
       python bench/lifecycle.py --start-cluster [...]      (or: --db postgresql --start-cluster)

SQLite (no ``--db``):

Quarterdeck's side: a fresh state directory, a ``Runtime`` with one ``sim`` lane (concurrency C,
no fallback), and N task envelopes (JSON lines, ``input.sim`` set to a no-op: no latency, no
progress messages, no actions, outcome complete) submitted through ``Runtime.submit`` in
batches of B. Each becomes a receipt, a turn and a mission; the mission is claimed under a
lease, run on the sim lane and finished, the turn completed, every step on the ledger. The
clock runs from the first submit to the commit that completed the last turn (the store is
polled every 50 ms with a raw sqlite3 COUNT; the moment is then read off the writer's commit
times, so the poll interval does not inflate the figure; the polled moment is printed too).

The peer: huey's ``SqliteHuey`` (WAL, ``synchronous=NORMAL`` like Quarterdeck's store; huey only
offers FULL or OFF through ``fsync``, so a storage subclass sets NORMAL), a consumer with
worker threads in this process started before the first enqueue, and N no-op tasks enqueued
one by one from the main thread while it runs. The clock runs from the first enqueue to the
last task executed. huey is not a dependency of the project: when ``import huey`` fails it is
installed into ``bench/.deps`` (git-ignored) for this script only.

Rounds alternate the two sides (medians reported). Prints JSON; ``--profile`` also prints a
cProfile of one extra run of Quarterdeck's side (top 20 by tottime) on stderr.

PostgreSQL (``--db URL``, see ``bench/pg_lifecycle.py`` for the method): Quarterdeck with 1
and with 3 node processes (``quarterdeck run --headless``; ``--nodes`` picks the counts) fed
from this process through ``quarterdeck.client.Client``, next to pgqueuer's no-op job
throughput (enqueue and dequeue batches of 100) on the same server, each run on a fresh
database that this script creates and drops (the URL's user needs CREATEDB; the URL's own
database is only used to connect). pgqueuer is installed into ``bench/.deps`` on first use.
Prints ``turns_per_s_1_node``, ``turns_per_s_3_nodes``, ``pgqueuer_jobs_per_s``,
``ratio_vs_pgqueuer`` (target >= 0.5) and ``speedup_3_vs_1`` (target > 1) as JSON, with the
CPU each side spent per turn or job (nodes or consumer, server, bench).
``--start-cluster`` needs no server: it starts a throwaway local cluster with
``tests/pgcluster.py``'s ``PgCluster(durable=True)`` (fsync and synchronous commit on, as in
production; the server binaries must be installed), runs against it and removes it; ``--db``
may then be omitted or given as the bare word ``postgresql``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import importlib
import io
import json
import logging
import pstats
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from quarterdeck.runtime.config import parse_config
from quarterdeck.runtime.runtime import Runtime
from quarterdeck.store.database import open_database, sqlite_url
from quarterdeck.store.ledger import verify_ledger
from quarterdeck.store.queries import status

DEPS = Path(__file__).resolve().parent / ".deps"
POLL_S = 0.05


def make_lines(count: int) -> list[bytes]:
    return [
        json.dumps(
            {
                "idempotency_key": f"life-{i}",
                "workspace": "bench",
                "kind": "task",
                "payload": {
                    "lane": "sim",
                    "objective": f"no-op {i}",
                    "input": {
                        "sim": {
                            "latency_ms": 0,
                            "progress": 0,
                            "outcome": "complete",
                            "actions": [],
                        }
                    },
                },
            }
        ).encode()
        for i in range(count)
    ]


# --- Quarterdeck -------------------------------------------------------------------------------


async def through_runtime(
    state_dir: Path,
    lines: list[bytes],
    batch: int,
    concurrency: int,
    timeout_s: float,
    checkpoints: bool = True,
) -> dict[str, Any]:
    config = parse_config(
        {
            "default_lane": "sim",
            "lanes": {
                "sim": {"adapter": "sim", "concurrency": concurrency, "options": {"seed": 1}}
            },
            "ledger": {"checkpoints": checkpoints},
        },
        "bench",
    )
    db = await open_database(sqlite_url(state_dir))
    path = db.sqlite_path
    assert path is not None
    runtime = Runtime(db, config, state_dir=state_dir)
    commits: list[tuple[float, int]] = []
    runtime.writer.on_commit(lambda head: commits.append((time.perf_counter(), head)))
    await runtime.start()
    probe = sqlite3.connect(path, isolation_level=None)
    total = len(lines)

    async def submit_all() -> None:
        for start in range(0, total, batch):
            results = await runtime.submit(lines[start : start + batch])
            bad = [r for r in results if r.status != "accepted"]
            assert not bad, bad[:3]

    started = time.perf_counter()
    submitter = asyncio.get_running_loop().create_task(submit_all())
    completed = 0
    while True:
        await asyncio.sleep(POLL_S)
        completed = probe.execute(
            "SELECT COUNT(*) FROM turns WHERE state = 'completed'"
        ).fetchone()[0]
        if completed >= total or time.perf_counter() - started > timeout_s:
            break
    observed = time.perf_counter() - started
    await submitter
    last_seq = probe.execute(
        "SELECT MAX(seq) FROM ledger WHERE action = 'turn.completed'"
    ).fetchone()[0]
    states = dict(probe.execute("SELECT state, COUNT(*) FROM turns GROUP BY state").fetchall())
    probe.close()
    recancelled = await stop_runtime(runtime)
    done_at = next((at for at, head in commits if last_seq is not None and head >= last_seq), None)
    elapsed = (done_at - started) if done_at is not None else observed
    counts = await status(db, None)
    verified = await verify_ledger(db)
    await db.dispose()
    return {
        "complete": completed >= total,
        "turn_states": states,
        "elapsed_s": elapsed,
        "observed_elapsed_s": observed,
        "commits": runtime.writer.commits,
        "write_ops": runtime.writer.ops,
        "receipts_accepted": counts["receipts"]["accepted"],
        "turns": sum(counts["turns"].values()),
        "turns_completed": counts["turns"].get("completed", 0),
        "missions": sum(counts["missions"].values()),
        "missions_completed": counts["missions"].get("completed", 0),
        "ledger_entries": counts["ledger"]["entries"],
        "ledger_verified": verified.ok,
        "stop_recancelled": recancelled,
    }


LOOP_TASKS = frozenset(f"qd-{name}" for name in ("pump", "heartbeat", "sweep", "watch", "events"))


async def stop_runtime(runtime: Runtime) -> int:
    """``runtime.stop()``, cancelling its loop tasks again while it hangs; returns how often.

    A guard, not timed: before commit 2830171 the pump waited in ``asyncio.wait_for``, which on
    Python 3.11 can swallow a cancellation that arrives in the same loop iteration as the
    awaited event, and ``Runtime.stop`` then waited for the pump forever. Expected to be 0 now.
    """
    stopping = asyncio.get_running_loop().create_task(runtime.stop(grace_s=5))
    again = 0
    while True:
        finished, _ = await asyncio.wait({stopping}, timeout=1.0)
        if finished:
            stopping.result()
            return again
        for task in asyncio.all_tasks():
            if task.get_name() in LOOP_TASKS and not task.done():
                task.cancel()
                again += 1


def run_ours(
    state_dir: Path,
    lines: list[bytes],
    args: argparse.Namespace,
    profile: bool = False,
    checkpoints: bool = True,
) -> dict[str, Any]:
    coroutine = through_runtime(
        state_dir, lines, args.batch, args.concurrency, args.timeout, checkpoints
    )
    if not profile:
        return asyncio.run(coroutine)
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        return asyncio.run(coroutine)
    finally:
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(20)
        print(out.getvalue(), file=sys.stderr)


# --- huey --------------------------------------------------------------------------------------


def import_huey() -> Any:
    try:
        import huey
    except ImportError:
        if str(DEPS) not in sys.path:
            sys.path.insert(0, str(DEPS))
        try:
            import huey
        except ImportError:
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(DEPS), "huey"],
                check=True,
            )
            importlib.invalidate_caches()  # bench/.deps did not exist when it joined sys.path
            import huey
    logging.getLogger("huey").setLevel(logging.WARNING)
    return huey


def through_huey(directory: Path, count: int, workers: int) -> dict[str, Any]:
    huey = import_huey()
    from huey.consumer import Consumer
    from huey.storage import SqliteStorage

    class NormalSyncStorage(SqliteStorage):
        def _create_connection(self) -> sqlite3.Connection:
            conn = super()._create_connection()
            conn.execute("PRAGMA synchronous=NORMAL")
            return conn

    queue = huey.SqliteHuey(
        "bench",
        filename=str(directory / "huey.db"),
        results=False,
        journal_mode="wal",
        storage_class=NormalSyncStorage,
    )
    lock = threading.Lock()
    done = threading.Event()
    state = {"executed": 0, "last": 0.0}

    @queue.task()
    def noop() -> None:
        with lock:
            state["executed"] += 1
            if state["executed"] == count:
                state["last"] = time.perf_counter()
                done.set()

    consumer = Consumer(
        queue,
        workers=workers,
        worker_type="thread",
        periodic=False,
        initial_delay=0.001,
        max_delay=0.01,
        check_worker_health=False,
    )
    consumer.start()
    try:
        started = time.perf_counter()
        for _ in range(count):
            noop()
        enqueued = time.perf_counter() - started
        finished = done.wait(timeout=600)
    finally:
        consumer.stop(graceful=True)
        queue.storage.close()
    return {
        "complete": finished,
        "executed": state["executed"],
        "elapsed_s": state["last"] - started if finished else float("nan"),
        "enqueue_s": enqueued,
    }


# --- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=5_000)
    parser.add_argument("--huey-tasks", type=int, default=None, help="default: --turns")
    parser.add_argument("--concurrency", type=int, default=256, help="the sim lane's concurrency")
    parser.add_argument("--batch", type=int, default=500, help="envelopes per Runtime.submit")
    parser.add_argument("--huey-workers", type=int, default=2, help="huey consumer threads")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds; medians")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up after (s)")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile one extra run of our side (stderr)"
    )
    parser.add_argument(
        "--db", metavar="URL", default=None,
        help="a postgresql:// server URL: compare with pgqueuer there instead of huey",
    )  # fmt: skip
    parser.add_argument(
        "--start-cluster", action="store_true",
        help="PostgreSQL on a throwaway local durable cluster (tests/pgcluster.py)",
    )  # fmt: skip
    parser.add_argument("--nodes", default="1,3", help="PostgreSQL: node counts to measure")
    parser.add_argument("--pgqueuer-jobs", type=int, default=None, help="default: --turns")
    parser.add_argument("--pgqueuer-batch", type=int, default=100, help="enqueue/dequeue batch")
    parser.add_argument(
        "--checkpoints-compare", action="store_true",
        help="our side only, each round with and without signed ledger checkpoints",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.db is not None or args.start_cluster:
        if not args.start_cluster and not args.db.startswith(("postgresql", "postgres:")):
            parser.error("--db needs a postgresql://... URL (or use --start-cluster)")
        if not args.start_cluster and "://" not in args.db:
            parser.error(f"--db {args.db} names no server: give a URL or add --start-cluster")
        if args.start_cluster and args.db not in (None, "postgresql", "postgres"):
            parser.error("--start-cluster starts its own server: leave --db out")
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from pg_lifecycle import run_postgres

        return run_postgres(args, make_lines(args.turns))
    if args.checkpoints_compare:
        return compare_checkpoints(args)
    huey_tasks = args.huey_tasks if args.huey_tasks is not None else args.turns
    lines = make_lines(args.turns)
    ours: list[dict[str, Any]] = []
    peers: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_number in range(args.rounds):
            ours.append(run_ours(Path(tmp) / f"state-{round_number}", lines, args))
            huey_dir = Path(tmp) / f"huey-{round_number}"
            huey_dir.mkdir()
            peers.append(through_huey(huey_dir, huey_tasks, args.huey_workers))
        if args.profile:
            run_ours(Path(tmp) / "state-profile", lines, args, profile=True)
    ok = all(r["complete"] and r["ledger_verified"] for r in ours) and all(
        p["complete"] for p in peers
    )
    rate = statistics.median(args.turns / r["elapsed_s"] for r in ours)
    peer = statistics.median(huey_tasks / p["elapsed_s"] for p in peers)
    last = ours[-1]
    figures = {
        "turns": args.turns,
        "concurrency": args.concurrency,
        "batch": args.batch,
        "rounds": args.rounds,
        "turns_per_s": round(rate),
        "turns_per_s_rounds": [round(args.turns / r["elapsed_s"]) for r in ours],
        "elapsed_s": round(statistics.median(r["elapsed_s"] for r in ours), 3),
        "observed_elapsed_s": round(statistics.median(r["observed_elapsed_s"] for r in ours), 3),
        "huey_tasks": huey_tasks,
        "huey_workers": args.huey_workers,
        "huey_tasks_per_s": round(peer),
        "huey_tasks_per_s_rounds": [round(huey_tasks / p["elapsed_s"]) for p in peers],
        "huey_elapsed_s": round(statistics.median(p["elapsed_s"] for p in peers), 3),
        "huey_enqueue_s": round(statistics.median(p["enqueue_s"] for p in peers), 3),
        "ratio_vs_huey": round(rate / peer, 3),
        "receipts_accepted": last["receipts_accepted"],
        "turns_total": last["turns"],
        "turns_completed": last["turns_completed"],
        "turn_states": last["turn_states"],
        "missions": last["missions"],
        "missions_completed": last["missions_completed"],
        "ledger_entries": last["ledger_entries"],
        "ledger_verified": all(r["ledger_verified"] for r in ours),
        "writer_commits": last["commits"],
        "writer_ops": last["write_ops"],
        "stop_recancelled": sum(r["stop_recancelled"] for r in ours),
        "target_turns_per_s": 1_000,
    }
    print(json.dumps(figures))
    return 0 if ok else 1


def compare_checkpoints(args: argparse.Namespace) -> int:
    """What signed checkpoints cost: the same turns through the runtime with them (the
    default: every 1000 entries or 60 s, and at drain) and without, interleaved per round."""
    lines = make_lines(args.turns)
    runs: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
    signed: list[int] = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_number in range(args.rounds):
            for checkpoints in (False, True):
                state = Path(tmp) / f"state-{round_number}-{int(checkpoints)}"
                runs[checkpoints].append(run_ours(state, lines, args, checkpoints=checkpoints))
                if checkpoints:
                    file = state / "ledger-checkpoints.jsonl"
                    signed.append(len(file.read_text().splitlines()) if file.exists() else 0)
    rates = {k: [args.turns / r["elapsed_s"] for r in v] for k, v in runs.items()}
    with_, without = statistics.median(rates[True]), statistics.median(rates[False])
    ok = all(r["complete"] and r["ledger_verified"] for v in runs.values() for r in v)
    print(
        json.dumps(
            {
                "turns": args.turns,
                "concurrency": args.concurrency,
                "rounds": args.rounds,
                "ledger_entries": runs[True][-1]["ledger_entries"],
                "turns_per_s_with_checkpoints": round(with_),
                "turns_per_s_without_checkpoints": round(without),
                "rounds_with": [round(r) for r in rates[True]],
                "rounds_without": [round(r) for r in rates[False]],
                "checkpoints_signed": signed,
                "cost_pct": round(100 * (without - with_) / without, 2),
            }
        )
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
