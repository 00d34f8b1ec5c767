"""``quarterdeck submit``: ingest envelopes, one JSON object per line, from a file or stdin;
one JSON result per line, exit 1 when any line was rejected."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import IO

from quarterdeck.cli.common import UsageError, print_json
from quarterdeck.store.database import Database

SUBMIT_CHUNK = 1_000


def _read_lines(source: str) -> Iterator[bytes]:
    """The lines of a file (``-``: stdin) without their line ends."""
    if source == "-":
        stream: IO[bytes] = sys.stdin.buffer
    else:
        try:
            stream = open(source, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise UsageError(f"cannot read {source}: {exc.strerror}") from exc
    try:
        for line in stream:
            yield line.rstrip(b"\r\n") if line.endswith(b"\n") else line
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


async def submit_command(db: Database, args: argparse.Namespace, out: IO[str]) -> int:
    """Ingest the lines in chunks of :data:`SUBMIT_CHUNK`, printing each line's result."""
    from quarterdeck.runtime.ingest import Ingestor
    from quarterdeck.store.writer import Writer

    rejected = 0
    line_number = 0
    async with Writer(db) as writer:
        ingestor = Ingestor(writer)
        chunk: list[bytes] = []

        async def flush() -> None:
            nonlocal rejected, line_number
            for result in await ingestor.ingest(chunk):
                line_number += 1
                rejected += result.status == "rejected"
                print_json({"line": line_number, **result.to_dict()}, out)
            out.flush()
            chunk.clear()

        for line in _read_lines(args.file):
            chunk.append(line)
            if len(chunk) >= SUBMIT_CHUNK:
                await flush()
        if chunk:
            await flush()
    return 1 if rejected else 0
