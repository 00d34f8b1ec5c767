"""The node's checkpointer: at most every N entries or T seconds, and at drain, it signs the
ledger's head with the node's key, appends the checkpoint to the checkpoint file outside the
database (append-only, 0600, fsynced, under an exclusive lock, one JSON line each) and stores it
in ``ledger_checkpoints``.

It signs only while the stored chain still holds the last checkpointed head in the file: if
that entry is gone or changed (entries removed, or rewritten at or below it), it signs nothing,
logs the failure and opens an alert.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from quarterdeck.domain.checkpoints import Checkpoint, CheckpointFormatError, sign_checkpoint
from quarterdeck.domain.clock import Clock, format_instant, utc_now
from quarterdeck.domain.envelope import RUNTIME_WORKSPACE
from quarterdeck.domain.ledger import GENESIS_HASH, VerifyResult
from quarterdeck.runtime.keys import load_or_create_key
from quarterdeck.runtime.ledger_config import LedgerConfig
from quarterdeck.store.alerts import open_alert
from quarterdeck.store.checkpoints import chain_holds, read_head, record_checkpoint
from quarterdeck.store.database import Database
from quarterdeck.store.outbox import Target, enqueue
from quarterdeck.store.writer import Writer, WriteTxn

log = logging.getLogger("quarterdeck.checkpoints")

TAIL_BYTES = 64 * 1024
"""How much of the checkpoint file's end is read to find its last line."""


class CheckpointFileError(Exception):
    """The checkpoint file's last line is not a checkpoint: nothing is appended after it."""


def last_checkpoint(path: Path) -> Checkpoint | None:
    """The last checkpoint in the file (None when the file is missing or empty).

    Raises:
        CheckpointFileError: the last line is not a checkpoint.
    """
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - TAIL_BYTES))
            tail = handle.read()
    except FileNotFoundError:
        return None
    lines = [line for line in tail.split(b"\n") if line.strip()]
    if not lines:
        return None
    if not tail.endswith(b"\n"):
        raise CheckpointFileError(f"{path} ends in an unfinished line")
    try:
        return Checkpoint.from_dict(json.loads(lines[-1]))
    except (ValueError, CheckpointFormatError) as exc:
        raise CheckpointFileError(f"the last line of {path} is not a checkpoint: {exc}") from exc


def append_checkpoint(path: Path, checkpoint: Checkpoint) -> bool:
    """Append ``checkpoint`` as one line, fsynced, if it follows the file's last checkpoint
    (checked under an exclusive lock on the file, which writers in other processes take too);
    return whether it was appended. The file is created with mode 0600 and opened for
    appending only.

    Raises:
        CheckpointFileError: the file's last line is not a checkpoint.
    """
    created = not path.exists()
    if created:
        path.parent.mkdir(parents=True, exist_ok=True)
    handle = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        last = last_checkpoint(path)
        if (last.hash if last is not None else GENESIS_HASH) != checkpoint.prev:
            return False
        data = checkpoint.to_line().encode("utf-8")
        while data:
            data = data[os.write(handle, data) :]
        os.fsync(handle)
    finally:
        os.close(handle)
    if created:
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    return True


WITNESS_EVENT: Final = "ledger.checkpoint"
"""The outbox event that ships a checkpoint to the witness webhook."""


def _record(txn: WriteTxn, checkpoint: Checkpoint, witness: Target | None) -> None:
    """Store the checkpoint and, with a witness, queue it for that webhook (same transaction)."""
    record_checkpoint(txn.conn, checkpoint)
    if witness is not None:
        enqueue(
            txn, (witness,), workspace=RUNTIME_WORKSPACE, event=WITNESS_EVENT,
            subject_type="ledger", subject_id=str(checkpoint.seq),
            summary=f"ledger checkpoint at seq {checkpoint.seq} by {checkpoint.node}",
            data=checkpoint.to_dict(),
        )  # fmt: skip


