"""Several headless Quarterdeck nodes as separate processes on one PostgreSQL database.

Each node is ``python -m quarterdeck run --headless --db URL --config F`` in its own working
directory (its own state dir for session folders), with a fresh node identity read from its
``daemon running`` log line. Work arrives through ``quarterdeck submit --db URL -`` in other
processes; the outcome is judged from the database itself (:class:`tests.conftest.Store`) and
``quarterdeck ledger verify``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tests.conftest import Store, quarterdeck
from tests.headless import JsonLog, wait_until

T = TypeVar("T")

TERMINAL = ("completed", "failed", "cancelled", "timed_out")
TERMINAL_SQL = "('completed', 'failed', 'cancelled', 'timed_out')"
"""Terminal states of turns and missions, as an SQL list."""


# --- configuration and work ----------------------------------------------------------------------


def config_text(
    *,
    lanes: Mapping[str, Mapping[str, Any]],
    lease_s: float = 2.0,
    sweep_interval_s: float = 0.5,
    policy: str | None = None,
    drain_grace_s: float = 2.0,
) -> str:
    """A quarterdeck.toml: ``lanes`` maps a lane name to its settings (``adapter`` defaults
    to ``sim`` with no failures and no drawn actions)."""
    out = [
        f'default_lane = "{next(iter(lanes))}"',
        f"lease_s = {lease_s}",
        f"sweep_interval_s = {sweep_interval_s}",
        f"drain_grace_s = {drain_grace_s}",
    ]
    if policy is not None:
        out.append(f"policy = {json.dumps(policy)}")
    for name, settings in lanes.items():
        values = {"adapter": "sim", "timeout_s": 60, "max_attempts": 3, **settings}
        options = {"seed": 1, "failure_rate": 0.0, "action_rate": 0.0, "max_latency_ms": 20}
        options.update(values.pop("options", {}))
        out.append(f"\n[lanes.{name}]")
        out.extend(f"{key} = {json.dumps(value)}" for key, value in values.items())
        shown = ", ".join(f"{key} = {json.dumps(value)}" for key, value in options.items())
        out.append(f"options = {{ {shown} }}")
    return "\n".join(out) + "\n"


def task(
    key: str,
    *,
    lane: str,
    latency_ms: int = 0,
    actions: Sequence[Mapping[str, Any]] = (),
    workspace: str = "default",
) -> dict[str, Any]:
    """A sim task that completes after ``latency_ms``, requesting ``actions`` first."""
    return {
        "idempotency_key": key,
        "workspace": workspace,
        "kind": "task",
        "payload": {
            "lane": lane,
            "objective": f"objective {key}",
            "input": {
                "sim": {
                    "latency_ms": latency_ms,
                    "outcome": "complete",
                    "actions": [dict(a) for a in actions],
                    "progress": 0,
                }
            },
        },
    }


def submit(
    url: str, envelopes: Sequence[Mapping[str, Any]], env: Mapping[str, str] | None = None
) -> list[str]:
    """``quarterdeck submit --db URL -`` in another process; every envelope must be accepted.
    Returns the receipt ids."""
    body = "".join(json.dumps(e) + "\n" for e in envelopes).encode()
    result = quarterdeck("submit", "--db", url, "-", env=env, stdin=body)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-3000:]
    lines = [json.loads(raw) for raw in result.stdout.splitlines() if raw.strip()]
    assert len(lines) == len(envelopes), f"{len(lines)} results for {len(envelopes)} envelopes"
    refused = [line for line in lines if line["status"] != "accepted"]
    assert not refused, f"not accepted: {refused[:3]}"
    return [line["receipt"] for line in lines]


def verify_ledger(url: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``quarterdeck ledger verify --db URL --json``: the chain must hold."""
    result = quarterdeck("ledger", "verify", "--db", url, "--json", env=env)
    assert result.stdout.strip(), result.stderr.decode(errors="replace")[-3000:]
    verdict: dict[str, Any] = json.loads(result.stdout)
    assert result.returncode == 0 and verdict["ok"], verdict
    return verdict


def migrate(url: str, env: Mapping[str, str] | None = None) -> None:
    """Create the schema once, before any node starts."""
    result = quarterdeck("db", "upgrade", "--db", url, env=env)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-3000:]


