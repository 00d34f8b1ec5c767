"""The embedded runtime: applies receipts, dispatches missions onto lanes under fenced leases,
heartbeats them, finishes them, and sweeps what other workers left behind.

One :class:`Runtime` per process (a *node*, with a fresh id per start). Several nodes may share
one database: every claim and every later write is fenced, so they cannot take work from each
other except by the lease expiring. All writes go through the node's group-commit writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Generic, TypeVar

from quarterdeck.domain.canonical import canonical_text
from quarterdeck.domain.clock import Clock, format_instant, utc_now
from quarterdeck.domain.commands import BaseCommand, Command
from quarterdeck.domain.policy import Policy
from quarterdeck.domain.states import MISSION_SELF_FINISHED as SELF_FINISHED_STATES
from quarterdeck.runtime.config import RuntimeConfig
from quarterdeck.runtime.drift import DriftMonitor, PolicySource, SloMonitor
from quarterdeck.runtime.ingest import Ingestor, RawInput
from quarterdeck.runtime.lanes.base import (
    Decision,
    DecisionOutcome,
    Lane,
    LaneFailure,
    MissionContext,
)
from quarterdeck.runtime.lanes.registry import build_lane
from quarterdeck.runtime.metrics import Metrics
from quarterdeck.runtime.relay import Relay
from quarterdeck.store.apply import (
    ReceiptsAlreadyApplied,
    apply_command_receipt,
    apply_receipts,
)
from quarterdeck.store.approvals import Gate, expire_due
from quarterdeck.store.changes import ChangeFeed
from quarterdeck.store.claiming import claim_missions
from quarterdeck.store.commands import DRIFT_ACTOR
from quarterdeck.store.database import Database
from quarterdeck.store.finishing import (
    Ending,
    Finished,
    add_shadow_mission,
    finish_missions,
    record_events,
)
from quarterdeck.store.flags import Flags, bump_counter, read_flags, seed_flags
from quarterdeck.store.gate import request_action, resume_action
from quarterdeck.store.leases import heartbeat, release_missions, sweep
from quarterdeck.store.outbox import Target
from quarterdeck.store.plan import Claim, Finish, LanePlan, WorkPlan
from quarterdeck.store.queries.supervision import approvals_due, decided_approvals, mission_holds
from quarterdeck.store.receipts import IngestResult
from quarterdeck.store.sessions import (
    HeldSession,
    acquire_sessions,
    heartbeat_sessions,
    release_sessions,
    retire_sessions,
    set_session_state,
    sweep_sessions,
)
from quarterdeck.store.transitions import ClaimConflict
from quarterdeck.store.writer import Writer, WriteTxn

log = logging.getLogger("quarterdeck.runtime")

MAX_EVENTS_PER_MISSION = 1_000
SESSION_DEGRADED_AFTER = 3
"""Missions failed in a row on one session before it is marked degraded."""
WATCH_INTERVAL_S = 0.05
SUPERVISION_INTERVAL_S = 0.1


def work_plan(config: RuntimeConfig) -> WorkPlan:
    """The store's view of the lanes."""
    return WorkPlan(
        lanes={
            name: LanePlan(
                name, lane.fallback, lane.max_attempts, lane.backoff_initial_s, lane.backoff_max_s
            )
            for name, lane in config.lanes.items()
        },
        default_lane=config.default_lane,
        hold_s=config.hold_s,
    )


ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


class Batch(Generic[ItemT, ResultT]):
    """Gathers items from many tasks and applies them in one writer operation: while the
    writer commits, new items accumulate, and the next operation takes them all."""

    def __init__(
        self,
        writer: Writer,
        apply: Callable[[WriteTxn, list[ItemT]], list[ResultT]],
        *,
        concurrent: bool = False,
    ) -> None:
        self._writer = writer
        self._apply = apply
        self._concurrent = concurrent
        self._items: list[tuple[ItemT, asyncio.Future[ResultT]]] = []
        self._scheduled = False

    async def submit(self, item: ItemT) -> ResultT:
        """Queue ``item``; return its result once the operation holding it committed."""
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        self._items.append((item, future))
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        taken: list[tuple[ItemT, asyncio.Future[ResultT]]] | None = None

        def op(txn: WriteTxn) -> list[ResultT]:
            nonlocal taken
            if taken is None:  # the first run takes the items; a retried run reuses them
                taken, self._items, self._scheduled = self._items, [], False
            return self._apply(txn, [item for item, _ in taken])

        try:
            results = await self._writer.submit(op, concurrent=self._concurrent)
        except BaseException as exc:
            pending = taken if taken is not None else self._items
            if taken is None:
                self._items, self._scheduled = [], False
            for _item, future in pending:
                if not future.done():
                    future.set_exception(
                        exc if isinstance(exc, Exception) else RuntimeError(str(exc))
                    )
            if not isinstance(exc, Exception):
                raise
            return
        assert taken is not None
        for (_item, future), result in zip(taken, results, strict=True):
            if not future.done():
                future.set_result(result)


