"""A small, fixed world for the control center's snapshot tests.

:func:`seed_world` creates a real, migrated SQLite database and fills it with plain SQL: every
id and every instant is fixed (around :data:`NOW`), so the screens drawn from it are the same
on every run. Ledger entries go through the real appender (one write transaction of the real
writer, with a fixed clock), so the chain verifies. :func:`empty_world` is the same database
with nothing in it. :func:`attach` opens the console ``quarterdeck attach`` opens, on the
control API served over the world's database (:class:`WorldServer`).

The world: four approvals (three open: a deploy with time to spare, an escalated ticket
closure close to its deadline, an overdue refund claimed by alice; and one decided with edits),
eight turns in every interesting state, eight missions with leases (primary, fallback and
shadow roles), two live sessions, three drift alerts (open, acked, resolved), lane ``triage``
paused and fallback forced on ``deploys`` (optionally on every lane), decisions with rule
traces, the deploy's recent events, and about forty ledger entries.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text

from quarterdeck.client.api_console import ApiConsole
from quarterdeck.client.console import os_principal
from quarterdeck.client.reach import ApiAddress
from quarterdeck.domain.authority import Principal, Roster
from quarterdeck.domain.canonical import canonical_text
from quarterdeck.domain.clock import format_instant
from quarterdeck.runtime.api import ControlServer
from quarterdeck.runtime.config import daemon_user
from quarterdeck.store.database import Database, normalize_url, open_database
from quarterdeck.store.receipts import IngestResult
from quarterdeck.store.writer import Writer, WriteTxn

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
"""The world's present: every clock in the snapshot tests says this."""
WORKSPACE = "default"
LANES = ("billing", "deploys", "research", "triage")
REJECT_REASONS = ("unsafe", "wrong_target", "needs_context", "policy", "other")
TARGET = "attached to state/quarterdeck.db"
"""The header's description of what the console is attached to (``attach`` shows the daemon's
socket, a per-run tmp path: the screens show this fixed text instead)."""
POLICY_HASH = "5c1d0e7a9b3f42d8a61e0c7b94f2d3a8e6b1c0f9d2a7e4b3c8f1a0d6e9b2c7f4"


def clock() -> datetime:
    """The fixed clock."""
    return NOW


def at(minutes: float = 0, seconds: float = 0) -> str:
    """An instant relative to :data:`NOW`, as ledger text."""
    return format_instant(NOW + timedelta(minutes=minutes, seconds=seconds))


def fixed_id(minutes: float, tag: int, number: int) -> str:
    """A UUIDv7-shaped id whose time part is ``minutes`` from :data:`NOW` and whose tail reads
    ``<tag><number>`` (four hex digits each) however the panes shorten it."""
    millis = int((NOW + timedelta(minutes=minutes)).timestamp() * 1000)
    digits = f"{millis:012x}7000{0x8000:04x}{tag:04x}{tag:04x}{number:04x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


# --- the world's items ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TurnSpec:
    key: str
    minutes: float
    state: str
    lane: str
    attempt: int
    objective: str
    lease_owner: str | None = None
    lease_expires_at: str | None = None
    dead_letter: str | None = None
    held_until: str | None = None
    deliverable: dict[str, Any] | None = None
    error: str | None = None

    @property
    def id(self) -> str:
        return fixed_id(self.minutes, 0x7700, int(self.key[1:]))


TURNS = (
    TurnSpec("T1", -50, "completed", "research", 1, "Summarise overnight incident reports",
             deliverable={"text": "Three incidents overnight; none customer-facing."}),
    TurnSpec("T2", -40, "failed", "billing", 2, "Reconcile November invoice batch",
             error="invoicing API answered 502 twice"),
    TurnSpec("T3", -20, "running", "research", 1, "Draft release notes for v4.2",
             lease_owner="node-a", lease_expires_at=at(seconds=20)),
    TurnSpec("T4", -15, "awaiting_approval", "deploys", 1, "Ship build 4812 to production",
             lease_owner="node-a", lease_expires_at=at(minutes=9)),
    TurnSpec("T5", -30, "taken_over", "triage", 1, "Answer customer escalation #5521",
             lease_owner="human:erin"),
    TurnSpec("T6", -35, "queued", "billing", 3, "Refund duplicate charge on order 88190",
             dead_letter="held", held_until=at(minutes=30),
             error="payment provider timed out three times"),
    TurnSpec("T7", -10, "awaiting_approval", "triage", 1,
             "Close duplicate tickets from the 11:00 outage",
             lease_owner="node-a", lease_expires_at=at(minutes=1, seconds=40)),
    TurnSpec("T8", -8, "awaiting_approval", "billing", 1, "Refund order 88213 (damaged)",
             lease_owner="node-a", lease_expires_at=at(seconds=50)),
)  # fmt: skip
TURN = {turn.key: turn for turn in TURNS}


