"""The ``python`` lane: a callable given by import path (``package.module:function``).

The callable receives the :class:`MissionContext` and returns the deliverable (a dict). An
``async def`` runs on the event loop; a plain function runs in a worker thread, where
``ctx.emit`` and ``ctx.request_action`` still work (they hop back to the loop). Raising
:class:`LaneFailure` (or anything else) fails the mission with the reason.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from pydantic import AfterValidator

from quarterdeck.runtime.lanes.base import (
    Adapter,
    Decision,
    LaneFailure,
    LaneOptions,
    MissionContext,
)
from quarterdeck.runtime.validation import problem, required, says


def _import_path(target: str) -> str:
    if ":" not in target:
        raise problem("needs a colon")
    return target


class PythonOptions(LaneOptions):
    """``callable``: the function, as ``package.module:function`` (required)."""

    callable: Annotated[
        str, AfterValidator(_import_path), says("'package.module:function' is required")
    ] = required()


def load_callable(target: str) -> Callable[..., Any]:
    """Import ``package.module:attribute``.

    Raises:
        LaneFailure: the module or attribute cannot be loaded, or is not callable.
    """
    module_name, _, attribute = target.partition(":")
    try:
        value: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            value = getattr(value, part)
    except (ImportError, AttributeError) as exc:
        raise LaneFailure(f"cannot load {target!r}: {exc}") from exc
    if not callable(value):
        raise LaneFailure(f"{target!r} is not callable")
    return value  # type: ignore[no-any-return]


class PythonLane:
    """Runs an in-process agent function."""

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        self.name = name
        self.target = PythonOptions.parse(name, options).callable
        self._function: Callable[..., Any] | None = None

    async def run(self, ctx: MissionContext) -> dict[str, Any]:
        """Call the function with the context; its return value is the deliverable."""
        if self._function is None:
            self._function = load_callable(self.target)
        function = self._function
        try:
            if inspect.iscoroutinefunction(function):
                result = await function(ctx)
            else:
                result = await asyncio.to_thread(
                    function, _threadsafe(ctx, asyncio.get_running_loop())
                )
        except LaneFailure:
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise LaneFailure(f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(result, Mapping):
            raise LaneFailure(f"{self.target} returned {type(result).__name__}, not a dict")
        return dict(result)

    async def close(self) -> None:
        """Nothing to release."""


def _threadsafe(ctx: MissionContext, loop: asyncio.AbstractEventLoop) -> MissionContext:
    """A copy of ``ctx`` whose callbacks may be called from a worker thread."""

    def emit(kind: str, data: Mapping[str, Any]) -> None:
        loop.call_soon_threadsafe(ctx.emit, kind, data)

    def request_action(action_id: str, tool: str, args: Mapping[str, Any]) -> Decision:
        future = asyncio.run_coroutine_threadsafe(ctx.request_action(action_id, tool, args), loop)
        return future.result()

    return dataclasses.replace(ctx, emit=emit, request_action=request_action)  # type: ignore[arg-type]


ADAPTER = Adapter("python", PythonOptions, PythonLane)
