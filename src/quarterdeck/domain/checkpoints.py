"""Signed checkpoints of the ledger: the record, the bytes a node signs, Ed25519 signing and
verification, and the checks an outsider makes with them (a chain still holds each
checkpointed head; a proof leads from an entry to a signed head).

Format: ``docs/specs/ledger.md`` (Checkpoints). A checkpoint's signed bytes are the canonical
JSON of the record without its ``signature``; its hash, which the next checkpoint names as
``prev``, is the SHA-256 of those bytes. Keys are named by ``key_id``: the first 16 bytes of
the SHA-256 of the raw 32-byte public key, in hex.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from quarterdeck.domain.canonical import canonical_json, canonical_text, sha256_hex
from quarterdeck.domain.ledger import GENESIS_HASH, VerifyResult, chain_hash

CHECKPOINT_TYPE: Final = "quarterdeck.ledger.checkpoint/1"
PROOF_TYPE: Final = "quarterdeck.ledger.proof/1"
_FIELDS: Final = frozenset({"type", "seq", "head", "at", "node", "prev", "key_id", "signature"})
_HEX_LENGTHS: Final = {"head": 64, "prev": 64, "key_id": 32, "signature": 128}


class CheckpointFormatError(ValueError):
    """A checkpoint (or a public key, or a proof) is not in the documented form."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One signed checkpoint: ledger entry ``seq`` had hash ``head`` when node ``node`` signed
    it at ``at``; ``prev`` is the hash of the checkpoint before it in the same file."""

    seq: int
    head: str
    at: str
    node: str
    prev: str
    key_id: str
    signature: str

    def body(self) -> dict[str, Any]:
        """What is signed: every field but the signature, with the record's type."""
        return {
            "type": CHECKPOINT_TYPE,
            "seq": self.seq,
            "head": self.head,
            "at": self.at,
            "node": self.node,
            "prev": self.prev,
            "key_id": self.key_id,
        }

    def signed_bytes(self) -> bytes:
        """The canonical JSON of :meth:`body`: the bytes the signature covers."""
        return canonical_json(self.body())

    @property
    def hash(self) -> str:
        """SHA-256 of the signed bytes, in hex: what the next checkpoint names as ``prev``."""
        return sha256_hex(self.signed_bytes())

    def to_dict(self) -> dict[str, Any]:
        """The record as written to the checkpoint file (one canonical JSON line)."""
        return {**self.body(), "signature": self.signature}

    def to_line(self) -> str:
        """The record as one line of the checkpoint file, newline included."""
        return canonical_text(self.to_dict()) + "\n"

    @classmethod
    def from_dict(cls, value: object) -> Checkpoint:
        """Read a record, refusing anything but the documented fields and forms.

        Raises:
            CheckpointFormatError: a field is missing, unknown, or not in its form.
        """
        if not isinstance(value, dict):
            raise CheckpointFormatError("a checkpoint must be a JSON object")
        if set(value) != _FIELDS:
            missing, extra = sorted(_FIELDS - set(value)), sorted(set(value) - _FIELDS)
            raise CheckpointFormatError(f"fields missing {missing}, unknown {extra}")
        if value["type"] != CHECKPOINT_TYPE:
            raise CheckpointFormatError(f"type must be {CHECKPOINT_TYPE!r}")
        seq = value["seq"]
        if type(seq) is not int or seq < 1:
            raise CheckpointFormatError("seq must be a whole number of at least 1")
        for name, length in _HEX_LENGTHS.items():
            if not is_hex(value[name], length):
                raise CheckpointFormatError(f"{name} must be {length} lowercase hex digits")
        for name in ("at", "node"):
            if not isinstance(value[name], str) or not value[name]:
                raise CheckpointFormatError(f"{name} must be a non-empty string")
        return cls(
            seq=seq,
            head=value["head"],
            at=value["at"],
            node=value["node"],
            prev=value["prev"],
            key_id=value["key_id"],
            signature=value["signature"],
        )