@dataclass(frozen=True)
class MissionSpec:
    key: str
    turn: str
    minutes: float
    state: str
    lane: str
    role: str
    attempt: int = 1
    number: int = 1
    lease_owner: str | None = None
    lease_expires_at: str | None = None
    session: str | None = None
    finished_minutes: float | None = None
    error: str | None = None

    @property
    def id(self) -> str:
        return fixed_id(self.minutes, 0x3300, int(self.key[1:]))

    @property
    def decision_id(self) -> str:
        return fixed_id(self.minutes, 0xDEC0, int(self.key[1:]))


MISSIONS = (
    MissionSpec("M1", "T1", -50, "completed", "research", "primary", finished_minutes=-46),
    MissionSpec("M2", "T2", -40, "failed", "billing", "primary", attempt=2, number=2,
                finished_minutes=-38, error="invoicing API answered 502"),
    MissionSpec("M3", "T3", -20, "running", "research", "primary", lease_owner="node-a/research",
                lease_expires_at=at(seconds=20), session="S1"),
    MissionSpec("M4", "T3", -19.9, "running", "research", "shadow",
                lease_owner="node-b/research", lease_expires_at=at(minutes=4, seconds=10)),
    MissionSpec("M5", "T4", -15, "blocked", "deploys", "fallback", lease_owner="node-a/deploys",
                lease_expires_at=at(minutes=9)),
    MissionSpec("M6", "T5", -30, "cancelled", "triage", "primary", finished_minutes=-25),
    MissionSpec("M7", "T7", -10, "blocked", "triage", "primary", lease_owner="node-a/triage",
                lease_expires_at=at(minutes=1, seconds=40), session="S2"),
    MissionSpec("M8", "T8", -8, "blocked", "billing", "primary", lease_owner="node-a/billing",
                lease_expires_at=at(seconds=50)),
)  # fmt: skip
MISSION = {mission.key: mission for mission in MISSIONS}


@dataclass(frozen=True)
class ApprovalSpec:
    key: str
    turn: str
    mission: str
    minutes: float
    state: str
    tool: str
    args: dict[str, Any]
    approver: str
    deadline_s: int
    deadline_at: str
    rule: str
    trace: tuple[dict[str, Any], ...]
    level: int = 0
    ladder: tuple[str, ...] = ()
    claimed_by: str | None = None
    claim_expires_at: str | None = None
    edited_args: dict[str, Any] | None = None
    decided_by: str | None = None
    decided_at: str | None = None
    estimated_cost: float | None = None

    @property
    def id(self) -> str:
        return fixed_id(self.minutes, 0xAA00, int(self.key[1:]))

    @property
    def decision_id(self) -> str:
        return fixed_id(self.minutes, 0xDEC0, 0x10 + int(self.key[1:]))

    @property
    def lane(self) -> str:
        return TURN[self.turn].lane

    @property
    def action_key(self) -> str:
        return f"turn:{TURN[self.turn].id}:act-{self.key[1:]}"


def step(rule: str, matched: bool, why: str, kind: str = "rule") -> dict[str, Any]:
    """One rule-trace step, as the policy evaluator records it."""
    return {"rule": rule, "kind": kind, "matched": matched, "why": why}


QUIET_HOURS = step(
    "floors.quiet_hours", False, "12:00 UTC is outside quiet hours 22:00-06:00", "floor"
)
NO_REMOVALS = "no-removals"

