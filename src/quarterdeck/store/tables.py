"""SQLModel tables. They mirror the schema the migrations build (a test checks it).

Tables are kept apart from domain types: repositories translate between them.
JSON columns hold canonical JSON text; instants are fixed-width ISO-8601 UTC text.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, LargeBinary, Table, Text, func, text
from sqlmodel import Field, SQLModel


class ReceiptRow(SQLModel, table=True):
    """The durable record of one inbound envelope, valid or not."""

    __tablename__ = "receipts"
    __table_args__ = (
        Index("ux_receipts_dedupe", "workspace", "dedupe_key", unique=True),
        Index("ix_receipts_status", "workspace", "status"),
        Index(
            "ix_receipts_unapplied",
            "id",
            sqlite_where=text("status = 'accepted' AND produced_type IS NULL"),
            postgresql_where=text("status = 'accepted' AND produced_type IS NULL"),
        ),
    )

    id: str = Field(primary_key=True)
    workspace: str
    dedupe_key: str
    envelope_id: str | None = None
    idempotency_key: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None
    schema_version: int | None = None
    kind: str | None = None
    payload: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    submitted_at: str | None = None
    received_at: str
    status: str
    errors: str = Field(default="[]", sa_column=Column(Text, nullable=False))
    raw: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    raw_size: int | None = None
    produced_type: str | None = None
    produced_id: str | None = None
    version: int = 1


class LaneFlagsRow(SQLModel, table=True):
    """Supervisor flags of one lane; the row named ``*`` holds the global ones."""

    __tablename__ = "lane_flags"

    lane: str = Field(primary_key=True)
    paused: int = 0
    shadow: int = 0
    force_fallback: int = 0
    version: int = 1
    updated_at: str


class MissionEventRow(SQLModel, table=True):
    """A progress, log, action or error event reported while a mission ran."""

    __tablename__ = "mission_events"
    __table_args__ = (Index("ix_mission_events_turn", "turn_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    mission_id: str
    turn_id: str
    workspace: str
    at: str
    type: str
    data: str = Field(sa_column=Column(Text, nullable=False))


class CounterRow(SQLModel, table=True):
    """A named runtime counter kept with the data (late writes rejected, recoveries, ...)."""

    __tablename__ = "counters"

    name: str = Field(primary_key=True)
    value: int = 0


class ReceiptCounterRow(SQLModel, table=True):
    """Per-workspace count of acknowledged duplicate deliveries."""

    __tablename__ = "receipt_counters"

    workspace: str = Field(primary_key=True)
    duplicates: int = 0


class _StatefulColumns(SQLModel):
    id: str = Field(primary_key=True)
    workspace: str = Field(index=False)
    state: str
    version: int = 1
    attempt: int = 0
    created_at: str
    updated_at: str
    data: str = Field(default="{}", sa_column_kwargs={"nullable": False})


class TurnRow(_StatefulColumns, table=True):
    """One unit of agent work triggered by a receipt."""

    __tablename__ = "turns"
    __table_args__ = (
        Index("ix_turns_state", "workspace", "state"),
        Index("ux_turns_receipt", "receipt_id", unique=True),
    )

    receipt_id: str | None = None
    lane: str | None = None
    lease_owner: str | None = None
    lease_expires_at: str | None = None
    objective: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    input: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    budget: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    deliverable: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    dead_letter: str | None = None
    """Dead-letter stage: None, ``retryable``, ``held`` or ``dead``."""
    held_until: str | None = None


class MissionRow(_StatefulColumns, table=True):
    """One dispatch of a turn's work onto a lane."""

    __tablename__ = "missions"
    __table_args__ = (
        Index("ix_missions_state", "workspace", "state"),
        Index(
            "ix_missions_queued",
            "lane",
            "id",
            sqlite_where=text("state = 'queued'"),
            postgresql_where=text("state = 'queued'"),
        ),
        Index("ix_missions_turn", "turn_id"),
        Index("ix_missions_lease", "state", "lease_expires_at"),
    )

    turn_id: str | None = None
    lane: str | None = None
    lease_owner: str | None = None
    lease_expires_at: str | None = None
    role: str | None = None
    """``primary``, ``fallback`` or ``shadow``."""
    number: int | None = None
    """Which try this is on its lane (1, 2, ...)."""
    not_before: str | None = None
    routed_lane: str | None = None
    """The lane that actually ran it, when force fallback routed it elsewhere."""
    session_id: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    result: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    decision_id: str | None = None
    """The persisted decision that allowed this mission's dispatch."""


