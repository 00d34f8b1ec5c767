"""Identifiers: time-ordered UUIDs (version 7), monotonic within a process, so new rows land
at the end of indexes and ids sort in creation order."""

from __future__ import annotations

import os
import random
import threading
import time
import uuid

_lock = threading.Lock()
_last = 0
_random = random.Random()
"""Seeded from the OS; ``random`` reseeds module-level instances after fork, so do we."""
os.register_at_fork(after_in_child=_random.seed)


def new_id() -> str:
    """Return a new UUIDv7 (RFC 9562) as a lowercase hyphenated string.

    Within one process, each id sorts after the previous one even within a millisecond.
    """
    global _last
    millis = time.time_ns() // 1_000_000
    rand = _random.getrandbits(80)
    value = (millis & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76  # version
    value |= ((rand >> 68) & 0xFFF) << 64  # rand_a (12 bits)
    value |= 0b10 << 62  # variant
    value |= rand & 0x3FFF_FFFF_FFFF_FFFF  # rand_b (62 bits)
    with _lock:
        if value <= _last:
            value = _last + 1
        _last = value
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def new_ids(count: int) -> list[str]:
    """Return ``count`` new UUIDv7s in ascending order: one clock read and one random draw,
    then consecutive values (cheaper than ``count`` calls of :func:`new_id`)."""
    global _last
    if count <= 0:
        return []
    millis = time.time_ns() // 1_000_000
    rand = _random.getrandbits(80) & ~0xFFFF_FFFF  # room to count up in the low bits
    value = (millis & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76
    value |= ((rand >> 68) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & 0x3FFF_FFFF_FFFF_FFFF
    with _lock:
        if value <= _last:
            value = _last + 1
        _last = value + count - 1
    ids = []
    for offset in range(count):
        h = f"{value + offset:032x}"
        ids.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return ids


def is_uuid(text: str) -> bool:
    """Return True when ``text`` is a UUID in canonical hyphenated form (any case)."""
    if len(text) != 36:
        return False
    try:
        return str(uuid.UUID(text)) == text.lower()
    except ValueError:
        return False
