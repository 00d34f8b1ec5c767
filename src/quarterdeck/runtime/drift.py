"""Drift of attested files: each lane's attested files are baselined, and a file that no longer
matches its baseline opens one alert (deduplicated), pausing the lane when its ``on_drift`` is
``pause``; the alert clears when the file matches again (or an operator re-baselines).
An attested path that is not a regular file, or is over the size cap, is never read: it is an
alert naming why, whatever its baseline, until it is a regular file again. A baseline keeps the
file's bytes when it is small (``store.alerts.MAX_BASELINE_BYTES``), and the alert of a file
that changed then carries a unified diff of the file against it (``data.diff``, at most
:data:`MAX_DIFF_CHARS`).

The runtime's other watched conditions live beside it: the policy file
(:mod:`quarterdeck.runtime.policy_source`) and service levels (:mod:`quarterdeck.runtime.slo`),
both watched the same way (:mod:`quarterdeck.runtime.filewatch`).
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from quarterdeck.domain.envelope import RUNTIME_WORKSPACE
from quarterdeck.runtime.config import LaneConfig
from quarterdeck.runtime.filewatch import (
    DEBOUNCE_MS,
    MAX_ATTESTED_BYTES,
    MISSING,
    STEP_MS,
    FileState,
    FileWatch,
    UnreadableFile,
    hash_file,
    read_regular,
)
from quarterdeck.runtime.policy_source import PolicySource
from quarterdeck.runtime.slo import SloMonitor
from quarterdeck.store.alerts import (
    MAX_BASELINE_BYTES,
    add_baselines,
    attest_dedupe,
    get_open_alert,
    keep_baseline_content,
    open_alert,
    read_baseline_contents,
    read_baselines,
    rebaseline_lane,
    resolve_by_dedupe,
)
from quarterdeck.store.flags import read_flags, set_flag
from quarterdeck.store.outbox import Target
from quarterdeck.store.writer import Writer, WriteTxn

__all__ = ["MAX_DIFF_CHARS", "DriftMonitor", "FileWatch", "PolicySource", "SloMonitor", "hash_file"]

MAX_DIFF_CHARS = 16 * 1024
"""A drift alert's diff is cut to this many characters (and says so)."""


def drift_diff(path: str, baseline: bytes, current: bytes) -> str:
    """A unified diff of ``current`` against ``baseline`` (decoded as UTF-8, undecodable bytes
    replaced), cut to :data:`MAX_DIFF_CHARS` with a last line saying so; a file that is not
    text says that instead."""
    if b"\0" in baseline or b"\0" in current:
        return f"{path}: binary file changed ({len(baseline)} -> {len(current)} bytes)"
    before = baseline.decode("utf-8", "replace").splitlines(keepends=True)
    after = current.decode("utf-8", "replace").splitlines(keepends=True)
    lines = difflib.unified_diff(before, after, f"{path} (baseline)", f"{path} (now)")
    text = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
    if len(text) <= MAX_DIFF_CHARS:
        return text
    cut = text[:MAX_DIFF_CHARS]
    cut = cut[: cut.rfind("\n") + 1] if "\n" in cut else cut
    return cut + f"... (diff cut at {MAX_DIFF_CHARS} characters of {len(text)})\n"


