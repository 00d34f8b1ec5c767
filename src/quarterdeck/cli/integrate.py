"""``quarterdeck integrate claude-code|codex``: install the command hook into an agent CLI's
settings, with an agent credential, and ``--check`` that it answers and fails closed.

Installing asks the running daemon (its control socket, as the OS user who runs this: an
``admin``) for an agent token pinned to the workspace (``token.create`` with role ``agent``:
its holder may ask, never decide), writes it to a credential file of mode 0600 outside the
project (``~/.config/quarterdeck/hooks/``), and merges the hook entries into the CLI's
settings (Claude Code's ``settings.json`` of a project or of the user; Codex's
``$CODEX_HOME/hooks.json``): other settings and other hooks are kept; our own entries are
replaced, so installing twice changes nothing.

``--check`` runs the installed hook as the CLI would: against the daemon it must answer (a
``SessionStart`` is recorded), against a socket where nothing listens it must exit 2 (the CLI
then blocks the call); for Codex it also asks Codex itself whether the hooks are trusted
(untrusted hooks are skipped silently). Exit 0 when everything holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Final

from quarterdeck.cli.codex_trust import CodexError, codex_hook_trust, trust_hooks
from quarterdeck.cli.common import UsageError, state_directory, workspace
from quarterdeck.domain.envelope import WORKSPACE_PATTERN
from quarterdeck.domain.hooks import CLAUDE_CODE, CODEX
from quarterdeck.domain.tokens import AGENT_ROLE, new_token

HTTP_TIMEOUT_S: Final = 60
"""The ``timeout`` of the ``http`` hook; the endpoint waits ``HTTP_WAIT_S`` for a person."""
HTTP_WAIT_S: Final = 50
TOKEN_VARIABLE: Final = "QUARTERDECK_AGENT_TOKEN"
"""The environment variable the ``http`` hook's bearer header is read from (so that the
token is not written into a settings file that may be shared)."""
HOOK_TIMEOUT_S: Final = 600
"""The ``timeout`` written for each hook (the CLIs' default); the hook answers before it."""
DEADLINE_S: Final = HOOK_TIMEOUT_S - 30
CLAUDE_EVENTS: Final = (
    "PreToolUse", "PermissionRequest", "PostToolUse", "PostToolBatch", "UserPromptSubmit",
    "SessionStart", "SessionEnd", "Notification",
)  # fmt: skip
"""``PermissionRequest`` fires only where Claude Code would prompt (SDK mode, an interactive
session) and only when the ``PreToolUse`` gate did not decide; it is gated the same way.
``PostToolBatch`` (after each batch of tool calls) is what ends the loop of a turn a person took
over or cancelled."""
CODEX_EVENTS: Final = ("PreToolUse", "PostToolUse", "UserPromptSubmit", "SessionStart")
TOOL_EVENTS: Final = frozenset({"PreToolUse", "PermissionRequest", "PostToolUse"})
HTTP_PATH: Final = "/v1/hooks/claude-code/http"
MARK: Final = "quarterdeck hook "
"""What identifies our own entries in a settings file."""


def add_integrate_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    """``integrate claude-code|codex`` on the command line's subparsers."""
    integrate = commands.add_parser(
        "integrate", parents=[common], help="supervise Claude Code or Codex through their hooks"
    )
    integrate.add_argument("agent", choices=(CLAUDE_CODE, CODEX), metavar="AGENT",
                           help="claude-code or codex")  # fmt: skip
    where = integrate.add_mutually_exclusive_group()
    where.add_argument("--project", metavar="DIR", help="Claude Code: DIR/.claude/settings.json")
    where.add_argument("--user", action="store_true", help="Claude Code: ~/.claude/settings.json")
    integrate.add_argument("--codex-home", metavar="DIR", help="Codex: default $CODEX_HOME")
    integrate.add_argument(
        "--check", action="store_true", help="prove the installed hook answers and fails closed"
    )
    integrate.add_argument(
        "--credential-dir", metavar="DIR", help="default ~/.config/quarterdeck/hooks"
    )
    integrate.add_argument(
        "--trust", action="store_true",
        help="Codex: trust the hooks now, as Codex's /hooks does (it skips untrusted ones)",
    )  # fmt: skip
    integrate.add_argument("--codex-bin", metavar="PATH", help="Codex: default codex on PATH")
    integrate.add_argument(
        "--http", metavar="URL",
        help="Claude Code: gate with an http hook to the daemon's TCP address instead "
        "(faster, but Claude Code runs the tool when it cannot reach it)",
    )  # fmt: skip
    integrate.add_argument(
        "--map", action="append", default=[], type=_mapping, metavar="DIR=WORKSPACE",
        help="calls made under DIR go to WORKSPACE (repeatable; the rest to --workspace)",
    )  # fmt: skip


def _mapping(text: str) -> tuple[str, str]:
    folder, sep, name = text.rpartition("=")
    if not sep or not folder or not WORKSPACE_PATTERN.fullmatch(name):
        raise argparse.ArgumentTypeError(
            f"expected DIR=WORKSPACE (a workspace is a-z, 0-9, _ and -), got {text!r}"
        )
    return str(Path(folder).resolve()), name


async def integrate_command(args: argparse.Namespace, out: IO[str]) -> int:
    """Install (or ``--check``) the hooks of ``args.agent``."""
    if args.all_workspaces:
        raise UsageError("integrate takes no --all-workspaces")
    if args.agent == CODEX and (args.project or args.user):
        raise UsageError("integrate codex: use --codex-home DIR (default $CODEX_HOME)")
    if args.agent == CLAUDE_CODE and (args.codex_home or args.trust):
        raise UsageError("integrate claude-code: --codex-home and --trust are for codex")
    if args.http and args.agent != CLAUDE_CODE:
        raise UsageError("integrate codex: Codex has command hooks only (no --http)")
    if args.http and not args.http.startswith(("http://", "https://")):
        raise UsageError(f"--http: expected the daemon's http(s)://HOST:PORT, got {args.http!r}")
    target = settings_path(args)
    credential = credential_path(args, target)
    if args.check:
        return check(args, target, credential, out)
    socket_path = (state_directory(args) / "quarterdeck.sock").resolve()
    default = workspace(args)
    tokens = {}
    for name in sorted({default, *(name for _, name in args.map)}):
        tokens[name] = await issue_token(socket_path, args.agent, name)
    entries: list[dict[str, str]] = [
        {"prefix": folder, "workspace": name, "token": tokens[name]} for folder, name in args.map
    ]
    entries.append({"workspace": default, "token": tokens[default]})
    write_credential(credential, {"agent": args.agent, "api": str(socket_path),
                                  "default": default, "workspaces": entries})  # fmt: skip
    command = hook_command(args.agent, credential)
    merged = merge_hooks(read_settings(target), args.agent, command, args.http)
    write_settings(target, merged)
    out.write(f"installed the {args.agent} hooks in {target}\n")
    if args.http:
        out.write(
            f"PreToolUse is an http hook to {args.http}: Claude Code sends "
            f"${TOKEN_VARIABLE} as its bearer token (export it from the credential file), and "
            "RUNS THE TOOL when it cannot reach the daemon: it does not fail closed\n"
        )
    where = ", ".join([f"{folder} -> {name}" for folder, name in args.map] + [f"else {default}"])
    out.write(f"agent credential ({where}): {credential}\n")
    if args.agent == CODEX:
        if args.trust:
            try:
                keys = trust_hooks(codex_bin(args), target.parent, Path.cwd(), MARK)
            except CodexError as exc:
                raise UsageError(f"the hooks are installed but not trusted: {exc}") from None
            out.write(f"Codex trusts the {len(keys)} hooks now (hooks.state in config.toml)\n")
        else:
            out.write(
                "Codex skips hooks it does not trust, silently: trust them in Codex "
                "(`/hooks`), or with `quarterdeck integrate codex --trust`; "
                "`quarterdeck integrate codex --check` tells whether they are.\n"
            )
    return 0


def codex_bin(args: argparse.Namespace) -> str | None:
    """The Codex executable to ask."""
    return str(args.codex_bin) if args.codex_bin else shutil.which("codex")


def settings_path(args: argparse.Namespace) -> Path:
    """The settings file the hooks go into."""
    if args.agent == CODEX:
        home = args.codex_home or os.environ.get("CODEX_HOME") or Path.home() / ".codex"
        return Path(home).resolve() / "hooks.json"
    if args.user:
        return Path.home() / ".claude" / "settings.json"
    return Path(args.project or ".").resolve() / ".claude" / "settings.json"


def credential_path(args: argparse.Namespace, target: Path) -> Path:
    """Where the agent credential for the hooks of ``target`` is kept."""
    folder = Path(args.credential_dir or Path.home() / ".config" / "quarterdeck" / "hooks")
    digest = hashlib.sha256(str(target).encode()).hexdigest()[:12]
    return folder.resolve() / f"{args.agent}-{digest}.json"


def hook_command(agent: str, credential: Path) -> str:
    """The shell command of the hook: this Python, isolated and without site-packages
    (``-I -S``: no ``.pth`` files run, no environment read; it starts in a fraction of the
    time), running this Quarterdeck's package directory (its ``__main__``)."""
    package = Path(__file__).resolve().parent.parent
    parts = [sys.executable, "-I", "-S", str(package), "hook", agent,
             "--credential", str(credential), "--deadline", str(DEADLINE_S)]  # fmt: skip
    return shlex.join(parts)


async def issue_token(socket_path: Path, agent: str, workspace_name: str) -> str:
    """A fresh agent token pinned to ``workspace_name``, stored by the daemon (hashed)."""
    from quarterdeck.client.api import ControlClient, ControlError

    made = new_token()
    payload = {
        "command": "token.create", "token_id": made.id, "principal": f"{agent}.{workspace_name}",
        "role": AGENT_ROLE, "secret_hash": made.secret_hash, "workspace": workspace_name,
    }  # fmt: skip

    try:
        async with ControlClient(socket_path) as api:
            result = await api.command(workspace_name, payload)
    except ControlError as exc:
        raise UsageError(f"cannot issue the agent credential: {exc.message}") from None
    if not result.get("ok"):
        errors = "; ".join(map(str, result.get("errors") or ["refused"]))
        raise UsageError(f"the daemon refused the agent credential: {errors}")
    return made.text


def write_credential(path: Path, data: Mapping[str, Any]) -> None:
    """Write the credential file (mode 0600, its folder 0700), replacing it atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=".credential-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(dict(data), handle, indent=2)
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def read_settings(path: Path) -> dict[str, Any]:
    """The settings file as it is (an empty object when there is none)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        raise UsageError(f"{path} is not JSON ({exc}): fix it first, nothing was changed") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path} is not a JSON object: fix it first, nothing was changed")
    return data


