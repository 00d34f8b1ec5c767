"""Routing rules, without a database: the action keys, where the policy's decision sends each
kind of request, what an earlier answer for the same key means, and the gate's lease guard."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from quarterdeck.domain.policy import OnExpiry, Outcome, PolicyDecision, TraceStep
from quarterdeck.domain.routing import (
    ARGS_TOO_LARGE,
    MAX_STORED_TOOL,
    NOBODY_TO_HOLD,
    OUT_OF_SEQUENCE,
    SHADOW_NOT_HELD,
    TOO_MANY_ACTIONS,
    ActionCaps,
    Asker,
    Holder,
    Prior,
    Step,
    action_key,
    allowed_by,
    approval_verdict,
    bound,
    call_of,
    digest_of,
    dispatch_key,
    guarded,
    kept_whole,
    lease_guard,
    out_of_sequence,
    over_action_cap,
    over_size_cap,
    route_decision,
    route_repeat,
    same_call,
    sdk_key,
    stored_call,
    verdict_of,
)
from quarterdeck.domain.states import MACHINES, Kind

ALLOW = Outcome.ALLOW
DENY = Outcome.DENY
ASK = Outcome.REQUIRE_APPROVAL
DISPATCH, ACTION, SDK = Asker.DISPATCH, Asker.ACTION, Asker.SDK


def decision(outcome: Outcome, rule: str | None = "r1", floor: str | None = None) -> PolicyDecision:
    trace = (TraceStep(rule or "(default)", True, "matched", kind="rule"),)
    if floor is not None:
        trace += (TraceStep(floor, True, "over the limit", kind="floor"),)
    held = outcome is ASK
    return PolicyDecision(
        outcome, rule, trace, "lead" if held else None, 60 if held else None,
        ("lead", "cto") if held else (), OnExpiry.REJECT if held else None, "h1", floor,
    )  # fmt: skip


KEYS = [
    (dispatch_key("m1"), "dispatch:m1"),
    (action_key("t1", "a1"), "turn:t1:a1"),
    (action_key("t1", "a:b"), "turn:t1:a:b"),
    (sdk_key("a1"), "sdk:a1"),
]


@pytest.mark.parametrize(("key", "expected"), KEYS)
def test_action_keys(key: str, expected: str) -> None:
    assert key == expected


def test_the_same_action_id_is_another_key_in_another_turn_or_kind() -> None:
    keys = {action_key("t1", "a1"), action_key("t2", "a1"), sdk_key("a1"), dispatch_key("a1")}
    assert len(keys) == 4


FRESH = [
    # kind, outcome, shadow, can_hold -> step, verdict, reason
    (DISPATCH, ALLOW, False, True, Step.RELEASE, "allow", None),
    (DISPATCH, ALLOW, True, False, Step.RELEASE, "allow", None),
    (DISPATCH, DENY, False, True, Step.DENY, "deny", "denied by policy rule 'r1'"),
    (DISPATCH, DENY, True, True, Step.DENY, "deny", "denied by policy rule 'r1'"),
    (DISPATCH, ASK, False, True, Step.HOLD, "pending", None),
    (DISPATCH, ASK, True, True, Step.DENY, "deny", SHADOW_NOT_HELD),
    (DISPATCH, ASK, True, False, Step.DENY, "deny", SHADOW_NOT_HELD),
    (DISPATCH, ASK, False, False, Step.DENY, "deny", NOBODY_TO_HOLD),
    (ACTION, ALLOW, False, True, Step.RELEASE, "allow", None),
    (ACTION, DENY, False, True, Step.DENY, "deny", "denied by policy rule 'r1'"),
    (ACTION, ASK, False, True, Step.HOLD, "pending", None),
    (ACTION, ASK, True, True, Step.HOLD, "pending", None),
    (SDK, ALLOW, False, True, Step.RELEASE, "allow", None),
    (SDK, DENY, False, True, Step.DENY, "deny", "denied by policy rule 'r1'"),
    (SDK, ASK, False, True, Step.HOLD, "pending", None),
]


@pytest.mark.parametrize(
    ("kind", "outcome", "shadow", "can_hold", "step", "verdict", "reason"), FRESH
)
def test_route_of_a_fresh_decision(
    kind: Asker,
    outcome: Outcome,
    shadow: bool,
    can_hold: bool,
    step: Step,
    verdict: str,
    reason: str | None,
) -> None:
    """Only a shadow mission's dispatch is never held; an agent's shadow call is."""
    route = route_decision(kind, decision(outcome), shadow=shadow, can_hold=can_hold)
    assert (route.step, route.verdict, route.reason) == (step, verdict, reason)
    assert route.args is None and route.approval_id is None


@pytest.mark.parametrize(
    ("rule", "floor", "reason"),
    [
        ("r1", None, "denied by policy rule 'r1'"),
        (None, None, "denied by the policy's default outcome"),
        ("r1", "budget_red", "denied by budget_red: over the limit"),
    ],
)
def test_a_denial_names_what_decided_it(rule: str | None, floor: str | None, reason: str) -> None:
    assert route_decision(ACTION, decision(DENY, rule, floor)).reason == reason


@pytest.mark.parametrize(
    ("outcome", "verdict"), [(ALLOW, "allow"), (DENY, "deny"), (ASK, "pending")]
)
def test_verdict_of_a_fresh_decision(outcome: Outcome, verdict: str) -> None:
    assert verdict_of(decision(outcome)) == verdict
    route = route_decision(SDK, decision(outcome))
    assert route.verdict == verdict


APPROVAL_VERDICTS = {
    "pending": "pending",
    "escalated": "pending",
    "approved": "allow",
    "edited": "allow",
    "rejected": "deny",
    "expired": "deny",
}


def test_approval_verdict_covers_every_state() -> None:
    assert set(APPROVAL_VERDICTS) == set(MACHINES[Kind.APPROVAL].states)
    assert {state: approval_verdict(state) for state in APPROVAL_VERDICTS} == APPROVAL_VERDICTS


EDITED = {"env": "staging"}
REUSED = "out_of_sequence: action 'a1' was decided for other tool or arguments"
REPEATS = [
    # kind, verdict, same_call, bound to approval -> step, reason, args released
    (SDK, "allow", True, False, Step.ANSWER, "earlier", {"env": "prod"}),
    (SDK, "deny", True, False, Step.ANSWER, "earlier", {"env": "prod"}),
    (SDK, "allow", False, False, Step.REFUSE, REUSED, None),
    (SDK, "deny", False, False, Step.REFUSE, REUSED, None),
    (SDK, "allow", True, True, Step.RELEASE, "earlier", EDITED),
    (SDK, "pending", True, True, Step.WAIT, "earlier", EDITED),
    (SDK, "allow", False, True, Step.REFUSE, REUSED, None),
    (ACTION, "allow", True, True, Step.RELEASE, "earlier", EDITED),
    (ACTION, "deny", True, True, Step.DENY, "earlier", EDITED),
    (ACTION, "pending", True, True, Step.WAIT, "earlier", EDITED),
    # An action id is bound to its first call: another call under it is refused, whatever
    # the approval (or the policy) said of the first.
    (ACTION, "allow", False, True, Step.REFUSE, REUSED, None),
    (ACTION, "deny", False, True, Step.REFUSE, REUSED, None),
    (ACTION, "pending", False, True, Step.REFUSE, REUSED, None),
    (ACTION, "allow", False, False, Step.REFUSE, REUSED, None),
    (ACTION, "deny", False, False, Step.REFUSE, REUSED, None),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "verdict", "same", "approval", "step", "reason", "args"), REPEATS)
def test_route_of_a_repeat(
    kind: Asker,
    verdict: str,
    same: bool,
    approval: bool,
    step: Step,
    reason: str,
    args: dict[str, Any] | None,
) -> None:
    prior = Prior(
        verdict=verdict,
        same_call=same,
        reason="earlier",
        args=EDITED if approval else {"env": "prod"},
        approval_id="ap1" if approval else None,
        state="edited" if approval else None,
        decided_by="alice" if approval else None,
    )
    route = route_repeat(kind, prior, "a1")
    assert (route.step, route.reason, route.args) == (step, reason, args)
    if step is Step.REFUSE:
        assert (route.verdict, route.code, route.approval_id) == ("deny", OUT_OF_SEQUENCE, None)
    else:
        assert route.verdict == verdict and route.code is None
    if approval and step is not Step.REFUSE:
        assert (route.approval_id, route.decided_by) == ("ap1", "alice")


def test_a_bound_approval_is_recorded_in_the_policys_place() -> None:
    prior = Prior("allow", True, "edited by alice", EDITED, "ap1", "edited", "alice")
    ruling = bound(ACTION, prior, "a1", "h1")
    assert ruling.decision.outcome is ASK and ruling.decision.rule is None
    assert ruling.decision.policy_hash == "h1"
    assert [step.to_dict() for step in ruling.decision.trace] == [
        {"rule": "(approval)", "kind": "approval", "matched": True,
         "why": "bound to approval ap1 (edited)"}
    ]  # fmt: skip
    assert ruling.route == route_repeat(ACTION, prior, "a1")


@pytest.mark.parametrize("kind", [ACTION, SDK])
def test_a_key_asked_for_another_call_is_refused_in_the_policys_place(kind: Asker) -> None:
    prior = Prior("allow", False, decision_id="d1")
    ruling = bound(kind, prior, "a1", "h1")
    assert ruling.decision.outcome is DENY and ruling.decision.rule is None
    assert [step.to_dict() for step in ruling.decision.trace] == [
        {"rule": "(bound to decision d1)", "kind": "guard", "matched": True, "why": REUSED}
    ]
    assert (ruling.route.step, ruling.route.code) == (Step.REFUSE, OUT_OF_SEQUENCE)


def test_a_guarded_call_is_denied_with_the_guards_reason() -> None:
    ruling = guarded("the mission's lease is gone", "none")
    assert ruling.decision.outcome is DENY and ruling.decision.policy_hash == "none"
    assert ruling.decision.trace == (
        TraceStep("(guard)", True, "the mission's lease is gone", kind="guard"),
    )
    assert (ruling.route.step, ruling.route.verdict, ruling.route.reason) == (
        Step.DENY, "deny", "the mission's lease is gone",
    )  # fmt: skip


GUARDS = [
    # holder (mission state, attempt, lease owner, turn state) -> reason
    (None, "the mission's lease is gone"),
    (("running", 2, "w1", "running"), None),
    (("blocked", 2, "w1", "awaiting_approval"), None),
    (("running", 3, "w1", "running"), "the mission's lease is gone"),
    (("running", 2, "w2", "running"), "the mission's lease is gone"),
    (("running", 2, None, "running"), "the mission's lease is gone"),
    (("running", 2, "w1", "taken_over"), "a person has taken over the turn"),
    (("blocked", 3, "w2", "taken_over"), "the mission's lease is gone"),
    (("queued", 2, "w1", "queued"), "the mission is queued"),
    (("completed", 2, "w1", "completed"), "the mission is completed"),
    (("cancelled", 2, "w1", "taken_over"), "a person has taken over the turn"),
]


@pytest.mark.parametrize(("held", "reason"), GUARDS)
def test_lease_guard(held: tuple[str, int, str | None, str] | None, reason: str | None) -> None:
    """The claim is attempt 2 by ``w1``; the lease is checked first, then the turn's holder."""
    holder = None if held is None else Holder(*held)
    assert lease_guard(holder, 2, "w1") == reason


