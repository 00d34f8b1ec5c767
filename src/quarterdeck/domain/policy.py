"""Policy: which actions run, which are refused, and which wait for a human.

The spec is ``docs/specs/policy.md``. A policy is a TOML document of ordered rules (the first
that matches decides) and safety floors (which may only tighten the rules' outcome). Parsing
never raises: it returns a :class:`Policy` or every problem found, each with its path.
Evaluation is a pure function of the policy, the request and the caller's context.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from fnmatch import fnmatchcase
from typing import Any, Final

from quarterdeck.domain.canonical import sha256_hex


class Outcome(StrEnum):
    """What happens to an action."""

    ALLOW = "allow"
    DENY = "deny"
    REQUIRE_APPROVAL = "require_approval"


class OnExpiry(StrEnum):
    """What happens when an approval's ladder runs out without an answer."""

    REJECT = "reject"
    PAUSE_LANE = "pause_lane"
    FALLBACK = "fallback"


class Subject(StrEnum):
    """What a rate cap counts actions by."""

    TOOL = "tool"
    LANE = "lane"
    WORKSPACE = "workspace"


DEFAULT_REJECT_REASONS: Final = ("unsafe", "wrong_target", "needs_context", "policy", "other")
DEFAULT_APPROVER: Final = "supervisor"
DEFAULT_DEADLINE_S: Final = 900
_SEVERITY: Final = {Outcome.ALLOW: 0, Outcome.REQUIRE_APPROVAL: 1, Outcome.DENY: 2}
_WINDOW: Final = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-3]):([0-5][0-9])")
_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")
_SCALAR_TYPES: Final = "a string, number, boolean or array of them"

CountFn = Callable[[str, str, int], int]
"""``count(subject_kind, subject_value, window_s)``: earlier actions within the window."""


# --- the policy ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """A daily UTC window ``[start, end)`` in minutes after midnight; wraps when start > end."""

    start: int
    end: int

    def contains(self, instant: datetime) -> bool:
        """Whether ``instant`` (taken in UTC) falls inside the window."""
        minute = _utc_minute(instant)
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end

    def __str__(self) -> str:
        return f"{_hhmm(self.start)}-{_hhmm(self.end)}"


@dataclass(frozen=True, slots=True)
class ArgMatcher:
    """One ``args`` entry: ``kind`` is ``exact``, ``glob``, ``range`` or ``in``."""

    name: str
    kind: str
    value: Any = None
    """The exact value, the glob, or the tuple of ``in`` values."""
    min: float | None = None
    max: float | None = None

    def check(self, args: Mapping[str, Any]) -> tuple[bool, str]:
        """Whether the request's ``args`` satisfy this matcher, and why."""
        label = f"arg {self.name!r}"
        if self.name not in args:
            return False, f"{label} is missing"
        actual = args[self.name]
        if self.kind == "exact":
            ok = _same(actual, self.value)
            return ok, f"{label} {actual!r} {'equals' if ok else 'does not equal'} {self.value!r}"
        if self.kind == "glob":
            if not isinstance(actual, str):
                return False, f"{label} is not a string, so cannot match {self.value!r}"
            ok = fnmatchcase(actual, self.value)
            return ok, f"{label} {actual!r} {'matches' if ok else 'does not match'} {self.value!r}"
        if self.kind == "in":
            ok = any(_same(actual, option) for option in self.value)
            return ok, f"{label} {actual!r} {'is' if ok else 'is not'} in {list(self.value)!r}"
        bounds = _bounds_text(self.min, self.max)
        if not _is_number(actual):
            return False, f"{label} is not a number, so cannot be {bounds}"
        ok = (self.min is None or actual >= self.min) and (self.max is None or actual <= self.max)
        return ok, f"{label} {actual!r} {'is' if ok else 'is not'} {bounds}"


