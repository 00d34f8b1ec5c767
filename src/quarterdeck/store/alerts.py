"""Alerts (something moved off baseline), attested-file baselines and the SLO figures that
drift monitoring reads.

Every writing function here runs inside the writer's transaction (a :class:`WriteTxn`) and
records each state change on the ledger. At most one unresolved alert exists per workspace
and dedupe key (the ``ux_alerts_open`` index); opening the same condition again returns it.

Alerts about the runtime itself (drifted attested files, an invalid policy file, SLO breaches)
concern every workspace's work: they live in ``RUNTIME_WORKSPACE``, are part of every
workspace's view, and a supervisor in any workspace can acknowledge or resolve them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import text

from quarterdeck.domain.canonical import canonical_text
from quarterdeck.domain.clock import format_instant, parse_instant, utc_now
from quarterdeck.domain.envelope import RUNTIME_WORKSPACE
from quarterdeck.domain.figures import percentile
from quarterdeck.domain.ids import new_ids
from quarterdeck.domain.states import MISSION_FAILED, Kind, machine
from quarterdeck.store.flags import set_flag
from quarterdeck.store.outbox import Target, enqueue
from quarterdeck.store.sql import in_list
from quarterdeck.store.transitions import append_entry, move, refuse
from quarterdeck.store.writer import WriteTxn

LATENCY_ROWS = 2_000
"""How many of the window's most recently finished missions the p95 latency is taken over."""


# --- alerts ------------------------------------------------------------------------------------

_OPEN_BY_DEDUPE = text(
    "SELECT id, state, version, message, data FROM alerts "
    "WHERE workspace = :w AND dedupe = :dedupe AND state != 'resolved'"
)
_INSERT_ALERT = text(
    "INSERT INTO alerts (id, workspace, state, version, attempt, created_at, updated_at, data, "
    "alert_type, severity, subject_type, subject_id, dedupe, message) VALUES (:id, :w, 'open', "
    "1, 0, :at, :at, :data, :type, :severity, :subject_type, :subject_id, :dedupe, :message)"
)


def get_open_alert(conn: Any, workspace: str, dedupe: str) -> dict[str, Any] | None:
    """The unresolved alert for ``(workspace, dedupe)`` (``data`` decoded), or None."""
    row = conn.execute(_OPEN_BY_DEDUPE, {"w": workspace, "dedupe": dedupe}).first()
    if row is None:
        return None
    found = dict(row._mapping)
    found["data"] = json.loads(found["data"])
    return found


def open_alert(
    txn: WriteTxn,
    targets: Sequence[Target],
    *,
    workspace: str,
    alert_type: str,
    severity: str,
    subject_type: str,
    subject_id: str,
    dedupe: str,
    message: str,
    data: Mapping[str, Any],
    actor: str,
) -> tuple[str, bool]:
    """Open an alert for a condition unless one is already unresolved; return (id, opened).

    An unresolved alert with the same dedupe key is kept (its message and data are refreshed
    when the message changed). A new alert is recorded as ``alert.opened`` and announced to
    every target that wants that event.
    """
    existing = get_open_alert(txn.conn, workspace, dedupe)
    if existing is not None:
        if existing["message"] != message:
            txn.conn.execute(
                text(
                    "UPDATE alerts SET message = :message, data = :data, updated_at = :at, "
                    "version = version + 1 WHERE id = :id"
                ),
                {
                    "message": message,
                    "data": canonical_text(dict(data)),
                    "at": txn.at,
                    "id": existing["id"],
                },
            )
        return str(existing["id"]), False
    alert_id = new_ids(1)[0]
    txn.conn.execute(
        _INSERT_ALERT,
        {
            "id": alert_id,
            "w": workspace,
            "at": txn.at,
            "data": canonical_text(dict(data)),
            "type": alert_type,
            "severity": severity,
            "subject_type": subject_type,
            "subject_id": subject_id,
            "dedupe": dedupe,
            "message": message,
        },
    )
    subject = {"type": subject_type, "id": subject_id}
    append_entry(
        txn,
        workspace,
        actor,
        "alert.opened",
        "alert",
        alert_id,
        None,
        machine(Kind.ALERT).initial,
        {
            "type": alert_type,
            "severity": severity,
            "subject": subject,
            "message": message,
            "dedupe": dedupe,
            "version": 1,
        },
    )
    enqueue(
        txn,
        targets,
        workspace=workspace,
        event="alert.opened",
        subject_type="alert",
        subject_id=alert_id,
        summary=message,
        data={
            "alert_id": alert_id,
            "type": alert_type,
            "severity": severity,
            "subject": subject,
            "dedupe": dedupe,
            "details": dict(data),
        },
    )
    return alert_id, True


