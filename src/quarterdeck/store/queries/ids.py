"""Resolving a typed id to one item: its full id, its short form
(:func:`~quarterdeck.domain.ids.short_id`) or a unique prefix of the full id, with or without
dashes, among the items the caller may read.

A prefix reads a range of the primary key (on PostgreSQL a ``LIKE`` on it, which keeps to the
key's order whatever the database's collation); a short form reads the ``ix_*_short`` index on
the expression :data:`SHORT_EXPRESSION` (see the step that made it)."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

from sqlalchemy import Table, text
from sqlalchemy.ext.asyncio import AsyncConnection

from quarterdeck.domain.envelope import RUNTIME_WORKSPACE
from quarterdeck.domain.ids import AmbiguousId, IdMatch, IdQuery, UnknownId, id_query
from quarterdeck.store.database import Database
from quarterdeck.store.queries.listings import ITEM_TABLES
from quarterdeck.store.receipts import RECEIPTS

SHORT_EXPRESSION = "substr(id, 25, 4) || substr(id, 33, 4)"
"""The short form of a canonical id in SQL, as the ``ix_*_short`` indexes hold it."""
CANDIDATES_SHOWN = 10
"""The most candidates an ambiguity lists."""
ID_KINDS = ("receipt", *ITEM_TABLES)
"""Every kind of item an id may name."""


def _table(kind: str) -> Table:
    return RECEIPTS if kind == "receipt" else ITEM_TABLES[kind]


async def _matches(
    conn: AsyncConnection, kind: str, query: IdQuery, workspaces: Collection[str] | None,
    limit: int,
) -> list[IdMatch]:  # fmt: skip
    """``kind``'s items in scope that ``query`` names, at most ``limit``."""
    table = _table(kind)
    scope = ""
    params: dict[str, Any] = {"limit": limit}
    if workspaces is not None:
        allowed = set(workspaces) if kind == "receipt" else {*workspaces, RUNTIME_WORKSPACE}
        names = sorted(allowed)
        # On SQLite, "+workspace" keeps the planner on the id's index (the workspace's index
        # would read every item of the workspace).
        column = "workspace" if conn.dialect.name == "postgresql" else "+workspace"
        listed = ", ".join(f":w{i}" for i in range(len(names)))
        scope = f" AND {column} IN ({listed})"
        params |= {f"w{i}": name for i, name in enumerate(names)}
    conditions: list[tuple[str, dict[str, str]]] = []
    if query.prefix is None or query.complete:
        conditions.append(("id = :id", {"id": query.prefix or query.text}))
    elif conn.dialect.name == "postgresql":
        conditions.append(("id LIKE :pattern", {"pattern": query.prefix + "%"}))
    else:  # the key's range: every character after the prefix sorts below "g"
        conditions.append(("id >= :low AND id < :high", {"low": query.prefix,
                                                          "high": query.prefix + "g"}))  # fmt: skip
    if query.short is not None:
        conditions.append((f"{SHORT_EXPRESSION} = :short", {"short": query.short}))
    found: dict[str, IdMatch] = {}
    for condition, values in conditions:
        statement = text(
            f"SELECT id, workspace FROM {table.name} WHERE {condition}{scope} "
            "ORDER BY id LIMIT :limit"
        )
        for row in (await conn.execute(statement, {**params, **values})).all():
            found.setdefault(row.id, IdMatch(row.id, kind, row.workspace))
    return sorted(found.values(), key=lambda match: match.id)[:limit]


async def find_ids(
    db: Database, typed: str, *, kinds: Iterable[str] = ID_KINDS,
    workspaces: Collection[str] | None = None, limit: int = CANDIDATES_SHOWN + 1,
) -> list[IdMatch]:  # fmt: skip
    """The items of ``kinds`` in ``workspaces`` (None: every workspace; the runtime's own items
    are in every workspace's view) whose id, short form or id prefix ``typed`` is, at most
    ``limit`` of them, by id.

    Raises:
        ValueError: ``typed`` is empty.
    """
    query = id_query(typed)
    found: list[IdMatch] = []
    async with db.read() as conn:
        for kind in kinds:
            found += await _matches(conn, kind, query, workspaces, limit - len(found))
            if len(found) >= limit:
                break
    return found


async def resolve_id(
    db: Database, typed: str, *, kinds: Iterable[str] = ID_KINDS,
    workspaces: Collection[str] | None = None, what: str = "item",
) -> IdMatch:  # fmt: skip
    """The one item of ``kinds`` in ``workspaces`` that ``typed`` names (see :func:`find_ids`).

    Raises:
        UnknownId: none does (``what`` names what was looked for in the message).
        AmbiguousId: several do; the error lists them.
        ValueError: ``typed`` is empty.
    """
    found = await find_ids(db, typed, kinds=kinds, workspaces=workspaces)
    if not found:
        raise UnknownId(typed.strip(), what)
    if len(found) > 1:
        shown = tuple(found[:CANDIDATES_SHOWN])
        raise AmbiguousId(typed.strip(), shown, more=len(found) > CANDIDATES_SHOWN)
    return found[0]