APPROVALS = (
    ApprovalSpec(
        "A1", "T4", "M5", -13.5, "pending", "deploy",
        {"build": 4812, "env": "production", "strategy": "canary"},
        "release-lead", 1200, at(minutes=6, seconds=30), "deploys",
        (step(NO_REMOVALS, False, "tool 'deploy' does not match 'rm*'"),
         step("deploys", True, "lane 'deploys' matches 'deploys'; tool 'deploy' matches 'deploy'"),
         QUIET_HOURS),
        estimated_cost=0.8,
    ),
    ApprovalSpec(
        "A2", "T7", "M7", -9, "escalated", "close_tickets",
        {"reason": "duplicate", "tickets": [5521, 5522, 5530]},
        "oncall", 300, at(minutes=2, seconds=15), "bulk-ticket-changes",
        (step(NO_REMOVALS, False, "tool 'close_tickets' does not match 'rm*'"),
         step("bulk-ticket-changes", True, "tool 'close_tickets' matches 'close_*'"),
         QUIET_HOURS),
        level=1, ladder=("oncall", "cto"),
    ),
    ApprovalSpec(
        "A3", "T8", "M8", -7, "pending", "refund",
        {"amount": 129.0, "currency": "EUR", "order": 88213},
        "finance", 300, at(minutes=-2), "refunds",
        (step(NO_REMOVALS, False, "tool 'refund' does not match 'rm*'"),
         step("refunds", True, "tool 'refund' matches 'refund'; estimated cost 129.0 is >= 100"),
         QUIET_HOURS),
        claimed_by="alice", claim_expires_at=at(minutes=1, seconds=30), estimated_cost=129.0,
    ),
    ApprovalSpec(
        "A4", "T1", "M1", -48, "edited", "publish_report",
        {"channel": "#incidents", "draft": True, "title": "Overnight incidents"},
        "comms", 900, at(minutes=-33), "publishing",
        (step(NO_REMOVALS, False, "tool 'publish_report' does not match 'rm*'"),
         step("publishing", True, "tool 'publish_report' matches 'publish_*'"),
         QUIET_HOURS),
        edited_args={"channel": "#incidents-internal", "draft": False,
                     "title": "Overnight incidents"},
        decided_by="human:bob", decided_at=at(minutes=-47), estimated_cost=0.1,
    ),
)  # fmt: skip
APPROVAL = {approval.key: approval for approval in APPROVALS}


@dataclass(frozen=True)
class SessionSpec:
    key: str
    lane: str

    @property
    def id(self) -> str:
        return fixed_id(-60, 0x5E55, int(self.key[1:]))


SESSIONS = (SessionSpec("S1", "research"), SessionSpec("S2", "triage"))
SESSION = {session.key: session for session in SESSIONS}


@dataclass(frozen=True)
class AlertSpec:
    key: str
    minutes: float
    state: str
    severity: str
    alert_type: str
    subject_type: str
    subject_id: str
    message: str
    by: str | None = None

    @property
    def id(self) -> str:
        return fixed_id(self.minutes, 0xA1E0, int(self.key[2:]))


ALERTS = (
    AlertSpec("AL1", -5, "open", "error", "attested_file", "lane", "triage",
              "AGENTS.md in lane triage changed since its baseline"),
    AlertSpec("AL2", -25, "acked", "warn", "slo_breach", "lane", "research",
              "p95 mission latency 182 s over the 120 s objective", by="human:alice"),
    AlertSpec("AL3", -45, "resolved", "error", "policy_invalid", "policy", "policy.toml",
              "rules[3].deadline_s: must be a positive integer", by="human:bob"),
)  # fmt: skip
ALERT = {alert.key: alert for alert in ALERTS}

EVENTS = (
    (-14.8, "progress", {"percent": 40, "step": "build"}),
    (-14.3, "log", {"line": "build 4812: 1204 tests passed"}),
    (-13.9, "progress", {"percent": 80, "step": "package"}),
    (-13.5, "action", {"action_id": "act-1", "tool": "deploy"}),
    (-13.4, "log", {"line": "waiting for release-lead to approve deploy"}),
)
"""The deploy's turn's recent events (shown in the approval's detail)."""


