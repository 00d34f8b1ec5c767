"""The ``command`` lane against real agent scripts (src/quarterdeck/runtime/lanes/command.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import textwrap
import time
import tracemalloc
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from quarterdeck.runtime.lanes.base import Decision, LaneFailure, MissionContext
from quarterdeck.runtime.lanes.command import CommandLane

PRELUDE = """\
import json, os, sys, time

def send(**message):
    sys.stdout.write(json.dumps(message) + "\\n")
    sys.stdout.flush()

mission = json.loads(sys.stdin.readline())
"""


class Recorder:
    """A mission context's callbacks: events recorded, actions decided by ``decide``."""

    def __init__(self, decide: Any = None) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.requests: list[tuple[str, str, dict[str, Any]]] = []
        self.decide = decide

    def emit(self, kind: str, data: Mapping[str, Any]) -> None:
        self.events.append((kind, dict(data)))

    async def request_action(self, action_id: str, tool: str, args: Mapping[str, Any]) -> Decision:
        self.requests.append((action_id, tool, dict(args)))
        if self.decide is not None:
            return self.decide(action_id, tool, dict(args))
        return Decision(action_id, "approved", dict(args), "allowed")

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [data for k, data in self.events if k == kind]


def agent(tmp_path: Path, body: str, name: str = "agent.py") -> list[str]:
    """Write an agent script (the prelude reads the mission line) and return its argv."""
    path = tmp_path / name
    path.write_text(PRELUDE + textwrap.dedent(body), encoding="utf-8")
    return [sys.executable, str(path)]


def context(tmp_path: Path, recorder: Recorder, **overrides: Any) -> MissionContext:
    values: dict[str, Any] = {
        "mission_id": "m-1",
        "turn_id": "t-1",
        "workspace": "acme",
        "lane": "cmd",
        "attempt": 2,
        "objective": "count the widgets",
        "input": {"n": 3, "nested": {"k": [1, 2]}},
        "workdir": tmp_path / "work" / "acme" / "t-1",
        "emit": recorder.emit,
        "request_action": recorder.request_action,
        "budget": {"usd": 1.5},
    }
    values.update(overrides)
    return MissionContext(**values)


def assert_no_tasks_left() -> None:
    leftover = asyncio.all_tasks() - {asyncio.current_task()}
    assert not leftover, f"tasks left behind: {leftover}"


def run_lane(lane: CommandLane, ctx: MissionContext) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        try:
            return await lane.run(ctx)
        finally:
            await lane.close()
            assert_no_tasks_left()

    return asyncio.run(main())