SAME_CALLS = [
    # tool, args, other tool, other args -> the same call (the same hash)
    ("deploy", {"env": "prod", "n": 1}, "deploy", {"n": 1, "env": "prod"}, True),
    ("deploy", {"env": "prod"}, "rollback", {"env": "prod"}, False),
    ("deploy", {"env": "prod"}, "deploy", {"env": "staging"}, False),
    ("deploy", {"env": "prod"}, "deploy", {"env": "prod", "force": True}, False),
    ("deploy", {"a": {"y": [1, 2], "x": None}}, "deploy", {"a": {"x": None, "y": [1, 2]}}, True),
    ("deploy", {"a": [1, 2]}, "deploy", {"a": [2, 1]}, False),
    ("deploy", {"n": 1}, "deploy", {"n": "1"}, False),
    ("deploy", {"n": 1}, "deploy", {"n": 1.5}, False),
    ("deploy", {}, "deploy", {}, True),
    ("a", {"b": 1}, "ab", {"b": 1}, False),
    ("read_file", {"path": "README"}, "rm_rf", {"path": "/"}, False),
]


@pytest.mark.parametrize(("tool", "args", "other_tool", "other_args", "same"), SAME_CALLS)
def test_same_call(
    tool: str, args: dict[str, Any], other_tool: str, other_args: Any, same: bool
) -> None:
    """A key is bound to the hash of the canonical ``[tool, args]`` first asked under it."""
    assert same_call(call_of(tool, args), call_of(other_tool, other_args).hash) is same


