"""Sessions and turns of agent CLIs supervised through their hooks (Claude Code, Codex).

Each CLI session is a Quarterdeck session (lane ``claude-code`` / ``codex``, its ``cwd`` as
its working directory, its model and permission mode in ``data``): ``active`` while it lives,
``idle`` once it ended (a resumed session comes back ``active``). Each prompt
(``UserPromptSubmit``) is a turn of the session's workspace whose objective is the prompt:
created ``queued`` and moved ``leased -> running`` at once (no mission: the CLI itself is the
agent), ``completed`` when the agent stops (``Stop``), the next prompt comes or the session
ends. Each tool call asked under the session (``approval.request`` from the hook) is an action
of its current turn: its decision and approval carry the turn, and the approval the session and
``cwd``. A person takes a turn over or cancels it with the usual commands; the hook then stops
the agent (``runtime/api_hooks.py``).

Applied from the receipts path (``store/apply.py``), in the writer's transaction; every change
of state goes through :func:`quarterdeck.store.transitions.move`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Final

from sqlalchemy import text

from quarterdeck.domain.canonical import canonical_text
from quarterdeck.domain.hooks import AGENTS
from quarterdeck.domain.ids import new_ids
from quarterdeck.domain.routing import sdk_key
from quarterdeck.domain.states import Kind
from quarterdeck.store.database import Database
from quarterdeck.store.transitions import append_entry, move, move_turn, record_transition
from quarterdeck.store.writer import WriteTxn

TURN_EVENTS: Final = frozenset({"SessionStart", "UserPromptSubmit", "Stop", "SessionEnd"})
"""The hook events that create or move a session or a turn."""
STOPPED: Final = frozenset({"taken_over", "cancelled"})
"""States of a turn whose agent must stop."""
_SESSION = text("SELECT state, version, data FROM sessions WHERE id = :id")
_TURN = text("SELECT state, version FROM turns WHERE id = :id")


def hook_session_id(workspace: str, agent: str, session: str) -> str:
    """The Quarterdeck session of an agent CLI's session in ``workspace`` (the same CLI
    session id in another workspace is another session)."""
    digest = hashlib.sha256(f"{workspace}\0{agent}\0{session}".encode()).hexdigest()
    return f"{agent}-{digest[:32]}"


def _actor(agent: str, session: str) -> str:
    return f"agent:{agent}/{session}"[:200]


def apply_hook_event(
    txn: WriteTxn, workspace: str, receipt_id: str, payload: Mapping[str, Any]
) -> None:
    """Create or move the session and turn a recorded hook event speaks of (nothing for an
    event that is not one of :data:`TURN_EVENTS`)."""
    agent, event, session = payload.get("hook"), payload.get("event"), payload.get("session")
    if agent not in AGENTS or event not in TURN_EVENTS or not isinstance(session, str):
        return
    assert isinstance(agent, str)
    session_id = hook_session_id(workspace, agent, session)
    actor = _actor(agent, session)
    data = _live_session(txn, workspace, session_id, agent, session, payload, actor)
    turn = data.get("turn")
    if event in ("UserPromptSubmit", "Stop", "SessionEnd") and isinstance(turn, str):
        _finish_turn(txn, workspace, turn, actor, event)
    if event == "UserPromptSubmit":
        data["turn"] = _start_turn(txn, workspace, receipt_id, agent, session, payload, actor)
    if event == "SessionEnd":
        data["ended"] = payload.get("reason") or True
        row = txn.conn.execute(_SESSION, {"id": session_id}).one()
        move(
            txn, Kind.SESSION, session_id, row.state, "idle", workspace=workspace, actor=actor,
            version=row.version, payload={"reason": "the session ended"},
        )  # fmt: skip
    txn.conn.execute(
        text("UPDATE sessions SET data = :data WHERE id = :id"),
        {"data": canonical_text(data), "id": session_id},
    )


def _live_session(
    txn: WriteTxn,
    workspace: str,
    session_id: str,
    agent: str,
    session: str,
    payload: Mapping[str, Any],
    actor: str,
) -> dict[str, Any]:
    """The session's data, the session made ``active`` first (created when new)."""
    row = txn.conn.execute(_SESSION, {"id": session_id}).first()
    data: dict[str, Any] = {} if row is None else dict(json.loads(row.data or "{}"))
    data.update(agent=agent, session=session, cwd=payload.get("cwd"))
    for name in ("model", "permission_mode"):
        if isinstance(payload.get(name), str):
            data[name] = payload[name]
    data.pop("ended", None)
    if row is None:
        cwd = payload.get("cwd")
        txn.conn.execute(
            text(
                "INSERT INTO sessions (id, workspace, state, version, attempt, created_at, "
                "updated_at, data, lane, workdir) VALUES (:id, :ws, 'active', 2, 0, :at, :at, "
                "'{}', :lane, :workdir)"
            ),
            {"id": session_id, "ws": workspace, "at": txn.at, "lane": agent, "workdir": cwd},
        )
        append_entry(
            txn, workspace, actor, "session.created", "session", session_id, None, "idle",
            {"version": 1, "lane": agent, "workdir": cwd, "session": session},
        )  # fmt: skip
        record_transition(
            txn, Kind.SESSION, session_id, "idle", "active", workspace=workspace, actor=actor,
            payload={"version": 2},
        )  # fmt: skip
    elif row.state != "active":
        move(
            txn, Kind.SESSION, session_id, row.state, "active", workspace=workspace, actor=actor,
            version=row.version, columns={"workdir": payload.get("cwd")},
            payload={"reason": "the session is alive"},
        )  # fmt: skip
    return data


