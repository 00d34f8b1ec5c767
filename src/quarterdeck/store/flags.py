"""Lane flags (paused, shadow, force-fallback; ``*`` for the global switch) and the named
counters kept with the data. Writes run inside the writer's transaction and are recorded."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text

from quarterdeck.domain.envelope import RUNTIME_WORKSPACE
from quarterdeck.store.transitions import append_entry
from quarterdeck.store.writer import WriteTxn


def set_flag(
    txn: WriteTxn,
    lane: str,
    flag: str,
    value: bool,
    *,
    actor: str,
    workspace: str,
    reason: str | None = None,
) -> None:
    """Set one lane flag (``*`` for global) and record it on the ledger (with ``reason``, why
    the runtime set it, when given)."""
    assert flag in ("paused", "shadow", "force_fallback")
    txn.conn.execute(
        text(
            "INSERT INTO lane_flags (lane, paused, shadow, force_fallback, version, updated_at) "
            "VALUES (:lane, 0, 0, 0, 1, :at) ON CONFLICT (lane) DO NOTHING"
        ),
        {"lane": lane, "at": txn.at},
    )
    txn.conn.execute(
        text(
            f"UPDATE lane_flags SET {flag} = :value, version = version + 1, updated_at = :at "
            "WHERE lane = :lane"
        ),
        {"value": int(value), "at": txn.at, "lane": lane},
    )
    action = {
        "paused": "lane.paused" if value else "lane.resumed",
        "shadow": "lane.shadow_on" if value else "lane.shadow_off",
        "force_fallback": "lane.force_fallback_on" if value else "lane.force_fallback_off",
    }[flag]
    payload: dict[str, Any] = {flag: value}
    if reason:
        payload["reason"] = reason
    append_entry(txn, workspace, actor, action, "lane", lane, None, None, payload)


@dataclass(frozen=True, slots=True)
class Flags:
    """Flags as read: per lane, and the global force-fallback switch."""

    paused: frozenset[str]
    shadow: frozenset[str]
    forced: frozenset[str]
    force_all: bool


def read_flags(conn: Any) -> Flags:
    """Read every lane's flags (works on a sync connection)."""
    rows = conn.execute(text("SELECT lane, paused, shadow, force_fallback FROM lane_flags")).all()
    return Flags(
        paused=frozenset(r.lane for r in rows if r.paused and r.lane != "*"),
        shadow=frozenset(r.lane for r in rows if r.shadow and r.lane != "*"),
        forced=frozenset(r.lane for r in rows if r.force_fallback and r.lane != "*"),
        force_all=any(r.lane == "*" and r.force_fallback for r in rows),
    )


def seed_flags(
    txn: WriteTxn, defaults: Mapping[str, Mapping[str, bool]], force_all: bool, actor: str
) -> None:
    """Give lanes seen for the first time their configured flags (later, only commands change
    them), and the global force-fallback switch its configured default."""
    existing = read_flags(txn.conn)
    known = set(txn.conn.execute(text("SELECT lane FROM lane_flags")).scalars().all())
    for lane, flags in defaults.items():
        if lane in known:
            continue
        for flag, value in flags.items():
            if value:
                set_flag(txn, lane, flag, True, actor=actor, workspace=RUNTIME_WORKSPACE)
    if "*" not in known and force_all and not existing.force_all:
        set_flag(txn, "*", "force_fallback", True, actor=actor, workspace=RUNTIME_WORKSPACE)


_BUMP = text(
    "INSERT INTO counters (name, value) VALUES (:name, :n) "
    "ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value"
)


def bump_counter(txn: WriteTxn, name: str, n: int = 1) -> None:
    """Add ``n`` to a named counter kept with the data."""
    txn.conn.execute(_BUMP, {"name": name, "n": n})
