"""Reading approvals: one by id or by its action key, a turn's open ones, an approval as the
JSON-ready view that commands return, and what a decided approval means for the agent waiting
on it (the gate's answer)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text

from quarterdeck.domain.authority import ApprovalFacts
from quarterdeck.domain.states import APPROVAL_ALLOWED, APPROVAL_OPEN, APPROVAL_REFUSED
from quarterdeck.store.decisions import load_json
from quarterdeck.store.sql import in_list
from quarterdeck.store.writer import WriteTxn

_SELECT = text("SELECT * FROM approvals WHERE id = :id AND workspace = :w")


def approval_row(txn: WriteTxn, workspace: str, approval_id: str) -> Any:
    """The approval's row (None when the workspace has no such approval)."""
    return txn.conn.execute(_SELECT, {"id": approval_id, "w": workspace}).first()


def approved_by(row: Any) -> list[str]:
    """Who approved ``row`` so far (a two-person rule needs two different people)."""
    names = load_json(row.approved_by, [])
    return [str(name) for name in names] if isinstance(names, list) else []


def approvals_required(row: Any) -> int:
    """How many different people must approve ``row`` (one unless its rule says more)."""
    return int(row.approvals_required or 1)


def approval_facts(row: Any, *, counting: bool = False) -> ApprovalFacts:
    """What deciding ``row`` depends on: its workspace, the role of its current ladder level,
    its requester and (``counting`` an approval) who approved it so far."""
    return ApprovalFacts(
        workspace=row.workspace,
        role=row.approver,
        requested_by=row.requested_by,
        approved_by=tuple(approved_by(row)) if counting else (),
    )


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
        "claim_expires_at": row.claim_expires_at,
        "reason_code": row.reason_code,
        "reason": row.reason_text,
        "decided_by": row.decided_by,
        "decided_at": row.decided_at,
        "approvals_required": approvals_required(row),
        "approved_by": approved_by(row),
        "version": row.version,
    }


_BY_KEY = text("SELECT * FROM approvals WHERE workspace = :w AND action_key = :k")


def approval_by_key(txn: WriteTxn, workspace: str, action_key: str) -> Any:
    """The approval bound to ``action_key`` (None when there is none)."""
    return txn.conn.execute(_BY_KEY, {"w": workspace, "k": action_key}).first()


def open_approvals_of(txn: WriteTxn, turn_id: str) -> Sequence[Any]:
    """The turn's approvals still open."""
    return txn.conn.execute(
        text(f"SELECT * FROM approvals WHERE turn_id = :t AND state IN {in_list(APPROVAL_OPEN)}"),
        {"t": turn_id},
    ).all()


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
