"""The state machine tables, and the runtime's own work path driven at random against a real
database.

The unit tests check the tables in ``quarterdeck.domain.states`` as data. The property test
drives the very operations the runtime runs to move work, through a real writer on a real
database (SQLite, and PostgreSQL where its server is installed): ingesting task envelopes and
applying their receipts; claiming missions in batches (with shadow runs and forced fallback);
heartbeats; batched finishes with every outcome, so retries, fallback and dead letters;
releases; lease sweeps and approval expiry under an injected clock that the test moves on;
and supervisor commands through the one ``apply_command``, as command envelopes applied at
once (the embedded runtime's way) or by the pump. A model of the leases predicts which claims
still hold and what each finish, heartbeat, release and sweep must do. After every step the rows are held to the ledger: each
item's entries retrace legal moves of its machine up to the row's state and version, every
terminal turn has the one deliverable it first got, and a stale or refused write changed
nothing.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from tests.conftest import RawConnection, is_postgres

from quarterdeck.domain.authority import ADMIN, Principal, Roster
from quarterdeck.domain.authority import Kind as PrincipalKind
from quarterdeck.domain.clock import format_instant
from quarterdeck.domain.policy import Policy, parse_policy
from quarterdeck.domain.states import (
    MACHINES,
    IllegalTransition,
    ItemNotFound,
    Kind,
    Machine,
    StaleWrite,
    TransitionError,
    UnknownState,
    check_transition,
    machine,
)

# What the runtime runs to move work (ingest, approvals' expiry, and the store's
# work operations below) is imported here and nowhere else in this module.
from quarterdeck.runtime.ingest import Ingestor
from quarterdeck.store.apply import Applied, apply_command_receipt, apply_receipts
from quarterdeck.store.approvals import expire_due
from quarterdeck.store.claiming import claim_missions
from quarterdeck.store.database import open_database
from quarterdeck.store.finishing import Ending, Finished, add_shadow_mission, finish_missions
from quarterdeck.store.leases import heartbeat, release_missions, sweep
from quarterdeck.store.ledger import verify_ledger
from quarterdeck.store.plan import Claim, LanePlan, WorkPlan
from quarterdeck.store.tables import STATEFUL_TABLES
from quarterdeck.store.writer import Writer

KINDS = list(Kind)
ALL_STATES = sorted({state for m in MACHINES.values() for state in m.states})
NOT_A_STATE = ("bogus", "", "QUEUED", " queued", "queued\n", "null")
"""Names no machine has (near misses of real ones among them)."""

EXPECTED_INITIAL = {
    Kind.TURN: "queued",
    Kind.MISSION: "queued",
    Kind.SESSION: "idle",
    Kind.APPROVAL: "pending",
    Kind.ALERT: "open",
}
EXPECTED_TERMINAL = {
    Kind.TURN: {"completed", "failed", "cancelled", "timed_out"},
    Kind.MISSION: {"completed", "failed", "cancelled", "timed_out"},
    Kind.SESSION: {"retired"},
    Kind.APPROVAL: {"approved", "rejected", "edited", "expired"},
    Kind.ALERT: {"resolved"},
}
EXPECTED_LEASED = {
    Kind.TURN: True,
    Kind.MISSION: True,
    Kind.SESSION: True,
    Kind.APPROVAL: False,
    Kind.ALERT: False,
}
MACHINE_LIST = [MACHINES[kind] for kind in KINDS]


def _reachable(m: Machine) -> set[str]:
    seen = {m.initial}
    todo = deque([m.initial])
    while todo:
        for target in m.transitions[todo.popleft()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


# --- the tables, as data ----------------------------------------------------------------------


def test_every_kind_has_a_machine_and_a_table():
    assert set(MACHINES) == set(Kind)
    assert set(STATEFUL_TABLES) == {str(kind) for kind in Kind}
    for kind, m in MACHINES.items():
        assert m.kind is kind
        assert machine(kind) is m
        assert machine(str(kind)) is m


def test_machine_rejects_unknown_kind_names():
    with pytest.raises(ValueError):
        machine("receipt")
    with pytest.raises(ValueError):
        machine("")


@pytest.mark.parametrize("m", MACHINE_LIST, ids=[str(k) for k in KINDS])
def test_initial_state(m: Machine):
    assert m.initial == EXPECTED_INITIAL[m.kind]
    assert m.initial in m.states
    assert m.initial not in m.terminal, "a new item must be able to move"


@pytest.mark.parametrize("m", MACHINE_LIST, ids=[str(k) for k in KINDS])
def test_leased(m: Machine):
    assert m.leased is EXPECTED_LEASED[m.kind]


@pytest.mark.parametrize("m", MACHINE_LIST, ids=[str(k) for k in KINDS])
def test_terminal_states_have_no_exits(m: Machine):
    assert m.terminal == EXPECTED_TERMINAL[m.kind]
    for state in m.terminal:
        assert m.transitions[state] == frozenset()
        for target in (*ALL_STATES, *NOT_A_STATE):
            assert not m.allows(state, target)
            with pytest.raises(TransitionError):
                check_transition(m.kind, state, target)


@pytest.mark.parametrize("m", MACHINE_LIST, ids=[str(k) for k in KINDS])
def test_every_target_is_a_known_state(m: Machine):
    assert len(set(m.states)) == len(m.states)
    for state, targets in m.transitions.items():
        assert isinstance(targets, frozenset)
        assert targets <= set(m.states), f"{m.kind}: {state} -> {sorted(targets - set(m.states))}"


@pytest.mark.parametrize("m", MACHINE_LIST, ids=[str(k) for k in KINDS])
def test_every_state_is_reachable_and_every_live_state_can_finish(m: Machine):
    assert _reachable(m) == set(m.states)
    for state in m.states:
        sub = Machine(m.kind, state, m.transitions, m.leased)
        assert _reachable(sub) & m.terminal, f"{m.kind}: no way from {state} to an end"


@pytest.mark.parametrize("m", MACHINE_LIST, ids=[str(k) for k in KINDS])
def test_check_transition_agrees_with_the_table(m: Machine):
    for from_state in m.states:
        for to_state in ALL_STATES:
            if to_state not in m.states:
                with pytest.raises(UnknownState) as unknown:
                    check_transition(m.kind, from_state, to_state)
                assert (unknown.value.kind, unknown.value.state) == (m.kind, to_state)
            elif to_state in m.transitions[from_state]:
                assert m.allows(from_state, to_state)
                check_transition(m.kind, from_state, to_state)
            else:
                assert not m.allows(from_state, to_state)
                with pytest.raises(IllegalTransition) as illegal:
                    check_transition(m.kind, from_state, to_state)
                error = illegal.value
                assert (error.kind, error.from_state, error.to_state) == (
                    m.kind,
                    from_state,
                    to_state,
                )
                assert from_state in str(error) and to_state in str(error)


@pytest.mark.parametrize("m", MACHINE_LIST, ids=[str(k) for k in KINDS])
@pytest.mark.parametrize("bad", NOT_A_STATE)
def test_check_transition_unknown_state(m: Machine, bad: str):
    with pytest.raises(UnknownState) as raised:
        check_transition(m.kind, m.initial, bad)
    assert raised.value.state == bad
    assert isinstance(raised.value, TransitionError)


def test_some_moves_by_name():
    check_transition(Kind.TURN, "queued", "leased")
    check_transition(Kind.TURN, "escalated", "taken_over")
    check_transition(Kind.APPROVAL, "escalated", "escalated")
    check_transition(Kind.ALERT, "open", "resolved")
    with pytest.raises(IllegalTransition):
        check_transition(Kind.TURN, "queued", "completed")
    with pytest.raises(IllegalTransition):
        check_transition(Kind.ALERT, "acked", "open")
    with pytest.raises(IllegalTransition):
        check_transition(Kind.SESSION, "idle", "idle")
    with pytest.raises(UnknownState):
        check_transition(Kind.ALERT, "open", "queued")  # a state of other machines only


def test_error_types_are_transition_errors():
    for error in (IllegalTransition, UnknownState, ItemNotFound, StaleWrite):
        assert issubclass(error, TransitionError)
    stale = StaleWrite(Kind.TURN, "x", (3, 1), (4, 1))
    assert stale.expected == (3, 1) and stale.actual == (4, 1)
    assert "attempt 1" in str(stale)
    assert "attempt" not in str(StaleWrite(Kind.ALERT, "x", (3, None), (4, 0))).split(";")[0]


# --- the work path, driven at random against a real database -------------------------------------

WORKSPACES = ("w", "v")
OWNERS = ("node-a", "node-b")
PEOPLE = ("erin", "kim")
OUTCOMES = ("completed", "failed", "timed_out", "cancelled")
SELF_FINISHED = frozenset({"completed", "failed", "timed_out"})
"""Outcomes after which the worker's own heartbeat is not a lost lease."""
LIVE_TURN = frozenset({"leased", "running", "awaiting_approval"})
TURN_TERMINAL = MACHINES[Kind.TURN].terminal
LEASE_S = 30.0
START = datetime(2030, 1, 1, tzinfo=UTC)
TICKS = (1, 5, 31, 61, 601, 3600)
"""Seconds the clock may move on: within a lease, past it, past an approval's deadline, past
a dead letter's hold."""

