"""Opening and deciding approvals: a pending approval with the deciding rule's approver,
deadline and ladder; a person's approve (with edits) or reject; and what a decision means for
its subject (a dispatch queued again or failed, an SDK request's action released).

``pending -> approved | rejected | edited | escalated | expired`` (``escalated`` may escalate
again and is decided like ``pending``). Each approval is bound to one stable action key; the
first decision stands (deciding again returns it). Every change is a ledger entry; a pending
approval queues an outbox notification in the same transaction.

Deciding, claiming, snoozing or escalating an approval needs the role of its current ladder
level in its workspace (or ``admin``), never by an agent nor by its requester
(:func:`quarterdeck.domain.authority.may_decide`, with the row read in the same transaction).
A rule asking for ``approvals_required = 2`` releases the action only once two different
people approved, each approval on the ledger; one rejection refuses it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text

from quarterdeck.domain.authority import (
    Principal,
    approvals_complete,
    may_decide,
    may_read,
)
from quarterdeck.domain.canonical import canonical_text
from quarterdeck.domain.clock import later
from quarterdeck.domain.escalation import first_rung
from quarterdeck.domain.ids import new_ids
from quarterdeck.domain.policy import DEFAULT_REJECT_REASONS, PolicyDecision
from quarterdeck.domain.states import APPROVAL_ALLOWED, APPROVAL_DECIDED, Kind
from quarterdeck.store.approvals.reading import (
    approval_facts,
    approval_row,
    approval_view,
    approvals_required,
    approved_by,
    open_approvals_of,
)
from quarterdeck.store.authorizing import refuse_principal
from quarterdeck.store.decisions import load_json, release_action
from quarterdeck.store.outbox import enqueue
from quarterdeck.store.plan import WorkPlan
from quarterdeck.store.transitions import append_entry, move, move_mission, move_turn, refuse
from quarterdeck.store.writer import WriteTxn


def reason_codes(plan: WorkPlan) -> tuple[str, ...]:
    """The reject reason codes in force (the policy's, or the defaults)."""
    return plan.policy.reject_reasons if plan.policy is not None else DEFAULT_REJECT_REASONS


@dataclass(frozen=True, slots=True)
class NewApproval:
    """What an approval is about."""

    workspace: str
    kind: str
    """``dispatch``, ``action`` or ``sdk``."""
    action_key: str
    action_id: str
    tool: str
    args: Mapping[str, Any]
    lane: str | None
    turn_id: str | None
    mission_id: str | None
    decision_id: str
    requested_by: str
    estimated_cost: float | None = None


def create_approval(
    txn: WriteTxn, plan: WorkPlan, new: NewApproval, decision: PolicyDecision
) -> str:
    """Open a pending approval for ``new`` with the deciding rule's approver, deadline and
    ladder; record it and queue its notification. Returns the approval's id."""
    approval_id = new_ids(1)[0]
    rung = first_rung(decision.approver, decision.deadline_s)
    row = {
        "id": approval_id,
        "workspace": new.workspace,
        "at": txn.at,
        "turn_id": new.turn_id,
        "action_id": new.action_id,
        "mission_id": new.mission_id,
        "decision_id": new.decision_id,
        "action_key": new.action_key,
        "kind": new.kind,
        "lane": new.lane,
        "tool": new.tool,
        "args": canonical_text(dict(new.args)),
        "approver": rung.approver,
        "level": rung.level,
        "ladder": canonical_text(list(decision.ladder)),
        "on_expiry": str(decision.on_expiry or "reject"),
        "deadline_s": rung.deadline_s,
        "deadline_at": later(txn.now, rung.deadline_s),
        "requested_by": new.requested_by,
        "estimated_cost": new.estimated_cost,
        "approvals_required": decision.approvals_required,
        "data": canonical_text({"rule": decision.rule, "policy_hash": decision.policy_hash}),
    }
    txn.conn.execute(
        text(
            "INSERT INTO approvals (id, workspace, state, version, attempt, created_at, "
            "updated_at, data, turn_id, action_id, mission_id, decision_id, action_key, kind, "
            "lane, tool, args, approver, level, ladder, on_expiry, deadline_s, deadline_at, "
            "requested_by, estimated_cost, approvals_required) VALUES (:id, :workspace, 'pending', "
            "1, 0, :at, :at, :data, :turn_id, :action_id, :mission_id, :decision_id, "
            ":action_key, :kind, :lane, :tool, :args, :approver, :level, :ladder, :on_expiry, "
            ":deadline_s, :deadline_at, :requested_by, :estimated_cost, :approvals_required)"
        ),
        row,
    )
    txn.conn.execute(
        text("UPDATE decisions SET approval_id = :a WHERE id = :d"),
        {"a": approval_id, "d": new.decision_id},
    )
    summary = (
        f"{new.tool} on lane {new.lane or '-'} needs {row['approver']} "
        f"(deadline {row['deadline_at']})"
    )
    payload = {
        "kind": new.kind,
        "action_key": new.action_key,
        "tool": new.tool,
        "args": dict(new.args),
        "approver": row["approver"],
        "deadline_at": row["deadline_at"],
        "rule": decision.rule,
        "turn": new.turn_id,
        "mission": new.mission_id,
        "version": 1,
    }
    if decision.approvals_required > 1:
        payload["approvals_required"] = decision.approvals_required
    append_entry(
        txn, new.workspace, new.requested_by, "approval.requested", "approval", approval_id,
        None, "pending", payload,
    )  # fmt: skip
    enqueue(
        txn, plan.targets, workspace=new.workspace, event="approval.pending",
        subject_type="approval", subject_id=approval_id, summary=summary, data=payload,
    )  # fmt: skip
    return approval_id


def refuse_approval(
    txn: WriteTxn, workspace: str, actor: str, approval_id: str, command: str, error: str
) -> dict[str, Any]:
    """Record a refused approval command (nothing else changes) and return its result."""
    return {**refuse(txn, workspace, actor, "approval", approval_id,
                      {"command": command, "errors": [error]}), "approval": approval_id}  # fmt: skip


def refused_to(
    txn: WriteTxn, plan: WorkPlan, row: Any, who: Principal, command: str, *,
    counting: bool = False,
) -> dict[str, Any] | None:  # fmt: skip
    """The refusal, recorded, when ``who`` may not act on the open approval ``row`` (None:
    they may); ``counting``: an approval, which the same person gives once."""
    refusal = may_decide(plan.roster, who, approval_facts(row, counting=counting))
    if refusal is None:
        return None
    refused = refuse_principal(txn, row.workspace, who, command, "approval", row.id, refusal)
    return {**refused, "approval": row.id}


def read_refused(
    txn: WriteTxn, plan: WorkPlan, row: Any, who: Principal, command: str
) -> dict[str, Any] | None:
    """The refusal, recorded, when ``who`` may not even see the approval ``row`` (answering
    with a decided approval's view)."""
    refusal = may_read(plan.roster, who, row.workspace)
    if refusal is None:
        return None
    refused = refuse_principal(txn, row.workspace, who, command, "approval", row.id, refusal)
    return {**refused, "approval": row.id}


def claimed_by_other(txn: WriteTxn, row: Any, actor: str) -> str | None:
    """Why ``actor`` may not act on the approval: someone else's claim still holds (None: no)."""
    if row.claimed_by and row.claimed_by != actor and row.claim_expires_at > txn.at:
        return f"approval is claimed by {row.claimed_by} until {row.claim_expires_at}"
    return None


def decide_approval(
    txn: WriteTxn,
    plan: WorkPlan,
    workspace: str,
    approval_id: str,
    verdict: str,
    who: Principal,
    *,
    args: Mapping[str, Any] | None = None,
    reason_code: str | None = None,
    reason: str | None = None,
    action_key: str | None = None,
) -> dict[str, Any]:
    """Approve (``args`` given: approve with edits) or reject (``reason_code`` required), as
    ``who`` (who must hold the role of the approval's current level, see the module).

    Idempotent: an approval decided already returns its first decision with ``already``.
    ``action_key``, when given, must be the approval's own (a decision is never applied to
    another item). Under a two-person rule, an approval that is not the last one needed is
    counted (``waiting_for``: how many more) and the approval stays open."""
    actor = who.label
    command = f"approval.{'approve' if verdict == 'approve' else 'reject'}"
    row = approval_row(txn, workspace, approval_id)
    if row is None:
        return refuse_approval(txn, workspace, actor, approval_id, command, "no such approval")
    if action_key is not None and action_key != row.action_key:
        error = f"approval {approval_id} is for {row.action_key}, not {action_key}"
        return refuse_approval(txn, workspace, actor, approval_id, command, error)
    if row.state in APPROVAL_DECIDED:
        unseen = read_refused(txn, plan, row, who, command)
        return unseen or {"ok": True, "already": True, **approval_view(row)}
    refused = refused_to(txn, plan, row, who, command, counting=verdict == "approve")
    if refused is not None:
        return refused
    held = claimed_by_other(txn, row, actor)
    if held is not None:
        return refuse_approval(txn, workspace, actor, approval_id, command, held)
    if verdict == "reject":
        codes = reason_codes(plan)
        if reason_code not in codes:
            error = f"reason code {reason_code!r} is not one of {', '.join(codes)}"
            return refuse_approval(txn, workspace, actor, approval_id, command, error)
        target = "rejected"
        approvers: list[str] | None = None
    else:
        target = "edited" if args is not None else "approved"
        approvers = [*approved_by(row), actor]
        required = approvals_required(row)
        if required > 1 and args is not None:
            error = (
                f"approval needs {required} people: it cannot be approved with edits "
                "(reject it, and let the request be made again with other arguments)"
            )
            return refuse_approval(txn, workspace, actor, approval_id, command, error)
        if not approvals_complete(required, approvers):
            return _count_approval(txn, row, approvers, required, actor, reason)
    return settle(
        txn, plan, row, target, actor, edited=args, reason_code=reason_code, reason=reason,
        approved=approvers,
    )  # fmt: skip


def _count_approval(
    txn: WriteTxn, row: Any, approvers: list[str], required: int, actor: str, reason: str | None
) -> dict[str, Any]:
    """Record one approval of several needed: the approval stays open (its claim let go, for
    the next person) and the ledger says who approved."""
    version = row.version + 1
    changed = txn.conn.execute(
        text(
            "UPDATE approvals SET approved_by = :approved, claimed_by = NULL, "
            "claim_expires_at = NULL, version = :version, updated_at = :at "
            "WHERE id = :id AND version = :old"
        ),
        {"approved": canonical_text(approvers), "version": version, "at": txn.at, "id": row.id,
         "old": row.version},
    ).rowcount  # fmt: skip
    if changed != 1:
        raise StaleApproval(row.id)
    waiting_for = required - len(set(approvers))
    payload: dict[str, Any] = {
        "action_key": row.action_key, "approved_by": approvers, "approvals_required": required,
        "waiting_for": waiting_for, "version": version,
    }  # fmt: skip
    if reason:
        payload["reason"] = reason
    append_entry(
        txn, row.workspace, actor, "approval.approval_counted", "approval", row.id, None, None,
        payload,
    )  # fmt: skip
    fresh = approval_row(txn, row.workspace, row.id)
    return {"ok": True, "waiting_for": waiting_for, **approval_view(fresh)}


def settle(
    txn: WriteTxn,
    plan: WorkPlan,
    row: Any,
    target: str,
    actor: str,
    *,
    edited: Mapping[str, Any] | None = None,
    reason_code: str | None = None,
    reason: str | None = None,
    extra: Mapping[str, Any] | None = None,
    approved: list[str] | None = None,
) -> dict[str, Any]:
    """Move an open approval to a decided state and apply what that means for its subject
    (``extra`` goes into the ledger entry's payload; ``approved``: everyone who approved)."""
    allowed = target in APPROVAL_ALLOWED
    args = dict(edited) if edited is not None else load_json(row.args, {})
    payload: dict[str, Any] = {"action_key": row.action_key}
    if target == "edited":
        payload["args"] = args
        payload["original_args"] = load_json(row.args, {})
    if reason_code is not None:
        payload["reason_code"] = reason_code
    if reason:
        payload["reason"] = reason
    columns: dict[str, Any] = {}
    if approved is not None and approvals_required(row) > 1:
        payload["approved_by"] = approved
        columns["approved_by"] = canonical_text(approved)
    payload.update(extra or {})
    moved = move(
        txn, Kind.APPROVAL, row.id, row.state, target, workspace=row.workspace, actor=actor,
        version=row.version, payload=payload,
        columns={
            "edited_args": canonical_text(dict(edited)) if edited is not None else None,
            "reason_code": reason_code, "reason_text": reason, "decided_by": actor,
            "decided_at": txn.at, "claimed_by": None, "claim_expires_at": None, **columns,
        },
    )  # fmt: skip
    if moved is None:
        raise StaleApproval(row.id)
    txn.conn.execute(
        text(
            "UPDATE decisions SET verdict = :verdict, decided_by = :actor, reason = :reason "
            "WHERE approval_id = :id AND verdict = 'pending'"
        ),
        {
            "verdict": "allow" if allowed else "deny",
            "actor": actor,
            "reason": None if allowed else f"{target}: {reason_code or ''}".strip(": "),
            "id": row.id,
        },
    )
    if row.kind == "dispatch":
        _settle_dispatch(txn, plan, row, allowed, args if target == "edited" else None, actor)
    elif row.kind == "sdk" and allowed:
        release_action(
            txn, workspace=row.workspace, turn_id=None, mission_id=None,
            action_key=row.action_key, decision_id=row.decision_id, args=args, actor=actor,
        )  # fmt: skip
    fresh = approval_row(txn, row.workspace, row.id)
    return {"ok": True, **approval_view(fresh)}


class StaleApproval(Exception):
    """The approval changed while being decided; the operation rolls back and is retried."""


def _settle_dispatch(
    txn: WriteTxn,
    plan: WorkPlan,
    row: Any,
    allowed: bool,
    edited_input: Mapping[str, Any] | None,
    actor: str,
) -> None:
    """A dispatch approval decided: the turn waits in the queue again (with edited input), or
    fails with the reason and its mission is cancelled."""
    turn = txn.conn.execute(
        text("SELECT state, version FROM turns WHERE id = :id"), {"id": row.turn_id}
    ).first()
    mission = txn.conn.execute(
        text("SELECT state, version FROM missions WHERE id = :id"), {"id": row.mission_id}
    ).first()
    if allowed:
        if edited_input is not None:
            txn.conn.execute(
                text("UPDATE turns SET input = :input WHERE id = :id"),
                {"input": canonical_text(dict(edited_input)), "id": row.turn_id},
            )
        if turn is not None and turn.state == "awaiting_approval":
            move_turn(
                txn, row.workspace, row.turn_id, turn.state, "queued", turn.version, actor,
                extra={"approval": row.id},
            )  # fmt: skip
        return
    if mission is not None and mission.state == "queued":
        move_mission(
            txn, row.workspace, row.mission_id, "queued", "cancelled", mission.version, actor
        )
    if turn is not None and turn.state == "awaiting_approval":
        reason = f"dispatch not approved ({row.id})"
        move_turn(
            txn, row.workspace, row.turn_id, turn.state, "failed", turn.version, actor,
            error=reason, deliverable={"error": reason, "approval": row.id},
        )  # fmt: skip


def reject_open(txn: WriteTxn, plan: WorkPlan, turn_id: str, actor: str, code: str) -> int:
    """Reject the turn's open approvals with ``code`` (e.g. when a person takes the turn)."""
    rows = open_approvals_of(txn, turn_id)
    for row in rows:
        settle(txn, plan, row, "rejected", actor, reason_code=code)
    return len(rows)
