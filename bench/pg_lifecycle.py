"""Lifecycle throughput on PostgreSQL: Quarterdeck nodes next to pgqueuer on the same server.

Used by ``bench/lifecycle.py`` when ``--db postgresql://...`` (or ``--start-cluster``) is given;
see its docstring for the command line. Every run gets a fresh database (``CREATE DATABASE``
on the given server through the URL's user, dropped afterwards), so the user must be allowed
to create databases.

Quarterdeck's side: the schema is migrated from this process, then K node processes start,
each ``python -m quarterdeck run --headless --db URL --config F`` (one ``sim`` lane of
concurrency C, no fallback, the built-in allow-all policy). Once every node logged "daemon
running", this process submits N no-op task envelopes (``input.sim``: no latency, no progress,
outcome complete, no actions) through ``quarterdeck.client.Client`` in batches of B, one batch
after the other. The nodes apply the receipts (policy decision, turn, mission), claim the
missions under leases, run them on the sim lane, finish them and complete the turns, every
step on the ledger. The clock runs from the first submit to the transaction that completed
the last turn: the store is polled every 50 ms (an index-served "anything still pending?"
test, and a count of completed turns once nothing is); once every turn is completed the poll reads
``clock_timestamp()`` next to the newest ``turn.completed`` ledger ``at`` (the PostgreSQL
writer stamps each transaction with the database clock, read as it takes the ledger head), and
the gap between them is taken off the poll's moment, so the poll interval does not inflate the
figure (the polled moment is printed too, as ``observed_elapsed_s``, an upper bound; the
figure itself is short of the last commit by that transaction's own duration, tens of ms).
After each run the nodes get SIGTERM, the ledger is verified and the counts are checked (every
receipt accepted, every turn and mission completed).

The peer: pgqueuer (installed into ``bench/.deps`` on first use, see :func:`import_pgqueuer`)
on its own fresh database with its schema installed. One consumer process (a
``QueueManager`` with a no-op async entrypoint, ``batch_size`` 100, otherwise pgqueuer's
defaults) is started and warmed up with one job; then this process enqueues M jobs in batches
of 100 (one ``Queries.enqueue`` call per batch). The clock runs from the first enqueue to the
commit that logged the last job done (pgqueuer moves a finished job to ``pgqueuer_log``, from
its consumer's status buffer; the same poll-and-offset method reads the newest log row's
``created``, the ``now()`` of that statement). The consumer's exit and an empty queue are
checked after each run.

Where the CPU went: over each measured window (first submit to the poll that saw the work
done) the bench reads the CPU time of the node processes (or pgqueuer's consumer) and of the
server processes serving that run's database from ``/proc`` (so the server part needs the
server on this machine, as with ``--start-cluster``; otherwise it is null), and its own
process time (the submitter and the poll). Printed as median microseconds per turn
(``cpu_us_per_turn``: ``nodes``, ``server``, ``bench``) and per job
(``pgqueuer_cpu_us_per_job``: ``consumer``, ``server``, ``bench``). Divided into the cores
the machine has, they bound what either side can reach on it.

Rounds rotate the order of the sides (1 node, pgqueuer, 3 nodes, ...); medians are reported.
``ratio_vs_pgqueuer`` is one node's turns/s over pgqueuer's jobs/s (target >= 0.5) and
``speedup_3_vs_1`` is 3 nodes' turns/s over one node's (target > 1). ``--profile`` adds one
1-node run with the node under cProfile (top functions by tottime and cumulative on stderr).

pgqueuer runs in its own process with the event loop asyncio gives it (uvloop, an optional
speed-up of pgqueuer's own CLI, is not used on either side).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import pstats
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine.url import make_url

from quarterdeck.client import Client
from quarterdeck.store.database import open_database
from quarterdeck.store.ledger import verify_ledger
from quarterdeck.store.queries import status

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
DEPS = BENCH / ".deps"
POLL_S = 0.05
PGQUEUER_PACKAGES = (
    "pgqueuer==1.6.0",
    "croniter",
    "python-dateutil",
    "tzdata",
    "pydantic-settings",
    "python-dotenv",
)
"""Installed with ``--no-deps`` (pgqueuer at the version the bench's calls were written
against), so nothing the project imports is shadowed: pgqueuer's other requirements are in the
project's environment already (anyio, pydantic, typing-inspection, asyncpg) or only needed by
its command line (typer, tabulate, uvloop). The rest — croniter with python-dateutil and tzdata,
pydantic-settings with python-dotenv — are not installed by the project, so a fresh clone gets
them here."""


# --- servers and databases ------------------------------------------------------------------


def plain_dsn(url: str) -> str:
    """``url`` as a plain ``postgresql://`` DSN (asyncpg's spelling)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def shown(url: str) -> str:
    """``url`` with its password hidden."""
    return make_url(url).render_as_string(hide_password=True)


