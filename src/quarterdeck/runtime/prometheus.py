"""The runtime's figures for Prometheus, through ``prometheus-client``: a collector that reports
the shared SLO figures (read from the store, shared by every node) and this node's counters.

The store's figures are read asynchronously, so :meth:`NodeCollector.refresh` reads them before
an exposition and :meth:`NodeCollector.collect` (called by the registry, synchronously) reports
what was read last, with the node's live counters.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Final, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from quarterdeck.runtime.metrics import Metrics
from quarterdeck.store.database import Database
from quarterdeck.store.queries import slo


class HasCommits(Protocol):
    """A writer, as far as the figures go."""

    commits: int


class Node(Protocol):
    """What the figures are read from (a runtime)."""

    db: Database
    node_id: str
    metrics: Metrics

    @property
    def writer(self) -> HasCommits:
        """The node's writer."""
        ...

    @property
    def running(self) -> int:
        """Missions the node runs now."""
        ...


_SHARED: Final = (
    ("quarterdeck_mission_latency_p50_seconds", "mission_latency_p50_s", "gauge",
     "Median mission run time over recent missions."),
    ("quarterdeck_mission_latency_p95_seconds", "mission_latency_p95_s", "gauge",
     "95th percentile mission run time over recent missions."),
    ("quarterdeck_fallback_rate", "fallback_rate", "gauge",
     "Share of started missions that ran on a fallback lane (shadows aside)."),
    ("quarterdeck_recovery_success_rate", "recovery_success_rate", "gauge",
     "Share of reclaimed missions whose retry completed."),
    ("quarterdeck_orphaned_session_rate", "orphaned_session_rate", "gauge",
     "Share of sessions whose holder vanished and that await recovery."),
    ("quarterdeck_sessions_orphaned", "sessions_orphaned", "counter",
     "Sessions found orphaned by sweepers."),
    ("quarterdeck_orphaned_rate", "orphaned_rate", "gauge",
     "Share of running missions whose lease has expired unswept."),
    ("quarterdeck_retries", "retries", "counter", "Missions that were retries."),
    ("quarterdeck_dead_letters", "dead_letters", "gauge", "Turns held or dead."),
    ("quarterdeck_lease_conflicts", "lease_conflicts", "counter",
     "Writes rejected because their lease was lost."),
    ("quarterdeck_leases_reclaimed", "leases_reclaimed", "counter",
     "Expired leases handed back by sweepers."),
)  # fmt: skip
"""The store's figures: metric name (a counter's without ``_total``), figure, type, help."""


def _family(
    name: str, kind: str, help_text: str, labels: list[str] | None = None
) -> CounterMetricFamily | GaugeMetricFamily:
    if kind == "counter":
        return CounterMetricFamily(name, help_text, labels=labels)
    return GaugeMetricFamily(name, help_text, labels=labels)


class NodeCollector(Collector):
    """The figures of one node (see the module's docstring)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.figures: Mapping[str, Any] = {}

    async def refresh(self) -> None:
        """Read the store's figures (every node sees the same)."""
        self.figures = await slo(self.node.db, None)

    def collect(self) -> Iterator[Metric]:
        """The families, from the figures read last and the node's counters now."""
        for name, figure, kind, help_text in _SHARED:
            if figure in self.figures:
                family = _family(name, kind, help_text)
                family.add_metric([], float(self.figures[figure]))
                yield family
        node = self.node
        labels = [node.node_id]
        for name, kind, help_text, value in (
            ("quarterdeck_node_running_missions", "gauge", "Missions this node runs now.",
             node.running),
            ("quarterdeck_node_writer_commits", "counter", "Group commits by this node's writer.",
             node.writer.commits),
            ("quarterdeck_node_leases_lost", "counter",
             "Mission leases this node found lost at a heartbeat (it was paused or cut off).",
             node.metrics.leases_lost),
            ("quarterdeck_node_sessions_lost", "counter",
             "Sessions another node took over while this one was silent.",
             node.metrics.sessions_lost),
        ):  # fmt: skip
            family = _family(name, kind, help_text, ["node"])
            family.add_metric(labels, float(value))
            yield family
        requests = CounterMetricFamily(
            "quarterdeck_node_api_requests",
            "Control API requests this node answered, by status code.",
            labels=["node", "status"],
        )
        for status, count in sorted(node.metrics.api_requests.items()):
            requests.add_metric([node.node_id, status], float(count))
        yield requests
        refusals = CounterMetricFamily(
            "quarterdeck_node_api_refusals",
            "Control API requests this node refused (401 or 403), by reason.",
            labels=["node", "code"],
        )
        for code, count in sorted(node.metrics.api_refusals.items()):
            refusals.add_metric([node.node_id, code], float(count))
        yield refusals


class Exposition:
    """A registry holding one node's collector: :meth:`render` refreshes the store's figures
    and writes the Prometheus text."""

    def __init__(self, node: Node) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = NodeCollector(node)
        self.registry.register(self.collector)

    async def render(self) -> bytes:
        """The exposition (text format 0.0.4)."""
        await self.collector.refresh()
        return generate_latest(self.registry)


async def render(node: Node) -> str:
    """The figures of ``node`` as Prometheus text."""
    return (await Exposition(node).render()).decode()
