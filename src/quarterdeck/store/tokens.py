"""Bearer tokens for remote supervisors: created, revoked, listed and checked. Only a secret's
hash is stored (:mod:`quarterdeck.domain.tokens`); creating and revoking run in the writer's
transaction and go on the ledger (in the runtime's workspace) with the token's id, name, role,
workspace and expiry, never its hash."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from quarterdeck.domain.authority import AGENT_PREFIX, TOKEN_PREFIX, Kind, Principal
from quarterdeck.domain.clock import format_instant, utc_now
from quarterdeck.domain.commands import TokenCreate
from quarterdeck.domain.envelope import RUNTIME_WORKSPACE
from quarterdeck.domain.tokens import AGENT_ROLE, secret_matches, split_token
from quarterdeck.store.transitions import append_entry, refuse
from quarterdeck.store.writer import WriteTxn

_INSERT = text(
    "INSERT INTO tokens (id, name, role, workspace, secret_hash, created_at, created_by, "
    "expires_at) VALUES (:id, :name, :role, :workspace, :secret_hash, :at, :by, :expires_at)"
)
_REVOKE = text(
    "UPDATE tokens SET revoked_at = :at, revoked_by = :by WHERE id = :id AND revoked_at IS NULL"
)
_BY_ID = text(
    "SELECT id, name, role, workspace, secret_hash, expires_at, revoked_at FROM tokens "
    "WHERE id = :id"
)
_ALL = text(
    "SELECT id, name, role, workspace, created_at, created_by, expires_at, revoked_at, "
    "revoked_by FROM tokens ORDER BY created_at, id"
)
_NO_HASH = "0" * 64
"""Compared against when the id is unknown, so that the comparison runs all the same."""


@dataclass(frozen=True, slots=True)
class TokenLine:
    """One token as ``token ls`` shows it (never its hash)."""

    id: str
    name: str
    role: str
    workspace: str | None
    created_at: str
    created_by: str
    expires_at: str | None
    revoked_at: str | None
    revoked_by: str | None

    def state(self, now: datetime) -> str:
        """``active``, ``expired`` or ``revoked``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= format_instant(now):
            return "expired"
        return "active"


def create_token(txn: WriteTxn, command: TokenCreate, actor: str) -> dict[str, Any]:
    """Store a new token (its hash) and record ``token.created``; a reused id or an expiry
    that has passed is refused."""
    problems = []
    if txn.conn.execute(_BY_ID, {"id": command.token_id}).first() is not None:
        problems.append(f"payload.token_id: a token {command.token_id} exists already")
    if command.expires_at is not None and command.expires_at <= txn.at:
        problems.append(f"payload.expires_at: {command.expires_at} has passed")
    if command.role == AGENT_ROLE and command.workspace is None:
        problems.append("payload.workspace: an agent token must be pinned to a workspace")
    if problems:
        return refuse(
            txn, RUNTIME_WORKSPACE, actor, "token", command.token_id,
            {"command": command.name, "errors": problems},
        )  # fmt: skip
    details = {
        "name": command.principal,
        "role": command.role,
        "workspace": command.workspace,
        "expires_at": command.expires_at,
    }
    txn.conn.execute(
        _INSERT,
        {**details, "id": command.token_id, "secret_hash": command.secret_hash, "at": txn.at,
         "by": actor},
    )  # fmt: skip
    append_entry(
        txn, RUNTIME_WORKSPACE, actor, "token.created", "token", command.token_id, None, None,
        details,
    )  # fmt: skip
    return {"ok": True, "command": command.name, "token": command.token_id, **details}


def revoke_token(txn: WriteTxn, token_id: str, actor: str) -> dict[str, Any]:
    """Revoke a token (``token.revoked``); an unknown or already revoked one is refused."""
    changed = txn.conn.execute(_REVOKE, {"at": txn.at, "by": actor, "id": token_id}).rowcount
    if changed != 1:
        row = txn.conn.execute(_BY_ID, {"id": token_id}).first()
        error = "no such token" if row is None else "the token is revoked already"
        return refuse(
            txn, RUNTIME_WORKSPACE, actor, "token", token_id,
            {"command": "token.revoke", "errors": [f"payload.token_id: {error}"]},
        )  # fmt: skip
    append_entry(txn, RUNTIME_WORKSPACE, actor, "token.revoked", "token", token_id, None, None, {})
    return {"ok": True, "command": "token.revoke", "token": token_id}


async def list_tokens(conn: AsyncConnection) -> list[TokenLine]:
    """Every token, oldest first."""
    rows = (await conn.execute(_ALL)).all()
    return [TokenLine(**row._mapping) for row in rows]


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """What a valid token grants: its principal, until ``expires_at`` (an instant; None: no
    expiry)."""

    principal: Principal
    expires_at: str | None


async def token_grant(
    conn: AsyncConnection, token: str, now: datetime | None = None
) -> TokenGrant | None:
    """What a presented token grants: the principal it stands for (``token:<name>``, granted
    its role, pinned to its workspace; an ``agent`` token stands for the agent
    ``agent:token/<name>``, which holds no role) and its expiry; None when it is malformed,
    unknown, wrong, expired or revoked (all alike to the caller). The secret is compared in
    constant time, even for an unknown id."""
    parts = split_token(token)
    if parts is None:
        return None
    token_id, secret = parts
    row = (await conn.execute(_BY_ID, {"id": token_id})).first()
    matches = secret_matches(secret, _NO_HASH if row is None else row.secret_hash)
    if row is None or not matches or row.revoked_at is not None:
        return None
    if row.expires_at is not None and row.expires_at <= format_instant(now or utc_now()):
        return None
    if row.role == AGENT_ROLE:
        principal = Principal(
            Kind.AGENT, f"{AGENT_PREFIX}token/{row.name}", workspace=row.workspace
        )
    else:
        principal = Principal(
            Kind.SUPERVISOR, TOKEN_PREFIX + row.name, workspace=row.workspace,
            granted=frozenset({row.role}),
        )  # fmt: skip
    return TokenGrant(principal, row.expires_at)