def test_a_call_is_hashed_and_measured_as_canonical_json() -> None:
    call = call_of("deploy", {"b": 1, "a": "é"})
    body = '["deploy",{"a":"é","b":1}]'.encode()
    assert (call.size, call.hash) == (len(body), hashlib.sha256(body).hexdigest())
    with pytest.raises(ValueError):
        call_of("deploy", {"n": float("nan")})


CAPS = ActionCaps(max_args_bytes=100, max_per_mission=3)
SIZED = [
    # argument bytes -> refused
    (0, False),
    (100 - len('["t",{"x":""}]'), False),
    (101 - len('["t",{"x":""}]'), True),
    (10_000, True),
]


@pytest.mark.parametrize(("length", "over"), SIZED)
def test_the_size_cap_counts_the_whole_call(length: int, over: bool) -> None:
    call = call_of("t", {"x": "y" * length})
    route = over_size_cap(call, CAPS)
    if not over:
        assert route is None and kept_whole(call, CAPS, route)
        assert stored_call(call, True) == ("t", {"x": "y" * length})
        return
    assert route is not None and (route.step, route.verdict) == (Step.DENY, "deny")
    assert route.code == ARGS_TOO_LARGE
    assert route.reason == (
        f"args_too_large: the call is {call.size} bytes, the cap is 100 (max_action_args_bytes)"
    )
    assert not kept_whole(call, CAPS, route)
    assert stored_call(call, False) == (
        "t", {"omitted": {"bytes": call.size, "sha256": call.hash}}
    )  # fmt: skip


