"""Prometheus text exposition of the runtime's figures."""

from __future__ import annotations

from typing import TYPE_CHECKING

from quarterdeck.store.queries import slo

if TYPE_CHECKING:
    from quarterdeck.runtime.runtime import Runtime


def _line(name: str, value: float, help_text: str, kind: str = "gauge", labels: str = "") -> str:
    return f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n{name}{labels} {value}\n"


async def render(runtime: Runtime) -> str:
    """The figures as Prometheus text: the shared SLO figures and this node's counters."""
    figures = await slo(runtime.db, None)
    node = f'{{node="{runtime.node_id}"}}'
    parts = [
        _line("quarterdeck_mission_latency_p50_seconds", figures["mission_latency_p50_s"],
              "Median mission run time over recent missions."),
        _line("quarterdeck_mission_latency_p95_seconds", figures["mission_latency_p95_s"],
              "95th percentile mission run time over recent missions."),
        _line("quarterdeck_fallback_rate", figures["fallback_rate"],
              "Share of started missions that ran on a fallback lane (shadows aside)."),
        _line("quarterdeck_recovery_success_rate", figures["recovery_success_rate"],
              "Share of reclaimed missions whose retry completed."),
        _line("quarterdeck_orphaned_session_rate", figures["orphaned_session_rate"],
              "Share of sessions whose holder vanished and that await recovery."),
        _line("quarterdeck_sessions_orphaned_total", figures["sessions_orphaned"],
              "Sessions found orphaned by sweepers.", "counter"),
        _line("quarterdeck_orphaned_rate", figures["orphaned_rate"],
              "Share of running missions whose lease has expired unswept."),
        _line("quarterdeck_retries_total", figures["retries"], "Missions that were retries.", "counter"),
        _line("quarterdeck_dead_letters", figures["dead_letters"], "Turns held or dead.", "gauge"),
        _line("quarterdeck_lease_conflicts_total", figures["lease_conflicts"],
              "Writes rejected because their lease was lost.", "counter"),
        _line("quarterdeck_leases_reclaimed_total", figures["leases_reclaimed"],
              "Expired leases handed back by sweepers.", "counter"),
        _line("quarterdeck_node_running_missions", runtime.running,
              "Missions this node runs now.", labels=node),
        _line("quarterdeck_node_writer_commits_total", runtime.writer.commits,
              "Group commits by this node's writer.", "counter", node),
        _line("quarterdeck_node_leases_lost_total", runtime.metrics.leases_lost,
              "Mission leases this node found lost at a heartbeat (it was paused or cut off).",
              "counter", node),
        _line("quarterdeck_node_sessions_lost_total", runtime.metrics.sessions_lost,
              "Sessions another node took over while this one was silent.", "counter", node),
    ]  # fmt: skip
    return "".join(parts)
