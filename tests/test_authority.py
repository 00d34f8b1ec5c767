"""The authorization rules of domain/authority.py: table-driven cases and properties over any
roster, principal and approval."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quarterdeck.domain.authority import (
    ADMIN,
    RUNTIME,
    SUPERVISOR,
    VIEWER,
    ApprovalFacts,
    Kind,
    Principal,
    Roster,
    approvals_complete,
    may_administer,
    may_decide,
    may_decide_some,
    may_give,
    may_read,
    may_supervise,
)
from quarterdeck.domain.commands import CATALOGUE

ALICE = Principal(Kind.SUPERVISOR, "alice", uid=1001, groups=frozenset({"ops"}))
BOB = Principal(Kind.SUPERVISOR, "bob", uid=1002)
AGENT = Principal(Kind.AGENT, "agent:session/s1", workspace="prod")
CI = Principal(Kind.SUPERVISOR, "token:ci", workspace="staging")

ROSTER = Roster(
    members={
        "alice": frozenset({SUPERVISOR}),
        "@ops": frozenset({"release-lead"}),
        "bob": frozenset({VIEWER}),
        "root": frozenset({ADMIN}),
        "token:ci": frozenset({SUPERVISOR}),
    },
    scopes={SUPERVISOR: frozenset({"prod", "staging"}), "release-lead": frozenset({"prod"})},
)


@pytest.mark.parametrize(
    ("principal", "facts", "code"),
    [
        (ALICE, ApprovalFacts("prod", "release-lead", "agent:session/s1"), None),
        (ALICE, ApprovalFacts("dev", "release-lead", None), "missing_role"),
        (ALICE, ApprovalFacts("prod", SUPERVISOR, "alice (uid 1001)"), "own_request"),
        (ALICE, ApprovalFacts("prod", SUPERVISOR, None, ("alice (uid 1001)",)), "second_approval"),
        (BOB, ApprovalFacts("prod", SUPERVISOR, None), "missing_role"),
        (AGENT, ApprovalFacts("prod", SUPERVISOR, None), "agent"),
        (CI, ApprovalFacts("staging", SUPERVISOR, None), None),
        (CI, ApprovalFacts("prod", SUPERVISOR, None), "missing_role"),
        (RUNTIME, ApprovalFacts("prod", "release-lead", None), None),
    ],
)
def test_who_decides_an_approval(principal, facts, code) -> None:
    refusal = may_decide(ROSTER, principal, facts)
    assert (refusal.code if refusal else None) == code


def test_a_refusal_names_the_missing_role_and_the_workspace() -> None:
    refusal = may_decide(ROSTER, ALICE, ApprovalFacts("dev", "release-lead", None))
    assert refusal is not None
    assert refusal.message == "alice (uid 1001) lacks the role 'release-lead' in workspace 'dev'"
    flags = may_administer(ROSTER, ALICE)
    assert flags is not None
    assert flags.message == "alice (uid 1001) lacks the role 'admin' in every workspace"


@pytest.mark.parametrize(
    ("principal", "workspace", "read", "supervise", "administer"),
    [
        (ALICE, "prod", True, True, False),
        (ALICE, "dev", False, False, False),
        (BOB, "prod", True, False, False),
        (AGENT, "prod", False, False, False),
        (CI, "staging", True, True, False),
        (CI, "prod", False, False, False),
        (Principal(Kind.SUPERVISOR, "root", uid=0), "dev", True, True, True),
        (Principal(Kind.SUPERVISOR, "mallory", uid=1003), "prod", False, False, False),
    ],
)
def test_read_supervise_administer(principal, workspace, read, supervise, administer) -> None:
    assert (may_read(ROSTER, principal, workspace) is None) is read
    assert (may_supervise(ROSTER, principal, workspace) is None) is supervise
    assert (may_administer(ROSTER, principal) is None) is administer


def test_reading_needs_a_role_that_applies_to_the_workspace() -> None:
    scoped = Roster(members=ROSTER.members, scopes={**ROSTER.scopes, VIEWER: frozenset({"x"})})
    assert may_read(scoped, BOB, "prod") is not None
    assert may_read(scoped, BOB, "x") is None
    refusal = may_read(ROSTER, ALICE, "dev")
    assert refusal is not None
    assert refusal.message == "alice (uid 1001) lacks the role 'viewer' in workspace 'dev'"


def test_without_a_roster_only_the_daemon_user_and_root_are_anything() -> None:
    roster = Roster.default("qd")
    assert may_administer(roster, Principal(Kind.SUPERVISOR, "qd", uid=999)) is None
    assert may_administer(roster, Principal(Kind.SUPERVISOR, "root", uid=0)) is None
    nobody = Principal(Kind.SUPERVISOR, "alice", uid=1001, groups=frozenset({"wheel"}))
    assert may_read(roster, nobody, "default") is not None
    assert may_decide(roster, nobody, ApprovalFacts("default", SUPERVISOR, None)) is not None


def test_two_person_rule_counts_different_people() -> None:
    assert not approvals_complete(2, ["alice (uid 1001)"])
    assert not approvals_complete(2, ["alice (uid 1001)", "alice (uid 1001)"])
    assert approvals_complete(2, ["alice (uid 1001)", "bob (uid 1002)"])
    assert approvals_complete(1, ["alice (uid 1001)"])
    assert approvals_complete(0, ["alice (uid 1001)"])


# --- properties ---------------------------------------------------------------------------------

names = st.sampled_from(["alice", "bob", "carol", "root", "token:ci"])
groups = st.frozensets(st.sampled_from(["ops", "dev", "wheel"]), max_size=2)
workspaces = st.sampled_from(["default", "prod", "staging", "dev"])
roles = st.sampled_from([VIEWER, SUPERVISOR, ADMIN, "release-lead", "dba"])
scope = st.frozensets(st.sampled_from(["*", "default", "prod", "staging", "dev"]), min_size=1)
rosters = st.builds(
    Roster,
    members=st.dictionaries(
        st.one_of(names, groups.map(lambda g: "@" + next(iter(g), "ops"))),
        st.frozensets(roles, max_size=3),
        max_size=5,
    ),
    scopes=st.dictionaries(roles.filter(lambda r: r != ADMIN), scope, max_size=4),
)
supervisors = st.builds(
    Principal,
    kind=st.just(Kind.SUPERVISOR),
    name=names,
    uid=st.one_of(st.none(), st.integers(0, 5000)),
    groups=groups,
    workspace=st.one_of(st.none(), workspaces),
)
agents = st.builds(
    Principal, kind=st.just(Kind.AGENT), name=names.map(lambda n: "agent:" + n), groups=groups,
    workspace=st.one_of(st.none(), workspaces),
)  # fmt: skip
facts = st.builds(
    ApprovalFacts,
    workspace=workspaces,
    role=roles,
    requested_by=st.one_of(st.none(), names),
    approved_by=st.lists(names, max_size=2).map(tuple),
)


@given(rosters, agents, facts, workspaces)
def test_an_agent_never_decides_supervises_or_administers(roster, agent, fact, workspace) -> None:
    assert may_decide(roster, agent, fact) is not None
    assert may_supervise(roster, agent, workspace) is not None
    assert may_administer(roster, agent) is not None
    assert may_read(roster, agent, workspace) is not None
    assert may_decide_some(roster, agent, workspace) is not None


@given(rosters, supervisors, facts)
def test_nobody_decides_their_own_request(roster, person, fact) -> None:
    own = ApprovalFacts(fact.workspace, fact.role, person.label, fact.approved_by)
    refusal = may_decide(roster, person, own)
    assert refusal is not None
    assert refusal.code == "own_request"


@given(rosters, supervisors, facts, st.frozensets(roles, min_size=1))
def test_more_roles_never_take_a_right_away(roster, person, fact, extra) -> None:
    before = may_decide(roster, person, fact) is None
    grown = dict(roster.members)
    grown[person.name] = grown.get(person.name, frozenset()) | extra
    after = may_decide(Roster(grown, roster.scopes), person, fact) is None
    assert not before or after


@given(rosters, supervisors, facts)
def test_a_decision_outside_the_roles_workspaces_is_refused(roster, person, fact) -> None:
    held = roster.roles(person)
    if ADMIN in held:
        return
    role = SUPERVISOR if fact.role == VIEWER else fact.role  # a viewer only ever reads
    scope = roster.scopes.get(role, frozenset({"*"}))
    inside = "*" in scope or fact.workspace in scope
    pinned_elsewhere = person.workspace is not None and person.workspace != fact.workspace
    if role not in held or not inside or pinned_elsewhere:
        assert may_decide(roster, person, fact) is not None


@given(rosters, supervisors, st.sampled_from([SUPERVISOR, "release-lead"]))
def test_workspaces_agrees_with_holds(roster, person, role) -> None:
    where = roster.workspaces(person, role)
    for workspace in ["default", "prod", "staging", "dev"]:
        expected = where is None or workspace in where
        assert roster.holds(person, role, workspace) is expected


@given(rosters, supervisors, facts)
def test_whoever_may_decide_one_approval_may_ask_to_decide_in_bulk(roster, person, fact) -> None:
    """Bulk decisions are let through to the per-approval check for anyone that check could
    ever let decide, and only a viewer (or nobody) is refused outright."""
    if may_decide(roster, person, fact) is None:
        assert may_decide_some(roster, person, fact.workspace) is None
    if roster.roles(person) <= {VIEWER}:
        assert may_decide_some(roster, person, fact.workspace) is not None


@given(agents, st.sampled_from(sorted(CATALOGUE)))
def test_an_agent_gives_no_command_but_asking(agent, name) -> None:
    refusal = may_give(agent, name)
    assert (refusal is None) is (name == "approval.request")
    assert may_give(Principal(Kind.SUPERVISOR, "alice"), name) is None
