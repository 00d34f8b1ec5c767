"""Submitting envelopes from another process: each batch becomes receipts in one short
transaction, which the runtime then applies."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from quarterdeck.runtime.ingest import Ingestor
from quarterdeck.store.database import Database, open_database
from quarterdeck.store.receipts import IngestResult
from quarterdeck.store.writer import Writer


class Client:
    """A connection to one Quarterdeck database for submitting envelopes.

    Use as ``async with Client(url) as client: results = await client.submit([...])``.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._db: Database | None = None
        self._writer: Writer | None = None
        self._ingestor: Ingestor | None = None

    async def __aenter__(self) -> Client:
        self._db = await open_database(self.url)
        self._writer = Writer(self._db)
        self._writer.start()
        self._ingestor = Ingestor(self._writer)
        return self

    async def __aexit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        if self._writer is not None:
            await self._writer.stop()
        if self._db is not None:
            await self._db.dispose()
        self._db = self._writer = self._ingestor = None

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