# --- seeding -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """A ledger entry to append (sorted by time before appending)."""

    at: str
    actor: str
    action: str
    subject_type: str
    subject_id: str
    from_state: str | None
    to_state: str | None
    payload: dict[str, Any]


def _sql(txn: WriteTxn, statement: str, params: dict[str, Any]) -> None:
    txn.conn.execute(text(statement), params)


def _turns(txn: WriteTxn, entries: list[Entry]) -> None:
    for turn in TURNS:
        created = at(turn.minutes)
        _sql(txn, (
            "INSERT INTO turns (id, workspace, state, version, attempt, created_at, updated_at, "
            "data, lane, lease_owner, lease_expires_at, objective, input, budget, deliverable, "
            "error, dead_letter, held_until) VALUES (:id, :w, :state, 3, :attempt, :created, "
            ":created, '{}', :lane, :owner, :expires, :objective, '{}', NULL, :deliverable, "
            ":error, :dead_letter, :held_until)"
        ), {
            "id": turn.id, "w": WORKSPACE, "state": turn.state, "attempt": turn.attempt,
            "created": created, "lane": turn.lane, "owner": turn.lease_owner,
            "expires": turn.lease_expires_at, "objective": turn.objective,
            "deliverable": None if turn.deliverable is None else canonical_text(turn.deliverable),
            "error": turn.error, "dead_letter": turn.dead_letter, "held_until": turn.held_until,
        })  # fmt: skip
        entries.append(Entry(created, "ingest", "turn.created", "turn", turn.id, None, "queued",
                             {"lane": turn.lane, "objective": turn.objective}))  # fmt: skip
    finals = {
        "T1": (-46, "node-a", "running", "completed"),
        "T2": (-38, "node-a", "running", "failed"),
        "T5": (-25, "erin", "running", "taken_over"),
    }
    for key, (minutes, actor, old, new) in finals.items():
        entries.append(Entry(at(minutes), actor, f"turn.{new}", "turn", TURN[key].id, old, new,
                             {"version": 3}))  # fmt: skip


def _missions(txn: WriteTxn, entries: list[Entry]) -> None:
    for mission in MISSIONS:
        created = at(mission.minutes)
        turn = TURN[mission.turn]
        _sql(txn, (
            "INSERT INTO decisions (id, workspace, at, kind, turn_id, mission_id, action_key, "
            "lane, tool, args, estimated_cost, outcome, verdict, rule, trace, policy_hash, "
            "decided_by) VALUES (:id, :w, :at, 'dispatch', :turn, :mission, NULL, :lane, "
            "'mission.dispatch', '{}', 0.25, 'allow', 'allow', NULL, :trace, :hash, 'policy')"
        ), {
            "id": mission.decision_id, "w": WORKSPACE, "at": created, "turn": turn.id,
            "mission": mission.id, "lane": mission.lane, "hash": POLICY_HASH,
            "trace": canonical_text([
                step(NO_REMOVALS, False, "tool 'mission.dispatch' does not match 'rm*'"),
                QUIET_HOURS,
            ]),
        })  # fmt: skip
        # Missions are born queued and move to running only with an allowing decision (the
        # schema's triggers hold every writer to that, this one too).
        _sql(txn, (
            "INSERT INTO missions (id, workspace, state, version, attempt, created_at, "
            "updated_at, data, turn_id, lane, role, number, decision_id) VALUES (:id, :w, "
            "'queued', 1, 0, :created, :created, '{}', :turn, :lane, :role, :number, :decision)"
        ), {
            "id": mission.id, "w": WORKSPACE, "created": created, "turn": turn.id,
            "lane": mission.lane, "role": mission.role, "number": mission.number,
            "decision": mission.decision_id,
        })  # fmt: skip
        started = at(mission.minutes, 5)
        _sql(txn, (
            "UPDATE missions SET state = 'running', version = 2, attempt = :attempt, "
            "started_at = :started, updated_at = :started WHERE id = :id"
        ), {"id": mission.id, "attempt": mission.attempt, "started": started})  # fmt: skip
        finished = None if mission.finished_minutes is None else at(mission.finished_minutes)
        _sql(txn, (
            "UPDATE missions SET state = :state, version = 3, lease_owner = :owner, "
            "lease_expires_at = :expires, session_id = :session, finished_at = :finished, "
            "error = :error, updated_at = COALESCE(:finished, :started) WHERE id = :id"
        ), {
            "id": mission.id, "state": mission.state, "owner": mission.lease_owner,
            "expires": mission.lease_expires_at, "finished": finished, "started": started,
            "session": None if mission.session is None else SESSION[mission.session].id,
            "error": mission.error,
        })  # fmt: skip
        entries.append(Entry(created, "node-a", "mission.created", "mission", mission.id, None,
                             "queued", {"lane": mission.lane, "role": mission.role,
                                        "turn": turn.id}))  # fmt: skip
        if finished is not None:
            entries.append(Entry(finished, "node-a", f"mission.{mission.state}", "mission",
                                 mission.id, "running", mission.state, {"version": 3}))  # fmt: skip


