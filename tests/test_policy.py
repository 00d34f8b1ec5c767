"""Policy: parsing with every problem reported, rule matchers, floors, and trace properties."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quarterdeck.domain.canonical import canonical_text
from quarterdeck.domain.policy import (
    DEFAULT_REJECT_REASONS,
    ActionRequest,
    EvaluationContext,
    OnExpiry,
    Outcome,
    Policy,
    PolicyDecision,
    evaluate,
    parse_policy,
    policy_hash,
)

NOON = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def policy(text: str) -> Policy:
    result = parse_policy(text)
    assert isinstance(result, Policy), result
    return result


def problems(text: str) -> list[str]:
    result = parse_policy(text)
    assert isinstance(result, list), result
    return result


def request(
    tool: str = "deploy",
    *,
    workspace: str = "acme",
    lane: str = "http",
    args: dict[str, Any] | None = None,
    cost: float | None = None,
) -> ActionRequest:
    return ActionRequest(workspace, lane, tool, args or {}, cost)


def context(
    now: datetime = NOON, counts: dict[tuple[str, str], int] | None = None, spend: float = 0.0
) -> EvaluationContext:
    table = counts or {}
    return EvaluationContext(now, lambda kind, value, _window: table.get((kind, value), 0), spend)


def decide(text: str, req: ActionRequest | None = None, ctx: EvaluationContext | None = None):
    return evaluate(policy(text), req or request(), ctx or context())


def one_rule(matchers: str, outcome: str = "allow") -> str:
    return (
        f'[defaults]\noutcome = "deny"\n[[rules]]\nname = "r"\n{matchers}\noutcome = "{outcome}"\n'
    )


def rule_step(decision: PolicyDecision, index: int = 0) -> tuple[bool, str]:
    steps = [step for step in decision.trace if step.kind == "rule"]
    return steps[index].matched, steps[index].why


# --- parsing ------------------------------------------------------------------------------


def test_empty_document_has_the_defaults() -> None:
    parsed = policy("")
    assert parsed.outcome is Outcome.REQUIRE_APPROVAL
    assert parsed.reject_reasons == DEFAULT_REJECT_REASONS
    assert parsed.rules == ()
    assert parsed.approval.approver == "supervisor"
    assert parsed.approval.deadline_s == 900
    assert parsed.approval.on_expiry is OnExpiry.REJECT
    assert parsed.hash == policy_hash("")


def test_policy_hash_is_sha256_of_utf8() -> None:
    import hashlib

    text = '[defaults]\noutcome = "allow" # é\n'
    assert policy_hash(text) == hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert policy(text).hash == policy_hash(text)


def test_every_problem_is_listed_with_its_path() -> None:
    errors = problems(
        """
