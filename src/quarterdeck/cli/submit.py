"""``quarterdeck submit``: ingest envelopes, one JSON object per line, from a file or stdin;
one JSON result per line (``line`` is its number in the input), exit 1 when any line was
rejected. Blank lines (empty or whitespace only) are skipped.

Lines are read with a bounded reader: a line longer than the envelope's line limit is never
held whole; its head is kept, the rest only counted and hashed, and it is recorded as a
rejected receipt with its full size and the SHA-256 of the whole.

With a daemon running, the envelopes go through its control API (``POST /v1/envelopes``) and
the daemon records them; a line the API cannot carry (not a JSON object, over the line limit,
or more than a request may hold) is answered ``rejected`` here with the reason and is not
recorded (the exit code is 1, as for any rejected line). With no daemon, the lines are
recorded in the database as receipts, as the receipts' contract promises (every line, the
malformed ones as rejected receipts; command envelopes too, which a runtime applies for an
unauthenticated agent: an ``approval.request`` is applied, any other command refused). Through
a daemon a command envelope is answered ``rejected`` and not recorded: give it with the
supervision commands.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import IO, Any

from quarterdeck.cli.common import UsageError, print_json
from quarterdeck.client.api import ControlClient, ControlError
from quarterdeck.domain.envelope import MAX_LINE_BYTES, Oversized, decode_line
from quarterdeck.store.database import Database
from quarterdeck.store.receipts import RAW_KEEP_BYTES

SUBMIT_CHUNK = 1_000
"""Lines ingested in one transaction, at most."""
SUBMIT_CHUNK_BYTES = 16 * 1024 * 1024
"""Bytes of lines held for one transaction, at most (a chunk is sent once it reaches this)."""
COMMAND_REFUSED = (
    "kind: a command is not submitted while a daemon runs: give it with the supervision"
    " commands (POST /v1/commands)"
)
API_CHUNK_BYTES = 512 * 1024
"""Bytes of lines sent in one request to the control API, at most (its body limit is 1 MiB)."""
_READ = 1 << 20


def _line_end(line: bytes) -> bytes:
    """``line`` without its line end (``\\n`` or ``\\r\\n``)."""
    return line.rstrip(b"\r\n") if line.endswith(b"\n") else line


def read_lines(stream: IO[bytes], max_bytes: int = MAX_LINE_BYTES) -> Iterator[bytes | Oversized]:
    """The lines of a byte stream without their line ends; a line over ``max_bytes`` comes as
    :class:`Oversized` (its first bytes, its size, the SHA-256 of the whole), read through
    in pieces of at most ``max_bytes + 1`` bytes and never held whole."""
    while line := stream.readline(max_bytes + 2):
        content = _line_end(line)
        # Shorter than asked for and without a line end: only at the end of the stream.
        yield content if len(content) <= max_bytes else _rest_of(stream, line)


def envelope_lines(stream: IO[bytes]) -> Iterator[tuple[int, bytes | Oversized]]:
    """The lines of :func:`read_lines` numbered from 1, without the blank ones (empty or
    whitespace only, such as a file's blank last line): those hold no envelope and are skipped,
    not rejected. A line keeps its number in the input, so each result names its line."""
    for number, line in enumerate(read_lines(stream), start=1):
        if isinstance(line, bytes) and not line.strip():
            continue
        yield number, line


def _rest_of(stream: IO[bytes], start: bytes) -> Oversized:
    """Read the rest of an over-long line that began with ``start``, hashing what it holds."""
    digest = hashlib.sha256()
    head = start[:RAW_KEEP_BYTES]
    size = 0
    held = b""  # a trailing "\r", held back until it is known not to end the line
    piece = start
    while True:
        ended = piece.endswith(b"\n")
        body = held + (piece[:-1] if ended else piece)
        if ended and body.endswith(b"\r"):
            body = body[:-1]
        held = b""
        if not ended and body.endswith(b"\r"):
            body, held = body[:-1], b"\r"
        digest.update(body)
        size += len(body)
        if ended:
            break
        piece = stream.readline(_READ)
        if not piece:
            digest.update(held)
            size += len(held)
            break
    return Oversized(head, size, digest.hexdigest())


def _open(source: str) -> IO[bytes]:
    if source == "-":
        return sys.stdin.buffer
    try:
        return open(source, "rb")
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror}") from exc


async def submit_command(
    source: Database | ControlClient, args: argparse.Namespace, out: IO[str]
) -> int:
    """Ingest the lines in chunks of at most :data:`SUBMIT_CHUNK` lines and
    :data:`SUBMIT_CHUNK_BYTES` bytes, printing each line's result."""
    if isinstance(source, ControlClient):
        return await _submit_to_daemon(source, args, out)
    return await _submit_to_database(source, args, out)


async def _submit_to_database(db: Database, args: argparse.Namespace, out: IO[str]) -> int:
    from quarterdeck.runtime.ingest import Ingestor
    from quarterdeck.store.writer import Writer

    rejected = 0
    stream = _open(args.file)
    try:
        async with Writer(db) as writer:
            ingestor = Ingestor(writer)
            chunk: list[bytes | Oversized] = []
            numbers: list[int] = []
            held = 0

            async def flush() -> None:
                nonlocal rejected, held
                for number, result in zip(numbers, await ingestor.ingest(chunk), strict=True):
                    rejected += result.status == "rejected"
                    print_json({"line": number, **result.to_dict()}, out)
                out.flush()
                chunk.clear()
                numbers.clear()
                held = 0

            for number, line in envelope_lines(stream):
                chunk.append(line)
                numbers.append(number)
                held += len(line) if isinstance(line, bytes) else len(line.head)
                if len(chunk) >= SUBMIT_CHUNK or held >= SUBMIT_CHUNK_BYTES:
                    await flush()
            if chunk:
                await flush()
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    return 1 if rejected else 0


def _sendable(line: bytes | Oversized) -> dict[str, Any] | str:
    """The envelope object a line holds, or why the control API cannot carry it."""
    if isinstance(line, Oversized):
        return str(line.rejection().errors[0])
    try:
        value = decode_line(line)
    except ValueError as exc:
        return f"$: not a JSON text ({exc}); the control API takes JSON objects only"
    if not isinstance(value, dict):
        return "$: not a JSON object; the control API takes JSON objects only"
    if value.get("kind") == "command":
        return COMMAND_REFUSED
    return value


async def _in_order(
    chunk: Sequence[Any], record: Callable[[list[Any]], Awaitable[list[dict[str, Any]]]]
) -> list[dict[str, Any]]:
    """Each line's result in order: ``record``'s for the inputs, and a rejection that records
    nothing for each reason (a ``str``) in their place."""
    inputs = [item for item in chunk if not isinstance(item, str)]
    recorded = iter(await record(inputs) if inputs else [])
    return [_not_sent(item) if isinstance(item, str) else next(recorded) for item in chunk]


async def _submit_to_daemon(api: ControlClient, args: argparse.Namespace, out: IO[str]) -> int:
    """Send the lines to the daemon in requests of at most :data:`SUBMIT_CHUNK` lines and
    :data:`API_CHUNK_BYTES` bytes; print each line's result in order."""
    rejected = 0
    chunk: list[dict[str, Any] | str] = []
    numbers: list[int] = []
    held = 0

    async def send(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return await _send_envelopes(api, objects)

    async def flush() -> None:
        nonlocal rejected, held
        for number, result in zip(numbers, await _in_order(chunk, send), strict=True):
            rejected += result["status"] == "rejected"
            print_json({"line": number, **result}, out)
        out.flush()
        chunk.clear()
        numbers.clear()
        held = 0

    stream = _open(args.file)
    try:
        for number, line in envelope_lines(stream):
            size = len(line) if isinstance(line, bytes) else 0
            if chunk and held + size > API_CHUNK_BYTES:
                await flush()
            chunk.append(_sendable(line))
            numbers.append(number)
            held += size
            if len(chunk) >= SUBMIT_CHUNK:
                await flush()
        if chunk:
            await flush()
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    return 1 if rejected else 0


async def _send_envelopes(
    api: ControlClient, objects: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The daemon's result for each envelope; one too large for a request is not recorded."""
    try:
        return [result.to_dict() for result in await api.submit(objects)]
    except ControlError as exc:
        if exc.status != 413:
            raise
        if len(objects) == 1:
            return [_not_sent(f"$: {exc.message}")]
    half = len(objects) // 2
    return [
        *await _send_envelopes(api, objects[:half]),
        *await _send_envelopes(api, objects[half:]),
    ]


def _not_sent(reason: str) -> dict[str, Any]:
    """The result of a line that was not recorded."""
    return {"status": "rejected", "receipt": None, "errors": [f"{reason} (not recorded)"]}
