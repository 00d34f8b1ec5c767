"""The state machine tables, and random transition requests against a real database.

The unit tests check the tables in ``quarterdeck.domain.states`` as data. The property test
drives :class:`quarterdeck.runtime.items.Items` with random requests (legal, illegal, unknown
states, stale versions and attempts, wrong workspaces and kinds, missing items; one at a time
and in concurrent bursts that share a group commit) and holds the database to a model of what
each request must do: exactly one ledger entry per applied create or transition, nothing at
all for a refused one, and counters that count every refusal.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from tests.conftest import RawConnection, is_postgres

from quarterdeck.domain.states import (
    MACHINES,
    IllegalTransition,
    ItemNotFound,
    Kind,
    Machine,
    NoDecision,
    StaleWrite,
    TransitionError,
    UnknownState,
    check_transition,
    machine,
)
from quarterdeck.runtime.items import Items
from quarterdeck.store.database import open_database
from quarterdeck.store.items import ItemState
from quarterdeck.store.ledger import verify_ledger
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


# --- random requests against a real database ---------------------------------------------------

WORKSPACES = ("ws-a", "ws-b")


@dataclass(frozen=True)
class Request:
    """A transition request before it is resolved against the model's current items."""

    pick: int
    missing: bool
    other_kind: bool
    other_workspace: bool
    target_mode: str
    target_pick: int
    version_delta: int
    attempt_mode: str
    bump: bool


requests = st.builds(
    Request,
    pick=st.integers(0, 1_000),
    missing=st.sampled_from([False] * 15 + [True]),
    other_kind=st.sampled_from([False] * 11 + [True]),
    other_workspace=st.sampled_from([False] * 9 + [True]),
    target_mode=st.sampled_from(["legal"] * 8 + ["known"] * 2 + ["foreign", "unknown"]),
    target_pick=st.integers(0, 1_000),
    version_delta=st.sampled_from([0] * 8 + [1, -1, 5]),
    attempt_mode=st.sampled_from(["exact"] * 8 + ["off", "omit"]),
    bump=st.booleans(),
)


@dataclass
class ModelItem:
    kind: Kind
    workspace: str
    state: str
    version: int
    attempt: int


@dataclass(frozen=True)
class Resolved:
    """A request resolved into actual arguments, with the outcome the model predicts."""

    kind: Kind
    item_id: str
    to_state: str
    workspace: str
    expected_version: int
    expected_attempt: int | None
    bump: bool
    outcome: type[Exception] | None
    """None: applied; else the exception the request must end in."""
    after: tuple[str, int, int] | None
    """When applied: the item's state, version and attempt right after it."""


