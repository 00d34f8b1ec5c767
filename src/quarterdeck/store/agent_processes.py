"""The record of agents' processes: one row per agent a node started, written (and committed)
before the agent runs its work and deleted once it is reaped, so that a node can find and kill
what a dead node left running on its host before the dead node's leases are reclaimed. Runs
inside the writer's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Row, text

from quarterdeck.domain.states import MISSION_HOLDS_LEASE
from quarterdeck.store.sql import in_list
from quarterdeck.store.transitions import append_entry
from quarterdeck.store.writer import WriteTxn

KILLED_ACTION = "mission.agent_killed"
"""The ledger action naming what was killed of a mission's agent after its node was gone."""


@dataclass(frozen=True, slots=True)
class AgentProcess:
    """One agent process as recorded: where it runs, who started it, for which claim, and how
    to recognise it (the boot, its start time) and what holds it (process group, session,
    cgroup)."""

    id: str
    host: str
    boot_id: str
    node_id: str
    supervisor_pid: int
    supervisor_start: int
    """The node's own process and its start time: when that process is gone, so is the node."""
    mission_id: str
    attempt: int
    workspace: str
    lane: str
    pid: int
    pgid: int
    sid: int
    start_ticks: int
    cgroup: str | None
    recorded_at: str


_COLUMNS = (
    "id, host, boot_id, node_id, supervisor_pid, supervisor_start, mission_id, attempt, "
    "workspace, lane, pid, pgid, sid, start_ticks, cgroup, recorded_at"
)


def record_agent_process(txn: WriteTxn, process: AgentProcess) -> None:
    """Insert the record of an agent process (its ``recorded_at`` is the transaction's time)."""
    values = {**asdict(process), "recorded_at": txn.at}
    placeholders = ", ".join(f":{name}" for name in _COLUMNS.split(", "))
    txn.conn.execute(
        text(f"INSERT INTO agent_processes ({_COLUMNS}) VALUES ({placeholders})"), values
    )


def forget_agent_process(txn: WriteTxn, record_id: str) -> None:
    """Delete one record (nothing when it is already gone)."""
    txn.conn.execute(text("DELETE FROM agent_processes WHERE id = :id"), {"id": record_id})


def agent_processes_on(txn: WriteTxn, host: str) -> list[AgentProcess]:
    """Every record of agent processes on ``host``, oldest first."""
    rows = txn.conn.execute(
        text(f"SELECT {_COLUMNS} FROM agent_processes WHERE host = :host ORDER BY recorded_at"),
        {"host": host},
    ).all()
    return [_process(row) for row in rows]


_ORPHANED = text(
    f"SELECT a.{_COLUMNS.replace(', ', ', a.')} FROM agent_processes a "
    "LEFT JOIN missions m ON m.id = a.mission_id "
    "WHERE a.host = :host AND (m.id IS NULL OR m.attempt != a.attempt "
    f"OR m.state NOT IN {in_list(MISSION_HOLDS_LEASE)} OR m.lease_owner IS NULL "
    "OR m.lease_owner != a.node_id OR m.lease_expires_at < :now) ORDER BY a.recorded_at"
)


def orphaned_agent_processes(txn: WriteTxn, host: str) -> list[AgentProcess]:
    """Records on ``host`` whose claim no longer holds: the mission is gone, has moved to
    another attempt or owner, no longer holds a lease, or its lease has expired (so a sweep
    reclaims it)."""
    rows = txn.conn.execute(_ORPHANED, {"host": host, "now": txn.at}).all()
    return [_process(row) for row in rows]


def record_agent_killed(
    txn: WriteTxn, process: AgentProcess, killed: Sequence[int], reason: str, actor: str
) -> None:
    """Put on the ledger what was killed of a recorded agent, and why."""
    payload: dict[str, Any] = {
        "attempt": process.attempt,
        "node": process.node_id,
        "host": process.host,
        "lane": process.lane,
        "pid": process.pid,
        "pgid": process.pgid,
        "sid": process.sid,
        "cgroup": process.cgroup,
        "killed": list(killed),
        "reason": reason,
    }
    append_entry(
        txn, process.workspace, actor, KILLED_ACTION, "mission", process.mission_id, None, None,
        payload,
    )  # fmt: skip


def _process(row: Row[Any]) -> AgentProcess:
    return AgentProcess(**row._asdict())