class SessionRow(_StatefulColumns, table=True):
    """A lane's durable worker identity."""

    __tablename__ = "sessions"
    __table_args__ = (Index("ix_sessions_state", "workspace", "state"),)

    lane: str | None = None
    lease_owner: str | None = None
    lease_expires_at: str | None = None
    heartbeat_at: str | None = None
    last_error: str | None = None
    workdir: str | None = None


class ApprovalRow(_StatefulColumns, table=True):
    """A pending or decided human decision."""

    __tablename__ = "approvals"
    __table_args__ = (
        Index("ix_approvals_state", "workspace", "state"),
        Index("ux_approvals_action", "workspace", "action_key", unique=True),
        Index("ix_approvals_turn", "turn_id"),
    )

    turn_id: str | None = None
    action_id: str | None = None
    mission_id: str | None = None
    decision_id: str | None = None
    action_key: str | None = None
    """The stable action id, scoped: ``turn:<turn>:<action>`` or ``sdk:<action>``."""
    kind: str | None = None
    """``dispatch`` (a mission waiting to start), ``action`` (an agent's tool call) or ``sdk``."""
    lane: str | None = None
    tool: str | None = None
    args: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    edited_args: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    approver: str | None = None
    level: int | None = None
    ladder: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    on_expiry: str | None = None
    deadline_s: int | None = None
    deadline_at: str | None = None
    snoozed_until: str | None = None
    claimed_by: str | None = None
    claim_expires_at: str | None = None
    reason_code: str | None = None
    reason_text: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    decided_by: str | None = None
    decided_at: str | None = None
    requested_by: str | None = None
    estimated_cost: float | None = None
    approvals_required: int | None = None
    """How many different people must approve (NULL: one)."""
    approved_by: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    """Who approved so far, a JSON list (a two-person rule needs two)."""


class AlertRow(_StatefulColumns, table=True):
    """Something that moved off baseline."""

    __tablename__ = "alerts"
    __table_args__ = (
        Index("ix_alerts_state", "workspace", "state"),
        Index(
            "ux_alerts_open",
            "workspace",
            "dedupe",
            unique=True,
            sqlite_where=text("state != 'resolved'"),
            postgresql_where=text("state != 'resolved'"),
        ),
    )

    alert_type: str | None = None
    severity: str | None = None
    subject_type: str | None = None
    subject_id: str | None = None
    dedupe: str | None = None
    """At most one unresolved alert per workspace and dedupe key."""
    message: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    acked_by: str | None = None
    resolved_by: str | None = None


class DecisionRow(SQLModel, table=True):
    """A persisted policy decision on a dispatch or an action, with its rule trace."""

    __tablename__ = "decisions"
    __table_args__ = (
        Index("ix_decisions_mission", "mission_id", "action_key"),
        Index("ix_decisions_tool", "tool", "at"),
        Index("ix_decisions_lane", "lane", "at"),
        Index("ix_decisions_workspace", "workspace", "at"),
        Index(
            "ix_decisions_key",
            "workspace",
            "action_key",
            "at",
            sqlite_where=text("kind <> 'dispatch'"),
            postgresql_where=text("kind <> 'dispatch'"),
        ),
    )

    id: str = Field(primary_key=True)
    workspace: str
    at: str
    kind: str
    """``dispatch``, ``action`` or ``sdk``."""
    turn_id: str | None = None
    mission_id: str | None = None
    action_key: str | None = None
    lane: str | None = None
    tool: str
    args: str = Field(sa_column=Column(Text, nullable=False))
    estimated_cost: float | None = None
    outcome: str
    """What the policy said: ``allow``, ``deny`` or ``require_approval``."""
    verdict: str
    """Where it stands: ``allow``, ``deny`` or ``pending`` (an approval is open)."""
    rule: str | None = None
    trace: str = Field(sa_column=Column(Text, nullable=False))
    policy_hash: str
    approval_id: str | None = None
    decided_by: str | None = None
    reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    call_hash: str | None = None
    """SHA-256 of the canonical ``[tool, args]`` asked: what an action key is bound to."""


class ActionReleaseRow(SQLModel, table=True):
    """An action handed to its agent, with the arguments it received."""

    __tablename__ = "action_releases"
    __table_args__ = (Index("ix_action_releases_mission", "mission_id"),)

    id: str = Field(primary_key=True)
    workspace: str
    at: str
    turn_id: str | None = None
    mission_id: str | None = None
    action_key: str
    decision_id: str
    args: str = Field(sa_column=Column(Text, nullable=False))


