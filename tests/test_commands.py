"""The command catalogue: every command's valid and invalid payloads, their messages, and
properties over generated payloads (a command's wire form reads back as itself; no payload
makes the parser raise)."""

from __future__ import annotations

from typing import Any, get_args, get_type_hints

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from quarterdeck.domain.commands import (
    ACTOR_REFUSED,
    CATALOGUE,
    AlertAck,
    AlertResolve,
    ApprovalApprove,
    ApprovalBulk,
    ApprovalClaim,
    ApprovalEscalate,
    ApprovalReject,
    ApprovalRequest,
    ApprovalSnooze,
    ApprovalUnclaim,
    BaseCommand,
    Check,
    Command,
    FallbackForce,
    LaneForceFallback,
    LanePause,
    LaneRebaseline,
    LaneResume,
    LaneShadow,
    TokenCreate,
    TokenRevoke,
    TurnCancel,
    TurnComplete,
    TurnRelease,
    TurnRequeue,
    TurnTakeover,
    parse_command,
    problems_of,
)
from quarterdeck.store.commands import HANDLERS

SECONDS = "must be a number of seconds greater than 0"

VALID: list[tuple[dict[str, Any], BaseCommand]] = [
    ({"command": "lane.pause", "lane": "sim"}, LanePause(lane="sim")),
    ({"command": "lane.resume", "lane": "sim"}, LaneResume(lane="sim")),
    (
        {"command": "lane.force_fallback", "lane": "sim", "on": True},
        LaneForceFallback(lane="sim", on=True),
    ),
    ({"command": "lane.shadow", "lane": "sim", "on": False}, LaneShadow(lane="sim", on=False)),
    ({"command": "lane.rebaseline", "lane": "sim"}, LaneRebaseline(lane="sim")),
    ({"command": "fallback.force", "on": True}, FallbackForce(on=True)),
    ({"command": "turn.requeue", "turn_id": "t1"}, TurnRequeue(turn_id="t1")),
    ({"command": "turn.cancel", "turn_id": "t1"}, TurnCancel(turn_id="t1")),
    ({"command": "turn.takeover", "turn_id": "t1"}, TurnTakeover(turn_id="t1")),
    ({"command": "turn.release", "turn_id": "t1"}, TurnRelease(turn_id="t1")),
    (
        {"command": "turn.complete", "turn_id": "t1", "deliverable": {"text": "done"}},
        TurnComplete(turn_id="t1", deliverable={"text": "done"}),
    ),
    ({"command": "approval.approve", "approval_id": "a1"}, ApprovalApprove(approval_id="a1")),
    (
        {
            "command": "approval.approve",
            "approval_id": "a1",
            "args": {"x": 1},
            "action_key": "turn:t1:0",
            "reason": "looks fine",
            "reason_code": "ok",
        },
        ApprovalApprove(
            approval_id="a1",
            args={"x": 1},
            action_key="turn:t1:0",
            reason="looks fine",
            reason_code="ok",
        ),
    ),
    (
        {"command": "approval.reject", "approval_id": "a1", "reason_code": "unsafe"},
        ApprovalReject(approval_id="a1", reason_code="unsafe"),
    ),
    ({"command": "approval.escalate", "approval_id": "a1"}, ApprovalEscalate(approval_id="a1")),
    (
        {"command": "approval.snooze", "approval_id": "a1", "for_s": 600},
        ApprovalSnooze(approval_id="a1", for_s=600),
    ),
    ({"command": "approval.claim", "approval_id": "a1"}, ApprovalClaim(approval_id="a1")),
    (
        {"command": "approval.claim", "approval_id": "a1", "for_s": 2.5},
        ApprovalClaim(approval_id="a1", for_s=2.5),
    ),
    ({"command": "approval.unclaim", "approval_id": "a1"}, ApprovalUnclaim(approval_id="a1")),
    (
        {
            "command": "approval.bulk",
            "decision": "reject",
            "filter": {"lane": "s*"},
            "reason_code": "policy",
            "all_workspaces": True,
        },
        ApprovalBulk(
            decision="reject", filter={"lane": "s*"}, reason_code="policy", all_workspaces=True
        ),
    ),
    (
        {"command": "approval.request", "action_id": "x1", "tool": "deploy"},
        ApprovalRequest(action_id="x1", tool="deploy"),
    ),
    (
        {
            "command": "approval.request",
            "action_id": "x1",
            "tool": "deploy",
            "args": {"env": "prod"},
            "lane": "sim",
            "estimated_cost": 3,
        },
        ApprovalRequest(
            action_id="x1", tool="deploy", args={"env": "prod"}, lane="sim", estimated_cost=3
        ),
    ),
    ({"command": "alert.ack", "alert_id": "al1"}, AlertAck(alert_id="al1")),
    ({"command": "alert.resolve", "alert_id": "al1"}, AlertResolve(alert_id="al1")),
    (
        {
            "command": "token.create",
            "token_id": "0123456789ab",
            "principal": "ci-bot",
            "role": "viewer",
            "secret_hash": "f" * 64,
            "workspace": "acme",
            "expires_at": "2030-01-01T00:00:00.000000Z",
        },
        TokenCreate(
            token_id="0123456789ab",
            principal="ci-bot",
            role="viewer",
            secret_hash="f" * 64,
            workspace="acme",
            expires_at="2030-01-01T00:00:00.000000Z",
        ),
    ),
    ({"command": "token.revoke", "token_id": "0" * 12}, TokenRevoke(token_id="0" * 12)),
]