def _approvals(txn: WriteTxn, entries: list[Entry]) -> None:
    for approval in APPROVALS:
        created = at(approval.minutes)
        turn = TURN[approval.turn]
        mission = MISSION[approval.mission]
        decided = approval.state == "edited"
        _sql(txn, (
            "INSERT INTO decisions (id, workspace, at, kind, turn_id, mission_id, action_key, "
            "lane, tool, args, estimated_cost, outcome, verdict, rule, trace, policy_hash, "
            "approval_id, decided_by) VALUES (:id, :w, :at, 'action', :turn, :mission, :key, "
            ":lane, :tool, :args, :cost, 'require_approval', :verdict, :rule, :trace, :hash, "
            ":approval, :decided_by)"
        ), {
            "id": approval.decision_id, "w": WORKSPACE, "at": created, "turn": turn.id,
            "mission": mission.id, "key": approval.action_key, "lane": approval.lane,
            "tool": approval.tool, "args": canonical_text(approval.args),
            "cost": approval.estimated_cost, "verdict": "allow" if decided else "pending",
            "rule": approval.rule, "trace": canonical_text(list(approval.trace)),
            "hash": POLICY_HASH, "approval": approval.id,
            "decided_by": approval.decided_by or "policy",
        })  # fmt: skip
        _sql(txn, (
            "INSERT INTO approvals (id, workspace, state, version, attempt, created_at, "
            "updated_at, data, turn_id, action_id, mission_id, decision_id, action_key, kind, "
            "lane, tool, args, edited_args, approver, level, ladder, on_expiry, deadline_s, "
            "deadline_at, claimed_by, claim_expires_at, decided_by, decided_at, requested_by, "
            "estimated_cost) VALUES (:id, :w, :state, :version, 0, :created, :updated, :data, "
            ":turn, :action, :mission, :decision, :key, 'action', :lane, :tool, :args, :edited, "
            ":approver, :level, :ladder, 'reject', :deadline_s, :deadline_at, :claimed_by, "
            ":claim_expires, :decided_by, :decided_at, :requested_by, :cost)"
        ), {
            "id": approval.id, "w": WORKSPACE, "state": approval.state,
            "version": 1 + approval.level + bool(approval.claimed_by) + decided,
            "created": created, "updated": approval.decided_at or created,
            "data": canonical_text({"policy_hash": POLICY_HASH, "rule": approval.rule}),
            "turn": turn.id, "action": f"act-{approval.key[1:]}", "mission": mission.id,
            "decision": approval.decision_id, "key": approval.action_key, "lane": approval.lane,
            "tool": approval.tool, "args": canonical_text(approval.args),
            "edited": None if approval.edited_args is None
            else canonical_text(approval.edited_args),
            "approver": approval.approver, "level": approval.level,
            "ladder": canonical_text(list(approval.ladder)), "deadline_s": approval.deadline_s,
            "deadline_at": approval.deadline_at, "claimed_by": approval.claimed_by,
            "claim_expires": approval.claim_expires_at, "decided_by": approval.decided_by,
            "decided_at": approval.decided_at, "requested_by": mission.lease_owner or "node-a",
            "cost": approval.estimated_cost,
        })  # fmt: skip
        entries.append(Entry(created, "node-a", "approval.requested", "approval", approval.id,
                             None, "pending", {"tool": approval.tool, "args": approval.args,
                                               "rule": approval.rule}))  # fmt: skip
    a2, a3, a4 = APPROVAL["A2"], APPROVAL["A3"], APPROVAL["A4"]
    entries.append(Entry(at(-4), "ladder", "approval.escalated", "approval", a2.id, "pending",
                         "escalated", {"approver": "oncall", "level": 1}))  # fmt: skip
    entries.append(Entry(at(-1), "alice", "approval.claimed", "approval", a3.id, None, None,
                         {"claimed_by": "alice", "until": a3.claim_expires_at}))  # fmt: skip
    entries.append(Entry(str(a4.decided_at), "bob", "approval.edited", "approval", a4.id,
                         "pending", "edited", {"edited_args": a4.edited_args}))  # fmt: skip
    for offset, (minutes, kind, data) in enumerate(EVENTS):
        _sql(txn, (
            "INSERT INTO mission_events (mission_id, turn_id, workspace, at, type, data) "
            "VALUES (:mission, :turn, :w, :at, :type, :data)"
        ), {
            "mission": MISSION["M5"].id, "turn": TURN["T4"].id, "w": WORKSPACE,
            "at": at(minutes, offset), "type": kind, "data": canonical_text(data),
        })  # fmt: skip


