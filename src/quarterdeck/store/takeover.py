"""A person takes over a turn: the agent's lease is revoked (its mission cancelled, so every
later write of the agent is fenced off), the person holds the turn, and either writes the
deliverable that completes it or releases it back to its lane. Or a person cancels a turn
outright, with the same revocation. Each needs ``supervisor`` in the turn's workspace; only
the person holding a turn (the authenticated principal that took it) completes or releases it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import text

from quarterdeck.domain.authority import Principal, may_supervise
from quarterdeck.domain.escalation import holder_of, holding_refusal, takeover_refusal
from quarterdeck.domain.ids import new_ids
from quarterdeck.domain.states import MISSION_LIVE, Kind, machine
from quarterdeck.store.approvals import reject_open
from quarterdeck.store.authorizing import refuse_principal
from quarterdeck.store.plan import WorkPlan
from quarterdeck.store.sql import in_list
from quarterdeck.store.transitions import (
    INSERT_MISSION,
    mission_row,
    move_mission,
    move_turn,
    refuse,
)
from quarterdeck.store.writer import WriteTxn


def _turn(txn: WriteTxn, workspace: str, turn_id: str) -> Any:
    return txn.conn.execute(
        text(
            "SELECT state, version, lane, lease_owner FROM turns WHERE id = :id AND workspace = :w"
        ),
        {"id": turn_id, "w": workspace},
    ).first()


def _refused(
    txn: WriteTxn, plan: WorkPlan, workspace: str, turn_id: str, who: Principal, command: str
) -> dict[str, Any] | None:
    """The refusal, recorded, when ``who`` may not supervise the workspace (None: they may)."""
    refusal = may_supervise(plan.roster, who, workspace)
    if refusal is None:
        return None
    return refuse_principal(txn, workspace, who, command, "turn", turn_id, refusal)


def take_over(
    txn: WriteTxn, plan: WorkPlan, workspace: str, turn_id: str, who: Principal
) -> dict[str, Any]:
    """Take a live turn from its agent: cancel its live missions (fenced), reject its open
    approvals (``taken_over``), and hold the turn as ``human:<principal>``."""
    actor = who.label
    refused = _refused(txn, plan, workspace, turn_id, who, "turn.takeover")
    if refused is not None:
        return refused
    turn = _turn(txn, workspace, turn_id)
    reason = takeover_refusal(None if turn is None else turn.state)
    if reason is not None:
        return refuse(
            txn, workspace, actor, "turn", turn_id, {"command": "turn.takeover", "errors": [reason]}
        )
    missions = _cancel_live_missions(txn, workspace, turn_id, actor)
    move_turn(
        txn, workspace, turn_id, turn.state, "taken_over", turn.version, actor,
        extra={"holder": holder_of(actor), "revoked": [m.lease_owner for m in missions
                                                       if m.lease_owner]},
    )  # fmt: skip
    # After the turn is held: rejecting a dispatch approval must not fail the turn.
    rejected = reject_open(txn, plan, turn_id, actor, "taken_over")
    txn.conn.execute(
        text("UPDATE turns SET lease_owner = :who, lease_expires_at = NULL WHERE id = :id"),
        {"who": holder_of(actor), "id": turn_id},
    )
    return {
        "ok": True,
        "command": "turn.takeover",
        "turn": turn_id,
        "holder": holder_of(actor),
        "cancelled_missions": [m.id for m in missions],
        "rejected_approvals": rejected,
    }


def _cancel_live_missions(txn: WriteTxn, workspace: str, turn_id: str, actor: str) -> Sequence[Any]:
    """Cancel the turn's live missions (their version moves: a running agent's later writes are
    fenced off, and its node stops it); returns those cancelled, as they were."""
    missions = txn.conn.execute(
        text(
            "SELECT id, state, version, lease_owner FROM missions WHERE turn_id = :t "
            f"AND state IN {in_list(MISSION_LIVE)}"
        ),
        {"t": turn_id},
    ).all()
    return [
        mission
        for mission in missions
        if move_mission(
            txn, workspace, mission.id, mission.state, "cancelled", mission.version, actor
        )
    ]


def _held(txn: WriteTxn, workspace: str, turn_id: str, actor: str) -> tuple[Any, str | None]:
    """The turn ``actor`` holds, or why they do not hold it."""
    turn = _turn(txn, workspace, turn_id)
    if turn is None:
        return None, holding_refusal(None, None, actor)
    return turn, holding_refusal(turn.state, turn.lease_owner, actor)


def release_turn(
    txn: WriteTxn, plan: WorkPlan, workspace: str, turn_id: str, who: Principal
) -> dict[str, Any]:
    """Hand a taken-over turn back to its lane: queued again with a fresh mission (only its
    holder)."""
    actor = who.label
    refused = _refused(txn, plan, workspace, turn_id, who, "turn.release")
    if refused is not None:
        return refused
    turn, error = _held(txn, workspace, turn_id, actor)
    if error is not None:
        return refuse(
            txn, workspace, actor, "turn", turn_id, {"command": "turn.release", "errors": [error]}
        )
    move_turn(txn, workspace, turn_id, "taken_over", "queued", turn.version, actor)
    row = mission_row(txn, new_ids(1)[0], workspace, turn_id, turn.lane, "primary", 1)
    txn.conn.execute(INSERT_MISSION.each, row)
    return {"ok": True, "command": "turn.release", "turn": turn_id, "mission": row["id"]}


def complete_turn(
    txn: WriteTxn,
    plan: WorkPlan,
    workspace: str,
    turn_id: str,
    deliverable: Mapping[str, Any],
    who: Principal,
) -> dict[str, Any]:
    """Complete a taken-over turn with the person's deliverable (the only one it gets; only
    its holder)."""
    actor = who.label
    refused = _refused(txn, plan, workspace, turn_id, who, "turn.complete")
    if refused is not None:
        return refused
    turn, error = _held(txn, workspace, turn_id, actor)
    if error is not None:
        return refuse(
            txn, workspace, actor, "turn", turn_id, {"command": "turn.complete", "errors": [error]}
        )
    move_turn(
        txn, workspace, turn_id, "taken_over", "completed", turn.version, actor,
        deliverable={**dict(deliverable), "completed_by": actor},
        extra={"by": holder_of(actor)},
    )  # fmt: skip
    return {"ok": True, "command": "turn.complete", "turn": turn_id}


def cancel_turn(
    txn: WriteTxn, plan: WorkPlan, workspace: str, turn_id: str, who: Principal
) -> dict[str, Any]:
    """Cancel a turn that has not finished: its live missions are cancelled (a running agent is
    fenced off and stopped) and its open approvals rejected (``cancelled``), so nothing waits on
    a person for a turn that is over."""
    actor = who.label
    refused = _refused(txn, plan, workspace, turn_id, who, "turn.cancel")
    if refused is not None:
        return refused
    turn = _turn(txn, workspace, turn_id)
    if turn is None or not machine(Kind.TURN).allows(turn.state, "cancelled"):
        reason = "no such turn" if turn is None else f"turn is already {turn.state}"
        return refuse(
            txn, workspace, actor, "turn", turn_id, {"command": "turn.cancel", "errors": [reason]}
        )
    move_turn(
        txn, workspace, turn_id, turn.state, "cancelled", turn.version, actor,
        deliverable={"cancelled_by": actor},
    )  # fmt: skip
    _cancel_live_missions(txn, workspace, turn_id, actor)
    rejected = reject_open(txn, plan, turn_id, actor, "cancelled")
    return {"ok": True, "command": "turn.cancel", "turn": turn_id, "rejected_approvals": rejected}
