"""``domain/figures.py``: the nearest-rank percentile the status figures and SLO alerts use."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from quarterdeck.domain.figures import percentile

finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e9, max_value=1e9)


def test_known_values() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.95) == 95.0
    assert percentile(values, 0.5) == 51.0  # rank round(0.5 * 99) = 50 (0-based)
    assert percentile([], 0.95) == 0.0
    assert percentile([3.0], 0.95) == 3.0


@given(st.lists(finite, min_size=1), st.floats(0, 1), st.floats(0, 1))
def test_a_percentile_is_a_value_and_grows_with_the_fraction(
    values: list[float], a: float, b: float
) -> None:
    low, high = sorted((a, b))
    assert percentile(values, low) in values
    assert percentile(values, low) <= percentile(values, high)
    assert percentile(values, 0.0) == min(values)
    assert percentile(values, 1.0) == max(values)
