"""The embedded runtime end to end, against real SQLite files: receipts become turns and
missions, missions run on lanes under fenced leases, retries, fallback, dead letters, flags,
drain, the command lane, a second node in a real subprocess, and configuration errors.

Tests are synchronous and drive asyncio themselves (``asyncio.run``). They wait for states by
polling the database with a deadline, never by sleeping blindly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from tests import agents
from tests.conftest import Store, another_database, current_database, run

from quarterdeck.domain.authority import ADMIN, Kind, Principal
from quarterdeck.domain.clock import format_instant
from quarterdeck.domain.commands import LanePause, LaneResume
from quarterdeck.runtime.config import load_config, parse_config
from quarterdeck.runtime.ingest import Ingestor
from quarterdeck.runtime.lanes.base import MissionContext
from quarterdeck.runtime.runtime import Runtime, work_plan
from quarterdeck.store.apply import apply_receipts
from quarterdeck.store.claiming import candidates_sql, claim_missions
from quarterdeck.store.database import Database, open_database
from quarterdeck.store.finishing import Ending, finish_mission, finish_missions
from quarterdeck.store.leases import heartbeat, sweep
from quarterdeck.store.ledger import verify_ledger
from quarterdeck.store.queries import get_item, slo, status
from quarterdeck.store.writer import Writer

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("database")  # every test runs on SQLite and PostgreSQL
WS = "w"
TURN_TERMINAL = frozenset({"completed", "failed", "cancelled", "timed_out"})
MISSION_TERMINAL = frozenset({"completed", "failed", "cancelled", "timed_out"})


# --- helpers -------------------------------------------------------------------------------------


PEOPLE = (
    "operator", "op", "t", "test", "x", "alice", "bob", "carol", "dana", "erin", "frank", "gail",
    "ivy", "jo", "kim", "tess",
)  # fmt: skip
"""The people these tests act as: ``admin`` in :func:`config`'s roster."""


def person(name: str) -> Principal:
    """A supervisor named ``name`` (as a test gives it; the control API authenticates one)."""
    return Principal(Kind.SUPERVISOR, name)


def config(**top: Any) -> dict[str, Any]:
    """A fast two-lane configuration: ``sim`` falls back to ``fb`` (both simulated); every one
    of :data:`PEOPLE` is ``admin``."""
    data: dict[str, Any] = {
        "roster": {name: [ADMIN] for name in PEOPLE},
        "lease_s": 2,
        "sweep_interval_s": 0.3,
        "hold_s": 3600,
        "drain_grace_s": 0.5,
        "lanes": {
            "sim": {
                "adapter": "sim",
                "fallback": "fb",
                "backoff_initial_s": 0.01,
                "backoff_max_s": 0.02,
                "options": {"seed": 1, "action_rate": 0.0},
            },
            "fb": {"adapter": "sim", "options": {"seed": 2, "action_rate": 0.0}},
        },
    }
    data.update(top)
    return data


def task(
    key: str,
    *,
    lane: str | None = "sim",
    outcome: str | None = "complete",
    latency_ms: int = 0,
    objective: str | None = None,
    **input_extra: Any,
) -> dict[str, Any]:
    """A task envelope steering the sim lane (``outcome=None``: the lane draws it)."""
    knobs: dict[str, Any] = {"latency_ms": latency_ms, "progress": 1}
    if outcome is not None:
        knobs["outcome"] = outcome
    payload: dict[str, Any] = {
        "objective": objective or f"objective {key}",
        "input": {"sim": knobs, **input_extra},
    }
    if lane is not None:
        payload["lane"] = lane
    return {"idempotency_key": key, "workspace": WS, "kind": "task", "payload": payload}


def command(key: str, **payload: Any) -> dict[str, Any]:
    """A command envelope written into the database (not given through the runtime): nobody
    authenticated its sender."""
    return {"idempotency_key": key, "workspace": WS, "kind": "command", "payload": payload}


OPERATOR = person("operator")


async def wait_until(
    probe: Callable[[], Any], timeout: float = 10.0, what: str = "condition"
) -> Any:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last: {last!r}")


async def turn_of(store: Store, receipt_id: str, timeout: float = 5.0) -> str:
    """The turn a task receipt produced, once it is applied."""

    def probe() -> str | None:
        kind, produced = store.produced(receipt_id)
        if kind is None:
            return None
        assert kind == "turn", (kind, produced)
        return produced

    turn_id: str = await wait_until(probe, timeout, f"receipt {receipt_id} to be applied")
    return turn_id


async def turn_in(store: Store, turn_id: str, *states: str, timeout: float = 10.0) -> dict:
    """Wait for a turn to reach one of ``states``; return its row."""
    return await wait_until(  # type: ignore[no-any-return]
        lambda: row if (row := store.turn(turn_id))["state"] in states else None,
        timeout,
        f"turn {turn_id} to be {' or '.join(states)}",
    )


@contextlib.asynccontextmanager
async def runtime(
    tmp_path: Path, data: Mapping[str, Any], **kwargs: Any
) -> AsyncIterator[tuple[Runtime, Store]]:
    """A started runtime on the database under test (SQLite ``tmp_path/q.db`` unless the
    ``database`` fixture chose one); stopped (drained) and disposed afterwards."""
    url = current_database(tmp_path)
    db = await open_database(url)
    rt = Runtime(db, parse_config(dict(data)), state_dir=tmp_path / "state", **kwargs)
    await rt.start()
    try:
        yield rt, Store(url)
    finally:
        await stop_once(rt)
        await db.dispose()


async def submit_one(rt: Runtime, envelope: Any) -> str:
    """Submit one envelope; it must be accepted. Returns its receipt id."""
    [result] = await rt.submit([envelope])
    assert result.status == "accepted", result
    return result.receipt


async def stop_once(rt: Runtime, grace_s: float = 0.2) -> None:
    """Drain ``rt`` unless this test already did (``stop`` is not meant to run twice)."""
    if not getattr(rt, "_test_stopped", False):
        rt._test_stopped = True  # type: ignore[attr-defined]
        await rt.stop(grace_s=grace_s)


async def assert_ledger_ok(db: Database) -> None:
    result = await verify_ledger(db)
    assert result.ok, result


# --- 1. a task becomes a turn with one mission that completes ------------------------------------