@dataclass(frozen=True, slots=True)
class Approval:
    """Who must approve, by when, who is next if they do not, and what happens at the end."""

    approver: str = DEFAULT_APPROVER
    deadline_s: int = DEFAULT_DEADLINE_S
    ladder: tuple[str, ...] = ()
    on_expiry: OnExpiry = OnExpiry.REJECT


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``[[rules]]`` entry: matchers (all must hold) and the outcome when they do."""

    name: str
    outcome: Outcome
    workspace: str | None = None
    lane: str | None = None
    tool: str | None = None
    args: tuple[ArgMatcher, ...] = ()
    cost_min: float | None = None
    cost_max: float | None = None
    hours: TimeWindow | None = None
    approval: Approval | None = None
    """Set exactly when ``outcome`` is ``require_approval``."""


@dataclass(frozen=True, slots=True)
class RateCap:
    """At most ``limit`` actions per ``subject`` value in any ``window_s`` seconds."""

    subject: Subject
    limit: int
    window_s: int


@dataclass(frozen=True, slots=True)
class ToolList:
    """Tool globs for the workspaces whose name matches ``workspace`` (a glob; ``*`` for all)."""

    workspace: str
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Floors:
    """Safety floors: applied after the rules, they can only tighten the outcome."""

    quiet_hours: TimeWindow | None = None
    rate_caps: tuple[RateCap, ...] = ()
    budget_yellow: float | None = None
    budget_red: float | None = None
    tools: tuple[ToolList, ...] = ()


@dataclass(frozen=True, slots=True)
class Policy:
    """A parsed policy document; ``hash`` is :func:`policy_hash` of its text."""

    outcome: Outcome
    """The outcome when no rule matches."""
    approval: Approval
    """Approval settings for the default outcome, floor escalations, and rules' unset fields."""
    reject_reasons: tuple[str, ...]
    rules: tuple[Rule, ...]
    floors: Floors
    hash: str


# --- requests and decisions ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ActionRequest:
    """An action an agent wants to take."""

    workspace: str
    lane: str
    tool: str
    args: Mapping[str, Any]
    estimated_cost: float | None = None


@dataclass(frozen=True, slots=True)
class EvaluationContext:
    """What evaluation needs from outside: the time, recent activity, and spend so far."""

    now: datetime
    """The current instant; a naive value is taken as UTC."""
    count: CountFn
    """Earlier actions of a subject within a window; see :data:`CountFn`."""
    workspace_spend: float = 0.0


@dataclass(frozen=True, slots=True)
class TraceStep:
    """One rule or floor considered: whether it matched (or triggered), and why."""

    rule: str
    matched: bool
    why: str
    kind: str = "rule"
    """``rule`` for a ``[[rules]]`` entry, ``floor`` for a safety floor."""

    def to_dict(self) -> dict[str, Any]:
        """The step as a JSON-ready dict."""
        return {"rule": self.rule, "kind": self.kind, "matched": self.matched, "why": self.why}


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    """The result of evaluating a request: the outcome and how it was reached.

    ``rule`` is the rule that matched (``None`` when the default applied), even when a floor
    then tightened the outcome; ``floor`` is then the floor whose outcome stands. The approval
    fields are set only for ``require_approval``.
    """

    outcome: Outcome
    rule: str | None
    trace: tuple[TraceStep, ...]
    approver: str | None
    deadline_s: int | None
    ladder: tuple[str, ...]
    on_expiry: OnExpiry | None
    policy_hash: str
    floor: str | None = None
    """The floor that set the outcome (the last to tighten it), if any; the trace has why."""

    def denial_reason(self) -> str:
        """A one-line reason for a denial, naming the floor or rule that decided it."""
        if self.floor is not None:
            why = next(
                (s.why for s in self.trace if s.kind == "floor" and s.rule == self.floor), ""
            )
            return f"denied by {self.floor}: {why}"
        if self.rule is not None:
            return f"denied by policy rule {self.rule!r}"
        return "denied by the policy's default outcome"

    def to_dict(self) -> dict[str, Any]:
        """The decision as a dict that canonical JSON can encode."""
        return {
            "outcome": str(self.outcome),
            "rule": self.rule,
            "trace": [step.to_dict() for step in self.trace],
            "approver": self.approver,
            "deadline_s": self.deadline_s,
            "ladder": list(self.ladder),
            "on_expiry": None if self.on_expiry is None else str(self.on_expiry),
            "policy_hash": self.policy_hash,
        }


# --- evaluation ---------------------------------------------------------------------------