def open_out_of_sequence(
    txn: WriteTxn,
    targets: Sequence[Target],
    *,
    workspace: str,
    subject_type: str,
    subject_id: str,
    action_key: str,
    action_id: str,
    tool: str,
    call_hash: str,
    bound_hash: str,
    bound_decision: str,
    refusal: str,
    actor: str,
) -> tuple[str, bool]:
    """Open (or refresh) the ``out_of_sequence`` alert of an action id asked again for
    another tool or other arguments than it was first decided for (``error``, one per action
    key): the refused decision, the call's hash and the one the key is bound to."""
    shown = tool if len(tool) <= 80 else tool[:80] + "..."
    return open_alert(
        txn, targets, workspace=workspace, alert_type="out_of_sequence", severity="error",
        subject_type=subject_type, subject_id=subject_id, dedupe=f"sequence:{action_key}",
        message=(
            f"action {action_id[:80]!r} asked again as {shown!r} with other tool or arguments "
            f"than it was decided for: refused"
        ),
        data={
            "action_key": action_key, "tool": tool[:256], "call_hash": call_hash,
            "bound_hash": bound_hash, "bound_decision": bound_decision, "refusal": refusal,
            "requested_by": actor,
        },
        actor=actor,
    )  # fmt: skip


def _move(
    txn: WriteTxn,
    workspace: str,
    row: Any,
    to_state: str,
    actor: str,
    extra: Mapping[str, Any] | None = None,
) -> bool:
    """Move one alert (compare-and-set on its version); False when it changed underneath."""
    column = "acked_by" if to_state == "acked" else "resolved_by"
    moved = move(
        txn, Kind.ALERT, row.id, row.state, to_state, workspace=workspace, actor=actor,
        version=row.version, columns={column: actor}, payload=extra,
    )  # fmt: skip
    return moved is not None


def _change(
    txn: WriteTxn, workspace: str, alert_id: str, to_state: str, actor: str, command: str
) -> dict[str, Any]:
    row = txn.conn.execute(
        text(
            "SELECT id, workspace, state, version FROM alerts "
            "WHERE id = :id AND workspace IN (:w, :runtime)"
        ),
        {"id": alert_id, "w": workspace, "runtime": RUNTIME_WORKSPACE},
    ).first()

    def refused(error: str) -> dict[str, Any]:
        return refuse(
            txn, workspace, actor, "alert", alert_id, {"command": command, "errors": [error]}
        )

    if row is None:
        return refused("no such alert")
    if to_state == "resolved" and row.state == "resolved":
        return {"ok": True, "alert_id": alert_id, "state": "resolved", "already": True}
    if not machine(Kind.ALERT).allows(row.state, to_state):
        return refused(f"alert is {row.state}: illegal transition {row.state} -> {to_state}")
    if not _move(txn, row.workspace, row, to_state, actor):
        return refused("alert changed meanwhile")
    return {"ok": True, "alert_id": alert_id, "state": to_state, "version": row.version + 1}


def ack_alert(txn: WriteTxn, workspace: str, alert_id: str, actor: str) -> dict[str, Any]:
    """Acknowledge an open alert (``open -> acked``); refusals are recorded on the ledger."""
    return _change(txn, workspace, alert_id, "acked", actor, "alert.ack")


def resolve_alert(txn: WriteTxn, workspace: str, alert_id: str, actor: str) -> dict[str, Any]:
    """Resolve an alert; resolving a resolved alert is a no-op answered with ``already``."""
    return _change(txn, workspace, alert_id, "resolved", actor, "alert.resolve")


def resolve_by_dedupe(txn: WriteTxn, workspace: str, dedupe: str, actor: str, note: str) -> bool:
    """Resolve the unresolved alert for a condition that cleared; False when none is open."""
    row = txn.conn.execute(_OPEN_BY_DEDUPE, {"w": workspace, "dedupe": dedupe}).first()
    if row is None:
        return False
    return _move(txn, workspace, row, "resolved", actor, {"note": note, "auto": True})


def open_dedupes(conn: Any, workspace: str, prefix: str) -> list[str]:
    """Dedupe keys of the workspace's unresolved alerts that start with ``prefix``."""
    rows = conn.execute(
        text(
            "SELECT dedupe FROM alerts WHERE workspace = :w AND state != 'resolved' "
            "AND substr(dedupe, 1, :n) = :prefix ORDER BY id"
        ),
        {"w": workspace, "n": len(prefix), "prefix": prefix},
    )
    return [str(value) for value in rows.scalars().all()]


# --- attested files ----------------------------------------------------------------------------


