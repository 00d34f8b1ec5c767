"""Persisted policy decisions: every dispatch and every action an agent asks for is evaluated
against the policy in force, and the decision is stored with its rule trace and the policy's
hash before anything runs. A mission's dispatch and an action's release are refused by the
database itself (triggers from schema v4) unless such a decision allows them.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Final

from sqlalchemy import text

from quarterdeck.domain.canonical import canonical_text
from quarterdeck.domain.clock import format_instant
from quarterdeck.domain.ids import new_ids
from quarterdeck.domain.policy import (
    ActionRequest,
    EvaluationContext,
    Outcome,
    Policy,
    PolicyDecision,
    TraceStep,
    evaluate,
)
from quarterdeck.store.sql import Bulk
from quarterdeck.store.writer import WriteTxn

DISPATCH_TOOL: Final = "mission.dispatch"
"""The tool name a mission's dispatch is evaluated as (its args are the task's input)."""
SDK_LANE: Final = "sdk"
"""The lane an SDK action request is made on when it names none (policy rules can match it)."""
NO_POLICY_HASH: Final = "none"
SPEND_WINDOW_S: Final = 86_400
"""Budget tiers compare the workspace's allowed estimated cost over the last day."""


def allow_all(request: ActionRequest) -> PolicyDecision:
    """The decision when no policy file is configured: allowed, and the trace says why."""
    return PolicyDecision(
        outcome=Outcome.ALLOW,
        rule=None,
        trace=(
            TraceStep(
                "(no policy file)",
                True,
                f"no policy file is configured: {request.tool!r} is allowed",
                kind="default",
            ),
        ),
        approver=None,
        deadline_s=None,
        ladder=(),
        on_expiry=None,
        policy_hash=NO_POLICY_HASH,
    )


@dataclass
class Tally:
    """Decisions made earlier in the same transaction, which a count query cannot see yet."""

    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    spend: dict[str, float] = field(default_factory=dict)

    def add(self, request: ActionRequest, allowed: bool) -> None:
        """Count ``request`` against its tool, lane and workspace (and its cost if allowed)."""
        for kind, value in (
            ("tool", request.tool),
            ("lane", request.lane),
            ("workspace", request.workspace),
        ):
            self.counts[(kind, value)] += 1
        if allowed and request.estimated_cost:
            self.spend[request.workspace] = (
                self.spend.get(request.workspace, 0.0) + request.estimated_cost
            )


_COUNT_SQL: Final = {
    kind: text(f"SELECT count(*) FROM decisions WHERE {kind} = :value AND at >= :since")
    for kind in ("tool", "lane", "workspace")
}
_SPEND = text(
    "SELECT COALESCE(SUM(estimated_cost), 0) FROM decisions WHERE workspace = :w "
    "AND verdict = 'allow' AND at >= :since"
)


def decide(
    txn: WriteTxn, policy: Policy | None, request: ActionRequest, tally: Tally | None = None
) -> PolicyDecision:
    """Evaluate ``request`` under ``policy`` (allow-all when None) with counts from the store."""
    if policy is None:
        return allow_all(request)
    seen = tally or Tally()

    def count(kind: str, value: str, window_s: int) -> int:
        txn.lock_decisions()
        since = format_instant(txn.now - timedelta(seconds=window_s))
        stored = txn.conn.execute(_COUNT_SQL[kind], {"value": value, "since": since}).scalar()
        return int(stored or 0) + seen.counts[(kind, value)]

    spend = 0.0
    if policy.floors.budget_yellow is not None or policy.floors.budget_red is not None:
        txn.lock_decisions()
        since = format_instant(txn.now - timedelta(seconds=SPEND_WINDOW_S))
        stored = txn.conn.execute(_SPEND, {"w": request.workspace, "since": since}).scalar()
        spend = float(stored or 0.0) + seen.spend.get(request.workspace, 0.0)
    return evaluate(policy, request, EvaluationContext(txn.now, count, spend))


