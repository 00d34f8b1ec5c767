"""Small SQL helpers shared by the store's modules: a named state group as an SQL list."""

from __future__ import annotations

from collections.abc import Iterable


def in_list(states: Iterable[str]) -> str:
    """``('a', 'b')``: a state group (constant names, never user input) for ``state IN ...``."""
    names = tuple(states)
    if not names or not all(name.isidentifier() for name in names):
        raise ValueError(f"not a list of state names: {names!r}")
    return "(" + ", ".join(f"'{name}'" for name in names) + ")"