@pytest.mark.parametrize(("payload", "expected"), VALID, ids=lambda v: str(v)[:40])
def test_a_valid_payload_reads_as_its_command_and_back(
    payload: dict[str, Any], expected: BaseCommand
) -> None:
    command = parse_command(payload)
    assert command == expected
    assert type(command) is CATALOGUE[payload["command"]]
    assert expected.to_payload() == payload


def test_every_command_is_in_the_catalogue_and_tested() -> None:
    assert set(CATALOGUE.values()) == set(get_args(Command))
    assert len(CATALOGUE) == 23
    assert {payload["command"] for payload, _ in VALID} == set(CATALOGUE)
    for name, cls in CATALOGUE.items():
        assert cls.name == name


def test_every_command_has_exactly_one_handler_which_takes_it() -> None:
    assert set(HANDLERS) == set(CATALOGUE.values())
    assert len(HANDLERS) == len(CATALOGUE)
    for cls, handler in HANDLERS.items():
        assert get_type_hints(handler)["cmd"] is cls, (cls.name, handler.__name__)


INVALID: list[tuple[dict[str, Any], list[str]]] = [
    ({"command": "lane.pause"}, ["payload.lane: is required"]),
    ({"command": "lane.pause", "lane": ""}, ["payload.lane: is required"]),
    ({"command": "lane.pause", "lane": 7}, ["payload.lane: is required"]),
    ({"command": "turn.cancel"}, ["payload.turn_id: is required"]),
    (
        {"command": "lane.force_fallback", "lane": "sim", "on": "yes"},
        ["payload.on: must be true or false"],
    ),
    (
        {"command": "lane.shadow"},
        ["payload.lane: is required", "payload.on: must be true or false"],
    ),
    ({"command": "fallback.force", "on": 1}, ["payload.on: must be true or false"]),
    (
        {"command": "turn.complete", "turn_id": "t1", "deliverable": "done"},
        ["payload.deliverable: must be an object"],
    ),
    ({"command": "turn.complete", "turn_id": "t1"}, ["payload.deliverable: must be an object"]),
    (
        {"command": "approval.reject", "approval_id": "a1"},
        ["payload.reason_code: is required"],
    ),
    (
        {"command": "approval.reject", "reason_code": "", "args": None},
        [
            "payload.approval_id: is required",
            "payload.reason_code: is required",
            "payload.args: must be an object",
        ],
    ),
    (
        {"command": "approval.approve", "approval_id": "a1", "args": []},
        ["payload.args: must be an object"],
    ),
    ({"command": "approval.snooze", "approval_id": "a1"}, [f"payload.for_s: {SECONDS}"]),
    (
        {"command": "approval.snooze", "approval_id": "a1", "for_s": 0},
        [f"payload.for_s: {SECONDS}"],
    ),
    (
        {"command": "approval.snooze", "approval_id": "a1", "for_s": -5},
        [f"payload.for_s: {SECONDS}"],
    ),
    (
        {"command": "approval.snooze", "approval_id": "a1", "for_s": True},
        [f"payload.for_s: {SECONDS}"],
    ),
    (
        {"command": "approval.snooze", "approval_id": "a1", "for_s": 10**9},
        [f"payload.for_s: {SECONDS}"],
    ),
    (
        {"command": "approval.snooze", "approval_id": "a1", "for_s": "60"},
        [f"payload.for_s: {SECONDS}"],
    ),
    (
        {"command": "approval.claim", "approval_id": "a1", "for_s": None},
        [f"payload.for_s: {SECONDS}"],
    ),
    ({"command": "approval.bulk"}, ["payload.decision: is required"]),
    (
        {"command": "approval.bulk", "decision": "approve", "filter": "lane=sim"},
        ["payload.filter: must be an object"],
    ),
    (
        {"command": "approval.request", "action_id": "x", "tool": "t", "args": []},
        ["payload.args: must be an object"],
    ),
    (
        {"command": "approval.request"},
        ["payload.action_id: is required", "payload.tool: is required"],
    ),
    ({"command": "alert.ack", "alert_id": None}, ["payload.alert_id: is required"]),
    (
        # who gives a command is the authenticated principal, never a name in the payload
        {"command": "alert.resolve", "alert_id": "al1", "actor": "cto"},
        [f"payload.actor: {ACTOR_REFUSED}"],
    ),
    (
        {"command": "turn.release", "actor": None},
        ["payload.turn_id: is required", f"payload.actor: {ACTOR_REFUSED}"],
    ),
    # a field another command types is checked wherever it appears
    ({"command": "lane.pause", "lane": "sim", "on": "yes"}, ["payload.on: must be true or false"]),
    ({"command": "turn.cancel", "turn_id": "t", "for_s": -1}, [f"payload.for_s: {SECONDS}"]),
    (
        {"command": "alert.ack", "alert_id": "al1", "filter": 1, "deliverable": [], "args": ""},
        [
            "payload.deliverable: must be an object",
            "payload.args: must be an object",
            "payload.filter: must be an object",
        ],
    ),
]


