"""Leases of claimed missions: heartbeats, late writes refused and recorded, missions handed
back on a drain, and the sweep that reclaims expired leases and buries held turns whose hold
ran out. Runs inside the writer's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import text

from quarterdeck.domain.clock import format_instant
from quarterdeck.domain.states import Kind, check_transition
from quarterdeck.store.alerts import open_alert
from quarterdeck.store.flags import bump_counter
from quarterdeck.store.plan import SELF_FINISHED_STATES, Claim
from quarterdeck.store.transitions import append_entry, move_turn
from quarterdeck.store.writer import WriteTxn

_HEARTBEAT = text(
    "UPDATE missions SET lease_expires_at = :expires WHERE id = :id AND attempt = :attempt "
    "AND lease_owner = :owner AND state IN ('running', 'blocked')"
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
        if row is not None and row.attempt == claim.attempt and row.state in SELF_FINISHED_STATES:
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
        changed = txn.conn.execute(
            text(
                "UPDATE missions SET state = 'queued', version = version + 1, "
                "lease_owner = NULL, lease_expires_at = NULL, updated_at = :at "
                "WHERE id = :id AND attempt = :attempt AND version = :version "
                "AND lease_owner = :owner AND state IN ('running', 'blocked')"
            ),
            {
                "at": txn.at,
                "id": claim.mission_id,
                "attempt": claim.attempt,
                "version": claim.version,
                "owner": claim.owner,
            },
        ).rowcount
        if changed != 1:
            continue
        append_entry(
            txn,
            claim.workspace,
            actor,
            "mission.released",
            "mission",
            claim.mission_id,
            "running",
            "queued",
            {"version": claim.version + 1, "attempt": claim.attempt, "reason": "drain"},
        )
        if claim.role == "shadow":
            continue
        turn = txn.conn.execute(
            text("SELECT state, version FROM turns WHERE id = :id"), {"id": claim.turn_id}
        ).first()
        if turn is not None and turn.state in ("leased", "running"):
            move_turn(
                txn,
                claim.workspace,
                claim.turn_id,
                turn.state,
                "queued",
                turn.version,
                actor,
                extra={"reason": "drain"},
            )


@dataclass(frozen=True, slots=True)
class Swept:
    """What one sweep did."""

    reclaimed: int
    dead: int


def sweep(txn: WriteTxn, actor: str, limit: int = 500) -> Swept:
    """Hand back missions whose lease expired (``running -> queued``, turn back to ``queued``)
    and bury held turns whose hold ran out (``held -> dead``, turn ``queued -> failed``)."""
    expired = txn.conn.execute(
        text(
            "SELECT m.id, m.workspace, m.state, m.version, m.attempt, m.lease_owner, m.turn_id, "
            "m.role FROM missions m WHERE m.state IN ('running', 'blocked') "
            "AND m.lease_expires_at < :now ORDER BY m.lease_expires_at LIMIT :limit"
            + (" FOR UPDATE SKIP LOCKED" if txn.conn.dialect.name == "postgresql" else "")
        ),
        {"now": txn.at, "limit": limit},
    ).all()
    for row in expired:
        check_transition(Kind.MISSION, row.state, "queued")
        txn.conn.execute(
            text(
                "UPDATE missions SET state = 'queued', version = version + 1, lease_owner = NULL, "
                "lease_expires_at = NULL, updated_at = :at WHERE id = :id AND version = :version"
            ),
            {"at": txn.at, "id": row.id, "version": row.version},
        )
        append_entry(
            txn,
            row.workspace,
            actor,
            "mission.lease_expired",
            "mission",
            row.id,
            row.state,
            "queued",
            {"version": row.version + 1, "attempt": row.attempt, "previous_owner": row.lease_owner},
        )
        if row.role == "shadow":
            continue
        turn = txn.conn.execute(
            text("SELECT state, version FROM turns WHERE id = :id"), {"id": row.turn_id}
        ).first()
        if turn is not None and turn.state in ("leased", "running", "awaiting_approval"):
            move_turn(
                txn,
                row.workspace,
                row.turn_id,
                turn.state,
                "queued",
                turn.version,
                actor,
                extra={"recovered_mission": row.id},
            )
    held = txn.conn.execute(
        text(
            "SELECT id, workspace, state, version, error FROM turns WHERE dead_letter = 'held' "
            "AND held_until < :now LIMIT :limit"
        ),
        {"now": txn.at, "limit": limit},
    ).all()
    dead = 0
    for row in held:
        if row.state != "queued":
            continue
        reason = row.error or "dead-lettered"
        if move_turn(
            txn,
            row.workspace,
            row.id,
            "queued",
            "failed",
            row.version,
            actor,
            deliverable={"error": reason, "dead_letter": "dead"},
            extra={"dead_letter": "dead"},
            dead_letter="dead",
        ):
            dead += 1
    if expired:
        bump_counter(txn, "leases_reclaimed", len(expired))
    if dead:
        bump_counter(txn, "dead_letters_dead", dead)
    return Swept(reclaimed=len(expired), dead=dead)
