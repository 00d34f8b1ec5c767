"""Who answers for work a person must look at, and what silence does: an approval's rungs on
its escalation ladder, what an approval does when its deadline passes (escalate, or expire into
its default-safe action), and who holds a turn a person took over. Pure rules; the store
(``store/approvals``, ``store/takeover.py``) reads the rows, asks these, and writes."""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from quarterdeck.domain.policy import DEFAULT_APPROVER, DEFAULT_DEADLINE_S, OnExpiry
from quarterdeck.domain.states import TURN_LIVE


@dataclass(frozen=True, slots=True)
class Rung:
    """One step on an approval's ladder: who answers at which level, and how long they have."""

    level: int
    approver: str
    deadline_s: int


def first_rung(approver: str | None, deadline_s: int | None) -> Rung:
    """Where a new approval starts: level 0 with the rule's approver and deadline (or the
    defaults)."""
    return Rung(0, approver or DEFAULT_APPROVER, int(deadline_s or DEFAULT_DEADLINE_S))


def next_rung(
    ladder: Sequence[str], level: int | None, approver: str, deadline_s: int | None
) -> Rung:
    """One level up: the ladder's next role takes the approval with a fresh deadline of the same
    length; past the ladder's end the approver stays (a person may still escalate by hand)."""
    up = (level or 0) + 1
    return Rung(
        up, ladder[up - 1] if up - 1 < len(ladder) else approver, deadline_s or DEFAULT_DEADLINE_S
    )


def at_deadline(
    ladder: Sequence[str], level: int | None, approver: str, deadline_s: int | None
) -> Rung | None:
    """What an open approval whose deadline passed does: climb to the ladder's next rung, or
    (None) expire once the ladder is spent."""
    if (level or 0) < len(ladder):
        return next_rung(ladder, level, approver, deadline_s)
    return None


LANE_FLAGS: Final[Mapping[str, str]] = {
    OnExpiry.PAUSE_LANE: "paused",
    OnExpiry.FALLBACK: "force_fallback",
}
"""The lane flag each lane action of an expired approval sets."""


@dataclass(frozen=True, slots=True)
class Expiry:
    """What an approval that expired unanswered does besides being refused."""

    on_expiry: str
    """The rule's action: ``reject``, ``pause_lane`` or ``fallback``."""
    flag: str | None = None
    """The lane flag to set (``paused``, ``force_fallback``); None: the action is only the
    rejection, or it cannot be applied."""
    unapplied: str | None = None
    """Why the lane action cannot be applied (then the approval is only rejected)."""


def expiry(
    on_expiry: str, lane: str | None, lanes: Container[str], *, default_lane: str | None = None
) -> Expiry:
    """The default-safe action of an expired approval on ``lane``: a lane action (pause the lane,
    force its fallback) applies to a lane configured here (in ``lanes``); otherwise it is not
    applied and the approval is only rejected. ``default_lane`` is the lane a request was put
    on when it named none: a lane action on it names no lane either."""
    flag = LANE_FLAGS.get(on_expiry)
    if flag is None:
        return Expiry(on_expiry)
    if lane and lane in lanes:
        return Expiry(on_expiry, flag=flag)
    if not lane or lane == default_lane:
        return Expiry(on_expiry, unapplied="the request named no lane (the SDK's lane= names one)")
    return Expiry(on_expiry, unapplied=f"lane {lane!r} is not configured on this runtime")


def snoozed_deadline(deadline_at: str | None, until: str) -> str:
    """An approval snoozed ``until`` then: its deadline moves to at least the end of the snooze,
    so the ladder does not run while it sleeps (fixed-width UTC instants compare as text)."""
    return max(deadline_at or until, until)


HUMAN: Final = "human:"
"""The prefix of the lease owner of a turn a person holds."""


def holder_of(actor: str) -> str:
    """The lease owner recorded for a person holding a turn."""
    return f"{HUMAN}{actor}"


def takeover_refusal(state: str | None) -> str | None:
    """Why a turn in ``state`` (None: no such turn) cannot be taken over; None: it can (it is
    still with its agent or waiting for one)."""
    if state is None:
        return "no such turn"
    return None if state in TURN_LIVE else f"turn is {state}"


def holding_refusal(state: str | None, lease_owner: str | None, actor: str) -> str | None:
    """Why ``actor`` may not complete or release a turn in ``state`` held by ``lease_owner``
    (None: no such turn); None: they hold it."""
    if state is None:
        return "no such turn"
    if state != "taken_over":
        return f"turn is {state}, not taken over"
    if lease_owner != holder_of(actor):
        return f"turn is held by {lease_owner}"
    return None
