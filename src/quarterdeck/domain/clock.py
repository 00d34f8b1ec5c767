"""Time as the domain sees it: UTC instants written as fixed-width ISO-8601 text."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

Clock = Callable[[], datetime]
"""A source of the current UTC time; injected so tests control it."""


def utc_now() -> datetime:
    """Return the current time in UTC."""
    return datetime.now(UTC)


def format_instant(instant: datetime) -> str:
    """Format ``instant`` as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (always UTC, fixed width).

    Raises:
        OverflowError: the instant in UTC falls outside years 1-9999.
    """
    d = instant.astimezone(UTC)
    return (
        f"{d.year:04d}-{d.month:02d}-{d.day:02d}T"
        f"{d.hour:02d}:{d.minute:02d}:{d.second:02d}.{d.microsecond:06d}Z"
    )


def later(instant: datetime, seconds: float) -> str:
    """The instant ``seconds`` after ``instant``, formatted as :func:`format_instant` does."""
    return format_instant(instant + timedelta(seconds=seconds))


def parse_instant(text: str) -> datetime:
    """Parse an ISO-8601 instant with an offset or ``Z``; naive text is refused.

    Raises:
        ValueError: the text is not an ISO-8601 instant with a time zone.
    """
    value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError("instant has no time zone")
    return value.astimezone(UTC)
