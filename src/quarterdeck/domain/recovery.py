"""What happens to a turn when its mission ends or its worker lets go of it: completed, retried
on its lane after a backoff, routed to the lane's fallback, held as a dead letter, handed back
to the queue, failed when its hold runs out, or left as it is. Pure rules: the store reads the
rows, asks these, and applies the answer (``store/recovery.py``)."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, Protocol

from quarterdeck.domain.states import TURN_HOLDS_LEASE, TURN_WORKING
from quarterdeck.domain.tasks import backoff_delay

Role = Literal["primary", "fallback", "shadow"]
"""What a mission is to its turn: its own run, a run on the lane's fallback, or a shadow run
whose result is only recorded."""


Finish = Literal["completed", "failed", "timed_out", "cancelled"]
"""How a worker reports its mission ended."""


class LetGo(StrEnum):
    """Why a mission's lease was let go before the mission ended."""

    LEASE_EXPIRED = "lease_expired"
    """Its worker stopped renewing the lease; the sweep hands the mission back."""
    RELEASED = "released"
    """Its worker handed the mission back (a drain)."""


class Step(StrEnum):
    """What the turn does next."""

    COMPLETE = "complete"
    """The turn is completed with the mission's result."""
    RETRY = "retry"
    """The turn is queued again with a new mission on the same lane, after a backoff."""
    FALLBACK = "fallback"
    """The turn is queued again with a new mission on the lane's fallback."""
    HOLD = "hold"
    """Every budget is spent: the turn is queued but held (a dead letter) until a person
    requeues it or the hold runs out."""
    REQUEUE = "requeue"
    """The turn goes back to the queue with the same mission (the lease was let go)."""
    FAIL = "fail"
    """A held turn's hold ran out: the turn fails (the dead letter is dead)."""
    KEEP = "keep"
    """The turn is left as it is (it moved on meanwhile, or the mission was cancelled)."""
    RECORD = "record"
    """A shadow run: only its own result is recorded; its turn is not its concern."""


DEAD_LETTER: Mapping[Step, str] = {
    Step.RETRY: "retryable",
    Step.FALLBACK: "retryable",
    Step.HOLD: "held",
    Step.FAIL: "dead",
}
"""The dead-letter stage a turn is left in by each step that sets one."""


@dataclass(frozen=True, slots=True)
class Recovery:
    """The rule's answer: the step, and for a new mission its lane, role, number and delay."""

    step: Step
    lane: str | None = None
    """RETRY, FALLBACK: the lane of the new mission."""
    role: Role | None = None
    number: int = 0
    """RETRY, FALLBACK: the new mission's number on its lane (1 for a first run there)."""
    delay_s: float = 0.0
    """RETRY: how long the new mission waits before it may be claimed."""
    hold_s: float = 0.0
    """HOLD: how long the dead letter is held before it fails."""

    @property
    def dead_letter(self) -> str | None:
        """The dead-letter stage this step leaves the turn in (None: unchanged or cleared)."""
        return DEAD_LETTER.get(self.step)


class LaneRetries(Protocol):
    """What the rule needs to know of a lane (the store's lane plan has it)."""

    @property
    def fallback(self) -> str | None: ...
    @property
    def max_attempts(self) -> int: ...
    @property
    def backoff_initial_s(self) -> float: ...
    @property
    def backoff_max_s(self) -> float: ...


def after_finish(
    outcome: Finish,
    *,
    role: Role,
    lane: str,
    number: int,
    turn_state: str | None,
    lanes: Mapping[str, LaneRetries],
    hold_s: float,
    rng: random.Random | None = None,
) -> Recovery:
    """What the turn does after its worker finished its mission (``number`` on ``lane``, in
    ``role``) with ``outcome``; ``turn_state`` is the turn's state (None: no such turn).

    A shadow run never touches its turn, and a turn that no longer holds a lease (it moved on)
    is left as it is. A completed mission completes the turn; a cancelled one leaves it. A
    failure (``failed``, ``timed_out``) retries on the same lane while the lane has attempts
    left (exponential backoff with full jitter, drawn from ``rng``), then moves a primary
    mission's turn to the lane's fallback when that lane is configured, and otherwise holds
    the turn as a dead letter for ``hold_s``.
    """
    if role == "shadow":
        return Recovery(Step.RECORD)
    if turn_state not in TURN_HOLDS_LEASE:
        return Recovery(Step.KEEP)
    if outcome == "completed":
        return Recovery(Step.COMPLETE)
    if outcome == "cancelled":
        return Recovery(Step.KEEP)
    plan = lanes.get(lane)
    if plan is not None and number < plan.max_attempts:
        delay = backoff_delay(number, plan.backoff_initial_s, plan.backoff_max_s, rng)
        return Recovery(Step.RETRY, lane, role, number + 1, delay_s=delay)
    if plan is not None and plan.fallback and role == "primary" and plan.fallback in lanes:
        return Recovery(Step.FALLBACK, plan.fallback, "fallback", 1)
    return Recovery(Step.HOLD, hold_s=hold_s)


def after_let_go(why: LetGo, *, role: Role, turn_state: str | None) -> Recovery:
    """What the turn does when its mission's lease was let go (the mission itself is queued
    again): it goes back to the queue while it still waits on that mission (it holds a lease;
    for a drain, it is being worked, not waiting on a person), else it is left as it is. A
    shadow run never touches its turn."""
    if role == "shadow":
        return Recovery(Step.RECORD)
    live = TURN_WORKING if why is LetGo.RELEASED else TURN_HOLDS_LEASE
    return Recovery(Step.REQUEUE if turn_state in live else Step.KEEP)


def after_hold(turn_state: str) -> Recovery:
    """What a held turn whose hold ran out does: fail, unless it left the queue meanwhile."""
    return Recovery(Step.FAIL if turn_state == "queued" else Step.KEEP)