POLICY = """
[defaults]
outcome = "allow"
reject_reasons = ["unsafe", "other"]

[[rules]]
name = "risky-dispatch"
tool = "mission.dispatch"
args = { risky = true }
outcome = "require_approval"
approver = "supervisor"
deadline_s = 60
ladder = ["oncall"]

[[rules]]
name = "forbidden-dispatch"
tool = "mission.dispatch"
args = { forbidden = true }
outcome = "deny"
"""


def _plan() -> WorkPlan:
    policy = parse_policy(POLICY)
    assert isinstance(policy, Policy), policy
    return WorkPlan(
        lanes={
            "sim": LanePlan("sim", "fb", 2, 1.0, 2.0),
            "fb": LanePlan("fb", None, 1, 1.0, 2.0),
        },
        default_lane="sim",
        hold_s=600,
        policy=policy,
        claim_s=60,
        roster=Roster({person: frozenset({ADMIN}) for person in PEOPLE}),
    )


TASKS: dict[str, dict[str, Any]] = {
    "plain": {"lane": "sim", "input": {}},
    "risky": {"lane": "sim", "input": {"risky": True}},
    "forbidden": {"lane": "sim", "input": {"forbidden": True}},
    "on-fallback": {"lane": "fb", "input": {}},
    "default-lane": {"input": {}},
    "no-such-lane": {"lane": "nowhere", "input": {}},
    "malformed": {"lane": "sim", "input": "not an object"},
}
"""Task payloads: dispatched at once, held for approval, denied, on either lane, and two that
fail as they are applied."""
TASK_MIX = ["plain"] * 3 + sorted(TASKS)
FITTING = {
    "turn.takeover": "state IN ('queued', 'leased', 'running', 'awaiting_approval', 'escalated')",
    "turn.release": "state = 'taken_over'",
    "turn.complete": "state = 'taken_over'",
    "turn.cancel": "state NOT IN ('completed', 'failed', 'cancelled', 'timed_out')",
    "turn.requeue": "dead_letter = 'held'",
}
"""Turns a command may well apply to (it is also given any turn, or one that does not exist)."""
TURN_COMMANDS = ("turn.takeover", "turn.release", "turn.complete", "turn.cancel", "turn.requeue")
APPROVAL_COMMANDS = (
    "approval.approve",
    "approval.edit",
    "approval.reject",
    "approval.escalate",
    "approval.snooze",
    "approval.claim",
)
NOT_MOVES = frozenset(
    {
        "mission.late_write_rejected",
        "command.refused",
        "action.requested",
        "action.decided",
        "action.released",
    }
)
"""Ledger entries about an item that neither move it nor bump its version."""
VERSIONED = {"turn": "turns", "mission": "missions", "approval": "approvals"}

