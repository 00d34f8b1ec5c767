"""``quarterdeck submit`` against inputs meant to exhaust it, run as real processes on a real
database (SQLite and PostgreSQL): a 200 MiB line without a line end is rejected after the limit
without being held whole, and thousands of distinct garbage lines keep at most the workspace's
quota of raw bytes; every input still gets its receipt, with its size and SHA-256."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import Store, envelope, line

from quarterdeck.cli.submit import read_lines
from quarterdeck.domain.envelope import MAX_LINE_BYTES, Oversized
from quarterdeck.store.receipts import RAW_KEEP_BYTES, REJECTED_QUOTA_BYTES, quota_note

PEAK = """
import runpy, sys
sys.argv = ["quarterdeck", *sys.argv[1:]]
try:
    runpy.run_module("quarterdeck", run_name="__main__", alter_sys=True)
finally:
    with open("/proc/self/status") as status:
        hwm = next(l.split()[1] for l in status if l.startswith("VmHWM:"))
    sys.stderr.write(f"peak-rss-kib {hwm}\\n")
"""
"""``quarterdeck ARGS`` in this process, reporting its peak resident memory on exit. The peak is
the process's own (``VmHWM``): ``ru_maxrss`` would carry over the parent's peak, since Linux keeps
it across ``exec`` and the test runner's process can be far larger than the one measured."""

PRODUCER = """
import sys
piece = b"x" * (1 << 20)
for _ in range(int(sys.argv[1])):
    sys.stdout.buffer.write(piece)
sys.stdout.buffer.write(b"\\n" + sys.argv[2].encode() + b"\\n")
"""
"""Writes a line of N MiB of ``x`` (no JSON at all), then one more line, to stdout."""


def test_read_lines_hashes_an_over_long_line_without_keeping_it() -> None:
    data = b"short\n" + b"x" * 25 + b"\r\n" + b"y" * 10 + b"\r\n" + b"z" * 11 + b"\r" + b"\nend"
    lines = list(read_lines(io.BufferedReader(io.BytesIO(data), 4), 10))
    assert lines[0] == b"short" and lines[2] == b"y" * 10 and lines[4] == b"end"
    assert lines[1] == Oversized(b"x" * 12, 25, hashlib.sha256(b"x" * 25).hexdigest())
    assert lines[3] == Oversized(b"z" * 11 + b"\r", 11, hashlib.sha256(b"z" * 11).hexdigest())


def test_a_200_mib_line_is_rejected_without_being_held_and_nothing_is_lost(
    tmp_path: Path, database: str
) -> None:
    mib = 200
    following = json.dumps(envelope(1, "acme"))
    producer = subprocess.Popen(
        [sys.executable, "-c", PRODUCER, str(mib), following], stdout=subprocess.PIPE
    )
    env = {**os.environ, "QUARTERDECK_STATE_DIR": str(tmp_path / "state")}
    result = subprocess.run(
        [sys.executable, "-c", PEAK, "--db", database, "submit", "-"],
        stdin=producer.stdout,
        capture_output=True,
        env=env,
        timeout=300,
    )
    assert producer.stdout is not None
    producer.stdout.close()
    assert producer.wait(timeout=60) == 0
    err = result.stderr.decode()
    assert "Traceback" not in err, err
    assert result.returncode == 1  # a line was rejected
    peak_mib = int(err.rsplit("peak-rss-kib ", 1)[1].split()[0]) / 1024
    print(f"\nsubmit of a {mib} MiB line: peak resident memory {peak_mib:.0f} MiB")
    assert peak_mib < 150, f"the line was buffered: peak {peak_mib:.0f} MiB"

    results = [json.loads(text) for text in result.stdout.splitlines()]
    size = mib << 20
    assert [r["status"] for r in results] == ["rejected", "accepted"]
    assert results[0]["errors"] == [f"$: {size} bytes exceeds the {MAX_LINE_BYTES}-byte line limit"]
    row = Store(database).one("SELECT * FROM receipts WHERE id = ?", results[0]["receipt"])
    assert row is not None
    digest = hashlib.sha256()
    piece = b"x" * (1 << 20)
    for _ in range(mib):
        digest.update(piece)
    assert row["raw_size"] == size
    assert bytes(row["raw"]) == b"x" * RAW_KEEP_BYTES
    assert row["dedupe_key"] == "raw:" + digest.hexdigest()  # the SHA-256 of the whole line


def test_distinct_garbage_keeps_at_most_the_quota_and_says_so(
    tmp_path: Path, database: str
) -> None:
    count = REJECTED_QUOTA_BYTES // RAW_KEEP_BYTES + 8
    garbage = [b"%08d" % i + b"#" * (RAW_KEEP_BYTES - 8) for i in range(count)]
    other = line(envelope(1, "beta", kind="job"))  # rejected, but readable: files under beta
    data = b"\n".join([*garbage, other, garbage[-1]]) + b"\n"
    env = {**os.environ, "QUARTERDECK_STATE_DIR": str(tmp_path / "state")}
    result = subprocess.run(
        [sys.executable, "-m", "quarterdeck", "--db", database, "submit", "-"],
        input=data,
        capture_output=True,
        env=env,
        timeout=600,
    )
    assert "Traceback" not in result.stderr.decode(), result.stderr.decode()
    assert result.returncode == 1
    results = [json.loads(text) for text in result.stdout.splitlines()]
    assert len(results) == count + 2 and all(r["status"] == "rejected" for r in results)
    note = quota_note(REJECTED_QUOTA_BYTES)
    kept = REJECTED_QUOTA_BYTES // RAW_KEEP_BYTES
    assert all(note not in r["errors"] for r in results[:kept])
    assert all(r["errors"][-1] == note for r in results[kept:count])
    again, first = results[-1], results[count - 1]
    assert {**again, "line": 0} == {**first, "line": 0}  # the same bytes: the same receipt
    assert note not in results[count]["errors"]  # another workspace has its own quota

    store = Store(database)
    rows = store.rows(
        "SELECT raw, raw_size, dedupe_key, errors FROM receipts WHERE workspace = '_unknown'"
    )
    assert len(rows) == count  # every input has its receipt
    stored = sum(len(bytes(r["raw"])) for r in rows if r["raw"] is not None)
    assert stored == REJECTED_QUOTA_BYTES
    by_key = {r["dedupe_key"]: r for r in rows}
    for raw in garbage[kept:]:
        row = by_key["raw:" + hashlib.sha256(raw).hexdigest()]
        assert row["raw"] is None and row["raw_size"] == len(raw)
        assert json.loads(row["errors"])[-1] == note
    beta = store.one("SELECT raw FROM receipts WHERE workspace = 'beta'")
    assert beta is not None and bytes(beta["raw"]) == other
