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

from quarterdeck.client.connection import Connection
from quarterdeck.domain.clock import Clock, format_instant, parse_instant, utc_now
from quarterdeck.domain.commands import Command
from quarterdeck.domain.envelope import RUNTIME_WORKSPACE
from quarterdeck.store.changes import ChangeFeed
from quarterdeck.store.database import Database
from quarterdeck.store.ledger import verify_ledger
from quarterdeck.store.queries import get_item, slo
from quarterdeck.store.queries.panes import (
    AlertLine,
    ApprovalLine,
    LedgerLine,
    MissionLine,
    SessionLine,
    TurnLine,
    ledger_page,
    read_panes,
)

__all__ = [
    "ALERTS_SHOWN",
    "APPROVALS_SHOWN",
    "COMMAND_WORKSPACE",
    "LEDGER_PAGE",
    "MISSIONS_SHOWN",
    "SLO_EVERY_S",
    "TURNS_SHOWN",
    "AlertLine",
    "ApprovalLine",
    "AttachedConsole",
    "Console",
    "EmbeddedConsole",
    "Header",
    "LedgerLine",
    "MissionLine",
    "ReadOnly",
    "SessionLine",
    "Snapshot",
    "TurnLine",
    "args_preview",
    "command_workspace",
    "remaining_s",
]

APPROVALS_SHOWN = 1_000
TURNS_SHOWN = 200
MISSIONS_SHOWN = 200
ALERTS_SHOWN = 200
LEDGER_PAGE = 200
SLO_EVERY_S = 5.0


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

    async def command(self, command: Command, workspace: str | None = None) -> dict[str, Any]:
        """Send a supervisor command, applied in ``workspace`` (see :func:`command_workspace`);
        return its result. Raises :class:`ReadOnly`."""
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


COMMAND_WORKSPACE = "default"
"""Where a command about one of the runtime's own items (an alert about a lane, say) is
applied: those items belong to every workspace, and no envelope may name theirs."""


def command_workspace(workspace: str | None) -> str:
    """Where a console command is applied: its item's workspace, ``default`` when it names
    none or the runtime's."""
    if not workspace or workspace == RUNTIME_WORKSPACE:
        return COMMAND_WORKSPACE
    return workspace


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
        panes = await read_panes(
            self.db, approvals=APPROVALS_SHOWN, turns=TURNS_SHOWN, missions=MISSIONS_SHOWN,
            alerts=ALERTS_SHOWN, live_since=self._live_since(),
        )  # fmt: skip
        figures = await self._slo()
        lanes = self.lanes or tuple(sorted({s.lane for s in panes.sessions if s.lane}))
        header = Header(
            target=self.target,
            alive=panes.live_nodes,
            read_only=self.read_only,
            force_all=panes.force_all,
            forced=panes.forced,
            paused=panes.paused,
            turns=panes.turn_counts,
            approvals_open=panes.approvals_open,
            alerts_open=panes.alerts_open,
            missions_live=panes.missions_live,
            slo=figures,
            head_seq=panes.head_seq,
        )
        return Snapshot(
            header=header,
            approvals=panes.approvals,
            turns=panes.turns,
            missions=panes.missions,
            sessions=panes.sessions,
            alerts=panes.alerts,
            lanes=lanes,
            reject_reasons=self.reject_reasons,
        )

    def _live_since(self) -> str | None:
        """Count the nodes whose session leases outlive this instant (None: do not count)."""
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
        return await ledger_page(self.db, before, limit)

    async def detail(self, item_id: str) -> dict[str, Any] | None:
        """One item with its history (and an approval's context)."""
        return await get_item(self.db, item_id, workspace=None)

    async def verify_ledger(self) -> dict[str, Any]:
        """Verify the ledger's chain (off the event loop's critical path: it reads in pages)."""
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

    async def command(self, command: Command, workspace: str | None = None) -> dict[str, Any]:
        """Give a command to the runtime (recorded with this console's actor unless it names
        one, through a receipt like any other)."""
        self._check_writable()
        result: dict[str, Any] = await self.runtime.command(
            command_workspace(workspace), command, actor=self.actor
        )
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
        self._client: Connection | None = None

    def _live_since(self) -> str | None:
        """The daemon counts as alive while one of its sessions holds an unexpired lease."""
        return format_instant(self.clock())

    async def command(self, command: Command, workspace: str | None = None) -> dict[str, Any]:
        """Send a command envelope (with this console's actor unless it names one) and wait
        for the daemon's result."""
        self._check_writable()
        if self._client is None:
            self._client = Connection(self.db.url)
            await self._client.__aenter__()
        self._client.workspace = command_workspace(workspace)
        if command.actor is None:
            command = command.model_copy(update={"actor": self.actor})
        return await self._client.command(command, timeout_s=self.command_timeout_s)

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