def is_hex(value: object, length: int) -> bool:
    """Whether ``value`` is a string of exactly ``length`` lowercase hex digits."""
    return (
        isinstance(value, str)
        and len(value) == length
        and all(c in "0123456789abcdef" for c in value)
    )


# --- keys --------------------------------------------------------------------------------------


def public_bytes(key: Ed25519PublicKey) -> bytes:
    """The raw 32-byte public key."""
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def public_hex(key: Ed25519PublicKey) -> str:
    """The raw public key in hex (64 digits): how keys are printed and listed."""
    return public_bytes(key).hex()


def key_id_of(key: Ed25519PublicKey) -> str:
    """The key's id: the first 16 bytes of SHA-256 of the raw public key, in hex."""
    return hashlib.sha256(public_bytes(key)).hexdigest()[:32]


def public_key_from_hex(text: str) -> Ed25519PublicKey:
    """A public key from its 64 hex digits.

    Raises:
        CheckpointFormatError: not 64 hex digits.
    """
    if not is_hex(text.lower(), 64):
        raise CheckpointFormatError("a public key must be 64 hex digits (the raw Ed25519 key)")
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text))


def parse_public_keys(text: str) -> dict[str, Ed25519PublicKey]:
    """A list of trusted public keys by key id: one key (64 hex digits) at the start of each
    line, anything after it on the line ignored; blank lines and ``#`` comments skipped.

    Raises:
        CheckpointFormatError: a line does not start with a key (its number is named).
    """
    keys: dict[str, Ed25519PublicKey] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            key = public_key_from_hex(stripped.split()[0])
        except CheckpointFormatError as exc:
            raise CheckpointFormatError(f"line {number}: {exc}") from None
        keys[key_id_of(key)] = key
    return keys


# --- signing -----------------------------------------------------------------------------------


def sign_checkpoint(
    key: Ed25519PrivateKey, *, seq: int, head: str, at: str, node: str, prev: str
) -> Checkpoint:
    """Sign that entry ``seq`` has hash ``head``, following the checkpoint whose hash is
    ``prev`` (:data:`GENESIS_HASH` for a file's first)."""
    unsigned = Checkpoint(seq, head, at, node, prev, key_id_of(key.public_key()), "")
    signature = key.sign(unsigned.signed_bytes()).hex()
    return Checkpoint(seq, head, at, node, prev, unsigned.key_id, signature)


def signature_holds(checkpoint: Checkpoint, key: Ed25519PublicKey) -> bool:
    """Whether the checkpoint's signature verifies with ``key`` over its signed bytes."""
    try:
        key.verify(bytes.fromhex(checkpoint.signature), checkpoint.signed_bytes())
    except (InvalidSignature, ValueError):
        return False
    return True


# --- checking a chain against its checkpoints --------------------------------------------------


