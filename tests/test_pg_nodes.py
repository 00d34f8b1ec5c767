"""Several headless nodes, each its own process, sharing one PostgreSQL database.

Every node is ``python -m quarterdeck run --headless --db URL`` with a fresh node identity
(``tests/nodes.py``); work arrives from other processes (``quarterdeck submit --db URL -``, the
SDK); the outcome is judged from the database (psycopg) and ``quarterdeck ledger verify``:

1. three nodes share 5,000 missions: no double claim, one end and one deliverable per turn, one
   gap-free chain whose times never go backwards, and every node did some of the work;
2. a node SIGKILLed while it runs missions: the others reclaim its leases within a lease and a
   sweep, and nothing is done twice;
3. a node SIGSTOPped past its lease, then resumed: its late writes are refused and counted;
4. a node frozen inside a write transaction (holding the writers' lock, which the next
   exclusive writer and then everyone queue behind; or, in the middle of a statement, the
   ledger head) does not stall the others for longer than the stall limit, whether it froze between two
   statements (the server's idle-in-transaction timeout) or in the middle of one (nodes end
   such sessions);
5. a control center attached to the database approves, while only node B runs, what was
   requested through node A (an agent's action and an SDK request): both requesters get it;
6. with notifications off (``QUARTERDECK_PG_NOTIFY=0`` everywhere) everything moves by polling.

PostgreSQL only: the ``pg_cluster`` fixture skips (saying how to enable it) without the server.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.conftest import Store, run
from tests.headless import POLICY, in_write_transaction
from tests.nodes import (
    TERMINAL_SQL,
    Fleet,
    Node,
    claim_problems,
    config_text,
    deliverable_problems,
    fleet,
    migrate,
    quarterdeck,
    submit,
    task,
    verify_ledger,
    wait_until,
)
from tests.pgcluster import PgCluster
from tests.test_tui_actions import header_text, until

from quarterdeck.runtime.config import daemon_user

LEASE_S = 2.0
SWEEP_S = 0.5
OS_USER = f"{daemon_user()} (uid {os.getuid()})"
"""How a node names this OS user on its socket."""
RECLAIM_MARGIN_S = 2.5
"""Slack on top of ``lease_s + sweep_interval_s`` for a loaded two-core machine."""


@pytest.fixture
def url(pg_cluster: PgCluster) -> str:
    """A fresh database, migrated once before any node starts."""
    database = pg_cluster.create_database()
    migrate(database)
    return database


def write_config(root: Path, **options: Any) -> Path:
    path = root / "quarterdeck.toml"
    path.write_text(config_text(**options), encoding="utf-8")
    return path


def attempt_of(entry: str = "") -> str:
    """SQL for a ledger entry's payload attempt (``entry`` is a table alias with its dot)."""
    return f"CAST({entry}payload::jsonb ->> 'attempt' AS INTEGER)"


def head_lock_free(url: str, wait_s: float = 1.0) -> bool:
    """Whether the ledger head can be locked within ``wait_s`` (nobody sits on it)."""
    with psycopg.connect(url) as conn:
        conn.execute(f"SET LOCAL lock_timeout = '{int(wait_s * 1000)}ms'")
        try:
            conn.execute("SELECT seq FROM ledger_head WHERE id = 1 FOR UPDATE")
        except psycopg.errors.LockNotAvailable:
            return False
        finally:
            conn.rollback()
    return True


def stopped(node: Node) -> bool:
    """Whether the process is in the stopped state (``T`` in /proc/PID/stat)."""
    raw = Path(f"/proc/{node.proc.pid}/stat").read_text()
    return raw[raw.rindex(")") + 2] == "T"


def freeze(node: Node, url: str) -> None:
    """SIGSTOP ``node``, but never inside a write transaction (it would hold the writers'
    lock; :func:`test_a_node_frozen_inside_a_write_transaction_does_not_stall_the_others` is
    about that case)."""
    for _ in range(50):
        node.alive()
        node.signal(signal.SIGSTOP)
        wait_until(lambda: stopped(node), 5, f"{node.label} to stop", step=0.01)
        if not in_write_transaction(url, node.proc.pid):
            return
        node.signal(signal.SIGCONT)
        time.sleep(0.05)
    pytest.fail(f"{node.label} was always inside a write transaction when stopped")


