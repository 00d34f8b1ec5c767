"""The control center's header: each of its two lines fitted to the terminal's width."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from rich.text import Text

from quarterdeck.tui.header import Part, fit_line

WORDS = st.text(alphabet="abcdefghij0123456789:·●", min_size=1, max_size=40)


@given(st.lists(WORDS, min_size=1, max_size=8), st.integers(min_value=40, max_value=200))
def test_a_line_fits_and_keeps_what_cannot_give_way(words: list[str], width: int) -> None:
    flag = Part(Text("FALLBACK"), rank=9)
    parts = [Part(Text(" QUARTERDECK "), (Text(" QD "),), rank=9), flag]
    parts += [Part(Text(word), rank=1, droppable=True) for word in words]
    line = fit_line(parts, width, "  ").plain
    assert Text(line).cell_len <= width, (line, width)
    assert "FALLBACK" in line
    kept = [word for word in words if word in line]
    # Whole words only, in their order.
    assert line.split("  ")[2:] == kept[: len(line.split("  ")) - 2] or not kept


def test_shorter_forms_then_cut_the_target() -> None:
    parts = [
        Part(Text(" QUARTERDECK "), (Text(" QD "),), rank=9),
        Part(Text("attached to /a/very/long/path/to/the/state/quarterdeck.db"), rank=2,
             cuttable=True),
        Part(Text("● daemon alive"), (Text("●"),), rank=3),
        Part(Text("ledger 592"), rank=1, droppable=True),
    ]  # fmt: skip
    assert fit_line(parts, 120, "  ").plain == (
        " QUARTERDECK   attached to /a/very/long/path/to/the/state/quarterdeck.db"
        "  ● daemon alive  ledger 592"
    )
    narrow = fit_line(parts, 60, "  ").plain
    assert narrow == " QUARTERDECK   attached to /a/very/long/pat…  ● daemon alive"
    assert len(narrow) <= 60
