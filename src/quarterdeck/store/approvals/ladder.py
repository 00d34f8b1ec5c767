"""The escalation ladder: an open approval raised one level (by a person, or by the sweep when
its deadline passed), and one whose ladder is spent expired into its rule's default-safe action
(reject; pause the lane; or force the lane's fallback). The rules are
:mod:`quarterdeck.domain.escalation`; this module reads the rows and writes what they say."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from quarterdeck.domain.authority import Principal
from quarterdeck.domain.clock import later
from quarterdeck.domain.envelope import RUNTIME_WORKSPACE
from quarterdeck.domain.escalation import Rung, at_deadline, expiry, next_rung
from quarterdeck.domain.states import APPROVAL_OPEN, Kind
from quarterdeck.store.alerts import open_alert
from quarterdeck.store.approvals.deciding import refuse_approval, refused_to, settle
from quarterdeck.store.approvals.reading import approval_row, approval_view
from quarterdeck.store.decisions import SDK_LANE, load_json
from quarterdeck.store.flags import set_flag
from quarterdeck.store.outbox import enqueue
from quarterdeck.store.plan import WorkPlan
from quarterdeck.store.sql import in_list
from quarterdeck.store.transitions import move
from quarterdeck.store.writer import WriteTxn


def escalate_approval(
    txn: WriteTxn, plan: WorkPlan, workspace: str, approval_id: str, who: Principal
) -> dict[str, Any]:
    """Raise an open approval one level: the ladder's next role (if any) takes it with a fresh
    deadline; recorded and notified. Only someone holding the current level's role may."""
    actor = who.label
    row = approval_row(txn, workspace, approval_id)
    if row is None:
        return refuse_approval(
            txn, workspace, actor, approval_id, "approval.escalate", "no such approval"
        )
    refused = refused_to(txn, plan, row, who, "approval.escalate")
    if refused is not None:
        return refused
    if row.state not in APPROVAL_OPEN:
        error = f"approval is already {row.state}"
        return refuse_approval(txn, workspace, actor, approval_id, "approval.escalate", error)
    rung = next_rung(load_json(row.ladder, []), row.level, row.approver, row.deadline_s)
    if not _escalate(txn, plan, row, rung, actor):
        return refuse_approval(
            txn, workspace, actor, approval_id, "approval.escalate", "approval changed meanwhile"
        )
    fresh = approval_row(txn, workspace, approval_id)
    return {"ok": True, **approval_view(fresh)}


def _escalate(txn: WriteTxn, plan: WorkPlan, row: Any, rung: Rung, actor: str) -> bool:
    """Raise ``row`` to ``rung`` and notify; False (nothing written) when it changed since read."""
    deadline_at = later(txn.now, rung.deadline_s)
    payload = {
        "level": rung.level,
        "approver": rung.approver,
        "previous_approver": row.approver,
        "deadline_at": deadline_at,
    }
    version = move(
        txn, Kind.APPROVAL, row.id, row.state, "escalated", workspace=row.workspace, actor=actor,
        version=row.version, payload=payload,
        columns={"level": rung.level, "approver": rung.approver, "deadline_at": deadline_at},
    )  # fmt: skip
    if version is None:
        return False
    payload["version"] = version
    enqueue(
        txn, plan.targets, workspace=row.workspace, event="approval.escalated",
        subject_type="approval", subject_id=row.id,
        summary=(
            f"{row.tool} escalated to {rung.approver} (level {rung.level}, deadline {deadline_at})"
        ),
        data={**payload, "tool": row.tool, "lane": row.lane, "action_key": row.action_key},
    )  # fmt: skip
    return True


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
        rung = at_deadline(load_json(row.ladder, []), row.level, row.approver, row.deadline_s)
        if rung is not None:
            moved += _escalate(txn, plan, row, rung, actor)  # one moved meanwhile is skipped
            continue
        _expire(txn, plan, row, actor)
        moved += 1
    return moved


def _expire(txn: WriteTxn, plan: WorkPlan, row: Any, actor: str) -> None:
    """Expire ``row`` unanswered: refuse it, notify, and apply its lane action if it can be."""
    action = expiry(
        row.on_expiry, row.lane, plan.lanes, default_lane=SDK_LANE if row.kind == "sdk" else None
    )
    extra: dict[str, Any] = {"on_expiry": row.on_expiry}
    if action.unapplied:
        extra["on_expiry_not_applied"] = action.unapplied
    settle(txn, plan, row, "expired", actor, reason_code="expired", extra=extra)
    summary = f"{row.tool} expired unanswered; applying {row.on_expiry}"
    if action.unapplied:
        summary = f"{row.tool} expired unanswered; rejected, {row.on_expiry} not applied: "
        summary += action.unapplied
    enqueue(
        txn, plan.targets, workspace=row.workspace, event="approval.expired",
        subject_type="approval", subject_id=row.id, summary=summary,
        data={"lane": row.lane, "action_key": row.action_key, **extra},
    )  # fmt: skip
    if action.flag is not None:
        what = "paused" if action.flag == "paused" else "forced onto its fallback"
        reason = f"approval {row.id} ({row.tool}) expired unanswered"
        set_flag(
            txn, row.lane, action.flag, True, actor=actor, workspace=row.workspace, reason=reason
        )
        open_alert(
            txn, plan.targets, workspace=RUNTIME_WORKSPACE, alert_type="lane_" + action.flag,
            severity="error", subject_type="lane", subject_id=row.lane,
            dedupe=f"expiry:{row.lane}:{action.flag}",
            message=f"lane {row.lane} {what}: {reason}",
            data={"lane": row.lane, "flag": action.flag, "approval_id": row.id,
                  "tool": row.tool, "on_expiry": row.on_expiry, "expired_by": actor},
            actor=actor,
        )  # fmt: skip
