"""The ledger's fast paths against the canonical encoder.

Verification builds each entry's body in SQL with ``json_quote`` and the appender builds it
with :func:`quarterdeck.domain.ledger.body_text`; both must be byte-for-byte the canonical
JSON of the body dict, or a sound ledger would fail to verify.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quarterdeck.domain.canonical import canonical_text
from quarterdeck.domain.ledger import body_text, chain_hash, make_entry
from quarterdeck.domain.ledger import quote_text as _quote
from quarterdeck.store.ledger import _SQL_BODY

bindable_text = st.text(st.characters(exclude_categories=("Cs",)))
"""Any text sqlite3 can bind: every code point but the surrogates."""


def json_values(text: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    """Any JSON value (no NaN or infinities), its strings drawn from ``text``."""
    scalars = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.integers(-(2**70), 2**70)
        | st.floats(allow_nan=False, allow_infinity=False)
        | text
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=5) | st.dictionaries(text, inner, max_size=5),
        max_leaves=20,
    )


def json_objects(text: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(text, json_values(text), max_size=6)


EDGE_STRINGS = [
    "",
    '"',
    "\\",
    "/",
    "\x00",
    "a\x00b",
    "\x1f\x7f\x80\x9f",
    "\b\f\n\r\t\v",
    "\u2028\u2029",
    "\ufeff\ufffe\uffff",
    "é☃🚀\U0010ffff",
    "</script>",
    "'single'",
]


@pytest.fixture(scope="module")
def sqlite() -> Iterator[sqlite3.Connection]:
    with closing(sqlite3.connect(":memory:")) as conn:
        yield conn


def _json_quote(conn: sqlite3.Connection, value: str | None) -> str:
    (quoted,) = conn.execute("SELECT json_quote(?)", (value,)).fetchone()
    assert isinstance(quoted, str)
    return quoted


@pytest.mark.parametrize("text", EDGE_STRINGS)
def test_json_quote_edge_cases(sqlite: sqlite3.Connection, text: str):
    assert _json_quote(sqlite, text) == _quote(text) == canonical_text(text)


def test_json_quote_every_control_and_ascii_character(sqlite: sqlite3.Connection):
    for code in range(0x100):
        text = chr(code)
        assert _json_quote(sqlite, text) == _quote(text), hex(code)


def test_json_quote_of_null_is_null(sqlite: sqlite3.Connection):
    assert _json_quote(sqlite, None) == "null" == canonical_text(None)


@settings(max_examples=500, deadline=None)
@given(text=bindable_text)
def test_sqlite_json_quote_equals_python_quote(sqlite: sqlite3.Connection, text: str):
    assert _json_quote(sqlite, text) == _quote(text)
    assert _quote(text) == canonical_text(text)


@settings(max_examples=200, deadline=None)
@given(text=st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1))
def test_sqlite_json_quote_on_long_mixed_text(sqlite: sqlite3.Connection, text: str):
    long = text * (4096 // len(text) + 1)
    assert _json_quote(sqlite, long) == _quote(long)


def _body_dict(
    seq: int,
    at: str,
    workspace: str,
    actor: str,
    action: str,
    subject_type: str,
    subject_id: str,
    from_state: str | None,
    to_state: str | None,
    payload: Any,
) -> dict[str, Any]:
    return {
        "seq": seq,
        "at": at,
        "workspace": workspace,
        "actor": actor,
        "action": action,
        "subject_type": subject_type,
        "subject_id": subject_id,
        "from_state": from_state,
        "to_state": to_state,
        "payload": payload,
    }


def entries(text: st.SearchStrategy[str], payloads: st.SearchStrategy[Any]) -> Any:
    return st.fixed_dictionaries(
        {
            "seq": st.integers(min_value=1, max_value=2**63 - 1),
            "at": text,
            "workspace": text,
            "actor": text,
            "action": text,
            "subject_type": text,
            "subject_id": text,
            "from_state": st.none() | text,
            "to_state": st.none() | text,
            "payload": payloads,
        }
    )


@settings(max_examples=300, deadline=None)
@given(entry=entries(st.text(), json_objects(st.text()) | json_values(st.text())))
def test_body_text_is_the_canonical_body(entry: dict[str, Any]):
    fields = {**entry, "payload_json": canonical_text(entry["payload"])}
    del fields["payload"]
    assert body_text(**fields) == canonical_text(_body_dict(**entry))


@settings(max_examples=200, deadline=None)
@given(entry=entries(st.text(), json_objects(st.text())))
def test_make_entry_hashes_the_canonical_body(entry: dict[str, Any]):
    prev = "ab" * 32
    made = make_entry(prev_hash=prev, **entry)
    assert made.payload_json == canonical_text(entry["payload"])
    assert made.hash == chain_hash(prev, canonical_text(_body_dict(**entry)))
    assert made.to_dict()["payload"] == entry["payload"]


@settings(max_examples=300, deadline=None)
@given(entry=entries(bindable_text, json_objects(bindable_text)))
def test_sql_body_equals_body_text(sqlite: sqlite3.Connection, entry: dict[str, Any]):
    """The body verification builds in SQL from stored columns is the appender's body."""
    payload_json = canonical_text(entry["payload"])
    columns = {**entry, "payload": payload_json}
    names = list(columns)
    sql = f"SELECT {_SQL_BODY} FROM (SELECT " + ", ".join(f"? AS {name}" for name in names) + ")"
    (built,) = sqlite.execute(sql, [columns[name] for name in names]).fetchone()
    fields = {**entry, "payload_json": payload_json}
    del fields["payload"]
    assert built == body_text(**fields)