def database_url(server_url: str, name: str) -> str:
    """The URL of database ``name`` on the server of ``server_url``."""
    return make_url(plain_dsn(server_url)).set(database=name).render_as_string(hide_password=False)


async def create_database(server_url: str, prefix: str) -> str:
    """A fresh empty database on the server; returns its URL."""
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(plain_dsn(server_url))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return database_url(server_url, name)


async def drop_database(server_url: str, url: str) -> None:
    """Drop a database :func:`create_database` made (ending its sessions)."""
    name = make_url(url).database
    conn = await asyncpg.connect(plain_dsn(server_url))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def server_facts(server_url: str) -> dict[str, Any]:
    """The server's version and durability settings."""
    conn = await asyncpg.connect(plain_dsn(server_url))
    try:
        facts: dict[str, Any] = {"server_version": await conn.fetchval("SHOW server_version")}
        for setting in ("fsync", "synchronous_commit", "full_page_writes"):
            facts[setting] = await conn.fetchval(f"SHOW {setting}")
        return facts
    finally:
        await conn.close()


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[str]:
    """A durable (fsync on) throwaway cluster from ``tests/pgcluster.py``; yields its URL."""
    sys.path.insert(0, str(REPO / "tests"))
    try:
        from pgcluster import ENABLE_HINT, PgCluster, find_bin_dir
    finally:
        sys.path.remove(str(REPO / "tests"))
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise SystemExit(ENABLE_HINT)
    cluster = PgCluster(bin_dir, durable=True).start()
    try:
        yield cluster.url()
    finally:
        cluster.stop()


# --- where the CPU went -----------------------------------------------------------------------


CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) process ``pid`` has used so far, from ``/proc``; None when
    it cannot be read (gone, or no ``/proc``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def backend_pids(database: str) -> list[int]:
    """The PostgreSQL server processes serving ``database`` on this machine (their title is
    ``postgres: USER DATABASE ...``); empty for a server elsewhere."""
    pids = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        parts = title.split()
        if len(parts) >= 3 and parts[0] == "postgres:" and parts[2] == database:
            pids.append(int(entry.name))
    return pids


@dataclass
class CpuWindow:
    """CPU used over one measured window: by given processes, by the server's processes for
    one database (when the server runs on this machine), and by this process."""

    database: str
    pids: list[int]
    _start: dict[int, float] | None = None
    _server_start: dict[int, float] | None = None
    _own_start: float = 0.0

    def _server(self) -> dict[int, float]:
        found = {pid: process_cpu_s(pid) for pid in backend_pids(self.database)}
        return {pid: cpu for pid, cpu in found.items() if cpu is not None}

    def start(self) -> None:
        self._start = {pid: process_cpu_s(pid) or 0.0 for pid in self.pids}
        self._server_start = self._server()
        self._own_start = time.process_time()

    def stop(self) -> dict[str, float | None]:
        """Seconds of CPU since :meth:`start`: ``processes``, ``server`` (None when no server
        process was found here) and ``bench`` (this process: the submitter and the poll)."""
        assert self._start is not None and self._server_start is not None
        own = time.process_time() - self._own_start
        ours = sum((process_cpu_s(pid) or start) - start for pid, start in self._start.items())
        server_now = self._server()
        server = sum(cpu - self._server_start.get(pid, 0.0) for pid, cpu in server_now.items())
        return {
            "processes": round(ours, 3),
            "server": round(server, 3) if server_now else None,
            "bench": round(own, 3),
        }


async def poll_done(
    url: str,
    count_sql: str,
    last_sql: str,
    target: int,
    started: float,
    timeout_s: float,
    pending_sql: str | None = None,
) -> tuple[bool, int, float, float, datetime | None]:
    """Poll ``count_sql`` every 50 ms until it reaches ``target`` (or the timeout).

    With ``pending_sql`` (an index-served test that is true while work is visibly under way),
    each poll runs that first and counts only once it is false: counting every row 20 times
    a second would load the server the sides are measured on.

    Returns (complete, count, observed elapsed, elapsed, last) where ``last`` is what
    ``last_sql`` reads (a database timestamp, or None) and ``elapsed`` is the observed moment
    minus how long before the poll's ``clock_timestamp()`` that timestamp lies.
    """
    conn = await asyncpg.connect(plain_dsn(url))
    try:
        count = 0
        while True:
            await asyncio.sleep(POLL_S)
            if pending_sql is None or not await conn.fetchval(pending_sql):
                count = int(await conn.fetchval(count_sql))
            if count >= target or time.perf_counter() - started > timeout_s:
                break
        before = time.perf_counter()
        row = await conn.fetchrow(f"SELECT clock_timestamp() AS now, ({last_sql}) AS last")
        after = time.perf_counter()
        observed = after - started
        last = row["last"]
        if isinstance(last, str):
            last = datetime.fromisoformat(last)
        if count < target or last is None:
            return False, count, observed, observed, last
        lag = (row["now"] - last).total_seconds()
        return True, count, observed, (before + after) / 2 - lag - started, last
    finally:
        await conn.close()


# --- Quarterdeck ----------------------------------------------------------------------------


def node_config(concurrency: int) -> str:
    """The nodes' ``quarterdeck.toml``: one ``sim`` lane, no fallback."""
    return (
        'default_lane = "sim"\n\n[lanes.sim]\nadapter = "sim"\n'
        f"concurrency = {concurrency}\noptions = {{ seed = 1 }}\n"
    )


@dataclass
class Node:
    """One ``quarterdeck run --headless`` process."""

    proc: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-chars:]

    def running(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"a node exited ({self.proc.returncode}):\n{self.log_tail()}")
        for raw in self.log.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                if json.loads(raw).get("message") == "daemon running":
                    return True
        return False

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return int(self.proc.returncode)


