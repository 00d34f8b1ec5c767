"""Sessions: each lane's durable worker identities, leased by runtime nodes.

A node holds up to its lane's concurrency in sessions; each mission it runs is assigned one of
them (``missions.session_id``) and runs in that session's workspace directory. Sessions outlive
nodes: when a node dies, its sessions' leases expire, the sweep marks them ``recovering``, and the
next node to start takes them over (oldest first, so the same identities come back in the same
order) and makes them ``active`` again. A drained node hands its sessions back ``idle``.

States: ``idle`` (not held), ``active`` (held by a live node), ``paused`` (its lane is paused),
``degraded`` (several missions in a row failed on it), ``recovering`` (its holder vanished),
``retired`` (its lane is gone from the configuration).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, text

from quarterdeck.domain.clock import format_instant
from quarterdeck.domain.envelope import RUNTIME_WORKSPACE
from quarterdeck.domain.hooks import AGENTS
from quarterdeck.domain.ids import new_ids
from quarterdeck.domain.states import SESSION_HELD, Kind
from quarterdeck.store.flags import bump_counter
from quarterdeck.store.sql import in_list
from quarterdeck.store.transitions import move, record_transition
from quarterdeck.store.writer import WriteTxn

SESSION_WORKSPACE = RUNTIME_WORKSPACE
"""Sessions belong to the runtime, not to a tenant workspace."""


@dataclass(frozen=True, slots=True)
class HeldSession:
    """A session this node holds, and what fences its writes."""

    id: str
    lane: str
    workdir: str
    attempt: int
    owner: str


_LEASE_CLEARED: Mapping[str, Any] = {"lease_owner": None, "lease_expires_at": None}


def _move(
    txn: WriteTxn,
    session_id: str,
    from_state: str,
    to_state: str,
    version: int,
    actor: str,
    *,
    lease: tuple[int, str] | None = None,
    columns: Mapping[str, Any] | None = None,
    **payload: object,
) -> bool:
    """:func:`move` for a session of the runtime's workspace (fenced by ``version``, and by
    ``lease`` when its holder moves it)."""
    moved = move(
        txn, Kind.SESSION, session_id, from_state, to_state, workspace=SESSION_WORKSPACE,
        actor=actor, version=version, lease=lease, columns=columns, payload=payload,
    )  # fmt: skip
    return moved is not None


def acquire_sessions(
    txn: WriteTxn, lane: str, count: int, owner: str, lease_s: float, state_dir: Path
) -> list[HeldSession]:
    """Lease ``count`` sessions of ``lane`` for ``owner``: free ones first (oldest first),
    recovering the sessions of vanished holders, then new ones."""
    expires = format_instant(txn.now + timedelta(seconds=lease_s))
    free = txn.conn.execute(
        text(
            "SELECT id, state, version, attempt, workdir, lease_owner FROM sessions "
            "WHERE lane = :lane AND state != 'retired' "
            "AND (lease_owner IS NULL OR lease_expires_at < :now) ORDER BY id LIMIT :n"
        ),
        {"lane": lane, "now": txn.at, "n": count},
    ).all()
    held: list[HeldSession] = []
    for row in free:
        state, version = row.state, row.version
        if row.lease_owner is not None and state != "recovering":
            if not _move(
                txn, row.id, state, "recovering", version, owner, previous_owner=row.lease_owner
            ):
                continue  # another node took it meanwhile
            state, version = "recovering", version + 1
        columns = {"attempt": row.attempt + 1, "lease_owner": owner, "lease_expires_at": expires,
                   "heartbeat_at": txn.at}  # fmt: skip
        if not _move(
            txn, row.id, state, "active", version, owner, columns=columns, attempt=row.attempt + 1
        ):
            continue
        held.append(HeldSession(row.id, lane, row.workdir, row.attempt + 1, owner))
    for session_id in new_ids(count - len(held)):
        workdir = str(state_dir / "sessions" / session_id)
        txn.conn.execute(
            text(
                "INSERT INTO sessions (id, workspace, state, version, attempt, created_at, "
                "updated_at, data, lane, lease_owner, lease_expires_at, heartbeat_at, workdir) "
                "VALUES (:id, :ws, 'active', 2, 1, :at, :at, '{}', :lane, :owner, :expires, "
                ":at, :workdir)"
            ),
            {
                "id": session_id,
                "ws": SESSION_WORKSPACE,
                "at": txn.at,
                "lane": lane,
                "owner": owner,
                "expires": expires,
                "workdir": workdir,
            },
        )
        txn.ledger.append(
            at=txn.at,
            workspace=SESSION_WORKSPACE,
            actor=owner,
            action="session.created",
            subject_type="session",
            subject_id=session_id,
            from_state=None,
            to_state="idle",
            payload={"version": 1, "lane": lane, "workdir": workdir},
        )
        # Inserted active at version 2: created idle and taken at once, as two entries.
        record_transition(
            txn, Kind.SESSION, session_id, "idle", "active", workspace=SESSION_WORKSPACE,
            actor=owner, payload={"version": 2, "attempt": 1},
        )  # fmt: skip
        held.append(HeldSession(session_id, lane, workdir, 1, owner))
    return held


def heartbeat_sessions(
    txn: WriteTxn,
    sessions: Sequence[HeldSession],
    lease_s: float,
    paused_lanes: frozenset[str] = frozenset(),
) -> list[HeldSession]:
    """Extend the leases of held sessions; return those lost (another holder took them).

    A session the sweep marked ``recovering`` while its holder was silent (a frozen or
    partitioned node) but that nobody took over is still this holder's: it comes back
    ``active`` (``paused`` on a paused lane), so its state says again who holds it.
    """
    if not sessions:
        return []
    expires = format_instant(txn.now + timedelta(seconds=lease_s))
    rows = {
        row.id: row
        for row in txn.conn.execute(
            text(
                "SELECT id, state, version, attempt, lease_owner FROM sessions WHERE id IN :ids"
            ).bindparams(bindparam("ids", expanding=True)),
            {"ids": [s.id for s in sessions]},
        )
    }
    held: list[HeldSession] = []
    lost: list[HeldSession] = []
    for session in sessions:
        row = rows.get(session.id)
        still = row is not None and (row.lease_owner, row.attempt) == (
            session.owner,
            session.attempt,
        )
        (held if still else lost).append(session)
    if held:
        txn.conn.execute(
            text(
                "UPDATE sessions SET lease_expires_at = :expires, heartbeat_at = :at "
                "WHERE id IN :ids"
            ).bindparams(bindparam("ids", expanding=True)),
            {"expires": expires, "at": txn.at, "ids": [s.id for s in held]},
        )
    for session in held:
        row = rows[session.id]
        if row.state != "recovering":
            continue
        back = "paused" if session.lane in paused_lanes else "active"
        _move(txn, session.id, "recovering", back, row.version, session.owner,
              reason="holder returned")  # fmt: skip
    return lost


def _held_row(txn: WriteTxn, session: HeldSession) -> Any:
    """The session's state and version, if this holder still holds it (else None)."""
    return txn.conn.execute(
        text(
            "SELECT state, version FROM sessions WHERE id = :id AND lease_owner = :owner "
            "AND attempt = :attempt"
        ),
        {"id": session.id, "owner": session.owner, "attempt": session.attempt},
    ).first()