_DECISION_COLUMNS: Final = (
    ("id", "TEXT"), ("workspace", "TEXT"), ("at", "TEXT"), ("kind", "TEXT"), ("turn_id", "TEXT"),
    ("mission_id", "TEXT"), ("action_key", "TEXT"), ("lane", "TEXT"), ("tool", "TEXT"),
    ("args", "TEXT"), ("estimated_cost", "DOUBLE PRECISION"), ("outcome", "TEXT"),
    ("verdict", "TEXT"), ("rule", "TEXT"), ("trace", "TEXT"), ("policy_hash", "TEXT"),
    ("approval_id", "TEXT"), ("decided_by", "TEXT"), ("reason", "TEXT"), ("call_hash", "TEXT"),
)  # fmt: skip
_INSERT_DECISION = Bulk(
    text(
        "INSERT INTO decisions (id, workspace, at, kind, turn_id, mission_id, action_key, lane, "
        "tool, args, estimated_cost, outcome, verdict, rule, trace, policy_hash, approval_id, "
        "decided_by, reason, call_hash) VALUES (:id, :workspace, :at, :kind, :turn_id, "
        ":mission_id, :action_key, :lane, :tool, :args, :estimated_cost, :outcome, :verdict, "
        ":rule, :trace, :policy_hash, :approval_id, :decided_by, :reason, :call_hash)"
    ),
    text(
        f"INSERT INTO decisions ({', '.join(name for name, _ in _DECISION_COLUMNS)}) "
        "SELECT * FROM unnest("
        + ", ".join(f"CAST(:{name} AS {kind}[])" for name, kind in _DECISION_COLUMNS)
        + ")"
    ),
)


def decision_row(
    txn: WriteTxn,
    *,
    kind: str,
    request: ActionRequest,
    decision: PolicyDecision,
    turn_id: str | None,
    mission_id: str | None,
    action_key: str | None,
    verdict: str,
    approval_id: str | None = None,
    decided_by: str | None = None,
    reason: str | None = None,
    call_hash: str | None = None,
) -> dict[str, Any]:
    """The row for a decision with the ``verdict`` it stands for (``allow``, ``deny`` or
    ``pending``; insert it with :func:`insert_decisions`). ``call_hash`` binds an action key
    to its call (``domain/routing``'s ``Call.hash``; None for a dispatch)."""
    return {
        "id": new_ids(1)[0],
        "workspace": request.workspace,
        "at": txn.at,
        "kind": kind,
        "turn_id": turn_id,
        "mission_id": mission_id,
        "action_key": action_key,
        "lane": request.lane,
        "tool": request.tool,
        "args": canonical_text(dict(request.args)),
        "estimated_cost": request.estimated_cost,
        "outcome": str(decision.outcome),
        "verdict": verdict,
        "rule": decision.rule,
        "trace": canonical_text([step.to_dict() for step in decision.trace]),
        "policy_hash": decision.policy_hash,
        "approval_id": approval_id,
        "decided_by": decided_by or "policy",
        "reason": reason,
        "call_hash": call_hash,
    }


def insert_decisions(txn: WriteTxn, rows: list[dict[str, Any]]) -> None:
    """Persist decision rows (one statement)."""
    txn.insert_many(_INSERT_DECISION, rows)


_INSERT_RELEASE = text(
    "INSERT INTO action_releases (id, workspace, at, turn_id, mission_id, action_key, "
    "decision_id, args) VALUES (:id, :workspace, :at, :turn_id, :mission_id, :action_key, "
    ":decision_id, :args)"
)


def release_action(
    txn: WriteTxn,
    *,
    workspace: str,
    turn_id: str | None,
    mission_id: str | None,
    action_key: str,
    decision_id: str,
    args: Mapping[str, Any],
    actor: str,
) -> str:
    """Record that an action goes to its agent with ``args``; the database refuses it unless
    ``decision_id`` allows this very action (and no person holds the turn)."""
    release_id = new_ids(1)[0]
    txn.conn.execute(
        _INSERT_RELEASE,
        {
            "id": release_id,
            "workspace": workspace,
            "at": txn.at,
            "turn_id": turn_id,
            "mission_id": mission_id,
            "action_key": action_key,
            "decision_id": decision_id,
            "args": canonical_text(dict(args)),
        },
    )
    txn.ledger.append(
        at=txn.at,
        workspace=workspace,
        actor=actor,
        action="action.released",
        subject_type="mission" if mission_id else "action",
        subject_id=mission_id or action_key,
        payload={"action_key": action_key, "decision": decision_id, "args": dict(args)},
    )
    return release_id


def load_json(value: str | None, default: Any = None) -> Any:
    """Decode a JSON column (``default`` when NULL)."""
    return default if value is None else json.loads(value)
