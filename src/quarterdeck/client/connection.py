"""A client's connection to Quarterdeck from another process: submitting envelopes and giving
commands.

When a daemon runs (its control API found as :mod:`quarterdeck.client.reach` decides, or
given as ``daemon``), everything goes through its API: envelopes to ``POST /v1/envelopes``,
commands to ``POST /v1/commands`` (the daemon records who gives them). Otherwise the
connection writes to the database: each batch of envelopes becomes receipts in one short
transaction, which a runtime applies when it runs, and a command is an envelope whose result
is waited for on the change feed. Nobody authenticates what is written into the database: a
command sent that way is an unauthenticated agent's, so it may ask for an approval
(``approval.request``) and any other command is refused (code ``unauthenticated``)."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from quarterdeck.client.api import ControlClient, ControlError, ControlRefused
from quarterdeck.client.errors import CommandRejected, CommandTimeout
from quarterdeck.client.reach import ApiAddress, api_address, state_dir_of
from quarterdeck.client.watch import ChangeWatch
from quarterdeck.domain.canonical import canonical_json
from quarterdeck.domain.commands import BaseCommand, Command
from quarterdeck.domain.envelope import decode_line
from quarterdeck.runtime.ingest import Ingestor
from quarterdeck.store.database import Database, open_database, sqlite_url
from quarterdeck.store.queries.outcomes import produced
from quarterdeck.store.receipts import IngestResult
from quarterdeck.store.writer import Writer

DEFAULT_WORKSPACE = "default"


class Connection:
    """A connection to one Quarterdeck database for submitting envelopes and commands.

    Use as ``async with Connection(url) as conn: results = await conn.submit([...])``.
    ``workspace`` is where :meth:`command` sends its envelopes. ``daemon``: the control API
    to use; by default the one :func:`~quarterdeck.client.reach.api_address` finds for the
    state directory of ``url`` (a SQLite file's folder), if a daemon answers there;
    ``find_daemon=False`` writes to the database whatever runs.
    """

    def __init__(
        self,
        url: str,
        *,
        workspace: str = DEFAULT_WORKSPACE,
        daemon: ApiAddress | None = None,
        find_daemon: bool = True,
    ) -> None:
        self.url = url
        self.workspace = workspace
        self._daemon = daemon
        self._find_daemon = find_daemon
        self.api: ControlClient | None = None
        """The daemon's control API while the connection goes through it (else None)."""
        self._db: Database | None = None
        self._writer: Writer | None = None
        self._ingestor: Ingestor | None = None
        self._watch: ChangeWatch | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_state_dir(
        cls, state_dir: str | os.PathLike[str], *, workspace: str = DEFAULT_WORKSPACE
    ) -> Self:
        """A connection to the runtime of a state directory: its daemon's control API when
        one runs, else the database in it (``<dir>/quarterdeck.db``)."""
        return cls(sqlite_url(Path(state_dir)), workspace=workspace)

    async def __aenter__(self) -> Self:
        address = self._daemon
        if address is None and self._find_daemon:
            address = api_address(state_dir_of(self.url))
        if address is not None:
            self.api = address.client()
            self._loop = asyncio.get_running_loop()
            return self
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
        if self.api is not None:
            await self.api.close()
            self.api = None
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
        return self._ingestor is not None or self.api is not None

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

        Through the daemon, each envelope must be a JSON object (bytes and text are decoded
        here) and not a command (see :meth:`command`).

        Raises:
            RuntimeError: the client is not open.
            ValueError: through the daemon: an input is not a JSON object.
            ControlError: the daemon refused the envelopes (a workspace out of reach).
        """
        if self.api is not None:
            return await self.api.submit([_as_object(e) for e in envelopes])
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

        This is the database path (through a daemon, use :meth:`command`): nobody
        authenticates the sender, so the runtime applies it for an unauthenticated agent and
        refuses any command but ``approval.request``.

        Raises:
            TypeError: the payload is not JSON.
            CommandRejected: the envelope is not valid (every reason is listed).
            RuntimeError: the client is not open, or goes through a daemon.
        """
        if self.api is not None:
            raise RuntimeError("a daemon runs: commands go through its control API (use command())")
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
        """Give one command and return its result once applied: through the daemon's API,
        else :meth:`send_command` then :meth:`command_result`. A refused command returns its
        result (``ok`` false).

        Raises:
            CommandRejected: the command is malformed (through the daemon: the request).
            ControlUnavailable: the daemon did not answer.
        """
        if self.api is not None:
            return await self._give(payload, idempotency_key)
        sent = await self.send_command(payload, idempotency_key=idempotency_key)
        return await self.command_result(sent.receipt, timeout_s=timeout_s, poll_s=poll_s)

    async def _give(
        self, payload: Command | Mapping[str, Any], idempotency_key: str | None
    ) -> dict[str, Any]:
        """One command through the daemon's API."""
        assert self.api is not None
        body = payload.to_payload() if isinstance(payload, BaseCommand) else dict(payload)
        canonical_json(body)
        try:
            return await self.api.command(self.workspace, body, idempotency_key)
        except ControlRefused as exc:
            return {"ok": False, "errors": [exc.message]}
        except ControlError as exc:
            if exc.status == 400:
                raise CommandRejected([exc.message]) from None
            raise

    def watch(self) -> ChangeWatch:
        """The connection's change watch (opened on first use).

        Raises:
            RuntimeError: the client is not open, or goes through a daemon.
        """
        if self.api is not None:
            raise RuntimeError("a daemon runs: the client reads through its control API")
        if self._db is None:
            raise RuntimeError("the client is not open: use 'async with Client(url)'")
        if self._watch is None:
            self._watch = ChangeWatch(self._db)
        return self._watch


def _as_object(envelope: Mapping[str, Any] | bytes | str) -> dict[str, Any]:
    """An envelope as the JSON object the control API takes.

    Raises:
        ValueError: it is not a JSON object.
    """
    value = decode_line(envelope) if isinstance(envelope, bytes | str) else envelope
    if not isinstance(value, Mapping):
        raise ValueError("the control API takes envelopes as JSON objects")
    return dict(value)
