"""A person at the approvals desk: a short claim so that no one else decides an approval
meanwhile, a snooze that defers one, and a bulk decision over every open approval a selector
matches (each on its own ledger entry). Each needs the role of the approval's current ladder
level (:func:`~quarterdeck.store.approvals.deciding.refused_to`); a claim is let go only by
the person holding it."""

from __future__ import annotations

from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Any

from sqlalchemy import text

from quarterdeck.domain.authority import Principal
from quarterdeck.domain.clock import later
from quarterdeck.domain.escalation import snoozed_deadline
from quarterdeck.domain.states import APPROVAL_OPEN
from quarterdeck.store.approvals.deciding import (
    claimed_by_other,
    decide_approval,
    reason_codes,
    refuse_approval,
    refused_to,
)
from quarterdeck.store.approvals.reading import approval_row, approval_view
from quarterdeck.store.plan import WorkPlan
from quarterdeck.store.sql import in_list
from quarterdeck.store.transitions import append_entry
from quarterdeck.store.writer import WriteTxn


def snooze_approval(
    txn: WriteTxn, plan: WorkPlan, workspace: str, approval_id: str, for_s: float,
    who: Principal,
) -> dict[str, Any]:  # fmt: skip
    """Defer an open approval: hidden from the queue until then, and its deadline moves to at
    least the end of the snooze (so the ladder does not run while it sleeps)."""
    actor = who.label
    row = approval_row(txn, workspace, approval_id)
    if row is None:
        return refuse_approval(
            txn, workspace, actor, approval_id, "approval.snooze", "no such approval"
        )
    refused = refused_to(txn, plan, row, who, "approval.snooze")
    if refused is not None:
        return refused
    if row.state not in APPROVAL_OPEN:
        error = f"approval is already {row.state}"
        return refuse_approval(txn, workspace, actor, approval_id, "approval.snooze", error)
    until = later(txn.now, for_s)
    deadline = snoozed_deadline(row.deadline_at, until)
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
    fresh = approval_row(txn, workspace, approval_id)
    return {"ok": True, **approval_view(fresh)}


def claim_approval(
    txn: WriteTxn, plan: WorkPlan, workspace: str, approval_id: str, who: Principal,
    for_s: float | None = None, release: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Hold (or, with ``release``, let go of) a short claim so that no one else decides the
    approval meanwhile. A claim held by someone else is refused until it runs out."""
    actor = who.label
    command = "approval.unclaim" if release else "approval.claim"
    row = approval_row(txn, workspace, approval_id)
    if row is None:
        return refuse_approval(txn, workspace, actor, approval_id, command, "no such approval")
    refused = refused_to(txn, plan, row, who, command)
    if refused is not None:
        return refused
    if row.state not in APPROVAL_OPEN:
        return {"ok": True, "already": True, **approval_view(row)}
    held = claimed_by_other(txn, row, actor)
    if held is not None:
        return refuse_approval(txn, workspace, actor, approval_id, command, held)
    until = None if release else later(txn.now, for_s or plan.claim_s)
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
    fresh = approval_row(txn, workspace, approval_id)
    return {"ok": True, **approval_view(fresh)}


def bulk_decide(
    txn: WriteTxn,
    plan: WorkPlan,
    workspace: str | None,
    verdict: str,
    selector: Mapping[str, Any],
    who: Principal,
    *,
    reason_code: str | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """Decide every open approval matching ``selector`` (``lane``, ``tool`` and ``approver``
    globs, ``kind``) in ``workspace`` (None: in all of them), each on its own ledger entry;
    those claimed by others, or that ``who`` may not decide, are skipped (each refusal
    recorded)."""
    actor = who.label
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
    counted: list[str] = []
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
            txn, plan, row.workspace, row.id, verdict, who, reason_code=reason_code,
            reason=reason,
        )  # fmt: skip
        if result.get("ok") and "waiting_for" in result:
            counted.append(row.id)
        elif result.get("ok") and not result.get("already"):
            decided.append(row.id)
        else:
            skipped.append({"approval": row.id, "errors": result.get("errors", ["decided"])})
    done: dict[str, Any] = {"ok": True, "decided": decided, "skipped": skipped}
    if counted:
        done["counted"] = counted  # approved, still waiting for another person
    return done