@dataclass
class _Running:
    claim: Claim
    task: asyncio.Task[None] | None = None
    scope: asyncio.Timeout | None = None
    """The mission's timeout; it stops while the mission waits for a person."""
    lost: bool = False
    finishing: bool = False
    events: list[dict[str, Any]] = field(default_factory=list)
    event_count: int = 0
    last_gate: Gate | None = None


class Runtime:
    """The runtime of one node."""

    def __init__(
        self,
        db: Database,
        config: RuntimeConfig,
        *,
        state_dir: Path | None = None,
        node_id: str | None = None,
        clock: Clock = utc_now,
        lanes: Mapping[str, Lane] | None = None,
        policy: Policy | None = None,
    ) -> None:
        self.db = db
        self.config = config
        self.state_dir = state_dir or Path("state")
        self.node_id = node_id or f"node-{uuid.uuid4()}"
        self.clock = clock
        self.metrics = Metrics()
        self.writer = Writer(db, clock)
        self.ingestor = Ingestor(self.writer, clock, self.metrics)
        targets = tuple(Target(w.name, w.url, w.format, w.events) for w in config.webhooks)
        self.policy_source = PolicySource(
            None if policy is not None else config.policy,
            self.writer,
            targets,
            on_change=self._set_policy,
            actor=f"{self.node_id}:policy",
        )
        loaded = policy if policy is not None else self.policy_source.load()
        self.drift = DriftMonitor(self.writer, config.lanes, targets, actor=DRIFT_ACTOR)
        self.slo = SloMonitor(self.writer, config.slo, targets, clock)
        self.relay = Relay(self.writer, config.webhooks, clock, actor=f"{self.node_id}:relay")
        self._stop_event = asyncio.Event()
        self.plan = replace(
            work_plan(config),
            policy=loaded,
            targets=targets,
            claim_s=config.claim_s,
            attested=self.drift.current_hashes,
        )
        self.lanes: dict[str, Lane] = dict(lanes or {})
        for name, lane_config in config.lanes.items():
            if name not in self.lanes:
                self.lanes[name] = build_lane(lane_config)
        self.flags = Flags(frozenset(), frozenset(), frozenset(), config.force_fallback)
        self._waiters: dict[str, asyncio.Future[None]] = {}
        self._running: dict[str, _Running] = {}
        self._sessions: dict[str, dict[str, HeldSession]] = {}
        self._free_sessions: dict[str, list[str]] = {}
        self._session_failures: dict[str, int] = {}
        self._paused_lanes: frozenset[str] = frozenset()
        self._pending_events: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._wake_supervision = asyncio.Event()
        self._claiming = False
        self._tasks: list[asyncio.Task[None]] = []
        self._events_dirty = False
        self._seen_head = -1
        self._stopped = False
        self._claim_lock = asyncio.Lock()
        self._finisher: Batch[Ending, Finished] = Batch(
            self.writer,
            lambda txn, endings: finish_missions(txn, endings, self.plan),
            concurrent=True,
        )

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the writer and the loops; apply configured flag defaults once."""
        self.writer.start()
        self.writer.on_commit(self._on_commit)
        await self.writer.submit(self._seed_flags)
        await self.writer.submit(self._acquire_sessions)
        await self.policy_source.start()
        await self.drift.start()
        self._claiming = True
        loop = asyncio.get_running_loop()
        for coroutine, name in (
            (self._pump_loop(), "pump"),
            (self._heartbeat_loop(), "heartbeat"),
            (self._sweep_loop(), "sweep"),
            (self._watch_loop(), "watch"),
            (self._events_loop(), "events"),
            (self._supervision_loop(), "supervision"),
            (self.slo.run(self._stop_event), "slo"),
            (self.relay.run(self._stop_event), "relay"),
        ):
            self._tasks.append(loop.create_task(coroutine, name=f"qd-{name}"))
        self._tasks.append(loop.create_task(self._stalled_loop(), name="qd-stalled"))
        log.info("runtime started", extra={"node": self.node_id, "lanes": list(self.lanes)})

    def _on_commit(self, head_seq: int) -> None:
        """Wake the pump when the ledger moved (an idle commit must not wake it: no busy loop)."""
        if head_seq != self._seen_head:
            self._seen_head = head_seq
            self._wake.set()
            if self._waiters:
                self._wake_supervision.set()

    def _set_policy(self, policy: Policy) -> None:
        """A valid edit of the policy file: new decisions use it from now on."""
        self.plan = replace(self.plan, policy=policy)
        log.info("policy loaded", extra={"node": self.node_id, "hash": policy.hash})

    def _acquire_sessions(self, txn: WriteTxn) -> None:
        retire_sessions(txn, list(self.config.lanes), self.node_id)
        for name, lane in self.config.lanes.items():
            held = acquire_sessions(
                txn, name, lane.concurrency, self.node_id, self.config.lease_s, self.state_dir
            )
            self._sessions[name] = {session.id: session for session in held}
            self._free_sessions[name] = [session.id for session in held]

    def _seed_flags(self, txn: WriteTxn) -> None:
        defaults = {
            name: {
                "paused": lane.paused,
                "shadow": lane.shadow,
                "force_fallback": lane.force_fallback,
            }
            for name, lane in self.config.lanes.items()
        }
        seed_flags(txn, defaults, self.config.force_fallback, actor=self.node_id)

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain: stop claiming, let running missions finish for up to ``grace_s``, hand the
        rest back (their leases released), then stop the loops and the writer. Stopping a
        stopped runtime does nothing."""
        if self._stopped or (not self._claiming and not self._tasks):
            return
        self._claiming = False
        async with self._claim_lock:
            pass  # a claim already under way has started its missions: they drain below
        grace = self.config.drain_grace_s if grace_s is None else grace_s
        pending = [r.task for r in self._running.values() if r.task is not None]
        if pending:
            _done, still = await asyncio.wait(pending, timeout=grace)
            leftovers = [r for r in self._running.values() if r.task in still]
            for running in leftovers:
                running.lost = True  # its own finish must not run; we release it instead
                assert running.task is not None
                running.task.cancel()
            if still:
                await asyncio.wait(still, timeout=5)
            if leftovers:
                claims = [r.claim for r in leftovers]
                await self.writer.submit(lambda txn: release_missions(txn, claims, self.node_id))
        await self._flush_events()
        await self.writer.submit(lambda txn: release_sessions(txn, self.node_id))
        self._stopped = True
        self._stop_event.set()
        for watcher in (self.policy_source, self.drift):
            with contextlib.suppress(Exception):
                await watcher.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.writer.stop()
        with contextlib.suppress(Exception):
            await self.relay.close()
        for lane in self.lanes.values():
            with contextlib.suppress(Exception):
                await lane.close()
        log.info("runtime stopped", extra={"node": self.node_id})

    # --- ingress -----------------------------------------------------------------------------

    async def submit(self, inputs: Sequence[RawInput]) -> list[IngestResult]:
        """Ingest envelopes and wake the coordinator."""
        results = await self.ingestor.ingest(inputs)
        self._wake.set()
        return results

    async def command(
        self,
        workspace: str,
        payload: Command | Mapping[str, Any],
        actor: str,
        *,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Give a supervisor command in this process: recorded as a command envelope (its
        ``actor``, unless it names one, is ``actor``; ``idempotency_key`` by default a fresh
        one), applied at once through its receipt like any other, and its result returned.
        Given again with the same ``idempotency_key``, it returns the first result."""
        body = payload.to_payload() if isinstance(payload, BaseCommand) else dict(payload)
        if body.get("actor") is None:
            body["actor"] = actor
        envelope = {
            "idempotency_key": idempotency_key or f"cmd:{uuid.uuid4()}",
            "workspace": workspace,
            "kind": "command",
            "payload": body,
        }
        _, result = await self.ingestor.ingest_then(
            [envelope], lambda txn, results: apply_command_receipt(txn, self.plan, results[0])
        )
        self._wake.set()
        return result

    @property
    def running(self) -> int:
        """Missions this node is running now."""
        return len(self._running)

    # --- the pump: apply receipts, claim, start ------------------------------------------------

    async def _pump_loop(self) -> None:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
        # that arrives as the awaited event fires, and the loop would then never stop.
        while not self._stopped:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self._pump()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("pump failed; retrying", extra={"node": self.node_id})
                await asyncio.sleep(0.5)

    async def _pump(self) -> None:
        while True:
            try:
                applied = await self.writer.submit(
                    lambda txn: apply_receipts(txn, self.plan), concurrent=True
                )
            except ReceiptsAlreadyApplied as exc:
                log.info("receipts applied elsewhere; again", extra={"detail": str(exc)})
                continue
            if len(applied) < 500:
                break
        async with self._claim_lock:
            if not self._claiming:
                return
            try:
                claims, flags = await self.writer.submit(self._claim_all, concurrent=True)
            except ClaimConflict:
                self._wake.set()
                return
            self._start_missions(claims, flags)

    def _start_missions(self, claims: list[Claim], flags: Flags) -> None:
        self.flags = flags
        for claim in claims:
            if claim.session_id is not None:
                self._free_sessions[claim.exec_lane].remove(claim.session_id)
            running = _Running(claim)
            self._running[claim.mission_id] = running
            running.task = asyncio.get_running_loop().create_task(
                self._run(running), name=f"qd-mission-{claim.mission_id}"
            )

    def _claim_all(self, txn: WriteTxn) -> tuple[list[Claim], Flags]:
        flags = read_flags(txn.conn)
        claims: list[Claim] = []
        self._pause_sessions(txn, flags.paused)
        for name, lane in self.config.lanes.items():
            if name in flags.paused:
                continue
            sources = self._sources(name, flags)
            free = self._free_sessions.get(name, [])
            if not sources or not free:
                continue
            got = claim_missions(
                txn, name, sources, len(free), self.node_id, self.config.lease_s, sessions=free,
                plan=self.plan,
            )  # fmt: skip
            for claim in got:
                # The configuration's shadow setting seeded the flag at first start; from
                # then on the flag alone decides, so a supervisor can turn it off.
                if claim.role == "primary" and name in flags.shadow and lane.fallback:
                    add_shadow_mission(txn, claim, lane.fallback)
                if claim.role == "fallback" or claim.exec_lane != claim.lane:
                    bump_counter(txn, "fallback_dispatches")
            claims.extend(got)
        return claims, flags

    def _pause_sessions(self, txn: WriteTxn, paused: frozenset[str]) -> None:
        """Mirror lane pauses on this node's sessions of those lanes."""
        if paused == self._paused_lanes:
            return
        for lane in paused ^ self._paused_lanes:
            target = "paused" if lane in paused else "active"
            for session in self._sessions.get(lane, {}).values():
                set_session_state(txn, session, target)
        self._paused_lanes = paused

    def _sources(self, exec_lane: str, flags: Flags) -> list[str]:
        """The lanes whose queued missions ``exec_lane`` runs, given force-fallback flags."""

        def forced(name: str) -> bool:
            fallback = self.config.lanes[name].fallback
            return fallback is not None and (flags.force_all or name in flags.forced)

        sources = [] if forced(exec_lane) else [exec_lane]
        for name, lane in self.config.lanes.items():
            if name != exec_lane and lane.fallback == exec_lane and forced(name):
                sources.append(name)
        return sources

    # --- running one mission -------------------------------------------------------------------

    async def _run(self, running: _Running) -> None:
        claim = running.claim
        lane_config = self.config.lanes[claim.exec_lane]
        lane = self.lanes[claim.exec_lane]
        session = self._sessions.get(claim.exec_lane, {}).get(claim.session_id or "")
        workdir = (
            Path(session.workdir)
            if session is not None
            else self.state_dir / "work" / claim.workspace / claim.turn_id
        )
        ctx = MissionContext(
            mission_id=claim.mission_id,
            turn_id=claim.turn_id,
            workspace=claim.workspace,
            lane=claim.exec_lane,
            attempt=claim.attempt,
            objective=claim.objective,
            input=claim.input,
            workdir=workdir,
            emit=lambda kind, data: self._emit(running, kind, data),
            request_action=lambda action_id, tool, args: self._request_action(
                running, action_id, tool, args
            ),
            budget=claim.budget,
            number=claim.number,
        )
        outcome: Finish
        result: dict[str, Any] | None = None
        error: str | None = None
        started = asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(lane_config.timeout_s) as scope:
                running.scope = scope
                result = await lane.run(ctx)
            outcome = "completed"
        except TimeoutError:
            outcome, error = "timed_out", f"timed out after {lane_config.timeout_s:g} s"
        except LaneFailure as exc:
            outcome, error = "failed", exc.reason
        except asyncio.CancelledError:
            if running.lost:
                self._running.pop(claim.mission_id, None)
                self._free_session(claim)
                raise
            outcome, error = "cancelled", "cancelled"
        except Exception as exc:
            outcome, error = "failed", f"{type(exc).__name__}: {exc}"
        if running.lost:
            self._running.pop(claim.mission_id, None)
            await self._return_session(claim, None)
            return
        elapsed = asyncio.get_running_loop().time() - started
        if running.events:
            self._pending_events.extend(running.events)
            running.events = []
            self._events_dirty = True
        running.finishing = True
        try:
            # The claim as it stands now: blocking on an approval moved its version.
            finished = await self._finisher.submit(Ending(running.claim, outcome, result, error))
        finally:
            self._running.pop(claim.mission_id, None)
            await self._return_session(claim, outcome)
        self.metrics.observe_mission(claim.exec_lane, outcome, elapsed, finished.accepted)
        if not finished.accepted:
            log.warning(
                "late result rejected", extra={"node": self.node_id, "mission": claim.mission_id}
            )
        self._wake.set()

    def _free_session(self, claim: Claim) -> HeldSession | None:
        session = self._sessions.get(claim.exec_lane, {}).get(claim.session_id or "")
        if session is not None and session.id not in self._free_sessions[claim.exec_lane]:
            self._free_sessions[claim.exec_lane].append(session.id)
        return session

    async def _return_session(self, claim: Claim, outcome: str | None) -> None:
        """Give the mission's session back; three failures in a row mark it degraded, and a
        success makes a degraded session active again."""
        session = self._free_session(claim)
        if session is None or outcome is None or self._stopped:
            return
        failures = 0 if outcome == "completed" else self._session_failures.get(session.id, 0) + 1
        before = self._session_failures.get(session.id, 0)
        self._session_failures[session.id] = failures
        if failures == SESSION_DEGRADED_AFTER or (
            before >= SESSION_DEGRADED_AFTER and failures == 0
        ):
            target = "degraded" if failures else "active"
            with contextlib.suppress(Exception):
                await self.writer.submit(
                    lambda txn: set_session_state(txn, session, target, error=outcome)
                )

    def _emit(self, running: _Running, kind: str, data: Mapping[str, Any]) -> None:
        running.event_count += 1
        if running.event_count > MAX_EVENTS_PER_MISSION:
            return
        claim = running.claim
        try:
            text = canonical_text(dict(data))
        except (TypeError, ValueError):
            text = canonical_text({"repr": repr(data)})
        running.events.append(
            {"mission_id": claim.mission_id, "turn_id": claim.turn_id, "workspace": claim.workspace,
             "at": format_instant(self.clock()), "type": kind, "data": text}
        )  # fmt: skip
        self._events_dirty = True

    async def _request_action(
        self, running: _Running, action_id: str, tool: str, args: Mapping[str, Any]
    ) -> Decision:
        """An agent asks to run a tool: the gate decides (and persists) at once, or the mission
        waits for a person, its timeout stopped meanwhile."""
        gate = await self.writer.submit(
            lambda txn: request_action(txn, self.plan, running.claim, action_id, tool, args)
        )
        if gate.status == "waiting" and gate.approval_id is not None:
            await self._await_approval(running, gate.approval_id, gate.decision_id)
            gate = running.last_gate or Gate("rejected", args, "rejected", "the lease is gone")
        outcome: DecisionOutcome = (
            "rejected" if gate.status != "released" else "edited" if gate.outcome == "edited"
            else "approved"
        )  # fmt: skip
        return Decision(action_id, outcome, dict(gate.args), gate.reason)

    async def _await_approval(
        self, running: _Running, approval_id: str, decision_id: str | None
    ) -> None:
        """Wait until the approval is decided (or expires), then resume the mission."""
        loop = asyncio.get_running_loop()
        scope = running.scope
        remaining = None
        if scope is not None and scope.when() is not None:
            remaining = max(0.0, (scope.when() or 0.0) - loop.time())
            scope.reschedule(None)
        running.last_gate = None
        try:
            while True:
                future = self._waiters.get(approval_id)
                if future is None or future.done():
                    future = loop.create_future()
                    self._waiters[approval_id] = future
                self._wake_supervision.set()
                await asyncio.shield(future)
                gate, version = await self.writer.submit(
                    self._resume_op(running.claim, approval_id, decision_id)
                )
                if gate.status == "waiting":
                    continue
                if version is not None:
                    running.claim = replace(running.claim, version=version)
                running.last_gate = gate
                return
        finally:
            self._waiters.pop(approval_id, None)
            if scope is not None and remaining is not None:
                scope.reschedule(loop.time() + remaining)

    def _resume_op(
        self, claim: Claim, approval_id: str, decision_id: str | None
    ) -> Callable[[WriteTxn], tuple[Gate, int | None]]:
        return lambda txn: resume_action(txn, self.plan, claim, approval_id, decision_id)

    async def _supervision_loop(self) -> None:
        """Walk approval ladders past their deadlines, wake missions whose approvals were
        decided, and stop missions whose lease was revoked (a person took the turn over)."""
        tick = 0
        while not self._stopped:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SUPERVISION_INTERVAL_S):
                    await self._wake_supervision.wait()
            self._wake_supervision.clear()
            tick += 1
            try:
                if tick % 5 == 0 and await self._approvals_due():
                    await self.writer.submit(
                        lambda txn: expire_due(txn, self.plan, f"{self.node_id}:ladder")
                    )
                await self._resolve_waiters()
                if tick % 5 == 0:
                    await self._stop_revoked()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("supervision pass failed", extra={"node": self.node_id})

    async def _approvals_due(self) -> bool:
        """Whether an open approval's deadline has passed (a read, so an idle node takes no
        write transaction for it)."""
        return await approvals_due(self.db, format_instant(self.clock()))

    async def _resolve_waiters(self) -> None:
        waiting = [key for key, future in self._waiters.items() if not future.done()]
        if not waiting:
            return
        for approval_id in await decided_approvals(self.db, waiting):
            future = self._waiters.get(approval_id)
            if future is not None and not future.done():
                future.set_result(None)

    async def _stop_revoked(self) -> None:
        """Cancel the agents of missions that are no longer theirs (taken over, cancelled).

        The read runs beside the missions: one may finish while it is under way, and its own
        finish (the mission ended at the same attempt, or is ending now) is not a revocation.
        """
        held = {r.claim.mission_id: r for r in self._running.values() if not r.finishing}
        if not held:
            return
        for row in await mission_holds(self.db, list(held)):
            running = held[row.id]
            if (row.attempt, row.lease_owner) == (running.claim.attempt, running.claim.owner):
                continue
            if running.finishing or self._running.get(row.id) is not running:
                continue  # it finished while the read ran; its finish is fenced on its own
            if row.attempt == running.claim.attempt and row.state in SELF_FINISHED_STATES:
                continue  # its own finish committed (the runtime has not seen it return yet)
            if running.task is not None and not running.lost:
                running.lost = True
                running.task.cancel()
                self.metrics.leases_lost += 1

    async def _flush_events(self, running: _Running | None = None) -> None:
        """Store reported events: one mission's (at its end), or every mission's."""
        sources = [running] if running is not None else list(self._running.values())
        for source in sources:
            if source.events:
                self._pending_events.extend(source.events)
                source.events = []
        self._events_dirty = False
        batch, self._pending_events = self._pending_events, []
        if batch:
            await self.writer.submit(lambda txn: record_events(txn, batch), concurrent=True)

    async def _events_loop(self) -> None:
        while not self._stopped:
            await asyncio.sleep(0.25)
            if self._events_dirty:
                await self._flush_events()

    # --- heartbeats and sweeping ---------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        period = self.config.lease_s / 3
        while not self._stopped:
            await asyncio.sleep(period * random.uniform(0.8, 1.0))
            sessions = [s for lane in self._sessions.values() for s in lane.values()]
            if sessions:
                try:
                    lost_sessions = await self.writer.submit(self._session_heartbeat_op(sessions))
                    if lost_sessions and self._claiming:  # (draining: released, not lost)
                        await self._replace_sessions(lost_sessions)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("session heartbeat failed", extra={"node": self.node_id})
            held = [r.claim for r in self._running.values() if not r.lost and not r.finishing]
            if not held:
                continue
            try:
                lost = await self.writer.submit(self._heartbeat_op(held))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("heartbeat failed", extra={"node": self.node_id})
                continue
            for claim in lost:
                running = self._running.get(claim.mission_id)
                if running is None or running.task is None or running.lost:
                    continue
                self.metrics.leases_lost += 1
                if not running.finishing:  # a finish under way is refused by its own fencing
                    running.lost = True
                    running.task.cancel()

    def _session_heartbeat_op(
        self, held: list[HeldSession]
    ) -> Callable[[WriteTxn], list[HeldSession]]:
        return lambda txn: heartbeat_sessions(txn, held, self.config.lease_s, self._paused_lanes)

    async def _replace_sessions(self, lost: list[HeldSession]) -> None:
        """Forget sessions another node took over while this one was silent, and lease as many
        others, so that the lanes keep their concurrency. A mission still running in a lost
        session has lost its lease too; it does not give the session back when it ends."""
        log.warning(
            "sessions taken over by another node",
            extra={"node": self.node_id, "sessions": [s.id for s in lost]},
        )
        self.metrics.sessions_lost += len(lost)
        for session in lost:
            self._sessions.get(session.lane, {}).pop(session.id, None)
            free = self._free_sessions.get(session.lane, [])
            if session.id in free:
                free.remove(session.id)

        def lease_others(txn: WriteTxn) -> list[HeldSession]:
            acquired: list[HeldSession] = []
            if not self._claiming:
                return acquired  # draining: the sessions are about to be handed back
            for lane in sorted({s.lane for s in lost} & set(self.config.lanes)):
                count = sum(1 for s in lost if s.lane == lane)
                acquired += acquire_sessions(
                    txn, lane, count, self.node_id, self.config.lease_s, self.state_dir
                )
            return acquired

        for session in await self.writer.submit(lease_others):
            self._sessions.setdefault(session.lane, {})[session.id] = session
            self._free_sessions.setdefault(session.lane, []).append(session.id)
        self._wake.set()

    def _heartbeat_op(self, held: list[Claim]) -> Callable[[WriteTxn], list[Claim]]:
        return lambda txn: heartbeat(txn, held, self.config.lease_s)

    async def _sweep_loop(self) -> None:
        interval = self.config.sweep_interval_s
        while not self._stopped:
            await asyncio.sleep(interval * random.uniform(0.5, 1.0))
            try:
                swept = await self.writer.submit(lambda txn: sweep(txn, self.node_id))
                await self.writer.submit(lambda txn: sweep_sessions(txn, self.node_id))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sweep failed", extra={"node": self.node_id})
                continue
            if swept.reclaimed or swept.dead:
                self.metrics.reclaimed += swept.reclaimed
                log.info(
                    "swept",
                    extra={"node": self.node_id, "reclaimed": swept.reclaimed, "dead": swept.dead},
                )
                self._wake.set()

    async def _stalled_loop(self) -> None:
        """End other processes' write transactions left hanging mid-statement by a freeze
        (on PostgreSQL they hold locks other nodes' writes wait for;
        the store finds none on SQLite)."""
        while not self._stopped:
            await asyncio.sleep(self.config.sweep_interval_s)
            try:
                ended = await self.db.end_stalled_writers()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("looking for stalled writers failed", exc_info=True)
                continue
            if ended:
                log.warning("ended stalled write sessions", extra={"node": self.node_id,
                                                                    "sessions": ended})  # fmt: skip

    async def _watch_loop(self) -> None:
        """Notice commits by other processes (SQLite's data version, PostgreSQL's NOTIFY or
        polling) and wake the pump."""
        feed = ChangeFeed(self.db, poll_s=WATCH_INTERVAL_S)
        await feed.open()
        try:
            last = feed.version()
            while not self._stopped:
                current = await feed.wait(last, WATCH_INTERVAL_S * 4)
                if current != last:
                    last = current
                    self._wake.set()
                    if self._waiters:
                        self._wake_supervision.set()
        finally:
            await feed.close()
