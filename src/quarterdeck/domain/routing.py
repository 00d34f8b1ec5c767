"""Routing a supervised request, as pure rules: the stable action key of each kind of request
(a mission's dispatch, an agent's action, an SDK request), and what to do with the policy's
decision, with an earlier answer for the same key, or with a call whose lease is gone:
release it, deny it, hold it for a person, wait on the approval already open, answer as
before, or refuse it as out of sequence. ``store/routing.decide_and_record`` applies them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from quarterdeck.domain.canonical import canonical_text
from quarterdeck.domain.policy import Outcome, PolicyDecision, TraceStep
from quarterdeck.domain.states import APPROVAL_ALLOWED, APPROVAL_REFUSED, MISSION_HOLDS_LEASE


class Asker(StrEnum):
    """The kinds of request the policy is asked about (the ``kind`` of a decision row)."""

    DISPATCH = "dispatch"
    """A queued mission asks to start."""
    ACTION = "action"
    """An agent's tool call, inside a claimed mission."""
    SDK = "sdk"
    """A caller outside any lane asks to run a tool."""


def dispatch_key(mission_id: str) -> str:
    """A mission's dispatch: ``dispatch:<mission>``."""
    return f"dispatch:{mission_id}"


def action_key(turn_id: str, action_id: str) -> str:
    """An agent's action id, scoped to its turn (stable across the turn's retries):
    ``turn:<turn>:<action>``."""
    return f"turn:{turn_id}:{action_id}"


def sdk_key(action_id: str) -> str:
    """An SDK caller's action id: ``sdk:<action>``."""
    return f"sdk:{action_id}"


class Step(StrEnum):
    """What happens to a request."""

    RELEASE = "release"
    """Allowed: the action goes ahead (for a dispatch, the mission is claimed)."""
    DENY = "deny"
    """Refused, with a reason the asker hears."""
    HOLD = "hold"
    """A person decides: open an approval; the asker waits."""
    WAIT = "wait"
    """An approval bound to the key is still open: the asker waits on it."""
    ANSWER = "answer"
    """Asked again: the earlier answer stands; nothing new is decided or recorded."""
    REFUSE = "refuse"
    """Out of sequence: the key was decided for another tool or other arguments."""


@dataclass(frozen=True, slots=True)
class Route:
    """Where a request goes, and what its decision row records."""

    step: Step
    verdict: str
    """``allow``, ``deny`` or ``pending``: the verdict recorded (and answered)."""
    reason: str | None = None
    """The reason recorded and answered (None for a plain allow or hold)."""
    args: Mapping[str, Any] | None = None
    """The arguments released when they are not the ones asked for (an approval edited them)."""
    approval_id: str | None = None
    """The approval that answers the request, when one is bound to its key."""
    decided_by: str | None = None
    """Who decided that approval (the decision row's ``decided_by``)."""


@dataclass(frozen=True, slots=True)
class Prior:
    """An earlier answer for the same action key: a decision, or the approval bound to it."""

    verdict: str
    """``allow``, ``deny`` or ``pending``."""
    same_call: bool
    """Whether it was for the same tool and arguments as the request now."""
    reason: str | None = None
    args: Mapping[str, Any] | None = None
    """The arguments it lets through (an approval's edited ones, when edited)."""
    approval_id: str | None = None
    """The approval bound to the key (None: a policy decision without one)."""
    state: str | None = None
    """That approval's state."""
    decided_by: str | None = None


@dataclass(frozen=True, slots=True)
class Ruling:
    """A decision made without asking the policy (a guard's, or a bound approval's) with its
    route: what is recorded in the policy's place."""

    decision: PolicyDecision
    route: Route


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds an agent's mission now, as the gate reads it before it decides anything."""

    mission_state: str
    attempt: int
    lease_owner: str | None
    turn_state: str


_VERDICTS: Final = {
    Outcome.ALLOW: "allow",
    Outcome.DENY: "deny",
    Outcome.REQUIRE_APPROVAL: "pending",
}
_RELEASE: Final = Route(Step.RELEASE, "allow")
_HOLD: Final = Route(Step.HOLD, "pending")
SHADOW_NOT_HELD: Final = "needs approval, and a shadow mission is never held for a person"
NOBODY_TO_HOLD: Final = "needs approval, and nothing here can hold it for a person"


def verdict_of(decision: PolicyDecision) -> str:
    """``allow``, ``deny`` or ``pending`` for a fresh policy decision."""
    return _VERDICTS[decision.outcome]


