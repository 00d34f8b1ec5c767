"""A client of the daemon's control API: over its Unix socket (the kernel tells the daemon who we
are), or over TCP with a bearer token. Errors say plainly whether the daemon refused (and why)
or is not there."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import httpx

from quarterdeck.domain.authority import Kind, Principal
from quarterdeck.runtime.listeners import default_socket_path
from quarterdeck.store.receipts import IngestResult

JSON_HEADERS = {"Content-Type": "application/json"}
READ_ONLY_HEADER = "Quarterdeck-Read-Only"
"""The header that makes the daemon refuse a request that is not a read (see the server)."""


class ControlError(Exception):
    """The daemon answered a request with an error (``status``, ``code``, ``message``)."""

    def __init__(self, message: str, *, status: int | None = None, code: str = "error") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class ControlRefused(ControlError):
    """The daemon refused the request: not authenticated (401) or not allowed (403)."""


class ControlUnavailable(ControlError):
    """No daemon answers at the address (nothing listens, or the connection broke)."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the daemon takes us for, and the roles its roster gives us."""

    principal: Principal
    roles: frozenset[str]


class ControlClient:
    """Requests to one daemon. Use as ``async with ControlClient(socket_path) as api: ...``,
    or ``ControlClient(url="http://host:port", token=...)`` over TCP. ``read_only``: every
    request says so, and the daemon refuses any but reads."""

    def __init__(
        self,
        socket_path: str | os.PathLike[str] | None = None,
        *,
        url: str | None = None,
        token: str | None = None,
        timeout_s: float = 30.0,
        read_only: bool = False,
    ) -> None:
        if (socket_path is None) == (url is None):
            raise ValueError("give either a socket path or a URL")
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        if read_only:
            headers[READ_ONLY_HEADER] = "1"  # the daemon refuses all but reads from now on
        if socket_path is not None:
            self.where = str(socket_path)
            transport = httpx.AsyncHTTPTransport(uds=self.where)
            base = "http://quarterdeck"
        else:
            assert url is not None
            self.where = url
            transport = httpx.AsyncHTTPTransport()
            base = url
        self._http = httpx.AsyncClient(
            transport=transport, base_url=base, headers=headers, timeout=timeout_s
        )

    @classmethod
    def for_state_dir(cls, state_dir: str | os.PathLike[str], **kwargs: Any) -> Self:
        """A client of the daemon whose state directory is ``state_dir``."""
        return cls(default_socket_path(Path(state_dir)), **kwargs)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def whoami(self) -> Identity:
        """The principal the daemon resolved for this client."""
        body = await self._request("GET", "/v1/whoami")
        principal = Principal(
            Kind(body["kind"]),
            body["name"],
            uid=body["uid"],
            groups=frozenset(body["groups"]),
            workspace=body["workspace"],
        )
        return Identity(principal, frozenset(body["roles"]))

    async def submit(self, envelopes: Sequence[Mapping[str, Any]]) -> list[IngestResult]:
        """Record envelopes (not commands); one result per envelope, in order."""
        body = await self._request("POST", "/v1/envelopes", [dict(e) for e in envelopes])
        return [
            IngestResult(result["status"], result["receipt"], tuple(result["errors"]))
            for result in body["results"]
        ]

    async def command(
        self, workspace: str, payload: Mapping[str, Any], idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """Carry out one command (``payload`` is ``{"command": NAME, ...}``) in ``workspace``;
        return its result (``{"ok": true, ...}`` or ``{"ok": false, "errors": [...]}``)."""
        request: dict[str, Any] = {"workspace": workspace, "command": dict(payload)}
        if idempotency_key is not None:
            request["idempotency_key"] = idempotency_key
        result: dict[str, Any] = await self._request("POST", "/v1/commands", request)
        return result

    async def request_approval(
        self,
        workspace: str,
        action_id: str,
        tool: str,
        args: Mapping[str, Any] | None = None,
        *,
        lane: str | None = None,
        estimated_cost: float | None = None,
        wait_s: float = 0.0,
    ) -> dict[str, Any]:
        """Ask to run ``tool`` with ``args``: the policy's answer (``verdict`` ``allow``,
        ``deny`` or ``pending`` with its ``approval``), and ``decision`` once a person
        decided within ``wait_s`` (else null: go on with :meth:`approval_decision`)."""
        request: dict[str, Any] = {
            "workspace": workspace, "action_id": action_id, "tool": tool,
            "args": dict(args or {}), "wait_s": wait_s,
        }  # fmt: skip
        if lane is not None:
            request["lane"] = lane
        if estimated_cost is not None:
            request["estimated_cost"] = estimated_cost
        return await self._answer("POST", "/v1/approvals/request", request, wait_s)

    async def approval_decision(self, approval_id: str, wait_s: float = 30.0) -> dict[str, Any]:
        """The approval's decision once made (``decided`` false if it was not within
        ``wait_s``)."""
        path = f"/v1/approvals/{quote(approval_id, safe='')}/decision"
        return await self._answer("GET", path, None, wait_s, {"wait_s": wait_s})

    async def status(self, workspace: str | None = None) -> dict[str, Any]:
        """Counts by state for every kind, and the ledger's size and head."""
        return await self._answer("GET", "/v1/status", params=_present(workspace=workspace))

    async def items(
        self,
        kind: str,
        *,
        workspace: str | None = None,
        state: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Items of ``kind`` (receipts, turns, missions, sessions, approvals, alerts), newest
        first."""
        params = _present(kind=kind, workspace=workspace, state=state, limit=limit)
        body = await self._answer("GET", "/v1/items", params=params)
        return list(body["items"])

    async def show(self, item_id: str, workspace: str | None = None) -> dict[str, Any] | None:
        """One item with its history; None when there is none in reach."""
        path = f"/v1/items/{quote(item_id, safe='')}"
        try:
            return await self._answer("GET", path, params=_present(workspace=workspace))
        except ControlError as exc:
            if exc.status == 404:
                return None
            raise

    async def resolve_id(
        self, typed: str, kind: str | None = None, workspace: str | None = None
    ) -> dict[str, Any]:
        """The ``id``, ``kind`` and ``workspace`` of the one item in reach (of ``kind``, any
        when None) whose full id, short id or id prefix ``typed`` is.

        Raises:
            ControlError: 404 when there is none, 409 (its message listing them) when several
                match.
        """
        path = f"/v1/ids/{quote(typed, safe='')}"
        return await self._answer("GET", path, params=_present(kind=kind, workspace=workspace))

    async def approvals(
        self,
        workspace: str | None = None,
        *,
        lane: str | None = None,
        tool: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Open approvals, nearest deadline first (``lane`` and ``tool`` are globs)."""
        params = _present(workspace=workspace, lane=lane, tool=tool, limit=limit)
        body = await self._answer("GET", "/v1/approvals", params=params)
        return list(body["approvals"])

    async def ledger_page(
        self, before: int | None = None, limit: int | None = None, workspace: str | None = None
    ) -> dict[str, Any]:
        """Ledger entries below ``before`` (the newest when None), newest first:
        ``{"entries": [...], "before": next page's before, or null}``."""
        params = _present(before=before, limit=limit, workspace=workspace)
        return await self._answer("GET", "/v1/ledger", params=params)

    async def verify_ledger(self) -> dict[str, Any]:
        """Verify the ledger's chain: ``ok``, ``entries``, ``first_bad_seq``, ``reason``."""
        return await self._answer("GET", "/v1/ledger/verify")

    async def console_snapshot(self, workspace: str | None = None) -> dict[str, Any]:
        """What the control center's live panes show."""
        params = _present(workspace=workspace)
        return await self._answer("GET", "/v1/console/snapshot", params=params)

    async def lanes(self) -> dict[str, Any]:
        """Every lane at a glance: ``{"lanes": [...]}``, each a
        :class:`~quarterdeck.store.queries.lanes.LaneOverview`'s fields."""
        return await self._answer("GET", "/v1/lanes")

    async def console_changes(self, after: int, wait_s: float = 30.0) -> int:
        """The ledger head once it is past ``after`` (or as it stands after ``wait_s``)."""
        params = {"after": after, "wait_s": wait_s}
        body = await self._answer("GET", "/v1/console/changes", None, wait_s, params)
        return int(body["head"])

    async def metrics(self) -> str:
        """The Prometheus text exposition."""
        response = await self._send("GET", "/metrics")
        return response.text

    async def _answer(
        self,
        method: str,
        path: str,
        body: Any = None,
        wait_s: float = 0.0,
        params: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A request whose answer is a JSON object (waiting up to ``wait_s`` longer)."""
        answer: dict[str, Any] = await self._request(method, path, body, wait_s, params)
        return answer

    async def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        wait_s: float = 0.0,
        params: Mapping[str, Any] | None = None,
    ) -> Any:
        """One request; its JSON answer (see :meth:`_send`)."""
        return (await self._send(method, path, body, wait_s, params)).json()

    async def _send(
        self,
        method: str,
        path: str,
        body: Any = None,
        wait_s: float = 0.0,
        params: Mapping[str, Any] | None = None,
    ) -> httpx.Response:
        """One request; its JSON answer.

        Raises:
            ControlUnavailable: no daemon answers.
            ControlRefused: the daemon refused (401 or 403).
            ControlError: any other error answer.
        """
        timeout = self._http.timeout
        if wait_s:
            timeout = httpx.Timeout(
                connect=timeout.connect, read=(timeout.read or 0.0) + wait_s,
                write=timeout.write, pool=timeout.pool,
            )  # fmt: skip
        try:
            response = await self._http.request(
                method, path, content=None if body is None else _json_bytes(body),
                headers=JSON_HEADERS if body is not None else None,
                params=dict(params or {}), timeout=timeout,
            )  # fmt: skip
        except httpx.ConnectError:
            raise ControlUnavailable(f"no daemon is listening on {self.where}") from None
        except httpx.TransportError as exc:
            raise ControlUnavailable(f"the daemon on {self.where} did not answer: {exc}") from None
        if response.is_success:
            return response
        try:
            answer = response.json()
            message, code = str(answer["error"]), str(answer["code"])
        except (ValueError, KeyError, TypeError):
            message, code = response.text or response.reason_phrase, "http_error"
        error = ControlRefused if response.status_code in (401, 403) else ControlError
        raise error(message, status=response.status_code, code=code)


def _json_bytes(body: Any) -> bytes:
    """A request body as JSON text (non-ASCII escaped, so that any string travels)."""
    return json.dumps(body, allow_nan=False).encode("ascii")


def _present(**params: Any) -> dict[str, Any]:
    """The query parameters that have a value."""
    return {name: value for name, value in params.items() if value is not None}