# --- the nodes -----------------------------------------------------------------------------------


@dataclass
class Node(JsonLog):
    """One ``quarterdeck run --headless`` process."""

    label: str
    proc: subprocess.Popen[bytes]
    log: Path
    id: str = ""
    """The node identity it chose (``node-<uuid>``), known once it started."""

    def alive(self) -> bool:
        """True while it runs; fails the test, with its log, if it exited."""
        assert self.proc.poll() is None, (
            f"{self.label} exited with {self.proc.returncode}:\n{self.log_tail()}"
        )
        return True

    def wait_ready(self, timeout: float = 60) -> str:
        """Wait for the ``daemon running`` line; returns the node's identity."""
        entry = wait_until(
            lambda: self.alive() and self.logged("daemon running"),
            timeout,
            f"{self.label} to start",
            step=0.05,
        )
        self.id = str(entry["node"])
        return self.id

    def signal(self, signum: int) -> None:
        os.kill(self.proc.pid, signum)


class Fleet:
    """Starts nodes on one database; at the end every one is stopped (at worst killed)."""

    def __init__(self, root: Path, url: str, env: Mapping[str, str] | None = None) -> None:
        self.root = root
        self.url = url
        self.env = dict(env or {})
        self.nodes: list[Node] = []

    def start(self, label: str, config: Path, *extra: str) -> Node:
        """Start one node (not waiting for it: see :meth:`Node.wait_ready`)."""
        home = self.root / label
        home.mkdir(parents=True, exist_ok=True)
        log = home / "node.log"
        env = {**os.environ, **self.env, "QUARTERDECK_STATE_DIR": str(home / "state")}
        env.pop("QUARTERDECK_WORKSPACE", None)
        command = [sys.executable, "-m", "quarterdeck", "run", "--headless", "--db", self.url,
                   "--config", str(config), *extra]  # fmt: skip
        with open(log, "ab") as err:
            proc = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=home,
                start_new_session=True,
            )  # fmt: skip
        node = Node(label, proc, log)
        self.nodes.append(node)
        return node

    def start_ready(self, config: Path, *labels: str) -> list[Node]:
        """Start several nodes at once and wait until each runs."""
        started = [self.start(label, config) for label in labels]
        for node in started:
            node.wait_ready()
        return started

    def all_alive(self) -> bool:
        return all(node.alive() for node in self.nodes if node.proc.returncode is None)

    def close(self) -> None:
        for node in self.nodes:
            if node.proc.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.proc.pid, signal.SIGCONT)
                os.killpg(node.proc.pid, signal.SIGTERM)
        for node in self.nodes:
            try:
                node.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.proc.pid, signal.SIGKILL)
                node.proc.wait(timeout=10)


@contextlib.contextmanager
def fleet(root: Path, url: str, env: Mapping[str, str] | None = None) -> Iterator[Fleet]:
    """A :class:`Fleet` that is closed at the end, whatever happened."""
    nodes = Fleet(root, url, env)
    try:
        yield nodes
    finally:
        nodes.close()


# --- judging the outcome -------------------------------------------------------------------------