def approval_verdict(state: str) -> str:
    """``allow``, ``deny`` or ``pending`` for an approval in ``state``."""
    if state in APPROVAL_ALLOWED:
        return "allow"
    if state in APPROVAL_REFUSED:
        return "deny"
    return "pending"


def route_decision(
    kind: Asker, decision: PolicyDecision, *, shadow: bool = False, can_hold: bool = True
) -> Route:
    """Where the policy's fresh ``decision`` sends a request: ``allow`` releases it, ``deny``
    refuses it with the deciding rule, ``require_approval`` holds it for a person, unless
    nothing can hold it (``can_hold`` false) or it is a shadow mission's dispatch (a shadow
    is never held for a person): then it is refused."""
    if decision.outcome is Outcome.ALLOW:
        return _RELEASE
    if decision.outcome is Outcome.DENY:
        return Route(Step.DENY, "deny", decision.denial_reason())
    if kind is Asker.DISPATCH and shadow:
        return Route(Step.DENY, "deny", SHADOW_NOT_HELD)
    if not can_hold:
        return Route(Step.DENY, "deny", NOBODY_TO_HOLD)
    return _HOLD


def route_repeat(kind: Asker, prior: Prior, action_id: str) -> Route:
    """Where a request goes when its key was answered before.

    An SDK request decided by the policy before is answered as before, unless that decision
    was for another tool or other arguments: then it is refused as out of sequence. An
    agent's action takes what the approval bound to its key says: released (with the
    approved or edited arguments), refused, or waiting. The agent's tool and arguments are
    not compared with the approval's: the same action id with another call gets the
    approval's answer.
    """
    if kind is Asker.SDK:
        if not prior.same_call:
            reason = f"action {action_id!r} was decided for other tool or arguments"
            return Route(Step.REFUSE, "deny", reason)
        return Route(Step.ANSWER, prior.verdict, prior.reason, prior.args)
    step = {"allow": Step.RELEASE, "deny": Step.DENY}.get(prior.verdict, Step.WAIT)
    return Route(step, prior.verdict, prior.reason, prior.args, prior.approval_id, prior.decided_by)


def same_call(tool: str, args: Mapping[str, Any], other_tool: str, other_args: Any) -> bool:
    """Whether ``other_tool`` with ``other_args`` (decoded JSON) is the call ``tool`` with
    ``args``, comparing the arguments as canonical JSON reads them back."""
    return tool == other_tool and canonical_form(args) == other_args


def canonical_form(args: Mapping[str, Any]) -> Any:
    """``args`` as stored (canonical JSON) and read back."""
    return json.loads(canonical_text(dict(args)))


def lease_guard(holder: Holder | None, attempt: int, owner: str) -> str | None:
    """Why an agent's call gets nothing, decided or released, when its claim of the mission
    (``attempt``, ``owner``) no longer holds: the lease is gone, a person has taken the turn
    over, or the mission left the states that hold a lease. None when it holds."""
    if holder is None or (holder.attempt, holder.lease_owner) != (attempt, owner):
        return "the mission's lease is gone"
    if holder.turn_state == "taken_over":
        return "a person has taken over the turn"
    if holder.mission_state not in MISSION_HOLDS_LEASE:
        return f"the mission is {holder.mission_state}"
    return None


def guarded(reason: str, policy_hash: str) -> Ruling:
    """The refusal recorded for a call the lease guard stopped (see :func:`lease_guard`)."""
    decision = PolicyDecision(
        Outcome.DENY, None, (TraceStep("(guard)", True, reason, kind="guard"),), None, None, (),
        None, policy_hash,
    )  # fmt: skip
    return Ruling(decision, Route(Step.DENY, "deny", reason))


def bound(kind: Asker, prior: Prior, action_id: str, policy_hash: str) -> Ruling:
    """What is recorded for a request answered by the approval bound to its key: the
    approval's verdict, with a trace naming it (see :func:`route_repeat`)."""
    why = f"bound to approval {prior.approval_id} ({prior.state})"
    decision = PolicyDecision(
        Outcome.REQUIRE_APPROVAL, None, (TraceStep("(approval)", True, why, kind="approval"),),
        None, None, (), None, policy_hash,
    )  # fmt: skip
    return Ruling(decision, route_repeat(kind, prior, action_id))


def allowed_by(decision: PolicyDecision) -> str:
    """Why an allowed call was allowed, in one line (what the agent hears)."""
    if decision.rule is not None:
        return f"allowed by policy rule {decision.rule!r}"
    return decision.trace[0].why if decision.trace else "allowed"
