"""The state machines, as data: one transition table per kind of item, and the named groups
of states (an open approval, a mission that holds a lease, ...) checked against the tables.

Every change of state anywhere goes through :func:`check_transition`; the store's mover
(``store/transitions.move``) calls it before it writes anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final


class Kind(StrEnum):
    """The kinds of item that have a state machine."""

    TURN = "turn"
    MISSION = "mission"
    SESSION = "session"
    APPROVAL = "approval"
    ALERT = "alert"


@dataclass(frozen=True, slots=True)
class Machine:
    """One state machine: its states, where new items start, and the allowed moves."""

    kind: Kind
    initial: str
    transitions: Mapping[str, frozenset[str]]
    leased: bool
    """Whether items of this kind are leased, so writes are fenced by ``attempt`` too."""

    @property
    def states(self) -> tuple[str, ...]:
        """Every state, in table order."""
        return tuple(self.transitions)

    @property
    def terminal(self) -> frozenset[str]:
        """States with no way out."""
        return frozenset(s for s, targets in self.transitions.items() if not targets)

    def allows(self, from_state: str, to_state: str) -> bool:
        """Whether the table has the move ``from_state -> to_state``."""
        return to_state in self.transitions.get(from_state, frozenset())


def _table(rows: Mapping[str, str]) -> dict[str, frozenset[str]]:
    return {state: frozenset(targets.split()) for state, targets in rows.items()}


_TURN_LIVE_EXITS = "escalated taken_over cancelled"

MACHINES: Final[Mapping[Kind, Machine]] = {
    Kind.TURN: Machine(
        Kind.TURN,
        initial="queued",
        leased=True,
        transitions=_table(
            {
                "queued": f"leased awaiting_approval failed {_TURN_LIVE_EXITS}",
                "leased": f"running queued failed timed_out {_TURN_LIVE_EXITS}",
                "running": f"awaiting_approval queued completed failed timed_out {_TURN_LIVE_EXITS}",
                "awaiting_approval": f"running queued failed timed_out {_TURN_LIVE_EXITS}",
                "escalated": "running awaiting_approval queued failed timed_out taken_over cancelled",
                "taken_over": "queued running completed cancelled",
                "completed": "",
                "failed": "",
                "cancelled": "",
                "timed_out": "",
            }
        ),
    ),
    Kind.MISSION: Machine(
        Kind.MISSION,
        initial="queued",
        leased=True,
        transitions=_table(
            {
                "queued": "running cancelled failed",
                "running": "blocked queued completed failed cancelled timed_out",
                "blocked": "running queued failed cancelled timed_out",
                "completed": "",
                "failed": "",
                "cancelled": "",
                "timed_out": "",
            }
        ),
    ),
    Kind.SESSION: Machine(
        Kind.SESSION,
        initial="idle",
        leased=True,
        transitions=_table(
            {
                "idle": "active paused degraded recovering retired",
                "active": "idle paused degraded recovering retired",
                "paused": "idle active recovering retired",
                "degraded": "idle active paused recovering retired",
                "recovering": "idle active degraded paused retired",
                "retired": "",
            }
        ),
    ),
    Kind.APPROVAL: Machine(
        Kind.APPROVAL,
        initial="pending",
        leased=False,
        transitions=_table(
            {
                "pending": "approved rejected edited escalated expired",
                "escalated": "escalated approved rejected edited expired",
                "approved": "",
                "rejected": "",
                "edited": "",
                "expired": "",
            }
        ),
    ),
    Kind.ALERT: Machine(
        Kind.ALERT,
        initial="open",
        leased=False,
        transitions=_table({"open": "acked resolved", "acked": "resolved", "resolved": ""}),
    ),
}


def _group(kind: Kind, states: frozenset[str] | str) -> tuple[str, ...]:
    """A named group of ``kind``'s states, in table order; every name must be a state."""
    names = frozenset(states.split()) if isinstance(states, str) else states
    table = MACHINES[kind]
    unknown = names - set(table.states)
    if unknown:
        raise ValueError(f"{kind}: {sorted(unknown)} are not states")
    return tuple(state for state in table.states if state in names)


def _live(kind: Kind) -> frozenset[str]:
    table = MACHINES[kind]
    return frozenset(table.states) - table.terminal


# Named state groups: where code asks "is it open?", "does it hold a lease?", it asks these.
# Each is checked against (or derived from) the tables above when this module loads.

TURN_LIVE: Final = _group(Kind.TURN, _live(Kind.TURN) - {"taken_over"})
"""A turn still with its agent or waiting for one: a person may take it over."""
TURN_HOLDS_LEASE: Final = _group(Kind.TURN, "leased running awaiting_approval")
"""A turn whose mission's worker holds it (its lease columns stay set)."""
TURN_WORKING: Final = _group(Kind.TURN, "leased running")
"""A turn a worker is running and not waiting on a person."""
TURN_NO_DEAD_LETTER: Final = _group(Kind.TURN, "completed cancelled")
"""Ends that clear a turn's dead-letter stage."""

