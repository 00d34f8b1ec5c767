"""In-process counters and timings of one runtime node (the durable figures that every node
and ``quarterdeck status`` share are computed from the store: see ``store/queries.py``)."""

from __future__ import annotations

from collections import Counter, deque
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
    missions: Counter[str] = field(default_factory=Counter)
    """Finished missions by ``lane:outcome``."""
    late_results: int = 0
    """Results this node produced after losing the lease (rejected, recorded)."""
    leases_lost: int = 0
    """Leases this node found lost at a heartbeat."""
    sessions_lost: int = 0
    """Sessions this node found taken over by another node at a heartbeat."""
    reclaimed: int = 0
    """Expired leases this node's sweeper handed back."""
    api_requests: Counter[str] = field(default_factory=Counter)
    """Control API requests answered, by status code."""
    api_refusals: Counter[str] = field(default_factory=Counter)
    """Control API requests refused (401, 403), by reason code."""
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))
    """Recent mission run times in seconds."""

    def observe_mission(self, lane: str, outcome: str, seconds: float, accepted: bool) -> None:
        """Count one finished mission."""
        self.missions[f"{lane}:{outcome}"] += 1
        self.latencies.append(seconds)
        if not accepted:
            self.late_results += 1
