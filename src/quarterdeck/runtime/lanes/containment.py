"""What a ``command``-lane agent gets from the daemon: an explicit environment, an OS user, and
a durable record of its processes.

The environment is built, never inherited: the variables of an allow-list (``env_allow``,
:data:`DEFAULT_ENV_ALLOW` by default) that the daemon has, then the lane's ``env`` table. The
daemon's other variables (provider keys, ``PGPASSWORD``, ``DATABASE_URL``,
``QUARTERDECK_STATE_DIR``...) never reach an agent. An agent run as another OS user
(``run_as``, possibly one per workspace with ``{workspace}`` in the name) gets that user's
``HOME``, ``USER``, ``LOGNAME`` and ``SHELL`` where the allow-list names them. The option
types of ``env``, ``env_allow``, ``run_as`` and ``cgroup`` are declared here too.

Each agent's processes are recorded before it runs (:class:`SpawnedAgent`, handed to the
runtime's :class:`AgentRegistry`), so that a node can kill what a dead node left running.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Final, Protocol

from pydantic import AfterValidator, Field

from quarterdeck.runtime.validation import problem, says

DEFAULT_ENV_ALLOW: Final = (
    "PATH", "HOME", "LANG", "LC_ALL", "TERM", "TZ", "TMPDIR", "USER", "LOGNAME", "SHELL",
)  # fmt: skip
"""The daemon's variables an agent gets unless its lane says otherwise."""
SESSION_CREDENTIAL_ENV: Final = "QUARTERDECK_SESSION_TOKEN"
"""The agent's own session credential, issued by the runtime when it serves the control API."""
API_ENV: Final = "QUARTERDECK_API"
"""Where an agent reaches the control API (the agents' socket, outside the state directory)."""
WORKSPACE_PLACEHOLDER: Final = "{workspace}"
CGROUP_AUTO: Final = "auto"
CGROUP_OFF: Final = "off"


def _own_variables(env: dict[str, str]) -> dict[str, str]:
    for name in (SESSION_CREDENTIAL_ENV, API_ENV):
        if name in env:
            raise problem(f"{name} is reserved: the runtime sets it")
    return env


def _user_name(name: str) -> str:
    if set(name.replace(WORKSPACE_PLACEHOLDER, "")) & set("{}"):
        raise problem(f"must be a user name, with {WORKSPACE_PLACEHOLDER} as its only placeholder")
    return name


AgentVariables = Annotated[
    dict[str, str], says("must be a table of strings"), AfterValidator(_own_variables)
]
"""The ``env`` option: the agent's own variables."""
AllowedVariables = Annotated[
    list[Annotated[str, Field(min_length=1, pattern=r"^[^=\x00]+$")]],
    says("must be a list of environment variable names"),
]
"""The ``env_allow`` option: names of the daemon's variables the agent gets."""
RunAs = Annotated[str, Field(min_length=1), AfterValidator(_user_name)]
"""The ``run_as`` option: a user name, ``{workspace}`` standing for the mission's workspace."""


def _cgroup_setting(value: str) -> str:
    if value not in (CGROUP_AUTO, CGROUP_OFF) and not value.startswith("/"):
        raise problem(f"must be {CGROUP_AUTO!r}, {CGROUP_OFF!r} or an absolute path")
    return value


CgroupSetting = Annotated[str, Field(min_length=1), AfterValidator(_cgroup_setting)]
"""The ``cgroup`` option: where each agent's own cgroup v2 is created: ``auto`` (under the
daemon's own cgroup), ``off``, or the absolute path of a cgroup v2 directory."""


@dataclass(frozen=True, slots=True)
class SpawnedAgent:
    """An agent process started for a mission and not yet running its work: what a node
    records of it so that whatever it leaves can be found and killed later."""

    mission_id: str
    attempt: int
    workspace: str
    lane: str
    pid: int
    pgid: int
    sid: int
    start_ticks: int
    """Its start time (clock ticks since boot, ``/proc/<pid>/stat``): a later process given
    the same pid is not it."""
    cgroup: str | None
    """The path of its own cgroup, or None when it is contained by its process group alone."""


class AgentRegistry(Protocol):
    """Where a lane records its agents' processes (durably, before they run) and forgets
    them once reaped."""

    async def started(self, agent: SpawnedAgent) -> str:
        """Record ``agent``; return the record's id. Raises when it cannot be recorded."""
        ...

    async def reaped(self, record_id: str) -> None:
        """The agent and everything it started are gone: forget the record."""
        ...


def run_as_problem(run_as: str) -> str | None:
    """Why this process cannot run agents as ``run_as``, or None when it can: only root may
    switch to another user (a name with ``{workspace}`` may name any user)."""
    euid = os.geteuid()
    if WORKSPACE_PLACEHOLDER not in run_as:
        try:
            account = pwd.getpwnam(run_as)
        except KeyError:
            return f"no OS user {run_as!r}"
        if account.pw_uid == euid:
            return None
    if euid != 0:
        return (
            f"running agents as another OS user ({run_as!r}) needs the daemon to run as root"
            f" (it runs as uid {euid})"
        )
    return None


def agent_account(run_as: str | None, workspace: str) -> pwd.struct_passwd | None:
    """The OS user a workspace's agent runs as, or None for the daemon's own.

    Raises:
        LookupError: no such user.
        PermissionError: it is another user and the daemon is not root.
    """
    if run_as is None:
        return None
    name = run_as.replace(WORKSPACE_PLACEHOLDER, workspace)
    try:
        account = pwd.getpwnam(name)
    except KeyError:
        raise LookupError(f"no OS user {name!r}") from None
    if account.pw_uid == os.geteuid():
        return None
    if os.geteuid() != 0:
        raise PermissionError(f"cannot run agents as {name!r}: the daemon does not run as root")
    return account


def agent_environment(
    allow: Iterable[str], env: Mapping[str, str], account: pwd.struct_passwd | None
) -> dict[str, str]:
    """The allowed variables the daemon has (the account's own identity in place of the
    daemon's), then ``env``."""
    allowed = set(allow)
    chosen = {name: os.environ[name] for name in allowed if name in os.environ}
    if account is not None:
        identity = {
            "HOME": account.pw_dir,
            "USER": account.pw_name,
            "LOGNAME": account.pw_name,
            "SHELL": account.pw_shell,
        }
        chosen.update({name: value for name, value in identity.items() if name in allowed})
    chosen.update(env)
    return chosen
