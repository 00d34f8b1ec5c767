"""The policy file, reloaded when it changes on disk: a valid edit takes effect and is
recorded, an invalid one keeps the last good policy and opens an alert until it is fixed.
The file is read only when it is a regular file of at most :data:`MAX_POLICY_BYTES`
(:func:`quarterdeck.runtime.filewatch.read_regular`): a FIFO or a link to a device is a problem
named in the alert (or in the error at start), never a hang.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from quarterdeck.domain.envelope import RUNTIME_WORKSPACE
from quarterdeck.domain.policy import Policy, parse_policy
from quarterdeck.runtime.config import ConfigError
from quarterdeck.runtime.filewatch import (
    DEBOUNCE_MS,
    STEP_MS,
    FileWatch,
    UnreadableFile,
    read_regular,
)
from quarterdeck.store.alerts import open_alert, resolve_by_dedupe
from quarterdeck.store.outbox import Target
from quarterdeck.store.writer import Writer, WriteTxn

log = logging.getLogger("quarterdeck.runtime.drift")

MAX_POLICY_BYTES = 1024 * 1024
"""The size cap of the policy file."""


def read_policy(path: Path, max_bytes: int = MAX_POLICY_BYTES) -> Policy | list[str]:
    """Read and parse a policy file (a regular file of at most ``max_bytes``); return it or
    every problem found."""
    try:
        text = read_regular(path, max_bytes).decode("utf-8")
    except UnreadableFile as exc:
        return [exc.reason]
    except UnicodeDecodeError as exc:
        return [f"not UTF-8 text: {exc}"]
    return parse_policy(text)


class PolicySource:
    """The policy file, reloaded when it changes on disk. A valid edit takes effect (through
    ``on_change``) and is recorded as ``policy.loaded``; an invalid edit (or a deleted file)
    keeps the last good policy and opens a ``policy_invalid`` alert until the file is fixed."""

    def __init__(
        self,
        path: Path | None,
        writer: Writer,
        targets: Sequence[Target] = (),
        on_change: Callable[[Policy], None] = lambda _policy: None,
        actor: str = "policy",
        *,
        workspace: str = RUNTIME_WORKSPACE,
        debounce_ms: int = DEBOUNCE_MS,
        step_ms: int = STEP_MS,
    ) -> None:
        self.path = path
        self.writer = writer
        self.targets = tuple(targets)
        self.on_change = on_change
        self.actor = actor
        self.workspace = workspace
        self.policy: Policy | None = None
        """The policy in force (the last good one)."""
        self._loaded = False
        self._watch: FileWatch | None = None
        self._debounce_ms = debounce_ms
        self._step_ms = step_ms

    @property
    def dedupe(self) -> str:
        """The dedupe key of this file's ``policy_invalid`` alert."""
        return f"policy:{self.path}"

    def load(self) -> Policy | None:
        """Read the policy at start (None when no file is configured).

        Raises:
            ConfigError: the file cannot be read or is invalid; every problem is listed.
        """
        self._loaded = True
        if self.path is None:
            return None
        result = read_policy(self.path)
        if not isinstance(result, Policy):
            raise ConfigError(str(self.path), result)
        self.policy = result
        return result

    async def start(self) -> None:
        """Load the policy (unless :meth:`load` ran), record it, and watch the file.

        Raises:
            ConfigError: as :meth:`load`.
        """
        if not self._loaded:
            self.load()
        if self.path is None:
            return
        policy = self.policy
        assert policy is not None
        await self.writer.submit(lambda txn: self._record(txn, policy))
        self._watch = FileWatch(
            [self.path], self._changed, debounce_ms=self._debounce_ms, step_ms=self._step_ms
        )
        await self._watch.start()

    async def stop(self) -> None:
        """Stop watching the file."""
        if self._watch is not None:
            await self._watch.stop()
            self._watch = None

    async def _changed(self, _paths: set[Path]) -> None:
        await self.reload()

    async def reload(self) -> Policy | None:
        """Read the file again and apply it when valid; return the policy in force."""
        if self.path is None:
            return None
        path = self.path
        result = await asyncio.to_thread(read_policy, path)
        if isinstance(result, Policy):
            changed = self.policy is None or result.hash != self.policy.hash
            if changed:
                try:
                    self.on_change(result)
                except Exception:
                    log.exception("applying the policy from %s failed", path)
                    return self.policy
                self.policy = result
            policy = result
            await self.writer.submit(lambda txn: self._record(txn, policy, changed))
            return self.policy
        problems = result
        kept = "none" if self.policy is None else self.policy.hash[:12]
        message = f"policy file {path} is invalid (keeping policy {kept}): " + "; ".join(problems)

        def invalid(txn: WriteTxn) -> None:
            open_alert(
                txn,
                self.targets,
                workspace=self.workspace,
                alert_type="policy_invalid",
                severity="error",
                subject_type="policy",
                subject_id=str(path),
                dedupe=self.dedupe,
                message=message,
                data={"path": str(path), "problems": problems, "kept": kept},
                actor=self.actor,
            )

        await self.writer.submit(invalid)
        return self.policy

    def _record(self, txn: WriteTxn, policy: Policy, loaded: bool = True) -> None:
        if loaded:
            txn.ledger.append(
                at=txn.at,
                workspace=self.workspace,
                actor=self.actor,
                action="policy.loaded",
                subject_type="policy",
                subject_id=str(self.path),
                payload={"hash": policy.hash, "path": str(self.path)},
            )
        resolve_by_dedupe(txn, self.workspace, self.dedupe, self.actor, "the policy file is valid")