def test_task_becomes_turn_with_one_completed_mission(tmp_path: Path) -> None:
    async def main() -> None:
        async with runtime(tmp_path, config()) as (rt, store):
            receipt = await submit_one(rt, task("k1", objective="ship it"))
            turn_id = await turn_of(store, receipt)
            await turn_in(store, turn_id, "completed")

            item = await get_item(rt.db, turn_id, workspace=WS)
            assert item is not None
            assert item["type"] == "turn"
            assert item["state"] == "completed"
            assert item["lane"] == "sim"
            assert item["attempts"] == 1
            assert item["receipt_id"] == receipt
            assert item["dead_letter"] is None
            assert item["lease_owner"] is None
            assert item["deliverable"] == {"summary": "done: ship it", "lane": "sim", "actions": []}
            [mission] = item["missions"]
            assert mission["state"] == "completed"
            assert mission["lane"] == mission["routed_lane"] == "sim"
            assert mission["role"] == "primary"
            assert (mission["number"], mission["attempt"]) == (1, 1)
            assert mission["result"] == item["deliverable"]
            assert mission["lease_owner"] is None
            assert mission["started_at"] and mission["finished_at"]

            receipt_item = await get_item(rt.db, receipt, workspace=WS)
            assert receipt_item is not None
            assert receipt_item["status"] == "accepted"
            assert receipt_item["produced"] == {"type": "turn", "id": turn_id}

            entries = [
                e
                for e in store.ledger()
                if e["subject_id"] in (turn_id, mission["id"])
                and e["subject_type"] in ("turn", "mission")
            ]
            assert [e["action"] for e in entries] == [
                "turn.created",
                "mission.created",
                "mission.running",
                "turn.leased",
                "turn.running",
                "mission.completed",
                "turn.completed",
            ]
            assert {e["actor"] for e in entries[2:]} == {rt.node_id}
            assert [e["action"] for e in item["history"]] == [
                "turn.created",
                "turn.leased",
                "turn.running",
                "turn.completed",
            ]
            # the progress event was recorded (events are not ledger entries)
            await wait_until(
                lambda: store.rows(
                    "SELECT type FROM mission_events WHERE mission_id = ?", mission["id"]
                ),
                what="mission events",
            )
            counts = await status(rt.db, WS)
            assert counts["turns"]["completed"] == 1
            assert counts["missions"]["completed"] == 1
            await assert_ledger_ok(rt.db)

    run(main())


# --- 2. tasks that cannot run, events, malformed commands -----------------------------------------


def test_unrunnable_tasks_fail_at_once_and_bad_commands_are_refused(tmp_path: Path) -> None:
    async def main() -> None:
        async with runtime(tmp_path, config()) as (rt, store):
            unknown = await submit_one(rt, task("unknown-lane", lane="nowhere"))
            bad_input = {
                "idempotency_key": "bad-input",
                "workspace": WS,
                "kind": "task",
                "payload": {"lane": "sim", "objective": "x", "input": "not an object"},
            }
            malformed = await submit_one(rt, bad_input)
            event = await submit_one(
                rt,
                {"idempotency_key": "ev", "workspace": WS, "kind": "event", "payload": {"n": 1}},
            )
            given = {
                "missing_lane": {"command": "lane.pause"},
                "unknown_command": {"command": "lane.explode"},
                "unknown_lane": {"command": "lane.pause", "lane": "ghost"},
                "not_bool": {"command": "lane.force_fallback", "lane": "sim", "on": "yes"},
            }
            refused = {name: await rt.command(WS, body, OPERATOR) for name, body in given.items()}
            # a command envelope written into the database: nobody authenticated its sender,
            # whatever name it carries
            written = await submit_one(rt, command("c5", command="lane.pause", lane="sim"))
            named = await submit_one(
                rt, command("c6", command="lane.pause", lane="sim", actor="operator")
            )

            expected = {
                unknown: "payload.lane: no lane named 'nowhere'",
                malformed: "payload.input: must be an object",
            }
            for receipt, reason in expected.items():
                turn_id = await turn_of(store, receipt)
                item = await get_item(rt.db, turn_id, workspace=WS)
                assert item is not None
                assert item["state"] == "failed"
                assert item["error"] == reason
                assert item["deliverable"] == {"error": reason}
                assert item["missions"] == []
                assert [e["action"] for e in item["history"]] == ["turn.created", "turn.failed"]

            assert store.produced(event) == ("event", event)
            [recorded] = store.ledger(action="event.recorded")
            assert recorded["subject_id"] == event
            assert recorded["payload"] == {"payload": {"n": 1}}

            for result in refused.values():
                assert result["ok"] is False and result["errors"], result
            assert refused["missing_lane"] == {"ok": False, "errors": ["payload.lane: is required"]}
            for receipt in (written, named):
                await wait_until(lambda r=receipt: store.produced(r)[0], what="command applied")
                result = json.loads(store.produced(receipt)[1] or "")
                assert (result["ok"], result["refused"]) == (False, "unauthenticated"), result
            refusals = store.ledger(action="command.refused")
            assert len(refusals) == len(given) + 2
            assert {e["actor"] for e in refusals} == {
                "operator", f"unauthenticated:receipt/{written}", f"unauthenticated:receipt/{named}"
            }  # fmt: skip
            by_nobody = [e for e in refusals if e["actor"] != "operator"]
            assert {e["payload"]["refusal"] for e in by_nobody} == {"unauthenticated"}
            assert {e["payload"]["principal"]["kind"] for e in by_nobody} == {"agent"}
            # nothing was flagged by the refused commands
            assert (
                store.rows("SELECT * FROM lane_flags WHERE paused = 1 OR force_fallback = 1") == []
            )

            direct = await rt.command(WS, {"command": "turn.cancel"}, person("operator"))
            assert direct == {"ok": False, "errors": ["payload.turn_id: is required"]}
            await assert_ledger_ok(rt.db)

    run(main())


# --- 3. retries, fallback, dead letters -----------------------------------------------------------


def test_retries_then_fallback_complete_the_turn_once(tmp_path: Path) -> None:
    data = config()
    data["lanes"]["sim"].update(max_attempts=2)
    data["lanes"]["sim"]["options"]["failure_rate"] = 1.0
    data["lanes"]["fb"]["options"]["failure_rate"] = 0.0

    async def main() -> None:
        async with runtime(tmp_path, data) as (rt, store):
            receipt = await submit_one(rt, task("k", outcome=None))
            turn_id = await turn_of(store, receipt)
            row = await turn_in(store, turn_id, "completed")
            missions = store.missions(turn_id)
            assert [(m["lane"], m["role"], m["number"], m["state"]) for m in missions] == [
                ("sim", "primary", 1, "failed"),
                ("sim", "primary", 2, "failed"),
                ("fb", "fallback", 1, "completed"),
            ]
            assert all(m["error"].startswith("simulated failure") for m in missions[:2])
            assert missions[2]["routed_lane"] == "fb"
            assert json.loads(row["deliverable"])["lane"] == "fb"
            assert row["dead_letter"] is None
            turn_entries = store.ledger(subject=turn_id)
            assert [e["action"] for e in turn_entries].count("turn.completed") == 1
            retries = [e for e in turn_entries if e["action"] == "turn.queued"]
            assert [e["payload"]["retry_lane"] for e in retries] == ["sim", "fb"]
            assert {e["payload"]["dead_letter"] for e in retries} == {"retryable"}
            figures = await slo(rt.db, WS)
            assert figures["retries"] == 1
            assert figures["fallback_rate"] == pytest.approx(1 / 3, abs=1e-4)
            await assert_ledger_ok(rt.db)

    run(main())


