"""In-process counters the runtime keeps (exported as metrics by later layers)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Metrics:
    """Counters of one runtime process."""

    ingested: Counter[str] = field(default_factory=Counter)
    """Ingest outcomes: accepted, duplicate, rejected."""
    illegal_transitions: Counter[str] = field(default_factory=Counter)
    """Refused transition requests by ``kind:from->to``."""
    stale_writes: Counter[str] = field(default_factory=Counter)
    """Compare-and-set losses by kind."""