def read_baselines(conn: Any, lane: str) -> dict[str, str]:
    """The lane's baseline hashes, path -> SHA-256 (works on a sync connection)."""
    rows = conn.execute(
        text("SELECT path, sha256 FROM attestations WHERE lane = :lane ORDER BY path"),
        {"lane": lane},
    ).all()
    return {str(row.path): str(row.sha256) for row in rows}


MAX_BASELINE_BYTES = 64 * 1024
"""A baseline keeps the file's bytes up to this size (a drift alert then shows a diff)."""

_INSERT_BASELINE = text(
    "INSERT INTO attestations (lane, path, sha256, baselined_at, baselined_by, content) "
    "VALUES (:lane, :path, :sha256, :at, :actor, :content) ON CONFLICT (lane, path) DO NOTHING"
)


def _baseline_rows(
    txn: WriteTxn,
    lane: str,
    hashes: Mapping[str, str],
    actor: str,
    contents: Mapping[str, bytes | None],
) -> list[dict[str, Any]]:
    return [
        {"lane": lane, "path": path, "sha256": digest, "at": txn.at, "actor": actor,
         "content": _kept(contents.get(path))}
        for path, digest in sorted(hashes.items())
    ]  # fmt: skip


def _kept(content: bytes | None) -> bytes | None:
    """The bytes a baseline keeps: None over :data:`MAX_BASELINE_BYTES`."""
    return content if content is not None and len(content) <= MAX_BASELINE_BYTES else None


def read_baseline_contents(conn: Any, lane: str) -> dict[str, bytes | None]:
    """The bytes each of the lane's baselines kept, by path (None: not kept)."""
    rows = conn.execute(
        text("SELECT path, content FROM attestations WHERE lane = :lane"), {"lane": lane}
    ).all()
    return {str(row.path): None if row.content is None else bytes(row.content) for row in rows}


def keep_baseline_content(txn: WriteTxn, lane: str, path: str, digest: str, content: bytes) -> None:
    """Keep ``content`` as the bytes of the lane's baseline of ``path`` if that baseline is
    still ``digest`` and kept none (a baseline taken before bytes were kept, or by a command
    that read only hashes). Not a change of the baseline: nothing is recorded."""
    if _kept(content) is None:
        return
    txn.conn.execute(
        text(
            "UPDATE attestations SET content = :content WHERE lane = :lane AND path = :path "
            "AND sha256 = :sha256 AND content IS NULL"
        ),
        {"content": content, "lane": lane, "path": path, "sha256": digest},
    )


def set_baselines(
    txn: WriteTxn,
    lane: str,
    hashes: Mapping[str, str],
    actor: str,
    *,
    workspace: str = RUNTIME_WORKSPACE,
    contents: Mapping[str, bytes | None] | None = None,
) -> None:
    """Replace the lane's baselines with ``hashes`` (keeping ``contents``, the files' bytes,
    when given and small enough); recorded as ``lane.rebaselined``."""
    txn.conn.execute(text("DELETE FROM attestations WHERE lane = :lane"), {"lane": lane})
    if hashes:
        txn.conn.execute(_INSERT_BASELINE, _baseline_rows(txn, lane, hashes, actor, contents or {}))
    append_entry(
        txn,
        workspace,
        actor,
        "lane.rebaselined",
        "lane",
        lane,
        None,
        None,
        {"hashes": dict(hashes)},
    )


def add_baselines(
    txn: WriteTxn,
    lane: str,
    hashes: Mapping[str, str],
    actor: str,
    *,
    workspace: str = RUNTIME_WORKSPACE,
    contents: Mapping[str, bytes | None] | None = None,
) -> dict[str, str]:
    """Record a baseline for each file that has none yet (first sight), with its bytes from
    ``contents`` when small enough; recorded as ``lane.baselined``. Returns the baselines
    added."""
    known = read_baselines(txn.conn, lane)
    added = {path: digest for path, digest in hashes.items() if path not in known}
    if added:
        txn.conn.execute(_INSERT_BASELINE, _baseline_rows(txn, lane, added, actor, contents or {}))
        append_entry(
            txn, workspace, actor, "lane.baselined", "lane", lane, None, None, {"hashes": added}
        )
    return added


def attest_dedupe(lane: str, path: str) -> str:
    """The dedupe key of the drift alert for one attested file of a lane."""
    return f"attest:{lane}:{path}"


def paused_by(conn: Any, lane: str) -> str | None:
    """Who set the lane's pause flag last, when it is set now (None when the lane runs)."""
    paused = conn.execute(
        text("SELECT paused FROM lane_flags WHERE lane = :lane"), {"lane": lane}
    ).scalar()
    if not paused:
        return None
    actor = conn.execute(
        text(
            "SELECT actor FROM ledger WHERE subject_type = 'lane' AND subject_id = :lane "
            "AND action IN ('lane.paused', 'lane.resumed') ORDER BY seq DESC LIMIT 1"
        ),
        {"lane": lane},
    ).scalar()
    return None if actor is None else str(actor)


