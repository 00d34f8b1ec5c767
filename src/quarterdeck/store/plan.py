"""What the store knows of the configuration and of claimed work: lane plans, the work plan
supervision reads, and the claim that fences a worker's writes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from quarterdeck.domain.authority import Roster
from quarterdeck.domain.policy import Policy
from quarterdeck.domain.recovery import Role
from quarterdeck.domain.routing import ActionCaps
from quarterdeck.store.outbox import Target


@dataclass(frozen=True, slots=True)
class LanePlan:
    """What the store needs to know of a lane to route and retry its work."""

    name: str
    fallback: str | None
    max_attempts: int
    backoff_initial_s: float
    backoff_max_s: float


@dataclass(frozen=True, slots=True)
class WorkPlan:
    """The lanes as the store sees them, and what supervision needs: the policy in force,
    where notifications go, how long a claim on an approval holds, and who holds which roles
    (the roster commands are checked against)."""

    lanes: Mapping[str, LanePlan]
    default_lane: str
    hold_s: float
    policy: Policy | None = None
    """None: every dispatch and action is allowed (recorded as such)."""
    targets: tuple[Target, ...] = ()
    claim_s: float = 120.0
    attested: Callable[[str], Mapping[str, str]] | None = None
    """``attested(lane)``: the current SHA-256 of each of the lane's attested files (for
    re-baselining); supplied by the runtime, which reads the files."""
    caps: ActionCaps = field(default_factory=ActionCaps)
    """How large a call, and how many actions per mission, the gate accepts."""
    roster: Roster = field(default_factory=Roster)
    """Who holds which roles where (empty: no person may do anything)."""


@dataclass(frozen=True, slots=True)
class Claim:
    """A mission this worker holds, with what it needs to run it and to fence its writes."""

    mission_id: str
    turn_id: str
    workspace: str
    lane: str
    exec_lane: str
    role: Role
    number: int
    attempt: int
    version: int
    owner: str
    objective: str
    input: Mapping[str, Any]
    budget: Mapping[str, Any]
    session_id: str | None = None
