"""What the control API's route modules share: the error every refusal becomes, the principal a
request was resolved to, reading a JSON body and query parameters, which workspaces a
principal may read, and a watch on the ledger head for long polls."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from aiohttp import web

from quarterdeck.domain.authority import (
    ALL_WORKSPACES,
    Kind,
    Principal,
    Refusal,
    Roster,
    may_read,
)
from quarterdeck.domain.envelope import RUNTIME_WORKSPACE, decode_line
from quarterdeck.store.database import Database
from quarterdeck.store.ledger import ledger_head

T = TypeVar("T")
PRINCIPAL: Final = web.RequestKey("principal", Principal)
MAX_WAIT_S: Final = 60.0
"""Longest a long poll waits before answering that nothing changed."""
HEAD_POLL_S: Final = 0.5
"""How often a long poll reads the ledger head when no commit of this node woke it (another
node's commits, on PostgreSQL)."""

HTTP_CODES: Final = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
}


class ApiError(Exception):
    """A request that is answered with an error: its HTTP status, stable code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    @classmethod
    def refused(cls, refusal: Refusal) -> ApiError:
        """403 for an authorization refusal."""
        return cls(403, refusal.code, refusal.message)


def error_response(status: int, code: str, message: str) -> web.Response:
    """The JSON body of every error."""
    return web.json_response({"error": message, "code": code}, status=status)


def principal_of(request: web.Request) -> Principal:
    """The principal the middleware resolved for ``request``."""
    return request[PRINCIPAL]


async def json_body(request: web.Request) -> Any:
    """The request's body as JSON (a 400 naming the problem when it is not)."""
    raw = await request.read()
    try:
        return decode_line(raw)
    except UnicodeDecodeError as exc:
        raise ApiError(400, "bad_json", f"the body is not UTF-8: {exc.reason}") from None
    except json.JSONDecodeError as exc:
        raise ApiError(
            400,
            "bad_json",
            f"the body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
        ) from None
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "bad_json", f"the body is not JSON: {exc}") from None


def number_param(
    request: web.Request, name: str, default: float | None, low: float, high: float
) -> float | None:
    """A numeric query parameter within ``[low, high]`` (400 naming it otherwise)."""
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ApiError(400, "bad_request", f"{name}: must be a number, not {text!r}") from None
    if not low <= value <= high:
        raise ApiError(400, "bad_request", f"{name}: must be between {low:g} and {high:g}")
    return value


def int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within ``[low, high]``."""
    value = number_param(request, name, default, low, high)
    assert value is not None
    if value != int(value):
        raise ApiError(400, "bad_request", f"{name}: must be a whole number")
    return int(value)


def json_response(body: Any) -> web.Response:
    """A JSON answer (values JSON cannot carry natively are written as text)."""
    return web.json_response(body, dumps=lambda value: json.dumps(value, default=str))


# --- what a principal may read -------------------------------------------------------------------


def readable(roster: Roster, principal: Principal) -> frozenset[str] | None:
    """The workspaces ``principal`` may read (None: all of them)."""
    if principal.kind is Kind.RUNTIME:
        return None
    found: set[str] = set()
    for role in roster.roles(principal):
        scope = roster.workspaces(principal, role)
        if scope is None:
            return None
        found |= scope
    found.discard(ALL_WORKSPACES)
    return frozenset(found)


@dataclass(frozen=True, slots=True)
class ReadScope:
    """What a read covers: ``workspace`` for the query (None: every workspace) and, when the
    principal reads several but not all workspaces, ``only`` (the rows to keep)."""

    workspace: str | None
    only: frozenset[str] | None = None

    def keeps(self, workspace: str | None) -> bool:
        """Whether a row of ``workspace`` is in the scope (the runtime's own rows always)."""
        if self.only is None or workspace is None or workspace == RUNTIME_WORKSPACE:
            return True
        return workspace in self.only

    def filter(self, rows: Iterable[Mapping[str, Any]]) -> list[Any]:
        """The rows (with a ``workspace`` key) in the scope."""
        return [row for row in rows if self.keeps(row.get("workspace"))]


def read_scope(roster: Roster, principal: Principal, asked: str | None) -> ReadScope:
    """The scope of a read that asked for workspace ``asked`` (None: whatever may be read).

    Raises:
        ApiError: 403 when the principal may not read ``asked`` (or anything).
    """
    if asked is not None:
        refusal = may_read(roster, principal, asked)
        if refusal is not None:
            raise ApiError.refused(refusal)
        return ReadScope(asked)
    if principal.kind is Kind.AGENT:
        raise ApiError.refused(may_read(roster, principal, None) or Refusal("agent", "agent"))
    scope = readable(roster, principal)
    if scope is None:
        return ReadScope(None)
    if not scope:
        raise ApiError.refused(may_read(roster, principal, None) or Refusal("forbidden", ""))
    if len(scope) == 1:
        return ReadScope(next(iter(scope)))
    return ReadScope(None, scope)


# --- the ledger head, for long polls -------------------------------------------------------------


class HeadWatch:
    """Wakes long polls when the ledger head moves: at once on this node's commits
    (:meth:`notify`), and by reading the head every :data:`HEAD_POLL_S` for other nodes'."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._next: asyncio.Future[None] | None = None

    def notify(self, _head_seq: int) -> None:
        """A commit of this node moved the head (the writer's commit hook)."""
        if self._next is not None and not self._next.done():
            self._next.set_result(None)
        self._next = None

    def _commit(self) -> asyncio.Future[None]:
        """Done at this node's next commit."""
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        return self._next

    async def head(self) -> int:
        """The ledger's head seq now."""
        async with self._db.read() as conn:
            seq, _hash = await ledger_head(conn)
        return int(seq)

    async def wait(self, after: int, timeout_s: float) -> int:
        """The head once it is past ``after``, or as it stands after ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            commit = self._commit()  # taken before reading: no commit falls in between
            head = await self.head()
            left = deadline - loop.time()
            if head > after or left <= 0:
                return head
            await asyncio.wait([commit], timeout=min(left, HEAD_POLL_S))

    async def until(self, check: Callable[[], Awaitable[T | None]], timeout_s: float) -> T | None:
        """What ``check`` answers once it answers something, read again after each commit;
        None after ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            commit = self._commit()
            found = await check()
            left = deadline - loop.time()
            if found is not None or left <= 0:
                return found
            await asyncio.wait([commit], timeout=min(left, HEAD_POLL_S))