def gone(pid: int, within_s: float = 5.0) -> bool:
    """True once ``pid`` no longer runs. A zombie counts as gone: an orphan waits there until
    its adoptive parent (init, or whatever reaps orphans in this container) collects it."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return True
        time.sleep(0.02)
    return False


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def kill_survivors(*pids: int | None) -> None:
    """Before failing, SIGKILL the processes a test saw survive, so none outlives the test."""
    for pid in pids:
        if pid is not None:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def test_completes_with_progress_logs_and_deliverable(tmp_path: Path) -> None:
    argv = agent(
        tmp_path,
        """
        send(type="progress", message="reading", step=1)
        print("plain text is a log line", flush=True)
        print('{"no_type": true}', flush=True)
        print('[1, 2]', flush=True)
        print('{"type": "unknown-kind"}', flush=True)
        print("{not json", flush=True)
        print("a warning", file=sys.stderr, flush=True)
        send(type="progress", message="writing", step=2)
        env = {k: v for k, v in os.environ.items() if k.startswith(("QUARTERDECK_", "EXTRA"))}
        send(type="deliverable", deliverable={"mission": mission, "env": env, "cwd": os.getcwd()})
        """,
    )
    recorder = Recorder()
    ctx = context(tmp_path, recorder)
    lane = CommandLane("cmd", {"argv": argv, "env": {"EXTRA_SETTING": "on"}})
    result = run_lane(lane, ctx)
    assert result["mission"] == {
        "type": "mission",
        "mission_id": "m-1",
        "turn_id": "t-1",
        "attempt": 2,
        "objective": "count the widgets",
        "input": {"n": 3, "nested": {"k": [1, 2]}},
        "budget": {"usd": 1.5},
    }
    assert result["env"] == {
        "QUARTERDECK_MISSION_ID": "m-1",
        "QUARTERDECK_TURN_ID": "t-1",
        "QUARTERDECK_ATTEMPT": "2",
        "QUARTERDECK_WORKSPACE": "acme",
        "EXTRA_SETTING": "on",
    }
    assert Path(result["cwd"]) == ctx.workdir.resolve()
    assert recorder.of("progress") == [
        {"message": "reading", "step": 1},
        {"message": "writing", "step": 2},
    ]
    logs = recorder.of("log")
    assert [(e["stream"], e["line"]) for e in logs if e["stream"] == "stdout"] == [
        ("stdout", "plain text is a log line"),
        ("stdout", '{"no_type": true}'),
        ("stdout", "[1, 2]"),
        ("stdout", '{"type": "unknown-kind"}'),
        ("stdout", "{not json"),
    ]
    assert {"stream": "stderr", "line": "a warning"} in logs
    assert recorder.of("error") == []


def test_deliverable_without_a_deliverable_field_is_the_object(tmp_path: Path) -> None:
    argv = agent(tmp_path, 'send(type="deliverable", summary="ok", count=2)\n')
    assert run_lane(CommandLane("cmd", {"argv": argv}), context(tmp_path, Recorder())) == {
        "summary": "ok",
        "count": 2,
    }


ACTION_AGENT = """
send(type="action", tool="deploy", args={"env": "prod", "replicas": 3})
first = json.loads(sys.stdin.readline())
send(type="progress", message="got the first decision")
send(type="action", action_id="custom-7", tool="send_email", args={"to": "ops"})
second = json.loads(sys.stdin.readline())
send(type="deliverable", deliverable={"decisions": [first, second]})
"""


@pytest.mark.parametrize("outcome", ["approved", "edited", "rejected"])
def test_action_receives_the_decision(tmp_path: Path, outcome: str) -> None:
    def decide(action_id: str, tool: str, args: dict[str, Any]) -> Decision:
        if outcome == "edited":
            return Decision(action_id, "edited", {**args, "env": "staging"}, "prod is frozen")
        if outcome == "rejected":
            return Decision(action_id, "rejected", {}, "no")
        return Decision(action_id, "approved", args, None)

    recorder = Recorder(decide)
    result = run_lane(
        CommandLane("cmd", {"argv": agent(tmp_path, ACTION_AGENT)}), context(tmp_path, recorder)
    )
    assert recorder.requests == [
        ("m-1:0", "deploy", {"env": "prod", "replicas": 3}),
        ("custom-7", "send_email", {"to": "ops"}),
    ]
    first, second = result["decisions"]
    assert first["type"] == "decision"
    assert first["action_id"] == "m-1:0"
    assert first["outcome"] == outcome
    assert second["action_id"] == "custom-7"
    if outcome == "edited":
        assert first["args"] == {"env": "staging", "replicas": 3}
        assert first["reason"] == "prod is frozen"
    elif outcome == "approved":
        assert first["args"] == {"env": "prod", "replicas": 3}
        assert first["reason"] is None
    else:
        assert first["args"] == {}
    assert recorder.of("progress") == [{"message": "got the first decision"}]


def test_output_keeps_flowing_while_an_action_waits(tmp_path: Path) -> None:
    argv = agent(
        tmp_path,
        """
        send(type="action", action_id="a", tool="deploy", args={})
        for i in range(3):
            send(type="progress", step=i)
        decision = json.loads(sys.stdin.readline())
        send(type="deliverable", deliverable={"outcome": decision["outcome"]})
        """,
    )
    recorder = Recorder()
    seen_before_decision: list[int] = []

    async def slow_gate(action_id: str, tool: str, args: Mapping[str, Any]) -> Decision:
        for _ in range(200):
            if len(recorder.of("progress")) == 3:
                break
            await asyncio.sleep(0.01)
        seen_before_decision.append(len(recorder.of("progress")))
        return Decision(action_id, "approved", dict(args))

    ctx = context(tmp_path, recorder, request_action=slow_gate)
    assert run_lane(CommandLane("cmd", {"argv": argv}), ctx) == {"outcome": "approved"}
    assert seen_before_decision == [3]


def test_action_without_a_tool_is_a_protocol_error(tmp_path: Path) -> None:
    argv = agent(
        tmp_path,
        """
        send(type="action", args={})
        sys.stdin.readline()
        """,
    )
    started = time.monotonic()
    with pytest.raises(LaneFailure, match="protocol error: action 'm-1:0' needs a 'tool'"):
        run_lane(CommandLane("cmd", {"argv": argv}), context(tmp_path, Recorder()))
    assert time.monotonic() - started < 5


def hang_body(ignore_term: bool) -> str:
    trap = "signal.signal(signal.SIGTERM, signal.SIG_IGN); " if ignore_term else ""
    return f"""
    import signal, subprocess
    {trap}
    child = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; {trap}time.sleep(600)"]
    )
    with open("pids.tmp", "w") as f:
        f.write(f"{{os.getpid()}} {{child.pid}}")
    os.replace("pids.tmp", "pids")
    send(type="progress", message="hanging")
    while True:
        time.sleep(60)
    """


@pytest.mark.parametrize("ignore_term", [False, True], ids=["sigterm", "sigkill"])
def test_timeout_kills_the_whole_process_group(tmp_path: Path, ignore_term: bool) -> None:
    recorder = Recorder()
    ctx = context(tmp_path, recorder)
    lane = CommandLane(
        "cmd", {"argv": agent(tmp_path, hang_body(ignore_term)), "kill_grace_s": 0.5}
    )
    pid_file = ctx.workdir / "pids"

    async def main() -> float:
        task = asyncio.create_task(lane.run(ctx))
        for _ in range(1000):
            if pid_file.exists() or task.done():
                break
            await asyncio.sleep(0.01)
        assert pid_file.exists(), "the agent never started its child"
        started = asyncio.get_running_loop().time()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(task, timeout=0.1)
        assert task.cancelled()
        elapsed = asyncio.get_running_loop().time() - started
        assert_no_tasks_left()
        await lane.close()
        return elapsed

    elapsed = asyncio.run(main())
    agent_pid, child_pid = (int(p) for p in pid_file.read_text().split())
    # The agent is our child: it must be reaped, not merely dead.
    agent_reaped = not alive(agent_pid)
    child_gone = gone(child_pid)
    kill_survivors(agent_pid if not agent_reaped else None, child_pid if not child_gone else None)
    assert agent_reaped, f"agent {agent_pid} still exists"
    assert child_gone, f"child {child_pid} survived the cancellation"
    assert recorder.of("progress") == [{"message": "hanging"}]
    if ignore_term:
        assert 0.5 <= elapsed < 4
    else:
        assert elapsed < 2


def test_cancel_raises_cancelled_error(tmp_path: Path) -> None:
    argv = agent(tmp_path, "send(type='progress', message='up')\ntime.sleep(600)\n")
    recorder = Recorder()
    lane = CommandLane("cmd", {"argv": argv})

    async def main() -> None:
        task = asyncio.create_task(lane.run(context(tmp_path, recorder)))
        for _ in range(1000):
            if recorder.of("progress"):
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert_no_tasks_left()

    asyncio.run(main())
    assert recorder.of("progress") == [{"message": "up"}]


def test_stray_background_process_does_not_hold_the_mission(tmp_path: Path) -> None:
    argv = agent(
        tmp_path,
        """
        import subprocess
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        open("child.pid", "w").write(str(child.pid))
        send(type="deliverable", deliverable={"ok": True})
        """,
    )
    ctx = context(tmp_path, Recorder())
    started = time.monotonic()
    assert run_lane(CommandLane("cmd", {"argv": argv}), ctx) == {"ok": True}
    assert time.monotonic() - started < 5
    child_pid = int((ctx.workdir / "child.pid").read_text())
    child_gone = gone(child_pid)
    kill_survivors(None if child_gone else child_pid)
    assert child_gone, f"child {child_pid} outlived the agent"


FLOOD = """
sys.stdout.write("x" * 5_000_000 + "\\n")
sys.stdout.write('{"type": "deliverable", "deliverable": {"huge": "' + "y" * 2_000_000 + '"}}\\n')
block = "".join(f"line {i}\\n" for i in range(1000))
for _ in range(200):
    sys.stdout.write(block)