def test_exhausted_turn_is_held_and_requeue_gives_it_a_new_mission(tmp_path: Path) -> None:
    data = config(
        lanes={
            "py": {
                "adapter": "python",
                "options": {"callable": "tests.agents:flaky"},
                "max_attempts": 2,
                "backoff_initial_s": 0.01,
                "backoff_max_s": 0.02,
            }
        }
    )

    async def main() -> None:
        async with runtime(tmp_path, data) as (rt, store):
            receipt = await submit_one(rt, task("k", lane="py"))
            turn_id = await turn_of(store, receipt)
            held = await wait_until(
                lambda: r if (r := store.turn(turn_id))["dead_letter"] == "held" else None,
                what="turn held",
            )
            assert held["state"] == "queued"
            assert held["error"] == "flaky: told to fail"
            assert held["held_until"]
            missions = store.missions(turn_id)
            assert [(m["number"], m["state"]) for m in missions] == [(1, "failed"), (2, "failed")]
            [held_entry] = [
                e
                for e in store.ledger(subject=turn_id)
                if e["payload"].get("dead_letter") == "held"
            ]
            assert held_entry["action"] == "turn.queued"
            # nothing runs a held turn by itself
            await asyncio.sleep(0.3)
            assert len(store.missions(turn_id)) == 2

            agents.FLAKY["fail"] = False
            result = await rt.command(
                WS, {"command": "turn.requeue", "turn_id": turn_id}, person("operator")
            )
            assert result["ok"] is True and result["turn"] == turn_id
            row = await turn_in(store, turn_id, "completed")
            assert json.loads(row["deliverable"]) == {"flaky": "ok", "objective": "objective k"}
            assert row["dead_letter"] is None
            missions = store.missions(turn_id)
            assert len(missions) == 3
            assert missions[2]["id"] == result["mission"]
            assert (missions[2]["number"], missions[2]["role"], missions[2]["state"]) == (
                1,
                "primary",
                "completed",
            )
            [requeued] = store.ledger(action="turn.requeued")
            assert (requeued["subject_id"], requeued["actor"]) == (turn_id, "operator")
            again = await rt.command(
                WS, {"command": "turn.requeue", "turn_id": turn_id}, person("operator")
            )
            assert again["ok"] is False
            await assert_ledger_ok(rt.db)

    agents.FLAKY["fail"] = True
    try:
        run(main())
    finally:
        agents.FLAKY["fail"] = False


def test_sweep_buries_a_held_turn_when_its_hold_runs_out(tmp_path: Path) -> None:
    data = config(hold_s=0.05)
    data["lanes"]["sim"].update(max_attempts=1)
    del data["lanes"]["sim"]["fallback"]

    async def main() -> None:
        async with runtime(tmp_path, data) as (rt, store):
            receipt = await submit_one(rt, task("k", outcome="fail"))
            turn_id = await turn_of(store, receipt)
            row = await turn_in(store, turn_id, "failed", timeout=5)
            assert row["dead_letter"] == "dead"
            deliverable = json.loads(row["deliverable"])
            assert deliverable["dead_letter"] == "dead"
            assert deliverable["error"].startswith("simulated failure")
            actions = [e["action"] for e in store.ledger(subject=turn_id)]
            assert actions[-2:] == ["turn.queued", "turn.failed"]
            [failed] = store.ledger(action="turn.failed")
            assert failed["payload"]["dead_letter"] == "dead"
            assert store.counter("dead_letters_dead") == 1
            refused = await rt.command(
                WS, {"command": "turn.requeue", "turn_id": turn_id}, person("operator")
            )
            assert refused["ok"] is False
            assert refused["errors"] == ["turn is not held (dead_letter=dead)"]
            await assert_ledger_ok(rt.db)

    run(main())


# --- 4. supervisor flags --------------------------------------------------------------------------


def test_pause_stops_claims_and_resume_lets_them_run(tmp_path: Path) -> None:
    async def main() -> None:
        async with runtime(tmp_path, config()) as (rt, store):
            paused = await rt.command(
                WS, {"command": "lane.pause", "lane": "sim"}, person("operator")
            )
            assert paused == {"ok": True, "command": "lane.pause", "lane": "sim", "paused": True}
            receipt = await submit_one(rt, task("k"))
            other = await submit_one(rt, task("other", lane="fb"))
            turn_id = await turn_of(store, receipt)
            # the other lane is not paused
            await turn_in(store, await turn_of(store, other), "completed")
            await asyncio.sleep(0.4)  # several pump rounds
            [mission] = store.missions(turn_id)
            assert mission["state"] == "queued" and mission["attempt"] == 0
            assert store.turn(turn_id)["state"] == "queued"
            assert rt.running == 0

            await rt.command(WS, LaneResume(lane="sim"), OPERATOR, "resume")
            await turn_in(store, turn_id, "completed")
            flags = [
                (e["action"], e["subject_id"], e["actor"])
                for e in store.ledger()
                if e["subject_type"] == "lane"
            ]
            resume_receipt = store.one("SELECT id FROM receipts WHERE idempotency_key = 'resume'")
            assert resume_receipt is not None
            assert flags == [
                ("lane.paused", "sim", "operator"),
                ("lane.resumed", "sim", "operator"),
            ]

    run(main())


