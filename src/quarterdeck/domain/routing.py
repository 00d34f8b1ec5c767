"""Routing a supervised request, as pure rules: the stable action key of each kind of request
(a mission's dispatch, an agent's action, an SDK request), the hash that binds a key to the
call first asked under it, the caps on a call's size and on a mission's number of actions, and
what to do with the policy's decision, with an earlier answer for the same key, or with a call
whose lease is gone: release it, deny it, hold it for a person, wait on the approval already
open, answer as before, or refuse it as out of sequence. ``store/routing.decide_and_record``
applies them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from quarterdeck.domain.canonical import canonical_json, sha256_hex
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


OUT_OF_SEQUENCE: Final = "out_of_sequence"
"""Reason code: the action id was first asked for another tool or other arguments."""
ARGS_TOO_LARGE: Final = "args_too_large"
"""Reason code: the call (tool and arguments as canonical JSON) is over the size cap."""
TOO_MANY_ACTIONS: Final = "too_many_actions"
"""Reason code: the mission has asked for as many actions as the cap allows."""


@dataclass(frozen=True, slots=True)
class ActionCaps:
    """What one agent may ask of the gate (``quarterdeck.toml``: ``max_action_args_bytes``,
    ``max_actions_per_mission``)."""

    max_args_bytes: int = 65_536
    """The largest call, counted as the canonical JSON of ``[tool, args]``, in bytes."""
    max_per_mission: int = 200
    """How many actions one mission may ask for; the next one fails the mission."""


@dataclass(frozen=True, slots=True)
class Call:
    """A tool call as the gate binds it: its size and the SHA-256 of the canonical JSON of
    ``[tool, args]`` (the hash an action key is bound to)."""

    tool: str
    args: Mapping[str, Any]
    size: int
    hash: str


MAX_STORED_TOOL: Final = 256
"""How much of a tool's name is kept when its call is not stored whole."""


def call_of(tool: str, args: Mapping[str, Any]) -> Call:
    """Measure and hash a call.

    Raises:
        ValueError: ``args`` hold NaN or an infinity (canonical JSON has neither).
        TypeError: ``args`` hold something JSON cannot express.
    """
    body = canonical_json([tool, dict(args)])
    return Call(tool, args, len(body), sha256_hex(body))


def digest_of(call: Call) -> dict[str, Any]:
    """What is stored of a call in place of its arguments when they are not kept: the size
    and SHA-256 of the whole call."""
    return {"omitted": {"bytes": call.size, "sha256": call.hash}}


def stored_call(call: Call, whole: bool) -> tuple[str, Mapping[str, Any]]:
    """The tool and arguments recorded for ``call``: as asked when ``whole``, else the tool's
    name cut to :data:`MAX_STORED_TOOL` characters and the digest in place of the arguments."""
    if whole:
        return call.tool, call.args
    return call.tool[:MAX_STORED_TOOL], digest_of(call)


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
    code: str | None = None
    """The reason code of a refusal the gate makes itself (``out_of_sequence``, a cap)."""


