"""The headless daemon as real processes sharing one real database: a SQLite file in the state
directory, and (each test again) a PostgreSQL database, named with ``--db``.

Every test starts ``python3 -m quarterdeck run --headless`` processes (their JSON logs go to
files under tmp_path), feeds them with ``quarterdeck submit`` from other processes, and judges
the outcome from the database itself (raw sqlite3 or psycopg) and ``quarterdeck ledger verify``:

- several daemons share thousands of missions without a double claim;
- SIGKILL at random points loses nothing and orphaned missions are reclaimed within a lease;
- a paused (SIGSTOPped) daemon's late writes are fenced off;
- SIGTERM drains: running missions are handed back and the process exits in time;
- force-fallback commands take effect on a working daemon;
- submit, metrics and idle CPU of a running daemon;
- with nobody to fence, no write is ever reported as a rejected late write.

Leases are short (``lease_s`` 2 s, sweeps every 0.5 s) so that recovery happens in seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.conftest import is_postgres, quarterdeck
from tests.headless import JsonLog, in_write_transaction

from quarterdeck.domain.clock import parse_instant

LEASE_S = 2.0
SWEEP_S = 0.5
TERMINAL = "('completed', 'failed', 'cancelled', 'timed_out')"
"""Terminal states of turns and missions, as an SQL list."""
DB_NAME = "quarterdeck.db"


@dataclass(frozen=True)
class Site:
    """Where a test's processes keep their state: a state directory, and the database they all
    name with ``--db`` (the directory's SQLite file, or a PostgreSQL database)."""

    dir: Path
    url: str

    @property
    def postgres(self) -> bool:
        return is_postgres(self.url)

    def argv(self, *args: str) -> list[str]:
        """The command line of ``quarterdeck ARGS`` on this site."""
        return [sys.executable, "-m", "quarterdeck", "--state-dir", str(self.dir),
                "--db", self.url, *args]  # fmt: skip

    def env(self) -> dict[str, str]:
        env = {**os.environ, "QUARTERDECK_STATE_DIR": str(self.dir)}
        env.pop("QUARTERDECK_WORKSPACE", None)
        return env

    def cli(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        """Run ``quarterdeck ARGS`` on this site's database and wait for it."""
        return quarterdeck("--db", self.url, *args, state_dir=self.dir)


@pytest.fixture
def state(tmp_path: Path, database: str) -> Site:
    """The state directory and database of the test (parametrised: SQLite and PostgreSQL)."""
    return Site(tmp_path / "state", database)


# --- configuration, envelopes, submission ------------------------------------------------------


def write_config(
    path: Path,
    *,
    concurrency: int = 32,
    fallback_concurrency: int | None = None,
    drain_grace_s: float = 5.0,
) -> Path:
    """A quarterdeck.toml with short leases: ``sim`` falling back to ``sim-fallback``."""
    path.write_text(
        f"""default_lane = "sim"
lease_s = {LEASE_S}
sweep_interval_s = {SWEEP_S}
drain_grace_s = {drain_grace_s}

[lanes.sim]
adapter = "sim"
fallback = "sim-fallback"
concurrency = {concurrency}
timeout_s = 60
max_attempts = 3
backoff_initial_s = 0.1
backoff_max_s = 0.5
options = {{ seed = 1 }}

[lanes.sim-fallback]
adapter = "sim"
concurrency = {fallback_concurrency or concurrency}
timeout_s = 60
options = {{ seed = 2 }}
""",
        encoding="utf-8",
    )
    return path


def task(key: str, *, latency_ms: int = 0, progress: int = 0) -> dict[str, Any]:
    """A sim task that completes after ``latency_ms`` and requests no actions."""
    return {
        "idempotency_key": key,
        "workspace": "default",
        "kind": "task",
        "payload": {
            "lane": "sim",
            "objective": f"objective {key}",
            "input": {
                "sim": {
                    "latency_ms": latency_ms,
                    "outcome": "complete",
                    "actions": [],
                    "progress": progress,
                }
            },
        },
    }


def write_jsonl(path: Path, envelopes: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in envelopes), encoding="utf-8")
    return path


def check_submitted(stdout: bytes, expected: int) -> list[str]:
    """Parse ``quarterdeck submit`` output; every line must be accepted. Returns receipt ids."""
    results = [json.loads(raw) for raw in stdout.splitlines() if raw.strip()]
    assert len(results) == expected, f"{len(results)} result lines for {expected} envelopes"
    bad = [r for r in results if r["status"] != "accepted"]
    assert not bad, f"not accepted: {bad[:3]}"
    return [r["receipt"] for r in results]


def submit(state: Site, path: Path, expected: int) -> list[str]:
    """``quarterdeck submit FILE`` in a separate process; returns the receipt ids."""
    result = state.cli("submit", str(path))
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return check_submitted(result.stdout, expected)


def init_state(state: Site) -> None:
    """Create and migrate the database once, before any daemon starts."""
    result = state.cli("db", "upgrade")
    assert result.returncode == 0, result.stderr.decode(errors="replace")


def verify_chain(state: Site) -> dict[str, Any]:
    result = state.cli("ledger", "verify", "--json")
    verdict = json.loads(result.stdout)
    assert result.returncode == 0 and verdict["ok"], verdict
    return verdict


# --- the database ------------------------------------------------------------------------------


def query(state: Site, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one read query (SQLite dialect, ``?`` placeholders) on a fresh connection; never
    blocks the daemons (SQLite: WAL; PostgreSQL: MVCC, the query translated by :func:`pg`)."""
    if state.postgres:
        with psycopg.connect(state.url, autocommit=True) as pg_conn:
            return [tuple(row) for row in pg_conn.execute(pg(sql), params).fetchall()]
    conn = sqlite3.connect(state.url, timeout=30)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


_JSON_FIELD = re.compile(r"json_extract\(([\w.]+), '\$\.(\w+)'\)")
_GROUP_CONCAT = re.compile(r"group_concat\((DISTINCT )?((?:[^()]|\([^()]*\))+)\)")
_INTEGER_FIELDS = frozenset({"attempt"})


def pg(sql: str) -> str:
    """The PostgreSQL spelling of the SQLite queries below: JSON fields of the (text) payload,
    ``group_concat``, and psycopg's placeholders."""

    def field(match: re.Match[str]) -> str:
        column, key = match.groups()
        value = f"({column}::json ->> '{key}')"
        return f"CAST{value[:-1]} AS INTEGER)" if key in _INTEGER_FIELDS else value

    sql = _GROUP_CONCAT.sub(lambda m: f"string_agg({m[1] or ''}{m[2]}, ',')", sql)
    sql = _JSON_FIELD.sub(field, sql)
    return sql.replace("%", "%%").replace("?", "%s")


def scalar(state: Site, sql: str, params: tuple[Any, ...] = ()) -> Any:
    return query(state, sql, params)[0][0]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1):
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def write_lock_free(state: Site, daemon: Daemon) -> bool:
    """True when ``daemon`` (stopped) holds no write lock: on SQLite nobody holds the file's
    (tried for up to 1 s); on PostgreSQL it has no write session inside a transaction."""
    if state.postgres:
        return not in_write_transaction(state.url, daemon.proc.pid)
    conn = sqlite3.connect(state.url, timeout=1.0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()


instant = parse_instant


def claim_problems(state: Site) -> list[str]:
    """Double claims and foreign completions, read from the ledger.

    For every mission: exactly one ``mission.running`` per attempt, attempts numbered 1..n; at
    most one ``mission.completed``, written by the owner that held that attempt's lease.
    """
    problems: list[str] = []
    doubled = query(
        state,
        "SELECT subject_id, json_extract(payload, '$.attempt'), count(*), "
        "group_concat(json_extract(payload, '$.owner')) FROM ledger "
        "WHERE action = 'mission.running' GROUP BY 1, 2 HAVING count(*) > 1",
    )
    problems += [f"mission {m} attempt {a} claimed {n} times by {o}" for m, a, n, o in doubled]
    gaps = query(
        state,
        "SELECT subject_id, count(*), max(json_extract(payload, '$.attempt')) FROM ledger "
        "WHERE action = 'mission.running' GROUP BY 1 "
        "HAVING count(*) != max(json_extract(payload, '$.attempt'))",
    )
    problems += [f"mission {m}: {n} claims but attempt {a}" for m, n, a in gaps]
    completed_twice = query(
        state,
        "SELECT subject_id, count(*), count(DISTINCT actor), group_concat(actor) FROM ledger "
        "WHERE action = 'mission.completed' GROUP BY 1 HAVING count(*) > 1",
    )
    problems += [
        f"mission {m} completed {n} times by {k} owners ({who})" for m, n, k, who in completed_twice
    ]
    foreign = query(
        state,
        "SELECT c.subject_id, c.actor, r.actor FROM ledger c JOIN ledger r "
        "ON r.subject_id = c.subject_id AND r.action = 'mission.running' "
        "AND json_extract(r.payload, '$.attempt') = json_extract(c.payload, '$.attempt') "
        "WHERE c.action = 'mission.completed' AND c.actor != json_extract(r.payload, '$.owner')",
    )
    problems += [f"mission {m} completed by {c} but leased to {r}" for m, c, r in foreign]
    return problems


def turns_completed_twice(state: Site) -> list[Any]:
    return query(
        state,
        "SELECT subject_id, count(*) FROM ledger WHERE action = 'turn.completed' "
        "GROUP BY subject_id HAVING count(*) > 1",
    )


# --- daemons -----------------------------------------------------------------------------------


@dataclass
class Daemon(JsonLog):
    node: str
    proc: subprocess.Popen[bytes]
    log: Path
    launched_at: datetime
    """Wall clock (UTC) just before the process was started."""

    def wait_ready(self, timeout: float = 60) -> datetime:
        """Wait for the "daemon running" line; return when the runtime said it started."""

        def ready() -> dict[str, Any] | None:
            assert self.proc.poll() is None, (
                f"{self.node} exited with {self.proc.returncode}:\n{self.log_tail()}"
            )
            return self.logged("daemon running")

        wait_until(ready, timeout, f"{self.node} to start", interval=0.05)
        started = self.logged("runtime started")
        assert started is not None
        return instant(started["at"])

    def signal(self, signum: int) -> None:
        os.kill(self.proc.pid, signum)

    def cpu_seconds(self) -> float:
        """utime + stime of the process, from /proc/PID/stat."""
        raw = Path(f"/proc/{self.proc.pid}/stat").read_text()
        fields = raw[raw.rindex(")") + 2 :].split()
        # after "pid (comm) ": state is field 3, utime field 14 and stime field 15
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


StartDaemon = Callable[..., Daemon]


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[StartDaemon]:
    """Start headless daemons; every one of them is stopped (at worst killed) at teardown."""
    started: list[Daemon] = []

    def start(state: Site, config: Path, node: str, *extra: str) -> Daemon:
        log = tmp_path / f"{node}.log"
        env = state.env()
        command = state.argv("run", "--headless", "--config", str(config), "--node-id", node,
                             "--socket", str(tmp_path / f"{node}.sock"), *extra)  # fmt: skip
        launched_at = datetime.now(UTC)
        with open(log, "ab") as err, open(tmp_path / f"{node}.out", "ab") as out:
            proc = subprocess.Popen(
                command, stdout=out, stderr=err, env=env, cwd=tmp_path, start_new_session=True
            )
        daemon = Daemon(node, proc, log, launched_at)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.proc.poll() is not None:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(daemon.proc.pid, signal.SIGCONT)
            os.killpg(daemon.proc.pid, signal.SIGTERM)
        try:
            daemon.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(daemon.proc.pid, signal.SIGKILL)
            daemon.proc.wait(timeout=10)


def stop_gracefully(daemon: Daemon, timeout: float) -> tuple[int | None, float]:
    """SIGTERM; return (exit code or None if still running after ``timeout``, seconds taken)."""
    began = time.monotonic()
    daemon.signal(signal.SIGTERM)
    try:
        code: int | None = daemon.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        code = None
    return code, time.monotonic() - began


def report(record_property: Callable[[str, Any], None], **figures: Any) -> None:
    for name, value in figures.items():
        record_property(name, value)
    print("figures:", json.dumps(figures, default=str))


# --- 1. concurrency ----------------------------------------------------------------------------

MISSIONS_SHARED = 5_000


def test_four_daemons_share_missions_without_double_claims(
    tmp_path: Path, state: Site, start_daemon: StartDaemon, record_property
):
    init_state(state)
    config = write_config(tmp_path / "quarterdeck.toml", concurrency=32)
    envelopes = write_jsonl(
        tmp_path / "tasks.jsonl", [task(f"shared-{i}") for i in range(MISSIONS_SHARED)]
    )
    nodes = [f"share-{n}" for n in range(4)]
    daemons = [start_daemon(state, config, node) for node in nodes]
    for daemon in daemons:
        daemon.wait_ready()

    began = time.monotonic()
    receipts = submit(state, envelopes, MISSIONS_SHARED)
    submitted = time.monotonic() - began

    def all_done() -> bool:
        for daemon in daemons:
            assert daemon.proc.poll() is None, f"{daemon.node} died:\n{daemon.log_tail()}"
        turns = scalar(state, f"SELECT count(*) FROM turns WHERE state IN {TERMINAL}")
        live = scalar(state, f"SELECT count(*) FROM missions WHERE state NOT IN {TERMINAL}")
        return turns == MISSIONS_SHARED and live == 0

    wait_until(all_done, 150, f"{MISSIONS_SHARED} turns to finish", interval=0.25)
    elapsed = time.monotonic() - began

    by_owner = dict(
        query(
            state,
            "SELECT json_extract(payload, '$.owner'), count(*) FROM ledger "
            "WHERE action = 'mission.running' GROUP BY 1",
        )
    )
    report(
        record_property,
        missions=MISSIONS_SHARED,
        daemons=len(daemons),
        submit_s=round(submitted, 2),
        all_terminal_s=round(elapsed, 2),
        missions_per_s=round(MISSIONS_SHARED / elapsed, 1),
        claims_by_node=by_owner,
    )

    assert sorted(receipts) == sorted(r for (r,) in query(state, "SELECT receipt_id FROM turns"))
    assert query(state, "SELECT state, count(*) FROM turns GROUP BY state") == [
        ("completed", MISSIONS_SHARED)
    ]
    assert query(state, "SELECT state, count(*) FROM missions GROUP BY state") == [
        ("completed", MISSIONS_SHARED)
    ]
    assert claim_problems(state) == []
    assert turns_completed_twice(state) == []
    assert scalar(state, "SELECT count(*) FROM ledger WHERE action = 'mission.completed'") == (
        MISSIONS_SHARED
    )
    assert set(by_owner) <= set(nodes)
    assert len(by_owner) >= 2, f"the daemons did not share the work: {by_owner}"
    verify_chain(state)


# --- 2. crash ----------------------------------------------------------------------------------

CRASH_TURNS = 2_000
KILLS = 5


def test_sigkill_five_times_loses_nothing_and_reclaims_orphans(
    tmp_path: Path, state: Site, start_daemon: StartDaemon, record_property
):
    rng = random.Random(20_240_601)
    init_state(state)
    config = write_config(tmp_path / "quarterdeck.toml", concurrency=16)
    envelopes = [
        task(f"crash-{i}", latency_ms=rng.randint(300, 1_500), progress=2)
        if i % 5 == 0
        else task(f"crash-{i}")
        for i in range(CRASH_TURNS)
    ]
    batches = [envelopes[i : i + 500] for i in range(0, CRASH_TURNS, 500)]
    receipts = submit(state, write_jsonl(tmp_path / "batch-0.jsonl", batches[0]), 500)
    submitters: list[tuple[subprocess.Popen[bytes], int]] = []
    env = state.env()

    kills: list[dict[str, Any]] = []
    began = time.monotonic()
    daemon = start_daemon(state, config, "crash-0")
    daemon.wait_ready()
    for k in range(KILLS):
        if k + 1 < len(batches):  # the rest of the work arrives from another process meanwhile
            path = write_jsonl(tmp_path / f"batch-{k + 1}.jsonl", batches[k + 1])
            proc = subprocess.Popen(
                state.argv("submit", str(path)),
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
            )  # fmt: skip
            submitters.append((proc, len(batches[k + 1])))
        node = daemon.node
        # Kill at a random point, but only once the daemon holds missions (so that some are
        # orphaned), and not before it had the time to reclaim what the previous kill orphaned
        # (a lease and a sweep): each kill's orphans are then the restarted daemon's to reclaim.
        time.sleep(rng.uniform(LEASE_S + SWEEP_S + 0.3, LEASE_S + SWEEP_S + 0.9))
        wait_until(
            lambda node=node: scalar(
                state,
                "SELECT count(*) FROM missions WHERE state = 'running' AND lease_owner = ?",
                (node,),
            ),
            60,
            f"{node} to hold missions",
            interval=0.02,
        )
        time.sleep(rng.uniform(0, 0.3))
        assert daemon.proc.poll() is None, f"{node} died:\n{daemon.log_tail()}"
        killed_at = datetime.now(UTC)
        daemon.signal(signal.SIGKILL)
        assert daemon.proc.wait(timeout=10) == -signal.SIGKILL
        orphans = query(
            state,
            "SELECT id, attempt, lease_expires_at FROM missions "
            "WHERE state IN ('running', 'blocked') "
            "AND lease_owner = ?",
            (node,),
        )
        daemon = start_daemon(state, config, f"crash-{k + 1}")
        restarted_at = daemon.launched_at
        started_at = daemon.wait_ready()
        kills.append(
            {"node": node, "killed_at": killed_at, "orphans": orphans,
             "restarted_at": restarted_at, "started_at": started_at}
        )  # fmt: skip

    for proc, expected in submitters:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode(errors="replace")
        receipts += check_submitted(out, expected)
    assert len(receipts) == CRASH_TURNS

    def all_terminal() -> bool:
        assert daemon.proc.poll() is None, f"{daemon.node} died:\n{daemon.log_tail()}"
        done = scalar(state, f"SELECT count(*) FROM turns WHERE state IN {TERMINAL}")
        return done == CRASH_TURNS

    wait_until(all_terminal, 120, f"{CRASH_TURNS} turns to finish after the last restart", 0.25)
    elapsed = time.monotonic() - began

    # Orphans were reclaimed by the restarted daemon within a lease and a sweep of its start.
    delays_from_start: list[float] = []
    delays_from_launch: list[float] = []
    delays_from_due: list[float] = []  # after the lease ran out (or the start, if later)
    missing: list[str] = []
    for kill in kills:
        for mission_id, attempt, expires in kill["orphans"]:
            rows = query(
                state,
                "SELECT at, actor FROM ledger WHERE action = 'mission.lease_expired' "
                "AND subject_id = ? AND json_extract(payload, '$.attempt') = ? "
                "AND json_extract(payload, '$.previous_owner') = ?",
                (mission_id, attempt, kill["node"]),
            )
            if len(rows) != 1:
                missing.append(f"{mission_id} (attempt {attempt} of {kill['node']}): {rows}")
                continue
            at = instant(rows[0][0])
            delays_from_start.append((at - kill["started_at"]).total_seconds())
            delays_from_launch.append((at - kill["restarted_at"]).total_seconds())
            due = max(instant(expires), kill["started_at"])
            delays_from_due.append((at - due).total_seconds())
    orphan_count = sum(len(kill["orphans"]) for kill in kills)
    per_kill = []
    for kill in kills:
        reclaimed = query(
            state,
            "SELECT max(at), group_concat(DISTINCT actor) FROM ledger "
            "WHERE action = 'mission.lease_expired' "
            "AND json_extract(payload, '$.previous_owner') = ?",
            (kill["node"],),
        )[0]
        per_kill.append(
            {
                "node": kill["node"],
                "orphans": len(kill["orphans"]),
                "restart_ready_after_kill_s": round(
                    (kill["started_at"] - kill["killed_at"]).total_seconds(), 3
                ),
                "last_reclaim_after_restart_s": reclaimed[0]
                and round((instant(reclaimed[0]) - kill["started_at"]).total_seconds(), 3),
                "reclaimed_by": reclaimed[1],
            }
        )
    report(
        record_property,
        turns=CRASH_TURNS,
        kills=KILLS,
        per_kill=per_kill,
        reclaim_after_runtime_start_max_s=round(max(delays_from_start, default=0), 3),
        reclaim_after_process_launch_max_s=round(max(delays_from_launch, default=0), 3),
        reclaim_after_lease_due_max_s=round(max(delays_from_due, default=0), 3),
        lease_left_at_restart_max_s=round(
            max(
                (
                    (instant(e) - k["started_at"]).total_seconds()
                    for k in kills
                    for _m, _a, e in k["orphans"]
                ),
                default=0,
            ),
            3,
        ),
        all_terminal_s=round(elapsed, 2),
    )
    assert orphan_count > 0, "no kill left an orphaned mission"
    assert missing == [], f"orphans without exactly one lease_expired entry: {missing[:5]}"
    bound = LEASE_S + SWEEP_S
    late = [d for d in delays_from_start if d > bound + 0.75]
    assert late == [], f"reclaimed later than lease_s + sweep_interval_s ({bound} s): {late}"
    assert max(delays_from_launch) <= bound + 3.0

    # Nothing lost, nothing doubled.
    rows = query(
        state,
        "SELECT r.id, r.status, r.produced_type, t.id FROM receipts r "
        "LEFT JOIN turns t ON t.receipt_id = r.id WHERE r.kind = 'task'",
    )
    assert sorted(r[0] for r in rows) == sorted(receipts)
    lost = [r for r in rows if r[1] != "accepted" or r[2] != "turn" or r[3] is None]
    assert lost == [], f"receipts that produced no turn: {lost[:5]}"
    assert query(state, "SELECT state, count(*) FROM turns GROUP BY state") == [
        ("completed", CRASH_TURNS)
    ]
    assert scalar(state, "SELECT count(*) FROM missions WHERE state IN ('running', 'blocked')") == 0
    assert turns_completed_twice(state) == []
    assert scalar(state, "SELECT count(*) FROM ledger WHERE action = 'turn.completed'") == (
        CRASH_TURNS
    )
    assert claim_problems(state) == []
    verify_chain(state)


# --- 3. fencing across processes ---------------------------------------------------------------


def test_stopped_daemon_late_completions_are_fenced_off(
    tmp_path: Path, state: Site, start_daemon: StartDaemon, record_property
):
    init_state(state)
    config = write_config(tmp_path / "quarterdeck.toml", concurrency=16)
    a = start_daemon(state, config, "fence-a")
    b = start_daemon(state, config, "fence-b")
    a.wait_ready()
    b.wait_ready()
    count = 24
    submit(
        state,
        write_jsonl(tmp_path / "slow.jsonl", [task(f"slow-{i}", latency_ms=3_000) for i in range(count)]),
        count,
    )  # fmt: skip

    held_sql = (
        "SELECT id, attempt, turn_id FROM missions WHERE state = 'running' AND lease_owner = ?"
    )
    wait_until(lambda: query(state, held_sql, (a.node,)), 30, "A to hold missions", 0.02)
    # Freeze A, but never in the middle of a write transaction (it would hold the lock).
    for _ in range(50):
        a.signal(signal.SIGSTOP)
        if write_lock_free(state, a):
            break
        a.signal(signal.SIGCONT)
        time.sleep(0.05)
    else:
        pytest.fail("A always held the write lock when stopped")
    stopped = time.monotonic()
    stolen = query(state, held_sql, (a.node,))
    assert stolen, "A held nothing when it was stopped"

    def reclaimed_and_completed_by_b() -> bool:
        assert b.proc.poll() is None, f"B died:\n{b.log_tail()}"
        for mission_id, attempt, _turn in stolen:
            expired = scalar(
                state,
                "SELECT count(*) FROM ledger WHERE action = 'mission.lease_expired' "
                "AND subject_id = ? AND json_extract(payload, '$.attempt') = ? "
                "AND json_extract(payload, '$.previous_owner') = ?",
                (mission_id, attempt, a.node),
            )
            done = scalar(
                state,
                "SELECT count(*) FROM ledger WHERE action = 'mission.completed' "
                "AND subject_id = ? AND actor = ? AND json_extract(payload, '$.attempt') > ?",
                (mission_id, b.node, attempt),
            )
            if not (expired == 1 and done == 1):
                return False
        return True

    wait_until(reclaimed_and_completed_by_b, 60, "B to reclaim and complete A's missions", 0.25)
    reclaimed_s = time.monotonic() - stopped
    head = scalar(state, "SELECT max(seq) FROM ledger")
    a.signal(signal.SIGCONT)

    def rejections() -> list[Any]:
        return query(
            state,
            "SELECT subject_id, json_extract(payload, '$.write'), "
            "json_extract(payload, '$.attempt') FROM ledger "
            "WHERE action = 'mission.late_write_rejected' AND seq > ? AND actor = ?",
            (head, a.node),
        )

    def every_stolen_mission_rejected() -> bool:
        rejected = {(m, att) for m, _w, att in rejections()}
        return all((m, att) in rejected for m, att, _t in stolen)

    wait_until(every_stolen_mission_rejected, 20, "A's late writes to be rejected", 0.1)
    wait_until(
        lambda: scalar(state, "SELECT count(*) FROM turns WHERE state = 'completed'") == count,
        60,
        "every turn to complete",
        0.25,
    )
    kinds = Counter(write for m, write, _att in rejections() if m in {s[0] for s in stolen})
    counter = scalar(state, "SELECT value FROM counters WHERE name = 'late_writes_rejected'")
    report(
        record_property,
        stolen=len(stolen),
        reclaimed_and_rerun_s=round(reclaimed_s, 2),
        rejected_writes_of_a=dict(kinds),
        late_writes_rejected=counter,
    )
    assert a.proc.poll() is None, f"A died after SIGCONT:\n{a.log_tail()}"
    assert counter > 0
    assert kinds["completed"] > 0, f"A's late completions were never attempted: {dict(kinds)}"
    stolen_ids = tuple(m for m, _a, _t in stolen)
    marks = ", ".join("?" for _ in stolen_ids)
    by_a = query(
        state,
        f"SELECT subject_id FROM ledger WHERE action = 'mission.completed' AND actor = ? "
        f"AND subject_id IN ({marks})",
        (a.node, *stolen_ids),
    )
    assert by_a == [], "a completion by A stood after its lease was reclaimed"
    per_turn = dict(
        query(
            state,
            "SELECT subject_id, count(*) FROM ledger WHERE action = 'turn.completed' GROUP BY 1",
        )
    )
    assert len(per_turn) == count and set(per_turn.values()) == {1}
    assert claim_problems(state) == []
    verify_chain(state)


# --- 4. drain ----------------------------------------------------------------------------------


def test_sigterm_drains_and_hands_missions_back(
    tmp_path: Path, state: Site, start_daemon: StartDaemon, record_property
):
    init_state(state)
    grace = 1.0
    config = write_config(tmp_path / "quarterdeck.toml", concurrency=16, drain_grace_s=grace)
    daemon = start_daemon(state, config, "drain-1")
    daemon.wait_ready()
    count = 12
    slow = [task(f"drain-{i}", latency_ms=8_000, progress=2) for i in range(count)]
    submit(state, write_jsonl(tmp_path / "slow.jsonl", slow), count)
    held_sql = (
        "SELECT id, attempt, turn_id FROM missions WHERE state = 'running' AND lease_owner = ?"
    )
    wait_until(lambda: len(query(state, held_sql, (daemon.node,))) == count, 30, "all running")
    held = query(state, held_sql, (daemon.node,))
    head = scalar(state, "SELECT max(seq) FROM ledger")

    code, took = stop_gracefully(daemon, timeout=grace + 10)
    report(record_property, drain_grace_s=grace, exit_s=round(took, 2), held=len(held))
    assert code == 0, f"exit code {code} after {took:.1f} s:\n{daemon.log_tail()}"
    assert took <= grace + 3.0, f"took {took:.1f} s to exit with drain_grace_s={grace}"
    assert daemon.logged("daemon stopped") is not None

    left = query(
        state, "SELECT id FROM missions WHERE state IN ('running', 'blocked') AND lease_owner = ?",
        (daemon.node,),
    )  # fmt: skip
    assert left == [], f"missions left running under the drained node: {left}"
    for mission_id, attempt, turn_id in held:
        mission = query(
            state, "SELECT state, lease_owner, attempt FROM missions WHERE id = ?", (mission_id,)
        )
        assert mission == [("queued", None, attempt)]
        released = query(
            state,
            "SELECT actor, json_extract(payload, '$.attempt') FROM ledger "
            "WHERE action = 'mission.released' AND subject_id = ? AND seq > ?",
            (mission_id, head),
        )
        assert released == [(daemon.node, attempt)]
        assert scalar(state, "SELECT state FROM turns WHERE id = ?", (turn_id,)) == "queued"
    assert scalar(state, "SELECT count(*) FROM ledger WHERE action LIKE '%.completed'") == 0
    verify_chain(state)


def test_sigterm_under_load_always_exits(
    tmp_path: Path, state: Site, start_daemon: StartDaemon, record_property
):
    """SIGTERM while the daemon churns through short missions (claims and finishes all the
    time): every drain must end within the grace period, handing back what it held."""
    init_state(state)
    grace = 1.0
    config = write_config(tmp_path / "quarterdeck.toml", concurrency=32, drain_grace_s=grace)
    total = 6_000
    submit(state, write_jsonl(tmp_path / "churn.jsonl", [task(f"churn-{i}") for i in range(total)]), total)  # fmt: skip
    rng = random.Random(7)
    exits: list[float] = []
    for trial in range(8):
        if scalar(state, "SELECT count(*) FROM turns WHERE state = 'completed'") > total - 500:
            break  # (receipts become turns and missions only when a daemon applies them)
        daemon = start_daemon(state, config, f"churn-{trial}")
        daemon.wait_ready()
        wait_until(
            lambda node=daemon.node: (
                scalar(
                    state,
                    "SELECT count(*) FROM ledger WHERE action = 'mission.completed' AND actor = ?",
                    (node,),
                )
                >= 50
            ),
            30,
            "the daemon to be busy",
            0.02,
        )
        time.sleep(rng.uniform(0, 0.4))
        code, took = stop_gracefully(daemon, timeout=grace + 10)
        if code is None:
            running = scalar(
                state, "SELECT count(*) FROM missions WHERE state = 'running' AND lease_owner = ?",
                (daemon.node,),
            )  # fmt: skip
            pytest.fail(
                f"trial {trial}: {daemon.node} still running {took:.1f} s after SIGTERM "
                f"(drain_grace_s={grace}); it holds {running} running missions; last log lines:\n"
                + "\n".join(daemon.log_tail(1200).splitlines()[-4:])
            )
        exits.append(round(took, 2))
        assert code == 0, daemon.log_tail()
        assert took <= grace + 3.0
        left = query(
            state,
            "SELECT max(l.at) FROM missions m JOIN ledger l ON l.subject_id = m.id "
            "AND l.action = 'mission.running' WHERE m.state IN ('running', 'blocked') "
            "AND m.lease_owner = ? GROUP BY m.id",
            (daemon.node,),
        )
        draining = daemon.logged("draining")
        assert left == [], (
            f"trial {trial}: {len(left)} missions left running under {daemon.node} after it "
            f"exited 0: claimed at {sorted({at for (at,) in left})}, drain began at "
            f"{draining and draining['at']} with {draining and draining['running']} running; "
            "no mission.released for them"
        )
    report(record_property, trials=len(exits), exit_s=exits)
    assert len(exits) >= 4
    assert claim_problems(state) == []
    verify_chain(state)


# --- 5. force fallback while running -----------------------------------------------------------


def test_force_fallback_command_reroutes_queued_missions(
    tmp_path: Path, state: Site, start_daemon: StartDaemon, record_property
):
    init_state(state)
    config = write_config(tmp_path / "quarterdeck.toml", concurrency=4, fallback_concurrency=4)
    daemon = start_daemon(state, config, "ff-1")
    daemon.wait_ready()
    count = 300
    submit(
        state,
        write_jsonl(tmp_path / "work.jsonl", [task(f"ff-{i}", latency_ms=250) for i in range(count)]),
        count,
    )  # fmt: skip
    wait_until(
        lambda: scalar(state, "SELECT count(*) FROM missions WHERE state = 'completed'") >= 40,
        30,
        "work under way",
    )
    # a supervisor (this OS user, admin without a roster) forces the fallback through the
    # daemon's control API
    given = quarterdeck(
        "--db", state.url, "fallback", "--force", "on", "--lane", "sim",
        state_dir=state.dir, env={"QUARTERDECK_API": str(tmp_path / "ff-1.sock")},
    )  # fmt: skip
    assert given.returncode == 0, given.stderr.decode(errors="replace")
    assert json.loads(given.stdout)["ok"] is True
    received_at = instant(
        scalar(state, "SELECT at FROM ledger WHERE action = 'lane.force_fallback_on'")
    )
    wait_until(
        lambda: scalar(state, "SELECT count(*) FROM turns WHERE state = 'completed'") == count,
        90,
        "every turn to complete",
        0.25,
    )
    assert daemon.proc.poll() is None

    assert query(
        state,
        "SELECT to_state, actor FROM ledger WHERE action = 'lane.force_fallback_on' "
        "AND subject_id = 'sim'",
    ) == [(None, f"{pwd.getpwuid(os.getuid()).pw_name} (uid {os.getuid()})")]
    claims = query(
        state,
        "SELECT m.id, m.routed_lane, m.state, l.at FROM missions m JOIN ledger l "
        "ON l.subject_id = m.id AND l.action = 'mission.running' "
        "AND json_extract(l.payload, '$.attempt') = m.attempt",
    )
    assert len(claims) == count
    before = [c for c in claims if instant(c[3]) < received_at]
    after = [c for c in claims if (instant(c[3]) - received_at).total_seconds() > 1.0]
    wrong = [(m, lane) for m, lane, _s, _at in after if lane != "sim-fallback"]
    report(
        record_property,
        claimed_before_command=len(before),
        claimed_1s_after_command=len(after),
        on_fallback=sum(1 for c in claims if c[1] == "sim-fallback"),
    )
    assert before and all(lane == "sim" for _m, lane, _s, _at in before)
    assert len(after) >= 50, "too little work left after the command to judge"
    assert wrong == [], f"claimed > 1 s after the command but not on sim-fallback: {wrong[:5]}"
    assert {state_ for _m, _l, state_, _at in claims} == {"completed"}
    verify_chain(state)


# --- 6. submit, metrics, idle CPU --------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_submit_metrics_and_idle_cpu_of_a_running_daemon(
    tmp_path: Path, state: Site, start_daemon: StartDaemon, record_property
):
    init_state(state)
    config = write_config(tmp_path / "quarterdeck.toml", concurrency=16)
    port = free_port()
    daemon = start_daemon(state, config, "obs-1", "--metrics-port", str(port))
    daemon.wait_ready()
    served = daemon.logged("metrics served")
    assert served is not None and served["port"] == port

    count = 40
    receipts = submit(
        state, write_jsonl(tmp_path / "work.jsonl", [task(f"obs-{i}", latency_ms=50) for i in range(count)]), count
    )  # fmt: skip

    def results() -> list[dict[str, Any]] | None:
        listed = state.cli("ls", "turns", "--state", "completed", "--limit", "0", "--json")
        assert listed.returncode == 0, listed.stderr.decode(errors="replace")
        turns = [json.loads(raw) for raw in listed.stdout.splitlines() if raw.strip()]
        return turns if len(turns) == count else None

    turns = wait_until(results, 30, "the submitted work's results", 0.25)
    assert sorted(t["receipt_id"] for t in turns) == sorted(receipts)
    assert all(t["deliverable"]["summary"].startswith("done: objective obs-") for t in turns)
    assert daemon.proc.poll() is None, "the daemon stopped after the submission"

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        body = response.read().decode()
    samples = {
        line.split()[0]: float(line.split()[1])
        for line in body.splitlines()
        if line and not line.startswith("#")
    }
    assert "quarterdeck_mission_latency_p50_seconds" in samples, body
    # A healthy node lost nothing.
    for counter in ("leases_lost", "sessions_lost"):
        assert samples[f'quarterdeck_node_{counter}_total{{node="obs-1"}}'] == 0, body
    assert samples["quarterdeck_mission_latency_p50_seconds"] >= 0.05 * 0.9

    time.sleep(1.5)  # let the last events and sweeps settle
    assert daemon.proc.poll() is None
    cpu_before, wall_before = daemon.cpu_seconds(), time.monotonic()
    time.sleep(3.0)
    cpu = daemon.cpu_seconds() - cpu_before
    wall = time.monotonic() - wall_before
    report(record_property, idle_cpu_s=round(cpu, 3), over_s=round(wall, 2))
    assert daemon.proc.poll() is None
    assert cpu < 0.3, f"idle daemon used {cpu:.2f} s of CPU in {wall:.1f} s"


# --- heartbeats must not report finished missions as lost --------------------------------------


def test_heartbeat_never_rejects_a_mission_its_own_node_just_finished(
    tmp_path: Path, state: Site, start_daemon: StartDaemon, record_property
):
    """One daemon, nobody else, no lease ever expires: there is nothing to fence, so the ledger
    must not record a single ``mission.late_write_rejected`` (they feed the
    ``late_writes_rejected`` counter and the lease-conflict SLO figure)."""
    init_state(state)
    config = write_config(tmp_path / "quarterdeck.toml", concurrency=32)
    daemon = start_daemon(state, config, "solo-1")
    daemon.wait_ready()
    count = 10_000
    submit(state, write_jsonl(tmp_path / "work.jsonl", [task(f"solo-{i}") for i in range(count)]), count)  # fmt: skip
    wait_until(
        lambda: scalar(state, "SELECT count(*) FROM turns WHERE state = 'completed'") == count,
        90,
        "every turn to complete",
        0.25,
    )
    assert scalar(state, "SELECT count(*) FROM ledger WHERE action = 'mission.lease_expired'") == 0
    rejected = query(
        state,
        "SELECT r.subject_id, json_extract(r.payload, '$.write'), r.seq, c.seq FROM ledger r "
        "LEFT JOIN ledger c ON c.subject_id = r.subject_id AND c.action = 'mission.completed' "
        "AND c.actor = r.actor AND json_extract(c.payload, '$.attempt') = "
        "json_extract(r.payload, '$.attempt') WHERE r.action = 'mission.late_write_rejected'",
    )
    after_own_completion = [row for row in rejected if row[3] is not None and row[3] < row[2]]
    counter = scalar(state, "SELECT coalesce(max(value), 0) FROM counters "
                            "WHERE name = 'late_writes_rejected'")  # fmt: skip
    report(
        record_property,
        rejected=len(rejected),
        writes=dict(Counter(row[1] for row in rejected)),
        after_own_completion=len(after_own_completion),
        late_writes_rejected=counter,
    )
    assert rejected == [], (
        f"{len(rejected)} spurious late-write rejections ({dict(Counter(r[1] for r in rejected))})"
        f", {len(after_own_completion)} of them for a mission this node had already completed "
        f"at the same attempt, e.g. {after_own_completion[:2]}"
    )
    assert counter == 0
    assert claim_problems(state) == []
