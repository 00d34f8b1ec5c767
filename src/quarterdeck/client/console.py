"""The control center's window on a runtime: what the screen shows, read from the store in
bounded pages, and how a supervisor's actions travel. Nothing here imports Textual; the TUI
renders what a :class:`Console` returns and never touches the database itself.

:class:`EmbeddedConsole` sits beside a runtime in the same process (actions go straight to it;
changes are seen from its writer's commits). A console on a daemon in another process goes
through its control API: :class:`quarterdeck.client.api_console.ApiConsole`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, Protocol

from quarterdeck.domain.authority import Principal
from quarterdeck.domain.clock import Clock, parse_instant, utc_now
from quarterdeck.domain.commands import Command
from quarterdeck.domain.envelope import RUNTIME_WORKSPACE
from quarterdeck.runtime.peers import PeerCredentials, supervisor_principal
from quarterdeck.store.database import Database
from quarterdeck.store.ledger import verify_ledger
from quarterdeck.store.queries import get_item, slo
from quarterdeck.store.queries.lanes import LaneOverview, lane_overview
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
    "Console",
    "EmbeddedConsole",
    "Header",
    "LaneOverview",
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
    """What the console shows: ``embedded runtime (node ...)`` or ``attached to <address>``."""
    alive: int | None
    """Attached: how many runtime nodes are known alive (the daemon answering counts one);
    embedded: None (the runtime is this process)."""
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
    principal: Principal
    """Who gives this console's commands."""

    async def snapshot(self) -> Snapshot:
        """Read the live panes' contents."""
        ...

    async def ledger_page(
        self, before_seq: int | None, limit: int = LEDGER_PAGE
    ) -> list[LedgerLine]:
        """Ledger entries older than ``before_seq`` (the newest when None), newest first."""
        ...

    async def lanes(self) -> tuple[LaneOverview, ...]:
        """Every lane at a glance (see :class:`~quarterdeck.store.queries.lanes.LaneOverview`):
        state, flags, slots and what holds them, queue, failure and fallback rates."""
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
    """A console's reads from the store."""

    def __init__(
        self,
        db: Database,
        *,
        target: str,
        lanes: tuple[str, ...] = (),
        reject_reasons: tuple[str, ...] = (),
        read_only: bool = False,
        principal: Principal | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self.db = db
        self.target = target
        self.lane_names = lanes
        """The configured lanes, in order (learnt from the sessions when empty)."""
        self.concurrency: dict[str, int] = {}
        """The configured lanes' concurrency, when known (an embedded runtime's)."""
        self.reject_reasons = reject_reasons
        self.read_only = read_only
        self.principal = principal or os_principal()
        self.clock = clock
        self._slo_cache: tuple[float, Mapping[str, Any]] | None = None

    async def snapshot(self) -> Snapshot:
        """Read the live panes' contents in one snapshot transaction."""
        panes = await read_panes(
            self.db, approvals=APPROVALS_SHOWN, turns=TURNS_SHOWN, missions=MISSIONS_SHOWN,
            alerts=ALERTS_SHOWN,
        )  # fmt: skip
        figures = await self._slo()
        lanes = self.lane_names or tuple(sorted({s.lane for s in panes.sessions if s.lane}))
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

    async def lanes(self) -> tuple[LaneOverview, ...]:
        """Every lane at a glance, the configured ones first."""
        known = self.concurrency or self.lane_names
        return await lane_overview(self.db, known, now=self.clock())

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


def os_principal() -> Principal:
    """The person running this process, as the OS knows them (user, uid and groups)."""
    return supervisor_principal(PeerCredentials(os.getpid(), os.getuid(), os.getgid()))


class EmbeddedConsole(_StoreConsole):
    """A console beside a runtime in this process."""

    def __init__(
        self, runtime: Any, *, read_only: bool = False, principal: Principal | None = None
    ) -> None:
        policy = runtime.plan.policy
        super().__init__(
            runtime.db,
            target=f"embedded runtime ({runtime.node_id})",
            lanes=tuple(runtime.config.lanes),
            reject_reasons=tuple(policy.reject_reasons) if policy is not None else (),
            read_only=read_only,
            principal=principal,
            clock=runtime.clock,
        )
        self.runtime = runtime
        self.concurrency = {name: lane.concurrency for name, lane in runtime.config.lanes.items()}
        self._changed = asyncio.Event()
        self._head = -1
        runtime.writer.on_commit(self._on_commit)

    def _on_commit(self, head_seq: int) -> None:
        if head_seq != self._head:
            self._head = head_seq
            self._changed.set()

    async def command(self, command: Command, workspace: str | None = None) -> dict[str, Any]:
        """Give a command to the runtime for this console's principal (through a receipt like
        any other)."""
        self._check_writable()
        result: dict[str, Any] = await self.runtime.command(
            command_workspace(workspace), command, self.principal
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
