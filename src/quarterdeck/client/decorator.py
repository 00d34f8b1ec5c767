"""``@require_approval``: a function that runs only once Quarterdeck lets it.

Each call asks for approval with the function's bound arguments (defaults applied) as the
action's arguments. Allowed or approved: the function runs with its arguments as given.
Edited: it runs with the edited arguments. Denied, rejected or expired: the exception is
raised and the function is never called.

Sync functions run the request on a fresh event loop (``asyncio.run``), so they must not be
called from inside a running event loop: that raises ``RuntimeError`` (call them through
``asyncio.to_thread``, or guard an ``async def`` instead).
"""

from __future__ import annotations

import asyncio
import enum
import functools
import inspect
import os
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ParamSpec, TypeVar, cast

from quarterdeck.client.approvals import request_approval
from quarterdeck.client.decisions import ApprovalDecision
from quarterdeck.client.errors import ApprovalEditError
from quarterdeck.client.submit import Client
from quarterdeck.domain.canonical import canonical_text

P = ParamSpec("P")
R = TypeVar("R")

ClientSource = Client | Callable[[], Client]
"""A client, or a function that returns one (called once per guarded call)."""
ActionIdSource = Callable[[dict[str, Any]], str]
"""Makes the action id from the call's JSON arguments (a stable id makes retries idempotent)."""

SKIPPED = frozenset({"self", "cls"})
"""Parameters that are passed through but not sent as arguments."""


