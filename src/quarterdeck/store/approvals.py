"""Approvals: a person's decision on a dispatch, an agent's action, or an SDK request.

``pending -> approved | rejected | edited | escalated | expired`` (``escalated`` may escalate
again and is decided like ``pending``). Each approval is bound to one stable action key; the
first decision stands (deciding again returns it). Every change is a ledger entry; a pending or
escalated approval queues an outbox notification in the same transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any

from sqlalchemy import text

from quarterdeck.domain.canonical import canonical_text
from quarterdeck.domain.clock import format_instant
from quarterdeck.domain.ids import new_ids
from quarterdeck.domain.policy import DEFAULT_REJECT_REASONS, PolicyDecision
from quarterdeck.domain.states import (
    APPROVAL_ALLOWED,
    APPROVAL_DECIDED,
    APPROVAL_OPEN,
    APPROVAL_REFUSED,
    Kind,
)
from quarterdeck.store.decisions import SDK_LANE, load_json, release_action
from quarterdeck.store.flags import set_flag
from quarterdeck.store.outbox import enqueue
from quarterdeck.store.plan import WorkPlan
from quarterdeck.store.sql import in_list
from quarterdeck.store.transitions import (
    append_entry,
    mission_row,
    move,
    move_mission,
    move_turn,
    refuse,
)
from quarterdeck.store.writer import WriteTxn


def reason_codes(plan: WorkPlan) -> tuple[str, ...]:
    """The reject reason codes in force (the policy's, or the defaults)."""
    return plan.policy.reject_reasons if plan.policy is not None else DEFAULT_REJECT_REASONS


def _iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _later(txn: WriteTxn, seconds: float) -> str:
    return format_instant(txn.now + timedelta(seconds=seconds))


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
    deadline_s = int(decision.deadline_s or 900)
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
        "approver": decision.approver or "supervisor",
        "ladder": canonical_text(list(decision.ladder)),
        "on_expiry": str(decision.on_expiry or "reject"),
        "deadline_s": deadline_s,
        "deadline_at": _later(txn, deadline_s),
        "requested_by": new.requested_by,
        "estimated_cost": new.estimated_cost,
        "data": canonical_text({"rule": decision.rule, "policy_hash": decision.policy_hash}),
    }
    txn.conn.execute(
        text(
            "INSERT INTO approvals (id, workspace, state, version, attempt, created_at, "
            "updated_at, data, turn_id, action_id, mission_id, decision_id, action_key, kind, "
            "lane, tool, args, approver, level, ladder, on_expiry, deadline_s, deadline_at, "
            "requested_by, estimated_cost) VALUES (:id, :workspace, 'pending', 1, 0, :at, :at, "
            ":data, :turn_id, :action_id, :mission_id, :decision_id, :action_key, :kind, :lane, "
            ":tool, :args, :approver, 0, :ladder, :on_expiry, :deadline_s, :deadline_at, "
            ":requested_by, :estimated_cost)"
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
    append_entry(
        txn, new.workspace, new.requested_by, "approval.requested", "approval", approval_id,
        None, "pending", payload,
    )  # fmt: skip
    enqueue(
        txn, plan.targets, workspace=new.workspace, event="approval.pending",
        subject_type="approval", subject_id=approval_id, summary=summary, data=payload,
    )  # fmt: skip
    return approval_id


_SELECT = text("SELECT * FROM approvals WHERE id = :id AND workspace = :w")


def _refused(
    txn: WriteTxn, workspace: str, actor: str, approval_id: str, command: str, error: str
) -> dict[str, Any]:
    return {**refuse(txn, workspace, actor, "approval", approval_id,
                      {"command": command, "errors": [error]}), "approval": approval_id}  # fmt: skip


def approval_view(row: Any) -> dict[str, Any]:
    """An approval as a JSON-ready dict (what commands return and the SDK reads)."""
    args = load_json(row.args, {})
    edited = load_json(row.edited_args)
    return {
        "approval": row.id,
        "workspace": row.workspace,
        "state": row.state,
        "kind": row.kind,
        "action_key": row.action_key,
        "tool": row.tool,
        "lane": row.lane,
        "turn": row.turn_id,
        "args": args,
        "effective_args": edited if edited is not None else args,
        "approver": row.approver,
        "level": row.level,
        "deadline_at": row.deadline_at,
        "snoozed_until": row.snoozed_until,
        "claimed_by": row.claimed_by,
        "reason_code": row.reason_code,
        "reason": row.reason_text,
        "decided_by": row.decided_by,
        "decided_at": row.decided_at,
        "version": row.version,
    }


def _claimed_by_other(txn: WriteTxn, row: Any, actor: str) -> str | None:
    if row.claimed_by and row.claimed_by != actor and row.claim_expires_at > txn.at:
        return f"approval is claimed by {row.claimed_by} until {row.claim_expires_at}"
    return None


def decide_approval(
    txn: WriteTxn,
    plan: WorkPlan,
    workspace: str,
    approval_id: str,
    verdict: str,
    actor: str,
    *,
    args: Mapping[str, Any] | None = None,
    reason_code: str | None = None,
    reason: str | None = None,
    action_key: str | None = None,
) -> dict[str, Any]:
    """Approve (``args`` given: approve with edits) or reject (``reason_code`` required).

    Idempotent: an approval decided already returns its first decision with ``already``.
    ``action_key``, when given, must be the approval's own (a decision is never applied to
    another item)."""
    command = f"approval.{'approve' if verdict == 'approve' else 'reject'}"
    row = txn.conn.execute(_SELECT, {"id": approval_id, "w": workspace}).first()
    if row is None:
        return _refused(txn, workspace, actor, approval_id, command, "no such approval")
    if action_key is not None and action_key != row.action_key:
        error = f"approval {approval_id} is for {row.action_key}, not {action_key}"
        return _refused(txn, workspace, actor, approval_id, command, error)
    if row.state in APPROVAL_DECIDED:
        return {"ok": True, "already": True, **approval_view(row)}
    held = _claimed_by_other(txn, row, actor)
    if held is not None:
        return _refused(txn, workspace, actor, approval_id, command, held)
    if verdict == "reject":
        codes = reason_codes(plan)
        if reason_code not in codes:
            error = f"reason code {reason_code!r} is not one of {', '.join(codes)}"
            return _refused(txn, workspace, actor, approval_id, command, error)
        target = "rejected"
    else:
        target = "edited" if args is not None else "approved"
    return _settle(
        txn, plan, row, target, actor, edited=args, reason_code=reason_code, reason=reason
    )


def _settle(
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
) -> dict[str, Any]:
    """Move an open approval to a decided state and apply what that means for its subject
    (``extra`` goes into the ledger entry's payload)."""
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
    payload.update(extra or {})
    moved = move(
        txn, Kind.APPROVAL, row.id, row.state, target, workspace=row.workspace, actor=actor,
        version=row.version, payload=payload,
        columns={
            "edited_args": canonical_text(dict(edited)) if edited is not None else None,
            "reason_code": reason_code, "reason_text": reason, "decided_by": actor,
            "decided_at": txn.at, "claimed_by": None, "claim_expires_at": None,
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
    fresh = txn.conn.execute(_SELECT, {"id": row.id, "w": row.workspace}).first()
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


def escalate_approval(
    txn: WriteTxn, plan: WorkPlan, workspace: str, approval_id: str, actor: str
) -> dict[str, Any]:
    """Raise an open approval one level: the ladder's next role (if any) takes it with a fresh
    deadline; recorded and notified."""
    row = txn.conn.execute(_SELECT, {"id": approval_id, "w": workspace}).first()
    if row is None:
        return _refused(txn, workspace, actor, approval_id, "approval.escalate", "no such approval")
    if row.state not in APPROVAL_OPEN:
        error = f"approval is already {row.state}"
        return _refused(txn, workspace, actor, approval_id, "approval.escalate", error)
    if not _escalate(txn, plan, row, actor):
        return _refused(
            txn, workspace, actor, approval_id, "approval.escalate", "approval changed meanwhile"
        )
    fresh = txn.conn.execute(_SELECT, {"id": approval_id, "w": workspace}).first()
    return {"ok": True, **approval_view(fresh)}


def _escalate(txn: WriteTxn, plan: WorkPlan, row: Any, actor: str) -> bool:
    """Raise ``row`` one level and notify; False (nothing written) when it changed since read."""
    ladder = load_json(row.ladder, [])
    level = (row.level or 0) + 1
    approver = ladder[level - 1] if level - 1 < len(ladder) else row.approver
    deadline_at = _later(txn, row.deadline_s or 900)
    payload = {
        "level": level,
        "approver": approver,
        "previous_approver": row.approver,
        "deadline_at": deadline_at,
    }
    version = move(
        txn, Kind.APPROVAL, row.id, row.state, "escalated", workspace=row.workspace, actor=actor,
        version=row.version, payload=payload,
        columns={"level": level, "approver": approver, "deadline_at": deadline_at},
    )  # fmt: skip
    if version is None:
        return False
    payload["version"] = version
    enqueue(
        txn, plan.targets, workspace=row.workspace, event="approval.escalated",
        subject_type="approval", subject_id=row.id,
        summary=f"{row.tool} escalated to {approver} (level {level}, deadline {deadline_at})",
        data={**payload, "tool": row.tool, "lane": row.lane, "action_key": row.action_key},
    )  # fmt: skip
    return True


def snooze_approval(
    txn: WriteTxn, workspace: str, approval_id: str, for_s: float, actor: str
) -> dict[str, Any]:
    """Defer an open approval: hidden from the queue until then, and its deadline moves to at
    least the end of the snooze (so the ladder does not run while it sleeps)."""
    row = txn.conn.execute(_SELECT, {"id": approval_id, "w": workspace}).first()
    if row is None:
        return _refused(txn, workspace, actor, approval_id, "approval.snooze", "no such approval")
    if row.state not in APPROVAL_OPEN:
        error = f"approval is already {row.state}"
        return _refused(txn, workspace, actor, approval_id, "approval.snooze", error)
    until = _later(txn, for_s)
    deadline = max(row.deadline_at or until, until)
    txn.conn.execute(
        text(
            "UPDATE approvals SET snoozed_until = :until, deadline_at = :deadline, "
            "version = version + 1, updated_at = :at WHERE id = :id"
        ),
        {"until": until, "deadline": deadline, "at": txn.at, "id": row.id},
    )
    append_entry(
        txn, workspace, actor, "approval.snoozed", "approval", row.id, None, None,
        {"version": row.version + 1, "until": until, "deadline_at": deadline},
    )  # fmt: skip
    fresh = txn.conn.execute(_SELECT, {"id": approval_id, "w": workspace}).first()
    return {"ok": True, **approval_view(fresh)}


def claim_approval(
    txn: WriteTxn, plan: WorkPlan, workspace: str, approval_id: str, actor: str,
    for_s: float | None = None, release: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Hold (or, with ``release``, let go of) a short claim so that no one else decides the
    approval meanwhile. A claim held by someone else is refused until it runs out."""
    command = "approval.unclaim" if release else "approval.claim"
    row = txn.conn.execute(_SELECT, {"id": approval_id, "w": workspace}).first()
    if row is None:
        return _refused(txn, workspace, actor, approval_id, command, "no such approval")
    if row.state not in APPROVAL_OPEN:
        return {"ok": True, "already": True, **approval_view(row)}
    held = _claimed_by_other(txn, row, actor)
    if held is not None:
        return _refused(txn, workspace, actor, approval_id, command, held)
    until = None if release else _later(txn, for_s or plan.claim_s)
    txn.conn.execute(
        text(
            "UPDATE approvals SET claimed_by = :who, claim_expires_at = :until, "
            "version = version + 1, updated_at = :at WHERE id = :id"
        ),
        {"who": None if release else actor, "until": until, "at": txn.at, "id": row.id},
    )
    append_entry(
        txn, workspace, actor, "approval.unclaimed" if release else "approval.claimed",
        "approval", row.id, None, None, {"version": row.version + 1, "until": until},
    )  # fmt: skip
    fresh = txn.conn.execute(_SELECT, {"id": approval_id, "w": workspace}).first()
    return {"ok": True, **approval_view(fresh)}


def bulk_decide(
    txn: WriteTxn,
    plan: WorkPlan,
    workspace: str | None,
    verdict: str,
    selector: Mapping[str, Any],
    actor: str,
    *,
    reason_code: str | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """Decide every open approval matching ``selector`` (``lane``, ``tool`` and ``approver``
    globs, ``kind``), each on its own ledger entry; those claimed by others are skipped."""
    if verdict == "reject" and reason_code not in reason_codes(plan):
        error = f"reason code {reason_code!r} is not one of {', '.join(reason_codes(plan))}"
        append_entry(
            txn, workspace or "*", actor, "command.refused", "command", actor, None, None,
            {"command": "approval.bulk", "errors": [error]},
        )  # fmt: skip
        return {"ok": False, "errors": [error]}
    rows = txn.conn.execute(
        text(
            "SELECT id, workspace, lane, tool, approver, kind FROM approvals "
            f"WHERE state IN {in_list(APPROVAL_OPEN)} ORDER BY created_at, id"
        )
    ).all()
    decided: list[str] = []
    skipped: list[dict[str, Any]] = []
    for row in rows:
        if workspace is not None and row.workspace != workspace:
            continue
        if not all(
            fnmatchcase(str(getattr(row, key) or ""), str(selector[key]))
            for key in ("lane", "tool", "approver", "kind")
            if key in selector
        ):
            continue
        result = decide_approval(
            txn, plan, row.workspace, row.id, verdict, actor, reason_code=reason_code,
            reason=reason,
        )  # fmt: skip
        if result.get("ok") and not result.get("already"):
            decided.append(row.id)
        else:
            skipped.append({"approval": row.id, "errors": result.get("errors", ["decided"])})
    return {"ok": True, "decided": decided, "skipped": skipped}


def expire_due(txn: WriteTxn, plan: WorkPlan, actor: str, limit: int = 200) -> int:
    """Walk the ladder for open approvals whose deadline passed: escalate to the next role, or,
    at the end, expire and apply the rule's default-safe action (reject; pause the lane; or
    force the lane's fallback). Returns how many approvals moved."""
    rows = txn.conn.execute(
        text(
            f"SELECT * FROM approvals WHERE state IN {in_list(APPROVAL_OPEN)} "
            "AND deadline_at <= :now AND (snoozed_until IS NULL OR snoozed_until <= :now) "
            "ORDER BY deadline_at LIMIT :limit"
        ),
        {"now": txn.at, "limit": limit},
    ).all()
    moved = 0
    for row in rows:
        ladder = load_json(row.ladder, [])
        if (row.level or 0) < len(ladder):
            moved += _escalate(txn, plan, row, actor)  # one moved meanwhile is skipped
            continue
        unapplied = _expiry_unapplied(plan, row)
        expiry: dict[str, Any] = {"on_expiry": row.on_expiry}
        if unapplied:
            expiry["on_expiry_not_applied"] = unapplied
        _settle(txn, plan, row, "expired", actor, reason_code="expired", extra=expiry)
        moved += 1
        summary = f"{row.tool} expired unanswered; applying {row.on_expiry}"
        if unapplied:
            summary = f"{row.tool} expired unanswered; rejected, {row.on_expiry} not applied: "
            summary += unapplied
        enqueue(
            txn, plan.targets, workspace=row.workspace, event="approval.expired",
            subject_type="approval", subject_id=row.id, summary=summary,
            data={"lane": row.lane, "action_key": row.action_key, **expiry},
        )  # fmt: skip
        if row.on_expiry in ("pause_lane", "fallback") and not unapplied:
            flag = "paused" if row.on_expiry == "pause_lane" else "force_fallback"
            set_flag(txn, row.lane, flag, True, actor=actor, workspace=row.workspace)
    return moved


def _expiry_unapplied(plan: WorkPlan, row: Any) -> str | None:
    """Why an expired approval's lane action (pause the lane, force its fallback) cannot be
    applied, or None when it can (or the action is only ``reject``)."""
    if row.on_expiry not in ("pause_lane", "fallback") or (row.lane and row.lane in plan.lanes):
        return None
    if not row.lane or (row.kind == "sdk" and row.lane == SDK_LANE):
        return "the request named no lane (the SDK's lane= names one)"
    return f"lane {row.lane!r} is not configured on this runtime"


# --- the action gate: what an agent's tool call gets -----------------------------------------


@dataclass(frozen=True, slots=True)
class Gate:
    """The answer to an action request: ``released`` (with the args the agent gets),
    ``rejected`` (with the reason), or ``waiting`` on an approval."""

    status: str
    args: Mapping[str, Any]
    outcome: str = "approved"
    reason: str | None = None
    approval_id: str | None = None
    decision_id: str | None = None


def approval_by_key(txn: WriteTxn, workspace: str, action_key: str) -> Any:
    """The approval bound to ``action_key`` (None when there is none)."""
    return txn.conn.execute(
        text("SELECT * FROM approvals WHERE workspace = :w AND action_key = :k"),
        {"w": workspace, "k": action_key},
    ).first()


def gate_from_approval(row: Any) -> Gate:
    """What a decided approval means for the agent waiting on it."""
    if row.state in APPROVAL_ALLOWED:
        args = load_json(row.edited_args) if row.state == "edited" else None
        return Gate(
            "released",
            args if args is not None else load_json(row.args, {}),
            outcome=row.state,
            reason=f"{row.state} by {row.decided_by}",
            approval_id=row.id,
        )
    if row.state in APPROVAL_REFUSED:
        reason = f"{row.state} by {row.decided_by}"
        if row.reason_code:
            reason += f": {row.reason_code}"
        if row.reason_text:
            reason += f" ({row.reason_text})"
        return Gate("rejected", load_json(row.args, {}), "rejected", reason, approval_id=row.id)
    return Gate("waiting", load_json(row.args, {}), approval_id=row.id)


def open_approvals_of(txn: WriteTxn, turn_id: str) -> Sequence[Any]:
    """The turn's approvals still open."""
    return txn.conn.execute(
        text(f"SELECT * FROM approvals WHERE turn_id = :t AND state IN {in_list(APPROVAL_OPEN)}"),
        {"t": turn_id},
    ).all()


def reject_open(txn: WriteTxn, plan: WorkPlan, turn_id: str, actor: str, code: str) -> int:
    """Reject the turn's open approvals with ``code`` (e.g. when a person takes the turn)."""
    rows = open_approvals_of(txn, turn_id)
    for row in rows:
        _settle(txn, plan, row, "rejected", actor, reason_code=code)
    return len(rows)


def new_mission_for(txn: WriteTxn, workspace: str, turn_id: str, lane: str) -> dict[str, Any]:
    """A fresh primary mission row for ``turn_id`` on ``lane`` (recorded; insert it)."""
    return mission_row(txn, new_ids(1)[0], workspace, turn_id, lane, "primary", 1)
