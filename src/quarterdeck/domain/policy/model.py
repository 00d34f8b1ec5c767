"""The policy's data: outcomes, the parsed document (rules, approvals, floors), and the request
and decision that evaluation takes and gives.

A rule's matchers check a request themselves (:meth:`ArgMatcher.check`,
:meth:`TimeWindow.contains`); which rule decides, and how the floors tighten its outcome, is
:mod:`quarterdeck.domain.policy.evaluation`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from fnmatch import fnmatchcase
from typing import Any, Final

from quarterdeck.domain.policy.values import bounds_text, hhmm, is_number, same, utc_minute


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
ANNOTATIONS_ARG: Final = "_mcp_annotations"
"""The argument under which an MCP tool's annotations (``readOnlyHint``, ``destructiveHint``,
``idempotentHint``, ``openWorldHint``) travel with a call, for rules' ``annotations`` matchers.
The gateway and the ``http`` lane set it from the upstream server's tool list and refuse a
call whose own arguments carry it."""

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
        minute = utc_minute(instant)
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end

    def __str__(self) -> str:
        return f"{hhmm(self.start)}-{hhmm(self.end)}"


@dataclass(frozen=True, slots=True)
class ArgMatcher:
    """One ``args`` (or ``annotations``) entry: ``kind`` is ``exact``, ``glob``, ``range`` or
    ``in``; ``scope`` names what it reads in the rule's trace (``arg``, ``annotation``)."""

    name: str
    kind: str
    value: Any = None
    """The exact value, the glob, or the tuple of ``in`` values."""
    min: float | None = None
    max: float | None = None
    scope: str = "arg"

    def check(self, args: Mapping[str, Any]) -> tuple[bool, str]:
        """Whether the request's ``args`` satisfy this matcher, and why."""
        label = f"{self.scope} {self.name!r}"
        if self.name not in args:
            return False, f"{label} is missing"
        actual = args[self.name]
        if self.kind == "exact":
            ok = same(actual, self.value)
            return ok, f"{label} {actual!r} {'equals' if ok else 'does not equal'} {self.value!r}"
        if self.kind == "glob":
            if not isinstance(actual, str):
                return False, f"{label} is not a string, so cannot match {self.value!r}"
            ok = fnmatchcase(actual, self.value)
            return ok, f"{label} {actual!r} {'matches' if ok else 'does not match'} {self.value!r}"
        if self.kind == "in":
            ok = any(same(actual, option) for option in self.value)
            return ok, f"{label} {actual!r} {'is' if ok else 'is not'} in {list(self.value)!r}"
        bounds = bounds_text(self.min, self.max)
        if not is_number(actual):
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
    approvals_required: int = 1
    """How many different people must approve (2: a two-person rule); one rejection is
    enough to refuse."""


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
    annotations: tuple[ArgMatcher, ...] = ()
    """Matchers on an MCP tool's annotations (:data:`ANNOTATIONS_ARG`)."""


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

    @property
    def annotations(self) -> Mapping[str, Any]:
        """The MCP tool annotations the call carries (:data:`ANNOTATIONS_ARG`), else none."""
        found = self.args.get(ANNOTATIONS_ARG)
        return found if isinstance(found, Mapping) else {}


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
    approvals_required: int = 1
    """How many different people must approve (set only for ``require_approval``)."""

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
        } | ({"approvals_required": self.approvals_required} if self.approvals_required > 1 else {})