@pytest.mark.parametrize(("payload", "problems"), INVALID, ids=lambda v: str(v)[:50])
def test_an_invalid_payload_gets_every_problem_with_its_path(
    payload: dict[str, Any], problems: list[str]
) -> None:
    assert parse_command(payload) == problems


def test_a_command_built_with_refused_values_lists_its_problems_as_a_payload_would() -> None:
    with pytest.raises(ValidationError) as caught:
        ApprovalSnooze(approval_id="", for_s=10**9)
    assert problems_of(caught.value) == parse_command(
        {"command": "approval.snooze", "approval_id": "", "for_s": 10**9}
    )
    assert problems_of(caught.value) == [
        "payload.approval_id: is required", f"payload.for_s: {SECONDS}",
    ]  # fmt: skip


NAMES = ", ".join(sorted(CATALOGUE))


@pytest.mark.parametrize("name", [None, "lane.explode", "", 3, ["lane.pause"], {"a": 1}])
def test_an_unknown_command_gets_the_list_of_commands(name: Any) -> None:
    payload = {"lane": 7} if name is None else {"command": name, "lane": 7}
    assert parse_command(payload) == [f"payload.command: must be one of {NAMES}, got {name!r}"]


def test_optional_fields_read_leniently_and_unknown_fields_are_dropped() -> None:
    payload = {
        "command": "approval.request", "action_id": "x", "tool": "t", "lane": "",
        "estimated_cost": True, "workspace": "acme", "note": [1],
    }  # fmt: skip
    assert parse_command(payload) == ApprovalRequest(action_id="x", tool="t")
    approve = {"command": "approval.approve", "approval_id": "a", "reason": 5, "action_key": ""}
    assert parse_command(approve) == ApprovalApprove(approval_id="a")
    bulk = {"command": "approval.bulk", "decision": "approve", "all_workspaces": "yes"}
    assert parse_command(bulk) == ApprovalBulk(decision="approve", all_workspaces=True)


