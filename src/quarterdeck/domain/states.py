"""The state machines, as data: one transition table per kind of item.

Every change of state anywhere goes through :func:`check_transition`; the store's
one transition function calls it before it writes anything.
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