def freeze_inside_a_transaction(node: Node, url: str) -> int:
    """SIGSTOP ``node`` until it is caught inside a write transaction; returns how many tries
    it took."""
    for tries in range(1, 400):
        node.signal(signal.SIGSTOP)
        wait_until(lambda: stopped(node), 5, f"{node.label} to stop", step=0.005)
        if in_write_transaction(url, node.proc.pid):
            return tries
        node.signal(signal.SIGCONT)
        time.sleep(0.01)
    pytest.fail(f"{node.label} was never caught inside a write transaction")


def activity(store: Store) -> list[dict[str, Any]]:
    """The database's busy sessions (for failure messages)."""
    return store.rows(
        "SELECT pid, state, wait_event_type, wait_event, left(query, 120) AS query "
        "FROM pg_stat_activity WHERE datname = current_database() AND pid != pg_backend_pid() "
        "AND state != 'idle'"
    )


def thaw(node: Node) -> None:
    node.signal(signal.SIGCONT)


def head_seq(store: Store) -> int:
    return int(store.value("SELECT seq FROM ledger_head WHERE id = 1"))


def sdk_approval(store: Store, action_id: str) -> dict[str, Any]:
    """The approval an SDK request opened, once a node applied the request."""
    return wait_until(
        lambda: store.one("SELECT * FROM approvals WHERE action_key = ?", f"sdk:{action_id}"),
        30,
        f"the approval of {action_id}",
    )


def approved(store: Store, approval_id: str) -> bool:
    return bool(store.value("SELECT state FROM approvals WHERE id = ?", approval_id) == "approved")


def running_of(store: Store, node: Node) -> list[dict[str, Any]]:
    return store.rows(
        "SELECT id, attempt, turn_id FROM missions WHERE state IN ('running', 'blocked') "
        "AND lease_owner = ? ORDER BY id",
        node.id,
    )


def turns_done(store: Store, expected: int, nodes: Fleet) -> Callable[[], bool]:
    def check() -> bool:
        nodes.all_alive()
        done = store.value(f"SELECT count(*) FROM turns WHERE state IN {TERMINAL_SQL}")
        return bool(done == expected)

    return check