def test_a_command_is_frozen_and_validated_when_built() -> None:
    command = LanePause(lane="sim")
    with pytest.raises(ValidationError):
        command.lane = "other"
    with pytest.raises(ValidationError, match="must be true or false"):
        FallbackForce(on="yes")  # type: ignore[arg-type]
    claim = ApprovalClaim(approval_id="a", for_s=30)
    assert claim.to_payload() == {"command": "approval.claim", "approval_id": "a", "for_s": 30}


def test_a_field_name_means_one_thing_throughout_the_catalogue() -> None:
    checks: dict[str, set[int]] = {}
    for cls in CATALOGUE.values():
        for field, info in cls.model_fields.items():
            for meta in info.metadata:
                if isinstance(meta, Check):
                    checks.setdefault(field, set()).add(id(meta))
    assert all(len(ids) == 1 for ids in checks.values()), checks


# --- properties ----------------------------------------------------------------------------------

_text = st.text(min_size=1, max_size=8)
_json_leaf = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
)
_json = st.recursive(
    _json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
_object = st.dictionaries(st.text(max_size=5), _json, max_size=3)
_seconds = st.floats(
    min_value=0, max_value=10**9, exclude_min=True, exclude_max=True
) | st.integers(1, 10**9 - 1)
_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "on": st.booleans(),
    "for_s": _seconds,
    "deliverable": _object,
    "args": _object,
    "filter": _object,
    "estimated_cost": st.integers() | st.floats(allow_nan=False),
    "all_workspaces": st.booleans(),
    "token_id": st.from_regex(r"[0-9a-f]{12}", fullmatch=True),
    "principal": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True),
    "role": st.sampled_from(["viewer", "supervisor", "admin", "release-lead"]),
    "secret_hash": st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
    "workspace": st.from_regex(r"[a-z0-9][a-z0-9_-]{0,63}", fullmatch=True),
    "expires_at": st.sampled_from(["2030-01-01T00:00:00.000000Z", "2026-12-05T19:00:00.500000Z"]),
}
"""What a valid value of each field looks like (text, unless named here)."""


@st.composite
def _commands(draw: st.DrawFn) -> BaseCommand:
    cls = draw(st.sampled_from(sorted(CATALOGUE.values(), key=lambda c: c.name)))
    fields = {}
    for field, info in cls.model_fields.items():
        if info.is_required() or draw(st.booleans()):
            fields[field] = draw(_FIELDS.get(field, _text))
    return cls.model_validate(fields)


@settings(max_examples=300)
@given(_commands())
def test_a_commands_wire_form_reads_back_as_itself(command: BaseCommand) -> None:
    payload = command.to_payload()
    assert parse_command(payload) == command


_names = st.sampled_from(sorted(CATALOGUE)) | _json
_keys = st.sampled_from(
    sorted({f for cls in CATALOGUE.values() for f in cls.model_fields})
) | st.text(max_size=5)


@settings(max_examples=300)
@given(_names, st.dictionaries(_keys, _json, max_size=6))
def test_any_payload_reads_as_a_command_or_as_its_problems(
    name: Any, fields: dict[str, Any]
) -> None:
    result = parse_command({**fields, "command": name})
    if isinstance(result, list):
        assert result and all(p.startswith("payload.") for p in result), result
    else:
        assert isinstance(result, get_args(Command)) and result.name == name