picks = st.tuples(st.integers(0, 10**6), st.sampled_from(["live", "live", "stale", "any"]))
"""A claim to use: an index into the claims whose lease holds (mostly), those whose lease is
gone, or all."""


@dataclass
class Link:
    """Where an item's ledger entries have brought it so far."""

    kind: str
    state: str
    version: int | None


@dataclass(frozen=True)
class Entry:
    seq: int
    subject_type: str
    subject_id: str
    action: str
    from_state: str | None
    to_state: str | None
    payload: dict[str, Any]


class WorkPath(RuleBasedStateMachine):
    """Each rule is an operation the runtime runs, submitted to a real writer as the runtime
    submits it; the model holds the leases."""

    def __init__(self, url: str, drop: Callable[[], None] | None) -> None:
        super().__init__()
        self.drop = drop
        self.now = START
        self.plan = _plan()
        self.loop = asyncio.new_event_loop()
        self.db = self.run(open_database(url))
        self.writer = Writer(self.db, clock=lambda: self.now)
        self.run(self._start())
        self.writing = True
        self.ingestor = Ingestor(self.writer, lambda: self.now)
        self.raw = RawConnection(url)
        self.keys = itertools.count()
        self.sent: list[dict[str, Any]] = []
        self.turns: list[str] = []
        self.approvals: list[tuple[str, str]] = []
        """Every approval's id and workspace (approvals are opened by claims alone here)."""
        self.claims: list[Claim] = []
        self.live: dict[str, Claim] = {}
        """Mission id -> the claim whose lease the model says holds."""
        self.expires: dict[str, datetime] = {}
        self.attempts: dict[str, int] = {}
        self.self_finished: set[tuple[str, int]] = set()
        self.chain: dict[str, Link] = {}
        self.ledger_seen = 0
        self.deliverables: dict[str, str] = {}

    async def _start(self) -> None:
        self.writer.start()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def submit(self, op: Callable[[Any], Any], *, concurrent: bool = False) -> Any:
        return self.run(self.writer.submit(op, concurrent=concurrent))

    # ---- reading the database ----

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of the stateful work tables."""
        return {t: self.raw.execute(f"SELECT * FROM {t} ORDER BY id") for t in VERSIONED.values()}

    def head(self) -> int:
        rows = self.raw.execute("SELECT seq FROM ledger_head WHERE id = 1")
        return int(rows[0][0]) if rows else 0

    def entries_since(self, seq: int) -> list[Entry]:
        rows = self.raw.execute(
            "SELECT seq, subject_type, subject_id, action, from_state, to_state, payload "
            "FROM ledger WHERE seq > ? ORDER BY seq",
            seq,
        )
        return [Entry(*row[:6], json.loads(row[6])) for row in rows]

    def counter(self, name: str) -> int:
        rows = self.raw.execute("SELECT value FROM counters WHERE name = ?", name)
        return int(rows[0][0]) if rows else 0

    def count(self, sql: str, *args: Any) -> int:
        return int(self.raw.execute(sql, *args)[0][0])

    # ---- the model of the leases ----

    def current(self, claim: Claim) -> bool:
        return self.live.get(claim.mission_id) == claim

    def pick_claim(self, pick: tuple[int, str]) -> Claim:
        n, among = pick
        pool = self.claims
        if among == "live":
            pool = list(self.live.values()) or pool
        elif among == "stale":
            pool = [c for c in self.claims if not self.current(c)] or pool
        return pool[n % len(pool)]

    def lose(self, mission_id: str) -> None:
        del self.live[mission_id]
        del self.expires[mission_id]

    def expect_finish(self, ending: Ending, turns: dict[str, str]) -> Finished | None:
        """What finishing ``ending`` must do (None: a retry with a next mission); ``turns``
        holds each turn's state as the batch has left it so far."""
        claim, outcome = ending.claim, ending.outcome
        if not self.current(claim):
            return Finished(accepted=False)
        self.lose(claim.mission_id)
        if outcome in SELF_FINISHED:
            self.self_finished.add((claim.mission_id, claim.attempt))
        if claim.role == "shadow":
            return Finished(accepted=True)
        state = turns[claim.turn_id]
        if state not in LIVE_TURN:
            return Finished(accepted=True, turn_state=state)
        if outcome == "cancelled":
            return Finished(accepted=True, turn_state=state)
        if outcome == "completed":
            turns[claim.turn_id] = "completed"
            return Finished(accepted=True, turn_state="completed")
        turns[claim.turn_id] = "queued"
        lane = self.plan.lanes[claim.lane]
        if claim.number < lane.max_attempts or (lane.fallback and claim.role == "primary"):
            return None
        return Finished(accepted=True, turn_state="queued", dead_letter="held")

    # ---- rules: ingress ----

    @rule(
        kinds=st.lists(st.sampled_from(TASK_MIX), min_size=1, max_size=4),
        workspace=st.sampled_from(WORKSPACES),
        again=st.one_of(st.none(), st.integers(0, 10**6)),
        wake=st.sampled_from([True, True, False]),
    )
    def ingest(self, kinds: list[str], workspace: str, again: int | None, wake: bool) -> None:
        """Task envelopes in (and one sent before, again: a duplicate); the pump applies them
        at once, or later."""
        envelopes = [
            {
                "idempotency_key": f"task-{next(self.keys)}",
                "workspace": workspace,
                "kind": "task",
                "payload": {"objective": kind, **TASKS[kind]},
            }
            for kind in kinds
        ]
        expected = ["accepted"] * len(envelopes)
        if again is not None and self.sent:
            envelopes.append(self.sent[again % len(self.sent)])
            expected.append("duplicate")
        results = self.run(self.ingestor.ingest(envelopes))
        assert [r.status for r in results] == expected, results
        self.sent.extend(envelopes[: len(kinds)])
        if wake:
            self.apply_all()

    def apply_all(self) -> list[Applied]:
        """Apply accepted receipts as the runtime's pump does, until none is left."""
        applied: list[Applied] = []
        while True:
            got: list[Applied] = self.submit(
                lambda txn: apply_receipts(txn, self.plan), concurrent=True
            )
            if not got:
                return applied
            self.turns.extend(a.produced_id for a in got if a.produced_type == "turn")
            applied.extend(got)

    # ---- rules: workers ----

    @rule(
        lane=st.sampled_from(["sim", "fb"]),
        forced=st.booleans(),
        slots=st.integers(1, 4),
        owner=st.sampled_from(OWNERS),
        shadow=st.booleans(),
    )
    def claim(self, lane: str, forced: bool, slots: int, owner: str, shadow: bool) -> None:
        """One batched claim on ``lane`` (running ``sim``'s work too when it is forced to its
        fallback), with the shadow runs the runtime adds while ``sim`` shadows."""
        sources = ["fb", "sim"] if lane == "fb" and forced else [lane]
        sessions = [f"{owner}/{lane}/{i}" for i in range(slots)]

        def op(txn: Any) -> list[Claim]:
            got = claim_missions(
                txn, lane, sources, len(sessions), owner, LEASE_S, sessions=sessions,
                plan=self.plan,
            )  # fmt: skip
            for claim in got:
                if shadow and lane == "sim" and claim.role == "primary":
                    add_shadow_mission(txn, claim, "fb")
            return got

        got: list[Claim] = self.submit(op, concurrent=True)
        assert len(got) <= slots
        for claim in got:
            assert claim.mission_id not in self.live, f"{claim} taken while its lease holds"
            assert (claim.owner, claim.exec_lane) == (owner, lane)
            assert claim.lane in sources
            assert claim.attempt == self.attempts.get(claim.mission_id, 0) + 1
            self.attempts[claim.mission_id] = claim.attempt
            self.live[claim.mission_id] = claim
            self.expires[claim.mission_id] = self.now + timedelta(seconds=LEASE_S)
            self.claims.append(claim)
        self.approvals = [
            (str(i), str(w)) for i, w in self.raw.execute("SELECT id, workspace FROM approvals")
        ]

    @precondition(lambda self: self.claims)
    @rule(chosen=st.lists(picks, min_size=1, max_size=4))
    def heartbeats(self, chosen: list[tuple[int, str]]) -> None:
        """Extend leases; exactly the claims whose lease is gone come back as lost."""
        claims = [self.pick_claim(p) for p in chosen]
        expected = [
            c
            for c in claims
            if not self.current(c) and (c.mission_id, c.attempt) not in self.self_finished
        ]
        rejected = self.counter("late_writes_rejected")
        lost = self.submit(lambda txn: heartbeat(txn, claims, LEASE_S))
        assert lost == expected
        assert self.counter("late_writes_rejected") == rejected + len(expected)
        for claim in claims:
            if self.current(claim):
                self.expires[claim.mission_id] = self.now + timedelta(seconds=LEASE_S)

    @precondition(lambda self: self.claims)
    @rule(chosen=st.lists(st.tuples(picks, st.sampled_from(OUTCOMES)), min_size=1, max_size=5))
    def finish(self, chosen: list[tuple[tuple[int, str], str]]) -> None:
        """One batch of endings, as the runtime's finisher gathers them: one per claim, any
        outcome, current and stale claims (a stale owner's beside the current owner's)."""
        endings: list[Ending] = []
        for n, (pick, outcome) in enumerate(chosen):
            claim = self.pick_claim(pick)
            if any(e.claim == claim for e in endings):
                continue  # each worker reports its ending once
            done = outcome == "completed"
            endings.append(
                Ending(
                    claim, outcome,  # type: ignore[arg-type]
                    result={"by": claim.owner, "n": n} if done else None,
                    error=None if done else f"{outcome} on {claim.exec_lane}",
                )
            )  # fmt: skip
        turns = {
            turn_id: state
            for e in endings
            for turn_id, state in self.raw.execute(
                "SELECT id, state FROM turns WHERE id = ?", e.claim.turn_id
            )
        }
        expected = [self.expect_finish(e, turns) for e in endings]
        rejected = self.counter("late_writes_rejected")
        finished = self.submit(
            lambda txn: finish_missions(txn, endings, self.plan), concurrent=True
        )
        for ending, want, got in zip(endings, expected, finished, strict=True):
            if want is None:  # a retry: on the same lane, or on the fallback
                assert (got.accepted, got.turn_state, got.dead_letter) == (
                    True,
                    "queued",
                    "retryable",
                ), (ending, got)
                assert got.next_mission is not None
            else:
                assert got == want, (ending, got)
        stale = sum(1 for want in expected if want is not None and not want.accepted)
        assert self.counter("late_writes_rejected") == rejected + stale

    @precondition(lambda self: any(not self.current(c) for c in self.claims))
    @rule(n=st.integers(0, 10**6), outcome=st.sampled_from(OUTCOMES))
    def stale_finish(self, n: int, outcome: str) -> None:
        """A worker whose lease is gone (reclaimed, released, revoked, finished) finishes:
        refused and recorded, and nothing else changes."""
        stale = [c for c in self.claims if not self.current(c)]
        claim = stale[n % len(stale)]
        before, mark = self.snapshot(), self.head()
        ending = Ending(claim, outcome, {"late": True}, "late")  # type: ignore[arg-type]
        [done] = self.submit(lambda txn: finish_missions(txn, [ending], self.plan), concurrent=True)
        assert done == Finished(accepted=False)
        assert self.snapshot() == before
        recorded = [
            (e.action, e.subject_id) for e in self.entries_since(mark) if e.subject_type != "alert"
        ]
        assert recorded == [("mission.late_write_rejected", claim.mission_id)]

    @precondition(lambda self: self.live)
    @rule(chosen=st.lists(picks, min_size=1, max_size=3), actor=st.sampled_from(OWNERS))
    def release(self, chosen: list[tuple[int, str]], actor: str) -> None:
        """A draining node hands its claims back; stale ones change nothing."""
        claims: list[Claim] = []
        for claim in (self.pick_claim(p) for p in chosen):
            if claim not in claims:  # a draining node hands back each claim once
                claims.append(claim)
        expected = []
        for claim in claims:
            if self.current(claim):
                expected.append(claim.mission_id)
                self.lose(claim.mission_id)
        before, mark = self.snapshot(), self.head()
        self.submit(lambda txn: release_missions(txn, claims, actor))
        entries = self.entries_since(mark)
        assert [e.subject_id for e in entries if e.action == "mission.released"] == expected
        if not expected:
            assert entries == [] and self.snapshot() == before

    # ---- rules: time, sweeps and expiry ----

    @rule(seconds=st.sampled_from(TICKS))
    def tick(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)

    @precondition(lambda self: self.turns)
    @rule()
    def sweep_leases(self) -> None:
        """Expired leases go back to the queue; held dead letters whose hold ran out die."""
        expired = [m for m in self.live if self.expires[m] < self.now]
        dying = self.count(
            "SELECT count(*) FROM turns WHERE dead_letter = 'held' AND held_until < ? "
            "AND state = 'queued'",
            format_instant(self.now),
        )
        swept = self.submit(lambda txn: sweep(txn, "sweeper"))
        assert (swept.reclaimed, swept.dead) == (len(expired), dying)
        for mission_id in expired:
            self.lose(mission_id)

    @precondition(lambda self: self.approvals)
    @rule()
    def expire_approvals(self) -> None:
        """Open approvals past their deadline escalate up the ladder, then expire."""
        at = format_instant(self.now)
        due = self.count(
            "SELECT count(*) FROM approvals WHERE state IN ('pending', 'escalated') "
            "AND deadline_at <= ? AND (snoozed_until IS NULL OR snoozed_until <= ?)",
            at,
            at,
        )
        assert self.submit(lambda txn: expire_due(txn, self.plan, "node-a:ladder")) == due

    # ---- rules: supervisor commands ----

    def command(self, workspace: str, payload: dict[str, Any], via_receipt: bool) -> Any:
        """Apply one command envelope through ``apply_command``: recorded and applied in one
        transaction for its principal (the supervisor ``actor`` names), as the runtime does, or
        written into the database for the pump to apply, where nobody authenticated it: it is
        refused as unauthenticated, whoever it names. A refused command (or one that finds its
        work done already) changes nothing."""
        self.apply_all()
        before = self.snapshot()
        principal = Principal(PrincipalKind.SUPERVISOR, payload["actor"])
        if not via_receipt:
            payload = {k: v for k, v in payload.items() if k != "actor"}
        envelope = {
            "idempotency_key": f"command-{next(self.keys)}",
            "workspace": workspace,
            "kind": "command",
            "payload": payload,
        }
        if via_receipt:
            [receipt] = self.run(self.ingestor.ingest([envelope]))
            assert receipt.status == "accepted", receipt
            mark = self.head()
            [mine] = [a for a in self.apply_all() if a.receipt_id == receipt.receipt]
            assert mine.produced_type == "command"
            result = json.loads(mine.produced_id)
            assert result["refused"] == "unauthenticated", result
        else:
            mark = self.head()
            [receipt], result = self.run(
                self.ingestor.ingest_then(
                    [envelope],
                    lambda txn, got: apply_command_receipt(txn, self.plan, got[0], principal),
                )
            )
            assert receipt.status == "accepted", receipt
            [recorded, *_] = self.entries_since(mark)
            assert recorded.action == "receipts.recorded", recorded
            assert recorded.payload == {"accepted": [receipt.receipt]}
            mark = recorded.seq
        if not result["ok"] or result.get("already"):
            assert self.snapshot() == before, result
            refused = [e.action for e in self.entries_since(mark)]
            assert refused == ([] if result["ok"] else ["command.refused"]), result
        return result

    @precondition(lambda self: self.turns)
    @rule(
        name=st.sampled_from(TURN_COMMANDS),
        n=st.integers(0, 10**6),
        actor=st.sampled_from(PEOPLE),
        fitting=st.booleans(),
        elsewhere=st.sampled_from([False] * 5 + [True]),
        via_receipt=st.booleans(),
    )
    def turn_command(
        self, name: str, n: int, actor: str, fitting: bool, elsewhere: bool, via_receipt: bool
    ) -> None:
        """Take over, release, complete, cancel or requeue a turn: one it may apply to, or any
        (missing, or in another workspace)."""
        targets = [*self.turns, "no-such-turn"]
        if fitting:
            sql = f"SELECT id FROM turns WHERE {FITTING[name]} ORDER BY id"
            targets = [str(row[0]) for row in self.raw.execute(sql)] or targets
        turn_id = targets[n % len(targets)]
        found = self.raw.execute("SELECT workspace FROM turns WHERE id = ?", turn_id)
        workspace = found[0][0] if found else WORKSPACES[0]
        if elsewhere:
            workspace = WORKSPACES[1 - WORKSPACES.index(workspace)]
        payload: dict[str, Any] = {"command": name, "turn_id": turn_id, "actor": actor}
        if name == "turn.complete":
            payload["deliverable"] = {"by": actor}
        result = self.command(workspace, payload, via_receipt)
        if result["ok"] and name in ("turn.takeover", "turn.cancel"):
            for claim in list(self.live.values()):  # revoked: every live mission cancelled
                if claim.turn_id == turn_id:
                    self.lose(claim.mission_id)

    @precondition(lambda self: self.approvals)
    @rule(
        name=st.sampled_from(APPROVAL_COMMANDS),
        n=st.integers(0, 10**6),
        actor=st.sampled_from(PEOPLE),
        code=st.sampled_from(["unsafe", "other", "bogus"]),
        fitting=st.booleans(),
        via_receipt=st.booleans(),
    )
    def approval_command(
        self, name: str, n: int, actor: str, code: str, fitting: bool, via_receipt: bool
    ) -> None:
        """Approve (as asked or edited), reject (with a reason code, maybe not one of the
        policy's), escalate, snooze or claim an approval: an open one, or any (or a missing
        one)."""
        targets = [*self.approvals, ("no-such-approval", WORKSPACES[0])]
        if fitting:
            sql = "SELECT id, workspace FROM approvals WHERE state IN ('pending', 'escalated')"
            targets = [(str(i), str(w)) for i, w in self.raw.execute(sql)] or targets
        approval_id, workspace = targets[n % len(targets)]
        command = "approval.approve" if name == "approval.edit" else name
        payload: dict[str, Any] = {"command": command, "approval_id": approval_id, "actor": actor}
        if name == "approval.edit":
            payload["args"] = {"risky": False, "edited_by": actor}
        elif name == "approval.reject":
            payload["reason_code"] = code
        elif name in ("approval.snooze", "approval.claim"):
            payload["for_s"] = 90
        self.command(workspace, payload, via_receipt)

    # ---- what must hold after every step ----

    @invariant()
    def the_ledger_retraces_every_item(self) -> None:
        """Each item's entries, in order, are legal moves from its machine's initial state,
        one version at a time, and end where its row is."""
        for entry in self.entries_since(self.ledger_seen):
            self.ledger_seen = entry.seq
            if entry.subject_type not in STATEFUL_TABLES:
                continue
            m = machine(entry.subject_type)
            if entry.action in NOT_MOVES:
                assert (entry.from_state, entry.to_state) == (None, None), entry
                continue
            version = entry.payload.get("version")
            link = self.chain.get(entry.subject_id)
            if link is None:
                assert (entry.from_state, entry.to_state, version) == (None, m.initial, 1), entry
                self.chain[entry.subject_id] = Link(entry.subject_type, m.initial, 1)
                continue
            assert link.kind == entry.subject_type, entry
            if entry.to_state is not None:
                assert entry.from_state == link.state, (entry, link)
                assert m.allows(link.state, entry.to_state), (entry, link)
                link.state = entry.to_state
            else:
                assert entry.from_state is None, entry
            if entry.subject_type in VERSIONED:
                assert link.version is not None, link
                if (entry.action, version) == ("turn.failed", 1):
                    # A task that cannot run is inserted failed: created and failed, one row
                    # write at version 1.
                    assert link.version == 1, (entry, link)
                else:
                    assert version == link.version + 1, (entry, link)
                link.version = version
        for kind, table in STATEFUL_TABLES.items():
            rows = self.raw.execute(f"SELECT id, state, version FROM {table.__tablename__}")
            versioned = kind in VERSIONED
            stored = {i: (s, v if versioned else None) for i, s, v in rows}
            for state, _ in stored.values():
                assert state in machine(kind).states
            retraced = {
                i: (link.state, link.version if versioned else None)
                for i, link in self.chain.items()
                if link.kind == kind
            }
            assert stored == retraced, kind

    @invariant()
    def leases_are_as_the_model_holds(self) -> None:
        """The missions that run are exactly the claims whose lease holds, fenced as issued."""
        running = {
            m: (attempt, version, owner)
            for m, attempt, version, owner in self.raw.execute(
                "SELECT id, attempt, version, lease_owner FROM missions "
                "WHERE state IN ('running', 'blocked')"
            )
        }
        assert running == {m: (c.attempt, c.version, c.owner) for m, c in self.live.items()}

    @invariant()
    def a_turn_has_one_deliverable(self) -> None:
        """A turn has a deliverable once it is over, and keeps the first one."""
        for turn_id, state, deliverable in self.raw.execute(
            "SELECT id, state, deliverable FROM turns"
        ):
            assert (deliverable is not None) == (state in TURN_TERMINAL), (turn_id, state)
            if deliverable is not None:
                assert self.deliverables.setdefault(turn_id, deliverable) == deliverable

    @invariant()
    def every_applied_task_made_one_turn(self) -> None:
        made = self.raw.execute(
            "SELECT produced_type, count(*) FROM receipts WHERE kind = 'task' "
            "AND produced_type IS NOT NULL GROUP BY produced_type"
        )
        assert dict(made) == ({"turn": len(self.turns)} if self.turns else {})
        assert self.count("SELECT count(*) FROM turns") == len(self.turns)

    def teardown(self) -> None:
        try:
            if self.writing:
                self.writing = False
                self.run(self.writer.stop())
                result = self.run(verify_ledger(self.db))
                assert result.ok, result
                assert result.entries == self.head()
        finally:
            self.raw.close()
            self.run(self.db.dispose())
            self.loop.close()
            if self.drop is not None:
                self.drop()


def test_the_work_path_keeps_every_item_on_its_machine(
    tmp_path: Path, database: str, request: pytest.FixtureRequest
) -> None:
    """Each example runs on a fresh database of the backend under test."""
    numbers = itertools.count()
    cluster = request.getfixturevalue("pg_cluster") if is_postgres(database) else None

    def fresh() -> WorkPath:
        if cluster is None:
            return WorkPath(str(tmp_path / f"run-{next(numbers)}" / "quarterdeck.db"), None)
        url = cluster.create_database()
        return WorkPath(url, lambda: cluster.drop_database(url))

    examples = 25 if cluster is not None else 50  # a PostgreSQL database costs more per step
    run_state_machine_as_test(
        fresh,
        settings=settings(max_examples=examples, stateful_step_count=50, deadline=None),
    )
