"""The control API's approval requests: ``POST /v1/approvals/request`` asks to run a tool (the
command ``approval.request``, decided by the policy now or bound to an approval) and waits for
a person's decision for up to ``wait_s``; ``GET /v1/approvals/{id}/decision`` goes on waiting
(a long poll: the decision is streamed back one poll at a time). A person may name the approval
by its short id or a unique prefix too; an agent names the full id.

Asking is not supervising: an agent asks within the workspace its credential pins, a person
where they hold ``supervisor``. An agent may wait only on approvals it asked for itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from aiohttp import web

from quarterdeck.domain.authority import Kind, Principal, Refusal, Roster, may_read
from quarterdeck.runtime.api_common import (
    MAX_WAIT_S,
    ApiError,
    HeadWatch,
    json_body,
    json_response,
    number_param,
    principal_of,
    read_scope,
)
from quarterdeck.runtime.api_reads import resolve_in_scope, scope_workspaces
from quarterdeck.store.database import Database
from quarterdeck.store.queries import get_item
from quarterdeck.store.queries.supervision import decided_approvals

MAX_KEY: Final = 200
REQUEST_FIELDS: Final = frozenset(
    {"workspace", "action_id", "tool", "args", "lane", "estimated_cost", "wait_s"}
)
DECISION_FIELDS: Final = (
    "id", "workspace", "state", "tool", "args", "edited_args", "reason_code", "reason_text",
    "decided_by", "requested_by",
)  # fmt: skip

CarryOut = Callable[[str, Mapping[str, Any], Principal, str | None], Awaitable[Mapping[str, Any]]]
MaySubmit = Callable[[Principal, str], Refusal | None]


def idempotency_key(action_id: str) -> str:
    """The ``approval.request`` envelope's key for ``action_id`` (the SDK's own form: stable,
    so asking again binds to the same request)."""
    key = f"approval.request:{action_id}"
    if len(key) <= MAX_KEY:
        return key
    return "approval.request:sha256:" + hashlib.sha256(action_id.encode("utf-8")).hexdigest()


class Approvals:
    """The approval routes of one runtime's control API."""

    def __init__(
        self,
        roster: Callable[[], Roster],
        db: Database,
        watch: HeadWatch,
        command: CarryOut,
        may_submit: MaySubmit,
    ) -> None:
        self._roster = roster
        self._db = db
        self._watch = watch
        self._command = command
        self._may_submit = may_submit

    def routes(self) -> list[web.RouteDef]:
        """The routes, to add to the application."""
        return [
            web.post("/v1/approvals/request", self.request),
            web.get("/v1/approvals/{approval_id}/decision", self.decision),
        ]

    async def request(self, request: web.Request) -> web.Response:
        """Ask; the policy's answer, with ``decision`` once a person decided (null while
        the approval is still open after ``wait_s``, default 0)."""
        principal = principal_of(request)
        body = await json_body(request)
        workspace, payload, wait_s = _approval_request(body)
        refusal = self._may_submit(principal, workspace)
        if refusal is not None:
            raise ApiError.refused(refusal)
        key = idempotency_key(str(payload["action_id"]))
        result = dict(await self._command(workspace, payload, principal, key))
        approval = result.get("approval")
        decision = None
        if result.get("ok") and isinstance(approval, str):
            decision = await self._decided(approval, wait_s)
        return json_response({**result, "decision": decision})

    async def decision(self, request: web.Request) -> web.Response:
        """The approval's decision (``decided`` false while it is still open after
        ``wait_s``, default 30)."""
        principal = principal_of(request)
        typed = request.match_info["approval_id"]
        wait_s = number_param(request, "wait_s", 30.0, 0.0, MAX_WAIT_S)
        assert wait_s is not None
        approval_id = await self._resolve(principal, typed)
        item = await get_item(self._db, approval_id, workspace=None)
        if item is None or item.get("type") != "approval" or not self._may_see(principal, item):
            raise ApiError(404, "not_found", f"no approval {typed!r}")
        decision = await self._decided(approval_id, wait_s)
        return json_response(
            {"approval": approval_id, "decided": decision is not None, "decision": decision}
        )

    async def _resolve(self, principal: Principal, typed: str) -> str:
        """The full id of the approval whose full id, short id or id prefix ``typed`` is,
        among those a person may read. An agent names the full id it was given: a prefix
        would let it list the ids of other agents' approvals."""
        if principal.kind is Kind.AGENT:
            return typed
        workspaces = scope_workspaces(read_scope(self._roster(), principal, None))
        match = await resolve_in_scope(
            self._db, typed, workspaces, kinds=("approval",), what="approval"
        )
        return match.id

    def _may_see(self, principal: Principal, item: Mapping[str, Any]) -> bool:
        if principal.kind is Kind.AGENT:
            return bool(
                item.get("workspace") == principal.workspace
                and item.get("requested_by") == principal.label
            )
        return may_read(self._roster(), principal, str(item.get("workspace"))) is None

    async def _decided(self, approval_id: str, wait_s: float) -> dict[str, Any] | None:
        async def check() -> dict[str, Any] | None:
            if not await decided_approvals(self._db, [approval_id]):
                return None
            item = await get_item(self._db, approval_id, workspace=None)
            return None if item is None else {k: item.get(k) for k in DECISION_FIELDS}

        return await self._watch.until(check, wait_s)


def _approval_request(body: Any) -> tuple[str, dict[str, Any], float]:
    """The workspace, the ``approval.request`` payload and ``wait_s`` of a request body."""
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "the body must be a JSON object")
    problems = [f"{field}: unknown field" for field in sorted(set(body) - REQUEST_FIELDS)]
    workspace = body.get("workspace")
    if not isinstance(workspace, str) or not workspace:
        problems.append("workspace: is required (a workspace name)")
    for field in ("action_id", "tool"):
        if not isinstance(body.get(field), str) or not body[field]:
            problems.append(f"{field}: is required (a non-empty string)")
    if not isinstance(body.get("args", {}), dict):
        problems.append("args: must be an object")
    wait_s = body.get("wait_s", 0)
    if isinstance(wait_s, bool) or not isinstance(wait_s, int | float):
        problems.append("wait_s: must be a number of seconds")
    elif not 0 <= wait_s <= MAX_WAIT_S:
        problems.append(f"wait_s: must be between 0 and {MAX_WAIT_S:g}")
    if problems:
        raise ApiError(400, "bad_request", "; ".join(problems))
    assert isinstance(workspace, str)
    payload = {"command": "approval.request"} | {
        k: body[k] for k in ("action_id", "tool", "args", "lane", "estimated_cost") if k in body
    }
    return workspace, payload, float(wait_s)
