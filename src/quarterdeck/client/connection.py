"""A client's connection to one Quarterdeck database, from another process: submitting
envelopes (each batch becomes receipts in one short transaction, which a runtime then
applies), sending commands and waiting for their results."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from quarterdeck.client.errors import CommandRejected, CommandTimeout
from quarterdeck.client.watch import ChangeWatch
from quarterdeck.domain.canonical import canonical_json
from quarterdeck.domain.commands import BaseCommand, Command
from quarterdeck.runtime.ingest import Ingestor
from quarterdeck.store.database import Database, open_database, sqlite_url
from quarterdeck.store.queries.outcomes import produced
from quarterdeck.store.receipts import IngestResult
from quarterdeck.store.writer import Writer

DEFAULT_WORKSPACE = "default"


class Connection:
    """A connection to one Quarterdeck database for submitting envelopes and commands.

    Use as ``async with Connection(url) as conn: results = await conn.submit([...])``.
    ``workspace`` is where :meth:`command` sends its envelopes.
    """

    def __init__(self, url: str, *, workspace: str = DEFAULT_WORKSPACE) -> None:
        self.url = url
        self.workspace = workspace
        self._db: Database | None = None
        self._writer: Writer | None = None
        self._ingestor: Ingestor | None = None
        self._watch: ChangeWatch | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_state_dir(
        cls, state_dir: str | os.PathLike[str], *, workspace: str = DEFAULT_WORKSPACE
    ) -> Self:
        """A connection to the database in a runtime's state directory (``<dir>/quarterdeck.db``)."""
        return cls(sqlite_url(Path(state_dir)), workspace=workspace)

    async def __aenter__(self) -> Self:
        self._db = await open_database(self.url)
        self._writer = Writer(self._db)
        self._writer.start()
        self._ingestor = Ingestor(self._writer)
        self._loop = asyncio.get_running_loop()
        return self

    async def __aexit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        if self._watch is not None:
            await self._watch.close()
        if self._writer is not None:
            await self._writer.stop()
        if self._db is not None:
            await self._db.dispose()
        self._db = self._writer = self._ingestor = self._watch = self._loop = None

    @property
    def is_open(self) -> bool:
        """Whether the connection is open (inside its ``async with``)."""
        return self._ingestor is not None

    def usable_here(self) -> bool:
        """Whether the connection is open on the event loop that is running now."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        return self.is_open and self._loop is loop

    async def submit(
        self, envelopes: Sequence[Mapping[str, Any] | bytes | str]
    ) -> list[IngestResult]:
        """Record each envelope durably; one result per envelope, in order.

        Raises:
            RuntimeError: the client is not open.
        """
        if self._ingestor is None:
            raise RuntimeError("the client is not open: use 'async with Client(url)'")
        return await self._ingestor.ingest(envelopes)

    async def send_command(
        self, payload: Command | Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> IngestResult:
        """Record one command envelope in this connection's workspace: a typed command of
        :mod:`quarterdeck.domain.commands`, or its wire form ``{"command": NAME, ...}`` (sent
        as it is; the runtime reads it). The result's ``receipt`` stands for it: the original
        one, with status ``duplicate``, when ``idempotency_key`` was used before (its
        ``errors`` then note whether the content differed).

        Raises:
            TypeError: the payload is not JSON.
            CommandRejected: the envelope is not valid (every reason is listed).
            RuntimeError: the client is not open.
        """
        body = payload.to_payload() if isinstance(payload, BaseCommand) else dict(payload)
        canonical_json(body)  # TypeError/ValueError here, not a rejected receipt
        envelope = {
            "idempotency_key": idempotency_key or f"cmd:{uuid.uuid4()}",
            "workspace": self.workspace,
            "kind": "command",
            "payload": body,
        }
        [result] = await self.submit([envelope])
        if result.status == "rejected":
            raise CommandRejected(list(result.errors), receipt=result.receipt)
        return result

    async def command_result(
        self, receipt: str, *, timeout_s: float | None = None, poll_s: float = 0.05
    ) -> dict[str, Any]:
        """Wait until a runtime has applied the command of ``receipt``; return its result
        (``{"ok": true, ...}`` or, refused, ``{"ok": false, "errors": [...]}``).

        Raises:
            CommandTimeout: no runtime applied it within ``timeout_s`` (None: wait forever);
                it stays recorded and a runtime applies it when one runs.
            CommandRejected: the receipt produced something other than a command result
                (its idempotency key belongs to a task or an event).
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + max(0.0, timeout_s)
        watch = self.watch()

        feed = await watch.feed()
        found = await watch.wait_for(
            lambda: produced(feed, receipt), deadline=deadline, poll_s=poll_s
        )
        if found is None:
            raise CommandTimeout(receipt, timeout_s)
        if found.type != "command":
            raise CommandRejected(
                [f"idempotency_key: already used for a {found.type}, not a command"],
                receipt=receipt,
            )
        result = json.loads(found.id)
        return dict(result) if isinstance(result, dict) else {"ok": False, "errors": [result]}

    async def command(
        self,
        payload: Command | Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        timeout_s: float | None = 10.0,
        poll_s: float = 0.05,
    ) -> dict[str, Any]:
        """Send one command and wait for a runtime to apply it: :meth:`send_command` then
        :meth:`command_result`. A refused command returns its result (``ok`` false)."""
        sent = await self.send_command(payload, idempotency_key=idempotency_key)
        return await self.command_result(sent.receipt, timeout_s=timeout_s, poll_s=poll_s)

    def watch(self) -> ChangeWatch:
        """The connection's change watch (opened on first use).

        Raises:
            RuntimeError: the client is not open.
        """
        if self._db is None:
            raise RuntimeError("the client is not open: use 'async with Client(url)'")
        if self._watch is None:
            self._watch = ChangeWatch(self._db)
        return self._watch
