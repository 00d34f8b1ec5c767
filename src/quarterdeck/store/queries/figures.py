"""Figures computed from the store and shared by every node: the SLO figures and the work
still pending."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from quarterdeck.domain.clock import format_instant, parse_instant, utc_now
from quarterdeck.domain.figures import percentile
from quarterdeck.domain.states import MISSION_HOLDS_LEASE, MISSION_LIVE, MISSION_SELF_FINISHED
from quarterdeck.store.alerts import ON_FALLBACK, SERVING
from quarterdeck.store.database import Database
from quarterdeck.store.sql import in_list


def _seconds(start: str, end: str) -> float:
    return (parse_instant(end) - parse_instant(start)).total_seconds()


async def slo(db: Database, workspace: str | None, recent: int = 2_000) -> dict[str, Any]:
    """SLO figures from the store, shared by every node: mission latency p50/p95 (recent
    missions), fallback rate (missions run as fallback or routed off their lane, over started
    ones), recovery success rate, orphaned missions (running past their lease, unswept) and
    orphaned sessions (recovering now; ever), retries, dead letters, lease conflicts and
    reclaimed leases. Shadow missions count in neither latency nor fallback figures."""
    where = "" if workspace is None else "WHERE workspace = :w"
    params = {} if workspace is None else {"w": workspace}
    async with db.read() as conn:
        finished = (
            await conn.execute(
                text(
                    "SELECT started_at, finished_at FROM missions "
                    f"{where + ' AND' if where else 'WHERE'} finished_at IS NOT NULL "
                    f"AND started_at IS NOT NULL AND {SERVING} "
                    "ORDER BY finished_at DESC LIMIT :n"
                ),
                {**params, "n": recent},
            )
        ).all()
        totals = (
            await conn.execute(
                text(
                    "SELECT "
                    f"sum(CASE WHEN started_at IS NOT NULL AND {SERVING} THEN 1 ELSE 0 END) "
                    "AS started, "
                    f"sum(CASE WHEN {SERVING} AND {ON_FALLBACK} AND started_at IS NOT NULL "
                    "THEN 1 ELSE 0 END) AS fallback, "
                    "sum(CASE WHEN number > 1 THEN 1 ELSE 0 END) AS retries, "
                    f"sum(CASE WHEN attempt > 1 AND state IN {in_list(MISSION_SELF_FINISHED)} "
                    "THEN 1 ELSE 0 END) AS recovered_finished, "
                    "sum(CASE WHEN attempt > 1 AND state = 'completed' THEN 1 ELSE 0 END) "
                    "AS recovered_completed, "
                    f"sum(CASE WHEN state IN {in_list(MISSION_HOLDS_LEASE)} THEN 1 ELSE 0 END) AS running, "
                    f"sum(CASE WHEN state IN {in_list(MISSION_HOLDS_LEASE)} AND lease_expires_at < :now "
                    f"THEN 1 ELSE 0 END) AS orphaned FROM missions {where}"
                ),
                {**params, "now": format_instant(utc_now())},
            )
        ).one()
        dead = (
            await conn.execute(
                text(
                    "SELECT count(*) FROM turns WHERE dead_letter IN ('held', 'dead')"
                    + (" AND workspace = :w" if workspace is not None else "")
                ),
                params,
            )
        ).scalar_one()
        sessions = (
            await conn.execute(
                text(
                    "SELECT count(*) AS total, sum(CASE WHEN state = 'recovering' THEN 1 ELSE 0 "
                    "END) AS recovering FROM sessions WHERE state != 'retired'"
                )
            )
        ).one()
        counter_rows = (await conn.execute(text("SELECT name, value FROM counters"))).all()
        counters: dict[str, int] = {str(name): int(value) for name, value in counter_rows}
    latencies = [_seconds(start, end) for start, end in finished]
    started = int(totals.started or 0)
    recovered = int(totals.recovered_finished or 0)
    running = int(totals.running or 0)
    return {
        "mission_latency_p50_s": round(percentile(latencies, 0.5), 6),
        "mission_latency_p95_s": round(percentile(latencies, 0.95), 6),
        "fallback_rate": round(int(totals.fallback or 0) / started, 6) if started else 0.0,
        "recovery_success_rate": (
            round(int(totals.recovered_completed or 0) / recovered, 6) if recovered else 1.0
        ),
        "orphaned_rate": round(int(totals.orphaned or 0) / running, 6) if running else 0.0,
        "orphaned_session_rate": (
            round(int(sessions.recovering or 0) / int(sessions.total), 6) if sessions.total else 0.0
        ),
        "sessions_orphaned": int(counters.get("sessions_orphaned", 0)),
        "retries": int(totals.retries or 0),
        "dead_letters": int(dead),
        "lease_conflicts": int(counters.get("late_writes_rejected", 0)),
        "leases_reclaimed": int(counters.get("leases_reclaimed", 0)),
    }


async def pending_work(db: Database) -> int:
    """Receipts not yet applied plus missions queued, running or blocked, in every workspace."""
    async with db.read() as conn:
        receipts = (
            await conn.execute(
                text(
                    "SELECT count(*) FROM receipts "
                    "WHERE status = 'accepted' AND produced_type IS NULL"
                )
            )
        ).scalar_one()
        missions = (
            await conn.execute(
                text(f"SELECT count(*) FROM missions WHERE state IN {in_list(MISSION_LIVE)}")
            )
        ).scalar_one()
    return int(receipts) + int(missions)