def ours(group: object) -> bool:
    """Whether a matcher group holds our hook (a command hook or the http one)."""
    hooks = group.get("hooks") if isinstance(group, dict) else None
    return isinstance(hooks, list) and any(
        isinstance(h, dict)
        and (MARK in str(h.get("command", "")) or HTTP_PATH in str(h.get("url", "")))
        for h in hooks
    )


def http_hook(url: str) -> dict[str, Any]:
    """The ``http`` hook entry for the daemon at ``url`` (the token from the environment)."""
    return {
        "type": "http", "url": f"{url.rstrip('/')}{HTTP_PATH}?wait_s={HTTP_WAIT_S}",
        "timeout": HTTP_TIMEOUT_S, "headers": {"Authorization": f"Bearer ${TOKEN_VARIABLE}"},
        "allowedEnvVars": [TOKEN_VARIABLE],
    }  # fmt: skip


def merge_hooks(
    settings: Mapping[str, Any], agent: str, command: str, http: str | None = None
) -> dict[str, Any]:
    """``settings`` with our hook on every event (other entries kept, ours replaced); with
    ``http``, the gate is an ``http`` hook to that address."""
    merged = dict(settings)
    hooks = merged.get("hooks", {})
    if not isinstance(hooks, dict):
        raise UsageError("the settings' hooks are not a JSON object: nothing was changed")
    hooks = dict(hooks)
    for event in CLAUDE_EVENTS if agent == CLAUDE_CODE else CODEX_EVENTS:
        groups = hooks.get(event, [])
        if not isinstance(groups, list):
            raise UsageError(f"the settings' hooks.{event} is not a list: nothing was changed")
        hook = {"type": "command", "command": command, "timeout": HOOK_TIMEOUT_S}
        group: dict[str, Any] = {
            "hooks": [http_hook(http) if http and event == "PreToolUse" else hook]
        }
        if event in TOOL_EVENTS:
            group = {"matcher": "*", **group}
        hooks[event] = [g for g in groups if not ours(g)] + [group]
    merged["hooks"] = hooks
    return merged