class Listener:
    """Counts ``NOTIFY`` payloads on the runtime's channel, from the test process."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True)
        self.conn.execute("LISTEN quarterdeck_ledger")

    def count(self) -> int:
        received = sum(1 for _ in self.conn.notifies(timeout=0.5))
        self.conn.close()
        return received


# --- 1. sharing ----------------------------------------------------------------------------------

SHARED = 5_000


def test_three_nodes_share_5000_missions_without_double_claims(tmp_path: Path, url: str) -> None:
    store = Store(url)
    # A lease long enough that a healthy, busy fleet never loses one: nothing may be fenced.
    config = write_config(
        tmp_path, lanes={"fast": {"concurrency": 64}}, lease_s=10.0, sweep_interval_s=SWEEP_S
    )
    listener = Listener(url)
    with fleet(tmp_path, url) as nodes:
        started = nodes.start_ready(config, "a", "b", "c")
        began = time.monotonic()
        # Two submitters in their own processes, while the nodes already work.
        halves = [
            [task(f"shared-{i}", lane="fast", latency_ms=10) for i in range(half, SHARED, 2)]
            for half in (0, 1)
        ]
        bodies = ["".join(json.dumps(e) + "\n" for e in envelopes) for envelopes in halves]
        command = [sys.executable, "-m", "quarterdeck", "submit", "--db", url, "-"]
        pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
        procs = [subprocess.Popen(command, **pipes) for _ in bodies]
        receipts: list[str] = []
        for proc, body in zip(procs, bodies, strict=True):
            out, err = proc.communicate(body.encode(), timeout=120)
            assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
            results = [json.loads(raw) for raw in out.splitlines()]
            assert {r["status"] for r in results} == {"accepted"}
            receipts += [r["receipt"] for r in results]
        assert len(set(receipts)) == SHARED
        wait_until(turns_done(store, SHARED, nodes), 150, f"{SHARED} turns to end", step=0.5)
        elapsed = time.monotonic() - began
        ids = {node.id for node in started}
    notified = listener.count()

    by_owner = {
        r["owner"]: r["n"]
        for r in store.rows(
            "SELECT payload::jsonb ->> 'owner' AS owner, count(*) AS n FROM ledger "
            "WHERE action = 'mission.running' AND from_state = 'queued' GROUP BY 1"
        )
    }
    finishers = {
        r["actor"]: r["n"]
        for r in store.rows(
            "SELECT actor, count(*) AS n FROM ledger WHERE action = 'mission.completed' GROUP BY 1"
        )
    }
    print(f"figures: {SHARED} missions in {elapsed:.1f} s ({SHARED / elapsed:.0f}/s), "
          f"claims by node {sorted(by_owner.values())}, notifications {notified}")  # fmt: skip

    assert store.rows("SELECT state, count(*) AS n FROM turns GROUP BY state") == [
        {"state": "completed", "n": SHARED}
    ]
    assert store.rows("SELECT state, count(*) AS n FROM missions GROUP BY state") == [
        {"state": "completed", "n": SHARED}
    ]
    assert sorted(r["receipt_id"] for r in store.rows("SELECT receipt_id FROM turns")) == sorted(
        receipts
    )
    assert claim_problems(store) == []
    assert deliverable_problems(store, SHARED) == []
    assert store.value("SELECT count(*) FROM ledger WHERE action = 'mission.completed'") == SHARED
    assert store.value("SELECT count(*) FROM ledger WHERE action = 'turn.completed'") == SHARED
    # Every node did some of the work, and nobody else did any.
    assert set(by_owner) == ids, by_owner
    assert set(finishers) == ids, finishers
    assert sum(by_owner.values()) == SHARED
    assert store.value("SELECT count(*) FROM missions WHERE lease_owner IS NOT NULL") == 0
    # Nobody lost a lease, so nothing was fenced off or reclaimed.
    assert store.counter("late_writes_rejected") == 0
    assert store.counter("leases_reclaimed") == 0
    # One chain: gap-free seqs, and times (the database clock) that never go backwards.
    chain = store.one("SELECT count(*) AS n, min(seq) AS low, max(seq) AS high FROM ledger")
    assert chain is not None
    count = chain["n"]
    assert (chain["low"], chain["high"]) == (1, count)
    assert store.value("SELECT seq FROM ledger_head WHERE id = 1") == count
    backwards = store.rows(
        "SELECT l.seq, p.at AS before, l.at FROM ledger l JOIN ledger p ON p.seq = l.seq - 1 "
        "WHERE CAST(l.at AS timestamptz) < CAST(p.at AS timestamptz) ORDER BY l.seq LIMIT 5"
    )
    assert backwards == [], f"ledger time went backwards along seq: {backwards}"
    verdict = verify_ledger(url)
    assert verdict["entries"] == count
    assert notified > 0, "the nodes announced no commit"


CAPPED = 600
CAP = 150
CAP_POLICY = f"""
[defaults]
outcome = "allow"

