"""The kernel of every state change in the store: the ledger entry writer, the refusal
recorder, new missions, and :func:`move`, the one mover of a stateful item.

:func:`move` checks the transition table, updates the row fenced by its state and version
(and by the lease, attempt and owner, where a worker holds one), checks that exactly that
row changed, and only then appends the ledger entry. The batched hot paths (claiming,
finishing) write their rows in one statement but check the same table, record through the
same :func:`record_transition`, and check their counts. Every function runs inside the
writer's transaction (a :class:`WriteTxn`).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from sqlalchemy import TextClause, text

from quarterdeck.domain.canonical import canonical_text
from quarterdeck.domain.recovery import Role
from quarterdeck.domain.states import TURN_HOLDS_LEASE, TURN_NO_DEAD_LETTER, Kind, check_transition
from quarterdeck.store.sql import Bulk
from quarterdeck.store.tables import STATEFUL_TABLES, table_of
from quarterdeck.store.writer import WriteTxn

INSERT_MISSION = Bulk(
    text(
        "INSERT INTO missions (id, workspace, state, version, attempt, created_at, updated_at, data, "
        "turn_id, lane, role, number, not_before) VALUES (:id, :workspace, 'queued', 1, 0, :at, :at, "
        "'{}', :turn_id, :lane, :role, :number, :not_before)"
    ),
    text(
        "INSERT INTO missions (id, workspace, state, version, attempt, created_at, updated_at, data, "
        "turn_id, lane, role, number, not_before) SELECT r.id, r.workspace, 'queued', 1, 0, r.at, "
        "r.at, '{}', r.turn_id, r.lane, r.role, r.number, r.not_before FROM unnest("
        "CAST(:id AS TEXT[]), CAST(:workspace AS TEXT[]), CAST(:at AS TEXT[]), "
        "CAST(:turn_id AS TEXT[]), CAST(:lane AS TEXT[]), CAST(:role AS TEXT[]), "
        "CAST(:number AS INTEGER[]), CAST(:not_before AS TEXT[])) "
        "AS r(id, workspace, at, turn_id, lane, role, number, not_before)"
    ),
)


def append_entry(
    txn: WriteTxn,
    workspace: str,
    actor: str,
    action: str,
    subject_type: str,
    subject_id: str,
    from_state: str | None,
    to_state: str | None,
    payload: dict[str, Any],
) -> None:
    """Append one ledger entry; a change of state (both states given) is checked against the
    kind's transition table first."""
    if from_state is not None and to_state is not None:
        check_transition(Kind(subject_type), from_state, to_state)
    txn.ledger.append(
        at=txn.at,
        workspace=workspace,
        actor=actor,
        action=action,
        subject_type=subject_type,
        subject_id=subject_id,
        from_state=from_state,
        to_state=to_state,
        payload=payload,
    )


def refuse(
    txn: WriteTxn,
    workspace: str,
    actor: str,
    subject_type: str,
    subject_id: str,
    details: dict[str, Any],
) -> dict[str, Any]:
    """Record a refused command (nothing else changes) and return its result."""
    append_entry(
        txn, workspace, actor, "command.refused", subject_type, subject_id, None, None, details
    )
    return {"ok": False, "errors": details["errors"]}


def mission_row(
    txn: WriteTxn,
    mission_id: str,
    workspace: str,
    turn_id: str,
    lane: str,
    role: Role,
    number: int,
    not_before: str | None = None,
) -> dict[str, Any]:
    """Record a new queued mission (``mission.created``) and return its row for
    :data:`INSERT_MISSION`."""
    append_entry(
        txn,
        workspace,
        "coordinator",
        "mission.created",
        "mission",
        mission_id,
        None,
        "queued",
        {
            "turn": turn_id,
            "lane": lane,
            "role": role,
            "number": number,
            "not_before": not_before,
            "version": 1,
            "attempt": 0,
        },
    )
    return {
        "id": mission_id,
        "workspace": workspace,
        "at": txn.at,
        "turn_id": turn_id,
        "lane": lane,
        "role": role,
        "number": number,
        "not_before": not_before,
    }


_TABLES: Mapping[Kind, str] = {
    Kind(kind): table_of(model).name for kind, model in STATEFUL_TABLES.items()
}
_COLUMNS: Mapping[Kind, frozenset[str]] = {
    Kind(kind): frozenset(table_of(model).c.keys()) for kind, model in STATEFUL_TABLES.items()
}


def record_transition(
    txn: WriteTxn,
    kind: Kind,
    item_id: str,
    from_state: str,
    to_state: str,
    *,
    workspace: str,
    actor: str,
    payload: dict[str, Any],
    action: str | None = None,
) -> None:
    """Check ``from_state -> to_state`` against the table and append its ledger entry
    (``<kind>.<to_state>`` unless ``action`` names another); for a row already moved."""
    check_transition(kind, from_state, to_state)
    txn.ledger.append(
        at=txn.at,
        workspace=workspace,
        actor=actor,
        action=action or f"{kind}.{to_state}",
        subject_type=str(kind),
        subject_id=item_id,
        from_state=from_state,
        to_state=to_state,
        payload=payload,
    )