def read_state(path: Path, max_bytes: int) -> tuple[FileState, bytes | None]:
    """What an attested file is now, and its bytes when it was read."""
    try:
        data = read_regular(path, max_bytes)
    except UnreadableFile as exc:
        return FileState(exc.marker, None if exc.marker == MISSING else exc.reason), None
    return FileState(hashlib.sha256(data).hexdigest()), data


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
        max_bytes: int = MAX_ATTESTED_BYTES,
    ) -> None:
        self.writer = writer
        self.lanes = dict(lanes)
        self.max_bytes = max_bytes
        self.targets = tuple(targets)
        self.actor = actor
        self.workspace = workspace
        self._watch: FileWatch | None = None
        self._debounce_ms = debounce_ms
        self._step_ms = step_ms
        self._seen: dict[tuple[str, str], bytes] = {}
        """The bytes of files read lately, by (absolute path, SHA-256), under the baseline
        cap: a baseline taken from hashes alone (a rebaseline command) finds its bytes here."""

    def _paths(self, lane: str) -> dict[str, Path]:
        return {os.path.abspath(path): path for path in self.lanes[lane].attest}

    def current_hashes(self, lane: str) -> dict[str, str]:
        """The current SHA-256 of each of the lane's attested files, by absolute path (reads
        the files)."""
        return {key: state.digest for key, state in self.current_states(lane).items()}

    def current_states(self, lane: str) -> dict[str, FileState]:
        """What each of the lane's attested files is now, by absolute path (reads the regular
        ones under the cap, remembering the bytes of small ones)."""
        states: dict[str, FileState] = {}
        for key, path in self._paths(lane).items():
            state, data = read_state(path, self.max_bytes)
            if data is not None and len(data) <= MAX_BASELINE_BYTES:
                self._seen[(key, state.digest)] = data
            states[key] = state
        return states

    def _bytes(self, path: str, digest: str) -> bytes | None:
        return self._seen.get((path, digest))

    def _forget(self, path: str, keep: set[str]) -> None:
        """Forget the bytes read of ``path`` but those with a SHA-256 in ``keep``."""
        for key in [k for k in self._seen if k[0] == path and k[1] not in keep]:
            del self._seen[key]

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
        states = await asyncio.to_thread(
            lambda: {name: self.current_states(name) for name in names}
        )
        return await self.writer.submit(lambda txn: self._compare(txn, states))

    def _compare(self, txn: WriteTxn, states: Mapping[str, Mapping[str, FileState]]) -> list[str]:
        drifted: list[str] = []
        for name, files in states.items():
            lane = self.lanes[name]
            current = {path: state.digest for path, state in files.items()}
            contents = {path: self._bytes(path, digest) for path, digest in current.items()}
            add_baselines(
                txn, name, current, self.actor, workspace=self.workspace, contents=contents
            )
            baselines = read_baselines(txn.conn, name)
            kept = read_baseline_contents(txn.conn, name)
            pause = False
            for path, digest in sorted(current.items()):
                problem = files[path].problem
                dedupe = attest_dedupe(name, path)
                baseline = baselines.get(path, digest)
                stored = kept.get(path)
                before = stored if stored is not None else self._bytes(path, baseline)
                if stored is None and before is not None:
                    keep_baseline_content(txn, name, path, baseline, before)
                self._forget(path, {baseline, digest})
                if digest == baseline and problem is None:
                    if lane.on_drift != "pause":
                        note = "the file matches its baseline again"
                        resolve_by_dedupe(txn, self.workspace, dedupe, self.actor, note)
                    continue
                drifted.append(dedupe)
                existing = get_open_alert(txn.conn, self.workspace, dedupe)
                fresh = existing is None or existing["data"].get("sha256") != digest
                shown: dict[str, str] = {}
                if problem is None:
                    message = (
                        f"attested file {path} of lane {name} changed: "
                        f"baseline {baseline[:12]}, now {digest[:12]}"
                    )
                    after = contents.get(path)
                    if before is not None and after is not None:
                        shown["diff"] = drift_diff(path, before, after)
                    else:
                        shown["diff_unavailable"] = (
                            "the baseline's bytes were not kept (over "
                            f"{MAX_BASELINE_BYTES} bytes, or taken before they were)"
                            if before is None else f"the file is over {MAX_BASELINE_BYTES} bytes"
                        )  # fmt: skip
                else:
                    message = f"attested file {path} of lane {name} is not attested: it {problem}"
                open_alert(
                    txn,
                    self.targets,
                    workspace=self.workspace,
                    alert_type="attested_file",
                    severity="error" if lane.on_drift == "pause" else "warn",
                    subject_type="lane",
                    subject_id=name,
                    dedupe=dedupe,
                    message=message,
                    data={
                        "lane": name,
                        "path": path,
                        "baseline": baseline,
                        "sha256": digest,
                        "on_drift": lane.on_drift,
                        **({} if problem is None else {"problem": problem}),
                        **shown,
                    },
                    actor=self.actor,
                )
                pause = pause or (fresh and lane.on_drift == "pause")
            if pause and name not in read_flags(txn.conn).paused:
                set_flag(
                    txn, name, "paused", True, actor=self.actor, workspace=self.workspace,
                    reason="an attested file no longer matches its baseline",
                )  # fmt: skip
        return drifted

    async def rebaseline(self, lane: str, actor: str) -> dict[str, Any]:
        """Accept the lane's attested files as they are now: new baselines, its drift alerts
        resolved, and the lane resumed when drift paused it."""
        if lane not in self.lanes:
            return {"ok": False, "errors": [f"no lane named {lane!r}"]}
        hashes = await asyncio.to_thread(self.current_hashes, lane)
        contents = {path: self._bytes(path, digest) for path, digest in hashes.items()}
        return await self.writer.submit(
            lambda txn: rebaseline_lane(
                txn,
                lane,
                hashes,
                actor=actor,
                drift_actor=self.actor,
                workspace=self.workspace,
                contents=contents,
            )
        )