extra = 1
[defaults]
outcome = "maybe"
reject_reasons = []
[[rules]]
outcome = "deny"
approver = "lead"
tool = 5
args = { a = { glob = 3 }, b = { min = 5, max = 1 }, c = { foo = 1 }, d = { in = [] } }
hours = "25:00-01:00"
cost_max = -1
[[rules]]
name = "x"
outcome = "nope"
[[rules]]
name = "x"
outcome = "require_approval"
deadline_s = 0
ladder = ["lead", ""]
on_expiry = "shrug"
colour = "red"
[floors]
quiet_hours = "06:00-06:00"
rate_caps = [{ subject = "user", limit = -1 }]
budget_tiers = { yellow = 10, red = 5 }
tools = { "*" = { deny = [1] }, acme = { allow = "x" } }
"""
    )
    assert errors == [
        "extra: unknown key",
        "defaults.outcome: must be one of allow, deny, require_approval, got 'maybe'",
        "defaults.reject_reasons: must be a non-empty array of non-empty strings",
        "rules[0].name: is required",
        "rules[0].tool: must be a non-empty string (a glob)",
        "rules[0].args.a.glob: must be a non-empty string",
        "rules[0].args.b.min: must not exceed max (5 > 1)",
        "rules[0].args.c: a matcher table must be {glob = ...}, {in = [...]}, "
        "or {min = ..., max = ...} (either or both)",
        "rules[0].args.d.in: must be a non-empty array of a string, number, boolean or array "
        "of them",
        "rules[0].cost_max: must be a finite non-negative number, got -1",
        "rules[0].hours: must be \"HH:MM-HH:MM\" (UTC, 24-hour), got '25:00-01:00'",
        "rules[0].approver: only allowed when outcome is require_approval",
        "rules[1].outcome: must be one of allow, deny, require_approval, got 'nope'",
        "rules[2].colour: unknown key",
        "rules[2].deadline_s: must be a positive integer (seconds)",
        "rules[2].ladder: must be an array of role names (non-empty strings)",
        "rules[2].on_expiry: must be one of reject, pause_lane, fallback, got 'shrug'",
        "rules[2].name: duplicate of rules[1] ('x')",
        "floors.quiet_hours: start and end must differ, got '06:00-06:00'",
        "floors.rate_caps[0].subject: must be one of tool, lane, workspace, got 'user'",
        "floors.rate_caps[0].limit: must be a non-negative integer",
        "floors.rate_caps[0].window_s: must be a positive integer (seconds)",
        "floors.budget_tiers.yellow: must not exceed red (10 > 5)",
        'floors.tools["*"].deny[0]: must be a non-empty string (a glob)',
        "floors.tools.acme.allow: must be an array of globs",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("not = = toml", "$: not TOML: "),
        ("rules = 3", "rules: must be an array of tables ([[rules]])"),
        ("rules = [1]", "rules[0]: must be a table"),
        ('[[rules]]\nname = "a"', "rules[0].outcome: is required"),
        ("defaults = 1", "defaults: must be a table"),
        ("[floors]\nbudget_tiers = { red = inf }", "floors.budget_tiers.red: must be a finite"),
        ('[[rules]]\nname="a"\noutcome="allow"\nargs = 1', "rules[0].args: must be a table"),
        (
            '[[rules]]\nname="a"\noutcome="allow"\nargs = { at = 1979-05-27 }',
            "rules[0].args.at: must be a string, number, boolean or array of them",
        ),
        ('[defaults]\nreject_reasons = ["a", "a"]', "defaults.reject_reasons: must not repeat"),
        ("[floors.tools]\nacme = 1", "floors.tools.acme: must be a table"),
    ],
)
def test_single_problems(text: str, expected: str) -> None:
    errors = problems(text)
    assert len(errors) == 1 and errors[0].startswith(expected), errors


def test_lone_surrogate_is_a_problem_not_a_crash() -> None:
    assert problems("# \ud800") == ["$: holds a lone surrogate, which is not valid Unicode"]


def test_approval_fields_inherit_from_defaults() -> None:
    parsed = policy(
        """