def test_an_embedded_command_is_recorded_as_a_receipt_and_applied_through_it(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with runtime(tmp_path, config()) as (rt, store):
            paused = await rt.command(WS, LanePause(lane="sim"), person("operator"))
            assert paused == {"ok": True, "command": "lane.pause", "lane": "sim", "paused": True}
            [receipt] = store.rows("SELECT * FROM receipts WHERE kind = 'command'")
            assert receipt["status"] == "accepted" and receipt["workspace"] == WS
            assert receipt["idempotency_key"].startswith("cmd:")
            assert json.loads(receipt["payload"]) == {"command": "lane.pause", "lane": "sim"}
            assert receipt["produced_type"] == "command"
            assert json.loads(receipt["produced_id"]) == paused
            [recorded] = [
                e for e in store.ledger(action="receipts.recorded")
                if receipt["id"] in e["payload"].get("accepted", [])
            ]  # fmt: skip
            [flag] = store.ledger(action="lane.paused")
            assert recorded["seq"] < flag["seq"] and flag["actor"] == "operator"

            refused = await rt.command(WS, {"command": "turn.cancel"}, person("operator"))
            assert refused == {"ok": False, "errors": ["payload.turn_id: is required"]}
            [second] = store.rows(
                "SELECT * FROM receipts WHERE kind = 'command' AND id <> ?", receipt["id"]
            )
            assert json.loads(second["produced_id"]) == refused
            [refusal] = store.ledger(action="command.refused")
            assert refusal["actor"] == "operator"
            await assert_ledger_ok(rt.db)

    run(main())


def test_an_embedded_command_given_again_with_its_key_is_applied_once(tmp_path: Path) -> None:
    async def main() -> None:
        async with runtime(tmp_path, config()) as (rt, store):
            first = await rt.command(
                WS,
                {"command": "turn.requeue", "turn_id": "nope"},
                person("erin"),
                idempotency_key="k1",
            )
            assert first == {"ok": False, "errors": ["no such turn"]}
            paused = await rt.command(
                WS, LanePause(lane="sim"), person("erin"), idempotency_key="k2"
            )
            again = await rt.command(
                WS, LanePause(lane="sim"), person("erin"), idempotency_key="k2"
            )
            other = await rt.command(
                WS, LaneResume(lane="sim"), person("erin"), idempotency_key="k2"
            )
            assert again == other == paused and paused["ok"] is True
            assert await rt.command(
                WS, {"command": "turn.cancel"}, person("x"), idempotency_key="k1"
            ) == (first)
            assert store.value("SELECT count(*) FROM receipts WHERE kind = 'command'") == 2
            assert (
                store.value("SELECT duplicates FROM receipt_counters WHERE workspace = ?", WS) == 3
            )
            assert len(store.ledger(action="lane.paused")) == 1
            assert store.ledger(action="lane.resumed") == []
            assert len(store.ledger(action="command.refused")) == 1
            assert store.one("SELECT paused FROM lane_flags WHERE lane = 'sim'") == {"paused": 1}
            task_receipt = await submit_one(rt, task("k3"))
            assert await rt.command(
                WS, LanePause(lane="sim"), person("erin"), idempotency_key="k3"
            ) == {
                "ok": False,
                "errors": ["idempotency_key: already used for a turn, not a command"],
            }
            assert store.produced(task_receipt)[0] == "turn"
            await assert_ledger_ok(rt.db)

    run(main())


def test_force_fallback_flip_routes_later_dispatches_to_the_fallback(tmp_path: Path) -> None:
    data = config()
    data["lanes"]["sim"].update(concurrency=1)

    async def main() -> None:
        async with runtime(tmp_path, data) as (rt, store):
            receipts = [await submit_one(rt, task(f"k{i}", latency_ms=400)) for i in range(6)]
            turns = [await turn_of(store, r) for r in receipts]
            await wait_until(
                lambda: store.value("SELECT count(*) FROM missions WHERE state = 'running'"),
                what="a running mission",
            )
            result = await rt.command(
                WS,
                {"command": "lane.force_fallback", "lane": "sim", "on": True},
                person("operator"),
            )
            assert result["ok"] is True and result["force_fallback"] is True
            flipped_at = time.monotonic()
            [flip] = store.ledger(action="lane.force_fallback_on")
            assert flip["subject_id"] == "sim"

            # every mission still queued at the flip is dispatched to fb within 1 s
            await wait_until(
                lambda: store.value("SELECT count(*) FROM missions WHERE state = 'queued'") == 0,
                timeout=1.0,
                what="queued missions dispatched to the fallback",
            )
            assert time.monotonic() - flipped_at < 1.0
            for turn_id in turns:
                await turn_in(store, turn_id, "completed")
            starts = {e["subject_id"]: e for e in store.ledger(action="mission.running")}
            before = after = 0
            for turn_id in turns:
                [mission] = store.missions(turn_id)
                started = starts[mission["id"]]
                if started["seq"] > flip["seq"]:
                    after += 1
                    assert mission["routed_lane"] == "fb", mission
                    assert started["payload"]["routed_from"] == "sim"
                    assert (mission["lane"], mission["role"]) == ("sim", "primary")
                else:
                    before += 1
                    assert mission["routed_lane"] == "sim", mission
                deliverable = json.loads(store.turn(turn_id)["deliverable"])
                assert deliverable["lane"] == mission["routed_lane"]
            assert before >= 1 and after >= 4, (before, after)
            assert store.counter("fallback_dispatches") == after

            await rt.command(
                WS,
                {"command": "lane.force_fallback", "lane": "sim", "on": False},
                person("operator"),
            )
            turn_id = await turn_of(store, await submit_one(rt, task("later")))
            await turn_in(store, turn_id, "completed")
            assert store.missions(turn_id)[0]["routed_lane"] == "sim"
            assert len(store.ledger(action="lane.force_fallback_off")) == 1

    run(main())


def test_global_fallback_force(tmp_path: Path) -> None:
    async def main() -> None:
        async with runtime(tmp_path, config()) as (rt, store):
            await rt.command(WS, {"command": "fallback.force", "on": True}, OPERATOR)
            await wait_until(lambda: store.ledger(action="lane.force_fallback_on"), what="flag")
            turn_id = await turn_of(store, await submit_one(rt, task("k")))
            await turn_in(store, turn_id, "completed")
            [mission] = store.missions(turn_id)
            assert (mission["lane"], mission["routed_lane"]) == ("sim", "fb")
            # fb has no fallback of its own: it still runs its own missions
            fb_turn = await turn_of(store, await submit_one(rt, task("f", lane="fb")))
            await turn_in(store, fb_turn, "completed")
            assert store.missions(fb_turn)[0]["routed_lane"] == "fb"

            await rt.command(WS, {"command": "fallback.force", "on": False}, OPERATOR)
            await wait_until(lambda: store.ledger(action="lane.force_fallback_off"), what="flag")
            turn_id = await turn_of(store, await submit_one(rt, task("k2")))
            await turn_in(store, turn_id, "completed")
            assert store.missions(turn_id)[0]["routed_lane"] == "sim"
            flags = [
                (e["action"], e["subject_id"], e["payload"])
                for e in store.ledger()
                if e["subject_type"] == "lane"
            ]
            assert flags == [
                ("lane.force_fallback_on", "*", {"force_fallback": True}),
                ("lane.force_fallback_off", "*", {"force_fallback": False}),
            ]

    run(main())


def test_shadow_mode_records_a_shadow_result_and_keeps_the_primary_deliverable(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with runtime(tmp_path, config()) as (rt, store):
            await rt.command(
                WS, {"command": "lane.shadow", "lane": "sim", "on": True}, person("op")
            )
            turn_id = await turn_of(store, await submit_one(rt, task("k", latency_ms=50)))
            row = await turn_in(store, turn_id, "completed")
            missions = await wait_until(
                lambda: (
                    ms
                    if len(ms := store.missions(turn_id)) == 2
                    and all(m["state"] in MISSION_TERMINAL for m in ms)
                    else None
                ),
                what="primary and shadow missions finished",
            )
            by_role = {m["role"]: m for m in missions}
            assert set(by_role) == {"primary", "shadow"}
            shadow = by_role["shadow"]
            assert (shadow["lane"], shadow["routed_lane"], shadow["state"]) == (
                "fb",
                "fb",
                "completed",
            )
            assert json.loads(shadow["result"])["lane"] == "fb"
            assert json.loads(row["deliverable"])["lane"] == "sim"
            assert json.loads(by_role["primary"]["result"]) == json.loads(row["deliverable"])
            turn_actions = [e["action"] for e in store.ledger(subject=turn_id)]
            assert turn_actions.count("turn.completed") == 1
            assert turn_actions.count("turn.leased") == 1  # the shadow never leases the turn
            [on] = store.ledger(action="lane.shadow_on")
            assert (on["subject_id"], on["actor"]) == ("sim", "op")

            await rt.command(
                WS, {"command": "lane.shadow", "lane": "sim", "on": False}, person("op")
            )
            plain = await turn_of(store, await submit_one(rt, task("k2")))
            await turn_in(store, plain, "completed")
            await asyncio.sleep(0.2)
            assert [m["role"] for m in store.missions(plain)] == ["primary"]
            assert len(store.ledger(action="lane.shadow_off")) == 1

    run(main())


def test_shadow_off_command_overrides_shadow_from_the_configuration(tmp_path: Path) -> None:
    """``shadow = true`` in the configuration is a flag default, seeded once like ``paused`` and
    ``force_fallback``: an operator's ``lane.shadow`` off must stop the shadow runs."""
    data = config()
    data["lanes"]["sim"]["shadow"] = True

    async def main() -> None:
        async with runtime(tmp_path, data) as (rt, store):
            assert [e["action"] for e in store.ledger(action="lane.shadow_on")] == [
                "lane.shadow_on"
            ]
            off = await rt.command(
                WS, {"command": "lane.shadow", "lane": "sim", "on": False}, person("op")
            )
            assert off["ok"] is True
            turn_id = await turn_of(store, await submit_one(rt, task("k")))
            await turn_in(store, turn_id, "completed")
            await asyncio.sleep(0.2)
            roles = [m["role"] for m in store.missions(turn_id)]
            assert roles == ["primary"], f"shadow still runs after lane.shadow off: {roles}"

    run(main())


# --- 5. exactly one deliverable over a chaotic run ------------------------------------------------


def test_many_turns_each_end_terminal_with_exactly_one_deliverable(tmp_path: Path) -> None:
    total = 300
    rng = random.Random(7)
    data = config(lease_s=2, hold_s=0.2, sweep_interval_s=0.3)
    data["lanes"]["sim"].update(max_attempts=2, concurrency=16)
    data["lanes"]["sim"]["options"].update(failure_rate=0.3, max_latency_ms=20, action_rate=0.1)
    data["lanes"]["fb"].update(max_attempts=1, concurrency=16)
    data["lanes"]["fb"]["options"].update(failure_rate=0.3, max_latency_ms=20)

    async def main() -> None:
        async with runtime(tmp_path, data) as (rt, store):
            envelopes = [
                task(f"t{i}", outcome=None, latency_ms=rng.randint(0, 30)) for i in range(total)
            ]
            receipts: list[str] = []
            for start in range(0, total, 50):
                receipts += [r.receipt for r in await rt.submit(envelopes[start : start + 50])]
                await asyncio.sleep(0.05)
                if start == 100:
                    await rt.command(
                        WS,
                        {"command": "lane.force_fallback", "lane": "sim", "on": True},
                        person("op"),
                    )
                    await rt.command(
                        WS, {"command": "lane.shadow", "lane": "sim", "on": True}, person("op")
                    )
                if start == 200:
                    await rt.command(
                        WS,
                        {"command": "lane.force_fallback", "lane": "sim", "on": False},
                        person("op"),
                    )
                # cancel a few turns wherever they are (queued, running, held, finished)
                for receipt in rng.sample(receipts, 3):
                    kind, turn_id = store.produced(receipt)
                    if kind == "turn":
                        await rt.command(
                            WS, {"command": "turn.cancel", "turn_id": turn_id}, person("op")
                        )
            assert len(set(receipts)) == total

            def unfinished() -> int:
                return int(
                    store.value(
                        "SELECT (SELECT count(*) FROM turns WHERE state NOT IN "
                        "('completed', 'failed', 'cancelled', 'timed_out')) + "
                        "(SELECT count(*) FROM missions WHERE state NOT IN "
                        "('completed', 'failed', 'cancelled', 'timed_out')) + "
                        "(SELECT count(*) FROM receipts WHERE produced_type IS NULL)"
                    )
                )

            await wait_until(lambda: unfinished() == 0, timeout=40, what="every turn terminal")
            await stop_once(rt, grace_s=0.5)

            turns = store.rows("SELECT * FROM turns")
            missions = store.rows("SELECT * FROM missions")
            ledger = store.ledger()
            assert len(turns) == total
            assert {t["receipt_id"] for t in turns} == set(receipts)
            turn_finals: Counter[str] = Counter()
            mission_finals: Counter[str] = Counter()
            completions: Counter[str] = Counter()
            for entry in ledger:
                if entry["subject_type"] == "turn" and entry["to_state"] in TURN_TERMINAL:
                    turn_finals[entry["subject_id"]] += 1
                if entry["action"] == "turn.completed":
                    completions[entry["subject_id"]] += 1
                if entry["subject_type"] == "mission" and entry["to_state"] in MISSION_TERMINAL:
                    mission_finals[entry["subject_id"]] += 1
            by_turn: dict[str, list[dict[str, Any]]] = {}
            for mission in missions:
                by_turn.setdefault(mission["turn_id"], []).append(mission)
                assert mission["state"] in MISSION_TERMINAL, mission
                assert mission["lease_owner"] is None, mission
                assert mission_finals[mission["id"]] == 1, mission
            for turn in turns:
                assert turn["state"] in TURN_TERMINAL, turn
                assert turn_finals[turn["id"]] == 1, turn
                assert completions[turn["id"]] == (turn["state"] == "completed"), turn
                assert turn["deliverable"] is not None, turn
                won = [
                    m
                    for m in by_turn.get(turn["id"], [])
                    if m["role"] != "shadow" and m["state"] == "completed"
                ]
                if turn["state"] == "completed":
                    assert len(won) == 1, (turn, won)
                    assert json.loads(turn["deliverable"]) == json.loads(won[0]["result"])
                else:
                    assert won == [], (turn, won)
            states = Counter(t["state"] for t in turns)
            assert states["completed"] > total / 2, states
            assert states["failed"] > 0 and states["cancelled"] > 0, states
            assert any(m["role"] == "shadow" for m in missions)
            assert any(m["role"] == "fallback" for m in missions)
            await assert_ledger_ok(rt.db)

    run(main())


# --- 6. fencing ---------------------------------------------------------------------------------


def test_fencing_rejects_a_stale_owner_after_its_lease_was_swept(tmp_path: Path) -> None:
    now = [datetime(2030, 1, 1, tzinfo=UTC)]
    plan = work_plan(parse_config(config()))
    path = current_database(tmp_path)
    store = Store(path)

    async def main() -> None:
        db = await open_database(str(path))
        try:
            async with Writer(db, clock=lambda: now[0]) as writer:
                [result] = await Ingestor(writer).ingest([task("k")])
                [applied] = await writer.submit(lambda t: apply_receipts(t, plan))
                turn_id = applied.produced_id
                [a] = await writer.submit(
                    lambda t: claim_missions(t, "sim", ["sim"], 5, "owner-A", 1.0)
                )
                assert (a.owner, a.attempt, a.turn_id) == ("owner-A", 1, turn_id)
                assert store.turn(turn_id)["state"] == "running"

                now[0] += timedelta(seconds=0.5)  # still leased: the sweep leaves it alone
                swept = await writer.submit(lambda t: sweep(t, "sweeper"))
                assert (swept.reclaimed, swept.dead) == (0, 0)
                now[0] += timedelta(seconds=1)  # A's lease has expired
                swept = await writer.submit(lambda t: sweep(t, "sweeper"))
                assert (swept.reclaimed, swept.dead) == (1, 0)
                assert store.turn(turn_id)["state"] == "queued"
                [expired] = store.ledger(action="mission.lease_expired")
                assert expired["payload"]["previous_owner"] == "owner-A"

                [b] = await writer.submit(
                    lambda t: claim_missions(t, "sim", ["sim"], 5, "owner-B", 30.0)
                )
                assert b.mission_id == a.mission_id
                assert b.attempt == 2 and b.version > a.version

                def snapshot() -> tuple[Any, ...]:
                    return (
                        store.one("SELECT * FROM missions WHERE id = ?", a.mission_id),
                        store.turn(turn_id),
                    )

                before = snapshot()
                late = await writer.submit(
                    lambda t: finish_mission(t, a, "completed", plan, result={"by": "A"})
                )
                assert late.accepted is False
                assert late.turn_state is None and late.next_mission is None
                lost = await writer.submit(lambda t: heartbeat(t, [a], 30.0))
                assert lost == [a]
                assert snapshot() == before
                rejected = store.ledger(action="mission.late_write_rejected")
                assert [(e["actor"], e["payload"]["write"]) for e in rejected] == [
                    ("owner-A", "completed"),
                    ("owner-A", "heartbeat"),
                ]
                assert all(e["subject_id"] == a.mission_id for e in rejected)
                assert store.counter("late_writes_rejected") == 2
                assert (await slo(db, WS))["lease_conflicts"] == 2

                assert await writer.submit(lambda t: heartbeat(t, [b], 30.0)) == []
                done = await writer.submit(
                    lambda t: finish_mission(t, b, "completed", plan, result={"by": "B"})
                )
                assert done.accepted is True and done.turn_state == "completed"
                again = await writer.submit(
                    lambda t: finish_mission(t, a, "failed", plan, error="late")
                )
                assert again.accepted is False
                turn = store.turn(turn_id)
                assert turn["state"] == "completed"
                assert json.loads(turn["deliverable"]) == {"by": "B"}
                assert len(store.ledger(action="turn.completed")) == 1
                assert store.counter("late_writes_rejected") == 3
                assert (
                    store.one("SELECT * FROM missions WHERE id = ?", a.mission_id)["state"]
                    == "completed"
                )
                assert result.status == "accepted"
            await assert_ledger_ok(db)
        finally:
            await db.dispose()

    run(main())


def test_claims_take_the_oldest_due_missions_straight_off_the_queued_index(
    tmp_path: Path,
) -> None:
    """A backlog of queued missions, most on another lane: each claim takes the oldest due
    ones of its lane (a delayed mission waits its turn), and the database answers the claim
    from the index of the lane's queued missions in order, with no sort of the backlog."""
    now = [datetime(2030, 1, 1, tzinfo=UTC)]
    plan = work_plan(parse_config(config()))
    path = current_database(tmp_path)
    store = Store(path)
    backlog = 1_500

    async def main() -> None:
        db = await open_database(str(path))
        try:
            async with Writer(db, clock=lambda: now[0]) as writer:
                tasks = [task(f"k{i}", lane="sim" if i % 10 == 0 else "fb") for i in range(backlog)]
                await Ingestor(writer).ingest(tasks)
                while await writer.submit(lambda t: apply_receipts(t, plan)):
                    pass
                queued = [
                    r["id"]
                    for r in store.rows(
                        "SELECT id FROM missions WHERE state = 'queued' AND lane = 'sim' ORDER BY id"
                    )
                ]
                assert len(queued) == backlog // 10
                later = format_instant(now[0] + timedelta(seconds=60))
                store.execute("UPDATE missions SET not_before = ? WHERE id = ?", later, queued[1])

                claims = await writer.submit(
                    lambda t: claim_missions(t, "sim", ["sim"], 3, "owner-A", 30.0)
                )
                assert [c.mission_id for c in claims] == [queued[0], queued[2], queued[3]]
                claims = await writer.submit(
                    lambda t: claim_missions(t, "sim", ["sim"], 2, "owner-A", 30.0)
                )
                assert [c.mission_id for c in claims] == queued[4:6]
                now[0] += timedelta(seconds=61)  # the delayed mission is due: first in line
                claims = await writer.submit(
                    lambda t: claim_missions(t, "sim", ["sim"], 2, "owner-A", 30.0)
                )
                assert [c.mission_id for c in claims] == [queued[1], queued[6]]

                def plan_of(conn: Any) -> str:
                    sql = candidates_sql(conn.dialect.name, 1)
                    params = {"lane0": "sim", "now": format_instant(now[0]), "limit": 16}
                    if conn.dialect.name == "postgresql":
                        conn.exec_driver_sql("ANALYZE missions")
                        conn.exec_driver_sql("ANALYZE turns")
                        rows = conn.execute(text("EXPLAIN " + sql), params).all()
                    else:
                        rows = conn.execute(text("EXPLAIN QUERY PLAN " + sql), params).all()
                    return "\n".join(str(r[-1]) for r in rows)

                shown = await db.run_write(plan_of)
                assert "ix_missions_queued" in shown, shown
                assert "Sort" not in shown and "TEMP B-TREE" not in shown, shown
            await assert_ledger_ok(db)
        finally:
            await db.dispose()

    run(main())


def test_batched_finish_rejects_a_stale_ending_beside_the_current_owners(tmp_path: Path) -> None:
    """``finish_missions`` (the runtime's batched finish) must fence each ending on its own:
    a stale owner's ending in the same batch as the current owner's, for the same mission, is
    rejected and recorded, whatever the order in the batch."""
    now = [datetime(2030, 1, 1, tzinfo=UTC)]
    plan = work_plan(parse_config(config()))
    path = current_database(tmp_path)
    store = Store(path)

    async def main() -> None:
        db = await open_database(str(path))
        try:
            async with Writer(db, clock=lambda: now[0]) as writer:
                await Ingestor(writer).ingest([task("k")])
                await writer.submit(lambda t: apply_receipts(t, plan))
                [a] = await writer.submit(
                    lambda t: claim_missions(t, "sim", ["sim"], 5, "owner-A", 1.0)
                )
                now[0] += timedelta(seconds=2)
                await writer.submit(lambda t: sweep(t, "sweeper"))
                [b] = await writer.submit(
                    lambda t: claim_missions(t, "sim", ["sim"], 5, "owner-B", 30.0)
                )
                assert b.mission_id == a.mission_id
                stale, current = await writer.submit(
                    lambda t: finish_missions(
                        t,
                        [
                            Ending(a, "completed", {"by": "A"}),
                            Ending(b, "completed", {"by": "B"}),
                        ],
                        plan,
                    )
                )
                assert current.accepted is True and current.turn_state == "completed"
                assert json.loads(store.turn(a.turn_id)["deliverable"]) == {"by": "B"}
                rejected = store.ledger(action="mission.late_write_rejected")
                assert [(e["actor"], e["payload"]["write"]) for e in rejected] == [
                    ("owner-A", "completed")
                ], "the stale ending was not recorded as a rejected late write"
                assert store.counter("late_writes_rejected") == 1
                assert stale.accepted is False, f"stale owner A was told {stale}"
        finally:
            await db.dispose()

    run(main())


def test_node_blocking_its_loop_loses_the_lease_to_a_daemon(tmp_path: Path) -> None:
    """A node whose agent blocks the event loop past the lease cannot heartbeat; a daemon
    (a real second process) sweeps the lease, runs the mission and completes the turn. The
    blocked node's late writes are rejected and recorded; the turn has one deliverable."""
    state = tmp_path / "state"
    state.mkdir()
    path = current_database(tmp_path)  # SQLite: the state directory's own database file
    toml = tmp_path / "quarterdeck.toml"
    toml.write_text(
        textwrap.dedent(
            """\
            lease_s = 1
            sweep_interval_s = 0.3
            drain_grace_s = 1

            [lanes.py]
            adapter = "python"
            max_attempts = 1
            options = { callable = "tests.agents:blocking" }
            """
        ),
        encoding="utf-8",
    )
    store = Store(path)
    log_path = tmp_path / "daemon.log"
    daemon: list[subprocess.Popen[bytes]] = []

    def start_daemon_once_claimed(stop: threading.Event) -> None:
        # Runs in a thread: the test's event loop is about to be blocked by the agent.
        while not stop.is_set():
            with contextlib.suppress(Exception):  # a read racing the first migration
                if store.value(
                    "SELECT count(*) FROM missions WHERE state = 'running' AND lease_owner = ?",
                    "node-blocked",
                ):
                    break
            time.sleep(0.01)
        else:
            return
        with open(log_path, "wb") as log:
            daemon.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "quarterdeck",
                        "--state-dir",
                        str(state),
                        "--db",
                        str(path),
                        "run",
                        "--headless",
                        "--config",
                        str(toml),
                        "--node-id",
                        "node-daemon",
                    ],
                    cwd=REPO,
                    env={**os.environ, "PYTHONPATH": str(REPO / "src")},
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
            )

    async def main() -> None:
        db = await open_database(str(path))
        rt = Runtime(db, load_config(toml), state_dir=state, node_id="node-blocked")
        stop = threading.Event()
        launcher = threading.Thread(target=start_daemon_once_claimed, args=(stop,), daemon=True)
        launcher.start()
        try:
            await rt.start()
            receipt = await submit_one(rt, task("k", lane="py"))
            turn_id = await turn_of(store, receipt, timeout=30)
            await turn_in(store, turn_id, "completed", timeout=30)

            def late_writes() -> list[dict[str, Any]]:
                return [
                    e
                    for e in store.ledger(action="mission.late_write_rejected")
                    if e["actor"] == "node-blocked"
                ]

            await wait_until(
                lambda: any(e["payload"]["write"] == "completed" for e in late_writes()),
                timeout=10,
                what="the blocked node's late completion to be rejected",
            )
            rejected = late_writes()
            assert agents.BLOCK["unblocked_at"] - agents.BLOCK["blocked_at"] > 1.0  # > lease
            writes = {e["payload"]["write"] for e in rejected}
            # its late completion was tried, rejected and recorded (a late heartbeat may be too)
            assert "completed" in writes, writes
            assert writes <= {"completed", "heartbeat"}, writes
            # the blocked node no longer believes it runs anything
            await wait_until(lambda: rt.running == 0, timeout=3, what="the node to let go")
            await stop_once(rt, grace_s=0.5)

            turn = store.turn(turn_id)
            assert turn["state"] == "completed"
            assert json.loads(turn["deliverable"])["by"] == "daemon"
            assert [e["action"] for e in store.ledger(subject=turn_id)].count("turn.completed") == 1
            [mission] = store.missions(turn_id)
            assert mission["state"] == "completed" and mission["attempt"] == 2
            assert json.loads(mission["result"])["by"] == "daemon"
            [expired] = store.ledger(action="mission.lease_expired")
            assert expired["payload"]["previous_owner"] == "node-blocked"
            assert expired["actor"] == "node-daemon"
            finished = store.ledger(action="mission.completed")
            assert [e["actor"] for e in finished] == ["node-daemon"]
            assert store.counter("late_writes_rejected") == len(late_writes())
            await assert_ledger_ok(db)
        finally:
            stop.set()
            launcher.join(timeout=5)
            for process in daemon:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            await stop_once(rt)
            await db.dispose()

    agents.BLOCK.update(db=str(path), max_s=20)
    try:
        run(main())
    finally:
        agents.BLOCK.clear()
    assert daemon, "the daemon was never started"
    assert daemon[0].wait(timeout=15) == 0, log_path.read_text(errors="replace")
    assert b"daemon stopped" in log_path.read_bytes()


