"""``quarterdeck hook claude-code|codex``: the command hook the agent CLIs run once per event.

It reads the hook's JSON on stdin, asks the running daemon (``POST /v1/hooks/<agent>`` over
its Unix socket, or a URL) with the agent credential that ``quarterdeck integrate`` wrote
(a file of mode 0600 named by ``--credential``), and prints the CLI's answer. A tool call that
waits for a person is asked about again until ``--deadline``; then it is denied with "still
waiting for a supervisor: ask again", before the CLI's own timeout could decide.

Fail closed: the CLIs let a tool run when a hook crashes, exits 1 or times out, so every
error here (no daemon, a refusal, bad input, a bad credential file, an internal error, the
hard deadline) exits 2 with one line on stderr saying what went wrong; exit 2 blocks the call
(and, from Claude Code's ``PostToolBatch``, ends the agent's loop: it goes on only when the
daemon says so).

This module starts once per tool call: it imports the standard library and
:mod:`quarterdeck.domain.hooks` only (``python3 -X importtime``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import sys
import time
from collections.abc import Mapping, Sequence
from types import FrameType

from quarterdeck.domain.hooks import (
    AGENTS,
    HookInputError,
    Ruling,
    answer,
    parse_event,
    workspace_for,
)

TYPE_CHECKING = False  # not typing's: importing typing costs each call a few milliseconds
if TYPE_CHECKING:
    from typing import IO, Any, Final, NoReturn

EXIT_BLOCK: Final = 2
"""The only exit code (besides an explicit deny) that makes the CLIs block the call."""
DEFAULT_DEADLINE_S: Final = 570.0
"""How long a call waits for a person, by default (the CLIs' default hook timeout is 600 s)."""
MAX_INPUT: Final = 8 * 1024 * 1024
POLL_S: Final = 50.0
"""The longest one request waits on the daemon for a person (below its 60 s cap)."""
MARGIN_S: Final = 3.0
"""Time kept back to answer before the deadline."""
CONNECT_S: Final = 5.0


class HookFailure(Exception):
    """Something went wrong: the call is blocked and the message says what."""


class Deadline(BaseException):
    """The hook's hard deadline passed."""


def main(argv: Sequence[str] | None = None, out: IO[str] | None = None) -> int:
    """Run the hook; the exit code (0 with an answer on stdout, 2 blocks the call)."""
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        return _block(f"bad arguments: {exc}")
    started = time.monotonic()
    previous = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, max(args.deadline, 1.0) + MARGIN_S)
    try:
        text = run(args, started)
    except Deadline:
        return _block(f"no answer within its deadline of {args.deadline:g} s")
    except HookFailure as exc:
        return _block(str(exc))
    except Exception as exc:
        return _block(f"internal error: {type(exc).__name__}: {exc}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    if text:
        (out or sys.stdout).write(text + "\n")
    return 0


def _expired(_signum: int, _frame: FrameType | None) -> NoReturn:
    raise Deadline


def _block(message: str) -> int:
    sys.stderr.write(f"quarterdeck hook: {message}; the call is blocked\n")
    return EXIT_BLOCK


class HookArgs:
    """The hook's arguments: ``AGENT [--credential FILE] [--deadline SECONDS] [--api SOCKET|URL]``
    (``--api``: the daemon, by default the credential file's)."""

    __slots__ = ("agent", "api", "credential", "deadline")

    def __init__(
        self, agent: str, credential: str | None, deadline: float, api: str | None
    ) -> None:
        self.agent, self.credential, self.deadline, self.api = agent, credential, deadline, api


def parse_args(argv: Sequence[str]) -> HookArgs:
    """Read the arguments (by hand: argparse costs each call a few milliseconds).

    Raises:
        ValueError: naming the argument that is wrong.
    """
    agent: str | None = None
    options: dict[str, str] = {}
    items = iter(argv)
    for item in items:
        if item in ("--credential", "--deadline", "--api"):
            value = next(items, None)
            if value is None:
                raise ValueError(f"{item} needs a value")
            options[item[2:]] = value
        elif item.startswith("--") and "=" in item and item.split("=", 1)[0] in (
            "--credential", "--deadline", "--api",
        ):  # fmt: skip
            name, value = item[2:].split("=", 1)
            options[name] = value
        elif agent is None and not item.startswith("-"):
            agent = item
        else:
            raise ValueError(f"unrecognized argument {item!r}")
    if agent not in AGENTS:
        raise ValueError(f"the agent must be one of {', '.join(AGENTS)}, got {agent!r}")
    try:
        deadline = float(options.get("deadline", DEFAULT_DEADLINE_S))
    except ValueError:
        raise ValueError(f"--deadline: not a number of seconds: {options['deadline']!r}") from None
    return HookArgs(agent, options.get("credential"), deadline, options.get("api"))


def run(args: HookArgs, started: float) -> str:
    """Read, ask, answer: the text to print (empty when the event needs no answer)."""
    raw = sys.stdin.buffer.read(MAX_INPUT + 1)
    if len(raw) > MAX_INPUT:
        raise HookFailure(f"the hook input exceeds {MAX_INPUT} bytes")
    try:
        payload = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise HookFailure(f"the hook input is not JSON: {exc}") from None
    try:
        event = parse_event(args.agent, payload)
    except HookInputError as exc:
        raise HookFailure(f"bad hook input: {exc}") from None
    credential = read_credential(args.credential or os.environ.get("QUARTERDECK_HOOK_CREDENTIAL"))
    api = args.api or credential.get("api")
    if not isinstance(api, str) or not api:
        raise HookFailure("the credential file names no daemon (api)")
    token = token_for(credential, event.cwd)
    path = f"/v1/hooks/{args.agent}"
    if event.asks_to_go_on:
        body = request(api, token, path, {"payload": payload}, CONNECT_S + 10)
        try:
            ruling = Ruling.from_dict(body)
        except HookInputError as exc:
            raise HookFailure(str(exc)) from None
        return json.dumps(answer(args.agent, event.event, ruling))
    if not event.gates:
        request(api, token, path, {"payload": payload}, CONNECT_S + 10)
        return ""
    while True:
        left = args.deadline - (time.monotonic() - started) - MARGIN_S
        wait_s = max(0.0, min(POLL_S, left - 5.0))
        body = request(api, token, path, {"payload": payload, "wait_s": wait_s}, wait_s + 10)
        try:
            ruling = Ruling.from_dict(body)
        except HookInputError as exc:
            raise HookFailure(str(exc)) from None
        if ruling.verdict != "pending" or wait_s <= 1.0:
            return json.dumps(answer(args.agent, event.event, ruling))


def read_credential(path: str | None) -> Mapping[str, Any]:
    """The credential file ``integrate`` wrote; it must be the caller's and private."""
    if not path:
        raise HookFailure("no credential file: give --credential FILE (quarterdeck integrate)")
    try:
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise HookFailure(f"the credential file {path} is not a regular file")
            if info.st_mode & 0o077:
                raise HookFailure(
                    f"the credential file {path} is open to others "
                    f"(mode {stat.S_IMODE(info.st_mode):04o}): chmod 600 it"
                )
            data = json.loads(handle.read(1024 * 1024))
    except OSError as exc:
        raise HookFailure(f"cannot read the credential file {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise HookFailure(f"the credential file {path} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise HookFailure(f"the credential file {path} is not a JSON object")
    return data


def token_for(credential: Mapping[str, Any], cwd: str) -> str:
    """The token of the workspace ``cwd`` maps to (the longest matching prefix, else the
    default)."""
    tokens: dict[str, str] = {}
    prefixes: list[tuple[str, str]] = []
    for entry in credential.get("workspaces") or []:
        if isinstance(entry, dict) and all(
            isinstance(entry.get(k), str) for k in ("workspace", "token")
        ):
            tokens[entry["workspace"]] = entry["token"]
            if isinstance(entry.get("prefix"), str):
                prefixes.append((entry["prefix"], entry["workspace"]))
    default = credential.get("default")
    workspace = workspace_for(cwd, prefixes, default if isinstance(default, str) else None)
    if workspace is None or workspace not in tokens:
        raise HookFailure(f"no workspace is configured for {cwd} (quarterdeck integrate)")
    return tokens[workspace]


MAX_ANSWER: Final = 4 * 1024 * 1024


def _connect(api: str, timeout: float) -> tuple[socket.socket, str, str]:
    """A connected socket to ``api``, the Host header and the path prefix."""
    if api.startswith(("http://", "https://")):
        from urllib.parse import urlsplit  # only for a URL

        parts = urlsplit(api)
        https = parts.scheme == "https"
        host = parts.hostname or "localhost"
        sock = socket.create_connection((host, parts.port or (443 if https else 80)), CONNECT_S)
        if https:
            import ssl  # only for https: it costs a few milliseconds to import

            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        sock.settimeout(timeout)
        return sock, parts.netloc, parts.path.rstrip("/")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_S)
        sock.connect(api)
    except BaseException:
        sock.close()
        raise
    sock.settimeout(timeout)
    return sock, "quarterdeck", ""


def _exchange(
    sock: socket.socket, host: str, path: str, token: str, body: bytes
) -> tuple[int, bytes]:
    """One HTTP/1.1 POST (the connection closes after it): the status and the body."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    sock.sendall(head.encode("latin-1") + body)
    chunks, size = [], 0
    while size <= MAX_ANSWER:
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    raw = b"".join(chunks)
    header, sep, content = raw.partition(b"\r\n\r\n")
    lines = header.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if not sep or len(status) < 2 or not status[1].isdigit():
        raise HookFailure("the daemon's answer is not HTTP")
    fields = {
        k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
    }
    if fields.get("transfer-encoding", "").lower() == "chunked":
        content = _unchunk(content)
    elif fields.get("content-length", "").isdigit():
        content = content[: int(fields["content-length"])]
    return int(status[1]), content


def _unchunk(data: bytes) -> bytes:
    out, rest = [], data
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out.append(rest[:size])
        rest = rest[size + 2 :]
    return b"".join(out)


def request(api: str, token: str, path: str, body: object, timeout: float) -> dict[str, Any]:
    """POST ``body`` to the daemon at ``api`` (a socket path or an http(s) URL); its JSON
    answer. Every failure is a :class:`HookFailure` that says what happened."""
    try:
        sock, host, prefix = _connect(api, timeout)
    except (FileNotFoundError, ConnectionRefusedError):
        raise HookFailure(
            f"no Quarterdeck daemon answers on {api} (is `quarterdeck run --headless` running?)"
        ) from None
    except OSError as exc:
        raise HookFailure(f"cannot reach the daemon on {api}: {exc}") from None
    try:
        status, data = _exchange(sock, host, prefix + path, token, json.dumps(body).encode())
    except (OSError, ValueError) as exc:
        raise HookFailure(f"the daemon on {api} did not answer: {exc}") from None
    finally:
        sock.close()
    try:
        answer_body = json.loads(data)
    except ValueError:
        answer_body = None
    if status != 200 or not isinstance(answer_body, dict):
        detail = (
            f"{answer_body.get('error')} ({answer_body.get('code')})"
            if isinstance(answer_body, dict)
            else data[:200].decode("utf-8", "replace")
        )
        raise HookFailure(f"the daemon refused ({status}): {detail}")
    return answer_body