[defaults]
approver = "lead"
deadline_s = 60
ladder = ["oncall"]
on_expiry = "pause_lane"
[[rules]]
name = "a"
outcome = "require_approval"
deadline_s = 30
"""
    )
    approval = parsed.rules[0].approval
    assert approval is not None
    assert (approval.approver, approval.deadline_s, approval.ladder, approval.on_expiry) == (
        "lead",
        30,
        ("oncall",),
        OnExpiry.PAUSE_LANE,
    )


# --- rule matchers ------------------------------------------------------------------------


def test_no_rules_uses_default_outcome() -> None:
    decision = decide('[defaults]\noutcome = "allow"')
    assert (decision.outcome, decision.rule, decision.trace) == (Outcome.ALLOW, None, ())
    assert decision.approver is None and decision.on_expiry is None


def test_default_require_approval_carries_default_settings() -> None:
    decision = decide("")
    assert decision.outcome is Outcome.REQUIRE_APPROVAL
    assert (decision.approver, decision.deadline_s, decision.on_expiry) == (
        "supervisor",
        900,
        OnExpiry.REJECT,
    )


def test_rule_without_matchers_matches_everything() -> None:
    decision = decide(one_rule(""))
    assert decision.outcome is Outcome.ALLOW
    assert rule_step(decision) == (True, "no matchers: matches every request")


@pytest.mark.parametrize(
    ("field", "pattern", "value", "matches"),
    [
        ("tool", "dep*", "deploy", True),
        ("tool", "dep*", "redeploy", False),
        ("tool", "deplo?", "deploy", True),
        ("tool", "[a-c]*", "build", True),
        ("tool", "Deploy", "deploy", False),
        ("lane", "sim*", "http", False),
        ("lane", "sim*", "sim-2", True),
        ("workspace", "prod-*", "prod-eu", True),
        ("workspace", "prod-*", "acme", False),
    ],
)
def test_glob_matchers(field: str, pattern: str, value: str, matches: bool) -> None:
    fields = {"tool": "deploy", "lane": "http", "workspace": "acme", field: value}
    req = request(fields["tool"], workspace=fields["workspace"], lane=fields["lane"])
    decision = decide(one_rule(f'{field} = "{pattern}"'), req)
    verb = "matches" if matches else "does not match"
    assert rule_step(decision) == (matches, f"{field} {value!r} {verb} {pattern!r}")
    assert decision.outcome is (Outcome.ALLOW if matches else Outcome.DENY)


@pytest.mark.parametrize(
    ("spec", "args", "matches", "why"),
    [
        ('"prod"', {"env": "prod"}, True, "arg 'env' 'prod' equals 'prod'"),
        ('"prod"', {"env": "dev"}, False, "arg 'env' 'dev' does not equal 'prod'"),
        ('"prod"', {}, False, "arg 'env' is missing"),
        ("1", {"env": True}, False, "arg 'env' True does not equal 1"),
        ("true", {"env": True}, True, "arg 'env' True equals True"),
        ("1", {"env": 1.0}, True, "arg 'env' 1.0 equals 1"),
        ("[1, 2]", {"env": [1, 2]}, True, "arg 'env' [1, 2] equals [1, 2]"),
        ("[1, 2]", {"env": [2, 1]}, False, "arg 'env' [2, 1] does not equal [1, 2]"),
        ('{ glob = "eu-*" }', {"env": "eu-west"}, True, "arg 'env' 'eu-west' matches 'eu-*'"),
        (
            '{ glob = "eu-*" }',
            {"env": "us-east"},
            False,
            "arg 'env' 'us-east' does not match 'eu-*'",
        ),
        (
            '{ glob = "eu-*" }',
            {"env": 3},
            False,
            "arg 'env' is not a string, so cannot match 'eu-*'",
        ),
        ("{ min = 1, max = 5 }", {"env": 5}, True, "arg 'env' 5 is between 1 and 5"),
        ("{ min = 1, max = 5 }", {"env": 6}, False, "arg 'env' 6 is not between 1 and 5"),
        ("{ min = 1 }", {"env": 0.5}, False, "arg 'env' 0.5 is not at least 1"),
        ("{ max = -1.5 }", {"env": -2}, True, "arg 'env' -2 is at most -1.5"),
        ("{ max = 5 }", {"env": "3"}, False, "arg 'env' is not a number, so cannot be at most 5"),
        ("{ max = 5 }", {"env": True}, False, "arg 'env' is not a number, so cannot be at most 5"),
        ("{ max = 5 }", {"env": float("nan")}, False, "arg 'env' nan is not at most 5"),
        ('{ in = ["a", "b"] }', {"env": "b"}, True, "arg 'env' 'b' is in ['a', 'b']"),
        ('{ in = ["a", "b"] }', {"env": "c"}, False, "arg 'env' 'c' is not in ['a', 'b']"),
    ],
)
def test_arg_matchers(spec: str, args: dict[str, Any], matches: bool, why: str) -> None:
    decision = decide(one_rule(f"args = {{ env = {spec} }}"), request(args=args))
    assert rule_step(decision) == (matches, why)


@pytest.mark.parametrize(
    ("matchers", "cost", "matches", "why"),
    [
        ("cost_max = 1.0", 0.5, True, "estimated cost 0.5 is at most 1.0"),
        ("cost_max = 1.0", 1.0, True, "estimated cost 1.0 is at most 1.0"),
        ("cost_max = 1.0", 1.5, False, "estimated cost 1.5 is not at most 1.0"),
        ("cost_min = 10", 12.0, True, "estimated cost 12.0 is at least 10"),
        (
            "cost_min = 10\ncost_max = 20",
            25.0,
            False,
            "estimated cost 25.0 is not between 10 and 20",
        ),
        ("cost_max = 1.0", None, False, "estimated cost is unknown, so cannot be at most 1.0"),
        ("cost_min = 0", float("nan"), False, "estimated cost is unknown, so cannot be at least 0"),
    ],
)
def test_cost_matchers(matchers: str, cost: float | None, matches: bool, why: str) -> None:
    decision = decide(one_rule(matchers), request(cost=cost))
    assert rule_step(decision) == (matches, why)


@pytest.mark.parametrize(
    ("window", "hour", "minute", "inside"),
    [
        ("09:00-17:00", 9, 0, True),
        ("09:00-17:00", 16, 59, True),
        ("09:00-17:00", 17, 0, False),
        ("09:00-17:00", 8, 59, False),
        ("22:00-06:00", 23, 30, True),
        ("22:00-06:00", 0, 0, True),
        ("22:00-06:00", 5, 59, True),
        ("22:00-06:00", 6, 0, False),
        ("22:00-06:00", 21, 59, False),
        ("22:00-06:00", 12, 0, False),
        ("22:00-00:00", 23, 59, True),
        ("22:00-00:00", 0, 0, False),
    ],
)
def test_hours_matcher_wraps_midnight(window: str, hour: int, minute: int, inside: bool) -> None:
    now = datetime(2026, 3, 1, hour, minute, 30, tzinfo=UTC)
    decision = decide(one_rule(f'hours = "{window}"'), ctx=context(now))
    where = "is inside" if inside else "is outside"
    assert rule_step(decision) == (inside, f"{hour:02d}:{minute:02d} UTC {where} hours {window}")


def test_hours_use_utc_whatever_the_offset_and_naive_means_utc() -> None:
    text = one_rule('hours = "22:00-06:00"')
    plus_two = timezone(timedelta(hours=2))
    for now, outcome in [
        (datetime(2026, 3, 2, 1, 0, tzinfo=plus_two), Outcome.ALLOW),  # 23:00 UTC
        (datetime(2026, 3, 2, 7, 59, tzinfo=plus_two), Outcome.ALLOW),  # 05:59 UTC
        (datetime(2026, 3, 2, 8, 0, tzinfo=plus_two), Outcome.DENY),  # 06:00 UTC
        (datetime(2026, 3, 2, 23, 0), Outcome.ALLOW),
        (datetime(2026, 3, 2, 7, 0), Outcome.DENY),
        (datetime(1, 1, 1, 0, 30, tzinfo=plus_two), Outcome.ALLOW),  # would overflow in UTC
    ]:
        assert decide(text, ctx=context(now)).outcome is outcome, now


def test_a_mismatch_names_every_failing_matcher() -> None:
    text = one_rule('tool = "dep*"\nlane = "sim*"\nargs = { env = "prod" }')
    decision = decide(text, request("deploy", lane="http", args={"env": "dev"}))
    assert rule_step(decision) == (
        False,
        "lane 'http' does not match 'sim*'; arg 'env' 'dev' does not equal 'prod'",
    )


def test_a_match_names_every_matcher() -> None:
    decision = decide(one_rule('tool = "dep*"\nlane = "ht*"'))
    assert rule_step(decision) == (True, "lane 'http' matches 'ht*'; tool 'deploy' matches 'dep*'")


def test_first_matching_rule_decides() -> None:
    text = """