# --- 7. drain -------------------------------------------------------------------------------------


class _CompletingLane:
    """A lane object that completes every mission at once (injected into a second runtime)."""

    name = "sim"

    async def run(self, ctx: MissionContext) -> dict[str, Any]:
        return {"resumed": True, "attempt": ctx.attempt}

    async def close(self) -> None:
        return None


def test_drain_hands_back_a_mission_that_does_not_finish_in_the_grace(tmp_path: Path) -> None:
    async def main() -> None:
        path = current_database(tmp_path)
        store = Store(path)
        db = await open_database(str(path))
        rt = Runtime(db, parse_config(config(lease_s=30)), state_dir=tmp_path / "state")
        await rt.start()
        try:
            receipt = await submit_one(rt, task("k", outcome="hang"))
            turn_id = await turn_of(store, receipt)
            await turn_in(store, turn_id, "running")
            started = time.monotonic()
            await stop_once(rt, grace_s=0.5)
            assert 0.4 < time.monotonic() - started < 5
            assert rt.running == 0
            [mission] = store.missions(turn_id)
            assert mission["state"] == "queued"
            assert mission["lease_owner"] is None and mission["lease_expires_at"] is None
            assert (
                store.value(
                    "SELECT count(*) FROM missions WHERE state IN ('running', 'blocked') "
                    "AND lease_owner = ?",
                    rt.node_id,
                )
                == 0
            )
            turn = store.turn(turn_id)
            assert turn["state"] == "queued" and turn["lease_owner"] is None
            [released] = store.ledger(action="mission.released")
            assert released["subject_id"] == mission["id"]
            assert released["actor"] == rt.node_id
            assert released["payload"]["reason"] == "drain"
            requeued = [e for e in store.ledger(subject=turn_id) if e["action"] == "turn.queued"]
            assert [e["payload"]["reason"] for e in requeued] == ["drain"]
            await assert_ledger_ok(db)

            # another node picks the handed-back mission up at once (no lease to wait out)
            rt2 = Runtime(
                db, parse_config(config()), state_dir=tmp_path / "state",
                lanes={"sim": _CompletingLane()},
            )  # fmt: skip
            await rt2.start()
            try:
                row = await turn_in(store, turn_id, "completed", timeout=3)
            finally:
                await stop_once(rt2)
            assert json.loads(row["deliverable"]) == {"resumed": True, "attempt": 2}
        finally:
            await stop_once(rt)
            await db.dispose()

    run(main())