def evaluate(policy: Policy, request: ActionRequest, context: EvaluationContext) -> PolicyDecision:
    """Decide ``request`` under ``policy``: the first matching rule, then the floors.

    Only ``context.count`` (the caller's code) can raise; evaluation itself does not.
    """
    trace: list[TraceStep] = []
    matched: Rule | None = None
    for rule in policy.rules:
        ok, why = _match_rule(rule, request, context.now)
        trace.append(TraceStep(rule.name, ok, why))
        if ok:
            matched = rule
            break
    outcome = matched.outcome if matched is not None else policy.outcome
    floor: str | None = None
    for step, floor_outcome in _floors(policy.floors, request, context):
        trace.append(step)
        if floor_outcome is not None and _SEVERITY[floor_outcome] > _SEVERITY[outcome]:
            outcome = floor_outcome  # floors only tighten: deny > require_approval > allow
            floor = step.rule
    approval: Approval | None = None
    if outcome is Outcome.REQUIRE_APPROVAL:
        # A rule that asked for approval names its approver; an escalated allow uses defaults.
        approval = (matched.approval if matched is not None else None) or policy.approval
    return PolicyDecision(
        outcome=outcome,
        rule=None if matched is None else matched.name,
        trace=tuple(trace),
        approver=None if approval is None else approval.approver,
        deadline_s=None if approval is None else approval.deadline_s,
        ladder=() if approval is None else approval.ladder,
        on_expiry=None if approval is None else approval.on_expiry,
        policy_hash=policy.hash,
        floor=floor,
    )


def _match_rule(rule: Rule, request: ActionRequest, now: datetime) -> tuple[bool, str]:
    """Check every matcher of ``rule``; the reason lists them all, or the failing ones."""
    checks: list[tuple[bool, str]] = []
    for label, pattern, value in (
        ("workspace", rule.workspace, request.workspace),
        ("lane", rule.lane, request.lane),
        ("tool", rule.tool, request.tool),
    ):
        if pattern is not None:
            ok = fnmatchcase(value, pattern)
            checks.append(
                (ok, f"{label} {value!r} {'matches' if ok else 'does not match'} {pattern!r}")
            )
    checks.extend(matcher.check(request.args) for matcher in rule.args)
    if rule.cost_min is not None or rule.cost_max is not None:
        bounds = _bounds_text(rule.cost_min, rule.cost_max)
        cost = request.estimated_cost
        if cost is None or not _is_number(cost) or not math.isfinite(cost):
            checks.append((False, f"estimated cost is unknown, so cannot be {bounds}"))
        else:
            ok = (rule.cost_min is None or cost >= rule.cost_min) and (
                rule.cost_max is None or cost <= rule.cost_max
            )
            checks.append((ok, f"estimated cost {cost!r} {'is' if ok else 'is not'} {bounds}"))
    if rule.hours is not None:
        ok = rule.hours.contains(now)
        clock = _hhmm(_utc_minute(now))
        checks.append((ok, f"{clock} UTC {'is inside' if ok else 'is outside'} hours {rule.hours}"))
    if not checks:
        return True, "no matchers: matches every request"
    failing = [why for ok, why in checks if not ok]
    if failing:
        return False, "; ".join(failing)
    return True, "; ".join(why for _, why in checks)


def _floors(
    floors: Floors, request: ActionRequest, context: EvaluationContext
) -> list[tuple[TraceStep, Outcome | None]]:
    """Each configured floor's trace step and the outcome it imposes (``None``: none)."""
    steps: list[tuple[TraceStep, Outcome | None]] = []
    if floors.tools:
        steps.append(_tools_floor(floors.tools, request))
    for index, cap in enumerate(floors.rate_caps):
        value = {
            Subject.TOOL: request.tool,
            Subject.LANE: request.lane,
            Subject.WORKSPACE: request.workspace,
        }[cap.subject]
        seen = context.count(str(cap.subject), value, cap.window_s)
        head = f"{cap.subject} {value!r}: {seen} in the last {cap.window_s}s"
        over = seen >= cap.limit
        why = f"{head}, limit {cap.limit}: " + ("deny" if over else "under the cap")
        steps.append(
            (
                TraceStep(f"floors.rate_caps[{index}]", over, why, "floor"),
                Outcome.DENY if over else None,
            )
        )
    if floors.budget_yellow is not None or floors.budget_red is not None:
        steps.append(_budget_floor(floors, request, context.workspace_spend))
    if floors.quiet_hours is not None:
        inside = floors.quiet_hours.contains(context.now)
        clock = _hhmm(_utc_minute(context.now))
        why = (
            f"{clock} UTC is inside quiet hours {floors.quiet_hours}: allow becomes require_approval"
            if inside
            else f"{clock} UTC is outside quiet hours {floors.quiet_hours}"
        )
        steps.append(
            (
                TraceStep("floors.quiet_hours", inside, why, "floor"),
                Outcome.REQUIRE_APPROVAL if inside else None,
            )
        )
    return steps


