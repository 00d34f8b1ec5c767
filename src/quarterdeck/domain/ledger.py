"""The hash-chained ledger: entry shape, hashing and chain verification.

Format: ``docs/specs/ledger.md``. An entry's hash is
``SHA-256(prev_hash_hex_ascii || canonical_json(body))`` where the body is the entry
without ``prev_hash`` and ``hash``. The first entry's ``prev_hash`` is 64 zeros.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from quarterdeck.domain.canonical import canonical_text

GENESIS_HASH: Final = "0" * 64

quote_text = json.encoder.encode_basestring
"""A string as JSON text, escaped as ``json.dumps(..., ensure_ascii=False)`` (and so the
canonical encoder) does; C-accelerated."""


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One appended entry. ``payload_json`` is the payload's canonical JSON text."""

    seq: int
    at: str
    workspace: str
    actor: str
    action: str
    subject_type: str
    subject_id: str
    from_state: str | None
    to_state: str | None
    payload_json: str
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        """The entry as exported: every field, payload decoded."""
        return {
            "seq": self.seq,
            "at": self.at,
            "workspace": self.workspace,
            "actor": self.actor,
            "action": self.action,
            "subject_type": self.subject_type,
            "subject_id": self.subject_id,
            "from_state": self.from_state,
            "to_state": self.to_state,
            "payload": json.loads(self.payload_json),
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


def body_text(
    seq: int,
    at: str,
    workspace: str,
    actor: str,
    action: str,
    subject_type: str,
    subject_id: str,
    from_state: str | None,
    to_state: str | None,
    payload_json: str,
) -> str:
    """Canonical JSON text of an entry's body, built without a dict for speed.

    Equal to ``canonical_text`` of the body dict whenever ``payload_json`` is canonical.
    """
    parts = body_parts(
        workspace, actor, action, subject_type, subject_id, from_state, to_state, payload_json
    )
    return join_body(parts, at, seq)


def body_parts(
    workspace: str,
    actor: str,
    action: str,
    subject_type: str,
    subject_id: str,
    from_state: str | None,
    to_state: str | None,
    payload_json: str,
) -> tuple[str, str, str]:
    """The canonical body around its ``at`` and ``seq``, which are settled last: the body is
    joined by :func:`join_body`."""
    head = '{"action":' + quote_text(action) + ',"actor":' + quote_text(actor) + ',"at":'
    middle = (
        ',"from_state":'
        + ("null" if from_state is None else quote_text(from_state))
        + ',"payload":'
        + payload_json
        + ',"seq":'
    )
    tail = (
        ',"subject_id":'
        + quote_text(subject_id)
        + ',"subject_type":'
        + quote_text(subject_type)
        + ',"to_state":'
        + ("null" if to_state is None else quote_text(to_state))
        + ',"workspace":'
        + quote_text(workspace)
        + "}"
    )
    return head, middle, tail


def join_body(parts: tuple[str, str, str], at: str, seq: int) -> str:
    """The canonical body from :func:`body_parts` and the entry's ``at`` and ``seq``."""
    head, middle, tail = parts
    return head + quote_text(at) + middle + str(seq) + tail


def chain_hash(prev_hash: str, body: str) -> str:
    """The entry hash: SHA-256 over the previous hash (hex ASCII) then the body's UTF-8."""
    return hashlib.sha256((prev_hash + body).encode("utf-8")).hexdigest()


def make_entry(
    *,
    seq: int,
    prev_hash: str,
    at: str,
    workspace: str,
    actor: str,
    action: str,
    subject_type: str,
    subject_id: str,
    from_state: str | None,
    to_state: str | None,
    payload: dict[str, Any] | None = None,
) -> LedgerEntry:
    """Build the next entry of a chain whose head is ``(seq - 1, prev_hash)``."""
    payload_json = canonical_text(payload or {})
    body = body_text(
        seq,
        at,
        workspace,
        actor,
        action,
        subject_type,
        subject_id,
        from_state,
        to_state,
        payload_json,
    )
    return LedgerEntry(
        seq=seq,
        at=at,
        workspace=workspace,
        actor=actor,
        action=action,
        subject_type=subject_type,
        subject_id=subject_id,
        from_state=from_state,
        to_state=to_state,
        payload_json=payload_json,
        prev_hash=prev_hash,
        hash=chain_hash(prev_hash, body),
    )


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The outcome of verifying a chain."""

    ok: bool
    entries: int
    head: str
    first_bad_seq: int | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape ``ledger verify --json`` prints."""
        if self.ok:
            return {"ok": True, "entries": self.entries, "head": self.head}
        return {"ok": False, "first_bad_seq": self.first_bad_seq, "reason": self.reason}


LedgerRow = tuple[Any, Any, Any, Any, Any, Any, Any, Any, Any, Any, Any, Any]
"""``(seq, at, workspace, actor, action, subject_type, subject_id, from_state, to_state,
payload_json, prev_hash, hash)`` as stored; values may be damaged, so typed loosely."""


class ChainVerifier:
    """Verifies stored entries fed in ascending ``seq`` order, block by block.

    Feed blocks with :meth:`feed` until it returns a failure or the rows run out, then call
    :meth:`finish` with the recorded head.
    """

    def __init__(self) -> None:
        self.expected = 1
        self.prev = GENESIS_HASH

    def feed(self, rows: Iterable[LedgerRow]) -> VerifyResult | None:
        """Check a block of rows; return the failure, or None if all of them hold."""
        expected = self.expected
        prev = self.prev
        quote = quote_text
        sha256 = hashlib.sha256
        try:
            for row in rows:
                seq, at, ws, actor, action, stype, sid, frm, to, payload, stored_prev, stored = row
                if type(seq) is not int or seq < expected:
                    # A seq altered downwards: its true place shows up as a gap.
                    continue
                if seq != expected:
                    return _bad(expected, f"entry {expected} is missing (next stored seq is {seq})")
                try:
                    # body_text(), inlined: this loop is the whole cost of verification.
                    body = (
                        '{"action":' + quote(action) + ',"actor":' + quote(actor)
                        + ',"at":' + quote(at)
                        + ',"from_state":' + ("null" if frm is None else quote(frm))
                        + ',"payload":' + payload + ',"seq":' + str(seq)
                        + ',"subject_id":' + quote(sid) + ',"subject_type":' + quote(stype)
                        + ',"to_state":' + ("null" if to is None else quote(to))
                        + ',"workspace":' + quote(ws) + "}"
                    )  # fmt: skip
                    computed = sha256((prev + body).encode("utf-8")).hexdigest()
                except (TypeError, UnicodeError) as exc:
                    return _bad(seq, f"entry is unreadable: {exc}")
                if stored_prev != prev:
                    return _bad(seq, "prev_hash does not match the previous entry's hash")
                if stored != computed:
                    return _bad(seq, "hash does not match the entry's content")
                prev = computed
                expected += 1
        finally:
            self.expected = expected
            self.prev = prev
        return None

    def feed_bodies(self, rows: Iterable[tuple[Any, Any, Any, Any]]) -> VerifyResult | None:
        """Like :meth:`feed`, for rows of ``(seq, body_text, prev_hash, hash)`` whose body the
        store already built (byte-for-byte what :func:`body_text` builds)."""
        expected = self.expected
        prev = self.prev
        sha256 = hashlib.sha256
        try:
            for seq, body, stored_prev, stored in rows:
                if type(seq) is not int or seq < expected:
                    continue
                if seq != expected:
                    return _bad(expected, f"entry {expected} is missing (next stored seq is {seq})")
                try:
                    computed = sha256((prev + body).encode("utf-8")).hexdigest()
                except (TypeError, UnicodeError) as exc:
                    return _bad(seq, f"entry is unreadable: {exc}")
                if stored_prev != prev:
                    return _bad(seq, "prev_hash does not match the previous entry's hash")
                if stored != computed:
                    return _bad(seq, "hash does not match the entry's content")
                prev = computed
                expected += 1
        finally:
            self.expected = expected
            self.prev = prev
        return None

    def finish(self, head: tuple[int, str] | None) -> VerifyResult:
        """Compare the chain read so far with the recorded head ``(seq, hash)``."""
        last = self.expected - 1
        if head is None:
            if last:
                return _bad(last, "no ledger head is recorded")
            return VerifyResult(True, 0, GENESIS_HASH)
        head_seq, head_hash = head
        if head_seq > last:
            return _bad(last + 1, f"entry {last + 1} is missing (the head records seq {head_seq})")
        if head_seq < last:
            return _bad(head_seq + 1, f"entry {head_seq + 1} lies beyond the recorded head")
        if head_hash != self.prev:
            return _bad(last, "the recorded head hash does not match the last entry")
        return VerifyResult(True, last, self.prev)


def verify_chain(rows: Iterable[LedgerRow], head: tuple[int, str] | None) -> VerifyResult:
    """Verify stored entries, in ascending ``seq`` order, against the recorded head ``(seq, hash)``."""
    verifier = ChainVerifier()
    return verifier.feed(rows) or verifier.finish(head)


def _bad(seq: int, reason: str) -> VerifyResult:
    return VerifyResult(False, 0, "", first_bad_seq=seq, reason=reason)
