"""Step 9: agent processes, recorded before they run."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Connection, Index, Integer, MetaData, String, Table, Text


def _tables_v9(metadata: MetaData) -> list[Table]:
    agent_processes = Table(
        "agent_processes",
        metadata,
        Column("id", String, primary_key=True),
        Column("host", String, nullable=False),
        Column("boot_id", String, nullable=False),
        Column("node_id", String, nullable=False),
        Column("supervisor_pid", Integer, nullable=False),
        Column("supervisor_start", BigInteger, nullable=False),
        Column("mission_id", String, nullable=False),
        Column("attempt", Integer, nullable=False),
        Column("workspace", String, nullable=False),
        Column("lane", String, nullable=False),
        Column("pid", Integer, nullable=False),
        Column("pgid", Integer, nullable=False),
        Column("sid", Integer, nullable=False),
        Column("start_ticks", BigInteger, nullable=False),
        Column("cgroup", Text),
        Column("recorded_at", String, nullable=False),
        Index("ix_agent_processes_host", "host", "recorded_at"),
    )
    return [agent_processes]


def up(conn: Connection) -> None:
    """Each agent's processes are recorded before it runs, so that a node can kill what a dead
    node left running on its host before reclaiming its leases."""
    metadata = MetaData()
    _tables_v9(metadata)
    metadata.create_all(conn)


def down(conn: Connection) -> None:
    metadata = MetaData()
    _tables_v9(metadata)
    metadata.drop_all(conn)
