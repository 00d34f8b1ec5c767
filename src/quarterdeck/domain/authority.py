"""Who may do what: principals, the roster that gives them roles, and the rules that say whether
a principal may read, supervise, decide an approval, or administer.

A principal is authenticated elsewhere (the kernel's peer credentials on the control socket, a
bearer token, a credential the daemon issued to an agent); here it is only checked. Every rule is
a pure function of the principal, the roster and the facts of the target, so each can be tested
without a runtime. A refusal names what is missing.

Roles: ``viewer`` reads; ``supervisor`` supervises and decides approvals that ask for the
``supervisor`` role, within its workspaces (a lane's flags and baseline act on every workspace,
so they need ``supervisor`` in all of them); ``admin`` does everything everywhere (the global
fallback switch, every lane at once, bulk decisions across workspaces, tokens). Any other role
(``release-lead``) is a *decider role*: it decides, claims, snoozes and escalates the approvals
whose current ladder level names it, within its workspaces. Whatever the roles, an agent never
decides and nobody decides a request they made themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

VIEWER: Final = "viewer"
SUPERVISOR: Final = "supervisor"
ADMIN: Final = "admin"
BUILTIN_ROLES: Final = frozenset({VIEWER, SUPERVISOR, ADMIN})
ALL_WORKSPACES: Final = "*"
GROUP_PREFIX: Final = "@"
TOKEN_PREFIX: Final = "token:"
AGENT_PREFIX: Final = "agent:"


class Kind(StrEnum):
    """What sort of principal makes a request."""

    SUPERVISOR = "supervisor"
    """A person: an OS user on this machine, or a bearer token's holder."""
    AGENT = "agent"
    """A supervised agent: a lane's session, an SDK client, a hook or gateway."""
    RUNTIME = "runtime"
    """The runtime itself (sweeper, escalation ladder, drift monitor)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. ``name`` is what the roster knows it by: an OS user name,
    ``token:<name>``, or ``agent:<what>``; ``uid`` and ``groups`` come from the kernel;
    ``granted``: roles its credential carries itself (a token's ``--role``), on top of the
    roster's; ``workspace`` pins a token or an agent to one workspace."""

    kind: Kind
    name: str
    uid: int | None = None
    groups: frozenset[str] = frozenset()
    workspace: str | None = None
    granted: frozenset[str] = frozenset()

    @property
    def label(self) -> str:
        """How the ledger names it: ``alice (uid 1001)``, ``token:ci-bot``, ``agent:...``."""
        return self.name if self.uid is None else f"{self.name} (uid {self.uid})"


RUNTIME: Final = Principal(Kind.RUNTIME, "runtime")
"""The runtime acting on its own (never subject to the roster)."""


@dataclass(frozen=True, slots=True)
class Roster:
    """Who holds which roles (``members``: an OS user, ``@group``, or ``token:name`` → roles),
    and where each role applies (``scopes``: role → workspaces, ``*`` for all; a role not
    listed applies everywhere; ``admin`` always does)."""

    members: Mapping[str, frozenset[str]] = field(default_factory=dict)
    scopes: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def default(cls, daemon_user: str) -> Roster:
        """Without a configured roster: the daemon's own OS user and root are ``admin``,
        nobody else is anything."""
        admins = frozenset({ADMIN})
        return cls(members={daemon_user: admins, "root": admins})

    def roles(self, principal: Principal) -> frozenset[str]:
        """The roles ``principal`` holds anywhere (agents and the runtime hold none)."""
        if principal.kind is not Kind.SUPERVISOR:
            return frozenset()
        names = [principal.name, *(GROUP_PREFIX + group for group in principal.groups)]
        held: set[str] = set(principal.granted)
        for name in names:
            held |= self.members.get(name, frozenset())
        return frozenset(held)

    def holds(self, principal: Principal, role: str, workspace: str | None) -> bool:
        """Whether ``principal`` holds ``role`` in ``workspace`` (None: in every workspace).
        ``admin`` holds every role everywhere."""
        if principal.workspace is not None and workspace != principal.workspace:
            return False
        roles = self.roles(principal)
        if ADMIN in roles:
            return True
        if role not in roles:
            return False
        scope = self.scopes.get(role, frozenset({ALL_WORKSPACES}))
        return ALL_WORKSPACES in scope or (workspace is not None and workspace in scope)

    def workspaces(self, principal: Principal, role: str) -> frozenset[str] | None:
        """The workspaces where ``principal`` holds ``role``: None for all of them."""
        roles = self.roles(principal)
        if ADMIN in roles or role in roles:
            scope = (
                frozenset({ALL_WORKSPACES})
                if ADMIN in roles
                else self.scopes.get(role, frozenset({ALL_WORKSPACES}))
            )
            if principal.workspace is not None:
                return (
                    frozenset({principal.workspace})
                    if ALL_WORKSPACES in scope or principal.workspace in scope
                    else frozenset()
                )
            return None if ALL_WORKSPACES in scope else scope
        return frozenset()


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a principal may not do something; ``code`` is stable, ``message`` names the
    missing role or the rule."""

    code: str
    message: str


def _missing(principal: Principal, role: str, workspace: str | None) -> Refusal:
    where = "in every workspace" if workspace is None else f"in workspace {workspace!r}"
    return Refusal("missing_role", f"{principal.label} lacks the role {role!r} {where}")


def may_read(roster: Roster, principal: Principal, workspace: str | None) -> Refusal | None:
    """Reading the runtime's state: any role (``viewer`` at least); agents read nothing."""
    if principal.kind is Kind.RUNTIME:
        return None
    if principal.kind is Kind.AGENT:
        return Refusal("agent", f"{principal.label} is an agent: agents do not read the console")
    if any(roster.holds(principal, role, workspace) for role in roster.roles(principal)):
        return None
    return _missing(principal, VIEWER, workspace)