def test_drain_right_after_submit_leaves_no_mission_leased_to_the_stopped_node(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """``stop`` may come at any moment, also while the pump is claiming: whatever the node
    claimed must be finished or handed back, never left running under a dead node's lease.
    The moment is swept by yielding to the loop 0..7 times between submit and stop."""

    async def main() -> None:
        leaks = []
        for yields in range(8):
            path = another_database(request, tmp_path, f"q{yields}.db")
            store = Store(path)
            db = await open_database(str(path))
            rt = Runtime(db, parse_config(config(lease_s=30)), state_dir=tmp_path / "state")
            await rt.start()
            try:
                await rt.submit([task(f"k{i}", outcome="hang") for i in range(2)])
                for _ in range(yields):
                    await asyncio.sleep(0)
                await stop_once(rt, grace_s=0.1)
                held = store.value(
                    "SELECT count(*) FROM missions WHERE state IN ('running', 'blocked') "
                    "AND lease_owner = ?",
                    rt.node_id,
                )
                if held or rt.running:
                    leaks.append((yields, held, rt.running))
            finally:
                await stop_once(rt)
                await db.dispose()
        assert leaks == [], (
            "after stop(), (yields, missions still leased to the stopped node, "
            f"missions it still runs): {leaks}"
        )

    run(main())


# --- 8. the command lane through the runtime ------------------------------------------------------

AGENT = """\
import json, os, sys, time

def send(**message):
    sys.stdout.write(json.dumps(message) + "\\n")
    sys.stdout.flush()

mission = json.loads(sys.stdin.readline())
send(type="progress", message="read the mission", step=1)
print("a plain log line")
marker = os.path.join(mission["input"].get("marker_dir", "."), os.environ["QUARTERDECK_TURN_ID"])
if mission["input"].get("hang_once") and not os.path.exists(marker):
    open(marker, "w").close()
    send(type="progress", message="hanging", step=2)
    time.sleep(60)
send(type="progress", message="writing the deliverable", step=2)
send(type="deliverable", deliverable={
    "echo": mission["objective"], "attempt": mission["attempt"],
    "env_turn": os.environ["QUARTERDECK_TURN_ID"], "cwd": os.getcwd(),
})
"""


def test_command_lane_runs_an_agent_and_retries_one_that_times_out(tmp_path: Path) -> None:
    script = tmp_path / "agent.py"
    script.write_text(AGENT, encoding="utf-8")
    markers = tmp_path / "markers"
    markers.mkdir()
    data = config(
        lanes={
            "cmd": {
                "adapter": "command",
                "timeout_s": 1.5,
                "max_attempts": 2,
                "backoff_initial_s": 0.01,
                "backoff_max_s": 0.02,
                "options": {"argv": [sys.executable, str(script)], "kill_grace_s": 0.2},
            }
        }
    )

    async def main() -> None:
        async with runtime(tmp_path, data) as (rt, store):
            ok_turn = await turn_of(
                store, await submit_one(rt, task("ok", lane="cmd", objective="say hi"))
            )
            hang_turn = await turn_of(
                store,
                await submit_one(
                    rt,
                    task(
                        "hang",
                        lane="cmd",
                        objective="hang",
                        hang_once=True,
                        marker_dir=str(markers),
                    ),
                ),
            )
            row = await turn_in(store, ok_turn, "completed")
            deliverable = json.loads(row["deliverable"])
            assert deliverable["echo"] == "say hi" and deliverable["attempt"] == 1
            assert deliverable["env_turn"] == ok_turn
            # the agent runs in a work directory the runtime made beside its state directory
            cwd = Path(deliverable["cwd"]).resolve()
            assert cwd.is_relative_to((tmp_path / "state.agents").resolve())
            assert not cwd.is_relative_to((tmp_path / "state").resolve())
            [mission] = store.missions(ok_turn)
            assert mission["state"] == "completed"
            await wait_until(
                lambda: (
                    len(
                        store.rows(
                            "SELECT * FROM mission_events WHERE mission_id = ?", mission["id"]
                        )
                    )
                    >= 3
                ),
                what="the agent's events",
            )
            events = store.rows(
                "SELECT type, data FROM mission_events WHERE mission_id = ? ORDER BY id",
                mission["id"],
            )
            assert [
                json.loads(e["data"]).get("message") for e in events if e["type"] == "progress"
            ] == [
                "read the mission",
                "writing the deliverable",
            ]
            assert {"stream": "stdout", "line": "a plain log line"} in [
                json.loads(e["data"]) for e in events if e["type"] == "log"
            ]

            row = await turn_in(store, hang_turn, "completed", timeout=15)
            first, second = store.missions(hang_turn)
            assert (first["state"], first["number"]) == ("timed_out", 1)
            assert first["error"] == "timed out after 1.5 s"
            assert (second["state"], second["number"]) == ("completed", 2)
            assert json.loads(row["deliverable"])["echo"] == "hang"
            [timed_out] = store.ledger(action="mission.timed_out")
            assert timed_out["subject_id"] == first["id"]
            retry = [e for e in store.ledger(subject=hang_turn) if e["action"] == "turn.queued"]
            assert [e["payload"]["retry_lane"] for e in retry] == ["cmd"]

    run(main())