def _tools_floor(
    lists: Sequence[ToolList], request: ActionRequest
) -> tuple[TraceStep, Outcome | None]:
    name = "floors.tools"
    tool = request.tool
    applying = [entry for entry in lists if fnmatchcase(request.workspace, entry.workspace)]
    if not applying:
        why = f"no tool lists apply to workspace {request.workspace!r}"
        return TraceStep(name, False, why, "floor"), None
    for entry in applying:
        for pattern in entry.deny:
            if fnmatchcase(tool, pattern):
                why = f"tool {tool!r} matches deny {pattern!r} of tools[{entry.workspace!r}]: deny"
                return TraceStep(name, True, why, "floor"), Outcome.DENY
    for entry in applying:
        if entry.allow and not any(fnmatchcase(tool, pattern) for pattern in entry.allow):
            why = (
                f"tool {tool!r} matches no allow glob of tools[{entry.workspace!r}] "
                f"{list(entry.allow)!r}: deny"
            )
            return TraceStep(name, True, why, "floor"), Outcome.DENY
    keys = ", ".join(repr(entry.workspace) for entry in applying)
    why = f"tool {tool!r} passes the tool lists of {keys}"
    return TraceStep(name, False, why, "floor"), None


def _budget_floor(
    floors: Floors, request: ActionRequest, spend: float
) -> tuple[TraceStep, Outcome | None]:
    name = "floors.budget_tiers"
    cost = request.estimated_cost
    known = cost is not None and _is_number(cost) and math.isfinite(cost) and cost > 0
    projected = spend + cost if known and cost is not None else spend
    what = f"spend {projected!r}" + (f" ({spend!r} so far + {cost!r} estimated)" if known else "")
    if not _is_number(projected) or math.isnan(projected):
        why = f"{what} is not a number: deny"
        return TraceStep(name, True, why, "floor"), Outcome.DENY
    if floors.budget_red is not None and projected >= floors.budget_red:
        why = f"{what} reaches red {floors.budget_red!r}: deny"
        return TraceStep(name, True, why, "floor"), Outcome.DENY
    if floors.budget_yellow is not None and projected >= floors.budget_yellow:
        why = f"{what} reaches yellow {floors.budget_yellow!r}: allow becomes require_approval"
        return TraceStep(name, True, why, "floor"), Outcome.REQUIRE_APPROVAL
    limits = [
        f"{tier} {value!r}"
        for tier, value in (("yellow", floors.budget_yellow), ("red", floors.budget_red))
        if value is not None
    ]
    why = f"{what} is below {' and '.join(limits)}"
    return TraceStep(name, False, why, "floor"), None


# --- parsing ------------------------------------------------------------------------------


def policy_hash(text: str) -> str:
    """SHA-256 (lowercase hex) of the policy text's UTF-8 bytes.

    Raises:
        UnicodeEncodeError: the text holds a lone surrogate.
    """
    return sha256_hex(text.encode("utf-8"))


def parse_policy(text: str) -> Policy | list[str]:
    """Parse a TOML policy document.

    Returns:
        The policy, or every problem found as ``"<path>: <message>"``.
    """
    try:
        digest = policy_hash(text)
    except UnicodeEncodeError:
        return ["$: holds a lone surrogate, which is not valid Unicode"]
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return [f"$: not TOML: {exc}"]
    errors: list[str] = []
    _unknown_keys("", data, {"defaults", "rules", "floors"}, errors)

    defaults = _table(data, "defaults", "defaults", errors)
    _unknown_keys(
        "defaults",
        defaults,
        {"outcome", "reject_reasons", "approver", "deadline_s", "ladder", "on_expiry"},
        errors,
    )
    outcome = _outcome(defaults, "defaults", errors) or Outcome.REQUIRE_APPROVAL
    approval = _approval(defaults, "defaults", Approval(), errors)
    reasons = _reasons(defaults, errors)

    rules: list[Rule] = []
    raw_rules = data.get("rules", [])
    if not isinstance(raw_rules, list):
        errors.append("rules: must be an array of tables ([[rules]])")
        raw_rules = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(raw_rules):
        path = f"rules[{index}]"
        if not isinstance(raw, dict):
            errors.append(f"{path}: must be a table")
            continue
        rule = _rule(raw, path, approval, errors)
        name = raw.get("name")
        if isinstance(name, str) and name in seen:
            errors.append(f"{path}.name: duplicate of rules[{seen[name]}] ({name!r})")
        elif isinstance(name, str):
            seen[name] = index
        if rule is not None:
            rules.append(rule)

    floors = _floors_table(_table(data, "floors", "floors", errors), errors)
    if errors:
        return errors
    return Policy(outcome, approval, reasons, tuple(rules), floors, digest)


