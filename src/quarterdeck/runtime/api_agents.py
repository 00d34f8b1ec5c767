"""The agents a runtime runs, as the control API knows them: each session's credential (a random
secret handed to the agent, of which the runtime keeps only the hash, valid while the mission
runs in the session) and the pids of the agent processes running now.

A credential stands for ``agent:session/<session id>`` pinned to the mission's workspace. A
process that descends from a registered agent process may only use the credential issued to
that process's own mission, so an agent that read another agent's environment (same OS user)
cannot borrow its workspace from its own process tree.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Collection
from dataclasses import dataclass
from typing import Final

from quarterdeck.domain.authority import AGENT_PREFIX, Kind, Principal
from quarterdeck.runtime.peers import ParentOf, descends_from, proc_parent

CREDENTIAL_PREFIX: Final = "qds_"
"""How a session credential starts (a token starts ``qdt_``)."""


def credential_hash(text: str) -> str:
    """What the runtime keeps of a credential."""
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Credential:
    """One issued credential: its text (given to the agent only) and who it stands for."""

    text: str
    principal: Principal

    @property
    def hash(self) -> str:
        """The stored form."""
        return credential_hash(self.text)


class AgentRegistry:
    """The live credentials (by hash) and agent processes (pid → credential hash) of one
    runtime. ``pids`` is the set the control server checks peers against."""

    def __init__(self) -> None:
        self._credentials: dict[str, Principal] = {}
        self._owners: dict[int, str] = {}
        self.pids: set[int] = set()

    def issue(self, session: str, workspace: str) -> Credential:
        """A fresh credential for the agent of ``session`` working in ``workspace``."""
        principal = Principal(Kind.AGENT, f"{AGENT_PREFIX}session/{session}", workspace=workspace)
        credential = Credential(CREDENTIAL_PREFIX + secrets.token_urlsafe(32), principal)
        self._credentials[credential.hash] = principal
        return credential

    def revoke(self, credential: Credential) -> None:
        """The mission ended: the credential is worth nothing from now on."""
        self._credentials.pop(credential.hash, None)

    def started(self, pid: int, credential: Credential | None) -> None:
        """An agent process started (it and its descendants are agents from now on)."""
        self.pids.add(pid)
        if credential is not None:
            self._owners[pid] = credential.hash

    def exited(self, pid: int) -> None:
        """An agent process exited."""
        self.pids.discard(pid)
        self._owners.pop(pid, None)

    def principal(self, text: str) -> Principal | None:
        """The agent a presented credential stands for; None when it is unknown or revoked."""
        if not text.startswith(CREDENTIAL_PREFIX):
            return None
        return self._credentials.get(credential_hash(text))

    def foreign(self, pid: int, text: str, parent_of: ParentOf = proc_parent) -> bool:
        """Whether process ``pid`` descends from a registered agent process whose own
        credential is not ``text`` (it presents a credential it was not given)."""
        presented = credential_hash(text)
        owners: Collection[int] = [p for p, h in self._owners.items() if h != presented]
        return bool(owners) and descends_from(pid, set(owners), parent_of)
