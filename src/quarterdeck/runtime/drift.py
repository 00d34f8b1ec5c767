"""Drift: attested files that changed since their baseline, a policy file edited on disk, and
service levels that left their thresholds. Each condition opens one alert (deduplicated) and
clears it again when the condition clears (or when an operator re-baselines).

Files are watched with ``watchfiles`` through their folders, so that editors that save by
writing a new file and renaming it over the old one are seen as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from watchfiles import Change, awatch

from quarterdeck.domain.clock import Clock, format_instant, utc_now
from quarterdeck.domain.envelope import RUNTIME_WORKSPACE
from quarterdeck.domain.policy import Policy, parse_policy
from quarterdeck.runtime.config import ConfigError, LaneConfig, SloThresholds
from quarterdeck.store.alerts import (
    add_baselines,
    attest_dedupe,
    get_open_alert,
    open_alert,
    read_baselines,
    rebaseline_lane,
    resolve_by_dedupe,
    slo_figures,
)
from quarterdeck.store.flags import read_flags, set_flag
from quarterdeck.store.outbox import Target
from quarterdeck.store.writer import Writer, WriteTxn

log = logging.getLogger(__name__)

MISSING = "missing"
"""The hash of a file that does not exist or cannot be read."""
DEBOUNCE_MS = 50
STEP_MS = 20
_CHUNK = 1 << 20


def hash_file(path: Path) -> str:
    """SHA-256 (lowercase hex) of a file's bytes; :data:`MISSING` when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    except OSError:
        return MISSING
    return digest.hexdigest()


def _key(path: Path) -> str:
    """A path as the watcher reports it: absolute folder (not resolved) plus the name."""
    return os.path.join(os.path.abspath(path.parent), path.name)


def _real_key(path: Path) -> str:
    """The same path with the folder's symbolic links resolved (some platforms report that)."""
    return os.path.join(os.path.realpath(path.parent), path.name)


ChangeHandler = Callable[[set[Path]], Awaitable[None]]


class FileWatch:
    """Watches exact files (through their folders) and hands each batch of changed files to
    an async handler. A folder that does not exist is logged and skipped."""

    def __init__(
        self,
        paths: Iterable[Path],
        on_change: ChangeHandler,
        *,
        debounce_ms: int = DEBOUNCE_MS,
        step_ms: int = STEP_MS,
    ) -> None:
        self._files = {_key(path): path for path in paths}
        self._aliases = {_real_key(path): path for path in self._files.values()}
        self._aliases.update(self._files)
        self._on_change = on_change
        self._debounce_ms = debounce_ms
        self._step_ms = step_ms
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def files(self) -> list[Path]:
        """The watched files, as given."""
        return list(self._files.values())

    async def start(self) -> None:
        """Start watching in a task; returns once the folders are being watched."""
        if self._task is not None:
            return
        self._stop = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self.run(self._stop), name="qd-watch")
        # The task's first step sets up the watcher before it first waits.
        await asyncio.sleep(0)

    async def stop(self) -> None:
        """Stop watching and wait for the task to end."""
        if self._task is None or self._stop is None:
            return
        self._stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=5.0)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None

    async def run(self, stop_event: asyncio.Event | None = None) -> None:
        """Watch until ``stop_event`` is set (forever without one)."""
        stop_event = stop_event or asyncio.Event()
        folders = []
        for folder in sorted({os.path.dirname(key) for key in self._files}):
            if os.path.isdir(folder):
                folders.append(folder)
            else:
                log.warning("not watching %s: no such folder", folder)
        if not folders:
            await stop_event.wait()
            return

        def wanted(_change: Change, path: str) -> bool:
            return path in self._aliases

        try:
            async for changes in awatch(
                *folders,
                watch_filter=wanted,
                debounce=self._debounce_ms,
                step=self._step_ms,
                stop_event=stop_event,
                recursive=False,
            ):
                changed = {
                    self._aliases[path] for _change, path in changes if path in self._aliases
                }
                if not changed:
                    continue
                try:
                    await self._on_change(changed)
                except Exception:
                    log.exception("file change handler failed")
        except OSError as exc:
            log.error("cannot watch %s: %s", ", ".join(folders), exc)
            await stop_event.wait()


# --- attested files ----------------------------------------------------------------------------


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


# --- the policy file ---------------------------------------------------------------------------


