"""Drift of attested files: each lane's attested files are baselined, and a file that no longer
matches its baseline opens one alert (deduplicated), pausing the lane when its ``on_drift`` is
``pause``; the alert clears when the file matches again (or an operator re-baselines).

The runtime's other watched conditions live beside it: the policy file
(:mod:`quarterdeck.runtime.policy_source`) and service levels (:mod:`quarterdeck.runtime.slo`),
both watched the same way (:mod:`quarterdeck.runtime.filewatch`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from quarterdeck.domain.envelope import RUNTIME_WORKSPACE
from quarterdeck.runtime.config import LaneConfig
from quarterdeck.runtime.filewatch import DEBOUNCE_MS, STEP_MS, FileWatch, hash_file
from quarterdeck.runtime.policy_source import PolicySource
from quarterdeck.runtime.slo import SloMonitor
from quarterdeck.store.alerts import (
    add_baselines,
    attest_dedupe,
    get_open_alert,
    open_alert,
    read_baselines,
    rebaseline_lane,
    resolve_by_dedupe,
)
from quarterdeck.store.flags import read_flags, set_flag
from quarterdeck.store.outbox import Target
from quarterdeck.store.writer import Writer, WriteTxn

__all__ = ["DriftMonitor", "FileWatch", "PolicySource", "SloMonitor", "hash_file"]


class DriftMonitor:
    """Baselines each lane's attested files, and opens an alert when one no longer matches
    (pausing the lane when its ``on_drift`` is ``pause``)."""

    def __init__(
        self,
        writer: Writer,
        lanes: Mapping[str, LaneConfig],
        targets: Sequence[Target] = (),
        actor: str = "drift",
        *,
        workspace: str = RUNTIME_WORKSPACE,
        debounce_ms: int = DEBOUNCE_MS,
        step_ms: int = STEP_MS,
    ) -> None:
        self.writer = writer
        self.lanes = dict(lanes)
        self.targets = tuple(targets)
        self.actor = actor
        self.workspace = workspace
        self._watch: FileWatch | None = None
        self._debounce_ms = debounce_ms
        self._step_ms = step_ms

    def _paths(self, lane: str) -> dict[str, Path]:
        return {os.path.abspath(path): path for path in self.lanes[lane].attest}

    def current_hashes(self, lane: str) -> dict[str, str]:
        """The current SHA-256 of each of the lane's attested files, by absolute path (reads
        the files)."""
        return {key: hash_file(path) for key, path in self._paths(lane).items()}

    async def start(self) -> None:
        """Watch every attested file, record first baselines, and check for drift now."""
        watched = {path for lane in self.lanes.values() for path in lane.attest}
        if watched:
            self._watch = FileWatch(
                watched, self._changed, debounce_ms=self._debounce_ms, step_ms=self._step_ms
            )
            await self._watch.start()
        await self.check()

    async def stop(self) -> None:
        """Stop watching."""
        if self._watch is not None:
            await self._watch.stop()
            self._watch = None

    async def _changed(self, paths: set[Path]) -> None:
        keys = {os.path.abspath(path) for path in paths}
        lanes = [name for name in self.lanes if keys & set(self._paths(name))]
        await self.check(lanes)

    async def check(self, lanes: Iterable[str] | None = None) -> list[str]:
        """Compare the lanes' files (all lanes with attested files by default) to their
        baselines; return the dedupe keys of the files that drifted."""
        names = [
            name
            for name in (self.lanes if lanes is None else lanes)
            if name in self.lanes and self.lanes[name].attest
        ]
        if not names:
            return []
        hashes = await asyncio.to_thread(
            lambda: {name: self.current_hashes(name) for name in names}
        )
        return await self.writer.submit(lambda txn: self._compare(txn, hashes))

    def _compare(self, txn: WriteTxn, hashes: Mapping[str, Mapping[str, str]]) -> list[str]:
        drifted: list[str] = []
        for name, current in hashes.items():
            lane = self.lanes[name]
            add_baselines(txn, name, current, self.actor, workspace=self.workspace)
            baselines = read_baselines(txn.conn, name)
            pause = False
            for path, digest in sorted(current.items()):
                dedupe = attest_dedupe(name, path)
                baseline = baselines.get(path, digest)
                if digest == baseline:
                    if lane.on_drift != "pause":
                        note = "the file matches its baseline again"
                        resolve_by_dedupe(txn, self.workspace, dedupe, self.actor, note)
                    continue
                drifted.append(dedupe)
                existing = get_open_alert(txn.conn, self.workspace, dedupe)
                fresh = existing is None or existing["data"].get("sha256") != digest
                open_alert(
                    txn,
                    self.targets,
                    workspace=self.workspace,
                    alert_type="attested_file",
                    severity="error" if lane.on_drift == "pause" else "warn",
                    subject_type="lane",
                    subject_id=name,
                    dedupe=dedupe,
                    message=(
                        f"attested file {path} of lane {name} changed: "
                        f"baseline {baseline[:12]}, now {digest[:12]}"
                    ),
                    data={
                        "lane": name,
                        "path": path,
                        "baseline": baseline,
                        "sha256": digest,
                        "on_drift": lane.on_drift,
                    },
                    actor=self.actor,
                )
                pause = pause or (fresh and lane.on_drift == "pause")
            if pause and name not in read_flags(txn.conn).paused:
                set_flag(txn, name, "paused", True, actor=self.actor, workspace=self.workspace)
        return drifted

    async def rebaseline(self, lane: str, actor: str) -> dict[str, Any]:
        """Accept the lane's attested files as they are now: new baselines, its drift alerts
        resolved, and the lane resumed when drift paused it."""
        if lane not in self.lanes:
            return {"ok": False, "errors": [f"no lane named {lane!r}"]}
        hashes = await asyncio.to_thread(self.current_hashes, lane)
        return await self.writer.submit(
            lambda txn: rebaseline_lane(
                txn,
                lane,
                hashes,
                actor=actor,
                drift_actor=self.actor,
                workspace=self.workspace,
            )
        )
