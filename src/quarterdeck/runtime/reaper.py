"""A node's record of its agents' processes, and its removal of what dead nodes left running.

Every agent a lane starts is recorded (:mod:`quarterdeck.store.agent_processes`: host, boot,
node, the node's own process, mission and attempt, pid, process group, session, start time,
cgroup) and committed before it runs its work; the record goes once the agent is reaped. With
those records a node kills, on its own host:

- at start, before it claims or reclaims anything, what a node that is gone left running (a
  previous incarnation of itself, or any node whose process has ended) and what runs for a claim
  that no longer holds;
- before each sweep, in the sweep's own transaction, what runs for a lease that has expired (the
  leases the sweep is about to reclaim), whatever its node.

Each process is checked before it is killed (the same boot, the same start time; the members of
its group, session or cgroup), so a recycled pid is never killed. What was killed goes on the
ledger (``mission.agent_killed``) and in the log.
"""

from __future__ import annotations

import logging
import os

from quarterdeck.domain.ids import new_id
from quarterdeck.runtime.lanes.containment import SpawnedAgent
from quarterdeck.runtime.processes import (
    RecordedAgent,
    boot_id,
    host_name,
    is_running,
    kill_leftovers,
    start_ticks,
)
from quarterdeck.store.agent_processes import (
    AgentProcess,
    agent_processes_on,
    forget_agent_process,
    orphaned_agent_processes,
    record_agent_killed,
    record_agent_process,
)
from quarterdeck.store.writer import Writer, WriteTxn

log = logging.getLogger("quarterdeck.runtime")

LEASE_GONE = "its lease is no longer held"
NODE_GONE = "its node is gone"
PREVIOUS_LIFE = "a previous incarnation of this node"
_REMEMBERED = 1024


class Reaper:
    """This node's agent records (the lanes' :class:`AgentRegistry`) and its kills of what
    other nodes' agents left on this host."""

    def __init__(self, writer: Writer, node_id: str) -> None:
        self._writer = writer
        self._node_id = node_id
        self.host = host_name()
        self.boot = boot_id()
        self._pid = os.getpid()
        self._start = start_ticks(self._pid) or 0
        self._killed: dict[str, list[int]] = {}
        """What was killed for each record, kept across a retried transaction so that the
        ledger names what the first try killed."""

    async def started(self, agent: SpawnedAgent) -> str:
        """Record an agent started by this node (committed when this returns)."""
        record = AgentProcess(
            id=new_id(), host=self.host, boot_id=self.boot, node_id=self._node_id,
            supervisor_pid=self._pid, supervisor_start=self._start, mission_id=agent.mission_id,
            attempt=agent.attempt, workspace=agent.workspace, lane=agent.lane, pid=agent.pid,
            pgid=agent.pgid, sid=agent.sid, start_ticks=agent.start_ticks, cgroup=agent.cgroup,
            recorded_at="",
        )  # fmt: skip
        await self._writer.submit(lambda txn: record_agent_process(txn, record), concurrent=True)
        return record.id

    async def reaped(self, record_id: str) -> None:
        """Forget an agent that was reaped. If that cannot be written, the record stays until
        a node finds its processes gone."""
        try:
            await self._writer.submit(
                lambda txn: forget_agent_process(txn, record_id), concurrent=True
            )
        except Exception:
            log.warning(
                "agent record not removed", exc_info=True,
                extra={"node": self._node_id, "record": record_id},
            )  # fmt: skip

    async def clear_leftovers(self) -> None:
        """At start: kill what gone nodes' agents (and agents of claims that no longer hold)
        left running on this host."""
        await self._writer.submit(self._clear_leftovers)
        self._killed.clear()

    def _clear_leftovers(self, txn: WriteTxn) -> None:
        orphaned = {process.id for process in orphaned_agent_processes(txn, self.host)}
        for process in agent_processes_on(txn, self.host):
            if process.boot_id != self.boot:
                self._forget_earlier_boot(txn, process)
            elif process.node_id == self._node_id:
                self._kill(txn, process, PREVIOUS_LIFE)
            elif not is_running(process.supervisor_pid, process.supervisor_start):
                self._kill(txn, process, NODE_GONE)
            elif process.id in orphaned:
                self._kill(txn, process, LEASE_GONE)

    def before_sweep(self, txn: WriteTxn) -> None:
        """In the sweep's transaction, before it reclaims expired leases: kill what runs on
        this host for a claim that no longer holds."""
        for process in orphaned_agent_processes(txn, self.host):
            if process.boot_id != self.boot:
                self._forget_earlier_boot(txn, process)
            else:
                self._kill(txn, process, LEASE_GONE)
        if len(self._killed) > _REMEMBERED:
            self._killed.clear()

    def _kill(self, txn: WriteTxn, process: AgentProcess, reason: str) -> None:
        killed = self._killed.get(process.id)
        if killed is None:
            agent = RecordedAgent(
                process.pid, process.pgid, process.sid, process.start_ticks, process.cgroup
            )
            killed = self._killed[process.id] = kill_leftovers(agent)
        extra = {
            "node": self._node_id, "mission": process.mission_id, "attempt": process.attempt,
            "agent_node": process.node_id, "pid": process.pid, "cgroup": process.cgroup,
            "killed": killed, "reason": reason,
        }  # fmt: skip
        if killed:
            record_agent_killed(txn, process, killed, reason, self._node_id)
            log.warning("killed what an agent left running", extra=extra)
        else:
            log.info("agent record of a finished agent removed", extra=extra)
        forget_agent_process(txn, process.id)

    def _forget_earlier_boot(self, txn: WriteTxn, process: AgentProcess) -> None:
        log.info(
            "agent record from an earlier boot removed",
            extra={"node": self._node_id, "mission": process.mission_id, "pid": process.pid},
        )
        forget_agent_process(txn, process.id)
