"""Stateful items (turns, missions, sessions, approvals, alerts) by kind: creation, and a
transition by target state that reads the item and moves it through
:func:`quarterdeck.store.transitions.move`. Both append their ledger entry in the caller's
write transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, text

from quarterdeck.domain.canonical import canonical_text
from quarterdeck.domain.ids import new_id
from quarterdeck.domain.states import (
    ItemNotFound,
    Kind,
    NoDecision,
    StaleWrite,
    check_transition,
    machine,
)
from quarterdeck.store.tables import STATEFUL_TABLES, table_of
from quarterdeck.store.transitions import move
from quarterdeck.store.writer import WriteTxn

_TABLES = {Kind(kind): table_of(model) for kind, model in STATEFUL_TABLES.items()}
_BASE_COLUMNS = frozenset(
    {"id", "workspace", "state", "version", "attempt", "created_at", "updated_at", "data"}
)


@dataclass(frozen=True, slots=True)
class ItemState:
    """An item's identity and position after a write."""

    kind: Kind
    id: str
    workspace: str
    state: str
    version: int
    attempt: int


def _extra_columns(kind: Kind, fields: dict[str, Any]) -> dict[str, Any]:
    table = _TABLES[kind]
    unknown = set(fields) - (set(table.c.keys()) - _BASE_COLUMNS)
    if unknown:
        raise ValueError(f"{kind}: unknown fields {sorted(unknown)}")
    return dict(fields)


def create_item(
    txn: WriteTxn,
    kind: Kind,
    *,
    workspace: str,
    actor: str,
    fields: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    item_id: str | None = None,
    cause: dict[str, Any] | None = None,
) -> ItemState:
    """Insert a new item in its machine's initial state and record it on the ledger."""
    initial = machine(kind).initial
    item_id = item_id or new_id()
    columns = _extra_columns(kind, fields or {})
    txn.conn.execute(
        insert(_TABLES[kind]).values(
            id=item_id,
            workspace=workspace,
            state=initial,
            version=1,
            attempt=0,
            created_at=txn.at,
            updated_at=txn.at,
            data=canonical_text(data or {}),
            **columns,
        )
    )
    txn.ledger.append(
        at=txn.at,
        workspace=workspace,
        actor=actor,
        action=f"{kind}.created",
        subject_type=str(kind),
        subject_id=item_id,
        from_state=None,
        to_state=initial,
        payload={"version": 1, "attempt": 0, **(cause or {})},
    )
    return ItemState(kind, item_id, workspace, initial, 1, 0)


def transition(
    txn: WriteTxn,
    kind: Kind,
    item_id: str,
    to_state: str,
    *,
    workspace: str,
    actor: str,
    expected_version: int,
    expected_attempt: int | None = None,
    bump_attempt: bool = False,
    fields: dict[str, Any] | None = None,
    payload: dict[str, Any] | None = None,
    action: str | None = None,
) -> ItemState:
    """Move one item to ``to_state``: check the table, compare-and-set, record on the ledger.

    The update applies only where ``version`` (and, for leased kinds, ``attempt``) still equal
    what the caller saw; it bumps ``version`` (and ``attempt`` when ``bump_attempt``).

    Raises:
        ItemNotFound: no such item in ``workspace``.
        UnknownState, IllegalTransition: the table forbids the move.
        StaleWrite: the version or attempt moved on.
        NoDecision: a mission would start without a decision allowing its dispatch.
        ValueError: a leased kind without ``expected_attempt``, or unknown fields.
    """
    table = _TABLES[kind]
    if machine(kind).leased and expected_attempt is None:
        raise ValueError(f"{kind} is leased: a transition must carry the attempt it holds")
    columns = _extra_columns(kind, fields or {})
    current = (
        txn.conn.execute(
            select(table.c.state, table.c.version, table.c.attempt).where(
                table.c.id == item_id, table.c.workspace == workspace
            )
        )
    ).first()
    if current is None:
        raise ItemNotFound(kind, item_id)
    from_state, version, attempt = str(current.state), int(current.version), int(current.attempt)
    check_transition(kind, from_state, to_state)
    if version != expected_version or (
        expected_attempt is not None and attempt != expected_attempt
    ):
        raise StaleWrite(kind, item_id, (expected_version, expected_attempt), (version, attempt))
    if kind is Kind.MISSION and (from_state, to_state) == ("queued", "running"):
        _require_dispatch_decision(txn, item_id, columns.get("decision_id"))
    new_attempt = attempt + 1 if bump_attempt else attempt
    if bump_attempt:
        columns["attempt"] = new_attempt
    moved = move(
        txn, kind, item_id, from_state, to_state, workspace=workspace, actor=actor,
        version=expected_version, columns=columns,
        payload={"attempt": new_attempt, **(payload or {})}, action=action,
    )  # fmt: skip
    if moved is None:
        raise StaleWrite(kind, item_id, (expected_version, expected_attempt), (version, attempt))
    return ItemState(kind, item_id, workspace, to_state, version + 1, new_attempt)


def _require_dispatch_decision(txn: WriteTxn, mission_id: str, decision_id: Any) -> None:
    """Refuse a mission's start without a persisted decision allowing its dispatch (the
    database's trigger refuses it too; this names the problem with a typed error first)."""
    allowed = (
        decision_id is not None
        and txn.conn.execute(
            text("SELECT 1 FROM decisions WHERE id = :d AND mission_id = :m AND verdict = 'allow'"),
            {"d": decision_id, "m": mission_id},
        ).first()
    )
    if not allowed:
        raise NoDecision(mission_id)