def start_node(url: str, root: Path, index: int, profile: Path | None) -> Node:
    """Start node ``index`` (state dir, log and config under ``root``)."""
    state_dir = root / f"node-{index}"
    state_dir.mkdir(parents=True, exist_ok=True)
    log = root / f"node-{index}.log"
    runner = [sys.executable]
    if profile is not None:
        runner += ["-m", "cProfile", "-o", str(profile)]
    command = [*runner, "-m", "quarterdeck", "--state-dir", str(state_dir), "run", "--headless",
               "--db", url, "--config", str(root / "quarterdeck.toml"),
               "--node-id", f"bench-node-{index}"]  # fmt: skip
    env = {**os.environ}
    env.pop("QUARTERDECK_WORKSPACE", None)
    with open(log, "ab") as err:
        proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=root,
            start_new_session=True,
        )  # fmt: skip
    return Node(proc, log)


async def wait_running(nodes: list[Node], timeout_s: float = 120) -> None:
    """Wait until every node logged "daemon running"."""
    deadline = time.monotonic() + timeout_s
    while not all(node.running() for node in nodes):
        if time.monotonic() > deadline:
            raise RuntimeError("the nodes did not start:\n" + nodes[0].log_tail())
        await asyncio.sleep(0.05)


async def through_nodes(
    server_url: str,
    lines: list[bytes],
    node_count: int,
    args: argparse.Namespace,
    profile: Path | None = None,
) -> dict[str, Any]:
    """One run of Quarterdeck's side on ``node_count`` nodes; its figures."""
    url = await create_database(server_url, "qd_bench")
    try:
        db = await open_database(url)  # migrated here, before the nodes and the clock start
        await db.dispose()
        with tempfile.TemporaryDirectory(prefix="qd-bench-") as tmp:
            root = Path(tmp)
            (root / "quarterdeck.toml").write_text(node_config(args.concurrency), "utf-8")
            nodes = [
                start_node(url, root, i, profile if i == 0 else None) for i in range(node_count)
            ]
            try:
                await wait_running(nodes)
                window = CpuWindow(str(make_url(url).database), [n.proc.pid for n in nodes])
                window.start()
                result = await submit_and_wait(url, lines, args)
                result["cpu_s"] = window.stop()
            finally:
                exits = [node.stop() for node in nodes]
            result["node_exit_codes"] = exits
            if any(exits):
                result["node_log_tail"] = nodes[exits.index(next(e for e in exits if e))].log_tail()
        db = await open_database(url, upgrade=False)
        try:
            counts = await status(db, None)
            verified = await verify_ledger(db)
        finally:
            await db.dispose()
    finally:
        await drop_database(server_url, url)
    total = len(lines)
    result.update(
        receipts_accepted=counts["receipts"]["accepted"],
        turns=sum(counts["turns"].values()),
        turns_completed=counts["turns"].get("completed", 0),
        missions=sum(counts["missions"].values()),
        missions_completed=counts["missions"].get("completed", 0),
        ledger_entries=counts["ledger"]["entries"],
        ledger_verified=verified.ok,
    )
    result["ok"] = bool(
        result["complete"]
        and verified.ok
        and result["receipts_accepted"] == total
        and result["turns_completed"] == total == result["turns"]
        and result["missions_completed"] == total == result["missions"]
    )
    return result


