"""The embedded runtime: applies receipts, dispatches missions onto lanes under fenced leases,
heartbeats them, finishes them, and sweeps what other workers left behind.

One :class:`Runtime` per process (a *node*, with a fresh id per start). Several nodes may share
one database: every claim and every later write is fenced, so they cannot take work from each
other except by the lease expiring. All writes go through the node's group-commit writer.

The runtime composes its parts and runs each mission: the pump that applies receipts and claims
missions (:mod:`.dispatch`), the sessions it leases (:mod:`.session_pool`), the supervision of
running missions (:mod:`.supervision`), their reported events (:mod:`.missions`), and the
background upkeep of leases, sweeps and other processes' commits (:mod:`.upkeep`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from quarterdeck.domain.authority import Principal
from quarterdeck.domain.clock import Clock, utc_now
from quarterdeck.domain.commands import ApprovalRequest, BaseCommand, Command
from quarterdeck.domain.policy import Policy
from quarterdeck.domain.recovery import Finish
from quarterdeck.domain.routing import ActionCaps
from quarterdeck.runtime.api import ControlServer
from quarterdeck.runtime.api_agents import AgentRegistry
from quarterdeck.runtime.api_serve import (
    ControlOptions,
    ServeError,
    build_server,
    socket_in_use,
)
from quarterdeck.runtime.batch import Batch
from quarterdeck.runtime.checkpointer import start_checkpointer
from quarterdeck.runtime.config import RuntimeConfig, daemon_user, roster_of
from quarterdeck.runtime.dispatch import Dispatcher
from quarterdeck.runtime.drift import DriftMonitor
from quarterdeck.runtime.ingest import Ingestor, RawInput
from quarterdeck.runtime.lanes.base import Lane, LaneFailure, MissionContext
from quarterdeck.runtime.lanes.containment import API_ENV, SESSION_CREDENTIAL_ENV
from quarterdeck.runtime.lanes.registry import build_lane
from quarterdeck.runtime.listeners import ListenError
from quarterdeck.runtime.metrics import Metrics
from quarterdeck.runtime.missions import MissionEvents, RunningMission
from quarterdeck.runtime.policy_source import PolicySource
from quarterdeck.runtime.prometheus import Exposition
from quarterdeck.runtime.reaper import Reaper
from quarterdeck.runtime.relay import Relay
from quarterdeck.runtime.session_pool import SessionPool
from quarterdeck.runtime.slo import SloMonitor
from quarterdeck.runtime.supervision import Supervision
from quarterdeck.runtime.upkeep import Upkeep
from quarterdeck.runtime.workdirs import mission_workdir
from quarterdeck.store.apply import apply_command_receipt, apply_receipts
from quarterdeck.store.commands import DRIFT_ACTOR
from quarterdeck.store.database import Database
from quarterdeck.store.finishing import Ending, Finished, finish_missions
from quarterdeck.store.flags import Flags, seed_flags
from quarterdeck.store.leases import release_missions
from quarterdeck.store.outbox import Target
from quarterdeck.store.plan import Claim, LanePlan, WorkPlan
from quarterdeck.store.receipts import IngestResult
from quarterdeck.store.sessions import release_sessions
from quarterdeck.store.writer import Writer, WriterClosed, WriteTxn

log = logging.getLogger("quarterdeck.runtime")


def work_plan(config: RuntimeConfig) -> WorkPlan:
    """The store's view of the lanes, and the roster commands are checked against."""
    return WorkPlan(
        roster=roster_of(config, daemon_user()),
        lanes={
            name: LanePlan(
                name, lane.fallback, lane.max_attempts, lane.backoff_initial_s, lane.backoff_max_s
            )
            for name, lane in config.lanes.items()
        },
        default_lane=config.default_lane,
        hold_s=config.hold_s,
        caps=ActionCaps(config.max_action_args_bytes, config.max_actions_per_mission),
    )


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
        control: ControlOptions | None = None,
    ) -> None:
        """``control``: serve the control API there while running (None: serve none)."""
        self.db = db
        self.config = config
        self.state_dir = state_dir or Path("state")
        self.node_id = node_id or f"node-{uuid.uuid4()}"
        self.clock = clock
        self.metrics = Metrics()
        self.writer = Writer(db, clock)
        self.ingestor = Ingestor(self.writer, clock, self.metrics)
        targets = tuple(Target(w.name, w.format, w.events) for w in config.webhooks)
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
        self._running: dict[str, RunningMission] = {}
        self._wake = asyncio.Event()
        """Wakes the pump."""
        self._tasks: list[asyncio.Task[None]] = []
        self._seen_head = -1
        self.sessions = SessionPool(self.writer, config, self.node_id, self.state_dir, self.metrics)
        self._sessions = self.sessions.held
        """The pool's sessions by lane and id (a mission starts in one of them)."""
        self.events = MissionEvents(self.writer, clock, self._running)
        self.dispatch = Dispatcher(
            self.writer, config, self.node_id, self.sessions, self._wake, lambda: self.plan,
            self._start_missions,
        )  # fmt: skip
        self.reaper = Reaper(self.writer, self.node_id)
        self.supervision = Supervision(
            db, self.writer, clock, self.node_id, self.metrics, self._running, lambda: self.plan
        )
        self.upkeep = Upkeep(
            db, self.writer, config, self.node_id, self.metrics, self.sessions, self._running,
            self._wake, lambda: self.dispatch.claiming, self.supervision.wake_if_waiting,
            self.reaper.before_sweep,
        )  # fmt: skip
        self.agents = AgentRegistry()
        """The agents' session credentials and processes (the control API checks them)."""
        self._control_options = control
        self.control: ControlServer | None = None
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
        self.checkpointer = await start_checkpointer(
            self.db,
            self.writer,
            self.config.ledger,
            self.state_dir,
            self.node_id,
            self.plan.targets,
        )
        await self.reaper.clear_leftovers()  # before this node claims or reclaims anything
        await self.writer.submit(self._seed_flags)
        await self.writer.submit(self.sessions.acquire)
        await self.policy_source.start()
        await self.drift.start()
        self.dispatch.claiming = True
        stop = self._stop_event
        loop = asyncio.get_running_loop()
        for coroutine, name in (
            (self.dispatch.run(stop), "pump"),
            (self.upkeep.heartbeats(stop), "heartbeat"),
            (self.upkeep.sweeps(stop), "sweep"),
            (self.upkeep.watch(stop), "watch"),
            (self.events.run(stop), "events"),
            (self.supervision.run(stop), "supervision"),
            (self.slo.run(stop), "slo"),
            (self.relay.run(stop), "relay"),
        ):
            self._tasks.append(loop.create_task(coroutine, name=f"qd-{name}"))
        self._tasks.append(loop.create_task(self.upkeep.stalled(stop), name="qd-stalled"))
        if self._control_options is not None:
            await self._serve(self._control_options)
        log.info("runtime started", extra={"node": self.node_id, "lanes": list(self.lanes)})

    async def _serve(self, options: ControlOptions) -> None:
        """Serve the control API, checked against the plan's roster. A failure to listen stops the runtime again and raises.

        Raises:
            ServeError, ListenError, OSError: the API cannot be served as asked.
        """
        if socket_in_use(options.socket_path):
            log.warning(
                "another node serves the control API of this state directory",
                extra={"node": self.node_id, "socket": str(options.socket_path)},
            )
            return
        try:
            self.control = build_server(
                options,
                roster=self.plan.roster,
                submit=self.submit, command=self.command, db=self.db, node_id=self.node_id,
                metrics=self.metrics, exposition=Exposition(self).render, agents=self.agents,
                on_commit=self.writer.on_commit, record=self.record,
            )  # fmt: skip
            await self.control.start()
        except BaseException as exc:
            if self.control is not None and self.control.agent_socket_path is not None:
                with contextlib.suppress(OSError):
                    self.control.agent_socket_path.parent.rmdir()
            self.control = None
            if isinstance(exc, ListenError) and socket_in_use(options.socket_path):
                log.warning(
                    "another node serves the control API of this state directory",
                    extra={"node": self.node_id, "socket": str(options.socket_path)},
                )
                return
            await self.stop(grace_s=0)
            if isinstance(exc, OSError):
                raise ServeError(f"cannot serve the control API: {exc}") from None
            raise

    def _on_commit(self, head_seq: int) -> None:
        """Wake the pump when the ledger moved (an idle commit must not wake it: no busy loop),
        unless the commit was quiet (it made no work for the pump: an approval request)."""
        if head_seq != self._seen_head:
            self._seen_head = head_seq
            if not self.writer.last_quiet:
                self._wake.set()
            self.supervision.wake_if_waiting()

    def _set_policy(self, policy: Policy) -> None:
        """A valid edit of the policy file: new decisions use it from now on."""
        self.plan = replace(self.plan, policy=policy)
        log.info("policy loaded", extra={"node": self.node_id, "hash": policy.hash})

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
        if self._stop_event.is_set() or (not self.dispatch.claiming and not self._tasks):
            return
        if self.control is not None:
            await self.control.stop()
            if self.control.agent_socket_path is not None:
                with contextlib.suppress(OSError):
                    self.control.agent_socket_path.parent.rmdir()
            self.control = None
        # A claim already under way has started its missions: they drain below.
        await self.dispatch.stop_claiming()
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
        await self.events.flush()
        await self.writer.submit(lambda txn: release_sessions(txn, self.node_id))
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
        if self.checkpointer is not None:
            await self.checkpointer.stop()  # the head as this node leaves it, signed
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

    async def record(self, inputs: Sequence[RawInput]) -> list[IngestResult]:
        """Ingest events and apply them at once, in the same transaction (with any receipts
        still waiting before them, as the pump would): one commit, which wakes the pump only
        when it applied something that makes work for it (see
        :meth:`~quarterdeck.store.writer.Writer.submit`'s ``quiet``)."""
        try:
            results, _ = await self.ingestor.ingest_then(
                inputs, lambda txn, _results: apply_receipts(txn, self.plan), quiet=True
            )
        except WriterClosed:
            raise
        except Exception:
            # Nothing was committed: recorded as any envelope is (the pump applies them).
            log.exception("events not applied at once", extra={"node": self.node_id})
            return await self.submit(inputs)
        return results

    async def command(
        self,
        workspace: str,
        payload: Command | Mapping[str, Any],
        principal: Principal,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Give a supervisor command in this process for the authenticated ``principal``:
        recorded as a command envelope (``idempotency_key`` by default a fresh one), applied at
        once through its receipt for ``principal`` (checked against the roster; on the ledger
        its actor is ``principal.label``), and its result returned. A payload naming an
        ``actor`` is refused. Given again with the same ``idempotency_key``, it returns the
        first result."""
        body = payload.to_payload() if isinstance(payload, BaseCommand) else dict(payload)
        envelope = {
            "idempotency_key": idempotency_key or f"cmd:{uuid.uuid4()}",
            "workspace": workspace,
            "kind": "command",
            "payload": body,
        }
        quiet = body.get("command") == ApprovalRequest.name
        _, result = await self.ingestor.ingest_then(
            [envelope],
            lambda txn, results: apply_command_receipt(txn, self.plan, results[0], principal),
            quiet=quiet,
        )
        if not quiet:
            self._wake.set()
        return result

    @property
    def running(self) -> int:
        """Missions this node is running now."""
        return len(self._running)

    # --- starting and running missions --------------------------------------------------------

    def _start_missions(self, claims: list[Claim], flags: Flags) -> None:
        """Start the missions just claimed, each in its session (the pump's hand-off)."""
        self.flags = flags
        for claim in claims:
            self.sessions.take(claim)
            running = RunningMission(claim)
            self._running[claim.mission_id] = running
            running.task = asyncio.get_running_loop().create_task(
                self._run(running), name=f"qd-mission-{claim.mission_id}"
            )

    async def _run(self, running: RunningMission) -> None:
        """Run one mission on its lane to its end, then finish it (fenced on its claim)."""
        claim = running.claim
        lane_config = self.config.lanes[claim.exec_lane]
        lane = self.lanes[claim.exec_lane]
        session = self._sessions.get(claim.exec_lane, {}).get(claim.session_id or "")
        session_id = session.id if session is not None else None
        workdir = mission_workdir(
            self.state_dir, self.config.agents_dir, claim.workspace, session_id, claim.turn_id
        )
        credential = None
        agent_env: dict[str, str] = {}
        if self.control is not None and self.control.agent_socket_path is not None:
            credential = self.agents.issue(session_id or f"turn-{claim.turn_id}", claim.workspace)
            agent_env = {
                SESSION_CREDENTIAL_ENV: credential.text,
                API_ENV: str(self.control.agent_socket_path),
            }

        def on_agent(pid: int, alive: bool) -> None:
            if alive:
                self.agents.started(pid, credential)
            else:
                self.agents.exited(pid)

        ctx = MissionContext(
            mission_id=claim.mission_id,
            turn_id=claim.turn_id,
            workspace=claim.workspace,
            lane=claim.exec_lane,
            attempt=claim.attempt,
            objective=claim.objective,
            input=claim.input,
            workdir=workdir,
            emit=lambda kind, data: self.events.emit(running, kind, data),
            request_action=lambda action_id, tool, args: self.supervision.request_action(
                running, action_id, tool, args
            ),
            budget=claim.budget,
            number=claim.number,
            agent_env=agent_env,
            on_agent=on_agent,
            agents=self.reaper,
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
                self.sessions.release(claim)
                raise
            outcome, error = "cancelled", "cancelled"
        except Exception as exc:
            outcome, error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            if credential is not None:
                self.agents.revoke(credential)
        if running.lost:
            self._running.pop(claim.mission_id, None)
            await self.sessions.give_back(claim, None, stopped=self._stop_event.is_set())
            return
        elapsed = asyncio.get_running_loop().time() - started
        self.events.collect(running)
        running.finishing = True
        try:
            # The claim as it stands now: blocking on an approval moved its version.
            finished = await self._finisher.submit(Ending(running.claim, outcome, result, error))
        finally:
            self._running.pop(claim.mission_id, None)
            await self.sessions.give_back(claim, outcome, stopped=self._stop_event.is_set())
        self.metrics.observe_mission(claim.exec_lane, outcome, elapsed, finished.accepted)
        if not finished.accepted:
            log.warning(
                "late result rejected", extra={"node": self.node_id, "mission": claim.mission_id}
            )
        self._wake.set()
