"""The control API's reads: status, listings, one item (``show``), open approvals, the ledger in
pages and its verification, and the attached console's snapshot and change stream (a long
poll on the ledger head).

Every read checks ``may_read``. A principal whose roles cover only some workspaces gets only
their items: the query is narrowed to the one workspace it reads, or the rows are filtered when
it reads several (the runtime's own items are part of every workspace's view). The console's
header counts and the ledger's verification are the runtime's as a whole.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from aiohttp import web

from quarterdeck.domain.authority import Roster
from quarterdeck.domain.ids import AmbiguousId, IdMatch, UnknownId
from quarterdeck.runtime.api_common import (
    MAX_WAIT_S,
    ApiError,
    HeadWatch,
    ReadScope,
    int_param,
    json_response,
    number_param,
    principal_of,
    read_scope,
)
from quarterdeck.store.database import Database
from quarterdeck.store.ledger import verify_ledger
from quarterdeck.store.queries import LISTABLE, get_item, list_items, open_approvals, slo, status
from quarterdeck.store.queries.ids import ID_KINDS, resolve_id
from quarterdeck.store.queries.lanes import lane_overview
from quarterdeck.store.queries.panes import ledger_page, read_panes

MAX_LIMIT: Final = 1_000
LIST_LIMIT: Final = 100
LEDGER_PAGE: Final = 200
APPROVALS_SHOWN: Final = 1_000
TURNS_SHOWN: Final = 200
MISSIONS_SHOWN: Final = 200
ALERTS_SHOWN: Final = 200
SLO_EVERY_S: Final = 5.0


def scope_workspaces(scope: ReadScope) -> frozenset[str] | None:
    """The workspaces a read scope covers (None: every workspace)."""
    if scope.workspace is not None:
        return frozenset({scope.workspace})
    return scope.only


async def resolve_in_scope(
    db: Database, typed: str, workspaces: frozenset[str] | None, *,
    kinds: tuple[str, ...] = ID_KINDS, what: str = "item",
) -> IdMatch:  # fmt: skip
    """The one item of ``kinds`` in ``workspaces`` whose full id, short id or id prefix
    ``typed`` is.

    Raises:
        ApiError: 404 when there is none, 409 (listing them) when there are several, 400 for
            an empty id.
    """
    try:
        return await resolve_id(db, typed, kinds=kinds, workspaces=workspaces, what=what)
    except UnknownId as exc:
        raise ApiError(404, "not_found", exc.message) from None
    except AmbiguousId as exc:
        raise ApiError(409, "ambiguous_id", exc.message) from None
    except ValueError as exc:
        raise ApiError(400, "bad_request", f"id: {exc}") from None


class Reads:
    """The read routes of one runtime's control API."""

    def __init__(
        self, roster: Callable[[], Roster], db: Database, watch: HeadWatch, node_id: str
    ) -> None:
        self._roster = roster
        self._db = db
        self._watch = watch
        self._node_id = node_id
        self._slo: tuple[float, Mapping[str, Any]] | None = None

    def routes(self) -> list[web.RouteDef]:
        """The routes, to add to the application."""
        return [
            web.get("/v1/status", self.status),
            web.get("/v1/items", self.items),
            web.get("/v1/items/{item_id}", self.show),
            web.get("/v1/ids/{typed}", self.resolve),
            web.get("/v1/approvals", self.approvals),
            web.get("/v1/ledger", self.ledger),
            web.get("/v1/ledger/verify", self.verify),
            web.get("/v1/console/snapshot", self.snapshot),
            web.get("/v1/console/changes", self.changes),
            web.get("/v1/lanes", self.lanes),
        ]

    def _scope(self, request: web.Request) -> ReadScope:
        return read_scope(self._roster(), principal_of(request), request.query.get("workspace"))

    async def status(self, request: web.Request) -> web.Response:
        """Counts by state for every kind, the SLO figures, and the ledger's size and head."""
        scope = self._scope(request)
        if scope.only is not None:
            raise ApiError(
                400, "workspace_required",
                "workspace: name one of your workspaces (" + ", ".join(sorted(scope.only)) + ")",
            )  # fmt: skip
        result = await status(self._db, scope.workspace)
        result["slo"] = await slo(self._db, scope.workspace)
        return json_response(result)

    async def items(self, request: web.Request) -> web.Response:
        """``?kind=turns`` (receipts, turns, missions, sessions, approvals, alerts), newest
        first, optionally ``state`` and ``limit``."""
        kind = request.query.get("kind", "")
        if kind not in LISTABLE:
            raise ApiError(400, "bad_request", f"kind: must be one of {', '.join(LISTABLE)}")
        scope = self._scope(request)
        limit = int_param(request, "limit", LIST_LIMIT, 1, MAX_LIMIT)
        rows = await list_items(
            self._db, kind, workspace=scope.workspace, state=request.query.get("state"),
            limit=None if scope.only is not None else limit,
        )  # fmt: skip
        return json_response({"items": scope.filter(rows)[:limit]})

    async def show(self, request: web.Request) -> web.Response:
        """One item by its full id, short id or a unique prefix of its id, with its history
        (404 when none is in the caller's scope, 409 listing them when several are)."""
        item_id = request.match_info["item_id"]
        scope = self._scope(request)
        match = await resolve_in_scope(self._db, item_id, scope_workspaces(scope))
        item = await get_item(self._db, match.id, workspace=scope.workspace)
        if item is None or not scope.keeps(item.get("workspace")):
            raise ApiError(404, "not_found", f"no item {item_id!r}")
        return json_response(item)

    async def resolve(self, request: web.Request) -> web.Response:
        """The full id, kind and workspace of the one item in scope whose full id, short id or
        id prefix ``typed`` is; ``kind`` (repeatable: ``turn``, ``approval``, ...) narrows the
        search. 404 when there is none, 409 listing them when several match."""
        kinds = tuple(request.query.getall("kind", ID_KINDS))
        if unknown := sorted(set(kinds) - set(ID_KINDS)):
            raise ApiError(
                400,
                "bad_request",
                f"kind: {', '.join(unknown)} is not one of {', '.join(ID_KINDS)}",
            )
        scope = self._scope(request)
        what = kinds[0] if len(kinds) == 1 else "item"
        match = await resolve_in_scope(
            self._db, request.match_info["typed"], scope_workspaces(scope), kinds=kinds, what=what
        )
        return json_response(dataclasses.asdict(match))

    async def approvals(self, request: web.Request) -> web.Response:
        """Open approvals, nearest deadline first (``lane`` and ``tool`` globs, ``limit``)."""
        scope = self._scope(request)
        limit = int_param(request, "limit", APPROVALS_SHOWN, 1, MAX_LIMIT * 10)
        rows = await open_approvals(
            self._db, scope.workspace, lane=request.query.get("lane"),
            tool=request.query.get("tool"), limit=None if scope.only is not None else limit,
        )  # fmt: skip
        return json_response({"approvals": scope.filter(rows)[:limit]})

    async def ledger(self, request: web.Request) -> web.Response:
        """A page of entries below ``before`` (the newest when absent), newest first, and the
        ``before`` of the next page (null at the start of the ledger)."""
        scope = self._scope(request)
        before = int_param(request, "before", 2**62, 1, 2**62)
        limit = int_param(request, "limit", LEDGER_PAGE, 1, MAX_LIMIT)
        lines = await ledger_page(self._db, before, limit)
        entries = [dataclasses.asdict(line) for line in lines]
        if scope.workspace is not None:
            scope = ReadScope(None, frozenset({scope.workspace}))
        following = lines[-1].seq if len(lines) == limit else None
        return json_response({"entries": scope.filter(entries), "before": following})

    async def verify(self, request: web.Request) -> web.Response:
        """Verify the ledger's chain (any reader may)."""
        self._scope(request)  # any reader, of every workspace or some
        result = await verify_ledger(self._db)
        return json_response(
            {"ok": result.ok, "entries": result.entries, "first_bad_seq": result.first_bad_seq,
             "reason": result.reason}
        )  # fmt: skip

    async def snapshot(self, request: web.Request) -> web.Response:
        """What the control center's live panes show, read in one snapshot transaction."""
        scope = self._scope(request)
        now = time.time()
        panes = await read_panes(
            self._db, approvals=APPROVALS_SHOWN, turns=TURNS_SHOWN, missions=MISSIONS_SHOWN,
            alerts=ALERTS_SHOWN,
        )  # fmt: skip
        if self._slo is None or time.monotonic() - self._slo[0] >= SLO_EVERY_S:
            self._slo = (time.monotonic(), await slo(self._db, None))
        wide = ReadScope(None, frozenset({scope.workspace})) if scope.workspace else scope
        turns = wide.filter(dataclasses.asdict(t) for t in panes.turns)
        shown = {turn["id"] for turn in turns}
        missions = [dataclasses.asdict(m) for m in panes.missions]
        if wide.only is not None:
            missions = [m for m in missions if m["turn_id"] in shown]
        return json_response(
            {
                "header": {
                    "node": self._node_id, "read_at": now, "force_all": panes.force_all,
                    "forced": panes.forced, "paused": panes.paused, "turns": panes.turn_counts,
                    "approvals_open": panes.approvals_open, "alerts_open": panes.alerts_open,
                    "missions_live": panes.missions_live, "slo": self._slo[1],
                    "head_seq": panes.head_seq,
                },
                "approvals": wide.filter(dataclasses.asdict(a) for a in panes.approvals),
                "turns": turns,
                "missions": missions,
                "sessions": [dataclasses.asdict(s) for s in panes.sessions],
                "alerts": wide.filter(dataclasses.asdict(a) for a in panes.alerts),
            }
        )  # fmt: skip

    async def lanes(self, request: web.Request) -> web.Response:
        """Every lane at a glance (any reader: lanes are the runtime's, like the header's
        counts): state, flags, slots and what holds them, queue, failure and fallback rates."""
        self._scope(request)
        overview = await lane_overview(self._db)
        return json_response({"lanes": [dataclasses.asdict(lane) for lane in overview]})

    async def changes(self, request: web.Request) -> web.Response:
        """A long poll: answers ``{"head": seq}`` once the ledger head is past ``after`` (or
        after ``wait_s``, default 30, with the head as it stands)."""
        self._scope(request)
        after = int_param(request, "after", -1, -1, 2**62)
        wait_s = number_param(request, "wait_s", 30.0, 0.0, MAX_WAIT_S)
        assert wait_s is not None
        head = await self._watch.wait(after, wait_s)
        return json_response({"head": head, "changed": head > after})