QUARTERDECK_PENDING = (
    "SELECT EXISTS (SELECT 1 FROM receipts WHERE status = 'accepted' AND produced_type IS NULL)"
    " OR EXISTS (SELECT 1 FROM missions WHERE state IN ('queued', 'running'))"
)
"""True while a receipt waits to be applied or a mission to be claimed or finished (a turn is
completed in the transaction that finishes its mission); served by the partial index of
unapplied receipts and the missions' lease index."""


async def submit_and_wait(url: str, lines: list[bytes], args: argparse.Namespace) -> dict[str, Any]:
    """Submit every line in batches from here and wait until every turn is completed."""
    total = len(lines)
    async with Client(url) as client:

        async def submit_all() -> float:
            for start in range(0, total, args.batch):
                results = await client.submit(lines[start : start + args.batch])
                bad = [r for r in results if r.status != "accepted"]
                assert not bad, bad[:3]
            return time.perf_counter() - started

        started = time.perf_counter()
        submitter = asyncio.get_running_loop().create_task(submit_all())
        complete, completed, observed, elapsed, _last = await poll_done(
            url,
            "SELECT COUNT(*) FROM turns WHERE state = 'completed'",
            "SELECT MAX(at) FROM ledger WHERE action = 'turn.completed'",
            total,
            started,
            args.timeout,
            QUARTERDECK_PENDING,
        )
        submit_s = await submitter
    return {
        "complete": complete,
        "turns_completed_polled": completed,
        "elapsed_s": elapsed,
        "observed_elapsed_s": observed,
        "submit_s": submit_s,
    }


# --- pgqueuer -------------------------------------------------------------------------------


def import_pgqueuer() -> Any:
    """Import pgqueuer, installing it into ``bench/.deps`` first if needed.

    ``bench/.deps`` goes at the *end* of ``sys.path``: whatever the environment has (asyncpg,
    pydantic, anyio...) wins over anything there.
    """
    if str(DEPS) not in sys.path:
        sys.path.append(str(DEPS))
    try:
        return importlib.import_module("pgqueuer")
    except ImportError:
        pass
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(DEPS),
         *PGQUEUER_PACKAGES],
        check=True,
    )  # fmt: skip
    importlib.invalidate_caches()
    return importlib.import_module("pgqueuer")


async def pgqueuer_consumer(url: str, batch: int) -> None:
    """The consumer process: a no-op entrypoint, dequeuing ``batch`` at a time until SIGTERM."""
    import_pgqueuer()
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.models import Job
    from pgqueuer.qm import QueueManager
    from pgqueuer.queries import Queries

    conn = await asyncpg.connect(plain_dsn(url))
    manager = QueueManager(Queries(AsyncpgDriver(conn)))

    @manager.entrypoint("noop")
    async def noop(job: Job) -> None:
        pass

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, manager.shutdown.set)
    await manager.run(batch_size=batch)
    await conn.close()


LOG_DONE = "SELECT COUNT(*) FROM pgqueuer_log WHERE status = 'successful'"
LOG_LAST = "SELECT MAX(created) FROM pgqueuer_log WHERE status = 'successful'"


