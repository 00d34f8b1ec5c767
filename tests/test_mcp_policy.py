"""Policy rules on an MCP tool's annotations: the documented default policy (read-only tools
run, everything else waits for a person) and the problems a bad ``annotations`` table reports."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from quarterdeck.domain.policy import (
    ANNOTATIONS_ARG,
    ActionRequest,
    EvaluationContext,
    Outcome,
    Policy,
    evaluate,
    parse_policy,
)

DEFAULT_MCP_POLICY = """
[defaults]
outcome = "allow"

[[rules]]
name = "mcp-read-only"
lane = "mcp"
annotations = { readOnlyHint = true }
outcome = "allow"

[[rules]]
name = "mcp-destructive"
lane = "mcp"
annotations = { destructiveHint = true }
outcome = "require_approval"

[[rules]]
name = "mcp-changes"
lane = "mcp"
outcome = "require_approval"
"""


def parsed(text: str) -> Policy:
    found = parse_policy(text)
    assert isinstance(found, Policy), found
    return found


def decide(policy: Policy, tool: str, hints: dict[str, Any] | None, lane: str = "mcp") -> Any:
    args: dict[str, Any] = {"path": "/tmp/x"}
    if hints is not None:
        args[ANNOTATIONS_ARG] = hints
    request = ActionRequest("default", lane, tool, args)
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    return evaluate(policy, request, EvaluationContext(now, lambda _k, _v, _w: 0, 0.0))


def test_the_default_policy_runs_read_only_tools_and_holds_the_rest() -> None:
    policy = parsed(DEFAULT_MCP_POLICY)
    read = decide(policy, "git__git_status", {"readOnlyHint": True, "destructiveHint": False})
    assert read.outcome is Outcome.ALLOW and read.rule == "mcp-read-only"
    wipe = decide(policy, "git__git_reset", {"readOnlyHint": False, "destructiveHint": True})
    assert wipe.outcome is Outcome.REQUIRE_APPROVAL and wipe.rule == "mcp-destructive"
    commit = decide(policy, "git__git_commit", {"readOnlyHint": False, "destructiveHint": False})
    assert commit.outcome is Outcome.REQUIRE_APPROVAL and commit.rule == "mcp-changes"
    # No annotations at all (not an MCP call): the annotation rules do not match.
    bare = decide(policy, "git__git_status", None)
    assert bare.rule == "mcp-changes"
    # Outside the mcp lane, forged annotations match nothing.
    other = decide(policy, "rm", {"readOnlyHint": True}, lane="agents")
    assert other.outcome is Outcome.ALLOW and other.rule is None


def test_the_trace_names_the_annotation() -> None:
    policy = parsed(DEFAULT_MCP_POLICY)
    read = decide(policy, "files__read_file", {"readOnlyHint": True})
    reasons = " ".join(step.why for step in read.trace)
    assert "annotation 'readOnlyHint' True equals True" in reasons


def test_a_bad_annotations_table_is_reported() -> None:
    problems = parse_policy(
        '[[rules]]\nname = "x"\noutcome = "allow"\nannotations = { readOnlyHint = { near = 1 } }\n'
    )
    assert isinstance(problems, list)
    assert any(p.startswith("rules[0].annotations.readOnlyHint") for p in problems), problems
    problems = parse_policy('[[rules]]\nname = "x"\noutcome = "allow"\nannotations = 3\n')
    assert isinstance(problems, list)
    assert any(p.startswith("rules[0].annotations:") for p in problems), problems