[floors]
rate_caps = [{{ subject = "tool", limit = {CAP}, window_s = 3600 }}]
"""


def test_a_rate_cap_holds_across_nodes_deciding_at_once(tmp_path: Path, url: str) -> None:
    # Three nodes claim (and so decide dispatches) side by side: each decision counts the
    # dispatches allowed so far, and exactly the cap's worth may be allowed in all.
    store = Store(url)
    (tmp_path / "policy.toml").write_text(CAP_POLICY, encoding="utf-8")
    config = write_config(
        tmp_path, lanes={"fast": {"concurrency": 32}}, lease_s=10.0, sweep_interval_s=SWEEP_S,
        policy=str(tmp_path / "policy.toml"),
    )  # fmt: skip
    with fleet(tmp_path, url) as nodes:
        started = nodes.start_ready(config, "a", "b", "c")
        submit(url, [task(f"capped-{i}", lane="fast") for i in range(CAPPED)])
        wait_until(turns_done(store, CAPPED, nodes), 120, f"{CAPPED} turns to end", step=0.5)
    deciders = {
        r["owner"]
        for r in store.rows(
            "SELECT DISTINCT payload::jsonb ->> 'owner' AS owner FROM ledger "
            "WHERE action = 'mission.running'"
        )
    }
    assert len(deciders) >= 2, deciders
    assert deciders <= {node.id for node in started}
    verdicts = store.rows(
        "SELECT verdict, count(*) AS n FROM decisions WHERE tool = 'mission.dispatch' "
        "GROUP BY verdict ORDER BY verdict"
    )
    assert verdicts == [{"verdict": "allow", "n": CAP}, {"verdict": "deny", "n": CAPPED - CAP}]
    assert store.rows("SELECT state, count(*) AS n FROM turns GROUP BY state ORDER BY state") == [
        {"state": "completed", "n": CAP},
        {"state": "failed", "n": CAPPED - CAP},
    ]
    verify_ledger(url)


# --- 2. a node killed ----------------------------------------------------------------------------


def test_a_killed_nodes_leases_are_reclaimed_by_the_others(tmp_path: Path, url: str) -> None:
    store = Store(url)
    config = write_config(
        tmp_path, lanes={"slow": {"concurrency": 4}}, lease_s=LEASE_S, sweep_interval_s=SWEEP_S
    )
    count = 36
    with fleet(tmp_path, url) as nodes:
        a, b, c = nodes.start_ready(config, "a", "b", "c")
        submit(url, [task(f"slow-{i}", lane="slow", latency_ms=1_500) for i in range(count)])
        wait_until(lambda: len(running_of(store, c)) >= 2, 30, "C to hold missions", step=0.02)
        c.signal(signal.SIGKILL)
        killed = time.monotonic()
        assert c.proc.wait(timeout=10) == -signal.SIGKILL
        time.sleep(0.2)  # the server notices the closed connection; an open transaction ends
        orphans = running_of(store, c)
        assert orphans, "C held nothing when it was killed"

        wait_until(
            lambda: nodes.all_alive() and not running_of(store, c),
            LEASE_S + SWEEP_S + 30,
            "C's leases to be reclaimed",
            step=0.05,
        )
        reclaimed_s = time.monotonic() - killed
        wait_until(turns_done(store, count, nodes), 60, "every turn to end", step=0.25)

    print(f"figures: {len(orphans)} orphans reclaimed {reclaimed_s:.2f} s after the kill")
    assert reclaimed_s <= LEASE_S + SWEEP_S + RECLAIM_MARGIN_S, (
        f"reclaimed {reclaimed_s:.2f} s after the kill (lease {LEASE_S} s, sweep {SWEEP_S} s)"
    )
    survivors = {a.id, b.id}
    for orphan in orphans:
        expired = store.rows(
            "SELECT actor FROM ledger WHERE action = 'mission.lease_expired' AND subject_id = ? "
            f"AND {attempt_of()} = ? AND payload::jsonb ->> 'previous_owner' = ?",
            orphan["id"], orphan["attempt"], c.id,
        )  # fmt: skip
        assert len(expired) == 1 and expired[0]["actor"] in survivors, (orphan, expired)
        rerun = store.rows(
            "SELECT actor, payload FROM ledger WHERE action = 'mission.completed' "
            "AND subject_id = ?",
            orphan["id"],
        )
        assert len(rerun) == 1 and rerun[0]["actor"] in survivors, rerun
        assert json.loads(rerun[0]["payload"])["attempt"] == orphan["attempt"] + 1
    assert store.rows("SELECT state, count(*) AS n FROM turns GROUP BY state") == [
        {"state": "completed", "n": count}
    ]
    assert deliverable_problems(store, count) == []
    assert claim_problems(store) == []
    assert store.counter("leases_reclaimed") == len(orphans)
    # C's sessions were found orphaned by the survivors' sweeps.
    sessions = store.rows("SELECT state FROM sessions WHERE lease_owner = ?", c.id)
    assert sessions and {s["state"] for s in sessions} == {"recovering"}, sessions
    verify_ledger(url)


# --- 3. a node paused past its lease -------------------------------------------------------------


def test_a_paused_nodes_late_writes_are_rejected(tmp_path: Path, url: str) -> None:
    store = Store(url)
    config = write_config(
        tmp_path, lanes={"slow": {"concurrency": 8}}, lease_s=LEASE_S, sweep_interval_s=SWEEP_S
    )
    count = 24
    with fleet(tmp_path, url) as nodes:
        a, b = nodes.start_ready(config, "a", "b")
        # The agents run for less than the pause lasts, so A's results are ready when it wakes.
        submit(url, [task(f"slow-{i}", lane="slow", latency_ms=1_500) for i in range(count)])
        wait_until(lambda: running_of(store, a), 30, "A to hold missions", step=0.02)
        freeze(a, url)
        paused = time.monotonic()
        stolen = running_of(store, a)
        assert stolen, "A held nothing when it was paused"

        def reclaimed_and_completed_by_b() -> bool:
            nodes.all_alive()
            for mission in stolen:
                expired = store.value(
                    "SELECT count(*) FROM ledger WHERE action = 'mission.lease_expired' "
                    f"AND subject_id = ? AND {attempt_of()} = ? "
                    "AND payload::jsonb ->> 'previous_owner' = ?",
                    mission["id"], mission["attempt"], a.id,
                )  # fmt: skip
                done = store.value(
                    "SELECT count(*) FROM ledger WHERE action = 'mission.completed' "
                    f"AND subject_id = ? AND actor = ? AND {attempt_of()} > ?",
                    mission["id"], b.id, mission["attempt"],
                )  # fmt: skip
                if (expired, done) != (1, 1):
                    return False
            return True

        wait_until(reclaimed_and_completed_by_b, 40, "B to reclaim and finish A's missions")
        paused_s = time.monotonic() - paused
        head = head_seq(store)
        thaw(a)

        def rejections() -> list[dict[str, Any]]:
            return store.rows(
                "SELECT subject_id, payload::jsonb ->> 'write' AS write, "
                f"{attempt_of()} AS attempt FROM ledger "
                "WHERE action = 'mission.late_write_rejected' AND seq > ? AND actor = ?",
                head, a.id,
            )  # fmt: skip

        def every_stolen_mission_rejected() -> bool:
            nodes.all_alive()
            refused = {(r["subject_id"], r["attempt"]) for r in rejections()}
            return all((m["id"], m["attempt"]) in refused for m in stolen)

        wait_until(every_stolen_mission_rejected, 20, "A's late writes to be refused")
        wait_until(turns_done(store, count, nodes), 60, "every turn to end", step=0.25)

        # B's sweep found A's sessions orphaned while A was paused; nobody took them, so A's
        # next heartbeat holds them again and says so.
        def a_holds_its_sessions_again() -> bool:
            states = store.rows("SELECT state FROM sessions WHERE lease_owner = ?", a.id)
            return bool(states) and {s["state"] for s in states} == {"active"}

        wait_until(a_holds_its_sessions_again, LEASE_S + 10, "A's sessions to be active again")
        returned = store.rows(
            "SELECT subject_id FROM ledger WHERE action = 'session.active' AND seq > ? "
            "AND actor = ? AND payload::jsonb ->> 'reason' = 'holder returned'",
            head, a.id,
        )  # fmt: skip
        assert len(returned) == 8, returned
        a.alive()

    stolen_ids = {m["id"] for m in stolen}
    kinds = sorted({r["write"] for r in rejections() if r["subject_id"] in stolen_ids})
    print(f"figures: {len(stolen)} missions of A reclaimed and rerun while it was paused "
          f"{paused_s:.1f} s; its refused writes: {kinds}")  # fmt: skip
    assert "completed" in kinds, f"A's late results were never refused: {kinds}"
    assert store.counter("late_writes_rejected") >= len(stolen)
    alerts = store.rows(
        "SELECT subject_id FROM alerts WHERE alert_type = 'out_of_sequence' AND state = 'open'"
    )
    assert stolen_ids <= {r["subject_id"] for r in alerts}
    by_a = store.rows(
        "SELECT subject_id FROM ledger WHERE action = 'mission.completed' AND actor = ?", a.id
    )
    assert stolen_ids.isdisjoint(r["subject_id"] for r in by_a), "a late result of A stood"
    assert store.rows("SELECT state, count(*) AS n FROM turns GROUP BY state") == [
        {"state": "completed", "n": count}
    ]
    assert deliverable_problems(store, count) == []
    assert claim_problems(store) == []
    for mission in stolen:  # the deliverable is B's
        turn = store.turn(mission["turn_id"])
        winner = store.one(
            "SELECT actor FROM ledger WHERE action = 'turn.completed' AND subject_id = ?",
            mission["turn_id"],
        )
        assert turn["state"] == "completed" and winner == {"actor": b.id}
    verify_ledger(url)


# --- 4. a node frozen inside a write transaction -------------------------------------------------


def test_a_node_frozen_inside_a_write_transaction_does_not_stall_the_others(
    tmp_path: Path, url: str
) -> None:
    """A node frozen inside a write transaction holds the writers' lock (and perhaps rows or
    the ledger head): the next exclusive writer (a sweep) queues behind it, and every writer
    after that behind the sweep. Its session is ended instead (between statements by the
    server's ``idle_in_transaction_session_timeout``, in the middle of one by the other node),
    and its leases are reclaimed as usual; woken, it goes on."""
    from quarterdeck.store.database import POSTGRES_IDLE_IN_TRANSACTION_MS

    idle_s = POSTGRES_IDLE_IN_TRANSACTION_MS / 1000
    store = Store(url)
    config = write_config(
        tmp_path, lanes={"fast": {"concurrency": 16}}, lease_s=LEASE_S, sweep_interval_s=SWEEP_S
    )
    count = 1_000
    with fleet(tmp_path, url) as nodes:
        [a, _b] = nodes.start_ready(config, "a", "b")
        submit(url, [task(f"busy-{i}", lane="fast", latency_ms=100) for i in range(count)])
        wait_until(lambda: running_of(store, a), 30, "A to work", step=0.02)
        tries = freeze_inside_a_transaction(a, url)
        frozen = time.monotonic()
        held = running_of(store, a)
        head = head_seq(store)
        try:
            wait_until(lambda: nodes.all_alive() and head_seq(store) > head, idle_s + 20,
                       "B to write again", step=0.05)  # fmt: skip
        except AssertionError as exc:
            raise AssertionError(f"{exc}; sessions: {activity(store)}") from None
        resumed_s = time.monotonic() - frozen
        wait_until(
            lambda: not running_of(store, a),
            idle_s + LEASE_S + SWEEP_S + 20,
            "A's leases to be reclaimed while it is frozen",
            step=0.1,
        )
        thaw(a)
        wait_until(turns_done(store, count, nodes), 120, "every turn to end", step=0.25)
        a.alive()
        late = store.counter("late_writes_rejected")

    print(f"figures: B wrote again {resumed_s:.2f} s after A froze in a write transaction "
          f"(caught at try {tries}; {len(held)} missions of A reclaimed, {late} late writes "
          "refused)")  # fmt: skip
    assert resumed_s <= idle_s + RECLAIM_MARGIN_S, resumed_s
    assert store.rows("SELECT state, count(*) AS n FROM turns GROUP BY state") == [
        {"state": "completed", "n": count}
    ]
    assert deliverable_problems(store, count) == []
    assert claim_problems(store) == []
    verify_ledger(url)


def hold_head_mid_statement(url: str, application: str) -> psycopg.Connection[Any]:
    """A write session that locked the ledger head and then went silent between two protocol
    messages (pipeline mode, no Sync): the server waits for it ``active`` in ``ClientRead``,
    where its idle-in-transaction timeout does not apply (what a process frozen in the
    middle of an ``asyncpg`` statement leaves behind)."""
    conn = psycopg.connect(url, application_name=application, autocommit=True)
    raw = conn.pgconn
    raw.enter_pipeline_mode()
    raw.send_query_params(b"BEGIN", None)
    raw.send_query_params(b"SELECT seq FROM ledger_head WHERE id = 1 FOR UPDATE", None)
    raw.send_flush_request()
    while raw.flush():
        time.sleep(0.01)
    wait_until(lambda: not head_lock_free(url, wait_s=0.1), 10, "the head to be held")
    return conn


def test_a_write_session_stalled_mid_statement_is_ended_by_a_node(tmp_path: Path, url: str) -> None:
    from quarterdeck.store.database import POSTGRES_IDLE_IN_TRANSACTION_MS, WRITER_APPLICATION

    stale_s = POSTGRES_IDLE_IN_TRANSACTION_MS / 1000
    store = Store(url)
    config = write_config(
        tmp_path, lanes={"fast": {"concurrency": 4}}, lease_s=LEASE_S, sweep_interval_s=SWEEP_S
    )
    count = 20
    with fleet(tmp_path, url) as nodes:
        [a] = nodes.start_ready(config, "a")
        holder = hold_head_mid_statement(url, WRITER_APPLICATION)
        pid = holder.pgconn.backend_pid
        try:
            began = time.monotonic()
            # The submitter's write waits for the head until the node ends the stalled session.
            submit(url, [task(f"after-{i}", lane="fast", latency_ms=10) for i in range(count)])
            waited_s = time.monotonic() - began
            wait_until(turns_done(store, count, nodes), 30, "every turn to end", step=0.1)
            gone = store.value("SELECT count(*) FROM pg_stat_activity WHERE pid = ?", pid) == 0
        finally:
            holder.close()
        ended = [e for e in a.log_entries() if e.get("message") == "ended stalled write sessions"]

    print(f"figures: the stalled session was ended; the submit waited {waited_s:.2f} s")
    assert stale_s - 1 <= waited_s <= stale_s + SWEEP_S + RECLAIM_MARGIN_S, waited_s
    assert gone, "the stalled session is still there"
    assert ended and ended[0]["sessions"] == 1, ended
    assert deliverable_problems(store, count) == []
    verify_ledger(url)


# --- 5. an attached control center approves across nodes -----------------------------------------


def test_an_attached_center_approves_on_node_b_what_node_a_asked(tmp_path: Path, url: str) -> None:
    from quarterdeck.client import Client
    from quarterdeck.client.api_console import ApiConsole
    from quarterdeck.client.reach import ApiAddress
    from quarterdeck.tui.app import create_app
    from quarterdeck.tui.panes import LivePane

    store = Store(url)
    (tmp_path / "policy.toml").write_text(POLICY, encoding="utf-8")
    config = write_config(
        tmp_path, lanes={"work": {"concurrency": 4}}, lease_s=30.0, sweep_interval_s=SWEEP_S,
        policy="policy.toml",
    )  # fmt: skip
    deploy = {"tool": "deploy", "args": {"env": "prod"}}
    with fleet(tmp_path, url) as nodes:
        [a] = nodes.start_ready(config, "a")
        # Only A runs: the agent's deploy is requested on A, and A holds the mission.
        submit(url, [task("ship", lane="work", latency_ms=20, actions=[deploy])])
        asked = wait_until(
            lambda: store.one("SELECT * FROM approvals WHERE tool = 'deploy'"), 30, "the approval"
        )
        mission = store.one("SELECT * FROM missions WHERE id = ?", asked["mission_id"])
        assert mission is not None
        assert (mission["state"], mission["lease_owner"]) == ("blocked", a.id)
        [b] = nodes.start_ready(config, "b")

        async def main() -> dict[str, Any]:
            async with Client(url) as client:
                # The SDK's request is applied by A (B is paused meanwhile).
                freeze(b, url)
                request = asyncio.create_task(
                    client.request_approval("deploy", {"env": "staging"}, action_id="sdk-ship")
                )
                try:
                    sdk = await asyncio.to_thread(sdk_approval, store, "sdk-ship")
                finally:
                    thaw(b)
                # Attached to B's control API, as this OS user (admin without a roster).
                socket_b = tmp_path / "b" / "state" / "quarterdeck.sock"
                app = create_app(await ApiConsole.open(ApiAddress(socket_path=socket_b)))
                async with app.run_test(size=(120, 40)) as pilot:
                    approvals = app.query_one("#approvals", LivePane)
                    await until(
                        pilot,
                        lambda: {asked["id"], sdk["id"]} <= set(approvals.lines),
                        "both approvals on screen",
                        timeout=20,
                    )
                    await until(pilot, lambda: "daemon alive" in header_text(app), "B")
                    # From now on only B applies commands: A is paused.
                    await asyncio.to_thread(freeze, a, url)
                    try:
                        for approval_id in (asked["id"], sdk["id"]):
                            approvals.focus()
                            approvals.move_cursor(row=approvals.get_row_index(approval_id))
                            await pilot.press("a")
                            await until(
                                pilot,
                                lambda approval_id=approval_id: approved(store, approval_id),
                                f"B to apply the approval of {approval_id}",
                                timeout=20,
                            )
                        a_frozen = stopped(a)
                    finally:
                        thaw(a)
                    sent = list(app.sent)
                decision = await asyncio.wait_for(request, 30)
            return {"decision": decision, "sent": sent, "a_frozen": a_frozen, "sdk": sdk["id"]}

        outcome = run(main())
        turn = wait_until(
            lambda: store.one(
                "SELECT * FROM turns WHERE id = ? AND state = 'completed'", asked["turn_id"]),
            30, "A's agent to finish",
        )  # fmt: skip
        a.alive()
        b.alive()

    assert outcome["a_frozen"], "A woke up while the approvals were given"
    assert [s["result"]["ok"] for s in outcome["sent"]] == [True, True], outcome["sent"]
    decision = outcome["decision"]
    assert (decision.outcome, decision.approval_id, decision.decided_by) == (
        "approved",
        outcome["sdk"],
        OS_USER,
    )
    assert json.loads(turn["deliverable"])["actions"] == [
        {"tool": "deploy", "outcome": "approved", "args": {"env": "prod"}}
    ]
    finished = store.one(
        "SELECT actor FROM ledger WHERE action = 'mission.completed' AND subject_id = ?",
        asked["mission_id"],
    )
    assert finished == {"actor": a.id}, "the agent on A did not get the decision"
    decided = store.rows(
        "SELECT subject_id, actor FROM ledger WHERE action = 'approval.approved' ORDER BY seq"
    )
    assert decided == [
        {"subject_id": asked["id"], "actor": OS_USER},
        {"subject_id": outcome["sdk"], "actor": OS_USER},
    ]
    verify_ledger(url)


# --- 6. no notifications -------------------------------------------------------------------------


def test_without_notifications_everything_moves_by_polling(
    tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from quarterdeck.client import Client

    quiet = {"QUARTERDECK_PG_NOTIFY": "0"}
    monkeypatch.setenv("QUARTERDECK_PG_NOTIFY", "0")  # the SDK client in this process too
    store = Store(url)
    (tmp_path / "policy.toml").write_text(POLICY, encoding="utf-8")
    config = write_config(
        tmp_path, lanes={"fast": {"concurrency": 16}}, lease_s=LEASE_S, sweep_interval_s=SWEEP_S,
        policy="policy.toml",
    )  # fmt: skip
    count = 400
    listener = Listener(url)
    with fleet(tmp_path, url, env=quiet) as nodes:
        nodes.start_ready(config, "a", "b")
        envelopes = [task(f"quiet-{i}", lane="fast", latency_ms=10) for i in range(count)]
        envelopes.append(
            task("quiet-deploy", lane="fast", latency_ms=10,
                 actions=[{"tool": "deploy", "args": {"env": "prod"}}])
        )  # fmt: skip
        submit(url, envelopes, env=quiet)

        def approve(approval_id: str) -> dict[str, Any]:
            result = quarterdeck(  # through node a's control API
                "approve",
                approval_id,
                "--db",
                url,
                "--wait",
                "30",
                env=quiet,
                state_dir=tmp_path / "a" / "state",
            )
            assert result.returncode == 0, result.stderr.decode(errors="replace")
            answer: dict[str, Any] = json.loads(result.stdout)
            return answer

        async def main() -> Any:
            async with Client(url) as client:
                request = asyncio.create_task(
                    client.request_approval("deploy", {"env": "qa"}, action_id="quiet-sdk")
                )
                row = await asyncio.to_thread(sdk_approval, store, "quiet-sdk")
                assert not request.done()
                assert (await asyncio.to_thread(approve, row["id"]))["ok"]
                return await asyncio.wait_for(request, 30)

        decision = run(main())
        agent = wait_until(
            lambda: store.one("SELECT id FROM approvals WHERE tool = 'deploy' AND mission_id "
                              "IS NOT NULL AND state = 'pending'"),
            30, "the agent's approval",
        )  # fmt: skip
        assert approve(agent["id"])["ok"]
        wait_until(turns_done(store, count + 1, nodes), 90, "every turn to end", step=0.25)
    notified = listener.count()

    label = f"{pwd.getpwuid(os.getuid()).pw_name} (uid {os.getuid()})"
    assert (decision.outcome, decision.decided_by) == ("approved", label)
    assert store.rows("SELECT state, count(*) AS n FROM turns GROUP BY state") == [
        {"state": "completed", "n": count + 1}
    ]
    shipped = store.one(
        "SELECT deliverable FROM turns WHERE receipt_id IN "
        "(SELECT id FROM receipts WHERE idempotency_key = 'quiet-deploy')"
    )
    assert shipped is not None
    assert json.loads(shipped["deliverable"])["actions"][0]["outcome"] == "approved"
    assert deliverable_problems(store, count + 1) == []
    assert claim_problems(store) == []
    assert notified == 0, f"{notified} notifications were sent with QUARTERDECK_PG_NOTIFY=0"
    verify_ledger(url, env=quiet)