def _sessions_alerts_flags(txn: WriteTxn, entries: list[Entry], force_all: bool) -> None:
    for session in SESSIONS:
        _sql(txn, (
            "INSERT INTO sessions (id, workspace, state, version, attempt, created_at, "
            "updated_at, data, lane, lease_owner, lease_expires_at, heartbeat_at, workdir) "
            "VALUES (:id, '_runtime', 'active', 2, 1, :created, :heartbeat, '{}', :lane, "
            "'node-a', :expires, :heartbeat, :workdir)"
        ), {
            "id": session.id, "created": at(-60), "heartbeat": at(seconds=-5),
            "lane": session.lane, "expires": at(seconds=45),
            "workdir": f"state/lanes/{session.lane}",
        })  # fmt: skip
        entries.append(Entry(at(-60), "node-a", "session.created", "session", session.id, None,
                             "idle", {"lane": session.lane}))  # fmt: skip
    for alert in ALERTS:
        created = at(alert.minutes)
        _sql(txn, (
            "INSERT INTO alerts (id, workspace, state, version, attempt, created_at, updated_at, "
            "data, alert_type, severity, subject_type, subject_id, dedupe, message, acked_by, "
            "resolved_by) VALUES (:id, :w, :state, :version, 0, :created, :created, '{}', "
            ":type, :severity, :subject_type, :subject_id, :dedupe, :message, :acked, :resolved)"
        ), {
            "id": alert.id, "w": WORKSPACE, "state": alert.state,
            "version": {"open": 1, "acked": 2, "resolved": 2}[alert.state], "created": created,
            "type": alert.alert_type, "severity": alert.severity,
            "subject_type": alert.subject_type, "subject_id": alert.subject_id,
            "dedupe": f"{alert.alert_type}:{alert.subject_id}", "message": alert.message,
            "acked": alert.by if alert.state == "acked" else None,
            "resolved": alert.by if alert.state == "resolved" else None,
        })  # fmt: skip
        entries.append(Entry(created, "drift", "alert.opened", "alert", alert.id, None, "open",
                             {"type": alert.alert_type, "severity": alert.severity,
                              "message": alert.message}))  # fmt: skip
        if alert.state != "open":
            entries.append(Entry(at(alert.minutes + 2), str(alert.by).removeprefix("human:"),
                                 f"alert.{alert.state}", "alert", alert.id, "open", alert.state,
                                 {"version": 2}))  # fmt: skip
    flags = [("triage", "paused", -12), ("deploys", "force_fallback", -16)]
    if force_all:
        flags.append(("*", "force_fallback", -0.5))
    for lane, flag, minutes in flags:
        _sql(txn, (
            "INSERT INTO lane_flags (lane, paused, shadow, force_fallback, version, updated_at) "
            "VALUES (:lane, :paused, 0, :forced, 2, :at)"
        ), {
            "lane": lane, "paused": int(flag == "paused"),
            "forced": int(flag == "force_fallback"), "at": at(minutes),
        })  # fmt: skip
        action = "lane.paused" if flag == "paused" else "lane.force_fallback_on"
        entries.append(Entry(at(minutes), "alice", action, "lane", lane, None, None,
                             {flag: True}))  # fmt: skip


