"""Each lane at a glance, for the control center's Lanes pane and for the demo's feeder: whether
it runs (or who paused it and why), its flags, the slots its missions hold and what they wait
on, its queue, and its recent failure and fallback rates.

A slot is a lane session. A mission holds one from its claim to its end: while it runs, and
while its live agent waits on a person's decision about an action (``blocked``). A mission
whose *dispatch* waits on a person holds none: it stays queued until the approval is decided.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text

from quarterdeck.domain.clock import format_instant, parse_instant, utc_now
from quarterdeck.domain.states import APPROVAL_OPEN, MISSION_FAILED, MISSION_HOLDS_LEASE
from quarterdeck.store.alerts import SERVING
from quarterdeck.store.database import Database
from quarterdeck.store.flags import read_flags
from quarterdeck.store.sql import in_list

__all__ = ["RATE_ROWS", "RATE_WINDOW_S", "LaneOverview", "lane_overview"]

RATE_WINDOW_S = 600.0
"""The window the failure and fallback rates are taken over, by default (seconds)."""
RATE_ROWS = 2_000
"""The rates count at most this many of the newest missions (every lane's), so that a read
costs the same whatever the size of the store."""


@dataclass(frozen=True, slots=True)
class LaneOverview:
    """One lane at a glance (every workspace's work on it)."""

    lane: str
    state: str
    """``running`` or ``paused`` (no new mission starts on it)."""
    paused_by: str | None
    """Who paused it (the ledger's actor: a person, ``<node>:ladder`` for an approval that
    expired, ``drift`` for an attested file that changed); None when it runs."""
    paused_reason: str | None
    """Why, when the pause recorded a reason (an expired approval, a drifted file); else None."""
    paused_at: str | None
    """When it was paused (ledger time); None when it runs."""
    forced_fallback: bool
    """Its new work goes to its fallback lane (its own switch or the global one)."""
    shadow: bool
    """Its missions are shadowed on its fallback lane."""
    slots: int
    """Its concurrency: the sessions live nodes hold for it (the configured concurrency when no
    node holds any yet)."""
    in_use: int
    """Slots held by missions now: ``running + awaiting_person``."""
    running: int
    """Missions working on it (its own, or others' routed to it)."""
    awaiting_person: int
    """Missions holding a slot while their live agent waits on a person's decision about an
    action (state ``blocked``)."""
    queued: int
    """Queue depth: missions of this lane waiting to start (retries in backoff included), not
    counting those whose dispatch waits on a person."""
    awaiting_dispatch: int
    """Missions of this lane whose dispatch waits on a person's approval: they hold no slot."""
    oldest_queued_at: str | None
    """When the oldest mission in :attr:`queued` was created; None when the queue is empty."""
    oldest_wait_s: float | None
    """How long that mission has waited, in seconds; None when the queue is empty."""
    finished: int
    """Missions that ran on it and finished within the window (of the :data:`RATE_ROWS`
    newest)."""
    failure_rate: float | None
    """Failed or timed out over :attr:`finished` (None when none finished)."""
    started: int
    """Missions of its turns that started within the window (of the :data:`RATE_ROWS`
    newest)."""
    fallback_rate: float | None
    """Of :attr:`started`, the share that ran as a fallback or was routed off it (None when
    none started)."""

    @property
    def free(self) -> int:
        """Slots no mission holds."""
        return max(0, self.slots - self.in_use)


_LIVE = text(
    "SELECT coalesce(routed_lane, lane) AS lane, state, count(*) AS n FROM missions "
    f"WHERE state IN {in_list(MISSION_HOLDS_LEASE)} GROUP BY coalesce(routed_lane, lane), state"
)
_QUEUED = text("SELECT lane, count(*) AS n FROM missions WHERE state = 'queued' GROUP BY lane")
"""Queued missions by lane, counted on the partial index of queued missions."""
_HELD = text(
    "SELECT m.lane AS lane, count(*) AS n FROM approvals a "
    "JOIN decisions d ON d.id = a.decision_id JOIN missions m ON m.id = d.mission_id "
    f"WHERE a.kind = 'dispatch' AND a.state IN {in_list(APPROVAL_OPEN)} AND m.state = 'queued' "
    "GROUP BY m.lane"
)
"""Queued missions whose dispatch waits on a person, by lane (found from the open approvals)."""
_OLDEST = text(
    "SELECT m.created_at FROM missions m LEFT JOIN decisions d ON d.id = m.decision_id "
    "WHERE m.state = 'queued' AND m.lane = :lane AND (d.verdict IS NULL OR d.verdict != 'pending') "
    "ORDER BY m.id LIMIT 1"
)
"""The lane's oldest queued mission not waiting on a person (ids grow with time: the queued
index read in order)."""
_RECENT = "(SELECT {columns} FROM missions ORDER BY id DESC LIMIT :rows)"
_FINISHED = text(
    "SELECT coalesce(routed_lane, lane) AS lane, count(*) AS n, "
    f"sum(CASE WHEN state IN {in_list(MISSION_FAILED)} THEN 1 ELSE 0 END) AS failed "
    f"FROM {_RECENT.format(columns='lane, routed_lane, role, state, finished_at')} recent "
    f"WHERE finished_at >= :start AND {SERVING} GROUP BY coalesce(routed_lane, lane)"
)
_STARTED = text(
    "SELECT t.lane AS lane, count(*) AS n, "
    "sum(CASE WHEN m.role = 'fallback' OR (m.routed_lane IS NOT NULL AND m.routed_lane != m.lane) "
    "THEN 1 ELSE 0 END) AS fallback "
    f"FROM {_RECENT.format(columns='turn_id, lane, routed_lane, role, started_at')} m "
    "JOIN turns t ON t.id = m.turn_id "
    "WHERE m.started_at >= :start AND (m.role IS NULL OR m.role != 'shadow') GROUP BY t.lane"
)
"""Started missions by their turn's lane; the fallback test is ``store.alerts.ON_FALLBACK``'s,
on the joined missions."""
_SESSIONS = text(
    "SELECT lane, count(*) AS n FROM sessions WHERE state != 'retired' "
    "AND lease_expires_at > :now GROUP BY lane"
)
_LAST_PAUSE = text(
    "SELECT actor, at, payload FROM ledger WHERE subject_type = 'lane' AND subject_id = :lane "
    "AND action = 'lane.paused' ORDER BY seq DESC LIMIT 1"
)


async def lane_overview(
    db: Database,
    lanes: Mapping[str, int] | Sequence[str] = (),
    *,
    now: datetime | None = None,
    window_s: float = RATE_WINDOW_S,
) -> tuple[LaneOverview, ...]:
    """Every lane at a glance, read in one snapshot transaction.

    Args:
        lanes: the configured lanes, in the order to show them, with their concurrency
            (a sequence of names when it is not known). Lanes the store knows of beyond
            them (sessions, missions, flags) follow, by name.
        now: the instant waits and the window are measured from (the console's clock).
        window_s: the failure and fallback rates cover missions finished (started) this
            many seconds before ``now``.

    Returns:
        One :class:`LaneOverview` a lane.
    """
    now = now or utc_now()
    at = format_instant(now)
    start = format_instant(now - timedelta(seconds=window_s))
    async with db.read() as conn:
        live = (await conn.execute(_LIVE)).all()
        queued = (await conn.execute(_QUEUED)).all()
        held = {str(r.lane): int(r.n) for r in (await conn.execute(_HELD)).all()}
        depth = {str(r.lane): int(r.n) - held.get(str(r.lane), 0) for r in queued}
        oldest: dict[str, str] = {}
        for lane in sorted(name for name, n in depth.items() if n > 0):
            first = (await conn.execute(_OLDEST, {"lane": lane})).scalar()
            if first is not None:
                oldest[lane] = str(first)
        rates = {"start": start, "rows": RATE_ROWS}
        finished = (await conn.execute(_FINISHED, rates)).all()
        started = (await conn.execute(_STARTED, rates)).all()
        sessions = (await conn.execute(_SESSIONS, {"now": at})).all()
        flags = await conn.run_sync(lambda sync: read_flags(sync))
        pauses: dict[str, Any] = {}
        for lane in sorted(flags.paused):
            pauses[lane] = (await conn.execute(_LAST_PAUSE, {"lane": lane})).first()
    configured = dict(lanes) if isinstance(lanes, Mapping) else dict.fromkeys(lanes, 0)
    seen = {str(r.lane) for rows in (live, queued, finished, sessions) for r in rows if r.lane}
    flagged = flags.paused | flags.shadow | flags.forced
    names = [*configured, *sorted((seen | flagged) - set(configured))]
    running: dict[str, int] = {}
    blocked: dict[str, int] = {}
    for row in live:
        target = blocked if row.state == "blocked" else running
        target[str(row.lane)] = target.get(str(row.lane), 0) + int(row.n)
    ended = {str(r.lane): (int(r.n), int(r.failed or 0)) for r in finished}
    began = {str(r.lane): (int(r.n), int(r.fallback or 0)) for r in started}
    held_sessions = {str(r.lane): int(r.n) for r in sessions}
    result = []
    for name in names:
        pause = pauses.get(name)
        payload = _payload(pause.payload) if pause is not None else {}
        done, failed = ended.get(name, (0, 0))
        begun, fell_back = began.get(name, (0, 0))
        first = oldest.get(name)
        in_flight, waiting = running.get(name, 0), blocked.get(name, 0)
        result.append(
            LaneOverview(
                lane=name,
                state="paused" if name in flags.paused else "running",
                paused_by=None if pause is None else str(pause.actor),
                paused_reason=_text(payload.get("reason")),
                paused_at=None if pause is None else str(pause.at),
                forced_fallback=flags.force_all or name in flags.forced,
                shadow=name in flags.shadow,
                slots=held_sessions.get(name) or configured.get(name, 0),
                in_use=in_flight + waiting,
                running=in_flight,
                awaiting_person=waiting,
                queued=depth.get(name, 0),
                awaiting_dispatch=held.get(name, 0),
                oldest_queued_at=first,
                oldest_wait_s=(
                    None if first is None
                    else round(max(0.0, (now - parse_instant(first)).total_seconds()), 3)
                ),
                finished=done,
                failure_rate=round(failed / done, 6) if done else None,
                started=begun,
                fallback_rate=round(fell_back / begun, 6) if begun else None,
            )
        )  # fmt: skip
    return tuple(result)


def _payload(raw: Any) -> dict[str, Any]:
    try:
        value = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
