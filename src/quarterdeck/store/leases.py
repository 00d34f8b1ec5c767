"""Leases of claimed missions: heartbeats, late writes refused and recorded, missions handed
back on a drain, and the sweep that reclaims expired leases and buries held turns whose hold
ran out. Runs inside the writer's transaction."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import text

from quarterdeck.domain.clock import format_instant
from quarterdeck.domain.recovery import LetGo, Role, Step, after_hold, after_let_go
from quarterdeck.domain.states import MISSION_HOLDS_LEASE, MISSION_SELF_FINISHED, Kind
from quarterdeck.store.alerts import open_alert
from quarterdeck.store.flags import bump_counter
from quarterdeck.store.plan import Claim
from quarterdeck.store.recovery import apply_recovery, turn_at
from quarterdeck.store.sql import Statement, in_list
from quarterdeck.store.transitions import append_entry, move
from quarterdeck.store.writer import WriteTxn

_HEARTBEAT = text(
    "UPDATE missions SET lease_expires_at = :expires WHERE id = :id AND attempt = :attempt "
    f"AND lease_owner = :owner AND state IN {in_list(MISSION_HOLDS_LEASE)}"
)
"""Fenced by the lease (attempt and owner) and the live states: a heartbeat changes no state,
so it does not compare the version, which moves when a mission blocks on an approval."""


def heartbeat(txn: WriteTxn, claims: Sequence[Claim], lease_s: float) -> list[Claim]:
    """Extend the leases of held missions; return the claims whose lease was lost (recorded).

    A heartbeat that finds its mission already finished at the same attempt (the worker's own
    finish committed first) is not a lost lease and records nothing.
    """
    if not claims:
        return []
    expires = format_instant(txn.now + timedelta(seconds=lease_s))
    lost = []
    for claim in claims:
        changed = txn.conn.execute(
            _HEARTBEAT,
            {
                "expires": expires,
                "id": claim.mission_id,
                "attempt": claim.attempt,
                "owner": claim.owner,
            },
        ).rowcount
        if changed == 1:
            continue
        row = txn.conn.execute(
            text("SELECT state, attempt FROM missions WHERE id = :id"), {"id": claim.mission_id}
        ).first()
        if row is not None and row.attempt == claim.attempt and row.state in MISSION_SELF_FINISHED:
            continue
        lost.append(claim)
        record_late_write(txn, claim, "heartbeat")
    return lost


def record_late_write(txn: WriteTxn, claim: Claim, what: str) -> None:
    bump_counter(txn, "late_writes_rejected")
    append_entry(
        txn,
        claim.workspace,
        claim.owner,
        "mission.late_write_rejected",
        "mission",
        claim.mission_id,
        None,
        None,
        {"write": what, "attempt": claim.attempt, "version": claim.version, "owner": claim.owner},
    )
    open_alert(
        txn, (), workspace=claim.workspace, alert_type="out_of_sequence", severity="warn",
        subject_type="mission", subject_id=claim.mission_id,
        dedupe=f"sequence:{claim.mission_id}",
        message=f"late {what} from {claim.owner} (attempt {claim.attempt}) was refused",
        data={"write": what, "attempt": claim.attempt, "owner": claim.owner},
        actor=claim.owner,
    )  # fmt: skip


def release_missions(txn: WriteTxn, claims: Sequence[Claim], actor: str) -> None:
    """Hand claimed missions back (a drain): lease cleared, mission and turn queued again,
    fenced like every write for claimed work."""
    for claim in claims:
        released = move(
            txn, Kind.MISSION, claim.mission_id, "running", "queued", workspace=claim.workspace,
            actor=actor, version=claim.version, lease=(claim.attempt, claim.owner),
            columns=_LEASE_CLEARED, payload={"attempt": claim.attempt, "reason": "drain"},
            action="mission.released",
        )  # fmt: skip
        if released is None:
            continue
        _hand_back(
            txn, LetGo.RELEASED, claim.role, claim.workspace, claim.turn_id, actor,
            {"reason": "drain"},
        )  # fmt: skip


_LEASE_CLEARED: Mapping[str, Any] = {"lease_owner": None, "lease_expires_at": None}


def _hand_back(
    txn: WriteTxn, why: LetGo, role: Role, workspace: str, turn_id: str, actor: str,
    note: Mapping[str, Any],
) -> None:  # fmt: skip
    """After a mission's lease was let go (the mission queued again): its turn too, as
    :func:`~quarterdeck.domain.recovery.after_let_go` says; ``note`` goes into the entry."""
    turn = turn_at(txn, turn_id)
    recovery = after_let_go(why, role=role, turn_state=None if turn is None else turn.state)
    if recovery.step is Step.REQUEUE:
        apply_recovery(
            txn, recovery, workspace=workspace, turn_id=turn_id, state=turn.state,
            version=turn.version, actor=actor, note=note,
        )  # fmt: skip


_EXPIRED_SQL = (
    "SELECT m.id, m.workspace, m.state, m.version, m.attempt, m.lease_owner, m.turn_id, "
    f"m.role FROM missions m WHERE m.state IN {in_list(MISSION_HOLDS_LEASE)} "
    "AND m.lease_expires_at < :now ORDER BY m.lease_expires_at LIMIT :limit"
)
_EXPIRED = Statement(text(_EXPIRED_SQL), text(_EXPIRED_SQL + " FOR UPDATE SKIP LOCKED"))
"""Missions whose lease expired; on PostgreSQL those another sweep holds are passed over."""


@dataclass(frozen=True, slots=True)
class Swept:
    """What one sweep did."""

    reclaimed: int
    dead: int


def sweep(txn: WriteTxn, actor: str, limit: int = 500) -> Swept:
    """Hand back missions whose lease expired (``running -> queued``, turn back to ``queued``)
    and bury held turns whose hold ran out (``held -> dead``, turn ``queued -> failed``)."""
    expired = txn.conn.execute(_EXPIRED.on(txn.conn), {"now": txn.at, "limit": limit}).all()
    reclaimed = 0
    for row in expired:
        moved = move(
            txn, Kind.MISSION, row.id, row.state, "queued", workspace=row.workspace, actor=actor,
            version=row.version, columns=_LEASE_CLEARED,
            payload={"attempt": row.attempt, "previous_owner": row.lease_owner},
            action="mission.lease_expired",
        )  # fmt: skip
        if moved is None:
            continue  # another writer moved it since it was read: nothing to reclaim
        reclaimed += 1
        _hand_back(
            txn, LetGo.LEASE_EXPIRED, row.role, row.workspace, row.turn_id, actor,
            {"recovered_mission": row.id},
        )  # fmt: skip
    held = txn.conn.execute(
        text(
            "SELECT id, workspace, state, version, error FROM turns WHERE dead_letter = 'held' "
            "AND held_until < :now LIMIT :limit"
        ),
        {"now": txn.at, "limit": limit},
    ).all()
    dead = 0
    for row in held:
        buried = apply_recovery(
            txn, after_hold(row.state), workspace=row.workspace, turn_id=row.id,
            state=row.state, version=row.version, actor=actor,
            error=row.error or "dead-lettered",
        )  # fmt: skip
        if buried.moved:
            dead += 1
    if reclaimed:
        bump_counter(txn, "leases_reclaimed", reclaimed)
    if dead:
        bump_counter(txn, "dead_letters_dead", dead)
    return Swept(reclaimed=reclaimed, dead=dead)
