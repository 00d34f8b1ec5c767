"""The escalation rules (``domain/escalation.py``) without a database: an approval's rungs, what
its deadline does, the default-safe action of an expired approval, a snooze's deadline, and who
holds a turn a person took over."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quarterdeck.domain.escalation import (
    Expiry,
    Rung,
    at_deadline,
    expiry,
    first_rung,
    holder_of,
    holding_refusal,
    next_rung,
    snoozed_deadline,
    takeover_refusal,
)
from quarterdeck.domain.policy import DEFAULT_APPROVER, DEFAULT_DEADLINE_S, OnExpiry
from quarterdeck.domain.states import MACHINES, TURN_LIVE, Kind


@pytest.mark.parametrize(
    ("approver", "deadline_s", "rung"),
    [
        ("lead", 60, Rung(0, "lead", 60)),
        (None, None, Rung(0, DEFAULT_APPROVER, DEFAULT_DEADLINE_S)),
        ("", 0, Rung(0, "supervisor", 900)),
    ],
)
def test_a_new_approval_starts_on_the_first_rung(
    approver: str | None, deadline_s: int | None, rung: Rung
) -> None:
    assert first_rung(approver, deadline_s) == rung


@pytest.mark.parametrize(
    ("ladder", "level", "approver", "deadline_s", "rung"),
    [
        (["oncall", "cto"], 0, "lead", 60, Rung(1, "oncall", 60)),
        (["oncall", "cto"], None, "lead", 60, Rung(1, "oncall", 60)),
        (["oncall", "cto"], 1, "oncall", 60, Rung(2, "cto", 60)),
        (["oncall", "cto"], 2, "cto", 60, Rung(3, "cto", 60)),  # past the end: stays
        ([], 0, "lead", None, Rung(1, "lead", DEFAULT_DEADLINE_S)),
    ],
)
def test_next_rung(
    ladder: list[str], level: int | None, approver: str, deadline_s: int | None, rung: Rung
) -> None:
    assert next_rung(ladder, level, approver, deadline_s) == rung


@pytest.mark.parametrize(
    ("ladder", "level", "rung"),
    [
        (["oncall"], 0, Rung(1, "oncall", 60)),
        (["oncall"], None, Rung(1, "oncall", 60)),
        (["oncall"], 1, None),
        (["oncall", "cto"], 1, Rung(2, "cto", 60)),
        ([], 0, None),
        ([], None, None),
    ],
)
def test_a_passed_deadline_climbs_the_ladder_then_expires(
    ladder: list[str], level: int | None, rung: Rung | None
) -> None:
    assert at_deadline(ladder, level, "lead", 60) == rung


@given(
    ladder=st.lists(st.sampled_from(["a", "b", "c"]), max_size=4),
    approver=st.sampled_from(["lead", "a"]),
)
def test_the_sweep_climbs_each_rung_once_then_expires(ladder: list[str], approver: str) -> None:
    level, seen = 0, []
    while (rung := at_deadline(ladder, level, approver, 30)) is not None:
        assert rung.level == level + 1 and rung.deadline_s == 30
        seen.append(rung.approver)
        level, approver = rung.level, rung.approver
    assert seen == ladder and level == len(ladder)


NO_LANE = "the request named no lane (the SDK's lane= names one)"


@pytest.mark.parametrize(
    ("on_expiry", "lane", "default_lane", "want"),
    [
        ("reject", "sim", None, Expiry("reject")),
        ("reject", None, None, Expiry("reject")),
        ("reject", "elsewhere", None, Expiry("reject")),
        ("pause_lane", "sim", None, Expiry("pause_lane", flag="paused")),
        ("fallback", "sim", None, Expiry("fallback", flag="force_fallback")),
        ("pause_lane", None, None, Expiry("pause_lane", unapplied=NO_LANE)),
        ("pause_lane", "", None, Expiry("pause_lane", unapplied=NO_LANE)),
        ("fallback", "sdk", "sdk", Expiry("fallback", unapplied=NO_LANE)),
        (
            "fallback",
            "elsewhere",
            None,
            Expiry("fallback", unapplied="lane 'elsewhere' is not configured on this runtime"),
        ),
        (
            "pause_lane",
            "sdk",
            None,  # an action request on a lane called sdk: it named one
            Expiry("pause_lane", unapplied="lane 'sdk' is not configured on this runtime"),
        ),
        # a lane named like the SDK's default but configured here: applied
        ("pause_lane", "sim", "sim", Expiry("pause_lane", flag="paused")),
    ],
)
def test_the_expiry_action(
    on_expiry: str, lane: str | None, default_lane: str | None, want: Expiry
) -> None:
    assert expiry(on_expiry, lane, {"sim", "fb"}, default_lane=default_lane) == want


@given(
    on_expiry=st.sampled_from(list(OnExpiry)),
    lane=st.one_of(st.none(), st.sampled_from(["", "sim", "fb", "sdk", "elsewhere"])),
    sdk=st.booleans(),
)
def test_an_expiry_sets_a_flag_or_says_why_not_never_both(
    on_expiry: OnExpiry, lane: str | None, sdk: bool
) -> None:
    got = expiry(on_expiry, lane, {"sim", "fb"}, default_lane="sdk" if sdk else None)
    assert got.on_expiry == on_expiry
    assert not (got.flag and got.unapplied)
    if on_expiry is OnExpiry.REJECT:
        assert got == Expiry(on_expiry)
    else:
        assert (got.flag is not None) == (lane in ("sim", "fb"))


@pytest.mark.parametrize(
    ("deadline_at", "until", "want"),
    [
        (
            "2030-01-01T00:10:00.000000Z",
            "2030-01-01T00:05:00.000000Z",
            "2030-01-01T00:10:00.000000Z",
        ),
        (
            "2030-01-01T00:01:00.000000Z",
            "2030-01-01T00:05:00.000000Z",
            "2030-01-01T00:05:00.000000Z",
        ),
        (None, "2030-01-01T00:05:00.000000Z", "2030-01-01T00:05:00.000000Z"),
    ],
)
def test_a_snooze_moves_the_deadline_to_at_least_its_end(
    deadline_at: str | None, until: str, want: str
) -> None:
    assert snoozed_deadline(deadline_at, until) == want


def test_a_person_holds_a_turn_as_human() -> None:
    assert holder_of("dana") == "human:dana"


@pytest.mark.parametrize("state", MACHINES[Kind.TURN].states)
def test_only_a_live_turn_may_be_taken_over(state: str) -> None:
    refusal = takeover_refusal(state)
    if state in TURN_LIVE:
        assert refusal is None and MACHINES[Kind.TURN].allows(state, "taken_over")
    else:
        assert refusal == f"turn is {state}"


def test_a_missing_turn_cannot_be_taken_over() -> None:
    assert takeover_refusal(None) == "no such turn"


@pytest.mark.parametrize(
    ("state", "owner", "actor", "refusal"),
    [
        ("taken_over", "human:dana", "dana", None),
        ("taken_over", "human:dana", "eve", "turn is held by human:dana"),
        ("taken_over", "dana", "dana", "turn is held by dana"),  # an agent named like a person
        ("taken_over", None, "dana", "turn is held by None"),
        ("running", "human:dana", "dana", "turn is running, not taken over"),
        ("completed", None, "dana", "turn is completed, not taken over"),
        (None, None, "dana", "no such turn"),
    ],
)
def test_only_the_holder_completes_or_releases_a_taken_over_turn(
    state: str | None, owner: str | None, actor: str, refusal: str | None
) -> None:
    assert holding_refusal(state, owner, actor) == refusal