def write_settings(path: Path, data: Mapping[str, Any]) -> None:
    """Replace the settings file atomically, keeping its mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=".settings-")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(dict(data), handle, indent=2)
            handle.write("\n")
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


# --- --check -------------------------------------------------------------------------------------


def installed_commands(settings: Mapping[str, Any], event: str) -> list[str]:
    """Our hook commands installed for ``event``."""
    hooks = settings.get("hooks")
    groups = hooks.get(event) if isinstance(hooks, dict) else None
    found = []
    for group in groups if isinstance(groups, list) else []:
        if ours(group):
            found += [str(h["command"]) for h in group["hooks"] if MARK in str(h.get("command"))]
    return found


def run_hook(
    command: str, payload: Mapping[str, Any], extra: Sequence[str] = ()
) -> tuple[int, str]:
    """Run a hook command as the CLI does (through the shell, JSON on stdin)."""
    line = command + "".join(" " + shlex.quote(arg) for arg in extra)
    done = subprocess.run(
        ["/bin/sh", "-c", line], input=json.dumps(payload), capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    return done.returncode, (done.stdout + done.stderr).strip()


def check(args: argparse.Namespace, target: Path, credential: Path, out: IO[str]) -> int:
    """Prove the installed hook answers and fails closed; print each finding."""
    problems: list[str] = []
    settings = read_settings(target)
    gates = installed_commands(settings, "PreToolUse")
    commands = gates or installed_commands(settings, "SessionStart")
    if not commands:
        out.write(f"FAIL no Quarterdeck hook in {target}\n")
        return 1
    if gates:
        out.write(f"ok   the hook is installed in {target}\n")
    else:
        problems.append(
            f"the PreToolUse gate in {target} is not a Quarterdeck command hook (an http hook "
            "lets tools run when the daemon cannot be reached): it does not fail closed"
        )
    if args.agent == CLAUDE_CODE and not installed_commands(settings, "PostToolBatch"):
        problems.append(
            f"no Quarterdeck PostToolBatch hook in {target}: a turn taken over or cancelled "
            "would not end Claude Code's loop (install again)"
        )
    try:
        mode = credential.stat().st_mode & 0o777
        if mode & 0o077:
            problems.append(f"the credential file {credential} is open to others ({mode:04o})")
    except OSError as exc:
        problems.append(f"no credential file {credential}: {exc.strerror}")
    payload = {"session_id": "quarterdeck-integrate-check", "cwd": str(Path.cwd()),
               "hook_event_name": "SessionStart", "source": "startup",
               "transcript_path": "", "permission_mode": "default"}  # fmt: skip
    code, said = run_hook(commands[0], payload)
    if code == 0:
        out.write("ok   the hook answers (a SessionStart was recorded by the daemon)\n")
    else:
        problems.append(f"the hook does not answer (exit {code}): {said}")
    with tempfile.TemporaryDirectory(prefix="quarterdeck-check-") as scratch:
        dead = str(Path(scratch) / "nobody.sock")
        gate = {**payload, "hook_event_name": "PreToolUse", "tool_name": "Bash",
                "tool_input": {"command": "true"}, "tool_use_id": "quarterdeck-check"}  # fmt: skip
        code, said = run_hook(commands[0], gate, ["--api", dead])
    if code == 2:
        out.write("ok   with no daemon the hook exits 2: the call is blocked (fails closed)\n")
    else:
        problems.append(f"with no daemon the hook exited {code}, not 2: calls would run")
    if args.agent == CODEX:
        trust = codex_hook_trust(codex_bin(args), target.parent, Path.cwd(), MARK)
        if trust.error:
            problems.append(f"cannot ask Codex whether the hooks are trusted: {trust.error}")
        elif trust.untrusted:
            problems.append(
                "Codex does not trust these hooks and will skip them silently: "
                + ", ".join(trust.untrusted)
                + " (trust them in Codex with /hooks, or with integrate codex --trust)"
            )
        elif not trust.trusted:
            problems.append("Codex does not see the hooks (is this its CODEX_HOME?)")
        else:
            out.write(f"ok   Codex trusts the hooks ({len(trust.trusted)})\n")
    for problem in problems:
        out.write(f"FAIL {problem}\n")
    return 1 if problems else 0
