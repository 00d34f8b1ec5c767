"""The ``command`` lane: an agent run as a subprocess that speaks JSON lines.

The protocol is specified in ``docs/specs/lane-protocol.md``. In short: the lane writes one
``mission`` line to the agent's stdin and keeps stdin open; each stdout line that is a JSON
object whose ``type`` is ``progress``, ``action``, ``deliverable`` or ``error`` is an event, and
any other stdout or stderr line is log output. Each ``action`` is answered with a ``decision``
line on stdin. Exit code 0 after a deliverable completes the mission; anything else fails it.

Options:

- ``argv``: the command (required, a non-empty list of strings);
- ``env``: the agent's own environment variables (a table of strings);
- ``env_allow``: the daemon's variables the agent gets (default
  :data:`~quarterdeck.runtime.lanes.containment.DEFAULT_ENV_ALLOW`; nothing else is inherited);
- ``run_as``: the OS user the agent runs as (``{workspace}`` in it stands for the mission's
  workspace); the daemon must run as root to name another user than its own;
- ``kill_grace_s``: how long the agent has between SIGTERM and SIGKILL (default 2);
- ``max_line_bytes``: the longest line read whole (default 1 MiB); longer lines are cut, so a
  stdout line that long is never an event;
- ``max_log_lines``: log lines emitted per mission (default 500); the rest are counted and
  reported in one summary when the mission ends;
- ``max_log_line_bytes``: the text kept of each log line (default 8 KiB);
- ``cgroup``: where each agent gets a cgroup v2 of its own: ``"auto"`` (default: under the
  daemon's own cgroup), ``"off"``, or the absolute path of a cgroup v2 directory the daemon may
  create cgroups in.

The agent runs in a session (process group) of its own, in its working directory
(:mod:`quarterdeck.runtime.workdirs`, outside the state directory, one per workspace and
session; created 0700, and given to the ``run_as`` user), and in a cgroup of its own where the
machine allows it (otherwise the lane logs a warning once and relies on the process group). It
starts as the launcher (:mod:`.launcher`), which the kernel kills when the daemon dies
(``PR_SET_PDEATHSIG``) and which runs the agent only once its processes are recorded
(:class:`~quarterdeck.runtime.lanes.containment.AgentRegistry`) and contained. When
:meth:`CommandLane.run` is cancelled (timeout, take-over, drain), the whole group and cgroup are
stopped: SIGTERM, then SIGKILL after the grace. When the agent exits, whatever it left running in
its group or cgroup is killed at once (a ``setsid`` grandchild leaves the group, not the cgroup).
The agent is reaped, its cgroup removed and its record forgotten, and no reader or action task
outlives ``run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Final

from pydantic import Field

from quarterdeck.runtime.lanes import launcher
from quarterdeck.runtime.lanes.base import Adapter, LaneFailure, LaneOptions, MissionContext
from quarterdeck.runtime.lanes.containment import (
    CGROUP_AUTO,
    DEFAULT_ENV_ALLOW,
    AgentVariables,
    AllowedVariables,
    CgroupSetting,
    RunAs,
    SpawnedAgent,
    agent_account,
    agent_environment,
    run_as_problem,
)
from quarterdeck.runtime.processes import AgentCgroup, find_cgroup_root, start_ticks
from quarterdeck.runtime.validation import required, says
from quarterdeck.runtime.workdirs import prepare_workdir

log = logging.getLogger("quarterdeck.runtime.lanes")

DEFAULT_KILL_GRACE_S: Final = 2.0
DEFAULT_MAX_LINE_BYTES: Final = 1_048_576
DEFAULT_MAX_LOG_LINES: Final = 500
DEFAULT_MAX_LOG_LINE_BYTES: Final = 8_192
MAX_PENDING_ACTIONS: Final = 16
"""Actions awaiting a decision at once; past this, stdout is not read until one is decided."""

_CHUNK: Final = 65_536
_POLL_MIN_S: Final = 0.005
_POLL_MAX_S: Final = 0.1
_DRAIN_S: Final = 1.0
_REASON_CHARS: Final = 500
_EVENT_TYPES: Final = frozenset({"progress", "action", "deliverable", "error"})
_LAUNCHER: Final = Path(launcher.__file__).read_text(encoding="utf-8")
"""The launcher's source, run with ``python -I -S -c``: no file to read as the agent's user."""

LineHandler = Callable[[bytes, int], Awaitable[None]]
"""``handle(line, size)``: one line without its newline, cut to the limit; ``size`` is its
length before the cut."""


class CommandOptions(LaneOptions):
    """The options listed in the module's docstring. The limits are numbers (a fraction is
    cut off), as they have always been read."""

    argv: Annotated[
        list[str], Field(min_length=1), says("a non-empty list of strings is required")
    ] = required()
    env: AgentVariables = Field(default_factory=dict)
    env_allow: AllowedVariables = Field(default_factory=lambda: list(DEFAULT_ENV_ALLOW))
    run_as: RunAs | None = None
    kill_grace_s: Annotated[float, Field(ge=0)] = DEFAULT_KILL_GRACE_S
    max_line_bytes: Annotated[float, Field(ge=1)] = DEFAULT_MAX_LINE_BYTES
    max_log_lines: Annotated[float, Field(ge=0)] = DEFAULT_MAX_LOG_LINES
    max_log_line_bytes: Annotated[float, Field(ge=1)] = DEFAULT_MAX_LOG_LINE_BYTES
    cgroup: CgroupSetting = CGROUP_AUTO

    def startup_problems(self) -> list[str]:
        """A ``run_as`` user this process cannot switch to; a ``cgroup`` path it cannot use."""
        problems = []
        if self.run_as is not None and (found := run_as_problem(self.run_as)):
            problems.append(f"options.run_as: {found}")
        if self.cgroup.startswith("/"):
            root, why = find_cgroup_root(self.cgroup)
            if root is None:
                problems.append(f"options.cgroup: {why}")
        return problems


class CommandLane:
    """Runs each mission as a subprocess speaking the lane protocol on stdin and stdout."""

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        self.name = name
        parsed = CommandOptions.parse(name, options)
        self.argv: list[str] = list(parsed.argv)
        self.env: dict[str, str] = dict(parsed.env)
        self.env_allow = tuple(parsed.env_allow)
        self.run_as = parsed.run_as
        if found := parsed.startup_problems():
            raise ValueError(f"lane {name!r}: " + "; ".join(found))
        self.kill_grace_s = parsed.kill_grace_s
        self.max_line_bytes = int(parsed.max_line_bytes)
        self.max_log_lines = int(parsed.max_log_lines)
        self.max_log_line_bytes = int(parsed.max_log_line_bytes)
        self.cgroup_root, why = find_cgroup_root(parsed.cgroup)
        if self.cgroup_root is None and parsed.cgroup == CGROUP_AUTO:
            self._no_cgroup(why)
        self._groups: dict[int, AgentCgroup | None] = {}

    async def run(self, ctx: MissionContext) -> dict[str, Any]:
        """Run the agent for one mission and return its deliverable.

        Raises:
            LaneFailure: the agent cannot start, breaks the protocol, exits with a non-zero
                code, or exits without a deliverable.
        """
        mission = _encode(
            {
                "type": "mission",
                "mission_id": ctx.mission_id,
                "turn_id": ctx.turn_id,
                "attempt": ctx.attempt,
                "objective": ctx.objective,
                "input": ctx.input,
                "budget": ctx.budget,
            }
        )
        try:
            account = agent_account(self.run_as, ctx.workspace)
        except (LookupError, PermissionError) as exc:
            raise LaneFailure(f"run_as: {exc}") from None
        owner = (account.pw_uid, account.pw_gid) if account is not None else None
        try:
            prepare_workdir(ctx.workdir, owner)
        except OSError as exc:
            raise LaneFailure(f"cannot create {ctx.workdir}: {exc.strerror or exc}") from exc
        env = {
            **agent_environment(self.env_allow, self.env, account),
            "QUARTERDECK_MISSION_ID": ctx.mission_id,
            "QUARTERDECK_TURN_ID": ctx.turn_id,
            "QUARTERDECK_ATTEMPT": str(ctx.attempt),
            "QUARTERDECK_WORKSPACE": ctx.workspace,
            **ctx.agent_env,  # the session's credential and the API's address
        }
        user = f"{account.pw_uid}:{account.pw_gid}" if account is not None else ""
        gate_read, gate = os.pipe()
        status, status_write = os.pipe()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-I", "-S", "-c", _LAUNCHER,
                str(gate_read), str(status_write), str(os.getpid()), user, *self.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=ctx.workdir,
                env=env,
                start_new_session=True,
                pass_fds=(gate_read, status_write),
            )  # fmt: skip
        except BaseException as exc:
            os.close(gate)
            os.close(status)
            if isinstance(exc, OSError):
                raise LaneFailure(f"cannot start {self.argv[0]!r}: {exc.strerror or exc}") from exc
            raise
        finally:
            os.close(gate_read)
            os.close(status_write)
        agent = _Agent(self, ctx, process)
        self._groups[process.pid] = None
        if ctx.on_agent is not None:
            ctx.on_agent(process.pid, True)
        record: str | None = None

        async def release() -> None:
            """Contain and record the agent, then let the launcher run it."""
            nonlocal record
            agent.cgroup = self._groups[process.pid] = self._contain(ctx, process.pid)
            if ctx.agents is not None:
                try:
                    record = await ctx.agents.started(
                        SpawnedAgent(
                            ctx.mission_id, ctx.attempt, ctx.workspace, ctx.lane, process.pid,
                            process.pid, process.pid, start_ticks(process.pid) or 0,
                            None if agent.cgroup is None else str(agent.cgroup.path),
                        )
                    )  # fmt: skip
                except (asyncio.CancelledError, LaneFailure):
                    raise
                except Exception as exc:
                    raise LaneFailure(f"cannot record the agent's processes: {exc}") from exc
            with contextlib.suppress(BrokenPipeError):
                os.write(gate, launcher.GO)
            failed = (await _read_to_end(status)).decode("utf-8", "replace")
            if failed:
                raise LaneFailure(f"cannot start {self.argv[0]!r}: {failed}")

        try:
            return await agent.run(mission, release)
        finally:
            os.close(gate)
            os.close(status)
            try:
                if agent.cgroup is not None and not await _remove_cgroup(agent.cgroup):
                    log.warning(
                        "agent cgroup not removed", extra={"cgroup": str(agent.cgroup.path)}
                    )
                if record is not None and ctx.agents is not None:
                    await ctx.agents.reaped(record)
            finally:
                self._groups.pop(process.pid, None)
                if ctx.on_agent is not None:
                    ctx.on_agent(process.pid, False)

    def _contain(self, ctx: MissionContext, pid: int) -> AgentCgroup | None:
        """A cgroup of its own for the agent, or None (warned once) where none can be had."""
        if self.cgroup_root is None:
            return None
        try:
            cgroup = AgentCgroup.create(self.cgroup_root, f"{ctx.mission_id}-{ctx.attempt}")
        except OSError as exc:
            self._no_cgroup(f"cannot create a cgroup in {self.cgroup_root}: {exc}")
            return None
        try:
            cgroup.add(pid)
        except OSError as exc:
            with contextlib.suppress(OSError):
                cgroup.path.rmdir()
            self._no_cgroup(f"cannot move an agent into {cgroup.path}: {exc}")
            return None
        return cgroup

    def _no_cgroup(self, why: str) -> None:
        self.cgroup_root = None
        log.warning(
            "agents contained by their process group only",
            extra={"lane": self.name, "reason": why},
        )

    async def close(self) -> None:
        """Kill the process group and cgroup of any agent still running (``run`` normally
        does)."""
        for group, cgroup in list(self._groups.items()):
            _signal_group(group, signal.SIGKILL)
            if cgroup is not None:
                cgroup.kill()
        self._groups.clear()


class _Agent:
    """One running agent process: its readers, pending actions and outcome."""

    def __init__(
        self, lane: CommandLane, ctx: MissionContext, process: asyncio.subprocess.Process
    ) -> None:
        assert process.stdin and process.stdout and process.stderr
        self.lane = lane
        self.ctx = ctx
        self.process = process
        self.cgroup: AgentCgroup | None = None
        self.stdin = process.stdin
        self.stdout = process.stdout
        self.stderr = process.stderr
        self.readers: list[asyncio.Task[None]] = []
        self.actions: set[asyncio.Task[None]] = set()
        self.slots = asyncio.Semaphore(MAX_PENDING_ACTIONS)
        self.wake = asyncio.Event()
        self.fault: BaseException | None = None
        self.closing = False
        self.deliverable: dict[str, Any] | None = None
        self.last_error: str | None = None
        self.last_stderr: str | None = None
        self.action_count = 0
        self.logged = 0
        self.suppressed = 0
        self.oversized = 0

    async def run(self, mission: bytes, release: Callable[[], Awaitable[None]]) -> dict[str, Any]:
        """Let the agent run (``release``), feed the mission, follow the agent until it exits,
        then judge the outcome."""
        try:
            await release()
            self.stdin.write(mission)
            self.readers = [
                asyncio.create_task(self._read(self.stdout, self._on_stdout)),
                asyncio.create_task(self._read(self.stderr, self._on_stderr)),
            ]
            await self._follow()
        finally:
            try:
                await self._shutdown()
            finally:
                self._summarize()
        if self.fault is not None:
            raise self.fault
        code = self.process.returncode
        assert code is not None
        if code != 0:
            raise LaneFailure(self._reason(_exit_text(code)))
        if self.deliverable is None:
            reason = self._reason("exit code 0 without a deliverable")
            if self.oversized:
                reason += (
                    f" ({self.oversized} stdout line(s) over {self.lane.max_line_bytes} bytes"
                    " were cut and could not be read as events)"
                )
            raise LaneFailure(reason)
        return self.deliverable

    # --- following the process -----------------------------------------------------------------

    async def _follow(self) -> None:
        """Return once the agent process has exited or a reader or action has failed."""
        delay = _POLL_MIN_S
        while self.process.returncode is None and self.fault is None:
            self.wake.clear()
            try:
                async with asyncio.timeout(delay):
                    await self.wake.wait()
                delay = _POLL_MIN_S
            except TimeoutError:
                delay = min(delay * 2, _POLL_MAX_S)

    async def _shutdown(self) -> None:
        """Stop the process group, finish or cancel the readers and actions, reap the agent.

        If this is itself interrupted, the group is killed and the tasks cancelled at once.
        """
        done = False
        try:
            self.closing = True
            for task in self.actions:
                task.cancel()
            await self._stop_group()
            await _settle(self.readers, _DRAIN_S)
            await _settle(list(self.actions), _DRAIN_S)
            # A reader that failed or was cut short left output unread: read both pipes to
            # the end so that their transports close.
            for stream in (self.stdout, self.stderr):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(_discard(stream), _DRAIN_S)
            self.stdin.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), _DRAIN_S)
            done = True
        finally:
            if not done:
                _signal_group(self.process.pid, signal.SIGKILL)
                if self.cgroup is not None:
                    self.cgroup.kill()
                for task in [*self.readers, *self.actions]:
                    task.cancel()

    async def _stop_group(self) -> None:
        """SIGTERM the agent's process group and cgroup, wait for the agent, then SIGKILL what
        is left."""
        group = self.process.pid
        left = _signal_group(group, signal.SIGTERM)
        if self.cgroup is not None:
            self.cgroup.signal(signal.SIGTERM)
            left = left or bool(self.cgroup.pids())
        if not left:
            return
        delay = _POLL_MIN_S
        deadline = asyncio.get_running_loop().time() + self.lane.kill_grace_s
        while self.process.returncode is None and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, _POLL_MAX_S)
        _signal_group(group, signal.SIGKILL)
        if self.cgroup is not None:
            self.cgroup.kill()
        deadline = asyncio.get_running_loop().time() + _DRAIN_S
        while self.process.returncode is None and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(_POLL_MIN_S)

    def _failed(self, exc: BaseException) -> None:
        if self.fault is None:
            self.fault = exc
        self.wake.set()

    # --- reading output ------------------------------------------------------------------------

    async def _read(self, stream: asyncio.StreamReader, handle: LineHandler) -> None:
        """Split ``stream`` into lines cut to ``max_line_bytes`` and hand each to ``handle``."""
        limit = self.lane.max_line_bytes
        line = bytearray()
        size = 0
        try:
            while chunk := await stream.read(_CHUNK):
                start = 0
                while (end := chunk.find(b"\n", start)) >= 0:
                    size += end - start
                    if len(line) < limit:
                        line += chunk[start : min(end, start + limit - len(line))]
                    await handle(bytes(line), size)
                    line.clear()
                    size = 0
                    start = end + 1
                size += len(chunk) - start
                if len(line) < limit:
                    line += chunk[start : start + limit - len(line)]
            if size:
                await handle(bytes(line), size)
        except Exception as exc:
            self._failed(exc)
        finally:
            self.wake.set()

    async def _on_stdout(self, line: bytes, size: int) -> None:
        if size > len(line):
            self.oversized += 1
        elif line[:64].lstrip()[:1] == b"{":
            try:
                message = json.loads(line, parse_constant=_reject_constant)
            except (ValueError, RecursionError):
                message = None
            if isinstance(message, dict) and message.get("type") in _EVENT_TYPES:
                await self._on_event(message)
                return
        self._log("stdout", line, size)

    async def _on_stderr(self, line: bytes, size: int) -> None:
        text = _text(line, _REASON_CHARS).strip()
        if text:
            self.last_stderr = text
        self._log("stderr", line, size)

    def _log(self, stream: str, line: bytes, size: int) -> None:
        if self.logged >= self.lane.max_log_lines:
            self.suppressed += 1
            return
        self.logged += 1
        keep = self.lane.max_log_line_bytes
        data: dict[str, Any] = {"stream": stream, "line": _text(line, keep)}
        if size > keep:
            data["truncated"] = True
            data["bytes"] = size
        self.ctx.emit("log", data)

    def _summarize(self) -> None:
        """Emit one log line counting what the limits held back, if they held anything back."""
        if not (self.suppressed or self.oversized):
            return
        parts = []
        if self.suppressed:
            parts.append(
                f"{self.suppressed} log line(s) not shown"
                f" (limit {self.lane.max_log_lines} per mission)"
            )
        if self.oversized:
            parts.append(
                f"{self.oversized} stdout line(s) over {self.lane.max_line_bytes} bytes were cut"
            )
        self.ctx.emit(
            "log",
            {
                "stream": "lane",
                "line": "; ".join(parts),
                "suppressed": self.suppressed,
                "oversized": self.oversized,
            },
        )

    # --- events --------------------------------------------------------------------------------

    async def _on_event(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        data = {key: value for key, value in message.items() if key != "type"}
        if kind == "progress":
            self.ctx.emit("progress", data)
        elif kind == "error":
            self.ctx.emit("error", data)
            text = data.get("message")
            self.last_error = (text if isinstance(text, str) else json.dumps(data))[:_REASON_CHARS]
        elif kind == "deliverable":
            value = data.get("deliverable")
            self.deliverable = dict(value) if isinstance(value, dict) else data
        else:
            await self._on_action(data)

    async def _on_action(self, data: dict[str, Any]) -> None:
        index = self.action_count
        self.action_count += 1
        action_id = data.get("action_id")
        if not (isinstance(action_id, str) and action_id):
            action_id = f"{self.ctx.mission_id}:{index}"
        tool = data.get("tool")
        if not (isinstance(tool, str) and tool):
            raise LaneFailure(f"protocol error: action {action_id!r} needs a 'tool' string")
        args = data.get("args", {})
        if not isinstance(args, dict):
            raise LaneFailure(f"protocol error: action {action_id!r}: 'args' must be an object")
        await self.slots.acquire()
        if self.closing:
            self.slots.release()
            return
        task = asyncio.create_task(self._decide(action_id, tool, args))
        self.actions.add(task)
        task.add_done_callback(self._action_done)

    async def _decide(self, action_id: str, tool: str, args: dict[str, Any]) -> None:
        decision = await self.ctx.request_action(action_id, tool, args)
        self.stdin.write(_encode(decision.to_message()))
        with contextlib.suppress(ConnectionError):
            await self.stdin.drain()

    def _action_done(self, task: asyncio.Task[None]) -> None:
        self.actions.discard(task)
        self.slots.release()
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._failed(exc)

    def _reason(self, head: str) -> str:
        detail = self.last_error or self.last_stderr
        return f"{head}: {detail}" if detail else head


def _encode(message: Mapping[str, Any]) -> bytes:
    """One JSON line. Mappings nested in the mission (read-only views) are written as objects."""

    def plain(value: object) -> object:
        if isinstance(value, Mapping):
            return dict(value)
        raise TypeError(f"{type(value).__name__} is not JSON")

    try:
        text = json.dumps(message, default=plain, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise LaneFailure(f"cannot encode {message.get('type')} line: {exc}") from exc
    return text.encode() + b"\n"


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _text(line: bytes, limit: int) -> str:
    return line[:limit].decode("utf-8", "replace").rstrip("\r")


def _exit_text(code: int) -> str:
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


def _signal_group(group: int, sig: signal.Signals) -> bool:
    """Send ``sig`` to a process group; False when the group no longer exists."""
    try:
        os.killpg(group, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def _settle(tasks: list[asyncio.Task[None]], timeout: float) -> None:
    """Wait up to ``timeout`` for ``tasks``, then cancel the stragglers and await them."""
    pending = {task for task in tasks if not task.done()}
    if pending:
        _, pending = await asyncio.wait(pending, timeout=timeout)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=timeout)


async def _read_to_end(fd: int) -> bytes:
    """Everything written to the pipe ``fd`` until its last writer closes it."""
    os.set_blocking(fd, False)
    loop = asyncio.get_running_loop()
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(fd, _set_once, ready)
            try:
                await ready
            finally:
                loop.remove_reader(fd)
            continue
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _remove_cgroup(cgroup: AgentCgroup) -> bool:
    """Kill what is left in the agent's cgroup and remove it (False: still there after 1 s)."""
    for _ in range(100):
        if cgroup.remove(wait_s=0):
            return True
        await asyncio.sleep(0.01)
    return False


async def _discard(stream: asyncio.StreamReader) -> None:
    while await stream.read(_CHUNK):
        pass


ADAPTER = Adapter("command", CommandOptions, CommandLane)
