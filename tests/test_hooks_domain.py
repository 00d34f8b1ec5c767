"""The pure hook rules (``domain/hooks.py``): reading hook input, action ids, the workspace a
directory maps to, rulings and the answer each CLI expects."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quarterdeck.domain.hooks import (
    CLAUDE_CODE,
    CODEX,
    GO_ON,
    MAX_RESULT_CHARS,
    STILL_WAITING,
    HookInputError,
    Ruling,
    action_id,
    answer,
    capped_result,
    event_record,
    parse_event,
    record_key,
    ruling_of_decision,
    ruling_of_request,
    stop_ruling,
    workspace_for,
)

PRE = {
    "session_id": "s-1", "transcript_path": "/t.jsonl", "cwd": "/work/proj",
    "permission_mode": "default", "hook_event_name": "PreToolUse", "tool_name": "Bash",
    "tool_input": {"command": "ls", "description": "list"}, "tool_use_id": "toolu_1",
}  # fmt: skip

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(json_values)
def test_any_json_either_parses_or_names_what_is_wrong(value: Any) -> None:
    try:
        event = parse_event(CLAUDE_CODE, value)
    except HookInputError as exc:
        assert str(exc)
    else:
        assert event.session_id and event.cwd


@given(st.dictionaries(st.sampled_from(sorted(PRE)), json_values, max_size=6))
def test_fields_of_the_wrong_type_are_refused_by_name(changes: dict[str, Any]) -> None:
    data = {**PRE, **changes}
    try:
        event = parse_event(CLAUDE_CODE, data)
    except HookInputError as exc:
        assert str(exc).split(":")[0] in {*PRE, "hook_event_name"} or "event" in str(exc)
    else:
        assert isinstance(event.tool_input, dict) and event.tool_name


def test_a_pre_tool_use_is_read_with_its_action_id() -> None:
    event = parse_event(CODEX, {**PRE, "turn_id": "t-1", "model": "gpt"})
    assert (event.event, event.tool_name, event.turn_id, event.model) == (
        "PreToolUse", "Bash", "t-1", "gpt",
    )  # fmt: skip
    assert action_id(event) == "codex:s-1:toolu_1"
    with pytest.raises(HookInputError, match="tool_use_id"):
        parse_event(CLAUDE_CODE, {**PRE, "tool_use_id": None})
    with pytest.raises(HookInputError, match="agent"):
        parse_event("cursor", PRE)


def test_a_permission_request_without_a_call_id_is_named_by_its_input() -> None:
    data = {k: v for k, v in PRE.items() if k != "tool_use_id"} | {
        "hook_event_name": "PermissionRequest"
    }
    one, two = parse_event(CLAUDE_CODE, data), parse_event(CLAUDE_CODE, data)
    other = parse_event(CLAUDE_CODE, {**data, "tool_input": {"command": "rm x"}})
    assert action_id(one) == action_id(two) != action_id(other)


@given(st.text(max_size=MAX_RESULT_CHARS * 2 // 100).map(lambda t: t * 101))
def test_a_result_is_capped_with_its_full_size_and_hash(text: str) -> None:
    capped = capped_result(text)
    assert len(capped["text"]) <= MAX_RESULT_CHARS
    assert capped["size"] == len(text.encode("utf-8", "surrogatepass"))
    assert capped["truncated"] == (len(text) > MAX_RESULT_CHARS)
    assert len(capped["sha256"]) == 64


def test_a_post_tool_use_records_the_capped_result_under_its_action() -> None:
    data = {**PRE, "hook_event_name": "PostToolUse", "tool_response": {"stdout": "x" * 50_000}}
    event = parse_event(CLAUDE_CODE, data)
    record = event_record(event)
    assert record["action_id"] == "claude-code:s-1:toolu_1"
    assert record["result"]["truncated"] and record["result"]["size"] > 50_000
    assert len(json.dumps(record)) < 64 * 1024
    assert record_key(event) == "hook:claude-code:s-1:toolu_1:PostToolUse"


@given(st.lists(st.tuples(st.sampled_from(["/a", "/a/b", "/a/bc", "/", "/z"]),
                          st.sampled_from(["w1", "w2", "w3"])), max_size=5),
       st.sampled_from(["/a", "/a/b/c", "/a/bcd", "/q", "/a/b"]))  # fmt: skip
def test_the_longest_holding_prefix_names_the_workspace(
    prefixes: list[tuple[str, str]], cwd: str
) -> None:
    found = workspace_for(cwd, prefixes, "default")
    holding = [(p, w) for p, w in prefixes if cwd == p or p == "/" or cwd.startswith(p + "/")]
    if not holding:
        assert found == "default"
    else:
        longest = max(len(p) for p, _ in holding)
        assert found in {w for p, w in holding if len(p) == longest}


def test_rulings_from_the_policy_and_from_a_person() -> None:
    assert ruling_of_request({"ok": True, "verdict": "allow", "rule": "reads", "args": {},
                              "effective_args": {}}).verdict == "allow"  # fmt: skip
    deny = ruling_of_request({"ok": True, "verdict": "deny", "reason": "rule no-rm-rf: denied"})
    assert (deny.verdict, deny.reason) == ("deny", "rule no-rm-rf: denied")
    assert ruling_of_request({"ok": False, "errors": ["args differ"]}).verdict == "deny"
    pending = ruling_of_request({"ok": True, "verdict": "pending", "approval": "a-1"})
    assert (pending.verdict, pending.approval) == ("pending", "a-1")
    edited = ruling_of_decision(
        {"id": "a-1", "state": "edited", "edited_args": '{"command": "ls -l"}', "decided_by": "al"}
    )
    assert (edited.verdict, edited.updated_input) == ("allow", {"command": "ls -l"})
    rejected = ruling_of_decision({"id": "a-1", "state": "rejected", "reason_code": "unsafe",
                                   "reason_text": "no", "decided_by": "al"})  # fmt: skip
    assert rejected.verdict == "deny" and rejected.reason == "rejected by al: unsafe: no"


def test_answers_in_each_cli_format() -> None:
    allow, deny = Ruling("allow", "ok"), Ruling("deny", "rule x")
    edited = Ruling("allow", "ok", {"command": "ls"})
    out = answer(CLAUDE_CODE, "PreToolUse", allow)["hookSpecificOutput"]
    assert out["permissionDecision"] == "allow" and "updatedInput" not in out
    out = answer(CLAUDE_CODE, "PreToolUse", edited)["hookSpecificOutput"]
    assert out["updatedInput"] == {"command": "ls"}
    out = answer(CODEX, "PreToolUse", deny)["hookSpecificOutput"]
    assert (out["permissionDecision"], out["permissionDecisionReason"]) == ("deny", "rule x")
    assert answer(CODEX, "PreToolUse", allow) == {}  # Codex: an allow needs updatedInput
    assert answer(CODEX, "PreToolUse", edited)["hookSpecificOutput"]["updatedInput"]
    waiting = answer(CLAUDE_CODE, "PreToolUse", Ruling("pending"))["hookSpecificOutput"]
    assert (waiting["permissionDecision"], waiting["permissionDecisionReason"]) == (
        "deny", STILL_WAITING,
    )  # fmt: skip
    decision = answer(CLAUDE_CODE, "PermissionRequest", deny)["hookSpecificOutput"]["decision"]
    assert decision == {"behavior": "deny", "message": "rule x"}
    assert answer(CLAUDE_CODE, "PostToolUse", allow) == {}


@given(st.sampled_from(["allow", "deny", "pending"]), st.text(max_size=30),
       st.sampled_from([CLAUDE_CODE, CODEX]))  # fmt: skip
def test_no_answer_to_a_gate_is_ever_ask_and_a_deny_always_has_a_reason(
    verdict: str, reason: str, agent: str
) -> None:
    out = answer(agent, "PreToolUse", Ruling(verdict, reason)).get("hookSpecificOutput", {})
    assert out.get("permissionDecision") in (None, "allow", "deny")
    if out.get("permissionDecision") == "deny":
        assert out["permissionDecisionReason"].strip()
    if verdict != "allow":
        assert out["permissionDecision"] == "deny"
    assert Ruling.from_dict(Ruling(verdict, reason).to_dict()) == Ruling(verdict, reason)


def test_a_stop_ruling_stops_claude_code_and_denies_codex() -> None:
    ruling = stop_ruling("t-1", "taken_over", "human:alice")
    assert ruling.reason == "Quarterdeck: turn t-1 was taken over by human:alice; stop here"
    assert Ruling.from_dict(ruling.to_dict()) == ruling
    claude = answer(CLAUDE_CODE, "PreToolUse", ruling)
    assert claude["continue"] is False and claude["stopReason"] == ruling.reason
    assert claude["hookSpecificOutput"]["permissionDecision"] == "deny"
    codex = answer(CODEX, "PreToolUse", ruling)
    assert "continue" not in codex
    assert codex["hookSpecificOutput"]["permissionDecisionReason"] == ruling.reason
    # after a batch of calls, continue: false alone (no decision: nothing is left to run)
    assert answer(CLAUDE_CODE, "PostToolBatch", ruling) == {
        "continue": False, "stopReason": ruling.reason,
    }  # fmt: skip
    assert answer(CLAUDE_CODE, "PostToolBatch", Ruling("allow", GO_ON)) == {}
    assert answer(CLAUDE_CODE, "PostToolBatch", Ruling("deny", "not a stop")) == {}
    batch = {"session_id": "s", "cwd": "/w", "hook_event_name": "PostToolBatch", "tool_calls": []}
    event = parse_event(CLAUDE_CODE, batch)
    assert event.asks_to_go_on and not event.gates and event.tool_name is None
    # an allow can never carry a stop
    assert not Ruling.from_dict({**ruling.to_dict(), "verdict": "allow"}).stop