def read_policy(path: Path) -> Policy | list[str]:
    """Read and parse a policy file; return it or every problem found."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return [f"cannot read: {exc.strerror or exc}"]
    except UnicodeDecodeError as exc:
        return [f"not UTF-8 text: {exc}"]
    return parse_policy(text)


class PolicySource:
    """The policy file, reloaded when it changes on disk. A valid edit takes effect (through
    ``on_change``) and is recorded as ``policy.loaded``; an invalid edit (or a deleted file)
    keeps the last good policy and opens a ``policy_invalid`` alert until the file is fixed."""

    def __init__(
        self,
        path: Path | None,
        writer: Writer,
        targets: Sequence[Target] = (),
        on_change: Callable[[Policy], None] = lambda _policy: None,
        actor: str = "policy",
        *,
        workspace: str = RUNTIME_WORKSPACE,
        debounce_ms: int = DEBOUNCE_MS,
        step_ms: int = STEP_MS,
    ) -> None:
        self.path = path
        self.writer = writer
        self.targets = tuple(targets)
        self.on_change = on_change
        self.actor = actor
        self.workspace = workspace
        self.policy: Policy | None = None
        """The policy in force (the last good one)."""
        self._loaded = False
        self._watch: FileWatch | None = None
        self._debounce_ms = debounce_ms
        self._step_ms = step_ms

    @property
    def dedupe(self) -> str:
        """The dedupe key of this file's ``policy_invalid`` alert."""
        return f"policy:{self.path}"

    def load(self) -> Policy | None:
        """Read the policy at start (None when no file is configured).

        Raises:
            ConfigError: the file cannot be read or is invalid; every problem is listed.
        """
        self._loaded = True
        if self.path is None:
            return None
        result = read_policy(self.path)
        if not isinstance(result, Policy):
            raise ConfigError(str(self.path), result)
        self.policy = result
        return result

    async def start(self) -> None:
        """Load the policy (unless :meth:`load` ran), record it, and watch the file.

        Raises:
            ConfigError: as :meth:`load`.
        """
        if not self._loaded:
            self.load()
        if self.path is None:
            return
        policy = self.policy
        assert policy is not None
        await self.writer.submit(lambda txn: self._record(txn, policy))
        self._watch = FileWatch(
            [self.path], self._changed, debounce_ms=self._debounce_ms, step_ms=self._step_ms
        )
        await self._watch.start()

    async def stop(self) -> None:
        """Stop watching the file."""
        if self._watch is not None:
            await self._watch.stop()
            self._watch = None

    async def _changed(self, _paths: set[Path]) -> None:
        await self.reload()

    async def reload(self) -> Policy | None:
        """Read the file again and apply it when valid; return the policy in force."""
        if self.path is None:
            return None
        path = self.path
        result = await asyncio.to_thread(read_policy, path)
        if isinstance(result, Policy):
            changed = self.policy is None or result.hash != self.policy.hash
            if changed:
                try:
                    self.on_change(result)
                except Exception:
                    log.exception("applying the policy from %s failed", path)
                    return self.policy
                self.policy = result
            policy = result
            await self.writer.submit(lambda txn: self._record(txn, policy, changed))
            return self.policy
        problems = result
        kept = "none" if self.policy is None else self.policy.hash[:12]
        message = f"policy file {path} is invalid (keeping policy {kept}): " + "; ".join(problems)

        def invalid(txn: WriteTxn) -> None:
            open_alert(
                txn,
                self.targets,
                workspace=self.workspace,
                alert_type="policy_invalid",
                severity="error",
                subject_type="policy",
                subject_id=str(path),
                dedupe=self.dedupe,
                message=message,
                data={"path": str(path), "problems": problems, "kept": kept},
                actor=self.actor,
            )

        await self.writer.submit(invalid)
        return self.policy

    def _record(self, txn: WriteTxn, policy: Policy, loaded: bool = True) -> None:
        if loaded:
            txn.ledger.append(
                at=txn.at,
                workspace=self.workspace,
                actor=self.actor,
                action="policy.loaded",
                subject_type="policy",
                subject_id=str(self.path),
                payload={"hash": policy.hash, "path": str(self.path)},
            )
        resolve_by_dedupe(txn, self.workspace, self.dedupe, self.actor, "the policy file is valid")


# --- service levels ----------------------------------------------------------------------------

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
