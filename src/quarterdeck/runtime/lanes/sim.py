"""The ``sim`` lane: a seeded simulated agent for the demo and most tests.

Deterministic for a given seed: the same (seed, turn, lane, try on that lane, lease attempt)
always draws the same latency, outcome and actions, while a retry (the next try) draws anew. A task steers it through optional knobs in ``input.sim``:

- ``latency_ms``: how long the agent works (default: drawn, 20-400 ms);
- ``outcome``: ``complete`` | ``fail`` | ``hang`` (default: drawn, mostly complete);
- ``actions``: tool calls to request, e.g. ``[{"tool": "deploy", "args": {"env": "prod"}}]``
  (default: drawn, sometimes one);
- ``progress``: number of progress messages (default 2).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field

from quarterdeck.runtime.lanes.base import Adapter, LaneFailure, LaneOptions, MissionContext
from quarterdeck.runtime.validation import says

_TOOLS = ("search", "read_file", "write_file", "deploy", "send_email", "refund")

Rate = Annotated[float, Field(ge=0, le=1), says("must be a number from 0 to 1")]


class SimOptions(LaneOptions):
    """``seed`` (the draws), ``failure_rate`` and ``action_rate`` (0 to 1) and
    ``max_latency_ms`` (at least 20)."""

    seed: int = 0
    failure_rate: Rate = 0.1
    action_rate: Rate = 0.2
    max_latency_ms: Annotated[int, Field(ge=20), says("must be an integer of at least 20")] = 400


class SimLane:
    """A simulated agent."""

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        self.name = name
        parsed = SimOptions.parse(name, options)
        self.seed = parsed.seed
        self.failure_rate = parsed.failure_rate
        self.action_rate = parsed.action_rate
        self.max_latency_ms = parsed.max_latency_ms

    def _rng(self, ctx: MissionContext) -> random.Random:
        key = f"{self.seed}:{ctx.turn_id}:{ctx.lane}:{ctx.number}:{ctx.attempt}"
        digest = hashlib.sha256(key.encode()).digest()
        return random.Random(int.from_bytes(digest[:8], "big"))

    async def run(self, ctx: MissionContext) -> dict[str, Any]:
        """Simulate the agent: progress, optional actions, then the outcome."""
        rng = self._rng(ctx)
        knobs = ctx.input.get("sim", {}) if isinstance(ctx.input.get("sim"), Mapping) else {}
        latency_ms = knobs.get("latency_ms")
        if not isinstance(latency_ms, int | float) or isinstance(latency_ms, bool):
            latency_ms = rng.randint(20, max(20, self.max_latency_ms))
        outcome = knobs.get("outcome")
        if outcome not in ("complete", "fail", "hang"):
            outcome = "fail" if rng.random() < self.failure_rate else "complete"
        actions = knobs.get("actions")
        if not isinstance(actions, list):
            actions = (
                [{"tool": rng.choice(_TOOLS), "args": {"target": f"item-{rng.randint(1, 99)}"}}]
                if rng.random() < self.action_rate
                else []
            )
        steps = knobs.get("progress", 2)
        steps = steps if isinstance(steps, int) and 0 <= steps <= 100 else 2
        pause = latency_ms / 1000 / (steps + 1)
        for step in range(steps):
            await asyncio.sleep(pause)
            ctx.emit("progress", {"message": f"step {step + 1} of {steps}", "step": step + 1})
        decisions = []
        for index, action in enumerate(actions):
            if not isinstance(action, Mapping) or not isinstance(action.get("tool"), str):
                raise LaneFailure(f"input.sim.actions[{index}]: needs a 'tool' string")
            args = action.get("args", {})
            decision = await ctx.request_action(
                f"{ctx.mission_id}:{index}",
                action["tool"],
                args if isinstance(args, Mapping) else {},
            )
            decisions.append(
                {"tool": action["tool"], "outcome": decision.outcome, "args": dict(decision.args)}
            )
        await asyncio.sleep(pause)
        if outcome == "hang":
            await asyncio.Event().wait()
        if outcome == "fail":
            raise LaneFailure(f"simulated failure (seed {self.seed}, try {ctx.number})")
        return {
            "summary": f"done: {ctx.objective}" if ctx.objective else "done",
            "lane": self.name,
            "actions": decisions,
        }

    async def close(self) -> None:
        """Nothing to release."""


ADAPTER = Adapter("sim", SimOptions, SimLane)
