"""The control center's header: segments laid out in lines of the terminal's width."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from rich.text import Text

from quarterdeck.tui.header import layout_segments as _layout

WORDS = st.text(alphabet="abcdefghij0123456789:·●", min_size=1, max_size=40)
GROUPS = st.lists(st.lists(WORDS, min_size=1, max_size=8), min_size=1, max_size=3)


@given(GROUPS, st.integers(min_value=20, max_value=200))
def test_segments_stay_whole_in_order_and_lines_fit(groups: list[list[str]], width: int) -> None:
    laid = _layout([[Text(word) for word in group] for group in groups], width, " │ ")
    lines = laid.plain.split("\n")
    # No segment is split: each line is a run of whole segments, in their order.
    pieces = [part for line in lines for part in line.strip().split(" │ ")]
    words = [word for group in groups for word in group]
    assert " ".join(pieces).split() == " ".join(words).split()
    # Each group starts a line of its own.
    assert len(lines) >= len(groups)
    for line in lines:
        # Only a segment too wide for any line may cross the edge, alone on its line.
        assert Text(line).cell_len <= width or line.strip() in words, (line, width)


def test_the_figures_wrap_between_segments_not_inside_them() -> None:
    groups = [
        [Text(" QUARTERDECK "), Text("attached to postgresql://db"), Text("ledger 592")],
        [Text("turns 40: 0 running · 40 done"), Text("approvals 0"), Text("alerts 0")],
    ]
    assert _layout(groups, 120, " │ ").plain == (
        " QUARTERDECK  attached to postgresql://db  ledger 592\n"
        " turns 40: 0 running · 40 done │ approvals 0 │ alerts 0"
    )
    assert _layout(groups, 44, " │ ").plain == (
        " QUARTERDECK  attached to postgresql://db\n"
        " ledger 592\n"
        " turns 40: 0 running · 40 done │ approvals 0\n"
        " alerts 0"
    )
