"""The control center's window on a runtime: what the screen shows, read from the store in
bounded pages, and how a supervisor's actions travel. Nothing here imports Textual; the TUI
renders what a :class:`Console` returns and never touches the database itself.

Two consoles: :class:`EmbeddedConsole` sits beside a runtime in the same process (actions go
straight to it; changes are seen from its writer's commits), :class:`AttachedConsole` opens a
running daemon's database from another process (actions travel as command envelopes; changes
are seen through the store's change feed; the daemon counts as alive while one of its sessions
holds an unexpired lease).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, Protocol

from sqlalchemy import text

from quarterdeck.domain.clock import Clock, format_instant, parse_instant, utc_now
from quarterdeck.domain.envelope import RUNTIME_WORKSPACE
from quarterdeck.store.changes import ChangeFeed
from quarterdeck.store.database import Database
from quarterdeck.store.flags import read_flags
from quarterdeck.store.queries import get_item, slo

APPROVALS_SHOWN = 1_000
TURNS_SHOWN = 200
MISSIONS_SHOWN = 200
ALERTS_SHOWN = 200
LEDGER_PAGE = 200
SLO_EVERY_S = 5.0


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
class Header:
    """The runtime's state at a glance."""

    target: str
    """What the console shows: ``embedded runtime (node ...)`` or ``attached to <db>``."""
    alive: int | None
    """Attached: how many runtime nodes hold live sessions (0: no daemon running); embedded:
    None (the runtime is this process)."""
    read_only: bool
    force_all: bool
    forced: tuple[str, ...]
    paused: tuple[str, ...]
    turns: Mapping[str, int]
    approvals_open: int
    alerts_open: int
    missions_live: int
    slo: Mapping[str, Any]
    head_seq: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the live panes show, read in one snapshot transaction."""

    header: Header
    approvals: tuple[ApprovalLine, ...]
    turns: tuple[TurnLine, ...]
    missions: tuple[MissionLine, ...]
    sessions: tuple[SessionLine, ...]
    alerts: tuple[AlertLine, ...]
    lanes: tuple[str, ...]
    reject_reasons: tuple[str, ...] = field(default=())


class ReadOnly(Exception):
    """The console is read-only: actions are refused."""


class Console(Protocol):
    """What the control center needs from a runtime."""

    read_only: bool
    actor: str

    async def snapshot(self) -> Snapshot:
        """Read the live panes' contents."""
        ...

    async def ledger_page(
        self, before_seq: int | None, limit: int = LEDGER_PAGE
    ) -> list[LedgerLine]:
        """Ledger entries older than ``before_seq`` (the newest when None), newest first."""
        ...

    async def detail(self, item_id: str) -> dict[str, Any] | None:
        """One item with its history (and an approval's context)."""
        ...

    async def command(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Send a supervisor command; return its result. Raises :class:`ReadOnly`."""
        ...

    async def wait_change(self, timeout_s: float) -> bool:
        """Wait until something changed (True) or ``timeout_s`` passed (False)."""
        ...

    async def verify_ledger(self) -> dict[str, Any]:
        """Verify the ledger's chain."""
        ...

    async def close(self) -> None:
        """Release what the console holds."""
        ...


_APPROVALS = text(
    "SELECT id, workspace, state, kind, tool, lane, approver, level, deadline_at, snoozed_until, "
    "claimed_by, claim_expires_at, turn_id, action_key, args, created_at FROM approvals "
    "WHERE state IN ('pending', 'escalated') ORDER BY created_at, id LIMIT :limit"
)
_TURNS = text(
    "SELECT id, workspace, state, lane, attempt, objective, dead_letter, lease_owner, updated_at "
    "FROM turns ORDER BY id DESC LIMIT :limit"
)
_MISSIONS = text(
    "SELECT id, turn_id, state, COALESCE(routed_lane, lane) AS lane, role, attempt, lease_owner, "
    "lease_expires_at, session_id, updated_at FROM missions ORDER BY id DESC LIMIT :limit"
)
_SESSIONS = text(
    "SELECT id, lane, state, lease_owner, lease_expires_at FROM sessions "
    "WHERE state != 'retired' ORDER BY lane, id"
)
_ALERTS = text(
    "SELECT id, workspace, state, severity, alert_type, subject_id, message, created_at "
    "FROM alerts ORDER BY CASE state WHEN 'open' THEN 0 WHEN 'acked' THEN 1 ELSE 2 END, "
    "created_at DESC LIMIT :limit"
)
_TURN_COUNTS = text("SELECT state, count(*) AS n FROM turns GROUP BY state")
_OPEN_COUNTS = text(
    "SELECT (SELECT count(*) FROM approvals WHERE state IN ('pending', 'escalated')) AS approvals, "
    "(SELECT count(*) FROM alerts WHERE state = 'open') AS alerts, "
    "(SELECT count(*) FROM missions WHERE state IN ('running', 'blocked')) AS missions"
)
_HEAD = text("SELECT seq FROM ledger_head WHERE id = 1")
_LEDGER_BEFORE = text(
    "SELECT seq, at, workspace, actor, action, subject_type, subject_id, from_state, to_state "
    "FROM ledger WHERE seq < :before ORDER BY seq DESC LIMIT :limit"
)
COMMAND_WORKSPACE = "default"
"""Where a command about one of the runtime's own items (an alert about a lane, say) is
applied: those items belong to every workspace, and no envelope may name theirs."""


def split_command(payload: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """A console command's workspace (the item's own; ``default`` when it names none or the
    runtime's) and its body."""
    workspace = str(payload.get("workspace") or COMMAND_WORKSPACE)
    if workspace == RUNTIME_WORKSPACE:
        workspace = COMMAND_WORKSPACE
    return workspace, {k: v for k, v in payload.items() if k != "workspace"}


_LIVE_NODES = text("SELECT count(DISTINCT lease_owner) FROM sessions WHERE lease_expires_at > :now")


class _StoreConsole:
    """Reads shared by both consoles."""

    def __init__(
        self,
        db: Database,
        *,
        target: str,
        lanes: tuple[str, ...] = (),
        reject_reasons: tuple[str, ...] = (),
        read_only: bool = False,
        actor: str | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self.db = db
        self.target = target
        self.lanes = lanes
        self.reject_reasons = reject_reasons
        self.read_only = read_only
        self.actor = actor or _os_user()
        self.clock = clock
        self._slo_cache: tuple[float, Mapping[str, Any]] | None = None

    async def snapshot(self) -> Snapshot:
        """Read the live panes' contents in one snapshot transaction."""
        async with self.db.read() as conn:
            approvals = (await conn.execute(_APPROVALS, {"limit": APPROVALS_SHOWN})).all()
            turns = (await conn.execute(_TURNS, {"limit": TURNS_SHOWN})).all()
            missions = (await conn.execute(_MISSIONS, {"limit": MISSIONS_SHOWN})).all()
            sessions = (await conn.execute(_SESSIONS)).all()
            alerts = (await conn.execute(_ALERTS, {"limit": ALERTS_SHOWN})).all()
            counts = {row.state: int(row.n) for row in (await conn.execute(_TURN_COUNTS)).all()}
            open_counts = (await conn.execute(_OPEN_COUNTS)).one()
            head = (await conn.execute(_HEAD)).scalar() or 0
            flags = await conn.run_sync(lambda sync: read_flags(sync))
            alive = await self._alive_async(conn)
        figures = await self._slo()
        lanes = self.lanes or tuple(sorted({s.lane for s in sessions if s.lane}))
        header = Header(
            target=self.target,
            alive=alive,
            read_only=self.read_only,
            force_all=flags.force_all,
            forced=tuple(sorted(flags.forced)),
            paused=tuple(sorted(flags.paused)),
            turns=counts,
            approvals_open=int(open_counts.approvals),
            alerts_open=int(open_counts.alerts),
            missions_live=int(open_counts.missions),
            slo=figures,
            head_seq=int(head),
        )
        return Snapshot(
            header=header,
            approvals=tuple(ApprovalLine(
                r.id, r.workspace, r.state, r.kind or "", r.tool or "", r.lane or "",
                r.approver or "", int(r.level or 0), r.deadline_at or "", r.snoozed_until,
                r.claimed_by, r.claim_expires_at, r.turn_id, r.action_key or "",
                r.args or "{}", r.created_at,
            ) for r in approvals),
            turns=tuple(TurnLine(
                r.id, r.workspace, r.state, r.lane or "", int(r.attempt), r.objective or "",
                r.dead_letter, r.lease_owner, r.updated_at,
            ) for r in turns),
            missions=tuple(MissionLine(
                r.id, r.turn_id or "", r.state, r.lane or "", r.role or "", int(r.attempt),
                r.lease_owner, r.lease_expires_at, r.session_id, r.updated_at,
            ) for r in missions),
            sessions=tuple(SessionLine(
                r.id, r.lane or "", r.state, r.lease_owner, r.lease_expires_at
            ) for r in sessions),
            alerts=tuple(AlertLine(
                r.id, r.workspace, r.state, r.severity or "", r.alert_type or "",
                r.subject_id or "", r.message or "", r.created_at,
            ) for r in alerts),
            lanes=lanes,
            reject_reasons=self.reject_reasons,
        )  # fmt: skip

    async def _alive_async(self, conn: Any) -> int | None:
        return None

    async def _slo(self) -> Mapping[str, Any]:
        """The SLO figures, read at most every few seconds (they summarise thousands of
        missions and move slowly)."""
        now = time.monotonic()
        if self._slo_cache is None or now - self._slo_cache[0] >= SLO_EVERY_S:
            self._slo_cache = (now, await slo(self.db, None))
        return self._slo_cache[1]

    async def ledger_page(
        self, before_seq: int | None, limit: int = LEDGER_PAGE
    ) -> list[LedgerLine]:
        """Ledger entries older than ``before_seq`` (the newest when None), newest first."""
        before = before_seq if before_seq is not None else 2**62
        async with self.db.read() as conn:
            rows = (await conn.execute(_LEDGER_BEFORE, {"before": before, "limit": limit})).all()
        return [
            LedgerLine(
                int(r.seq), r.at, r.workspace, r.actor, r.action, r.subject_type, r.subject_id,
                r.from_state, r.to_state,
            )
            for r in rows
        ]  # fmt: skip

    async def detail(self, item_id: str) -> dict[str, Any] | None:
        """One item with its history (and an approval's context)."""
        return await get_item(self.db, item_id, workspace=None)

    async def verify_ledger(self) -> dict[str, Any]:
        """Verify the ledger's chain (off the event loop's critical path: it reads in pages)."""
        from quarterdeck.store.ledger import verify_ledger

        result = await verify_ledger(self.db)
        return {
            "ok": result.ok,
            "entries": result.entries,
            "first_bad_seq": result.first_bad_seq,
            "reason": result.reason,
        }

    def _check_writable(self) -> None:
        if self.read_only:
            raise ReadOnly("read-only console: actions are refused (attached with --read-only)")


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "supervisor"


class EmbeddedConsole(_StoreConsole):
    """A console beside a runtime in this process."""

    def __init__(self, runtime: Any, *, read_only: bool = False, actor: str | None = None) -> None:
        policy = runtime.plan.policy
        super().__init__(
            runtime.db,
            target=f"embedded runtime ({runtime.node_id})",
            lanes=tuple(runtime.config.lanes),
            reject_reasons=tuple(policy.reject_reasons) if policy is not None else (),
            read_only=read_only,
            actor=actor,
            clock=runtime.clock,
        )
        self.runtime = runtime
        self._changed = asyncio.Event()
        self._head = -1
        runtime.writer.on_commit(self._on_commit)

    def _on_commit(self, head_seq: int) -> None:
        if head_seq != self._head:
            self._head = head_seq
            self._changed.set()

    async def command(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Apply a command through the runtime (recorded with this console's actor)."""
        self._check_writable()
        workspace, body = split_command(payload)
        result: dict[str, Any] = await self.runtime.command(workspace, body, actor=self.actor)
        return result

    async def wait_change(self, timeout_s: float) -> bool:
        """Wait for the runtime's next commit that moved the ledger."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._changed.wait()
        changed = self._changed.is_set()
        self._changed.clear()
        return changed

    async def close(self) -> None:
        """Nothing to release (the runtime is stopped by its owner)."""


class AttachedConsole(_StoreConsole):
    """A console on a running daemon's database, from another process."""

    def __init__(
        self,
        db: Database,
        *,
        read_only: bool = False,
        actor: str | None = None,
        lanes: tuple[str, ...] = (),
        reject_reasons: tuple[str, ...] = (),
        clock: Clock = utc_now,
        command_timeout_s: float = 10.0,
        target: str | None = None,
    ) -> None:
        """``target`` replaces the header's ``attached to <database url>`` description."""
        super().__init__(
            db, target=target or f"attached to {db.display_url}", lanes=lanes,
            reject_reasons=reject_reasons, read_only=read_only, actor=actor, clock=clock,
        )  # fmt: skip
        self.command_timeout_s = command_timeout_s
        self._watch: ChangeFeed | None = None
        self._version = -1
        self._client: Any = None

    async def _alive_async(self, conn: Any) -> int | None:
        now = format_instant(self.clock())
        return int((await conn.execute(_LIVE_NODES, {"now": now})).scalar() or 0)

    async def command(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Send a command envelope and wait for the daemon's result."""
        self._check_writable()
        from quarterdeck.client.submit import Client

        if self._client is None:
            self._client = Client(self.db.url)
            await self._client.__aenter__()
        self._client.workspace, body = split_command(payload)
        body.setdefault("actor", self.actor)
        result: dict[str, Any] = await self._client.command(body, timeout_s=self.command_timeout_s)
        return result

    async def wait_change(self, timeout_s: float) -> bool:
        """Wait for a commit by another process (SQLite's data version; PostgreSQL's NOTIFY,
        or polling its ledger head when notifications stop)."""
        if self._watch is None:
            self._watch = ChangeFeed(self.db, poll_s=0.05)
            await self._watch.open()
            self._version = self._watch.version()
        version = await self._watch.wait(self._version, timeout_s)
        changed = version != self._version
        self._version = version
        return changed

    async def close(self) -> None:
        """Close the change watch and the command client."""
        if self._watch is not None:
            await self._watch.close()
            self._watch = None
        if self._client is not None:
            await self._client.__aexit__(None, None, None)
            self._client = None


@lru_cache(maxsize=8_192)
def _instant(text: str) -> datetime:
    return parse_instant(text)


def remaining_s(deadline_at: str | None, now: datetime) -> float | None:
    """Seconds from ``now`` to ``deadline_at`` (negative once past); None without one."""
    if not deadline_at:
        return None
    return (_instant(deadline_at) - now).total_seconds()


@lru_cache(maxsize=8_192)
def args_preview(args: str, width: int = 40) -> str:
    """A one-line preview of JSON arguments."""
    try:
        value = json.loads(args)
    except ValueError:
        value = args
    flat = json.dumps(value, separators=(",", ":"), sort_keys=True)
    return flat if len(flat) <= width else flat[: width - 1] + "…"