MISSION_LIVE: Final = _group(Kind.MISSION, _live(Kind.MISSION))
"""A mission not finished: queued, or held by a worker."""
MISSION_HOLDS_LEASE: Final = _group(Kind.MISSION, "running blocked")
"""A mission a worker holds under a lease (blocked: waiting on an approval)."""
MISSION_SELF_FINISHED: Final = _group(Kind.MISSION, "completed failed timed_out")
"""The ends a mission reaches only by its own worker's finish (a take-over cancels it)."""
MISSION_FAILED: Final = _group(Kind.MISSION, "failed timed_out")
"""The ends that count as a failure in the SLO figures."""

APPROVAL_OPEN: Final = _group(Kind.APPROVAL, _live(Kind.APPROVAL))
"""An approval still waiting for a decision."""
APPROVAL_DECIDED: Final = _group(Kind.APPROVAL, MACHINES[Kind.APPROVAL].terminal)
"""An approval decided (by a person, or by its deadline)."""
APPROVAL_ALLOWED: Final = _group(Kind.APPROVAL, "approved edited")
"""A decision that lets the action run (with edited arguments for ``edited``)."""
APPROVAL_REFUSED: Final = _group(Kind.APPROVAL, "rejected expired")
"""A decision that refuses the action."""

SESSION_HELD: Final = _group(Kind.SESSION, "active paused degraded")
"""A session its holder keeps (the sweep marks it ``recovering`` when the lease runs out)."""

ALERT_UNRESOLVED: Final = _group(Kind.ALERT, _live(Kind.ALERT))
"""An alert still open or acknowledged."""


def _check_groups() -> None:
    assert set(APPROVAL_ALLOWED) | set(APPROVAL_REFUSED) == set(APPROVAL_DECIDED)
    assert set(TURN_WORKING) <= set(TURN_HOLDS_LEASE) <= set(TURN_LIVE)
    assert set(MISSION_HOLDS_LEASE) <= set(MISSION_LIVE)
    terminal = MACHINES[Kind.MISSION].terminal
    assert set(MISSION_SELF_FINISHED) <= terminal and set(TURN_NO_DEAD_LETTER) <= (
        MACHINES[Kind.TURN].terminal
    )
    assert all(MACHINES[Kind.TURN].allows(state, "taken_over") for state in TURN_LIVE)


_check_groups()


class TransitionError(Exception):
    """Base of the typed errors a transition request can end in."""


class IllegalTransition(TransitionError):
    """The table has no such move; nothing was changed."""

    def __init__(self, kind: Kind, from_state: str, to_state: str) -> None:
        super().__init__(f"{kind}: illegal transition {from_state} -> {to_state}")
        self.kind = kind
        self.from_state = from_state
        self.to_state = to_state


class UnknownState(TransitionError):
    """The requested state is not a state of this machine; nothing was changed."""

    def __init__(self, kind: Kind, state: str) -> None:
        super().__init__(f"{kind}: unknown state {state!r}")
        self.kind = kind
        self.state = state


def machine(kind: Kind | str) -> Machine:
    """Return the machine for ``kind``.

    Raises:
        ValueError: no machine has that name.
    """
    return MACHINES[Kind(kind)]


def check_transition(kind: Kind, from_state: str, to_state: str) -> None:
    """Check ``from_state -> to_state`` against the kind's table.

    Raises:
        UnknownState: ``to_state`` is not a state of the machine.
        IllegalTransition: the table has no such move.
    """
    table = MACHINES[kind]
    if to_state not in table.transitions:
        raise UnknownState(kind, to_state)
    if not table.allows(from_state, to_state):
        raise IllegalTransition(kind, from_state, to_state)


class ItemNotFound(TransitionError):
    """No item of this kind has that id in that workspace; nothing was changed."""

    def __init__(self, kind: Kind, item_id: str) -> None:
        super().__init__(f"{kind} {item_id} not found")
        self.kind = kind
        self.item_id = item_id


class NoDecision(TransitionError):
    """A mission may start (``queued -> running``) only under a persisted decision that allows
    its dispatch; none was given. Nothing was changed."""

    def __init__(self, item_id: str) -> None:
        super().__init__(f"mission {item_id}: no dispatch without an allowing decision")
        self.item_id = item_id


class StaleWrite(TransitionError):
    """Compare-and-set lost: the item's version (or lease attempt) moved on; nothing was changed."""

    def __init__(
        self,
        kind: Kind,
        item_id: str,
        expected: tuple[int, int | None],
        actual: tuple[int, int],
    ) -> None:
        super().__init__(
            f"{kind} {item_id}: stale write (expected version {expected[0]}"
            + (f", attempt {expected[1]}" if expected[1] is not None else "")
            + f"; found version {actual[0]}, attempt {actual[1]})"
        )
        self.kind = kind
        self.item_id = item_id
        self.expected = expected
        self.actual = actual
