"""Each lane at a glance (``store/queries/lanes.py``), on SQLite and PostgreSQL, with a real
runtime: a mission whose agent waits on a person's decision about an action holds its slot, one
whose dispatch waits on a person holds none (and quick work runs beside them), an approval that
expires into ``pause_lane`` pauses the lane with its reason and opens an alert, and the same
overview reaches an embedded console and an attached one (``GET /v1/lanes``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import Store, current_database, run
from tests.test_runtime import (
    person,
    stop_once,
    submit_one,
    task,
    turn_in,
    turn_of,
    wait_until,
)
from tests.test_supervision import acting, approval_of, policy

from quarterdeck.client.api import ControlClient
from quarterdeck.client.api_console import ApiConsole
from quarterdeck.client.console import EmbeddedConsole
from quarterdeck.domain.authority import ADMIN
from quarterdeck.domain.commands import LaneResume
from quarterdeck.runtime.api_serve import ControlOptions
from quarterdeck.runtime.config import parse_config
from quarterdeck.runtime.runtime import Runtime
from quarterdeck.store.database import open_database
from quarterdeck.store.queries.lanes import LaneOverview, lane_overview

pytestmark = pytest.mark.usefixtures("database")  # every test runs on SQLite and PostgreSQL
USER = pwd.getpwuid(os.getuid()).pw_name


def lanes_config(state: Path) -> dict[str, Any]:
    """``sim`` (two slots, falling back to ``fb``) and ``fb``; the OS user and ``t`` admin."""
    return {
        "roster": {USER: [ADMIN], "t": [ADMIN]},
        "lease_s": 2,
        "sweep_interval_s": 0.3,
        "drain_grace_s": 0.5,
        "lanes": {
            "sim": {
                "adapter": "sim", "fallback": "fb", "concurrency": 2, "max_attempts": 1,
                "options": {"seed": 1, "action_rate": 0.0},
            },
            "fb": {"adapter": "sim", "max_attempts": 1, "options": {"seed": 2, "action_rate": 0.0}},
        },
    }  # fmt: skip


@contextlib.asynccontextmanager
async def served(tmp_path: Path) -> AsyncIterator[tuple[Runtime, Store]]:
    """A runtime on the database under test, serving its control API on its state dir."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    config = parse_config(lanes_config(state))
    url = current_database(tmp_path)
    db = await open_database(url)
    rt = Runtime(
        db, config, state_dir=state, policy=policy(),
        control=ControlOptions.for_state_dir(state, config),
    )  # fmt: skip
    await rt.start()
    try:
        yield rt, Store(url)
    finally:
        await stop_once(rt)
        await db.dispose()


async def paused_lane(rt: Runtime, concurrency: dict[str, int]) -> LaneOverview:
    """Wait (10 s at most) until ``sim`` is paused; return its overview."""
    for _ in range(500):
        lane = by_lane(await lane_overview(rt.db, concurrency))["sim"]
        if lane.state == "paused":
            return lane
        await asyncio.sleep(0.02)
    raise AssertionError(f"the lane was never paused: {lane}")


def by_lane(overview: tuple[LaneOverview, ...]) -> dict[str, LaneOverview]:
    return {lane.lane: lane for lane in overview}


def test_slots_held_by_action_waits_not_by_dispatch_waits_and_an_expiry_pause(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with served(tmp_path) as (rt, store):
            concurrency = {"sim": 2, "fb": 1}
            # An agent asks to deploy: its mission waits on a person, holding its slot.
            deploy = await turn_of(
                store, await submit_one(rt, acting("deploy", {"tool": "deploy", "args": {}}))
            )
            await turn_in(store, deploy, "awaiting_approval")
            # A risky dispatch waits on a person before it starts: it holds no slot.
            risky = await turn_of(store, await submit_one(rt, task("risky", risky=True)))
            await turn_in(store, risky, "awaiting_approval")
            # So quick work still runs in the one free slot, one after another.
            quick = [
                await turn_of(store, await submit_one(rt, task(f"q{i}", latency_ms=20)))
                for i in range(4)
            ]
            for turn in quick:
                await turn_in(store, turn, "completed")
            failing = await turn_of(store, await submit_one(rt, task("f", outcome="fail")))
            # It fails on sim, then on its fallback, and waits as a dead letter.
            await wait_until(lambda: store.turn(failing)["dead_letter"] == "held")

            sim = by_lane(await lane_overview(rt.db, concurrency))["sim"]
            assert (sim.state, sim.paused_by, sim.paused_reason) == ("running", None, None)
            assert (sim.slots, sim.in_use, sim.running, sim.awaiting_person) == (2, 1, 0, 1)
            assert sim.free == 1
            assert (sim.queued, sim.awaiting_dispatch, sim.oldest_queued_at) == (0, 1, None)
            assert sim.finished == 5 and sim.failure_rate == pytest.approx(1 / 5)
            assert sim.started == 7 and sim.fallback_rate == pytest.approx(1 / 7)
            assert not sim.forced_fallback and not sim.shadow

            # An approval that expires unanswered into pause_lane: the lane says who and why,
            # and an alert is open about it.
            page = await turn_of(
                store, await submit_one(rt, acting("page", {"tool": "page_everyone"}))
            )
            approval = await approval_of(store, page)

            sim = await paused_lane(rt, concurrency)
            assert sim.paused_by is not None and sim.paused_by.endswith(":ladder")
            assert (
                sim.paused_reason == f"approval {approval['id']} (page_everyone) expired unanswered"
            )
            alert = store.one("SELECT * FROM alerts WHERE alert_type = 'lane_paused'")
            assert alert is not None and alert["subject_id"] == "sim"
            assert alert["state"] == "open" and approval["id"] in alert["message"]

            waiting = await turn_of(store, await submit_one(rt, task("later")))
            lane = by_lane(await lane_overview(rt.db, concurrency))["sim"]
            assert lane.queued == 1 and lane.oldest_queued_at is not None
            assert lane.oldest_wait_s is not None and lane.oldest_wait_s >= 0
            assert store.turn(waiting)["state"] == "queued"

            # The embedded console and an attached one read the same lanes.
            embedded = await EmbeddedConsole(rt).lanes()
            assert [lane.lane for lane in embedded] == ["sim", "fb"]
            assert by_lane(embedded)["sim"].queued == 1
            assert rt.control is not None
            attached = ApiConsole(
                ControlClient(rt.control.socket_path), person(USER), target="t",
                lanes=("sim", "fb"),
            )  # fmt: skip
            try:
                remote = await attached.lanes()
            finally:
                await attached.close()
            assert [lane.lane for lane in remote] == ["sim", "fb"]
            local, there = by_lane(embedded)["sim"], by_lane(remote)["sim"]
            for name in LaneOverview.__slots__:
                if name != "oldest_wait_s":
                    assert getattr(there, name) == getattr(local, name), name

            # Resuming the lane resolves the expiry's alert: the condition has cleared.
            resumed = await rt.command("acme", LaneResume(lane="sim"), person(USER))
            assert resumed["ok"] is True, resumed
            alert = store.one("SELECT * FROM alerts WHERE alert_type = 'lane_paused'")
            assert alert is not None and alert["state"] == "resolved"
            [entry] = [e for e in store.ledger() if e["action"] == "alert.resolved"]
            assert entry["subject_id"] == alert["id"] and entry["actor"] == USER
            assert entry["payload"]["auto"] is True
            assert entry["payload"]["note"] == f"lane.resume by {USER}"

    run(main())