class Checkpointer:
    """Signs checkpoints of one node's ledger view (see the module's docstring)."""

    def __init__(
        self,
        db: Database,
        writer: Writer,
        key: Ed25519PrivateKey,
        *,
        node_id: str,
        path: Path,
        every: int = 1000,
        interval_s: float = 60.0,
        clock: Clock = utc_now,
        witness: Target | None = None,
    ) -> None:
        self.db = db
        self.witness = witness
        self.writer = writer
        self.key = key
        self.node_id = node_id
        self.path = path
        self.every = every
        self.interval_s = interval_s
        self.clock = clock
        self.signed_seq = 0
        """The seq of the last head this checkpointer signed or found signed."""
        self.refused: str | None = None
        """Why the last attempt signed nothing because the chain no longer holds the file's
        last checkpointed head (None while all is well)."""
        self._committed_seq = 0
        self._due = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start signing: on every ``every`` entries committed by this node's writer, and
        every ``interval_s`` seconds when the head moved."""
        self.writer.on_commit(self._committed)
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="qd-checkpoints")

    async def stop(self) -> None:
        """Stop the loop and sign the head as the node leaves it (call while the writer still
        runs)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self.checkpoint()
        except Exception:
            log.exception("the checkpoint at drain failed", extra={"node": self.node_id})

    def _committed(self, head_seq: int) -> None:
        self._committed_seq = max(self._committed_seq, head_seq)
        if head_seq - self.signed_seq >= self.every:
            self._due.set()

    async def _loop(self) -> None:
        while True:
            counted = False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await self._due.wait()
                    counted = True
            self._due.clear()
            if counted and self._committed_seq - self.signed_seq < self.every:
                continue  # woken for entries that a checkpoint since has signed
            try:
                await self.checkpoint()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("checkpoint failed; trying again later", extra={"node": self.node_id})

    async def checkpoint(self) -> Checkpoint | None:
        """Sign the current head if it moved since the file's last checkpoint (which the chain
        must still hold); return the new checkpoint, or None when there was nothing to sign or
        it was refused."""
        async with self._lock:
            for _attempt in range(3):
                last = await asyncio.to_thread(last_checkpoint, self.path)
                seq, head = await read_head(self.db)
                since = (last.seq, last.head) if last is not None else (0, GENESIS_HASH)
                if (seq, head) == since:
                    self.signed_seq = seq
                    return None
                failure = await chain_holds(self.db, since, (seq, head))
                if failure is not None:
                    await self._refuse(failure, since[0])
                    return None
                checkpoint = sign_checkpoint(
                    self.key,
                    seq=seq,
                    head=head,
                    at=format_instant(self.clock()),
                    node=self.node_id,
                    prev=last.hash if last is not None else GENESIS_HASH,
                )
                if await asyncio.to_thread(append_checkpoint, self.path, checkpoint):
                    await self.writer.submit(
                        partial(_record, checkpoint=checkpoint, witness=self.witness)
                    )
                    self.signed_seq, self.refused = seq, None
                    return checkpoint
                # Another process sharing the file appended first: read its checkpoint, again.
            return None

    async def _refuse(self, failure: VerifyResult, since: int) -> None:
        """Sign nothing; say why, once per reason, in the log and in an alert."""
        reason = (
            f"the ledger no longer holds the checkpoint at seq {since} "
            f"(at seq {failure.first_bad_seq}: {failure.reason}); no checkpoint is signed"
        )
        if reason == self.refused:
            return
        self.refused = reason
        log.error(reason, extra={"node": self.node_id, "checkpoints": str(self.path)})

        def alert(txn: WriteTxn) -> None:
            open_alert(
                txn,
                (),
                workspace=RUNTIME_WORKSPACE,
                alert_type="ledger_checkpoint",
                severity="error",
                subject_type="ledger",
                subject_id=str(failure.first_bad_seq),
                dedupe="ledger:checkpoint",
                message=reason,
                data={"checkpointed_seq": since, "bad_seq": failure.first_bad_seq},
                actor=f"{self.node_id}:checkpoints",
            )

        await self.writer.submit(alert)


async def start_checkpointer(
    db: Database,
    writer: Writer,
    settings: LedgerConfig,
    state_dir: Path,
    node_id: str,
    targets: Sequence[Target] = (),
) -> Checkpointer | None:
    """The node's checkpointer, started with its key (made on the node's first start); None
    when checkpoints are turned off.

    Raises:
        KeyFileError: the key file is not a private Ed25519 key only its owner reads.
    """
    if not settings.checkpoints:
        return None
    key = await asyncio.to_thread(load_or_create_key, settings.key_path(state_dir))
    checkpointer = Checkpointer(
        db,
        writer,
        key,
        node_id=node_id,
        path=settings.checkpoint_path(state_dir),
        every=settings.checkpoint_every,
        interval_s=settings.checkpoint_interval_s,
        witness=next(
            (replace(t, events=(WITNESS_EVENT,)) for t in targets if t.name == settings.witness),
            None,
        ),
    )
    checkpointer.start()
    return checkpointer
