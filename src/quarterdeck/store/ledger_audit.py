"""Cross-checking the state tables against the ledger: turns, missions, approvals and decisions
read in the same snapshot as the entries that record them (the rules:
:mod:`quarterdeck.domain.ledger_audit`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from quarterdeck.domain.ledger_audit import AUDITED_SUBJECTS, Disagreement, LedgerReplay
from quarterdeck.store.database import Database

_ENTRIES = text(
    "SELECT seq, subject_type, subject_id, action, actor, from_state, to_state, payload "
    "FROM ledger WHERE seq > :low AND subject_type IN ("
    + ", ".join(f"'{kind}'" for kind in AUDITED_SUBJECTS)
    + ") ORDER BY seq LIMIT :n"
)
_ROWS = {
    "turn": "SELECT id, state, version FROM turns",
    "mission": "SELECT id, state, version FROM missions",
    "approval": "SELECT id, state, version, decided_by FROM approvals",
    "decision": "SELECT id, kind, verdict, approval_id, action_key, decided_by FROM decisions",
}


async def audit_state(db: Database, block: int = 20_000) -> list[Disagreement]:
    """Every stored turn, mission, approval and decision whose state, version, decider or
    verdict the ledger does not bear out, in one read snapshot (in table order, then the
    subjects the ledger created whose rows are gone)."""
    replay = LedgerReplay()
    found: list[Disagreement] = []
    async with db.read() as conn:
        low = 0
        while True:
            rows = (await conn.execute(_ENTRIES, {"low": low, "n": block})).all()
            if not rows:
                break
            for row in rows:
                replay.feed(*row)
            low = int(rows[-1][0])
        for kind in ("turn", "mission", "approval"):
            async for row in _paged(conn, _ROWS[kind], block):
                found.extend(replay.check_item(kind, *row))
        async for row in _paged(conn, _ROWS["decision"], block):
            found.extend(replay.check_decision(*row))
    found.extend(replay.missing_rows())
    return found


async def _paged(conn: AsyncConnection, select: str, block: int) -> AsyncIterator[Any]:
    """The rows of ``select`` (its first column the id) in id order, a block at a time."""
    first = text(f"{select} ORDER BY id LIMIT :n")
    after = text(f"{select} WHERE id > :low ORDER BY id LIMIT :n")
    rows = (await conn.execute(first, {"n": block})).all()
    while rows:
        for row in rows:
            yield tuple(row)
        rows = (await conn.execute(after, {"low": rows[-1][0], "n": block})).all()
