"""What a client process waits on, read on its change feed's connection (on SQLite, a private
connection with no pool): what a receipt's envelope produced, an approval once decided, and
the payload a receipt carried."""

from __future__ import annotations

from dataclasses import dataclass

from quarterdeck.domain.states import APPROVAL_OPEN
from quarterdeck.store.changes import ChangeFeed

_PRODUCED = "SELECT produced_type, produced_id FROM receipts WHERE id = :id"
_APPROVAL = (
    "SELECT id, state, args, edited_args, reason_code, reason_text, decided_by "
    "FROM approvals WHERE id = :id"
)
_PAYLOAD = "SELECT payload FROM receipts WHERE id = :id"


@dataclass(frozen=True, slots=True)
class Produced:
    """What a receipt's envelope produced once a runtime applied it."""

    type: str
    """``command``, ``turn``, ``event``, ..."""
    id: str
    """The produced item's id; a command's result as JSON."""


@dataclass(frozen=True, slots=True)
class DecidedApproval:
    """An approval that no longer waits: its final state and what the decision said."""

    id: str
    state: str
    args: str | None
    edited_args: str | None
    reason_code: str | None
    reason_text: str | None
    decided_by: str | None


async def produced(feed: ChangeFeed, receipt: str) -> Produced | None:
    """What the envelope of ``receipt`` produced; None until a runtime applied it (or when
    there is no such receipt)."""
    row = await feed.query_one(_PRODUCED, {"id": receipt})
    if row is None or row["produced_type"] is None:
        return None
    return Produced(str(row["produced_type"]), str(row["produced_id"]))


async def decided_approval(feed: ChangeFeed, approval_id: str) -> DecidedApproval | None:
    """The approval ``approval_id`` once decided; None while it is open (or unknown)."""
    row = await feed.query_one(_APPROVAL, {"id": approval_id})
    if row is None or row["state"] in APPROVAL_OPEN:
        return None
    return DecidedApproval(**row)


async def receipt_payload(feed: ChangeFeed, receipt: str) -> str | None:
    """The JSON payload the envelope of ``receipt`` carried; None without one."""
    row = await feed.query_one(_PAYLOAD, {"id": receipt})
    return None if row is None else row["payload"]
