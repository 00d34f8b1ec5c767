"""The control center's window on a running daemon through its control API (``attach``): the
panes from ``GET /v1/console/snapshot``, changes from the ``/v1/console/changes`` long poll,
the ledger, items and verification from their routes, and every action a
``POST /v1/commands`` that the daemon authorizes for the principal it authenticated.

Attached ``read_only``, every request carries the read-only header, so the daemon refuses any
action from this console (the screen refuses them first, but is not what keeps them out).
"""

from __future__ import annotations

import asyncio
from typing import Any, Self

from quarterdeck.client.api import (
    ControlClient,
    ControlError,
    ControlRefused,
    ControlUnavailable,
)
from quarterdeck.client.console import (
    LEDGER_PAGE,
    AlertLine,
    ApprovalLine,
    Header,
    LaneOverview,
    LedgerLine,
    MissionLine,
    ReadOnly,
    SessionLine,
    Snapshot,
    TurnLine,
    command_workspace,
)
from quarterdeck.client.reach import START_HINT, ApiAddress
from quarterdeck.domain.authority import Principal
from quarterdeck.domain.commands import Command

LONG_POLL_S = 30.0
"""The longest one change poll waits (a longer wait is several polls)."""


class ApiConsole:
    """A console on a daemon, through its control API. Open it with :meth:`open`."""

    def __init__(
        self,
        api: ControlClient,
        principal: Principal,
        *,
        target: str,
        read_only: bool = False,
        lanes: tuple[str, ...] = (),
        reject_reasons: tuple[str, ...] = (),
    ) -> None:
        self.api = api
        self.principal = principal
        self.actor = principal.label
        self.target = target
        self.read_only = read_only
        self.lane_names = lanes
        self.reject_reasons = reject_reasons
        self._head = -1

    @classmethod
    async def open(
        cls,
        address: ApiAddress,
        *,
        read_only: bool = False,
        lanes: tuple[str, ...] = (),
        reject_reasons: tuple[str, ...] = (),
    ) -> Self:
        """Connect to the daemon at ``address`` and learn who it takes us for.

        Raises:
            ControlUnavailable: no daemon answers there.
        """
        api = address.client(read_only=read_only)
        try:
            identity = await api.whoami()
        except BaseException:
            await api.close()
            raise
        return cls(
            api, identity.principal, target=f"attached to {address.where}",
            read_only=read_only, lanes=lanes, reject_reasons=reject_reasons,
        )  # fmt: skip

    async def snapshot(self) -> Snapshot:
        """The live panes' contents as the daemon reads them."""
        body = await self.api.console_snapshot()
        top = body["header"]
        self._head = max(self._head, int(top["head_seq"]))
        sessions = tuple(SessionLine(**s) for s in body["sessions"])
        header = Header(
            target=self.target, alive=1, read_only=self.read_only,
            force_all=bool(top["force_all"]), forced=tuple(top["forced"]),
            paused=tuple(top["paused"]), turns=dict(top["turns"]),
            approvals_open=int(top["approvals_open"]), alerts_open=int(top["alerts_open"]),
            missions_live=int(top["missions_live"]), slo=dict(top["slo"]),
            head_seq=int(top["head_seq"]),
        )  # fmt: skip
        return Snapshot(
            header=header,
            approvals=tuple(ApprovalLine(**a) for a in body["approvals"]),
            turns=tuple(TurnLine(**t) for t in body["turns"]),
            missions=tuple(MissionLine(**m) for m in body["missions"]),
            sessions=sessions,
            alerts=tuple(AlertLine(**a) for a in body["alerts"]),
            lanes=self.lane_names or tuple(sorted({s.lane for s in sessions if s.lane})),
            reject_reasons=self.reject_reasons,
        )

    async def ledger_page(
        self, before_seq: int | None, limit: int = LEDGER_PAGE
    ) -> list[LedgerLine]:
        """Ledger entries older than ``before_seq`` (the newest when None), newest first."""
        page = await self.api.ledger_page(before_seq, limit)
        return [LedgerLine(**entry) for entry in page["entries"]]

    async def detail(self, item_id: str) -> dict[str, Any] | None:
        """One item with its history."""
        return await self.api.show(item_id)

    async def lanes(self) -> tuple[LaneOverview, ...]:
        """Every lane at a glance, as the daemon reads it (``GET /v1/lanes``)."""
        body = await self.api.lanes()
        found = {entry["lane"]: LaneOverview(**entry) for entry in body["lanes"]}
        first = [found.pop(name) for name in self.lane_names if name in found]
        return (*first, *found.values())

    async def verify_ledger(self) -> dict[str, Any]:
        """The daemon verifies its ledger's chain."""
        return await self.api.verify_ledger()

    async def command(self, command: Command, workspace: str | None = None) -> dict[str, Any]:
        """Give a command through the daemon, which records who gave it. A daemon's refusal,
        or a daemon that stopped, comes back as a refused result: nothing is queued.

        Raises:
            ReadOnly: the console is read-only.
        """
        if self.read_only:
            raise ReadOnly("read-only console: actions are refused (attached with --read-only)")
        payload: dict[str, Any] = command.to_payload()
        payload.pop("actor", None)
        try:
            return await self.api.command(command_workspace(workspace), payload)
        except ControlRefused as exc:
            return {"ok": False, "errors": [exc.message]}
        except ControlUnavailable as exc:
            return {"ok": False, "errors": [f"{exc.message}: {START_HINT}; not sent"]}
        except ControlError as exc:
            if exc.status == 400:
                return {"ok": False, "errors": [exc.message]}
            raise

    async def wait_change(self, timeout_s: float) -> bool:
        """Wait (a long poll) until the daemon's ledger head moved, or ``timeout_s`` passed.
        When the daemon does not answer, wait ``timeout_s`` and say something changed: the
        next snapshot shows the error."""
        try:
            head = await self.api.console_changes(self._head, min(timeout_s, LONG_POLL_S))
        except ControlError:
            await asyncio.sleep(timeout_s)
            return True
        changed = head != self._head
        self._head = head
        return changed

    async def close(self) -> None:
        """Close the connections."""
        await self.api.close()
