"""What a ``command``-lane agent gets from the daemon: an explicit environment and an OS user.

The environment is built, never inherited: the variables of an allow-list (``env_allow``,
:data:`DEFAULT_ENV_ALLOW` by default) that the daemon has, then the lane's ``env`` table. The
daemon's other variables (provider keys, ``PGPASSWORD``, ``DATABASE_URL``,
``QUARTERDECK_STATE_DIR``...) never reach an agent. An agent run as another OS user
(``run_as``, possibly one per workspace with ``{workspace}`` in the name) gets that user's
``HOME``, ``USER``, ``LOGNAME`` and ``SHELL`` where the allow-list names them. The option
types of ``env``, ``env_allow`` and ``run_as`` are declared here too.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterable, Mapping
from typing import Annotated, Final

from pydantic import AfterValidator, Field

from quarterdeck.runtime.validation import problem, says

DEFAULT_ENV_ALLOW: Final = (
    "PATH", "HOME", "LANG", "LC_ALL", "TERM", "TZ", "TMPDIR", "USER", "LOGNAME", "SHELL",
)  # fmt: skip
"""The daemon's variables an agent gets unless its lane says otherwise."""
SESSION_CREDENTIAL_ENV: Final = "QUARTERDECK_SESSION_TOKEN"
"""Reserved for the agent's own session credential, which the daemon's control API will issue;
no variable of that name is passed today."""
WORKSPACE_PLACEHOLDER: Final = "{workspace}"


def _own_variables(env: dict[str, str]) -> dict[str, str]:
    if SESSION_CREDENTIAL_ENV in env:
        raise problem(f"{SESSION_CREDENTIAL_ENV} is reserved for the session's credential")
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