async def through_pgqueuer(server_url: str, count: int, args: argparse.Namespace) -> dict[str, Any]:
    """One run of pgqueuer's side; its figures."""
    import_pgqueuer()
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.queries import Queries

    url = await create_database(server_url, "pgq_bench")
    try:
        conn = await asyncpg.connect(plain_dsn(url))
        try:
            queries = Queries(AsyncpgDriver(conn))
            await queries.install()
            with tempfile.TemporaryDirectory(prefix="pgq-bench-") as tmp:
                log = Path(tmp) / "consumer.log"
                with open(log, "ab") as err:
                    consumer = subprocess.Popen(
                        [sys.executable, str(Path(__file__).resolve()), "--pgqueuer-consumer",
                         url, "--pgqueuer-batch", str(args.pgqueuer_batch)],
                        stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
                    )  # fmt: skip
                try:
                    # Warm up: the consumer is listening once it has done one job.
                    await queries.enqueue("noop", None)
                    deadline = time.monotonic() + 60
                    while int(await conn.fetchval(LOG_DONE)) < 1:
                        if consumer.poll() is not None or time.monotonic() > deadline:
                            raise RuntimeError(
                                "pgqueuer's consumer did not start:\n" + log.read_text()[-3000:]
                            )
                        await asyncio.sleep(POLL_S)
                    window = CpuWindow(str(make_url(url).database), [consumer.pid])
                    window.start()
                    result = await enqueue_and_wait(url, queries, count, args)
                    result["cpu_s"] = window.stop()
                finally:
                    consumer.send_signal(signal.SIGTERM)
                    try:
                        consumer.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        consumer.kill()
                        consumer.wait(timeout=10)
                result["consumer_exit_code"] = consumer.returncode
                if consumer.returncode:
                    result["consumer_log_tail"] = log.read_text()[-3000:]
            result["jobs_left"] = int(await conn.fetchval("SELECT COUNT(*) FROM pgqueuer"))
        finally:
            await conn.close()
    finally:
        await drop_database(server_url, url)
    result["ok"] = bool(result["complete"] and result["jobs_left"] == 0)
    return result


