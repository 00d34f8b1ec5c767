"""The one canonical JSON encoding used wherever something is hashed.

Canonical form: object keys sorted by code point, no insignificant whitespace
(``,`` and ``:`` separators), UTF-8 output with non-ASCII characters left
unescaped, and no NaN or infinities. See ``docs/specs/envelope.md``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

_ENCODER = json.JSONEncoder(
    sort_keys=True,
    separators=(",", ":"),
    ensure_ascii=False,
    allow_nan=False,
)


def canonical_text(value: Any) -> str:
    """Return the canonical JSON text of ``value``.

    Raises:
        ValueError: ``value`` holds NaN or an infinity.
        TypeError: ``value`` holds something JSON cannot express.
    """
    return _ENCODER.encode(value)


def canonical_json(value: Any) -> bytes:
    """Return the canonical JSON encoding of ``value`` as UTF-8 bytes."""
    return _ENCODER.encode(value).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    """Return the lowercase hex SHA-256 digest of ``data``."""
    return hashlib.sha256(data).hexdigest()