for i in range(2000):
    sys.stderr.write(f"err {i}\\n")
send(type="deliverable", deliverable={"ok": True})
"""


def test_flood_of_output_is_bounded_and_summarised(tmp_path: Path) -> None:
    recorder = Recorder()
    lane = CommandLane("cmd", {"argv": agent(tmp_path, FLOOD)})
    tracemalloc.start()
    try:
        started = time.monotonic()
        result = run_lane(lane, context(tmp_path, recorder))
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result == {"ok": True}
    assert peak < 8 * 1024 * 1024, f"peak {peak} bytes"
    assert elapsed < 20
    logs = recorder.of("log")
    first = logs[0]
    assert first["stream"] == "stdout"
    assert first["truncated"] is True
    assert first["bytes"] == 5_000_000
    assert first["line"] == "x" * 8192
    assert logs[1]["bytes"] > 2_000_000  # an event line over the limit is only a log line
    shown = [e for e in logs if e["stream"] in ("stdout", "stderr")]
    assert len(shown) == 500
    summary = logs[-1]
    assert summary["stream"] == "lane"
    lines = 2 + 200_000 + 2000
    assert summary["suppressed"] == lines - 500
    assert summary["oversized"] == 2
    assert "not shown" in summary["line"]
    assert len(logs) == 501


def test_non_zero_exit_fails_with_the_last_stderr_line(tmp_path: Path) -> None:
    argv = agent(
        tmp_path,
        """
        print("starting", file=sys.stderr)
        print("database unreachable", file=sys.stderr)
        sys.exit(3)
        """,
    )
    with pytest.raises(LaneFailure) as failure:
        run_lane(CommandLane("cmd", {"argv": argv}), context(tmp_path, Recorder()))
    assert failure.value.reason == "exit code 3: database unreachable"


def test_non_zero_exit_prefers_the_last_error_event(tmp_path: Path) -> None:
    argv = agent(
        tmp_path,
        """
        send(type="error", message="quota exceeded", code="quota")
        print("traceback noise", file=sys.stderr)
        send(type="deliverable", deliverable={"partial": True})
        sys.exit(4)
        """,
    )
    recorder = Recorder()
    with pytest.raises(LaneFailure) as failure:
        run_lane(CommandLane("cmd", {"argv": argv}), context(tmp_path, recorder))
    assert failure.value.reason == "exit code 4: quota exceeded"
    assert recorder.of("error") == [{"message": "quota exceeded", "code": "quota"}]


def test_exit_zero_without_a_deliverable_fails(tmp_path: Path) -> None:
    argv = agent(tmp_path, 'send(type="progress", message="done?")\n')
    with pytest.raises(LaneFailure) as failure:
        run_lane(CommandLane("cmd", {"argv": argv}), context(tmp_path, Recorder()))
    assert failure.value.reason == "exit code 0 without a deliverable"


def test_killed_by_a_signal(tmp_path: Path) -> None:
    argv = agent(tmp_path, "import signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    with pytest.raises(LaneFailure) as failure:
        run_lane(CommandLane("cmd", {"argv": argv}), context(tmp_path, Recorder()))
    assert failure.value.reason == "killed by SIGKILL"


def test_agent_that_ignores_stdin_and_exits_at_once(tmp_path: Path) -> None:
    # The mission line (bigger than a pipe buffer) is never read: no hang, no crash.
    script = tmp_path / "quick.py"
    script.write_text('print(\'{"type": "deliverable", "deliverable": {"quick": 1}}\')\n')
    ctx = context(tmp_path, Recorder(), input={"blob": "z" * 300_000})
    assert run_lane(CommandLane("cmd", {"argv": [sys.executable, str(script)]}), ctx) == {
        "quick": 1
    }


def test_missing_executable(tmp_path: Path) -> None:
    lane = CommandLane("cmd", {"argv": [str(tmp_path / "no-such-agent")]})
    with pytest.raises(LaneFailure, match="cannot start"):
        run_lane(lane, context(tmp_path, Recorder()))


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"argv": []},
        {"argv": "agent"},
        {"argv": ["a"], "env": {"X": 1}},
        {"argv": ["a"], "kill_grace_s": -1},
        {"argv": ["a"], "env_allow": "PATH"},
        {"argv": ["a"], "env_allow": ["A=B"]},
        {"argv": ["a"], "env": {"QUARTERDECK_SESSION_TOKEN": "forged"}},
        {"argv": ["a"], "run_as": "{user}"},
        {"argv": ["a"], "run_as": "qd-nobody-at-all"},
    ],
)
def test_bad_options(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="options"):
        CommandLane("cmd", options)