def claim_problems(store: Store) -> list[str]:
    """Double claims and foreign finishes, read from the ledger and the missions table.

    A claim is a ``mission.running`` entry from ``queued`` (a mission resuming after an
    approval moves ``blocked -> running`` under the lease it holds). For every mission: one
    claim per attempt (never two owners with the same attempt), attempts numbered 1..n, the
    row's attempt the last one claimed; at most one ``mission.completed``, written by the owner
    that held that attempt's lease.
    """
    attempt = "CAST(payload::jsonb ->> 'attempt' AS INTEGER)"
    claims = "FROM ledger WHERE action = 'mission.running' AND from_state = 'queued'"
    problems: list[str] = []
    doubled = store.rows(
        f"SELECT subject_id, {attempt} AS attempt, count(*) AS n, "
        f"string_agg(payload::jsonb ->> 'owner', ',') AS owners {claims} "
        "GROUP BY 1, 2 HAVING count(*) > 1"
    )
    problems += [
        f"mission {r['subject_id']} attempt {r['attempt']} claimed {r['n']} times by {r['owners']}"
        for r in doubled
    ]
    gaps = store.rows(
        f"SELECT subject_id, count(*) AS n, max({attempt}) AS top {claims} "
        f"GROUP BY 1 HAVING count(*) != max({attempt})"
    )
    problems += [f"mission {r['subject_id']}: {r['n']} claims, attempt {r['top']}" for r in gaps]
    rows = store.rows(
        f"SELECT m.id, m.attempt, l.top FROM missions m JOIN (SELECT subject_id, "
        f"max({attempt}) AS top {claims} GROUP BY 1) l ON l.subject_id = m.id "
        "WHERE m.attempt != l.top"
    )
    problems += [f"mission {r['id']} row attempt {r['attempt']} != {r['top']}" for r in rows]
    twice = store.rows(
        "SELECT subject_id, count(*) AS n, string_agg(actor, ',') AS who FROM ledger "
        "WHERE action = 'mission.completed' GROUP BY 1 HAVING count(*) > 1"
    )
    problems += [f"mission {r['subject_id']} completed {r['n']} times ({r['who']})" for r in twice]
    foreign = store.rows(
        "SELECT c.subject_id, c.actor, r.payload::jsonb ->> 'owner' AS owner FROM ledger c "
        "JOIN ledger r ON r.subject_id = c.subject_id AND r.action = 'mission.running' "
        "AND r.from_state = 'queued' AND CAST(r.payload::jsonb ->> 'attempt' AS INTEGER) = "
        "CAST(c.payload::jsonb ->> 'attempt' AS INTEGER) "
        "WHERE c.action = 'mission.completed' AND c.actor != r.payload::jsonb ->> 'owner'"
    )
    problems += [
        f"mission {r['subject_id']} completed by {r['actor']} but leased to {r['owner']}"
        for r in foreign
    ]
    return problems


def deliverable_problems(store: Store, expected_turns: int) -> list[str]:
    """Every turn terminal with exactly one deliverable: one terminal ledger entry per turn
    (``turn.completed`` / ``failed`` / ...), a deliverable on the row, one turn per receipt;
    every mission terminal, with one terminal ledger entry."""
    problems: list[str] = []
    states = {r["state"]: r["n"] for r in store.rows(
        "SELECT state, count(*) AS n FROM turns GROUP BY state")}  # fmt: skip
    total = sum(states.values())
    if total != expected_turns:
        problems.append(f"{total} turns, expected {expected_turns}")
    live = {s: n for s, n in states.items() if s not in TERMINAL}
    if live:
        problems.append(f"turns not terminal: {live}")
    ends = store.rows(
        "SELECT subject_id, count(*) AS n FROM ledger WHERE subject_type = 'turn' "
        f"AND to_state IN {TERMINAL_SQL} GROUP BY 1 HAVING count(*) != 1"
    )
    problems += [f"turn {r['subject_id']} ended {r['n']} times" for r in ends[:10]]
    ended = store.value(
        "SELECT count(DISTINCT subject_id) FROM ledger WHERE subject_type = 'turn' "
        f"AND to_state IN {TERMINAL_SQL}"
    )
    if ended != expected_turns:
        problems.append(f"{ended} turns have a terminal ledger entry, expected {expected_turns}")
    empty = store.value("SELECT count(*) FROM turns WHERE deliverable IS NULL")
    if empty:
        problems.append(f"{empty} turns without a deliverable")
    missions = store.rows(
        f"SELECT m.id, m.state, count(l.seq) AS n FROM missions m LEFT JOIN ledger l "
        f"ON l.subject_id = m.id AND l.subject_type = 'mission' AND l.to_state IN {TERMINAL_SQL} "
        "GROUP BY m.id, m.state "
        f"HAVING count(l.seq) != 1 OR m.state NOT IN {TERMINAL_SQL} LIMIT 10"
    )
    problems += [f"mission {r['id']} is {r['state']} with {r['n']} ends" for r in missions]
    doubled = store.value(
        "SELECT count(*) FROM (SELECT receipt_id FROM turns GROUP BY 1 HAVING count(*) > 1) d"
    )
    if doubled:
        problems.append(f"{doubled} receipts produced more than one turn")
    return problems
