"""Applying a recovery rule's answer (:mod:`quarterdeck.domain.recovery`) to a turn: completed,
back to the queue (retried, on the fallback, held as a dead letter, handed back), or failed when
its hold ran out; each through the one mover, and a retry's new mission created beside it.
Runs inside the writer's transaction."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text

from quarterdeck.domain.clock import later
from quarterdeck.domain.ids import new_ids
from quarterdeck.domain.recovery import Recovery, Step
from quarterdeck.store.transitions import INSERT_MISSION, mission_row, move_turn
from quarterdeck.store.writer import WriteTxn

_TURN = text("SELECT state, version FROM turns WHERE id = :id")


def turn_at(txn: WriteTxn, turn_id: str) -> Any:
    """The turn's state and version as they are now (None: no such turn)."""
    return txn.conn.execute(_TURN, {"id": turn_id}).first()


@dataclass(frozen=True, slots=True)
class Recovered:
    """What applying a recovery did."""

    moved: bool
    """Whether the turn moved (False: the step leaves it, or another writer moved it first)."""
    mission_id: str | None = None
    """RETRY, FALLBACK: the new mission."""


def apply_recovery(
    txn: WriteTxn,
    recovery: Recovery,
    *,
    workspace: str,
    turn_id: str,
    state: str,
    version: int,
    actor: str,
    error: str | None = None,
    deliverable: Mapping[str, Any] | None = None,
    note: Mapping[str, Any] | None = None,
) -> Recovered:
    """Move the turn (read at ``state`` and ``version``) as ``recovery`` says.

    ``error`` is why the mission failed (recorded on a retry or a hold, and the dead turn's
    deliverable error on a fail); ``deliverable`` is a completion's; ``note`` is the ledger
    payload of a completion or a hand-back. A retry's new mission is queued even when the turn
    moved meanwhile (as a retry always has been).
    """
    step, stage = recovery.step, recovery.dead_letter
    if step is Step.COMPLETE:
        moved = move_turn(
            txn, workspace, turn_id, state, "completed", version, actor,
            deliverable=dict(deliverable or {}), extra=note,
        )  # fmt: skip
    elif step is Step.REQUEUE:
        moved = move_turn(txn, workspace, turn_id, state, "queued", version, actor, extra=note)
    elif step is Step.FAIL:
        moved = move_turn(
            txn, workspace, turn_id, state, "failed", version, actor,
            deliverable={"error": error, "dead_letter": stage}, extra={"dead_letter": stage},
            dead_letter=stage,
        )  # fmt: skip
    elif step is Step.HOLD:
        held_until = later(txn.now, recovery.hold_s)
        moved = move_turn(
            txn, workspace, turn_id, state, "queued", version, actor, error=error,
            extra={"dead_letter": stage, "held_until": held_until, "error": error},
            dead_letter=stage, held_until=held_until,
        )  # fmt: skip
    elif step in (Step.RETRY, Step.FALLBACK):
        assert recovery.lane is not None and recovery.role is not None
        not_before = later(txn.now, recovery.delay_s) if recovery.delay_s else None
        moved = move_turn(
            txn, workspace, turn_id, state, "queued", version, actor, error=error,
            extra={"dead_letter": stage, "retry_lane": recovery.lane, "not_before": not_before,
                   "error": error},
            dead_letter=stage,
        )  # fmt: skip
        mission_id = new_ids(1)[0]
        txn.conn.execute(
            INSERT_MISSION.each,
            mission_row(
                txn, mission_id, workspace, turn_id, recovery.lane, recovery.role,
                recovery.number, not_before,
            ),
        )  # fmt: skip
        return Recovered(moved, mission_id)
    else:
        moved = False
    return Recovered(moved)