[[rules]]
name = "lanes"
lane = "sim*"
outcome = "allow"
[[rules]]
name = "deploys"
tool = "dep*"
outcome = "deny"
[[rules]]
name = "everything"
outcome = "allow"
"""
    decision = decide(text, request("deploy", lane="http"))
    assert (decision.outcome, decision.rule) == (Outcome.DENY, "deploys")
    assert [(s.rule, s.matched) for s in decision.trace] == [("lanes", False), ("deploys", True)]
    decision = decide(text, request("deploy", lane="sim-1"))
    assert (decision.outcome, decision.rule) == (Outcome.ALLOW, "lanes")
    assert len(decision.trace) == 1


def test_require_approval_rule_carries_its_settings() -> None:
    text = """
[[rules]]
name = "big"
outcome = "require_approval"
approver = "lead"
deadline_s = 120
ladder = ["oncall", "cto"]
on_expiry = "fallback"
"""
    decision = decide(text)
    assert decision.outcome is Outcome.REQUIRE_APPROVAL
    assert (decision.approver, decision.deadline_s, decision.ladder, decision.on_expiry) == (
        "lead",
        120,
        ("oncall", "cto"),
        OnExpiry.FALLBACK,
    )


# --- floors -------------------------------------------------------------------------------

ALLOW_ALL = '[[rules]]\nname = "all"\noutcome = "allow"\n'


def floor_steps(decision: PolicyDecision) -> dict[str, tuple[bool, str]]:
    return {s.rule: (s.matched, s.why) for s in decision.trace if s.kind == "floor"}


@pytest.mark.parametrize(
    ("hour", "outcome"),
    [(23, Outcome.REQUIRE_APPROVAL), (2, Outcome.REQUIRE_APPROVAL), (12, Outcome.ALLOW)],
)
def test_quiet_hours_turn_allow_into_require_approval(hour: int, outcome: Outcome) -> None:
    text = (
        ALLOW_ALL + '[defaults]\napprover = "night-shift"\n[floors]\nquiet_hours = "22:00-06:00"\n'
    )
    decision = decide(text, ctx=context(datetime(2026, 1, 1, hour, 0, tzinfo=UTC)))
    assert decision.outcome is outcome
    assert decision.rule == "all"
    matched, why = floor_steps(decision)["floors.quiet_hours"]
    assert matched is (outcome is Outcome.REQUIRE_APPROVAL)
    assert why.startswith(f"{hour:02d}:00 UTC is")
    if matched:
        assert decision.approver == "night-shift"


def test_quiet_hours_do_not_loosen_deny() -> None:
    text = '[[rules]]\nname = "no"\noutcome = "deny"\n[floors]\nquiet_hours = "00:00-23:59"\n'
    assert decide(text).outcome is Outcome.DENY


@pytest.mark.parametrize(
    ("subject", "key", "count", "denied"),
    [
        ("tool", ("tool", "deploy"), 2, False),
        ("tool", ("tool", "deploy"), 3, True),
        ("lane", ("lane", "http"), 4, True),
        ("workspace", ("workspace", "acme"), 3, True),
        ("workspace", ("tool", "deploy"), 10, False),
    ],
)
def test_rate_caps(subject: str, key: tuple[str, str], count: int, denied: bool) -> None:
    text = (
        ALLOW_ALL
        + f'[floors]\nrate_caps = [{{ subject = "{subject}", limit = 3, window_s = 60 }}]\n'
    )
    decision = decide(text, ctx=context(counts={key: count}))
    assert decision.outcome is (Outcome.DENY if denied else Outcome.ALLOW)
    assert decision.approver is None
    assert floor_steps(decision)["floors.rate_caps[0]"][0] is denied


def test_rate_cap_passes_its_window_to_count() -> None:
    calls: list[tuple[str, str, int]] = []

    def count(kind: str, value: str, window_s: int) -> int:
        calls.append((kind, value, window_s))
        return 0

    text = ALLOW_ALL + (
        "[floors]\nrate_caps = [{ subject = 'lane', limit = 1, window_s = 30 },"
        " { subject = 'tool', limit = 1, window_s = 3600 }]\n"
    )
    evaluate(policy(text), request(), EvaluationContext(NOON, count, 0.0))
    assert calls == [("lane", "http", 30), ("tool", "deploy", 3600)]


@pytest.mark.parametrize(
    ("spend", "cost", "outcome"),
    [
        (10.0, None, Outcome.ALLOW),
        (49.0, 0.5, Outcome.ALLOW),
        (49.0, 1.0, Outcome.REQUIRE_APPROVAL),
        (50.0, None, Outcome.REQUIRE_APPROVAL),
        (99.0, 2.0, Outcome.DENY),
        (100.0, None, Outcome.DENY),
        (float("nan"), None, Outcome.DENY),
    ],
)
def test_budget_tiers(spend: float, cost: float | None, outcome: Outcome) -> None:
    text = ALLOW_ALL + "[floors]\nbudget_tiers = { yellow = 50, red = 100 }\n"
    decision = decide(text, request(cost=cost), context(spend=spend))
    assert decision.outcome is outcome
    assert floor_steps(decision)["floors.budget_tiers"][0] is (outcome is not Outcome.ALLOW)


def test_budget_red_overrides_a_require_approval_rule() -> None:
    text = '[[rules]]\nname = "r"\noutcome = "require_approval"\n[floors]\nbudget_tiers = { red = 1 }\n'
    decision = decide(text, ctx=context(spend=5))
    assert decision.outcome is Outcome.DENY and decision.approver is None


TOOLS = (
    ALLOW_ALL
    + """
