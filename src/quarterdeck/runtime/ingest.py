"""Ingest: validate inputs, record every one of them as a receipt, answer one result each.

No input, however malformed or oversized, raises out of :meth:`Ingestor.ingest` or is dropped:
invalid inputs become rejected receipts holding their raw bytes and every reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from quarterdeck.domain.canonical import canonical_json, sha256_hex
from quarterdeck.domain.clock import Clock, format_instant, utc_now
from quarterdeck.domain.envelope import (
    Envelope,
    FieldError,
    Oversized,
    Rejection,
    parse_envelope,
    printable,
)
from quarterdeck.domain.ids import new_id, new_ids
from quarterdeck.runtime.metrics import Metrics
from quarterdeck.store.receipts import (
    RAW_KEEP_BYTES,
    REJECTED_QUOTA_BYTES,
    UNKNOWN_WORKSPACE,
    IngestResult,
    KnownKeys,
    ReceiptDraft,
    store_receipts,
)
from quarterdeck.store.writer import Writer, WriteTxn

RawInput = bytes | str | Mapping[str, Any] | Oversized
"""One input: a JSON text, a decoded object, or a line too long to have been read whole."""
T = TypeVar("T")


def _raw_bytes(raw: object) -> bytes:
    if isinstance(raw, bytes):
        return raw
    if isinstance(raw, str):
        return raw.encode("utf-8", "surrogatepass")
    try:
        return canonical_json(raw)
    except (TypeError, ValueError, RecursionError):
        pass
    try:
        return repr(raw).encode("utf-8", "backslashreplace")
    except RecursionError:
        return f"<{type(raw).__name__} nested too deeply to record>".encode()


def draft_for(raw: object, now: str, receipt_id: str | None = None) -> ReceiptDraft:
    """Turn one input, received at ``now``, into a receipt draft (accepted or rejected).

    Never raises. The receipt gets ``receipt_id`` (a new id if None); an envelope without an
    ``id`` gets its receipt's id.
    """
    receipt_id = receipt_id or new_id()
    try:
        if isinstance(raw, Oversized):
            parsed: Envelope | Rejection = raw.rejection()
        elif isinstance(raw, bytes | str | Mapping):
            parsed = parse_envelope(raw, now, receipt_id)
        else:
            parsed = Rejection(
                (FieldError("$", f"must be a JSON object, got {type(raw).__name__}"),)
            )
    except Exception as exc:  # a validator bug must not lose the input
        parsed = Rejection(
            (FieldError("$", f"could not be validated: {type(exc).__name__}: {exc}"),)
        )
    if isinstance(parsed, Envelope):
        return ReceiptDraft(
            receipt_id,
            parsed.workspace,
            "key:" + parsed.idempotency_key,
            "accepted",
            now,
            parsed.id,
            parsed.idempotency_key,
            parsed.correlation_id,
            parsed.causation_id,
            parsed.schema_version,
            parsed.kind,
            parsed.payload_json,
            parsed.submitted_at,
            "[]",
            None,
            None,
            None,
            None,
            1,
        )
    if isinstance(raw, Oversized):
        data, size, digest = raw.head, raw.size, raw.sha256
    else:
        data = _raw_bytes(raw)
        size, digest = len(data), sha256_hex(data)
    return ReceiptDraft(
        id=receipt_id,
        workspace=parsed.workspace or UNKNOWN_WORKSPACE,
        dedupe_key="raw:" + digest,
        status="rejected",
        received_at=now,
        envelope_id=None,
        idempotency_key=parsed.idempotency_key,
        correlation_id=None,
        causation_id=None,
        schema_version=None,
        kind=parsed.kind,
        payload=None,
        submitted_at=None,
        errors=json.dumps([printable(str(e)) for e in parsed.errors], ensure_ascii=False),
        raw=data[:RAW_KEEP_BYTES],
        raw_size=size,
        produced_type=None,
        produced_id=None,
        version=1,
    )


class Ingestor:
    """The public ingest API: a batch in, one result per input out, in order."""

    def __init__(
        self,
        writer: Writer,
        clock: Clock = utc_now,
        metrics: Metrics | None = None,
        *,
        rejected_quota: int = REJECTED_QUOTA_BYTES,
    ) -> None:
        self.writer = writer
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.known = KnownKeys()
        self.rejected_quota = rejected_quota
        """Raw bytes of rejected input each workspace keeps in all."""

    async def ingest(self, inputs: Sequence[RawInput]) -> list[IngestResult]:
        """Record every input durably and return its result once committed.

        Args:
            inputs: JSON texts (bytes or str, one envelope each) or decoded objects.

        Returns:
            One result per input, in input order: accepted, duplicate or rejected.
        """
        if not inputs:
            return []
        results, _ = await self._record(inputs, _nothing, concurrent=True)
        return results

    async def ingest_then(
        self,
        inputs: Sequence[RawInput],
        then: Callable[[WriteTxn, list[IngestResult]], T],
        *,
        quiet: bool = False,
    ) -> tuple[list[IngestResult], T]:
        """As :meth:`ingest`, then ``then(txn, results)`` in the same transaction, an exclusive
        one (``then`` may apply what was just recorded); its value comes with the results.
        ``quiet``: as :meth:`~quarterdeck.store.writer.Writer.submit`'s."""
        return await self._record(inputs, then, concurrent=False, quiet=quiet)

    async def _record(
        self,
        inputs: Sequence[RawInput],
        then: Callable[[WriteTxn, list[IngestResult]], T],
        *,
        concurrent: bool,
        quiet: bool = False,
    ) -> tuple[list[IngestResult], T]:
        now = format_instant(self.clock())
        ids = new_ids(len(inputs))
        drafts = [
            draft_for(raw, now, receipt_id) for raw, receipt_id in zip(inputs, ids, strict=True)
        ]

        learned: dict[tuple[str, str], Any] = {}

        def op(txn: WriteTxn) -> tuple[list[IngestResult], T]:
            learned.clear()  # a retried commit starts over
            results = store_receipts(
                txn, drafts, self.known, learned, rejected_quota=self.rejected_quota
            )
            return results, then(txn, results)

        results, value = await self.writer.submit(op, concurrent=concurrent, quiet=quiet)
        self.known.learn(learned)  # only now: the operation committed
        self.metrics.ingested.update(result.status for result in results)
        return results, value


def _nothing(_txn: WriteTxn, _results: list[IngestResult]) -> None:
    return None
