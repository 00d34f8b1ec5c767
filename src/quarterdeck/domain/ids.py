"""Identifiers: time-ordered UUIDs (version 7), monotonic within a process, so new rows land
at the end of indexes and ids sort in creation order; and how people write them: the short
form every table shows (:func:`short_id`), how a typed id is read (:func:`id_query`) and the
errors of one that names no single item."""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from dataclasses import dataclass

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


SHORT_LENGTH = 8
"""The length of an id's short form."""
_HEX = frozenset("0123456789abcdef")
_DASHES_AFTER = (8, 12, 16, 20)
"""Where a canonical UUID's dashes fall, counted in hex digits."""


def short_id(identifier: str | None) -> str:
    """An id's short form, the one every table shows and every command accepts: eight hex
    digits that tell neighbouring ids apart (a uuid7 from one batch shares its timestamp and
    random base and differs in the trailing counter, so these are the first four and the last
    four digits of its last group); ``-`` for no id."""
    if not identifier:
        return "-"
    digits = identifier.replace("-", "")
    return digits[-12:-8] + digits[-4:] if len(digits) >= 12 else digits


@dataclass(frozen=True, slots=True)
class IdQuery:
    """What a typed id may stand for: the whole id, the prefix of one (``prefix``, dashed as
    ids are stored) and, for eight hex digits, a short form too."""

    text: str
    """What was typed, trimmed."""
    prefix: str | None
    """The dashed prefix of the ids it begins (the whole id when complete); None when the text
    is not hex digits and dashes."""
    short: str | None
    """The short form it is (eight hex digits), else None."""

    @property
    def complete(self) -> bool:
        """Whether it names a whole canonical UUID."""
        return self.prefix is not None and len(self.prefix) == 36


def id_query(text: str) -> IdQuery:
    """Read a typed id: any case, with or without dashes (dashes anywhere are ignored).

    Raises:
        ValueError: the text is empty.
    """
    typed = text.strip()
    if not typed:
        raise ValueError("an id is empty")
    digits = typed.lower().replace("-", "")
    if not digits or not set(digits) <= _HEX or len(digits) > 32:
        return IdQuery(typed, None, None)
    dashed = ""
    for index, digit in enumerate(digits):
        if index in _DASHES_AFTER:
            dashed += "-"
        dashed += digit
    return IdQuery(typed, dashed, digits if len(digits) == SHORT_LENGTH else None)


@dataclass(frozen=True, slots=True)
class IdMatch:
    """An item an id matched: its full id, kind (``turn``, ``receipt``, ...) and workspace."""

    id: str
    kind: str
    workspace: str

    def describe(self) -> str:
        """``<id> (turn in acme)``."""
        return f"{self.id} ({self.kind} in {self.workspace})"


class IdError(LookupError):
    """A typed id that names no single item."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnknownId(IdError):
    """Nothing in scope has this id, short form or prefix."""

    def __init__(self, text: str, what: str = "item") -> None:
        super().__init__(f"no {what} {text!r} (not a full id, short id or prefix of one in scope)")
        self.text = text


class AmbiguousId(IdError):
    """Several items in scope match; ``candidates`` lists them (some, when ``more``)."""

    def __init__(self, text: str, candidates: tuple[IdMatch, ...], more: bool) -> None:
        listed = ", ".join(match.describe() for match in candidates)
        rest = ", and more" if more else ""
        super().__init__(
            f"id {text!r} is ambiguous: it matches {listed}{rest}; give more of the id"
        )
        self.text = text
        self.candidates = candidates
        self.more = more
