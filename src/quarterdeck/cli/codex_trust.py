"""Whether Codex trusts our hooks, asked of Codex itself: Codex skips hooks it does not trust,
silently. ``codex app-server`` (JSON-RPC on stdio) lists every hook it discovered with its
``trustStatus`` (``hooks/list``); trusting writes ``hooks.state.<key>.trusted_hash`` in the
user's ``config.toml`` through Codex's own config writer (``config/batchWrite``), the same
operation as trusting them in Codex's ``/hooks``."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

ANSWER_S: Final = 30.0


class CodexError(Exception):
    """Codex could not be asked (not installed, or it answered with an error)."""


@dataclass(frozen=True, slots=True)
class HookTrust:
    """Our hooks Codex discovered: ``trusted`` and ``untrusted`` keys (``<file>:<event>:..``)
    with their current hashes; ``error`` when Codex could not be asked."""

    trusted: tuple[str, ...] = ()
    untrusted: tuple[str, ...] = ()
    hashes: Mapping[str, str] | None = None
    error: str | None = None


class AppServer:
    """One ``codex app-server`` process, asked one request at a time."""

    def __init__(self, codex: str, codex_home: Path) -> None:
        env = {**os.environ, "CODEX_HOME": str(codex_home)}
        try:
            self._proc = subprocess.Popen(
                [codex, "app-server"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, text=True, env=env,
            )  # fmt: skip
        except OSError as exc:
            raise CodexError(f"cannot start {codex}: {exc.strerror}") from None
        self._next = 0
        self.call("initialize", {"clientInfo": {"name": "quarterdeck", "version": "1"},
                                 "capabilities": {"experimentalApi": True}})  # fmt: skip
        self._send({"jsonrpc": "2.0", "method": "initialized"})

    def _send(self, message: Mapping[str, Any]) -> None:
        stdin: IO[str] | None = self._proc.stdin
        assert stdin is not None
        stdin.write(json.dumps(message) + "\n")
        stdin.flush()

    def call(self, method: str, params: Mapping[str, Any]) -> Any:
        """The result of one request (:class:`CodexError` on an error or no answer)."""
        self._next += 1
        ident = self._next
        self._send({"jsonrpc": "2.0", "id": ident, "method": method, "params": dict(params)})
        timer = threading.Timer(ANSWER_S, self._proc.kill)
        timer.start()
        try:
            assert self._proc.stdout is not None
            for line in self._proc.stdout:
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if isinstance(message, dict) and message.get("id") == ident:
                    if "error" in message:
                        raise CodexError(f"{method}: {message['error'].get('message')}")
                    return message.get("result")
        finally:
            timer.cancel()
        raise CodexError(f"codex app-server ended without answering {method}")

    def close(self) -> None:
        """Stop it."""
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def _ours(server: AppServer, cwd: Path, mark: str) -> list[dict[str, Any]]:
    listing = server.call("hooks/list", {"cwds": [str(cwd)]})
    hooks = [h for entry in listing.get("data", []) for h in entry.get("hooks", [])]
    return [h for h in hooks if isinstance(h, dict) and mark in str(h.get("command"))]


def codex_hook_trust(codex: str | None, codex_home: Path, cwd: Path, mark: str) -> HookTrust:
    """Which of our hooks (their command holds ``mark``) Codex trusts, seen from ``cwd``."""
    if codex is None:
        return HookTrust(error="no codex on PATH (give --codex-bin)")
    try:
        server = AppServer(codex, codex_home)
        try:
            hooks = _ours(server, cwd, mark)
        finally:
            server.close()
    except CodexError as exc:
        return HookTrust(error=str(exc))
    trusted = tuple(h["key"] for h in hooks if h.get("trustStatus") == "trusted")
    untrusted = tuple(h["key"] for h in hooks if h.get("trustStatus") != "trusted")
    return HookTrust(trusted, untrusted, {h["key"]: str(h.get("currentHash")) for h in hooks})


def trust_hooks(codex: str | None, codex_home: Path, cwd: Path, mark: str) -> tuple[str, ...]:
    """Trust our hooks as Codex's ``/hooks`` does; the keys trusted.

    Raises:
        CodexError: Codex could not be asked, or refused the write.
    """
    if codex is None:
        raise CodexError("no codex on PATH (give --codex-bin)")
    server = AppServer(codex, codex_home)
    try:
        hooks = _ours(server, cwd, mark)
        state = {h["key"]: {"trusted_hash": h["currentHash"]} for h in hooks}
        if state:
            edit = {"keyPath": "hooks.state", "value": state, "mergeStrategy": "upsert"}
            server.call("config/batchWrite", {"edits": [edit], "filePath": None,
                                              "expectedVersion": None,
                                              "reloadUserConfig": True})  # fmt: skip
        return tuple(state)
    finally:
        server.close()