def _fill(txn: WriteTxn, force_all: bool) -> int:
    entries: list[Entry] = []
    _turns(txn, entries)
    _missions(txn, entries)
    _approvals(txn, entries)
    _sessions_alerts_flags(txn, entries, force_all)
    for entry in sorted(entries, key=lambda e: e.at):  # stable: ties keep their order
        txn.ledger.append(
            at=entry.at, workspace=WORKSPACE, actor=entry.actor, action=entry.action,
            subject_type=entry.subject_type, subject_id=entry.subject_id,
            from_state=entry.from_state, to_state=entry.to_state, payload=entry.payload,
        )  # fmt: skip
    return len(entries)


async def _seed(path: Path, *, force_all: bool, fill: bool) -> None:
    db = await open_database(str(path))
    try:
        if fill:
            async with Writer(db, clock) as writer:
                await writer.submit(lambda txn: _fill(txn, force_all))
    finally:
        await db.dispose()


def seed_world(path: Path, *, force_all: bool = False) -> None:
    """Create the migrated database at ``path`` and fill it with the fixed world
    (``force_all``: fallback is also forced on every lane)."""
    asyncio.run(_seed(path, force_all=force_all, fill=True))


def empty_world(path: Path) -> None:
    """Create the migrated database at ``path`` with nothing in it."""
    asyncio.run(_seed(path, force_all=False, fill=False))


class WorldServer:
    """The control API a daemon serves, over the world's database, on ``quarterdeck.sock``
    beside it; from a thread of its own, as the app under test runs its own event loop. No
    runtime runs on the world (nothing in it may move): the API reads, and carries out no
    command."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.address = ApiAddress(socket_path=path.parent / "quarterdeck.sock")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: ControlServer | None = None
        self._db: Database | None = None

    def start(self) -> ApiAddress:
        """Serve the API; its address."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self.address

    async def _start(self) -> None:
        self._db = Database(normalize_url(str(self.path)))
        self._server = ControlServer(
            roster=Roster.default(daemon_user()), submit=_no_submit, command=_no_command,
            socket_path=self.path.parent / "quarterdeck.sock", db=self._db, node_id="world",
        )  # fmt: skip
        await self._server.start()

    def stop(self) -> None:
        """Stop serving and the thread."""
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()

    async def _stop(self) -> None:
        if self._server is not None:
            await self._server.stop()
        if self._db is not None:
            await self._db.dispose()


async def _no_submit(envelopes: Any) -> list[IngestResult]:
    raise AssertionError("the fixed world takes no envelopes")


async def _no_command(
    workspace: str, payload: Mapping[str, Any], principal: Principal, key: str | None
) -> dict[str, Any]:
    raise AssertionError("the fixed world carries out no command")


SERVED: dict[Path, WorldServer] = {}
"""The worlds served for the running test (:func:`stop_serving` stops them)."""


def stop_serving() -> None:
    """Stop every world's API."""
    while SERVED:
        SERVED.popitem()[1].stop()


def attach(path: Path, *, read_only: bool = False) -> ApiConsole:
    """The console ``quarterdeck attach`` opens, on the API served over the database at
    ``path`` (started on first use), with the fixed header text; this OS user, as the daemon
    takes it."""
    if path not in SERVED:
        SERVED[path] = WorldServer(path)
        SERVED[path].start()
    address = SERVED[path].address
    return ApiConsole(
        address.client(read_only=read_only), os_principal(), target=TARGET,
        read_only=read_only, lanes=LANES, reject_reasons=REJECT_REASONS,
    )  # fmt: skip
