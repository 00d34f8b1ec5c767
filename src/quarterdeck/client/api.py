"""A client of the daemon's control API: over its Unix socket (the kernel tells the daemon who we
are), or over TCP with a bearer token. Errors say plainly whether the daemon refused (and why)
or is not there."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from quarterdeck.domain.authority import Kind, Principal
from quarterdeck.runtime.listeners import default_socket_path
from quarterdeck.store.receipts import IngestResult


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
    or ``ControlClient(url="http://host:port", token=...)`` over TCP."""

    def __init__(
        self,
        socket_path: str | os.PathLike[str] | None = None,
        *,
        url: str | None = None,
        token: str | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        if (socket_path is None) == (url is None):
            raise ValueError("give either a socket path or a URL")
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
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

    async def _request(self, method: str, path: str, body: Any = None) -> Any:
        """One request; its JSON answer.

        Raises:
            ControlUnavailable: no daemon answers.
            ControlRefused: the daemon refused (401 or 403).
            ControlError: any other error answer.
        """
        try:
            response = await self._http.request(method, path, json=body)
        except httpx.ConnectError:
            raise ControlUnavailable(f"no daemon is listening on {self.where}") from None
        except httpx.TransportError as exc:
            raise ControlUnavailable(f"the daemon on {self.where} did not answer: {exc}") from None
        if response.is_success:
            return response.json()
        try:
            answer = response.json()
            message, code = str(answer["error"]), str(answer["code"])
        except (ValueError, KeyError, TypeError):
            message, code = response.text or response.reason_phrase, "http_error"
        error = ControlRefused if response.status_code in (401, 403) else ControlError
        raise error(message, status=response.status_code, code=code)
