"""What a task payload means (the runtime's reading of an accepted task envelope; commands are
read by :mod:`quarterdeck.domain.commands`), and the backoff between a mission's attempts."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """A task payload: which lane (None: the default lane), what to do, with what input."""

    lane: str | None
    objective: str
    input: Mapping[str, Any]
    budget: Mapping[str, Any] = field(default_factory=dict)


def parse_task(payload: Mapping[str, Any]) -> TaskSpec | list[str]:
    """Read a task payload; return the spec or every problem (``payload.<field>: ...``)."""
    problems: list[str] = []
    lane = payload.get("lane")
    if lane is not None and (not isinstance(lane, str) or not lane):
        problems.append("payload.lane: must be a lane name")
        lane = None
    objective = payload.get("objective", "")
    if not isinstance(objective, str):
        problems.append("payload.objective: must be text")
        objective = ""
    task_input = payload.get("input", {})
    if not isinstance(task_input, Mapping):
        problems.append("payload.input: must be an object")
        task_input = {}
    budget = payload.get("budget", {})
    if not isinstance(budget, Mapping):
        problems.append("payload.budget: must be an object")
        budget = {}
    if problems:
        return problems
    return TaskSpec(lane, objective, task_input, budget)


def backoff_delay(
    number: int, initial_s: float, cap_s: float, rng: random.Random | None = None
) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, initial * 2**(number-1))]."""
    ceiling = min(cap_s, initial_s * 2 ** max(0, number - 1))
    return (rng or random).uniform(0, ceiling)
