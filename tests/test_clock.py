"""The domain's instants: ``later`` is the one way the store writes "this long from now"."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from quarterdeck.domain.clock import later, parse_instant

NOW = datetime(2026, 12, 31, 23, 59, 59, 500000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("instant", "seconds", "expected"),
    [
        (NOW, 0, "2026-12-31T23:59:59.500000Z"),
        (NOW, 0.5, "2027-01-01T00:00:00.000000Z"),
        (NOW, 120, "2027-01-01T00:01:59.500000Z"),
        (NOW, 0.000001, "2026-12-31T23:59:59.500001Z"),
        (NOW.astimezone(timezone(timedelta(hours=-5))), 1, "2027-01-01T00:00:00.500000Z"),
    ],
)
def test_later_is_seconds_after_the_instant_in_utc(
    instant: datetime, seconds: float, expected: str
) -> None:
    assert later(instant, seconds) == expected
    assert parse_instant(expected) == instant + timedelta(seconds=seconds)