def to_json(value: Any, where: str = "argument") -> Any:
    """``value`` as JSON: strings, numbers, booleans, null, lists (from lists and tuples),
    objects with string keys; paths become strings and enums their values.

    Raises:
        TypeError: something else.
    """
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise TypeError(f"{where}: {value!r} is not JSON")
        return value
    if isinstance(value, enum.Enum):
        return to_json(value.value, where)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, list | tuple):
        return [to_json(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        result: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: key {key!r} is not a string")
            result[key] = to_json(item, f"{where}.{key}")
        return result
    raise TypeError(f"{where}: {type(value).__name__} is not JSON-able")


def json_arguments(bound: inspect.BoundArguments) -> dict[str, Any]:
    """The bound arguments as a JSON object (``self`` and ``cls`` left out)."""
    return {
        name: to_json(value, f"argument {name!r}")
        for name, value in bound.arguments.items()
        if name not in SKIPPED
    }


def edited_call(
    signature: inspect.Signature,
    bound: inspect.BoundArguments,
    sent: Mapping[str, Any],
    edited: Mapping[str, Any],
    *,
    action_id: str,
    approval_id: str | None,
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The positional and keyword arguments for a call with the ``edited`` arguments.

    An edit replaces the arguments: a parameter it leaves out takes its default; an edited
    value equal (as JSON) to what was sent keeps the original Python object.

    Raises:
        ApprovalEditError: the edit names an unknown parameter or leaves out a required one.
    """

    def refuse(message: str) -> ApprovalEditError:
        return ApprovalEditError(
            f"edited arguments do not fit: {message}", action_id=action_id,
            approval_id=approval_id,
        )  # fmt: skip

    unknown = sorted(set(edited) - (set(signature.parameters) - SKIPPED))
    if unknown:
        raise refuse(f"no parameter named {', '.join(map(repr, unknown))}")
    arguments: OrderedDict[str, Any] = OrderedDict()
    for name, parameter in signature.parameters.items():
        if name in SKIPPED and name in bound.arguments:
            arguments[name] = bound.arguments[name]
        elif name in edited:
            value = edited[name]
            if name in sent and canonical_text(sent[name]) == canonical_text(value):
                value = bound.arguments[name]
            elif parameter.kind is inspect.Parameter.VAR_POSITIONAL:
                if not isinstance(value, list):
                    raise refuse(f"{name!r} must be a list")
                value = tuple(value)
            elif parameter.kind is inspect.Parameter.VAR_KEYWORD and not isinstance(value, Mapping):
                raise refuse(f"{name!r} must be an object")
            arguments[name] = value
        elif parameter.default is not inspect.Parameter.empty:
            arguments[name] = parameter.default
        elif parameter.kind not in (
            inspect.Parameter.VAR_POSITIONAL,
            inspect.Parameter.VAR_KEYWORD,
        ):
            raise refuse(f"the edit leaves out {name!r}, which has no default")
    call = inspect.BoundArguments(signature, arguments)
    return call.args, call.kwargs


def require_approval(
    client_or_factory: ClientSource,
    *,
    tool: str | None = None,
    action_id: ActionIdSource | None = None,
    lane: str | None = None,
    timeout_s: float | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Guard a function (sync or async) with an approval request per call.

    Args:
        client_or_factory: a :class:`Client` (opened here when it is not open on the running
            loop; a sync call always opens a fresh one on its own loop), or a function
            returning one.
        tool: the tool name the policy sees (default: the function's name).
        action_id: makes the action id from the call's JSON arguments; default a fresh UUID
            per call. A stable id binds a retried call to the same approval.
        lane, timeout_s: passed to :meth:`Client.request_approval`.

    The guarded function raises what :meth:`Client.request_approval` raises, without being
    called; with edited arguments it is called with them (see :func:`edited_call`).
    """

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        signature = inspect.signature(fn)
        name = tool or fn.__name__

        def prepare(
            args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> tuple[inspect.BoundArguments, dict[str, Any], str]:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            sent = json_arguments(bound)
            wanted_id = action_id(dict(sent)) if action_id is not None else str(uuid.uuid4())
            return bound, sent, wanted_id

        async def ask(sent: dict[str, Any], wanted_id: str) -> ApprovalDecision:
            if isinstance(client_or_factory, Client):
                source = client_or_factory
            else:
                source = client_or_factory()
            if source.usable_here():
                return await _ask(source, name, sent, wanted_id, lane, timeout_s)
            async with Client(source.url, workspace=source.workspace) as fresh:
                return await _ask(fresh, name, sent, wanted_id, lane, timeout_s)

        def call_arguments(
            bound: inspect.BoundArguments,
            sent: dict[str, Any],
            decision: ApprovalDecision,
            wanted_id: str,
        ) -> tuple[tuple[Any, ...], dict[str, Any]]:
            if decision.outcome != "edited":
                return bound.args, bound.kwargs
            return edited_call(
                signature, bound, sent, decision.args, action_id=wanted_id,
                approval_id=decision.approval_id,
            )  # fmt: skip

        if inspect.iscoroutinefunction(fn):
            afn = cast(Callable[..., Awaitable[Any]], fn)

            @functools.wraps(fn)
            async def guarded_async(*args: Any, **kwargs: Any) -> Any:
                bound, sent, wanted_id = prepare(args, kwargs)
                decision = await ask(sent, wanted_id)
                call_args, call_kwargs = call_arguments(bound, sent, decision, wanted_id)
                return await afn(*call_args, **call_kwargs)

            return cast(Callable[P, R], guarded_async)

        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                pass
            else:
                raise RuntimeError(
                    f"{fn.__qualname__} is a sync function guarded by require_approval: it "
                    "blocks while it waits, so it cannot be called inside a running event "
                    "loop (use 'await asyncio.to_thread(...)', or guard an async function)"
                )
            bound, sent, wanted_id = prepare(args, kwargs)
            decision = asyncio.run(ask(sent, wanted_id))
            call_args, call_kwargs = call_arguments(bound, sent, decision, wanted_id)
            return fn(*call_args, **call_kwargs)

        return cast(Callable[P, R], guarded)

    return decorate


async def _ask(
    client: Client,
    tool: str,
    sent: dict[str, Any],
    action_id: str,
    lane: str | None,
    timeout_s: float | None,
) -> ApprovalDecision:
    return await request_approval(
        client, tool, sent, action_id=action_id, lane=lane, timeout_s=timeout_s
    )
