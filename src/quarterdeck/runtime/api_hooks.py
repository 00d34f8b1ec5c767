"""The control API's agent-CLI hook routes (Claude Code, Codex).

- ``POST /v1/hooks/{agent}``: ``{"payload": <the hook's JSON input>, "wait_s": n}``. A tool
  call (``PreToolUse``, ``PermissionRequest``) is an action decided by the policy (lane
  ``<agent>``, the tool's name, its input as arguments) and, when a person must decide, waits
  up to ``wait_s`` for them: the answer is a ruling ``{"verdict": "allow"|"deny"|"pending",
  "reason", "updated_input", "approval"}``; asking again for the same call binds to the same
  decision. Other events (``PostToolUse`` with the tool's result size-capped and hashed,
  ``UserPromptSubmit``, ``SessionStart``/``SessionEnd``, ``Notification``, ``Stop``) are
  recorded as event envelopes: ``{"verdict": "recorded", "receipt": id}``; a session's or a
  prompt's event answers once its session or turn exists (``store/sessions_hooks.py``), so the
  agent's next call is an action of that turn. A call whose turn a person took over or
  cancelled is denied with ``"stop": true``, without asking the policy; so is a call that
  waited on a person when it happens. Claude Code's ``PostToolBatch`` (after each batch of
  tool calls) asks whether the agent may go on: ``{"verdict": "allow"}`` while it may, the same
  stop ruling once its turn was taken over or cancelled (Claude Code hears ``continue:
  false`` and ends its loop before asking the model again). The command hook (``quarterdeck
  hook``) speaks this.
- ``POST /v1/hooks/claude-code/http``: Claude Code's ``http`` hook, the opt-in fast path: the
  body is the hook's input, the answer Claude Code's own JSON (the wait is ``?wait_s=``).
  **Claude Code lets the tool run when it cannot reach this endpoint**: only the command hook
  fails closed.

Only an agent principal (an agent token, pinned to its workspace) may call them: a hook asks,
it never decides; the workspace is the one its credential pins.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

from aiohttp import web

from quarterdeck.domain.authority import Kind, Principal, Refusal
from quarterdeck.domain.hooks import (
    AGENTS,
    CLAUDE_CODE,
    GO_ON,
    HookEvent,
    HookInputError,
    Ruling,
    action_id,
    answer,
    event_record,
    parse_event,
    record_key,
    ruling_of_decision,
    ruling_of_request,
    stop_ruling,
)
from quarterdeck.runtime.api_approvals import DECISION_FIELDS, idempotency_key
from quarterdeck.runtime.api_common import (
    MAX_WAIT_S,
    ApiError,
    HeadWatch,
    json_body,
    json_response,
    number_param,
    principal_of,
)
from quarterdeck.store.database import Database
from quarterdeck.store.queries import get_item
from quarterdeck.store.queries.supervision import decided_approvals
from quarterdeck.store.receipts import IngestResult
from quarterdeck.store.sessions_hooks import TURN_EVENTS, receipt_applied, stopped_turn

HOOK_FIELDS: Final = frozenset({"payload", "wait_s"})
HTTP_WAIT_S: Final = 50.0
"""How long the ``http`` endpoint waits for a person by default (below Claude Code's
``timeout`` that ``integrate`` writes)."""
APPLY_WAIT_S: Final = 5.0
"""How long recording a session's or a prompt's event waits for its session or turn to exist."""

CarryOut = Callable[[str, Mapping[str, Any], Principal, str | None], Awaitable[Mapping[str, Any]]]
Submit = Callable[[Sequence[Mapping[str, Any]]], Awaitable[Sequence[IngestResult]]]
MaySubmit = Callable[[Principal, str], Refusal | None]


class Hooks:
    """The hook routes of one runtime's control API."""

    def __init__(
        self,
        db: Database,
        watch: HeadWatch,
        command: CarryOut,
        submit: Submit,
        may_submit: MaySubmit,
    ) -> None:
        self._db = db
        self._watch = watch
        self._command = command
        self._submit = submit
        self._may_submit = may_submit

    def routes(self) -> list[web.RouteDef]:
        """The routes, to add to the application."""
        return [
            web.post("/v1/hooks/claude-code/http", self.http_hook),
            web.post("/v1/hooks/{agent}", self.hook),
        ]

    async def hook(self, request: web.Request) -> web.Response:
        """The command hook's route: a ruling, or ``recorded``."""
        agent = request.match_info["agent"]
        if agent not in AGENTS:
            raise ApiError(404, "not_found", f"no hooks for {agent!r}: {', '.join(AGENTS)}")
        body = await json_body(request)
        if not isinstance(body, dict):
            raise ApiError(400, "bad_request", "the body must be a JSON object")
        problems = [f"{name}: unknown field" for name in sorted(set(body) - HOOK_FIELDS)]
        wait_s = body.get("wait_s", 0)
        if isinstance(wait_s, bool) or not isinstance(wait_s, int | float):
            problems.append("wait_s: must be a number of seconds")
        elif not 0 <= wait_s <= MAX_WAIT_S:
            problems.append(f"wait_s: must be between 0 and {MAX_WAIT_S:g}")
        if problems:
            raise ApiError(400, "bad_request", "; ".join(problems))
        event, workspace = self._read(request, agent, body.get("payload"))
        if event.asks_to_go_on:
            return json_response((await self.go_on(event, workspace)).to_dict())
        if not event.gates:
            return json_response(await self._record(event, workspace))
        ruling = await self.rule(event, workspace, principal_of(request), float(wait_s))
        return json_response(ruling.to_dict())

    async def http_hook(self, request: web.Request) -> web.Response:
        """Claude Code's ``http`` hook: its input in, its answer out."""
        wait_s = number_param(request, "wait_s", HTTP_WAIT_S, 0.0, MAX_WAIT_S)
        assert wait_s is not None
        event, workspace = self._read(request, CLAUDE_CODE, await json_body(request))
        if event.asks_to_go_on:
            ruling = await self.go_on(event, workspace)
            return json_response(answer(CLAUDE_CODE, event.event, ruling))
        if not event.gates:
            await self._record(event, workspace)
            return json_response({})
        ruling = await self.rule(event, workspace, principal_of(request), wait_s)
        return json_response(answer(CLAUDE_CODE, event.event, ruling))

    def _read(self, request: web.Request, agent: str, payload: object) -> tuple[HookEvent, str]:
        """The event and the workspace of a hook request (400 for bad input, 403 when the
        caller is not an agent pinned to a workspace)."""
        principal = principal_of(request)
        if principal.kind is not Kind.AGENT or principal.workspace is None:
            raise ApiError(
                403, "not_an_agent",
                f"{principal.label} is not an agent: hooks speak with an agent credential "
                "(quarterdeck integrate issues one)",
            )  # fmt: skip
        try:
            event = parse_event(agent, payload)
        except HookInputError as exc:
            raise ApiError(400, "bad_hook_input", f"payload: {exc}") from None
        refusal = self._may_submit(principal, principal.workspace)
        if refusal is not None:
            raise ApiError.refused(refusal)
        return event, principal.workspace

    async def rule(
        self, event: HookEvent, workspace: str, principal: Principal, wait_s: float
    ) -> Ruling:
        """Decide a tool call under the policy; wait up to ``wait_s`` for a person."""
        call = action_id(event)
        payload = {
            "command": "approval.request", "action_id": call, "tool": event.tool_name,
            "args": dict(event.tool_input), "lane": event.agent,
        }  # fmt: skip
        stopped = await stopped_turn(self._db, workspace, event.agent, event.session_id)
        if stopped is not None:
            return stop_ruling(*stopped)
        result = await self._command(workspace, payload, principal, idempotency_key(call))
        ruling = ruling_of_request(result)
        if ruling.verdict == "pending" and ruling.approval is not None:
            decision = await self._decided(event, workspace, ruling.approval, wait_s)
            if decision is not None and "stop" not in decision:
                ruling = ruling_of_decision(decision)
        if ruling.verdict == "allow":
            return ruling
        stopped = await stopped_turn(self._db, workspace, event.agent, event.session_id)
        return ruling if stopped is None else stop_ruling(*stopped, ruling.approval)

    async def go_on(self, event: HookEvent, workspace: str) -> Ruling:
        """Whether the agent may go on after a batch of tool calls: not once a person took its
        turn over or cancelled it (a stop ruling)."""
        stopped = await stopped_turn(self._db, workspace, event.agent, event.session_id)
        return Ruling("allow", GO_ON) if stopped is None else stop_ruling(*stopped)

    async def _decided(
        self, event: HookEvent, workspace: str, approval_id: str, wait_s: float
    ) -> dict[str, Any] | None:
        """The approval's decision once a person made it (``{"stop": ...}`` once a person took
        the call's turn over or cancelled it); None after ``wait_s``."""

        async def check() -> dict[str, Any] | None:
            if await stopped_turn(self._db, workspace, event.agent, event.session_id):
                return {"stop": True}
            if not await decided_approvals(self._db, [approval_id]):
                return None
            item = await get_item(self._db, approval_id, workspace=None)
            return None if item is None else {k: item.get(k) for k in DECISION_FIELDS}

        return await self._watch.until(check, wait_s)

    async def _record(self, event: HookEvent, workspace: str) -> dict[str, Any]:
        """Record a non-gating event as an event envelope (its key makes a redelivery a
        duplicate)."""
        envelope = {
            "workspace": workspace, "kind": "event", "idempotency_key": record_key(event),
            "payload": event_record(event),
        }  # fmt: skip
        (result,) = await self._submit([envelope])
        if result.status == "rejected":
            raise ApiError(400, "bad_hook_input", "; ".join(result.errors))
        if event.event in TURN_EVENTS:
            # The session and turn exist before the agent goes on (its next tool call is theirs).
            receipt = result.receipt

            async def applied() -> bool | None:
                return await receipt_applied(self._db, receipt) or None

            await self._watch.until(applied, APPLY_WAIT_S)
        return {"verdict": "recorded", "receipt": result.receipt}
