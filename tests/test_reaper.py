"""Agents cannot outlive their lease or the daemon: real daemons killed with SIGKILL, real
agents, real cgroups where the machine has them (src/quarterdeck/runtime/reaper.py,
runtime/processes.py, runtime/lanes/launcher.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.conftest import quarterdeck
from tests.headless import Headless, query, wait_until

from quarterdeck.runtime.lanes.base import Decision, LaneFailure, MissionContext
from quarterdeck.runtime.lanes.command import CommandLane
from quarterdeck.runtime.processes import (
    RecordedAgent,
    find_cgroup_root,
    is_running,
    kill_leftovers,
    start_ticks,
)
from quarterdeck.store.database import DB_FILENAME


def alive(pid: int) -> bool:
    found = Path(f"/proc/{pid}/stat")
    try:
        return found.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def pids(path: Path) -> list[int]:
    return [int(p) for p in path.read_text().split()] if path.exists() else []


@contextlib.contextmanager
def daemon(root: Path, toml: str) -> Iterator[Headless]:
    """``quarterdeck run --headless`` on ``root/state``; SIGKILLed at the end if still up."""
    state_dir = root / "state"
    (root / "quarterdeck.toml").write_text(toml, encoding="utf-8")
    log = root / "runtime.log"
    env = {**os.environ, "QUARTERDECK_STATE_DIR": str(state_dir)}
    command = [sys.executable, "-m", "quarterdeck", "--state-dir", str(state_dir), "run",
               "--headless", "--config", str(root / "quarterdeck.toml")]  # fmt: skip
    with open(log, "ab") as err:
        proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=root,
            start_new_session=True,
        )  # fmt: skip
    runtime = Headless(root, state_dir, proc, log, str(state_dir / DB_FILENAME))
    try:
        wait_until(runtime.started, 60, "the runtime to start", step=0.05)
        yield runtime
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


SIDE_EFFECT_AGENT = """\
echo $$ >> "$PIDS"
( sleep 6; echo side-effect >> "$LOG" ) &
wait
echo '{"type": "deliverable", "deliverable": {"ok": true}}'
"""
"""The side effect happens in a child that no death signal reaches: only the restarted
daemon's kill of the dead daemon's leftovers stops it."""


def test_a_killed_daemons_agent_is_killed_before_its_lease_is_reclaimed(tmp_path: Path) -> None:
    script = tmp_path / "agent.sh"
    script.write_text(SIDE_EFFECT_AGENT, encoding="utf-8")
    side_effects, agent_pids = tmp_path / "side-effects.log", tmp_path / "agent.pids"
    toml = textwrap.dedent(
        f"""\
        default_lane = "agents"
        lease_s = 3
        sweep_interval_s = 0.5
        [lanes.agents]
        adapter = "command"
        concurrency = 1
        timeout_s = 60
        max_attempts = 3
        options = {{ argv = ["sh", "{script}"], env = {{ LOG = "{side_effects}", PIDS = "{agent_pids}" }} }}
        """
    )
    envelope = {"idempotency_key": "once", "workspace": "acme", "kind": "task",
                "payload": {"objective": "touch the world once"}}  # fmt: skip
    with daemon(tmp_path, toml) as first:
        submitted = quarterdeck(
            "submit", "-", state_dir=first.state_dir, stdin=json.dumps(envelope).encode()
        )
        assert submitted.returncode == 0, submitted.stderr.decode()
        wait_until(lambda: pids(agent_pids), 30, "the agent to start")
        recorded = query(first, "SELECT * FROM agent_processes")
        assert [r["pid"] for r in recorded] == pids(agent_pids)
        first.proc.kill()
        first.proc.wait(timeout=10)
        # PR_SET_PDEATHSIG: the agent itself dies with the daemon.
        (agent,) = pids(agent_pids)
        assert wait_until(lambda: not alive(agent), 5, "the agent to die with its daemon")
    with daemon(tmp_path, toml) as second:

        def done() -> str | None:
            rows = query(second, "SELECT state FROM turns")
            return rows[0]["state"] if rows and rows[0]["state"] != "running" else None

        wait_until(lambda: done() in ("completed", "failed"), 40, "the turn to end")
        assert done() == "completed", second.log_tail()
        killed = query(second, "SELECT payload FROM ledger WHERE action = 'mission.agent_killed'")
        time.sleep(7)  # longer than the first agent's child would have slept
        assert side_effects.read_text().splitlines() == ["side-effect"]
        assert len(pids(agent_pids)) == 2
        assert len(killed) == 1, second.log_tail()
        payload = json.loads(killed[0]["payload"])
        assert payload["reason"] == "its node is gone" and payload["killed"]
        assert query(second, "SELECT * FROM agent_processes") == []
        assert "killed what an agent left running" in second.log_tail(100_000)


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def emit(self, kind: str, data: object) -> None:
        self.events.append((kind, data))

    async def request_action(self, action_id: str, tool: str, args: object) -> Decision:
        return Decision(action_id, "approved", {}, None)


def context(tmp_path: Path) -> MissionContext:
    recorder = Recorder()
    return MissionContext(
        mission_id="m-1", turn_id="t-1", workspace="acme", lane="cmd", attempt=1,
        objective="escape", input={}, workdir=tmp_path / "work", emit=recorder.emit,
        request_action=recorder.request_action,
    )  # fmt: skip


ESCAPING_AGENT = """\
setsid sh -c 'echo $$ >> "$PIDS"; sleep 3; echo escaped >> "$LOG"' &
sleep 60
"""


def test_a_setsid_grandchild_dies_at_the_timeout(tmp_path: Path) -> None:
    root, why = find_cgroup_root("auto")
    if root is None:
        pytest.skip(f"no cgroup v2 for agents on this machine: {why}")
    script = tmp_path / "agent.sh"
    script.write_text(ESCAPING_AGENT, encoding="utf-8")
    escaped, grandchildren = tmp_path / "escaped.log", tmp_path / "grandchild.pids"
    lane = CommandLane(
        "cmd",
        {"argv": ["sh", str(script)], "env": {"LOG": str(escaped), "PIDS": str(grandchildren)},
         "kill_grace_s": 0.2},
    )  # fmt: skip
    assert lane.cgroup_root == root

    async def main() -> None:
        task = asyncio.create_task(lane.run(context(tmp_path)))
        for _ in range(500):
            if pids(grandchildren):
                break
            await asyncio.sleep(0.01)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(task, timeout=0.5)
        await lane.close()

    asyncio.run(main())
    (grandchild,) = pids(grandchildren)
    try:
        assert wait_until(lambda: not alive(grandchild), 2, "the setsid grandchild to die")
        time.sleep(3.5)
        assert not escaped.exists()
        assert not [p for p in root.iterdir() if p.name.startswith("qd-agent-m-1-")]
    finally:
        with contextlib.suppress(OSError):
            os.kill(grandchild, signal.SIGKILL)


def test_the_agent_is_not_run_when_it_cannot_be_recorded(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Refusing:
        async def started(self, agent: object) -> str:
            raise RuntimeError("database gone")

        async def reaped(self, record_id: str) -> None:
            raise AssertionError("nothing was recorded")

    ctx = context(tmp_path)
    ctx.agents = Refusing()
    lane = CommandLane("cmd", {"argv": ["sh", "-c", f"touch {marker}"]})
    with pytest.raises(LaneFailure, match="cannot record the agent's processes"):
        asyncio.run(lane.run(ctx))
    time.sleep(0.3)
    assert not marker.exists()


def test_a_recycled_pid_is_not_killed() -> None:
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        started = start_ticks(bystander.pid)
        assert started is not None
        earlier = RecordedAgent(bystander.pid, bystander.pid, bystander.pid, started - 1, None)
        assert kill_leftovers(earlier) == []
        assert is_running(bystander.pid, started)
        same = RecordedAgent(bystander.pid, bystander.pid, bystander.pid, started, None)
        assert kill_leftovers(same) == [bystander.pid]
        assert bystander.wait(timeout=5) == -signal.SIGKILL
    finally:
        bystander.kill()
        bystander.wait()