AGENT_COMMANDS: Final = frozenset({"approval.request"})
"""The only command an agent gives: asking for an approval."""


def may_give(principal: Principal, command: str) -> Refusal | None:
    """Whether ``principal`` may give ``command`` at all: an agent only asks
    (:data:`AGENT_COMMANDS`); everyone else goes on to the command's own check."""
    if principal.kind is Kind.AGENT and command not in AGENT_COMMANDS:
        return Refusal("agent", f"{principal.label} is an agent: agents do not supervise")
    return None


def may_act_in(principal: Principal, workspace: str) -> Refusal | None:
    """Whether a principal pinned to one workspace (a token's ``--workspace``, an agent) may
    act in ``workspace`` at all."""
    if principal.workspace is None or principal.workspace == workspace:
        return None
    return Refusal(
        "workspace",
        f"{principal.label} acts only in workspace {principal.workspace!r}, not {workspace!r}",
    )


def may_supervise(roster: Roster, principal: Principal, workspace: str | None) -> Refusal | None:
    """Supervising ``workspace`` (take over, cancel, requeue, acknowledge an alert...):
    ``supervisor`` there (or ``admin``). ``workspace`` None: something that acts on every
    workspace (a lane's flags or baseline): ``supervisor`` in all of them."""
    if principal.kind is Kind.RUNTIME:
        return None
    if principal.kind is Kind.AGENT:
        return Refusal("agent", f"{principal.label} is an agent: agents do not supervise")
    if roster.holds(principal, SUPERVISOR, workspace):
        return None
    return _missing(principal, SUPERVISOR, workspace)


def may_decide_some(roster: Roster, principal: Principal, workspace: str | None) -> Refusal | None:
    """Deciding approvals in bulk in ``workspace`` (None: every workspace): a role that may
    decide something there (any role but ``viewer``); each approval is then checked with
    :func:`may_decide`. A viewer or an agent is refused outright."""
    if principal.kind is Kind.AGENT:
        return Refusal("agent", f"{principal.label} is an agent: agents never decide")
    if principal.kind is Kind.RUNTIME:
        return None
    if any(roster.holds(principal, role, workspace) for role in roster.roles(principal) - {VIEWER}):
        return None
    return _missing(principal, SUPERVISOR, workspace)


def may_administer(roster: Roster, principal: Principal) -> Refusal | None:
    """Acting on the whole runtime (lane flags, fallback, re-baselining, tokens): ``admin``."""
    if principal.kind is Kind.RUNTIME:
        return None
    if principal.kind is Kind.AGENT:
        return Refusal("agent", f"{principal.label} is an agent: agents do not administer")
    if roster.holds(principal, ADMIN, None):
        return None
    return _missing(principal, ADMIN, None)


@dataclass(frozen=True, slots=True)
class ApprovalFacts:
    """What deciding one approval depends on: where it is, the role its current ladder level
    asks for, who asked for it, and who approved it so far (for a two-person rule)."""

    workspace: str
    role: str
    requested_by: str | None
    approved_by: tuple[str, ...] = ()


def may_decide(roster: Roster, principal: Principal, facts: ApprovalFacts) -> Refusal | None:
    """Deciding (or claiming, snoozing, escalating) an approval: the role of its current
    ladder level in its workspace (or ``admin``); never an agent, never the requester, and
    never the same person twice for one approval."""
    if principal.kind is Kind.AGENT:
        return Refusal("agent", f"{principal.label} is an agent: agents never decide")
    if principal.kind is Kind.RUNTIME:
        return None
    if facts.requested_by is not None and facts.requested_by in (principal.label, principal.name):
        return Refusal("own_request", f"{principal.label} asked for this and cannot decide it")
    if principal.label in facts.approved_by:
        return Refusal("second_approval", f"{principal.label} already approved this")
    role = SUPERVISOR if facts.role == VIEWER else facts.role  # a viewer only ever reads
    if roster.holds(principal, role, facts.workspace):
        return None
    return _missing(principal, role, facts.workspace)


def approvals_complete(required: int, approved_by: Iterable[str]) -> bool:
    """Whether enough different people approved (a two-person rule asks for 2)."""
    return len(set(approved_by)) >= max(1, required)
