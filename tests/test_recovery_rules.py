"""The recovery rules (``domain/recovery.py``) without a database: what a turn does after its
mission finished, after its lease was let go, and when its hold as a dead letter ran out."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quarterdeck.domain.recovery import (
    Finish,
    LetGo,
    Recovery,
    Role,
    Step,
    after_finish,
    after_hold,
    after_let_go,
)
from quarterdeck.domain.states import MACHINES, TURN_HOLDS_LEASE, Kind
from quarterdeck.store.plan import LanePlan

LANES = {
    "sim": LanePlan("sim", fallback="fb", max_attempts=3, backoff_initial_s=1.0, backoff_max_s=4.0),
    "fb": LanePlan("fb", fallback=None, max_attempts=2, backoff_initial_s=0.5, backoff_max_s=0.5),
    "once": LanePlan("once", fallback="fb", max_attempts=1, backoff_initial_s=1, backoff_max_s=1),
    "lost": LanePlan(
        "lost", fallback="nowhere", max_attempts=1, backoff_initial_s=1, backoff_max_s=1
    ),
    "flat": LanePlan("flat", fallback=None, max_attempts=2, backoff_initial_s=0, backoff_max_s=0),
}
HOLD_S = 3600.0
TURN_STATES = tuple(MACHINES[Kind.TURN].states)


def finish(
    outcome: Finish, role: Role = "primary", lane: str = "sim", number: int = 1,
    turn_state: str | None = "running",
) -> Recovery:  # fmt: skip
    return after_finish(
        outcome, role=role, lane=lane, number=number, turn_state=turn_state, lanes=LANES,
        hold_s=HOLD_S, rng=random.Random(7),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("outcome", "role", "lane", "number", "turn_state", "step", "next_lane", "next_role", "n"),
    [
        # a shadow run only records, whatever happened
        ("completed", "shadow", "sim", 1, "running", Step.RECORD, None, None, 0),
        ("failed", "shadow", "sim", 9, "running", Step.RECORD, None, None, 0),
        ("failed", "shadow", "sim", 1, None, Step.RECORD, None, None, 0),
        # the turn moved on (or is gone): left as it is
        ("completed", "primary", "sim", 1, None, Step.KEEP, None, None, 0),
        ("completed", "primary", "sim", 1, "taken_over", Step.KEEP, None, None, 0),
        ("failed", "primary", "sim", 1, "cancelled", Step.KEEP, None, None, 0),
        ("failed", "primary", "sim", 1, "queued", Step.KEEP, None, None, 0),
        ("timed_out", "fallback", "fb", 1, "completed", Step.KEEP, None, None, 0),
        # completed / cancelled
        ("completed", "primary", "sim", 1, "running", Step.COMPLETE, None, None, 0),
        ("completed", "fallback", "fb", 2, "leased", Step.COMPLETE, None, None, 0),
        ("completed", "primary", "sim", 1, "awaiting_approval", Step.COMPLETE, None, None, 0),
        ("cancelled", "primary", "sim", 1, "running", Step.KEEP, None, None, 0),
        # attempts left on the lane: retry there, in the same role
        ("failed", "primary", "sim", 1, "running", Step.RETRY, "sim", "primary", 2),
        ("timed_out", "primary", "sim", 2, "awaiting_approval", Step.RETRY, "sim", "primary", 3),
        ("failed", "fallback", "fb", 1, "running", Step.RETRY, "fb", "fallback", 2),
        # the lane's attempts spent: a primary moves to its configured fallback
        ("failed", "primary", "sim", 3, "running", Step.FALLBACK, "fb", "fallback", 1),
        ("timed_out", "primary", "once", 1, "leased", Step.FALLBACK, "fb", "fallback", 1),
        # nothing left: held as a dead letter
        ("failed", "fallback", "fb", 2, "running", Step.HOLD, None, None, 0),
        ("failed", "primary", "flat", 2, "running", Step.HOLD, None, None, 0),
        ("failed", "primary", "lost", 1, "running", Step.HOLD, None, None, 0),  # fallback unknown
        ("failed", "primary", "gone", 1, "running", Step.HOLD, None, None, 0),  # lane unknown
        ("failed", "fallback", "sim", 3, "running", Step.HOLD, None, None, 0),  # a fallback's lane
    ],
)
def test_after_finish(
    outcome: Finish, role: Role, lane: str, number: int, turn_state: str | None, step: Step,
    next_lane: str | None, next_role: Role | None, n: int,
) -> None:  # fmt: skip
    got = finish(outcome, role, lane, number, turn_state)
    assert (got.step, got.lane, got.role, got.number) == (step, next_lane, next_role, n)
    assert got.hold_s == (HOLD_S if step is Step.HOLD else 0.0)
    if step is not Step.RETRY:
        assert got.delay_s == 0.0


@pytest.mark.parametrize(
    ("step", "stage"),
    [
        (Step.RETRY, "retryable"),
        (Step.FALLBACK, "retryable"),
        (Step.HOLD, "held"),
        (Step.FAIL, "dead"),
        (Step.COMPLETE, None),
        (Step.REQUEUE, None),
        (Step.KEEP, None),
        (Step.RECORD, None),
    ],
)
def test_each_step_leaves_its_dead_letter_stage(step: Step, stage: str | None) -> None:
    assert Recovery(step).dead_letter == stage


def test_a_retry_waits_a_jittered_backoff_that_doubles_up_to_the_cap() -> None:
    first = [finish("failed", number=1).delay_s for _ in range(50)]
    assert all(0.0 <= d <= 1.0 for d in first)
    second = finish("failed", number=2)
    assert 0.0 <= second.delay_s <= 2.0
    assert second == finish("failed", number=2)  # the same draw from the same seed
    assert finish("failed", lane="flat").delay_s == 0.0


@pytest.mark.parametrize(
    ("why", "role", "turn_state", "step"),
    [
        (LetGo.LEASE_EXPIRED, "primary", "running", Step.REQUEUE),
        (LetGo.LEASE_EXPIRED, "fallback", "leased", Step.REQUEUE),
        (LetGo.LEASE_EXPIRED, "primary", "awaiting_approval", Step.REQUEUE),
        (LetGo.LEASE_EXPIRED, "primary", "taken_over", Step.KEEP),
        (LetGo.LEASE_EXPIRED, "primary", "queued", Step.KEEP),
        (LetGo.LEASE_EXPIRED, "primary", None, Step.KEEP),
        (LetGo.LEASE_EXPIRED, "shadow", "running", Step.RECORD),
        (LetGo.RELEASED, "primary", "running", Step.REQUEUE),
        (LetGo.RELEASED, "primary", "leased", Step.REQUEUE),
        (LetGo.RELEASED, "primary", "awaiting_approval", Step.KEEP),  # waits on a person
        (LetGo.RELEASED, "primary", "completed", Step.KEEP),
        (LetGo.RELEASED, "fallback", None, Step.KEEP),
        (LetGo.RELEASED, "shadow", "running", Step.RECORD),
    ],
)
def test_after_let_go(why: LetGo, role: Role, turn_state: str | None, step: Step) -> None:
    assert after_let_go(why, role=role, turn_state=turn_state) == Recovery(step)


@pytest.mark.parametrize(
    ("turn_state", "step"),
    [("queued", Step.FAIL), ("leased", Step.KEEP), ("completed", Step.KEEP)],
)
def test_a_hold_that_ran_out_fails_a_turn_still_queued(turn_state: str, step: Step) -> None:
    assert after_hold(turn_state) == Recovery(step)


outcomes = st.sampled_from(["completed", "failed", "timed_out", "cancelled"])
roles = st.sampled_from(["primary", "fallback", "shadow"])


@given(
    outcome=outcomes,
    role=roles,
    lane=st.sampled_from([*LANES, "gone"]),
    number=st.integers(1, 6),
    turn_state=st.one_of(st.none(), st.sampled_from(TURN_STATES)),
    seed=st.integers(0, 2**32),
)
def test_the_finish_rule_keeps_every_budget(
    outcome: Finish, role: Role, lane: str, number: int, turn_state: str | None, seed: int
) -> None:
    got = after_finish(
        outcome, role=role, lane=lane, number=number, turn_state=turn_state, lanes=LANES,
        hold_s=HOLD_S, rng=random.Random(seed),
    )  # fmt: skip
    if role == "shadow":
        assert got.step is Step.RECORD
    elif turn_state not in TURN_HOLDS_LEASE:
        assert got.step is Step.KEEP
    if got.step is Step.RETRY:
        plan = LANES[lane]
        assert outcome in ("failed", "timed_out")
        assert (got.lane, got.role, got.number) == (lane, role, number + 1)
        assert got.number <= plan.max_attempts
        ceiling = min(plan.backoff_max_s, plan.backoff_initial_s * 2 ** (number - 1))
        assert 0.0 <= got.delay_s <= ceiling
    if got.step is Step.FALLBACK:
        plan = LANES[lane]
        assert role == "primary" and number >= plan.max_attempts
        assert (got.lane, got.role, got.number) == (plan.fallback, "fallback", 1)
        assert got.lane in LANES
    if got.step in (Step.RETRY, Step.FALLBACK, Step.HOLD):
        assert outcome in ("failed", "timed_out") and got.dead_letter is not None
    else:
        assert got.lane is None and got.dead_letter is None


@given(role=roles, turn_state=st.one_of(st.none(), st.sampled_from(TURN_STATES)))
def test_a_drain_hands_back_no_more_than_an_expired_lease(
    role: Role, turn_state: str | None
) -> None:
    drained = after_let_go(LetGo.RELEASED, role=role, turn_state=turn_state)
    expired = after_let_go(LetGo.LEASE_EXPIRED, role=role, turn_state=turn_state)
    if drained.step is Step.REQUEUE:
        assert expired.step is Step.REQUEUE
    assert drained.step in (Step.REQUEUE, Step.KEEP, Step.RECORD)
    if expired.step is Step.REQUEUE:  # the turn may go back to the queue from where it is
        assert MACHINES[Kind.TURN].allows(str(turn_state), "queued")