def _start_turn(
    txn: WriteTxn,
    workspace: str,
    receipt_id: str,
    agent: str,
    session: str,
    payload: Mapping[str, Any],
    actor: str,
) -> str:
    """A running turn for the prompt (``queued -> leased -> running``, held by the CLI)."""
    (turn_id,) = new_ids(1)
    prompt = payload.get("prompt")
    txn.conn.execute(
        text(
            "INSERT INTO turns (id, workspace, state, version, attempt, created_at, updated_at, "
            "data, receipt_id, lane, objective, input) VALUES (:id, :ws, 'queued', 1, 0, :at, "
            ":at, '{}', :receipt, :lane, :objective, :input)"
        ),
        {
            "id": turn_id, "ws": workspace, "at": txn.at, "receipt": receipt_id, "lane": agent,
            "objective": prompt if isinstance(prompt, str) else None,
            "input": canonical_text({"session": session, "cwd": payload.get("cwd")}),
        },
    )  # fmt: skip
    append_entry(
        txn, workspace, actor, "turn.created", "turn", turn_id, None, "queued",
        {"receipt": receipt_id, "lane": agent, "version": 1, "attempt": 0, "session": session},
    )  # fmt: skip
    move(
        txn, Kind.TURN, turn_id, "queued", "leased", workspace=workspace, actor=actor, version=1,
        columns={"attempt": 1, "lease_owner": actor}, payload={"attempt": 1},
    )  # fmt: skip
    move(
        txn, Kind.TURN, turn_id, "leased", "running", workspace=workspace, actor=actor, version=2,
        payload={"attempt": 1},
    )  # fmt: skip
    return turn_id


def _finish_turn(txn: WriteTxn, workspace: str, turn_id: str, actor: str, event: str) -> None:
    """Complete the session's running turn (a turn a person holds or cancelled is left)."""
    row = txn.conn.execute(_TURN, {"id": turn_id}).first()
    if row is None or row.state != "running":
        return
    move_turn(
        txn, workspace, turn_id, "running", "completed", row.version, actor,
        deliverable={"ended_by": event}, extra={"ended_by": event},
    )  # fmt: skip


def link_action(
    txn: WriteTxn, workspace: str, payload: Mapping[str, Any], result: Mapping[str, Any]
) -> None:
    """Make an agent CLI's tool call (an ``approval.request`` on lane ``claude-code`` or
    ``codex``, its action id ``<agent>:<session>:<call>``) an action of its session's current
    turn: its decisions and approval carry the turn, the approval the session and ``cwd``."""
    lane, action_id = payload.get("lane"), payload.get("action_id")
    if lane not in AGENTS or not isinstance(action_id, str) or not result.get("ok"):
        return
    assert isinstance(lane, str)
    if not action_id.startswith(f"{lane}:") or action_id.count(":") < 2:
        return
    session = action_id[len(lane) + 1 :].rsplit(":", 1)[0]
    row = txn.conn.execute(_SESSION, {"id": hook_session_id(workspace, lane, session)}).first()
    data = {} if row is None else json.loads(row.data or "{}")
    turn = data.get("turn")
    where = {"ws": workspace, "key": sdk_key(action_id)}
    hook = {"agent": lane, "session": session, "cwd": data.get("cwd")}
    approval = txn.conn.execute(
        text("SELECT id, data FROM approvals WHERE workspace = :ws AND action_key = :key"), where
    ).first()
    if approval is not None:
        shown = dict(json.loads(approval.data or "{}"))
        if "hook" not in shown:
            txn.conn.execute(
                text(
                    "UPDATE approvals SET turn_id = COALESCE(turn_id, :turn), data = :data "
                    "WHERE id = :id"
                ),
                {"id": approval.id, "turn": turn, "data": canonical_text({**shown, "hook": hook})},
            )
    if not isinstance(turn, str):
        return
    linked = txn.conn.execute(
        text(
            "UPDATE decisions SET turn_id = :turn WHERE workspace = :ws AND action_key = :key "
            "AND turn_id IS NULL"
        ),
        {**where, "turn": turn},
    ).rowcount
    if linked:
        append_entry(
            txn, workspace, _actor(lane, session), "turn.action", "turn", turn, None, None,
            {"action_id": action_id, "tool": payload.get("tool"),
             "verdict": result.get("verdict"), "approval": result.get("approval")},
        )  # fmt: skip


async def stopped_turn(
    db: Database, workspace: str, agent: str, session: str
) -> tuple[str, str, str | None] | None:
    """The current turn of an agent CLI's session when a person took it over or cancelled it:
    its id, state and who did it (None while the agent may go on)."""
    async with db.read() as conn:
        row = (
            await conn.execute(_SESSION, {"id": hook_session_id(workspace, agent, session)})
        ).first()
        turn = None if row is None else json.loads(row.data or "{}").get("turn")
        if not isinstance(turn, str):
            return None
        found = (
            await conn.execute(
                text("SELECT state, lease_owner, deliverable FROM turns WHERE id = :id"),
                {"id": turn},
            )
        ).first()
    if found is None or found.state not in STOPPED:
        return None
    by = found.lease_owner
    if found.state == "cancelled" and found.deliverable:
        by = json.loads(found.deliverable).get("cancelled_by")
    return turn, str(found.state), by if isinstance(by, str) else None


async def receipt_applied(db: Database, receipt_id: str) -> bool:
    """Whether the receipt was applied (what it speaks of exists)."""
    async with db.read() as conn:
        row = (
            await conn.execute(
                text("SELECT produced_type FROM receipts WHERE id = :id"), {"id": receipt_id}
            )
        ).first()
    return row is not None and row.produced_type is not None