class OutboxRow(SQLModel, table=True):
    """A notification to deliver, written in the same transaction as the change it announces."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_due", "state", "next_attempt_at"),)

    id: str = Field(primary_key=True)
    workspace: str
    created_at: str
    event: str
    subject_type: str
    subject_id: str
    webhook: str
    """The webhook's name; its URL and secret stay in the configuration."""
    format: str
    payload: str = Field(sa_column=Column(Text, nullable=False))
    state: str
    """``pending``, ``delivered`` or ``dead``."""
    attempts: int
    next_attempt_at: str
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    delivered_at: str | None = None


class AttestationRow(SQLModel, table=True):
    """A lane's attested file and its baseline hash."""

    __tablename__ = "attestations"

    lane: str = Field(primary_key=True)
    path: str = Field(primary_key=True)
    sha256: str
    baselined_at: str
    baselined_by: str
    content: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    """The baseline's bytes, kept when the file is under ``store.alerts.MAX_BASELINE_BYTES``
    (a drift alert then shows a diff)."""


class LedgerRow(SQLModel, table=True):
    """One hash-chained ledger entry; ``seq`` is gap-free in commit order."""

    __tablename__ = "ledger"
    __table_args__ = (
        Index("ix_ledger_subject", "subject_type", "subject_id"),
        Index("ix_ledger_workspace", "workspace", "seq"),
    )

    seq: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    at: str
    workspace: str
    actor: str
    action: str
    subject_type: str
    subject_id: str
    from_state: str | None = None
    to_state: str | None = None
    payload: str = Field(sa_column=Column(Text, nullable=False))
    prev_hash: str
    hash: str


class LedgerHeadRow(SQLModel, table=True):
    """The chain's head: the last entry's seq and hash. One row, ``id = 1``."""

    __tablename__ = "ledger_head"

    id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    seq: int
    hash: str


class LedgerCheckpointRow(SQLModel, table=True):
    """A signed checkpoint of the ledger's head, as also appended to its node's checkpoint
    file (``domain/checkpoints.py``); ``hash`` is the SHA-256 of its signed bytes."""

    __tablename__ = "ledger_checkpoints"
    __table_args__ = (Index("ix_ledger_checkpoints_seq", "seq"),)

    hash: str = Field(primary_key=True)
    seq: int
    head: str
    at: str
    node: str
    prev: str
    key_id: str
    signature: str


class TokenRow(SQLModel, table=True):
    """A bearer token for a remote supervisor: its secret's hash, never the secret."""

    __tablename__ = "tokens"

    id: str = Field(primary_key=True)
    name: str
    role: str
    workspace: str | None = None
    secret_hash: str
    created_at: str
    created_by: str
    expires_at: str | None = None
    revoked_at: str | None = None
    revoked_by: str | None = None


class AgentProcessRow(SQLModel, table=True):
    """An agent process a node started, recorded before it ran and deleted once reaped
    (:mod:`quarterdeck.store.agent_processes`)."""

    __tablename__ = "agent_processes"
    __table_args__ = (Index("ix_agent_processes_host", "host", "recorded_at"),)

    id: str = Field(primary_key=True)
    host: str
    boot_id: str
    node_id: str
    supervisor_pid: int
    supervisor_start: int = Field(sa_column=Column(BigInteger, nullable=False))
    mission_id: str
    attempt: int
    workspace: str
    lane: str
    pid: int
    pgid: int
    sid: int
    start_ticks: int = Field(sa_column=Column(BigInteger, nullable=False))
    cgroup: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    recorded_at: str


class SchemaMigrationRow(SQLModel, table=True):
    """One applied schema migration; the highest version is the schema's version."""

    __tablename__ = "schema_migrations"

    version: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    name: str
    applied_at: str


STATEFUL_TABLES: dict[str, type[_StatefulColumns]] = {
    "turn": TurnRow,
    "mission": MissionRow,
    "session": SessionRow,
    "approval": ApprovalRow,
    "alert": AlertRow,
}
"""Machine kind -> its table model."""


def table_of(model: type[SQLModel]) -> Table:
    """The Core table behind a SQLModel class."""
    table = model.__table__  # type: ignore[attr-defined]
    assert isinstance(table, Table)
    return table


SHORT_ID_TABLES: tuple[type[SQLModel], ...] = (ReceiptRow, *STATEFUL_TABLES.values())
"""The tables whose ids people type: each indexes its ids' short form (``ix_<table>_short``)."""
for _model in SHORT_ID_TABLES:
    _ids = table_of(_model).c.id
    Index(
        f"ix_{table_of(_model).name}_short",
        func.substr(_ids, 25, 4).concat(func.substr(_ids, 33, 4)),
    )
