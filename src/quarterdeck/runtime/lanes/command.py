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
- ``max_log_line_bytes``: the text kept of each log line (default 8 KiB).

The agent runs in a session (process group) of its own, in its working directory
(:mod:`quarterdeck.runtime.workdirs`, outside the state directory, one per workspace and
session; created 0700, and given to the ``run_as`` user). When :meth:`CommandLane.run` is
cancelled (timeout, take-over, drain), the whole group is stopped: SIGTERM, then SIGKILL after
the grace. When the agent exits, whatever it left running in its group is killed at once. The
agent is reaped, and no reader or action task outlives ``run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any, Final

from pydantic import Field

from quarterdeck.runtime.lanes.base import Adapter, LaneFailure, LaneOptions, MissionContext
from quarterdeck.runtime.lanes.containment import (
    DEFAULT_ENV_ALLOW,
    AgentVariables,
    AllowedVariables,
    RunAs,
    agent_account,
    agent_environment,
    run_as_problem,
)
from quarterdeck.runtime.validation import required, says
from quarterdeck.runtime.workdirs import prepare_workdir

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

    def startup_problems(self) -> list[str]:
        """A ``run_as`` user this process cannot switch to."""
        found = run_as_problem(self.run_as) if self.run_as is not None else None
        return [f"options.run_as: {found}"] if found else []


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
        self._groups: set[int] = set()

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
            # The session's own credential (containment.SESSION_CREDENTIAL_ENV) joins these
            # once the control API issues one.
        }
        identity: dict[str, Any] = {}
        if account is not None:
            identity = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        try:
            process = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=ctx.workdir,
                env=env,
                start_new_session=True,
                **identity,
            )
        except OSError as exc:
            raise LaneFailure(f"cannot start {self.argv[0]!r}: {exc.strerror or exc}") from exc
        self._groups.add(process.pid)
        try:
            return await _Agent(self, ctx, process).run(mission)
        finally:
            self._groups.discard(process.pid)

    async def close(self) -> None:
        """Kill the process group of any agent still running (``run`` normally does)."""
        for group in list(self._groups):
            _signal_group(group, signal.SIGKILL)
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

    async def run(self, mission: bytes) -> dict[str, Any]:
        """Feed the mission, follow the agent until it exits, then judge the outcome."""
        try:
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
                for task in [*self.readers, *self.actions]:
                    task.cancel()

    async def _stop_group(self) -> None:
        """SIGTERM the agent's process group, wait for the agent, then SIGKILL what is left."""
        group = self.process.pid
        if not _signal_group(group, signal.SIGTERM):
            return
        delay = _POLL_MIN_S
        deadline = asyncio.get_running_loop().time() + self.lane.kill_grace_s
        while self.process.returncode is None and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, _POLL_MAX_S)
        _signal_group(group, signal.SIGKILL)
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


async def _discard(stream: asyncio.StreamReader) -> None:
    while await stream.read(_CHUNK):
        pass


ADAPTER = Adapter("command", CommandOptions, CommandLane)