def parse_checkpoint_lines(text: str) -> list[tuple[int, Checkpoint | str]]:
    """The checkpoint file's lines by number: each a checkpoint, or why it is not one."""
    found: list[tuple[int, Checkpoint | str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            found.append((number, Checkpoint.from_dict(json.loads(line))))
        except ValueError as exc:  # CheckpointFormatError, or not JSON
            found.append((number, f"line {number} is not a checkpoint: {exc}"))
    return found


def missing_head(checkpoint: Checkpoint, stored_hash: str | None, last_seq: int) -> str | None:
    """Why a chain whose last entry is ``last_seq`` and whose entry at the checkpoint's seq
    has hash ``stored_hash`` no longer holds the checkpointed head (None: it holds it)."""
    if checkpoint.seq > last_seq:
        return (
            f"checkpoint at seq {checkpoint.seq} signed a head the ledger no longer holds: "
            f"the ledger ends at seq {last_seq} (entries were removed)"
        )
    if stored_hash != checkpoint.head:
        return (
            f"entry {checkpoint.seq} no longer has the hash its checkpoint signed "
            f"(the chain was rewritten at or below seq {checkpoint.seq})"
        )
    return None


def check_checkpoints(
    lines: Sequence[tuple[int, Checkpoint | str]],
    keys: Mapping[str, Ed25519PublicKey],
    stored_hashes: Mapping[int, str],
    last_seq: int,
) -> VerifyResult | None:
    """Check a checkpoint file's records in order against a verified chain: each follows the
    one before it, is signed by one of ``keys`` and names a head the chain still holds
    (``stored_hashes``: the chain's hash at each checkpointed seq; ``last_seq``: its last).
    Return the first failure, at the checkpoint's seq, or None when all hold."""
    prev, prev_seq = GENESIS_HASH, 0
    for number, item in lines:
        if isinstance(item, str):
            return _bad(None, item)
        where = f"checkpoint at seq {item.seq} (line {number})"
        if item.prev != prev:
            return _bad(
                item.seq, f"{where} does not follow the line before it (lines were removed, "
                "changed or inserted)",
            )  # fmt: skip
        key = keys.get(item.key_id)
        if key is None:
            return _bad(item.seq, f"{where} is signed by an unknown key {item.key_id}")
        if not signature_holds(item, key):
            return _bad(item.seq, f"{where}: the signature does not verify")
        if item.seq < prev_seq:
            return _bad(item.seq, f"{where} goes back from seq {prev_seq}")
        reason = missing_head(item, stored_hashes.get(item.seq), last_seq)
        if reason is not None:
            return _bad(item.seq, f"{reason}; {where}")
        prev, prev_seq = item.hash, item.seq
    return None


def _bad(seq: int | None, reason: str) -> VerifyResult:
    return VerifyResult(False, 0, "", first_bad_seq=seq, reason=reason)


# --- proofs ------------------------------------------------------------------------------------


def make_proof(
    seq: int, entries: Iterable[Mapping[str, Any]], checkpoint: Checkpoint
) -> dict[str, Any]:
    """The proof that entry ``seq`` is in the signed log: the exported entries from ``seq`` to
    the checkpoint's seq, and the checkpoint."""
    return {
        "type": PROOF_TYPE,
        "seq": seq,
        "entries": [dict(entry) for entry in entries],
        "checkpoint": checkpoint.to_dict(),
    }


def check_proof(proof: Mapping[str, Any]) -> str | None:
    """Why ``proof``'s entries do not lead to its checkpoint (None: they do). Each entry's hash
    is recomputed from its content and its ``prev_hash``, each links to the one before, and
    the last is the checkpointed head. (Whether the checkpoint's signature verifies with a
    trusted key is for whoever receives the proof: ``docs/specs/ledger.md``.)"""
    try:
        checkpoint = Checkpoint.from_dict(proof.get("checkpoint"))
    except CheckpointFormatError as exc:
        return f"the checkpoint is not in form: {exc}"
    entries = proof.get("entries")
    seq = proof.get("seq")
    if proof.get("type") != PROOF_TYPE or type(seq) is not int:
        return f"not a proof (type must be {PROOF_TYPE!r}, seq a number)"
    if not isinstance(entries, list) or not entries:
        return "the proof holds no entries"
    prev: str | None = None
    expected = seq
    for entry in entries:
        if not isinstance(entry, dict) or not {"seq", "prev_hash", "hash"} <= set(entry):
            return f"entry {expected} is not an exported entry"
        body = {k: v for k, v in entry.items() if k not in ("prev_hash", "hash")}
        if entry["seq"] != expected:
            return f"entry {expected} is missing (found seq {entry['seq']})"
        if prev is not None and entry["prev_hash"] != prev:
            return f"entry {expected} does not link to the entry before it"
        if not isinstance(entry["prev_hash"], str):
            return f"entry {expected}: prev_hash is not a string"
        try:
            computed = chain_hash(entry["prev_hash"], canonical_text(body))
        except (TypeError, ValueError) as exc:
            return f"entry {expected} cannot be hashed: {exc}"
        if computed != entry["hash"]:
            return f"entry {expected}: hash does not match its content"
        prev, expected = entry["hash"], expected + 1
    if expected - 1 != checkpoint.seq or prev != checkpoint.head:
        return f"the entries do not end at the checkpointed head (seq {checkpoint.seq})"
    return None