async def enqueue_and_wait(
    url: str, queries: Any, count: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Enqueue ``count`` no-op jobs in batches and wait until the last one is logged done."""
    batch = args.pgqueuer_batch

    async def enqueue_all() -> float:
        for start in range(0, count, batch):
            size = min(batch, count - start)
            await queries.enqueue(["noop"] * size, [None] * size, [0] * size)
        return time.perf_counter() - started

    started = time.perf_counter()
    enqueuer = asyncio.get_running_loop().create_task(enqueue_all())
    complete, done, observed, elapsed, _last = await poll_done(
        url, LOG_DONE, LOG_LAST, count + 1, started, args.timeout
    )
    enqueue_s = await enqueuer
    return {
        "complete": complete,
        "jobs_done": done - 1,
        "elapsed_s": elapsed,
        "observed_elapsed_s": observed,
        "enqueue_s": enqueue_s,
    }


# --- the comparison -------------------------------------------------------------------------


LAST_KEYS = ("receipts_accepted", "turns", "turns_completed", "missions", "missions_completed",
             "ledger_entries", "node_exit_codes")  # fmt: skip
"""The last run's counts, printed for each node count."""


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def print_profile(path: Path, limit: int = 25) -> None:
    """The node's cProfile on stderr: the top ``limit`` by tottime, and Quarterdeck's own
    functions by cumulative time."""
    stats = pstats.Stats(str(path), stream=sys.stderr)
    stats.sort_stats("tottime").print_stats(limit)
    stats.sort_stats("cumulative").print_stats("quarterdeck/(store|runtime|domain)", limit)


async def compare(server_url: str, lines: list[bytes], args: argparse.Namespace) -> int:
    """Every round of every side, then the figures as one JSON line; 0 when all checked out."""
    facts = await server_facts(server_url)
    node_counts = sorted({int(n) for n in str(args.nodes).split(",") if n.strip()})
    jobs = args.pgqueuer_jobs if args.pgqueuer_jobs is not None else len(lines)
    sides: list[str] = [f"nodes-{n}" for n in node_counts[:1]] + ["pgqueuer"]
    sides += [f"nodes-{n}" for n in node_counts[1:]]
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    for round_number in range(args.rounds):
        shift = round_number % len(sides)
        for side in sides[shift:] + sides[:shift]:
            if side == "pgqueuer":
                result = await through_pgqueuer(server_url, jobs, args)
            else:
                result = await through_nodes(server_url, lines, int(side.split("-")[1]), args)
            runs[side].append(result)
            print(
                f"round {round_number + 1} {side}: {round(result['elapsed_s'], 3)} s"
                f"{'' if result['ok'] else ' (FAILED)'}",
                file=sys.stderr,
            )
    if args.profile:
        profile = Path(tempfile.mkdtemp(prefix="qd-profile-")) / "node.prof"
        result = await through_nodes(server_url, lines, 1, args, profile=profile)
        print(f"profiled 1-node run: {round(result['elapsed_s'], 3)} s", file=sys.stderr)
        print_profile(profile)
        print(f"the node's profile (pstats): {profile}", file=sys.stderr)

    def rates(side: str, count: int) -> list[float]:
        return [count / r["elapsed_s"] for r in runs[side]]

    def cpu_per_item(side: str, count: int, processes: str) -> dict[str, int | None]:
        """Median CPU microseconds per turn (or job) over the side's rounds, by who spent it."""
        shares: dict[str, int | None] = {}
        for key, name in (("processes", processes), ("server", "server"), ("bench", "bench")):
            spent = [r["cpu_s"][key] for r in runs[side] if r["cpu_s"][key] is not None]
            shares[name] = round(median(spent) / count * 1e6) if spent else None
        return shares

    total = len(lines)
    pgqueuer = importlib.import_module("pgqueuer")
    peer = median(rates("pgqueuer", jobs))
    figures: dict[str, Any] = {
        "database": "postgresql",
        "server": shown(server_url),
        **facts,
        "turns": total,
        "concurrency": args.concurrency,
        "batch": args.batch,
        "rounds": args.rounds,
    }
    by_nodes: dict[int, float] = {}
    for n in node_counts:
        side = f"nodes-{n}"
        by_nodes[n] = median(rates(side, total))
        figures[f"turns_per_s_{n}_node{'s' if n > 1 else ''}"] = round(by_nodes[n])
        figures[f"nodes_{n}"] = {
            "turns_per_s_rounds": [round(r) for r in rates(side, total)],
            "elapsed_s": round(median([r["elapsed_s"] for r in runs[side]]), 3),
            "observed_elapsed_s": round(median([r["observed_elapsed_s"] for r in runs[side]]), 3),
            "submit_s": round(median([r["submit_s"] for r in runs[side]]), 3),
            "cpu_us_per_turn": cpu_per_item(side, total, "nodes"),
            "all_ok": all(r["ok"] for r in runs[side]),
            "ledger_verified": all(r["ledger_verified"] for r in runs[side]),
            "last": {key: runs[side][-1][key] for key in LAST_KEYS},
        }
    figures.update(
        pgqueuer_version=pgqueuer.__version__,
        pgqueuer_jobs=jobs,
        pgqueuer_batch=args.pgqueuer_batch,
        pgqueuer_jobs_per_s=round(peer),
        pgqueuer_jobs_per_s_rounds=[round(r) for r in rates("pgqueuer", jobs)],
        pgqueuer_elapsed_s=round(median([r["elapsed_s"] for r in runs["pgqueuer"]]), 3),
        pgqueuer_observed_elapsed_s=round(
            median([r["observed_elapsed_s"] for r in runs["pgqueuer"]]), 3
        ),
        pgqueuer_enqueue_s=round(median([r["enqueue_s"] for r in runs["pgqueuer"]]), 3),
        pgqueuer_cpu_us_per_job=cpu_per_item("pgqueuer", jobs, "consumer"),
        pgqueuer_all_ok=all(r["ok"] for r in runs["pgqueuer"]),
    )
    first = node_counts[0]
    figures["ratio_vs_pgqueuer"] = round(by_nodes[first] / peer, 3)
    figures["target_ratio_vs_pgqueuer"] = 0.5
    figures["ratio_target_met"] = by_nodes[first] / peer >= 0.5
    if 1 in by_nodes and 3 in by_nodes:
        figures["speedup_3_vs_1"] = round(by_nodes[3] / by_nodes[1], 3)
        figures["target_speedup_3_vs_1"] = "> 1"
        figures["speedup_target_met"] = by_nodes[3] > by_nodes[1]
    print(json.dumps(figures))
    return 0 if all(r["ok"] for side in runs.values() for r in side) else 1


def run_postgres(args: argparse.Namespace, lines: list[bytes]) -> int:
    """The PostgreSQL comparison for ``bench/lifecycle.py`` (``--db`` / ``--start-cluster``)."""
    import_pgqueuer()
    if args.start_cluster:
        with throwaway_cluster() as url:
            return asyncio.run(compare(url, lines, args))
    return asyncio.run(compare(args.db, lines, args))


def main(argv: list[str] | None = None) -> int:
    """The pgqueuer consumer process (``--pgqueuer-consumer URL``)."""
    parser = argparse.ArgumentParser(description="pgqueuer's consumer for bench/lifecycle.py")
    parser.add_argument("--pgqueuer-consumer", metavar="URL", required=True)
    parser.add_argument("--pgqueuer-batch", type=int, default=100)
    args = parser.parse_args(argv)
    asyncio.run(pgqueuer_consumer(args.pgqueuer_consumer, args.pgqueuer_batch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
