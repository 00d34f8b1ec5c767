"""Service levels: the SLO figures checked against their thresholds on an interval; a breach
opens an alert (one per metric) and recovery resolves it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from quarterdeck.domain.clock import Clock, format_instant, utc_now
from quarterdeck.domain.envelope import RUNTIME_WORKSPACE
from quarterdeck.runtime.config import SloThresholds
from quarterdeck.store.alerts import open_alert, resolve_by_dedupe, slo_figures
from quarterdeck.store.outbox import Target
from quarterdeck.store.writer import Writer, WriteTxn

log = logging.getLogger("quarterdeck.runtime.drift")

_SLO_METRICS: tuple[tuple[str, str, str, str], ...] = (
    # (figure, threshold attribute, label, unit)
    ("failure_rate", "failure_rate", "failure rate", ""),
    ("fallback_rate", "fallback_rate", "fallback rate", ""),
    ("p95_latency_s", "p95_latency_s", "p95 mission latency", " s"),
    ("receipt_wait_s", "receipt_wait_s", "oldest unapplied receipt wait", " s"),
    ("cost", "cost_per_window", "cost", ""),
)


class SloMonitor:
    """Checks the SLO figures against their thresholds: a breach opens an alert (one per
    metric), recovery resolves it."""

    def __init__(
        self,
        writer: Writer,
        thresholds: SloThresholds,
        targets: Sequence[Target] = (),
        clock: Clock = utc_now,
        *,
        actor: str = "slo",
        workspace: str = RUNTIME_WORKSPACE,
    ) -> None:
        self.writer = writer
        self.thresholds = thresholds
        self.targets = tuple(targets)
        self.clock = clock
        self.actor = actor
        self.workspace = workspace

    async def check_once(self) -> dict[str, Any]:
        """Compute the figures over the window, open an alert for each breached threshold and
        resolve the alerts of metrics back within theirs.

        Returns:
            ``figures``, ``breached`` (metric names), ``opened`` (ids of new alerts) and
            ``resolved`` (metric names).
        """
        now = self.clock()
        window = self.thresholds.window_s
        start = now - timedelta(seconds=window)
        start_at = format_instant(start)
        async with self.writer.db.read() as conn:
            figures: dict[str, Any] = await conn.run_sync(
                lambda sync: slo_figures(sync, start_at, now)
            )
        breaches: dict[str, str] = {}
        for figure, attribute, label, unit in _SLO_METRICS:
            limit = getattr(self.thresholds, attribute)
            value = figures.get(figure)
            if limit is None or value is None or value <= limit:
                continue
            span = "" if figure == "receipt_wait_s" else f" over {window:g} s"
            breaches[figure] = f"{label} {value:.2f}{unit}{span} is above {limit:.2f}{unit}"

        def apply(txn: WriteTxn) -> tuple[list[str], list[str]]:
            opened: list[str] = []
            resolved: list[str] = []
            for figure, *_rest in _SLO_METRICS:
                dedupe = f"slo:{figure}"
                message = breaches.get(figure)
                if message is None:
                    note = "back within its threshold"
                    if resolve_by_dedupe(txn, self.workspace, dedupe, self.actor, note):
                        resolved.append(figure)
                    continue
                alert_id, new = open_alert(
                    txn,
                    self.targets,
                    workspace=self.workspace,
                    alert_type="slo_breach",
                    severity="warn",
                    subject_type="slo",
                    subject_id=figure,
                    dedupe=dedupe,
                    message=message,
                    data={"metric": figure, "figures": figures},
                    actor=self.actor,
                )
                if new:
                    opened.append(alert_id)
            return opened, resolved

        opened, resolved = await self.writer.submit(apply)
        return {
            "figures": figures,
            "breached": sorted(breaches),
            "opened": opened,
            "resolved": resolved,
        }

    async def run(self, stop_event: asyncio.Event) -> None:
        """Check every ``check_interval_s`` until ``stop_event`` is set."""
        while not stop_event.is_set():
            try:
                await self.check_once()
            except Exception:
                log.exception("SLO check failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_event.wait(), self.thresholds.check_interval_s)