_RULE_KEYS: Final = frozenset(
    {
        "name",
        "outcome",
        "workspace",
        "lane",
        "tool",
        "args",
        "cost_min",
        "cost_max",
        "hours",
        "approver",
        "deadline_s",
        "ladder",
        "on_expiry",
    }
)
_APPROVAL_KEYS: Final = ("approver", "deadline_s", "ladder", "on_expiry")


def _rule(raw: dict[str, Any], path: str, defaults: Approval, errors: list[str]) -> Rule | None:
    before = len(errors)
    _unknown_keys(path, raw, _RULE_KEYS, errors)
    name = raw.get("name")
    if name is None:
        errors.append(f"{path}.name: is required")
    elif not isinstance(name, str) or not name:
        errors.append(f"{path}.name: must be a non-empty string")
    outcome = _outcome(raw, path, errors)
    if "outcome" not in raw:
        errors.append(f"{path}.outcome: is required")
    globs = {key: _glob(raw, key, path, errors) for key in ("workspace", "lane", "tool")}
    args = _args(raw.get("args"), f"{path}.args", errors)
    cost_min = _number(raw, "cost_min", path, errors)
    cost_max = _number(raw, "cost_max", path, errors)
    if cost_min is not None and cost_max is not None and cost_min > cost_max:
        errors.append(f"{path}.cost_min: must not exceed cost_max ({cost_min!r} > {cost_max!r})")
    hours = _window(raw, "hours", path, errors)
    approval: Approval | None = None
    if outcome is Outcome.REQUIRE_APPROVAL:
        approval = _approval(raw, path, defaults, errors)
    elif outcome is not None:
        for key in _APPROVAL_KEYS:
            if key in raw:
                errors.append(f"{path}.{key}: only allowed when outcome is require_approval")
    if len(errors) > before or outcome is None or not isinstance(name, str):
        return None
    return Rule(
        name=name,
        outcome=outcome,
        workspace=globs["workspace"],
        lane=globs["lane"],
        tool=globs["tool"],
        args=args,
        cost_min=cost_min,
        cost_max=cost_max,
        hours=hours,
        approval=approval,
    )


