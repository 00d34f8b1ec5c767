"""Ledger verification speed: ``ledger verify`` next to a bare hashlib chain, same run.

Usage: python bench/ledger_verify.py [--entries N]

Builds a fresh SQLite ledger of N entries (default 1,000,000) through the store's own append
path, then times the store's verification (read every row, rebuild each entry's canonical body,
re-hash the chain, compare with the recorded head) against a bare SHA-256 chain over the same
body bytes held in memory. Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

from quarterdeck.domain.ledger import GENESIS_HASH, body_text
from quarterdeck.store.database import open_database
from quarterdeck.store.ledger import verify_ledger
from quarterdeck.store.writer import Writer, WriteTxn

BLOCK = 20_000


def _append_block(txn: WriteTxn, start: int, count: int) -> None:
    for i in range(start, start + count):
        txn.ledger.append(
            at=txn.at,
            workspace="bench",
            actor="bench",
            action="turn.running",
            subject_type="turn",
            subject_id=f"turn-{i // 4:08d}",
            from_state="leased",
            to_state="running",
            payload={"version": i % 7 + 1, "attempt": 1, "note": f"entry {i}"},
        )


async def build(path: Path, entries: int) -> float:
    db = await open_database(str(path))
    started = time.perf_counter()
    async with Writer(db) as writer:
        for start in range(0, entries, BLOCK):
            count = min(BLOCK, entries - start)
            await writer.submit(lambda txn, s=start, c=count: _append_block(txn, s, c))
    elapsed = time.perf_counter() - started
    await db.dispose()
    return entries / elapsed


async def verify(path: Path) -> tuple[float, bool, int, list[bytes]]:
    db = await open_database(str(path))
    started = time.perf_counter()
    result = await verify_ledger(db)
    elapsed = time.perf_counter() - started
    # The same bodies, for the bare chain.
    bodies: list[bytes] = []
    async with db.read() as conn:
        rows = await conn.exec_driver_sql(
            "SELECT seq, at, workspace, actor, action, subject_type, subject_id, from_state, "
            "to_state, payload FROM ledger ORDER BY seq"
        )
        for row in rows:
            bodies.append(body_text(*row).encode("utf-8"))
    await db.dispose()
    return result.entries / elapsed, result.ok, result.entries, bodies


def bare_chain(bodies: list[bytes]) -> float:
    started = time.perf_counter()
    prev = GENESIS_HASH.encode("ascii")
    for body in bodies:
        prev = hashlib.sha256(prev + body).hexdigest().encode("ascii")
    return len(bodies) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ledger.db"
        append_rate = asyncio.run(build(path, args.entries))
        verify_rate, ok, count, bodies = asyncio.run(verify(path))
    bare = bare_chain(bodies)
    figures = {
        "entries": count,
        "append_entries_per_s": round(append_rate),
        "verify_entries_per_s": round(verify_rate),
        "bare_hashlib_entries_per_s": round(bare),
        "ratio_vs_hashlib": round(verify_rate / bare, 3),
        "verified": ok,
        "target_entries_per_s": 100_000,
        "target_ratio_vs_hashlib": 0.15,
    }
    print(json.dumps(figures))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
