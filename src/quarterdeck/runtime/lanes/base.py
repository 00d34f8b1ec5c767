"""The lane interface shared by every adapter, and what an adapter declares about itself
(:class:`Adapter`: its name, its options, how a lane is built)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from quarterdeck.runtime.lanes.containment import AgentRegistry
from quarterdeck.runtime.validation import problems

DecisionOutcome = Literal["approved", "rejected", "edited"]


@dataclass(frozen=True, slots=True)
class Decision:
    """The runtime's answer to an action request: what the agent may do, with which arguments."""

    action_id: str
    outcome: DecisionOutcome
    args: Mapping[str, Any]
    reason: str | None = None

    def to_message(self) -> dict[str, Any]:
        """The JSON line sent to a subprocess agent."""
        return {
            "type": "decision",
            "action_id": self.action_id,
            "outcome": self.outcome,
            "args": dict(self.args),
            "reason": self.reason,
        }


class LaneFailure(Exception):
    """The agent failed; ``reason`` says why (it becomes the mission's error)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


ProgressSink = Callable[[str, Mapping[str, Any]], None]
"""``emit(type, data)``: record a progress, log or error event for the mission."""
ActionGate = Callable[[str, str, Mapping[str, Any]], Coroutine[Any, Any, Decision]]
"""``request_action(action_id, tool, args)``: ask for a decision on a tool call."""


@dataclass
class MissionContext:
    """What a lane gets to run one mission."""

    mission_id: str
    turn_id: str
    workspace: str
    lane: str
    attempt: int
    objective: str
    input: Mapping[str, Any]
    workdir: Path
    emit: ProgressSink
    request_action: ActionGate
    budget: Mapping[str, Any] = field(default_factory=dict)
    number: int = 1
    """Which try on its lane this mission is (1, 2, ...); ``attempt`` counts its leases."""
    agent_env: Mapping[str, str] = field(default_factory=dict)
    """What an agent process gets from the runtime in its environment: its session's
    credential and the control API's address (empty when the runtime serves no API)."""
    on_agent: Callable[[int, bool], None] | None = None
    """Told each agent process's pid once it started (True) and once it exited (False)."""
    agents: AgentRegistry | None = None
    """Where a lane that starts processes records them before they run (the runtime's
    :class:`~quarterdeck.runtime.reaper.Reaper`); None outside a runtime."""


class Lane(Protocol):
    """An adapter that runs missions. ``run`` returns the deliverable or raises
    :class:`LaneFailure`; cancellation (timeout, take-over, drain) must stop the agent."""

    name: str

    async def run(self, ctx: MissionContext) -> dict[str, Any]:
        """Run one mission to its deliverable."""
        ...

    async def close(self) -> None:
        """Release whatever the lane holds (connections, processes)."""
        ...


class LaneOptions(BaseModel):
    """An adapter's options (a lane's ``options = {...}``): TOML's types as written, nothing
    coerced ("3" is not a number); keys the adapter does not know are ignored."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    @classmethod
    def parse(cls, lane: str, options: Mapping[str, Any]) -> Self:
        """Validate a lane's options.

        Raises:
            ValueError: every problem, as ``lane 'x': options.key: message; ...``.
        """
        try:
            return cls.model_validate(dict(options))
        except ValidationError as exc:
            raise ValueError(f"lane {lane!r}: " + "; ".join(problems(exc, "options"))) from None

    def startup_problems(self) -> list[str]:
        """What stops this process from running the lane as configured (checked when a
        runtime starts, not when the configuration is read), as ``options.key: message``."""
        return []


@dataclass(frozen=True, slots=True)
class Adapter:
    """A kind of lane: the name a lane's ``adapter`` gives, the options it takes, and how a
    lane is built from its name and options (refusing bad options with ``ValueError``)."""

    name: str
    options: type[LaneOptions]
    build: Callable[[str, Mapping[str, Any]], Lane]
