"""How policy values compare and read: numbers that are not booleans, plain TOML values,
equality that keeps booleans apart from numbers, bounds and clock times as text.
"""

from __future__ import annotations

import math
from datetime import datetime


def is_number(value: object) -> bool:
    """Whether ``value`` is an int or a float (a boolean is not a number here)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def plain(value: object) -> bool:
    """Whether ``value`` is a string, finite number, boolean, or array of them."""
    if isinstance(value, str | bool):
        return True
    if is_number(value):
        return math.isfinite(value)  # type: ignore[arg-type]
    if isinstance(value, list):
        return all(plain(item) for item in value)
    return False


def same(actual: object, expected: object) -> bool:
    """Equality that keeps booleans apart from numbers and compares arrays item by item."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(actual) is type(expected) and actual == expected
    if is_number(expected):
        return is_number(actual) and actual == expected
    if isinstance(expected, str):
        return isinstance(actual, str) and actual == expected
    if isinstance(expected, list | tuple):
        return (
            isinstance(actual, list | tuple)
            and len(actual) == len(expected)
            and all(same(a, e) for a, e in zip(actual, expected, strict=True))
        )
    return False


def bounds_text(low: float | None, high: float | None) -> str:
    """``between a and b``, ``at least a`` or ``at most b``."""
    if low is not None and high is not None:
        return f"between {low!r} and {high!r}"
    if low is not None:
        return f"at least {low!r}"
    return f"at most {high!r}"


def utc_minute(instant: datetime) -> int:
    """Minutes after UTC midnight; a naive instant is taken as UTC. Never overflows."""
    offset = instant.utcoffset()
    seconds = instant.hour * 3600 + instant.minute * 60 + instant.second
    if offset is not None:
        seconds -= int(offset.total_seconds())
    return (seconds % 86400) // 60


def hhmm(minutes: int) -> str:
    """Minutes after midnight as ``HH:MM``."""
    return f"{minutes // 60:02d}:{minutes % 60:02d}"
