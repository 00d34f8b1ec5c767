"""Reads the runtime's supervision loop polls: whether an approval is past its deadline, which
awaited approvals were decided, and who holds a mission now."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select

from quarterdeck.domain.states import APPROVAL_OPEN
from quarterdeck.store.database import Database
from quarterdeck.store.queries.listings import (
    APPROVALS,
    ITEM_TABLES,
    open_approvals_select,
)

MISSIONS = ITEM_TABLES["mission"]


@dataclass(frozen=True, slots=True)
class MissionHold:
    """Who holds a mission now: its attempt, lease owner and state."""

    id: str
    attempt: int
    lease_owner: str | None
    state: str


async def approvals_due(db: Database, now: str) -> bool:
    """Whether an open approval's deadline is at or before ``now``."""
    query = open_approvals_select(APPROVALS.c.id).where(APPROVALS.c.deadline_at <= now).limit(1)
    async with db.read() as conn:
        return (await conn.execute(query)).first() is not None


async def decided_approvals(db: Database, ids: Sequence[str]) -> list[str]:
    """Those of the approvals ``ids`` that no longer wait for a decision."""
    query = select(APPROVALS.c.id).where(
        APPROVALS.c.id.in_(ids), APPROVALS.c.state.not_in(sorted(APPROVAL_OPEN))
    )
    async with db.read() as conn:
        return [str(row.id) for row in (await conn.execute(query)).all()]


async def mission_holds(db: Database, ids: Sequence[str]) -> list[MissionHold]:
    """The attempt, lease owner and state of the missions ``ids`` (those that exist)."""
    query = select(
        MISSIONS.c.id, MISSIONS.c.attempt, MISSIONS.c.lease_owner, MISSIONS.c.state
    ).where(MISSIONS.c.id.in_(ids))
    async with db.read() as conn:
        rows = (await conn.execute(query)).all()
    return [MissionHold(row.id, int(row.attempt), row.lease_owner, row.state) for row in rows]