@dataclass(frozen=True, slots=True)
class Prior:
    """An earlier answer for the same action key: a decision, or the approval bound to it."""

    verdict: str
    """``allow``, ``deny`` or ``pending``."""
    same_call: bool
    """Whether it was for the same tool and arguments as the request now (the same
    :attr:`Call.hash`)."""
    reason: str | None = None
    args: Mapping[str, Any] | None = None
    """The arguments it lets through (an approval's edited ones, when edited)."""
    approval_id: str | None = None
    """The approval bound to the key (None: a policy decision without one)."""
    state: str | None = None
    """That approval's state."""
    decided_by: str | None = None
    decision_id: str | None = None
    """The first decision recorded for the key (what binds it to its call)."""


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

    An action id is bound to the call first asked under it: asked again for another tool or
    other arguments, it is refused as out of sequence (whatever the earlier answer was, and
    for every kind of asker). Asked again for the same call: an SDK request decided by the
    policy is answered as before; an agent's action (or an SDK request bound to an approval)
    takes what the approval bound to its key says: released (with the approved or edited
    arguments), refused, or waiting.
    """
    if not prior.same_call:
        return out_of_sequence(action_id)
    if kind is Asker.SDK and prior.approval_id is None:
        return Route(Step.ANSWER, prior.verdict, prior.reason, prior.args)
    step = {"allow": Step.RELEASE, "deny": Step.DENY}.get(prior.verdict, Step.WAIT)
    return Route(step, prior.verdict, prior.reason, prior.args, prior.approval_id, prior.decided_by)


def out_of_sequence(action_id: str) -> Route:
    """The refusal of an action id asked again for another call."""
    reason = f"{OUT_OF_SEQUENCE}: action {action_id!r} was decided for other tool or arguments"
    return Route(Step.REFUSE, "deny", reason, code=OUT_OF_SEQUENCE)


def same_call(call: Call, bound_hash: str) -> bool:
    """Whether ``call`` is the call an action key was bound to (by its hash)."""
    return call.hash == bound_hash


def over_action_cap(actions_before: int, caps: ActionCaps) -> Route | None:
    """The refusal of an action asked by a mission that has already asked for
    ``caps.max_per_mission`` of them, or None."""
    if actions_before < caps.max_per_mission:
        return None
    reason = (
        f"{TOO_MANY_ACTIONS}: the mission has asked for {actions_before} actions, "
        f"the cap is {caps.max_per_mission} (max_actions_per_mission)"
    )
    return Route(Step.DENY, "deny", reason, code=TOO_MANY_ACTIONS)


def over_size_cap(call: Call, caps: ActionCaps) -> Route | None:
    """The refusal of a call larger than ``caps.max_args_bytes``, or None."""
    if call.size <= caps.max_args_bytes:
        return None
    reason = (
        f"{ARGS_TOO_LARGE}: the call is {call.size} bytes, the cap is "
        f"{caps.max_args_bytes} (max_action_args_bytes)"
    )
    return Route(Step.DENY, "deny", reason, code=ARGS_TOO_LARGE)


def kept_whole(call: Call, caps: ActionCaps, route: Route | None) -> bool:
    """Whether ``call`` is recorded as asked: not when it is over the size cap, nor when the
    mission's action cap refuses it (what it asked for is not kept, only its digest)."""
    if call.size > caps.max_args_bytes:
        return False
    return route is None or route.code != TOO_MANY_ACTIONS


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
    return refused(Route(Step.DENY, "deny", reason), policy_hash, "(guard)")


def refused(route: Route, policy_hash: str, by: str) -> Ruling:
    """What is recorded for a refusal the gate makes without the policy (``by``: the guard,
    a cap, the key's binding), in the policy's place: a denial whose trace gives the reason."""
    decision = PolicyDecision(
        Outcome.DENY, None, (TraceStep(by, True, route.reason or "", kind="guard"),), None,
        None, (), None, policy_hash,
    )  # fmt: skip
    return Ruling(decision, route)


def bound(kind: Asker, prior: Prior, action_id: str, policy_hash: str) -> Ruling:
    """What is recorded for a request answered by what is bound to its key: the approval's
    verdict, with a trace naming it, or the refusal of a call asked under a key bound to
    another (see :func:`route_repeat`)."""
    route = route_repeat(kind, prior, action_id)
    if route.step is Step.REFUSE:
        return refused(route, policy_hash, f"(bound to decision {prior.decision_id})")
    why = f"bound to approval {prior.approval_id} ({prior.state})"
    decision = PolicyDecision(
        Outcome.REQUIRE_APPROVAL, None, (TraceStep("(approval)", True, why, kind="approval"),),
        None, None, (), None, policy_hash,
    )  # fmt: skip
    return Ruling(decision, route)


def allowed_by(decision: PolicyDecision) -> str:
    """Why an allowed call was allowed, in one line (what the agent hears)."""
    if decision.rule is not None:
        return f"allowed by policy rule {decision.rule!r}"
    return decision.trace[0].why if decision.trace else "allowed"
