"""SQL shared by the store's modules: a statement's SQLite and PostgreSQL forms side by side
(:class:`Statement`, :class:`Bulk`), and a named state group as an SQL list."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, TextClause


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement whose text differs by dialect (a row lock, an array parameter)."""

    sqlite: TextClause
    postgres: TextClause

    def on(self, conn: Connection) -> TextClause:
        """The form for ``conn``'s dialect."""
        return self.postgres if conn.dialect.name == "postgresql" else self.sqlite


@dataclass(frozen=True, slots=True)
class Bulk:
    """A write applied to many rows (see ``WriteTxn.insert_many`` and ``update_many``).

    ``each`` runs once per row: one ``executemany`` on SQLite, and on PostgreSQL when there is
    no ``postgres`` form (or an update's rows repeat a key). ``postgres`` is the same change as
    one statement over column arrays (``unnest``): each parameter is the list of the rows'
    values, and an update selects how many rows it changed.
    """

    each: TextClause
    postgres: TextClause | None = None


def in_list(states: Iterable[str]) -> str:
    """``('a', 'b')``: a state group (constant names, never user input) for ``state IN ...``."""
    names = tuple(states)
    if not names or not all(name.isidentifier() for name in names):
        raise ValueError(f"not a list of state names: {names!r}")
    return "(" + ", ".join(f"'{name}'" for name in names) + ")"