@lru_cache(maxsize=512)
def _update(kind: Kind, columns: tuple[str, ...], versioned: bool, leased: bool) -> TextClause:
    unknown = set(columns) - _COLUMNS[kind]
    if unknown:
        raise ValueError(f"{kind}: no columns {sorted(unknown)}")
    sets = "".join(f", {column} = :set_{column}" for column in columns)
    where = "id = :id AND state = :from"
    if versioned:
        where += " AND version = :version"
    if leased:
        where += " AND attempt = :attempt AND lease_owner = :owner"
    returning = "" if versioned else " RETURNING version"
    return text(
        f"UPDATE {_TABLES[kind]} SET state = :to, version = version + 1, updated_at = :at"
        f"{sets} WHERE {where}{returning}"
    )


def move(
    txn: WriteTxn,
    kind: Kind,
    item_id: str,
    from_state: str,
    to_state: str,
    *,
    workspace: str,
    actor: str,
    version: int | None,
    lease: tuple[int, str] | None = None,
    columns: Mapping[str, Any] | None = None,
    payload: Mapping[str, Any] | None = None,
    action: str | None = None,
) -> int | None:
    """Move one item ``from_state -> to_state`` and record it; return its new version, or
    None when the row was not there as read (another writer moved it first): then nothing
    changed and nothing is recorded.

    The update is fenced by the state and ``version``, and by ``lease`` (``attempt`` and lease
    owner) for a worker's write to the item it holds; a worker that does not know the version
    (it moved on with an approval) is fenced by its lease alone. ``columns`` are set in the
    same update; the ledger entry's payload is ``payload`` with the new version.

    Raises:
        UnknownState, IllegalTransition: the table has no such move (nothing was written).
        ValueError: neither a version nor a lease fences the move, or an unknown column.
    """
    check_transition(kind, from_state, to_state)
    if version is None and lease is None:
        raise ValueError(f"{kind} {item_id}: a move is fenced by its version or its lease")
    values = dict(columns or {})
    statement = _update(kind, tuple(values), version is not None, lease is not None)
    params: dict[str, Any] = {f"set_{column}": value for column, value in values.items()}
    params.update(to=to_state, at=txn.at, id=item_id, version=version)
    params["from"] = from_state
    if lease is not None:
        params["attempt"], params["owner"] = lease
    result = txn.conn.execute(statement, params)
    if version is None:
        moved = result.scalar()
        if moved is None:
            return None
        new_version = int(moved)
    elif result.rowcount != 1:
        return None
    else:
        new_version = version + 1
    record_transition(
        txn, kind, item_id, from_state, to_state, workspace=workspace, actor=actor,
        payload={"version": new_version, **(payload or {})}, action=action,
    )  # fmt: skip
    return new_version


def move_turn(
    txn: WriteTxn,
    workspace: str,
    turn_id: str,
    from_state: str,
    to_state: str,
    version: int,
    actor: str,
    *,
    deliverable: Mapping[str, Any] | None = None,
    error: str | None = None,
    extra: Mapping[str, Any] | None = None,
    dead_letter: str | None = None,
    held_until: str | None = None,
) -> bool:
    """:func:`move` for a turn: ``deliverable`` and ``error`` are set when given; a turn that no
    longer holds a lease loses its lease columns; ``dead_letter`` (with ``held_until``) sets the
    dead-letter stage, and a completed or cancelled turn has none."""
    columns: dict[str, Any] = {}
    if deliverable is not None:
        columns["deliverable"] = canonical_text(dict(deliverable))
    if error is not None:
        columns["error"] = error
    if to_state not in TURN_HOLDS_LEASE:
        columns.update(lease_owner=None, lease_expires_at=None)
    if dead_letter is not None:
        columns.update(dead_letter=dead_letter, held_until=held_until)
    elif to_state in TURN_NO_DEAD_LETTER:
        columns["dead_letter"] = None
    moved = move(
        txn, Kind.TURN, turn_id, from_state, to_state, workspace=workspace, actor=actor,
        version=version, columns=columns, payload=extra,
    )  # fmt: skip
    return moved is not None


def move_mission(
    txn: WriteTxn,
    workspace: str,
    mission_id: str,
    from_state: str,
    to_state: str,
    version: int,
    actor: str,
    *,
    error: str | None = None,
    decision_id: str | None = None,
) -> bool:
    """:func:`move` for a mission that ends outside a worker's lease (cancelled, failed): its
    lease is cleared and it is finished; ``error`` and ``decision_id`` (the decision that
    refused it) are set when given."""
    columns: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None, "finished_at": txn.at}
    payload: dict[str, Any] = {}
    if error is not None:
        columns["error"] = payload["error"] = error
    if decision_id is not None:
        columns["decision_id"] = payload["decision"] = decision_id
    moved = move(
        txn, Kind.MISSION, mission_id, from_state, to_state, workspace=workspace, actor=actor,
        version=version, columns=columns, payload=payload,
    )  # fmt: skip
    return moved is not None


class ClaimConflict(Exception):
    """Rows changed between reading and claiming them (another writer); the operation rolls back."""