[floors.tools."*"]
deny = ["rm*"]
[floors.tools."prod-*"]
allow = ["read*", "list*", "rm-tmp"]
[floors.tools.acme]
allow = []
deny = ["drop"]
"""
)


@pytest.mark.parametrize(
    ("workspace", "tool", "outcome", "why"),
    [
        ("dev", "deploy", Outcome.ALLOW, "tool 'deploy' passes the tool lists of '*'"),
        ("dev", "rm-rf", Outcome.DENY, "tool 'rm-rf' matches deny 'rm*' of tools['*']: deny"),
        ("acme", "drop", Outcome.DENY, "tool 'drop' matches deny 'drop' of tools['acme']: deny"),
        ("acme", "deploy", Outcome.ALLOW, "tool 'deploy' passes the tool lists of '*', 'acme'"),
        ("prod-eu", "read_file", Outcome.ALLOW, None),
        (
            "prod-eu",
            "deploy",
            Outcome.DENY,
            "tool 'deploy' matches no allow glob of tools['prod-*'] "
            "['read*', 'list*', 'rm-tmp']: deny",
        ),
        ("prod-eu", "rm-tmp", Outcome.DENY, "tool 'rm-tmp' matches deny 'rm*' of tools['*']: deny"),
    ],
)
def test_tool_lists(workspace: str, tool: str, outcome: Outcome, why: str | None) -> None:
    decision = decide(TOOLS, request(tool, workspace=workspace))
    assert decision.outcome is outcome
    step = floor_steps(decision)["floors.tools"]
    assert step[0] is (outcome is Outcome.DENY)
    if why is not None:
        assert step[1] == why


def test_tool_lists_that_apply_to_no_workspace() -> None:
    decision = decide(ALLOW_ALL + "[floors.tools.other]\ndeny = ['*']\n")
    assert decision.outcome is Outcome.ALLOW
    assert floor_steps(decision)["floors.tools"] == (
        False,
        "no tool lists apply to workspace 'acme'",
    )


def test_floor_trace_order_and_to_dict_is_canonical_json() -> None:
    text = ALLOW_ALL + (
        '[floors]\nquiet_hours = "22:00-06:00"\n'
        'rate_caps = [{ subject = "tool", limit = 5, window_s = 60 }]\n'
        "budget_tiers = { yellow = 5 }\n"
        '[floors.tools."*"]\ndeny = ["rm"]\n'
    )
    decision = decide(text, request(cost=1.5), context(spend=4.0))
    assert [s.rule for s in decision.trace] == [
        "all",
        "floors.tools",
        "floors.rate_caps[0]",
        "floors.budget_tiers",
        "floors.quiet_hours",
    ]
    data = decision.to_dict()
    assert json.loads(canonical_text(data)) == data
    assert data["outcome"] == "require_approval"
    assert data["on_expiry"] == "reject"
    assert data["policy_hash"] == policy_hash(text)
    assert data["trace"][3] == {
        "rule": "floors.budget_tiers",
        "kind": "floor",
        "matched": True,
        "why": "spend 5.5 (4.0 so far + 1.5 estimated) reaches yellow 5: "
        "allow becomes require_approval",
    }


# --- properties ---------------------------------------------------------------------------

NAMES = st.text(alphabet="abcdr-*?", min_size=1, max_size=5)
WORDS = st.sampled_from(["acme", "prod-eu", "dev", "deploy", "read", "rm", "http", "sim-1", ""])
ARG_VALUES = st.one_of(
    st.integers(-5, 5),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    WORDS,
    st.lists(st.integers(0, 3), max_size=2),
    st.none(),
)


def toml_value(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
        )
    return repr(value)


@st.composite
def rule_texts(draw: st.DrawFn, index: int) -> str:
    lines = [f'[[rules]]\nname = "rule-{index}"']
    for key in ("workspace", "lane", "tool"):
        if draw(st.booleans()):
            lines.append(f"{key} = {toml_value(draw(NAMES))}")
    args: dict[str, Any] = {}
    for arg in draw(st.lists(st.sampled_from(["a", "b", "c"]), unique=True, max_size=2)):
        args[arg] = draw(
            st.one_of(
                st.integers(-3, 3),
                WORDS,
                st.builds(lambda g: {"glob": g}, NAMES),
                st.builds(
                    lambda lo, hi: {"min": lo, "max": lo + hi},
                    st.integers(-3, 3),
                    st.integers(0, 3),
                ),
                st.builds(
                    lambda xs: {"in": xs}, st.lists(st.integers(0, 3), min_size=1, max_size=3)
                ),
            )
        )
    if args:
        lines.append(f"args = {toml_value(args)}")
    if draw(st.booleans()):
        lines.append(f"cost_max = {draw(st.integers(0, 10))}")
    if draw(st.booleans()):
        start, end = draw(
            st.tuples(st.integers(0, 23), st.integers(0, 23)).filter(lambda t: t[0] != t[1])
        )
        lines.append(f'hours = "{start:02d}:00-{end:02d}:00"')
    outcome = draw(st.sampled_from(["allow", "deny", "require_approval"]))
    lines.append(f'outcome = "{outcome}"')
    return "\n".join(lines) + "\n"


@st.composite
def policy_texts(draw: st.DrawFn, floors: bool = True) -> str:
    default = draw(st.sampled_from(["allow", "deny", "require_approval"]))
    count = draw(st.integers(0, 5))
    text = f'[defaults]\noutcome = "{default}"\n'
    text += "".join(draw(rule_texts(i)) for i in range(count))
    if floors and draw(st.booleans()):
        text += "[floors]\n"
        if draw(st.booleans()):
            text += 'quiet_hours = "22:00-06:00"\n'
        if draw(st.booleans()):
            text += 'rate_caps = [{ subject = "tool", limit = 2, window_s = 60 }]\n'
        if draw(st.booleans()):
            text += "budget_tiers = { yellow = 5, red = 8 }\n"
        if draw(st.booleans()):
            text += f'[floors.tools."*"]\ndeny = [{toml_value(draw(NAMES))}]\n'
    return text


requests = st.builds(
    ActionRequest,
    workspace=st.one_of(WORDS, st.text(max_size=6)),
    lane=st.one_of(WORDS, st.text(max_size=6)),
    tool=st.one_of(WORDS, st.text(max_size=6)),
    args=st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), ARG_VALUES, max_size=3),
    estimated_cost=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
)
contexts = st.builds(
    lambda now, n, spend: EvaluationContext(now, lambda _k, _v, _w: n, spend),
    now=st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=-14)), None])),
    n=st.integers(0, 5),
    spend=st.floats(allow_nan=True, allow_infinity=True),
)


@settings(max_examples=300, deadline=None)
@given(text=policy_texts(), req=requests, ctx=contexts)
def test_evaluate_never_raises_and_traces_rules_in_order(
    text: str, req: ActionRequest, ctx: EvaluationContext
) -> None:
    parsed = policy(text)
    decision = evaluate(parsed, req, ctx)
    rule_steps = [s for s in decision.trace if s.kind == "rule"]
    names = [rule.name for rule in parsed.rules]
    assert [s.rule for s in rule_steps] == names[: len(rule_steps)]
    assert all(not s.matched for s in rule_steps[:-1])
    if decision.rule is None:
        assert len(rule_steps) == len(names)
        assert not any(s.matched for s in rule_steps)
    else:
        assert rule_steps[-1].matched and rule_steps[-1].rule == decision.rule
    assert all(s.why for s in decision.trace)
    assert (decision.approver is not None) is (decision.outcome is Outcome.REQUIRE_APPROVAL)
    assert evaluate(parsed, req, ctx) == decision
    canonical_text(decision.to_dict())


@settings(max_examples=200, deadline=None)
@given(
    text=policy_texts(floors=False),
    req=requests,
    ctx=contexts,
    floor=st.sampled_from(["tools", "rate", "budget"]),
)
def test_deny_floors_cannot_be_overridden_by_allow_rules(
    text: str, req: ActionRequest, ctx: EvaluationContext, floor: str
) -> None:
    text = '[[rules]]\nname = "allow-everything"\noutcome = "allow"\n' + text.split("\n", 2)[2]
    if floor == "tools":
        text += '[floors.tools."*"]\ndeny = ["*"]\n'
    elif floor == "rate":
        text += '[floors]\nrate_caps = [{ subject = "lane", limit = 0, window_s = 1 }]\n'
    else:
        text += "[floors]\nbudget_tiers = { red = 0 }\n"
        ctx = EvaluationContext(ctx.now, ctx.count, abs(ctx.workspace_spend))
    decision = evaluate(policy(text), req, ctx)
    assert decision.rule == "allow-everything"
    assert decision.outcome is Outcome.DENY


# --- what a denial names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "req", "ctx", "floor", "reason"),
    [
        (
            '[defaults]\noutcome = "allow"\n[[rules]]\nname = "no-deploys"\ntool = "deploy"\n'
            'outcome = "deny"',
            request(), context(), None, "denied by policy rule 'no-deploys'",
        ),
        ('[defaults]\noutcome = "deny"', request(), context(), None,
         "denied by the policy's default outcome"),
        (
            '[defaults]\noutcome = "allow"\n[floors.tools."*"]\ndeny = ["dep*"]',
            request(), context(), "floors.tools",
            "denied by floors.tools: tool 'deploy' matches deny 'dep*' of tools['*']: deny",
        ),
        (
            '[defaults]\noutcome = "allow"\n[floors]\n'
            'rate_caps = [{ subject = "tool", limit = 2, window_s = 60 }]',
            request(), context(counts={("tool", "deploy"): 2}), "floors.rate_caps[0]",
            "denied by floors.rate_caps[0]: tool 'deploy': 2 in the last 60s, limit 2: deny",
        ),
        (
            # Quiet hours would ask for approval; the red budget's deny is stricter and stands.
            '[defaults]\noutcome = "allow"\n[floors]\nquiet_hours = "11:00-13:00"\n'
            "budget_tiers = { yellow = 5.0, red = 10.0 }",
            request(cost=4.0), context(spend=7.0), "floors.budget_tiers",
            "denied by floors.budget_tiers: spend 11.0 (7.0 so far + 4.0 estimated) reaches "
            "red 10.0: deny",
        ),
        (
            # A rule that denies decides; a floor that would deny as well does not tighten it.
            '[defaults]\noutcome = "allow"\n[[rules]]\nname = "no-deploys"\ntool = "deploy"\n'
            'outcome = "deny"\n[floors.tools."*"]\ndeny = ["dep*"]',
            request(), context(), None, "denied by policy rule 'no-deploys'",
        ),
    ],
)  # fmt: skip
def test_a_denial_names_the_floor_or_rule_that_decided_it(
    text: str, req: ActionRequest, ctx: EvaluationContext, floor: str | None, reason: str
) -> None:
    decision = evaluate(policy(text), req, ctx)
    assert decision.outcome is Outcome.DENY
    assert decision.floor == floor
    assert decision.denial_reason() == reason


def test_a_floor_that_asks_for_approval_is_named_as_the_one_that_set_the_outcome() -> None:
    text = '[defaults]\noutcome = "allow"\n[floors]\nquiet_hours = "11:00-13:00"'
    decision = evaluate(policy(text), request(), context())
    assert decision.outcome is Outcome.REQUIRE_APPROVAL
    assert decision.floor == "floors.quiet_hours"
    assert evaluate(policy('[defaults]\noutcome = "allow"'), request(), context()).floor is None


def test_a_viewer_never_approves() -> None:
    """``viewer`` only reads: a rule naming it as the approver, or on its ladder, is refused."""
    found = problems(
        '[[rules]]\nname = "r"\ntool = "t"\noutcome = "require_approval"\napprover = "viewer"\n'
        '\n[[rules]]\nname = "s"\ntool = "u"\noutcome = "require_approval"\n'
        'ladder = ["oncall", "viewer"]\n'
    )
    assert any("approver: 'viewer' only reads" in p for p in found), found
    assert any("ladder: 'viewer' only reads" in p for p in found), found
