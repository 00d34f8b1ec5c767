"""Evaluation of a request under a policy: the first matching rule, then the safety floors,
each step recorded in the decision's trace. A pure function of the policy, the request and the
caller's context.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Final

from quarterdeck.domain.policy.model import (
    ActionRequest,
    Approval,
    EvaluationContext,
    Floors,
    Outcome,
    Policy,
    PolicyDecision,
    Rule,
    Subject,
    ToolList,
    TraceStep,
)
from quarterdeck.domain.policy.values import bounds_text, hhmm, is_number, utc_minute

_SEVERITY: Final = {Outcome.ALLOW: 0, Outcome.REQUIRE_APPROVAL: 1, Outcome.DENY: 2}


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
        approvals_required=1 if approval is None else approval.approvals_required,
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
    checks.extend(matcher.check(request.annotations) for matcher in rule.annotations)
    if rule.cost_min is not None or rule.cost_max is not None:
        bounds = bounds_text(rule.cost_min, rule.cost_max)
        cost = request.estimated_cost
        if cost is None or not is_number(cost) or not math.isfinite(cost):
            checks.append((False, f"estimated cost is unknown, so cannot be {bounds}"))
        else:
            ok = (rule.cost_min is None or cost >= rule.cost_min) and (
                rule.cost_max is None or cost <= rule.cost_max
            )
            checks.append((ok, f"estimated cost {cost!r} {'is' if ok else 'is not'} {bounds}"))
    if rule.hours is not None:
        ok = rule.hours.contains(now)
        clock = hhmm(utc_minute(now))
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
        clock = hhmm(utc_minute(context.now))
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
    known = cost is not None and is_number(cost) and math.isfinite(cost) and cost > 0
    projected = spend + cost if known and cost is not None else spend
    what = f"spend {projected!r}" + (f" ({spend!r} so far + {cost!r} estimated)" if known else "")
    if not is_number(projected) or math.isnan(projected):
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