def rebaseline_lane(
    txn: WriteTxn,
    lane: str,
    hashes: Mapping[str, str],
    *,
    actor: str,
    drift_actor: str,
    workspace: str = RUNTIME_WORKSPACE,
    contents: Mapping[str, bytes | None] | None = None,
) -> dict[str, Any]:
    """Accept the lane's attested files as they are now: store ``hashes`` (and ``contents``,
    their bytes, when given) as its baselines, resolve its drift alerts, and resume the lane
    when the drift monitor (``drift_actor``) was the last to pause it."""
    set_baselines(txn, lane, hashes, actor, workspace=workspace, contents=contents)
    resolved = [
        dedupe
        for dedupe in open_dedupes(txn.conn, workspace, f"attest:{lane}:")
        if resolve_by_dedupe(txn, workspace, dedupe, actor, "lane re-baselined")
    ]
    resumed = paused_by(txn.conn, lane) == drift_actor
    if resumed:
        set_flag(txn, lane, "paused", False, actor=actor, workspace=workspace)
    return {
        "ok": True,
        "lane": lane,
        "hashes": dict(hashes),
        "resolved": resolved,
        "resumed": resumed,
    }


# --- SLO figures -------------------------------------------------------------------------------


SERVING = "(role IS NULL OR role != 'shadow')"
"""SQL: missions whose result can serve a turn. Shadow missions (result recorded only) count in
no SLO figure, here or in the status figures (``queries.slo``)."""
ON_FALLBACK = "(role = 'fallback' OR (routed_lane IS NOT NULL AND routed_lane != lane))"
"""SQL: missions that ran as a fallback, or were routed off their own lane."""


def slo_figures(conn: Any, window_start_at: str, now: datetime | None = None) -> dict[str, Any]:
    """SLO figures over the window that starts at ``window_start_at`` (ledger time text).

    ``failure_rate``: failed and timed-out over finished missions (None without any);
    ``fallback_rate``: missions run as fallback (or routed off their lane) over started ones
    (None without any); ``p95_latency_s``: of the window's finished missions (at most the
    latest :data:`LATENCY_ROWS`; None without any); ``receipt_wait_s``: age of the oldest
    accepted receipt not yet applied (0 when none); ``cost``: estimated cost of the actions
    allowed in the window. Shadow missions (result recorded only) are not counted.
    """
    now = now or utc_now()
    params = {"start": window_start_at}
    finished = conn.execute(
        text(
            "SELECT count(*) AS finished, "
            f"sum(CASE WHEN state IN {in_list(MISSION_FAILED)} THEN 1 ELSE 0 END) AS failed "
            f"FROM missions WHERE finished_at >= :start AND {SERVING}"
        ),
        params,
    ).one()
    started = conn.execute(
        text(
            f"SELECT count(*) AS started, sum(CASE WHEN {ON_FALLBACK} THEN 1 ELSE 0 END) "
            f"AS fallback FROM missions WHERE started_at >= :start AND {SERVING}"
        ),
        params,
    ).one()
    spans = conn.execute(
        text(
            "SELECT started_at, finished_at FROM missions WHERE finished_at >= :start "
            f"AND started_at IS NOT NULL AND {SERVING} "
            "ORDER BY finished_at DESC LIMIT :n"
        ),
        {**params, "n": LATENCY_ROWS},
    ).all()
    oldest = conn.execute(
        text(
            "SELECT min(received_at) FROM receipts "
            "WHERE status = 'accepted' AND produced_type IS NULL"
        )
    ).scalar()
    cost = conn.execute(
        text(
            "SELECT coalesce(sum(estimated_cost), 0) FROM decisions "
            "WHERE verdict = 'allow' AND at >= :start"
        ),
        params,
    ).scalar()
    finished_count = int(finished.finished or 0)
    started_count = int(started.started or 0)
    latencies = [
        (parse_instant(end) - parse_instant(begin)).total_seconds() for begin, end in spans
    ]
    wait = 0.0 if oldest is None else max(0.0, (now - parse_instant(str(oldest))).total_seconds())
    return {
        "window_start_at": window_start_at,
        "at": format_instant(now),
        "finished": finished_count,
        "started": started_count,
        "failure_rate": (
            round(int(finished.failed or 0) / finished_count, 6) if finished_count else None
        ),
        "fallback_rate": (
            round(int(started.fallback or 0) / started_count, 6) if started_count else None
        ),
        "p95_latency_s": round(percentile(latencies, 0.95), 6) if latencies else None,
        "receipt_wait_s": round(wait, 6),
        "cost": float(cost or 0.0),
    }
