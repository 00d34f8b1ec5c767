"""The store's read side, shared by the console, the CLI, the SDK and the runtime's polls.
Reads never take the write lock.

- :mod:`~quarterdeck.store.queries.listings`: status counts, listings, open approvals
- :mod:`~quarterdeck.store.queries.detail`: one item with its history
- :mod:`~quarterdeck.store.queries.figures`: SLO figures and pending work
- :mod:`~quarterdeck.store.queries.panes`: the control center's panes and ledger pages
- :mod:`~quarterdeck.store.queries.outcomes`: what a client waits on
- :mod:`~quarterdeck.store.queries.supervision`: the runtime's supervision polls
"""

from quarterdeck.store.queries.detail import APPROVAL_EVENTS, get_item
from quarterdeck.store.queries.figures import pending_work, slo
from quarterdeck.store.queries.listings import (
    COUNTERS,
    ITEM_TABLES,
    LISTABLE,
    list_items,
    open_approvals,
    status,
)

__all__ = [
    "APPROVAL_EVENTS",
    "COUNTERS",
    "ITEM_TABLES",
    "LISTABLE",
    "get_item",
    "list_items",
    "open_approvals",
    "pending_work",
    "slo",
    "status",
]
