"""Signed ledger checkpoints in the database, and the reads that hold the chain to them:
recording and finding checkpoints, checking that the chain still holds a checkpointed head,
verifying the chain against a checkpoint file, and the entries of a proof."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Connection, insert, select

from quarterdeck.domain.checkpoints import Checkpoint, check_checkpoints
from quarterdeck.domain.ledger import ChainVerifier, VerifyResult
from quarterdeck.store.database import Database
from quarterdeck.store.ledger import LEDGER, iter_entries, ledger_head, verify_ledger
from quarterdeck.store.tables import LedgerCheckpointRow, table_of

CHECKPOINTS = table_of(LedgerCheckpointRow)
_ENTRY_COLUMNS = tuple(
    LEDGER.c[name]
    for name in (
        "seq", "at", "workspace", "actor", "action", "subject_type", "subject_id",
        "from_state", "to_state", "payload", "prev_hash", "hash",
    )
)  # fmt: skip
"""The stored columns in the order :class:`ChainVerifier` takes them."""


def record_checkpoint(conn: Connection, checkpoint: Checkpoint) -> None:
    """Store a signed checkpoint (inside the caller's write transaction)."""
    conn.execute(
        insert(CHECKPOINTS).values(
            hash=checkpoint.hash,
            seq=checkpoint.seq,
            head=checkpoint.head,
            at=checkpoint.at,
            node=checkpoint.node,
            prev=checkpoint.prev,
            key_id=checkpoint.key_id,
            signature=checkpoint.signature,
        )
    )


async def read_head(db: Database) -> tuple[int, str]:
    """The ledger's recorded head ``(seq, hash)``."""
    async with db.read() as conn:
        return await ledger_head(conn)


async def first_checkpoint_from(db: Database, seq: int) -> Checkpoint | None:
    """The stored checkpoint with the lowest seq at or above ``seq`` (the earliest signed
    of those at that seq), or None."""
    query = (
        select(CHECKPOINTS)
        .where(CHECKPOINTS.c.seq >= seq)
        .order_by(CHECKPOINTS.c.seq, CHECKPOINTS.c.at, CHECKPOINTS.c.hash)
        .limit(1)
    )
    async with db.read() as conn:
        row = (await conn.execute(query)).first()
    if row is None:
        return None
    return Checkpoint(row.seq, row.head, row.at, row.node, row.prev, row.key_id, row.signature)


async def chain_holds(
    db: Database, since: tuple[int, str], upto: tuple[int, str]
) -> VerifyResult | None:
    """Whether the stored chain still holds the checkpointed head ``since`` (seq, hash; seq 0
    for the genesis) and the head ``upto`` after it: each of those entries is there and
    re-hashes, from its content and link, to that hash. None if so, else the failure at its
    seq. (Entries between them are not read: a rewrite at or below ``since`` changes the entry
    at ``since``, and one above it, with the hashes recomputed, would pass any re-hashing.)"""
    low, low_hash = since
    high, high_hash = upto
    if high < low:
        return _bad(low, f"the ledger ends at seq {high}, below the checkpointed head {low}")
    wanted = [seq for seq in {low, high} if seq > 0]
    query = select(*_ENTRY_COLUMNS).where(LEDGER.c.seq.in_(wanted))
    async with db.read() as conn:
        rows = {row[0]: tuple(row) for row in (await conn.execute(query)).all()}
    for seq, digest, what in (
        (low, low_hash, "its checkpoint signed"),
        (high, high_hash, "the head records"),
    ):
        if seq == 0:
            continue
        row = rows.get(seq)
        if row is None:
            return _bad(seq, f"entry {seq} is missing")
        verifier = ChainVerifier()
        verifier.expected, verifier.prev = seq, str(row[10])
        failure = verifier.feed([row])
        if failure is not None:
            return failure
        if verifier.prev != digest:
            return _bad(seq, f"entry {seq} no longer has the hash {what}")
    return None


def _bad(seq: int, reason: str) -> VerifyResult:
    return VerifyResult(False, 0, "", first_bad_seq=seq, reason=reason)


async def stored_hashes(db: Database, seqs: Sequence[int]) -> dict[int, str]:
    """The stored hash of each entry named (those that exist)."""
    wanted = sorted(set(seqs))
    found: dict[int, str] = {}
    async with db.read() as conn:
        for i in range(0, len(wanted), 500):
            query = select(LEDGER.c.seq, LEDGER.c.hash).where(LEDGER.c.seq.in_(wanted[i : i + 500]))
            found.update((int(seq), str(digest)) for seq, digest in await conn.execute(query))
    return found


async def verify_with_checkpoints(
    db: Database,
    lines: Sequence[tuple[int, Checkpoint | str]],
    keys: Mapping[str, Ed25519PublicKey],
) -> VerifyResult:
    """Verify the chain as stored (:func:`verify_ledger`), then that it still holds every
    head the checkpoint file's ``lines`` signed, each signature verifying with one of
    ``keys``. The checkpoints must have been read before this is called (a checkpoint is
    written after the entries it signs)."""
    result = await verify_ledger(db)
    if not result.ok:
        return result
    hashes = await stored_hashes(db, [c.seq for _, c in lines if isinstance(c, Checkpoint)])
    return check_checkpoints(lines, keys, hashes, result.entries) or result


async def entries_between(db: Database, low: int, high: int) -> list[dict[str, Any]]:
    """The exported entries ``low`` to ``high``, both included, in seq order."""
    entries: list[dict[str, Any]] = []
    async for entry in iter_entries(db, since=low - 1, block=min(high - low + 1, 5_000)):
        if entry["seq"] > high:
            break
        entries.append(entry)
    return entries
