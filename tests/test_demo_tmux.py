"""The real ``quarterdeck demo`` in a real terminal (tmux, 120x40), left alone: its header names
its state directory, turns keep completing, no lane stalls with nothing running while its queue
grows, an approval that expires into a lane pause opens an alert and a toast, and quitting
prints where the state is.

It runs at ``--speed 10`` for 75 s (12.5 simulated minutes: the deploy approvals' deadlines and
ladder run out meanwhile). ``QUARTERDECK_DEMO_SOAK_S`` and ``QUARTERDECK_DEMO_SPEED`` change
both, e.g. 1800 and 1 for half an hour in real time; the figures are printed (``-s``).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from quarterdeck.store.database import open_database, sqlite_url
from quarterdeck.store.queries import status
from quarterdeck.store.queries.lanes import lane_overview

SRC = Path(__file__).resolve().parent.parent / "src"
SOAK_S = float(os.environ.get("QUARTERDECK_DEMO_SOAK_S", "75"))
SPEED = float(os.environ.get("QUARTERDECK_DEMO_SPEED", "10"))
SAMPLE_S = 5.0


class Tmux:
    """A tmux server of this test's own (its own socket), one session on it."""

    def __init__(self, name: str) -> None:
        self.socket = name
        self.session = name

    def run(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=20
        )
        return done.stdout

    def start(self, command: str) -> None:
        self.run("new-session", "-d", "-s", self.session, "-x", "120", "-y", "40", command)

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", self.session)

    def kill(self) -> None:
        self.run("kill-server")


async def sample(state: Path) -> dict[str, Any]:
    """What the demo's store says now: completed turns and each lane's overview."""
    db = await open_database(sqlite_url(state))
    try:
        counts = await status(db, None)
        lanes = await lane_overview(db)
    finally:
        await db.dispose()
    return {"completed": counts["turns"].get("completed", 0), "lanes": lanes}


def flat(screen: str) -> str:
    """The screen's text with every run of blanks and line ends as one space."""
    return " ".join(screen.split())


def test_the_demo_left_alone_keeps_moving() -> None:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed: the unattended demo test needs a real terminal")
    scratch = Path(tempfile.mkdtemp(prefix="qdd", dir="/tmp"))  # short: the header shows it
    state = scratch / "demo"
    tmux = Tmux(f"qd-demo-test-{os.getpid()}")
    command = (
        f"env PYTHONPATH={SRC} {sys.executable} -m quarterdeck demo --state-dir {state} "
        f"--speed {SPEED:g}; sleep 60"
    )
    tmux.start(command)
    try:
        deadline = time.monotonic() + 60
        while f"state in {state}" not in flat(tmux.screen()):
            assert time.monotonic() < deadline, f"the demo did not draw:\n{tmux.screen()}"
            time.sleep(0.5)

        samples: list[dict[str, Any]] = []
        toasted = False
        started = time.monotonic()
        next_sample = started
        while time.monotonic() - started < SOAK_S:
            screen = tmux.screen()
            toasted = toasted or "alert: lane_paused" in screen
            if time.monotonic() >= next_sample:
                samples.append(asyncio.run(sample(state)))
                next_sample += SAMPLE_S
            time.sleep(1)
        final = asyncio.run(sample(state))
        samples.append(final)

        completed = [s["completed"] for s in samples]
        minutes = SOAK_S * SPEED / 60
        rate = (completed[-1] - completed[0]) / minutes
        queues = max(lane.queued for s in samples for lane in s["lanes"])
        print(
            f"\ndemo left alone {SOAK_S:g} s at speed {SPEED:g} ({minutes:.1f} simulated min): "
            f"completed turns {completed}; {rate:.1f} a simulated minute; max queue {queues}"
        )
        window = max(1, round(15 / SAMPLE_S))
        for earlier, later in zip(completed, completed[window:], strict=False):
            assert later > earlier, f"no turn completed for 15 s: {completed}"
        for before, after in itertools.pairwise(samples):
            previous = {lane.lane: lane for lane in before["lanes"]}
            for lane in after["lanes"]:
                was = previous.get(lane.lane)
                stalled = (
                    was is not None and lane.state == "running" and was.running == 0
                    and lane.running == 0 and was.queued > 0 and lane.queued > was.queued
                )  # fmt: skip
                assert not stalled, f"{lane.lane} runs nothing while its queue grows: {lane}"
        if SOAK_S * SPEED >= 600:
            # The deploy approvals ran out their ladder: the lane is paused, with an alert.
            deploys = next(lane for lane in final["lanes"] if lane.lane == "deploys")
            assert deploys.state == "paused" and "expired" in (deploys.paused_reason or "")
            assert toasted, "no toast for the alert of the paused lane"

        tmux.run("send-keys", "-t", tmux.session, "C-q")
        deadline = time.monotonic() + 30
        while "the demo's state is in" not in flat(tmux.screen()):
            assert time.monotonic() < deadline, f"the demo did not quit:\n{tmux.screen()}"
            time.sleep(0.5)
        assert f"demo state directory: {state}" in flat(tmux.screen())  # printed on start
    finally:
        tmux.kill()
        shutil.rmtree(scratch, ignore_errors=True)