class TransitionRequests(RuleBasedStateMachine):
    """Every request goes through ``Items``; a model predicts each outcome."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.db = self.loop.run_until_complete(open_database(url))
        self.writer = Writer(self.db)
        self.loop.run_until_complete(self._start())
        self.writing = True
        self.items = Items(self.writer)
        self.raw = RawConnection(url)
        self.model: dict[str, ModelItem] = {}
        self.ledger_count: Counter[str] = Counter()
        self.illegal: Counter[str] = Counter()
        self.stale: Counter[str] = Counter()
        self.refused = 0
        self.applied = 0
        self.missing = itertools.count()

    async def _start(self) -> None:
        self.writer.start()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    # ---- the model ----

    def resolve(self, req: Request) -> Resolved:
        """Turn ``req`` into arguments and predict the outcome, in the order the store checks:
        a leased kind without an attempt, then existence, then the table, then the CAS."""
        ids = sorted(self.model)
        if req.missing or not ids:
            item_id = f"missing-{next(self.missing)}"
            item = ModelItem(KINDS[req.pick % len(KINDS)], WORKSPACES[0], "?", 1, 0)
            found = False
        else:
            item_id = ids[req.pick % len(ids)]
            item = self.model[item_id]
            found = True
        kind = item.kind
        if req.other_kind:
            kind = KINDS[(KINDS.index(kind) + 1 + req.pick % (len(KINDS) - 1)) % len(KINDS)]
            found = False
        workspace = item.workspace
        if req.other_workspace:
            workspace = WORKSPACES[1 - WORKSPACES.index(workspace)]
            found = False
        m = MACHINES[kind]
        if req.target_mode == "legal" and m.transitions.get(item.state):
            choices = sorted(m.transitions[item.state])
        elif req.target_mode in ("legal", "known"):
            choices = list(m.states)
        elif req.target_mode == "foreign":
            choices = [s for s in ALL_STATES if s not in m.states] or list(NOT_A_STATE)
        else:
            choices = list(NOT_A_STATE)
        to_state = choices[req.target_pick % len(choices)]
        expected_version = max(0, item.version + req.version_delta)
        if req.attempt_mode == "exact":
            expected_attempt: int | None = item.attempt
        elif req.attempt_mode == "off":
            expected_attempt = item.attempt + 1 + req.pick % 2
        else:
            expected_attempt = None

        outcome: type[Exception] | None
        if m.leased and expected_attempt is None:
            outcome = ValueError
        elif not found:
            outcome = ItemNotFound
        elif to_state not in m.states:
            outcome = UnknownState
            self.illegal[f"{kind}:?->{to_state}"] += 1
        elif not m.allows(item.state, to_state):
            outcome = IllegalTransition
            self.illegal[f"{kind}:{item.state}->{to_state}"] += 1
        elif expected_version != item.version or (
            expected_attempt is not None and expected_attempt != item.attempt
        ):
            outcome = StaleWrite
            self.stale[str(kind)] += 1
        elif kind is Kind.MISSION and (item.state, to_state) == ("queued", "running"):
            outcome = NoDecision  # the model never holds a dispatch decision
        else:
            outcome = None
            item.state = to_state
            item.version += 1
            item.attempt += 1 if req.bump else 0
            self.ledger_count[item_id] += 1
        after = (item.state, item.version, item.attempt) if outcome is None else None
        if outcome is None:
            self.applied += 1
        else:
            self.refused += 1
        return Resolved(
            kind,
            item_id,
            to_state,
            workspace,
            expected_version,
            expected_attempt,
            req.bump,
            outcome,
            after,
        )

    async def send(self, r: Resolved) -> ItemState | Exception:
        try:
            return await self.items.transition(
                r.kind,
                r.item_id,
                r.to_state,
                workspace=r.workspace,
                actor="prop",
                expected_version=r.expected_version,
                expected_attempt=r.expected_attempt,
                bump_attempt=r.bump,
                payload={"n": self.applied},
            )
        except Exception as exc:
            return exc

    def check_outcome(self, r: Resolved, result: ItemState | Exception) -> None:
        if r.outcome is None:
            assert isinstance(result, ItemState), f"{r} was refused: {result!r}"
            assert (result.kind, result.id, result.workspace) == (r.kind, r.item_id, r.workspace)
            assert (result.state, result.version, result.attempt) == r.after
        else:
            assert type(result) is r.outcome, f"{r}: expected {r.outcome.__name__}, got {result!r}"

    # ---- rules ----

    @initialize()
    def one_of_each(self) -> None:
        for i, kind in enumerate(KINDS):
            self.create(kind, WORKSPACES[i % 2])

    @rule(kind=st.sampled_from(KINDS), workspace=st.sampled_from(WORKSPACES))
    def create(self, kind: Kind, workspace: str) -> None:
        created = self.run(self.items.create(kind, workspace=workspace, actor="prop"))
        m = MACHINES[kind]
        assert (created.kind, created.workspace) == (kind, workspace)
        assert (created.state, created.version, created.attempt) == (m.initial, 1, 0)
        assert created.id not in self.model
        self.model[created.id] = ModelItem(kind, workspace, m.initial, 1, 0)
        self.ledger_count[created.id] += 1

    @rule(req=requests)
    def transition(self, req: Request) -> None:
        resolved = self.resolve(req)
        self.check_outcome(resolved, self.run(self.send(resolved)))

    @rule(reqs=st.lists(requests, min_size=2, max_size=6))
    def burst(self, reqs: list[Request]) -> None:
        """Requests submitted together: they share group commits, each in its savepoint."""
        resolved = [self.resolve(req) for req in reqs]

        async def all_at_once() -> list[ItemState | Exception]:
            return list(await asyncio.gather(*(self.send(r) for r in resolved)))

        for r, result in zip(resolved, self.run(all_at_once()), strict=True):
            self.check_outcome(r, result)

    # ---- what must hold after every step ----

    @invariant()
    def rows_match_the_model(self) -> None:
        stored: dict[str, ModelItem] = {}
        for kind, model in STATEFUL_TABLES.items():
            rows = self.raw.execute(
                f"SELECT id, workspace, state, version, attempt FROM {model.__tablename__}"
            )
            for item_id, workspace, state, version, attempt in rows:
                assert state in MACHINES[Kind(kind)].states, (kind, item_id, state)
                stored[item_id] = ModelItem(Kind(kind), workspace, state, version, attempt)
        assert stored == self.model

    @invariant()
    def one_ledger_entry_per_applied_write(self) -> None:
        per_subject = Counter(
            dict(self.raw.execute("SELECT subject_id, count(*) FROM ledger GROUP BY subject_id"))
        )
        assert per_subject == self.ledger_count
        total = sum(self.ledger_count.values())
        assert self.raw.execute("SELECT seq FROM ledger_head WHERE id = 1") == [(total,)]

    @invariant()
    def refusals_are_counted(self) -> None:
        metrics = self.items.metrics
        assert +metrics.illegal_transitions == +self.illegal
        assert +metrics.stale_writes == +self.stale
        assert sum(metrics.illegal_transitions.values()) == sum(self.illegal.values())

    def teardown(self) -> None:
        try:
            if self.writing:
                self.writing = False
                self.run(self.writer.stop())
                self.check_histories()
                result = self.run(verify_ledger(self.db))
                assert result.ok, result
                assert result.entries == sum(self.ledger_count.values())
        finally:
            self.raw.close()
            self.run(self.db.dispose())
            self.loop.close()

    def check_histories(self) -> None:
        """Each item's entries, in seq order, retrace legal moves from its initial state."""
        rows = self.raw.execute(
            "SELECT subject_type, subject_id, action, from_state, to_state, workspace"
            " FROM ledger ORDER BY seq"
        )
        position: dict[str, str] = {}
        for subject_type, subject_id, action, from_state, to_state, workspace in rows:
            item = self.model[subject_id]
            assert (subject_type, workspace) == (str(item.kind), item.workspace)
            m = MACHINES[item.kind]
            if subject_id not in position:
                assert (action, from_state, to_state) == (f"{item.kind}.created", None, m.initial)
            else:
                assert from_state == position[subject_id]
                assert m.allows(from_state, to_state)
                assert action == f"{item.kind}.{to_state}"
            position[subject_id] = to_state
        assert position == {item_id: item.state for item_id, item in self.model.items()}


def test_random_transition_requests(
    tmp_path: Path, database: str, request: pytest.FixtureRequest
) -> None:
    """Each example runs on a fresh database of the backend under test."""
    numbers = itertools.count()

    def fresh() -> str:
        if is_postgres(database):
            return str(request.getfixturevalue("pg_cluster").create_database())
        return str(tmp_path / f"run-{next(numbers)}" / "quarterdeck.db")

    run_state_machine_as_test(
        lambda: TransitionRequests(fresh()),
        settings=settings(max_examples=25, stateful_step_count=30, deadline=None),
    )