def _args(raw: object, path: str, errors: list[str]) -> tuple[ArgMatcher, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        errors.append(f"{path}: must be a table of argument name to value or matcher")
        return ()
    matchers: list[ArgMatcher] = []
    for name, spec in raw.items():
        here = _key_path(path, name)
        if not isinstance(spec, dict):
            if _plain(spec):
                matchers.append(ArgMatcher(name, "exact", spec))
            else:
                errors.append(f"{here}: must be {_SCALAR_TYPES}, or a matcher table")
            continue
        keys = set(spec)
        if keys == {"glob"}:
            if isinstance(spec["glob"], str) and spec["glob"]:
                matchers.append(ArgMatcher(name, "glob", spec["glob"]))
            else:
                errors.append(f"{here}.glob: must be a non-empty string")
        elif keys == {"in"}:
            options = spec["in"]
            if isinstance(options, list) and options and all(_plain(o) for o in options):
                matchers.append(ArgMatcher(name, "in", tuple(options)))
            else:
                errors.append(f"{here}.in: must be a non-empty array of {_SCALAR_TYPES}")
        elif keys and keys <= {"min", "max"}:
            before = len(errors)
            low = _number(spec, "min", here, errors, negative=True)
            high = _number(spec, "max", here, errors, negative=True)
            if low is not None and high is not None and low > high:
                errors.append(f"{here}.min: must not exceed max ({low!r} > {high!r})")
            if len(errors) == before:
                matchers.append(ArgMatcher(name, "range", min=low, max=high))
        else:
            errors.append(
                f"{here}: a matcher table must be {{glob = ...}}, {{in = [...]}}, "
                "or {min = ..., max = ...} (either or both)"
            )
    return tuple(matchers)


def _approval(raw: dict[str, Any], path: str, base: Approval, errors: list[str]) -> Approval:
    approver = raw.get("approver", base.approver)
    if not isinstance(approver, str) or not approver:
        errors.append(f"{path}.approver: must be a non-empty string (a role name)")
        approver = base.approver
    deadline = raw.get("deadline_s", base.deadline_s)
    if type(deadline) is not int or deadline <= 0:
        errors.append(f"{path}.deadline_s: must be a positive integer (seconds)")
        deadline = base.deadline_s
    ladder = raw.get("ladder", list(base.ladder))
    if not isinstance(ladder, list) or not all(isinstance(r, str) and r for r in ladder):
        errors.append(f"{path}.ladder: must be an array of role names (non-empty strings)")
        ladder = list(base.ladder)
    expiry = raw.get("on_expiry", str(base.on_expiry))
    if expiry not in set(OnExpiry):
        errors.append(f"{path}.on_expiry: {_one_of(OnExpiry)}, got {expiry!r}")
        expiry = base.on_expiry
    return Approval(approver, deadline, tuple(ladder), OnExpiry(expiry))


def _reasons(defaults: dict[str, Any], errors: list[str]) -> tuple[str, ...]:
    reasons = defaults.get("reject_reasons", list(DEFAULT_REJECT_REASONS))
    if (
        not isinstance(reasons, list)
        or not reasons
        or not all(isinstance(r, str) and r for r in reasons)
    ):
        errors.append("defaults.reject_reasons: must be a non-empty array of non-empty strings")
        return DEFAULT_REJECT_REASONS
    if len(set(reasons)) != len(reasons):
        errors.append("defaults.reject_reasons: must not repeat a reason")
    return tuple(reasons)


def _floors_table(raw: dict[str, Any], errors: list[str]) -> Floors:
    _unknown_keys("floors", raw, {"quiet_hours", "rate_caps", "budget_tiers", "tools"}, errors)
    quiet = _window(raw, "quiet_hours", "floors", errors)

    caps: list[RateCap] = []
    raw_caps = raw.get("rate_caps", [])
    if not isinstance(raw_caps, list):
        errors.append("floors.rate_caps: must be an array of tables")
        raw_caps = []
    for index, cap in enumerate(raw_caps):
        path = f"floors.rate_caps[{index}]"
        if not isinstance(cap, dict):
            errors.append(f"{path}: must be a table {{subject, limit, window_s}}")
            continue
        before = len(errors)
        _unknown_keys(path, cap, {"subject", "limit", "window_s"}, errors)
        subject = cap.get("subject")
        if subject not in set(Subject):
            errors.append(f"{path}.subject: {_one_of(Subject)}, got {subject!r}")
        limit = cap.get("limit")
        if type(limit) is not int or limit < 0:
            errors.append(f"{path}.limit: must be a non-negative integer")
        window = cap.get("window_s")
        if type(window) is not int or window <= 0:
            errors.append(f"{path}.window_s: must be a positive integer (seconds)")
        if len(errors) == before:
            assert isinstance(subject, str) and isinstance(limit, int) and isinstance(window, int)
            caps.append(RateCap(Subject(subject), limit, window))

    tiers = _table(raw, "budget_tiers", "floors.budget_tiers", errors)
    _unknown_keys("floors.budget_tiers", tiers, {"yellow", "red"}, errors)
    yellow = _number(tiers, "yellow", "floors.budget_tiers", errors)
    red = _number(tiers, "red", "floors.budget_tiers", errors)
    if yellow is not None and red is not None and yellow > red:
        errors.append(f"floors.budget_tiers.yellow: must not exceed red ({yellow!r} > {red!r})")

    lists: list[ToolList] = []
    for workspace, entry in _table(raw, "tools", "floors.tools", errors).items():
        path = _key_path("floors.tools", workspace)
        if not isinstance(entry, dict):
            errors.append(f"{path}: must be a table with allow and/or deny arrays")
            continue
        _unknown_keys(path, entry, {"allow", "deny"}, errors)
        globs: dict[str, tuple[str, ...]] = {}
        for key in ("allow", "deny"):
            value = entry.get(key, [])
            if not isinstance(value, list):
                errors.append(f"{path}.{key}: must be an array of globs")
                value = []
            for index, pattern in enumerate(value):
                if not isinstance(pattern, str) or not pattern:
                    errors.append(f"{path}.{key}[{index}]: must be a non-empty string (a glob)")
            globs[key] = tuple(p for p in value if isinstance(p, str) and p)
        lists.append(ToolList(workspace, globs["allow"], globs["deny"]))
    return Floors(quiet, tuple(caps), yellow, red, tuple(lists))


# --- parsing helpers ----------------------------------------------------------------------


def _table(raw: Mapping[str, Any], key: str, path: str, errors: list[str]) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        errors.append(f"{path}: must be a table")
        return {}
    return value


def _unknown_keys(
    path: str, raw: Mapping[str, Any], known: set[str] | frozenset[str], errors: list[str]
) -> None:
    for key in raw:
        if key not in known:
            errors.append(f"{_key_path(path, key)}: unknown key")


def _key_path(path: str, key: str) -> str:
    if _BARE_KEY.fullmatch(key):
        return f"{path}.{key}" if path else key
    quoted = '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{path}[{quoted}]" if path else quoted


def _outcome(raw: Mapping[str, Any], path: str, errors: list[str]) -> Outcome | None:
    if "outcome" not in raw:
        return None
    value = raw["outcome"]
    if value not in set(Outcome):
        errors.append(f"{path}.outcome: {_one_of(Outcome)}, got {value!r}")
        return None
    return Outcome(value)


def _glob(raw: Mapping[str, Any], key: str, path: str, errors: list[str]) -> str | None:
    value = raw.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        errors.append(f"{path}.{key}: must be a non-empty string (a glob)")
        return None
    return value


def _number(
    raw: Mapping[str, Any], key: str, path: str, errors: list[str], *, negative: bool = False
) -> float | None:
    if key not in raw:
        return None
    value = raw[key]
    if not _is_number(value) or not math.isfinite(value) or (value < 0 and not negative):
        kind = "a finite number" if negative else "a finite non-negative number"
        errors.append(f"{path}.{key}: must be {kind}, got {value!r}")
        return None
    return value  # type: ignore[no-any-return]


def _window(raw: Mapping[str, Any], key: str, path: str, errors: list[str]) -> TimeWindow | None:
    if key not in raw:
        return None
    value = raw[key]
    match = _WINDOW.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        errors.append(f'{path}.{key}: must be "HH:MM-HH:MM" (UTC, 24-hour), got {value!r}')
        return None
    hours_a, minutes_a, hours_b, minutes_b = (int(group) for group in match.groups())
    window = TimeWindow(hours_a * 60 + minutes_a, hours_b * 60 + minutes_b)
    if window.start == window.end:
        errors.append(f"{path}.{key}: start and end must differ, got {value!r}")
        return None
    return window


def _one_of(values: type[StrEnum]) -> str:
    return "must be one of " + ", ".join(str(v) for v in values)


# --- value helpers ------------------------------------------------------------------------


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _plain(value: object) -> bool:
    """Whether ``value`` is a string, finite number, boolean, or array of them."""
    if isinstance(value, str | bool):
        return True
    if _is_number(value):
        return math.isfinite(value)  # type: ignore[arg-type]
    if isinstance(value, list):
        return all(_plain(item) for item in value)
    return False


def _same(actual: object, expected: object) -> bool:
    """Equality that keeps booleans apart from numbers and compares arrays item by item."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(actual) is type(expected) and actual == expected
    if _is_number(expected):
        return _is_number(actual) and actual == expected
    if isinstance(expected, str):
        return isinstance(actual, str) and actual == expected
    if isinstance(expected, list | tuple):
        return (
            isinstance(actual, list | tuple)
            and len(actual) == len(expected)
            and all(_same(a, e) for a, e in zip(actual, expected, strict=True))
        )
    return False


def _bounds_text(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"between {low!r} and {high!r}"
    if low is not None:
        return f"at least {low!r}"
    return f"at most {high!r}"


def _utc_minute(instant: datetime) -> int:
    """Minutes after UTC midnight; a naive instant is taken as UTC. Never overflows."""
    offset = instant.utcoffset()
    seconds = instant.hour * 3600 + instant.minute * 60 + instant.second
    if offset is not None:
        seconds -= int(offset.total_seconds())
    return (seconds % 86400) // 60


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"
