"""Parsing and validation of a policy document (TOML). Parsing never raises: it returns a
:class:`~quarterdeck.domain.policy.model.Policy` or every problem found, each with its path.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Final

from quarterdeck.domain.authority import VIEWER
from quarterdeck.domain.canonical import sha256_hex
from quarterdeck.domain.policy.model import (
    DEFAULT_REJECT_REASONS,
    Approval,
    ArgMatcher,
    Floors,
    OnExpiry,
    Outcome,
    Policy,
    RateCap,
    Rule,
    Subject,
    TimeWindow,
    ToolList,
)
from quarterdeck.domain.policy.values import is_number, plain

_WINDOW: Final = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-3]):([0-5][0-9])")
_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")
_SCALAR_TYPES: Final = "a string, number, boolean or array of them"


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
        {
            "outcome",
            "reject_reasons",
            "approver",
            "deadline_s",
            "ladder",
            "on_expiry",
            "approvals_required",
        },
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
        "annotations",
        "cost_min",
        "cost_max",
        "hours",
        "approver",
        "deadline_s",
        "ladder",
        "on_expiry",
        "approvals_required",
    }
)
MAX_APPROVALS: Final = 10
"""The most approvals a rule may ask for."""
_APPROVAL_KEYS: Final = ("approver", "deadline_s", "ladder", "on_expiry", "approvals_required")


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
    annotations = _args(raw.get("annotations"), f"{path}.annotations", errors, "annotation")
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
        annotations=annotations,
    )


def _args(raw: object, path: str, errors: list[str], scope: str = "arg") -> tuple[ArgMatcher, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        errors.append(f"{path}: must be a table of argument name to value or matcher")
        return ()
    matchers: list[ArgMatcher] = []
    for name, spec in raw.items():
        here = _key_path(path, name)
        if not isinstance(spec, dict):
            if plain(spec):
                matchers.append(ArgMatcher(name, "exact", spec, scope=scope))
            else:
                errors.append(f"{here}: must be {_SCALAR_TYPES}, or a matcher table")
            continue
        keys = set(spec)
        if keys == {"glob"}:
            if isinstance(spec["glob"], str) and spec["glob"]:
                matchers.append(ArgMatcher(name, "glob", spec["glob"], scope=scope))
            else:
                errors.append(f"{here}.glob: must be a non-empty string")
        elif keys == {"in"}:
            options = spec["in"]
            if isinstance(options, list) and options and all(plain(o) for o in options):
                matchers.append(ArgMatcher(name, "in", tuple(options), scope=scope))
            else:
                errors.append(f"{here}.in: must be a non-empty array of {_SCALAR_TYPES}")
        elif keys and keys <= {"min", "max"}:
            before = len(errors)
            low = _number(spec, "min", here, errors, negative=True)
            high = _number(spec, "max", here, errors, negative=True)
            if low is not None and high is not None and low > high:
                errors.append(f"{here}.min: must not exceed max ({low!r} > {high!r})")
            if len(errors) == before:
                matchers.append(ArgMatcher(name, "range", min=low, max=high, scope=scope))
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
    elif approver == VIEWER:
        errors.append(f"{path}.approver: {VIEWER!r} only reads: name a role that decides")
        approver = base.approver
    deadline = raw.get("deadline_s", base.deadline_s)
    if type(deadline) is not int or deadline <= 0:
        errors.append(f"{path}.deadline_s: must be a positive integer (seconds)")
        deadline = base.deadline_s
    ladder = raw.get("ladder", list(base.ladder))
    if not isinstance(ladder, list) or not all(isinstance(r, str) and r for r in ladder):
        errors.append(f"{path}.ladder: must be an array of role names (non-empty strings)")
        ladder = list(base.ladder)
    elif VIEWER in ladder:
        errors.append(f"{path}.ladder: {VIEWER!r} only reads: name roles that decide")
        ladder = list(base.ladder)
    expiry = raw.get("on_expiry", str(base.on_expiry))
    if expiry not in set(OnExpiry):
        errors.append(f"{path}.on_expiry: {_one_of(OnExpiry)}, got {expiry!r}")
        expiry = base.on_expiry
    required = raw.get("approvals_required", base.approvals_required)
    if type(required) is not int or not 1 <= required <= MAX_APPROVALS:
        errors.append(
            f"{path}.approvals_required: must be an integer from 1 to {MAX_APPROVALS} "
            "(2: a two-person rule)"
        )
        required = base.approvals_required
    return Approval(approver, deadline, tuple(ladder), OnExpiry(expiry), required)


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
    if not is_number(value) or not math.isfinite(value) or (value < 0 and not negative):
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
