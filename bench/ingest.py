"""Ingest throughput: the public ingest API next to raw sqlite3 executemany, same run.

Usage: python bench/ingest.py [--envelopes N] [--batch B]

Rounds alternate the two sides (medians are reported) so that drift in machine speed hits
both alike. Both sides write into a fresh SQLite file with the same schema (built by Quarterdeck's
migrations, so the same unique index) and the same pragmas, in transactions of one batch.
The raw side inserts already-built row tuples; Quarterdeck's side starts from JSON lines and
validates, canonicalises, deduplicates and records each batch on the ledger. Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

from quarterdeck.runtime.ingest import Ingestor, draft_for
from quarterdeck.store.database import BUSY_TIMEOUT_MS, open_database
from quarterdeck.store.ledger import verify_ledger
from quarterdeck.store.receipts import INSERT_SQL
from quarterdeck.store.writer import Writer


def make_lines(count: int) -> list[bytes]:
    return [
        json.dumps(
            {
                "idempotency_key": f"bench-{i}",
                "workspace": "bench",
                "kind": "task",
                "payload": {
                    "objective": f"summarise ticket {i}",
                    "input": {"ticket": i, "priority": i % 5},
                },
            }
        ).encode()
        for i in range(count)
    ]


async def migrate_only(path: Path) -> None:
    db = await open_database(str(path))
    await db.dispose()


def raw_executemany(path: Path, lines: list[bytes], batch: int) -> float:
    """Rows per second for plain executemany of the same receipt rows."""
    asyncio.run(migrate_only(path))
    plain_sql = INSERT_SQL.split(" ON CONFLICT")[0]
    received = "2026-01-01T00:00:00.000000Z"
    rows = [tuple(draft_for(line, received)) for line in lines]
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA synchronous=NORMAL")
    started = time.perf_counter()
    for start in range(0, len(rows), batch):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(plain_sql, rows[start : start + batch])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return len(rows) / elapsed


async def through_api(path: Path, lines: list[bytes], batch: int) -> tuple[float, float, bool]:
    """(new envelopes/s, duplicate acknowledgements/s, ledger verified)."""
    db = await open_database(str(path))
    async with Writer(db) as writer:
        ingestor = Ingestor(writer)
        started = time.perf_counter()
        for start in range(0, len(lines), batch):
            results = await ingestor.ingest(lines[start : start + batch])
            assert all(r.status == "accepted" for r in results)
        fresh = len(lines) / (time.perf_counter() - started)
        started = time.perf_counter()
        for start in range(0, len(lines), batch):
            results = await ingestor.ingest(lines[start : start + batch])
            assert all(r.status == "duplicate" for r in results)
        duplicate = len(lines) / (time.perf_counter() - started)
    verified = (await verify_ledger(db)).ok
    await db.dispose()
    return fresh, duplicate, verified


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envelopes", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds; medians reported"
    )
    args = parser.parse_args(argv)
    lines = make_lines(args.envelopes)
    raws: list[float] = []
    fresh_rates: list[float] = []
    duplicate_rates: list[float] = []
    verified = True
    with tempfile.TemporaryDirectory() as tmp:
        for round_number in range(args.rounds):
            raws.append(raw_executemany(Path(tmp) / f"raw-{round_number}.db", lines, args.batch))
            fresh, duplicate, ok = asyncio.run(
                through_api(Path(tmp) / f"api-{round_number}.db", lines, args.batch)
            )
            fresh_rates.append(fresh)
            duplicate_rates.append(duplicate)
            verified = verified and ok
    raw = statistics.median(raws)
    fresh = statistics.median(fresh_rates)
    duplicate = statistics.median(duplicate_rates)
    figures = {
        "envelopes": args.envelopes,
        "batch": args.batch,
        "rounds": args.rounds,
        "raw_executemany_rows_per_s": round(raw),
        "ingest_envelopes_per_s": round(fresh),
        "ratio_vs_raw": round(fresh / raw, 3),
        "duplicate_acks_per_s": round(duplicate),
        "duplicate_vs_new": round(duplicate / fresh, 3),
        "ledger_verified": verified,
        "target_ratio_vs_raw": 0.35,
    }
    print(json.dumps(figures))
    return 0 if verified else 1


if __name__ == "__main__":
    sys.exit(main())
