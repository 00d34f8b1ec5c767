"""The control center's read model: the rows its live panes list and the counts its header
shows, read in one snapshot transaction, and the ledger in pages by seq."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import case, distinct, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncConnection

from quarterdeck.domain.states import MISSION_HOLDS_LEASE
from quarterdeck.store.database import Database
from quarterdeck.store.flags import read_flags
from quarterdeck.store.ledger import LEDGER, ledger_head
from quarterdeck.store.queries.listings import (
    APPROVALS,
    ITEM_TABLES,
    columns_of,
    newest_first,
    open_approvals_select,
    state_counts,
)

TURNS = ITEM_TABLES["turn"]
MISSIONS = ITEM_TABLES["mission"]
SESSIONS = ITEM_TABLES["session"]
ALERTS = ITEM_TABLES["alert"]


@dataclass(frozen=True, slots=True)
class ApprovalLine:
    """One open approval as the Approvals pane lists it."""

    id: str
    workspace: str
    state: str
    kind: str
    tool: str
    lane: str
    approver: str
    level: int
    deadline_at: str
    snoozed_until: str | None
    claimed_by: str | None
    claim_expires_at: str | None
    turn_id: str | None
    action_key: str
    args: str
    created_at: str


@dataclass(frozen=True, slots=True)
class TurnLine:
    """One turn as the Turns pane lists it."""

    id: str
    workspace: str
    state: str
    lane: str
    attempt: int
    objective: str
    dead_letter: str | None
    lease_owner: str | None
    updated_at: str


@dataclass(frozen=True, slots=True)
class MissionLine:
    """One mission with its lease, as the Missions pane lists it."""

    id: str
    turn_id: str
    state: str
    lane: str
    role: str
    attempt: int
    lease_owner: str | None
    lease_expires_at: str | None
    session_id: str | None
    updated_at: str


@dataclass(frozen=True, slots=True)
class SessionLine:
    """One lane session (a durable worker identity) and its lease."""

    id: str
    lane: str
    state: str
    lease_owner: str | None
    lease_expires_at: str | None


@dataclass(frozen=True, slots=True)
class AlertLine:
    """One drift alert."""

    id: str
    workspace: str
    state: str
    severity: str
    alert_type: str
    subject_id: str
    message: str
    created_at: str


@dataclass(frozen=True, slots=True)
class LedgerLine:
    """One ledger entry, without its payload."""

    seq: int
    at: str
    workspace: str
    actor: str
    action: str
    subject_type: str
    subject_id: str
    from_state: str | None
    to_state: str | None


@dataclass(frozen=True, slots=True)
class Panes:
    """What the live panes list and the header counts, from one snapshot."""

    approvals: tuple[ApprovalLine, ...]
    """Open approvals, nearest deadline first."""
    turns: tuple[TurnLine, ...]
    """Turns, newest first."""
    missions: tuple[MissionLine, ...]
    """Missions, newest first."""
    sessions: tuple[SessionLine, ...]
    """Sessions not retired, by lane."""
    alerts: tuple[AlertLine, ...]
    """Alerts, open ones first, then acknowledged ones, each newest first."""
    turn_counts: Mapping[str, int]
    """Turns by state (states with none are left out)."""
    approvals_open: int
    alerts_open: int
    missions_live: int
    head_seq: int
    force_all: bool
    forced: tuple[str, ...]
    paused: tuple[str, ...]
    live_nodes: int | None
    """How many nodes hold a lease on a session (None when not asked)."""


_APPROVAL_COLUMNS = columns_of(
    APPROVALS,
    "id workspace state kind tool lane approver level deadline_at snoozed_until claimed_by "
    "claim_expires_at turn_id action_key args created_at",
)
_TURN_COLUMNS = columns_of(
    TURNS, "id workspace state lane attempt objective dead_letter lease_owner updated_at"
)
_MISSION_COLUMNS = [
    MISSIONS.c.id,
    MISSIONS.c.turn_id,
    MISSIONS.c.state,
    func.coalesce(MISSIONS.c.routed_lane, MISSIONS.c.lane).label("lane"),
    *columns_of(MISSIONS, "role attempt lease_owner lease_expires_at session_id updated_at"),
]
_SESSIONS = (
    select(*columns_of(SESSIONS, "id lane state lease_owner lease_expires_at"))
    .where(SESSIONS.c.state != "retired")
    .order_by(SESSIONS.c.lane, SESSIONS.c.id)
)
_ALERTS = select(
    *columns_of(ALERTS, "id workspace state severity alert_type subject_id message created_at")
).order_by(
    case(
        (ALERTS.c.state == "open", literal_column("0")),
        (ALERTS.c.state == "acked", literal_column("1")),
        else_=literal_column("2"),
    ),
    ALERTS.c.created_at.desc(),
)
_OPEN_COUNTS = select(
    open_approvals_select(func.count()).scalar_subquery().label("approvals"),
    select(func.count())
    .select_from(ALERTS)
    .where(ALERTS.c.state == "open")
    .scalar_subquery()
    .label("alerts"),
    select(func.count())
    .select_from(MISSIONS)
    .where(MISSIONS.c.state.in_(sorted(MISSION_HOLDS_LEASE)))
    .scalar_subquery()
    .label("missions"),
)
_LEDGER_COLUMNS = columns_of(
    LEDGER, "seq at workspace actor action subject_type subject_id from_state to_state"
)


async def read_panes(
    db: Database,
    *,
    approvals: int,
    turns: int,
    missions: int,
    alerts: int,
    live_since: str | None = None,
) -> Panes:
    """Read the panes in one snapshot transaction.

    Args:
        approvals, turns, missions, alerts: list at most this many of each.
        live_since: count the nodes holding a session lease that expires after this instant
            (None: do not count).
    """
    approvals_query = open_approvals_select(*_APPROVAL_COLUMNS).order_by(
        APPROVALS.c.deadline_at, APPROVALS.c.id
    )
    async with db.read() as conn:
        approval_rows = (await conn.execute(approvals_query.limit(approvals))).all()
        turn_rows = (await conn.execute(newest_first(TURNS, _TURN_COLUMNS, limit=turns))).all()
        mission_rows = (
            await conn.execute(newest_first(MISSIONS, _MISSION_COLUMNS, limit=missions))
        ).all()
        session_rows = (await conn.execute(_SESSIONS)).all()
        alert_rows = (await conn.execute(_ALERTS.limit(alerts))).all()
        turn_counts = await state_counts(conn, TURNS)
        open_counts = (await conn.execute(_OPEN_COUNTS)).one()
        head_seq, _hash = await ledger_head(conn)
        flags = await conn.run_sync(lambda sync: read_flags(sync))
        live = None if live_since is None else await _live_nodes(conn, live_since)
    return Panes(
        approvals=tuple(ApprovalLine(
            r.id, r.workspace, r.state, r.kind or "", r.tool or "", r.lane or "",
            r.approver or "", int(r.level or 0), r.deadline_at or "", r.snoozed_until,
            r.claimed_by, r.claim_expires_at, r.turn_id, r.action_key or "",
            r.args or "{}", r.created_at,
        ) for r in approval_rows),
        turns=tuple(TurnLine(
            r.id, r.workspace, r.state, r.lane or "", int(r.attempt), r.objective or "",
            r.dead_letter, r.lease_owner, r.updated_at,
        ) for r in turn_rows),
        missions=tuple(MissionLine(
            r.id, r.turn_id or "", r.state, r.lane or "", r.role or "", int(r.attempt),
            r.lease_owner, r.lease_expires_at, r.session_id, r.updated_at,
        ) for r in mission_rows),
        sessions=tuple(SessionLine(
            r.id, r.lane or "", r.state, r.lease_owner, r.lease_expires_at
        ) for r in session_rows),
        alerts=tuple(AlertLine(
            r.id, r.workspace, r.state, r.severity or "", r.alert_type or "",
            r.subject_id or "", r.message or "", r.created_at,
        ) for r in alert_rows),
        turn_counts=turn_counts,
        approvals_open=int(open_counts.approvals),
        alerts_open=int(open_counts.alerts),
        missions_live=int(open_counts.missions),
        head_seq=int(head_seq),
        force_all=flags.force_all,
        forced=tuple(sorted(flags.forced)),
        paused=tuple(sorted(flags.paused)),
        live_nodes=live,
    )  # fmt: skip


async def _live_nodes(conn: AsyncConnection, since: str) -> int:
    """How many nodes hold a session lease that expires after ``since``."""
    query = select(func.count(distinct(SESSIONS.c.lease_owner))).where(
        SESSIONS.c.lease_expires_at > since
    )
    return int((await conn.execute(query)).scalar() or 0)


async def ledger_page(db: Database, before_seq: int, limit: int) -> list[LedgerLine]:
    """Ledger entries with a seq below ``before_seq``, newest first, at most ``limit``."""
    query = (
        select(*_LEDGER_COLUMNS)
        .where(LEDGER.c.seq < before_seq)
        .order_by(LEDGER.c.seq.desc())
        .limit(limit)
    )
    async with db.read() as conn:
        rows = (await conn.execute(query)).all()
    return [
        LedgerLine(
            int(r.seq), r.at, r.workspace, r.actor, r.action, r.subject_type, r.subject_id,
            r.from_state, r.to_state,
        )
        for r in rows
    ]  # fmt: skip