COUNTS = [(0, None), (2, None), (3, TOO_MANY_ACTIONS), (50, TOO_MANY_ACTIONS)]


@pytest.mark.parametrize(("before", "code"), COUNTS)
def test_the_action_cap_counts_the_missions_earlier_actions(before: int, code: str | None) -> None:
    route = over_action_cap(before, CAPS)
    assert (route and route.code) == code
    if route is not None:
        assert route.reason == (
            f"too_many_actions: the mission has asked for {before} actions, the cap is 3 "
            "(max_actions_per_mission)"
        )
        small = call_of("t", {})
        assert not kept_whole(small, CAPS, route)


def test_a_refused_call_keeps_at_most_the_cap() -> None:
    long_tool = "t" * 1000
    call = call_of(long_tool, {"x": "y" * 1000})
    tool, args = stored_call(call, False)
    assert tool == "t" * MAX_STORED_TOOL and args == digest_of(call)
    reused = out_of_sequence("a1")
    small = call_of("t", {"x": 1})
    assert kept_whole(small, CAPS, reused) and not kept_whole(call, CAPS, reused)


@pytest.mark.parametrize(
    ("rule", "trace", "expected"),
    [
        ("r1", (TraceStep("r1", True, "matched"),), "allowed by policy rule 'r1'"),
        (None, (TraceStep("(no policy file)", True, "no policy file", kind="default"),),
         "no policy file"),
        (None, (), "allowed"),
    ],
)  # fmt: skip
def test_allowed_by(rule: str | None, trace: tuple[TraceStep, ...], expected: str) -> None:
    allowed = PolicyDecision(ALLOW, rule, trace, None, None, (), None, "h1")
    assert allowed_by(allowed) == expected