def set_session_state(
    txn: WriteTxn, session: HeldSession, to_state: str, *, error: str | None = None
) -> bool:
    """Move a held session (``active``/``paused``/``degraded``) to ``to_state``, fenced."""
    row = _held_row(txn, session)
    if row is None or row.state == to_state:
        return False
    return _move(
        txn, session.id, row.state, to_state, row.version, session.owner,
        lease=(session.attempt, session.owner),
        columns={"last_error": error} if error is not None else None, error=error,
    )  # fmt: skip


def release_sessions(txn: WriteTxn, owner: str) -> int:
    """Hand every session ``owner`` holds back ``idle`` (a drained node); return how many.

    By owner, not by the node's own list: a session leased in the last moments before the
    drain (a replacement for one taken over) is released too.
    """
    rows = txn.conn.execute(
        text("SELECT id, state, version FROM sessions WHERE lease_owner = :owner ORDER BY id"),
        {"owner": owner},
    ).all()
    for row in rows:
        if row.state != "idle":
            _move(txn, row.id, row.state, "idle", row.version, owner, columns=_LEASE_CLEARED,
                  reason="released")  # fmt: skip
            continue
        txn.conn.execute(
            text(
                "UPDATE sessions SET lease_owner = NULL, lease_expires_at = NULL, "
                "updated_at = :at WHERE id = :id AND version = :version"
            ),
            {"at": txn.at, "id": row.id, "version": row.version},
        )
    return len(rows)


def sweep_sessions(txn: WriteTxn, actor: str) -> int:
    """Mark sessions whose holder vanished (lease expired) ``recovering``; return how many."""
    stale = txn.conn.execute(
        text(
            "SELECT id, state, version, lease_owner FROM sessions WHERE lease_owner IS NOT NULL "
            f"AND lease_expires_at < :now AND state IN {in_list(SESSION_HELD)}"
        ),
        {"now": txn.at},
    ).all()
    orphaned = sum(
        _move(
            txn, row.id, row.state, "recovering", row.version, actor, previous_owner=row.lease_owner
        )
        for row in stale
    )
    if orphaned:
        bump_counter(txn, "sessions_orphaned", orphaned)
    return orphaned


def retire_sessions(txn: WriteTxn, lanes: Sequence[str], actor: str) -> int:
    """Retire unheld sessions of lanes that are no longer configured."""
    if not lanes:
        return 0
    rows = txn.conn.execute(
        text(
            "SELECT id, state, version, lane FROM sessions WHERE state != 'retired' "
            "AND (lease_owner IS NULL OR lease_expires_at < :now)"
        ),
        {"now": txn.at},
    ).all()
    retired = 0
    for row in rows:
        if row.lane in lanes or row.lane in AGENTS:
            continue  # configured, or an agent CLI's own session (store/sessions_hooks.py)
        retired += _move(txn, row.id, row.state, "retired", row.version, actor,
                         columns=_LEASE_CLEARED, reason="lane removed")  # fmt: skip
    return retired
