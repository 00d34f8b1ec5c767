"""Group commit for many callers: items gathered from many tasks are applied in one writer
operation, and each caller gets its own item's result."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

from quarterdeck.store.writer import Writer, WriteTxn

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


class Batch(Generic[ItemT, ResultT]):
    """Gathers items from many tasks and applies them in one writer operation: while the
    writer commits, new items accumulate, and the next operation takes them all."""

    def __init__(
        self,
        writer: Writer,
        apply: Callable[[WriteTxn, list[ItemT]], list[ResultT]],
        *,
        concurrent: bool = False,
    ) -> None:
        self._writer = writer
        self._apply = apply
        self._concurrent = concurrent
        self._items: list[tuple[ItemT, asyncio.Future[ResultT]]] = []
        self._scheduled = False

    async def submit(self, item: ItemT) -> ResultT:
        """Queue ``item``; return its result once the operation holding it committed."""
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        self._items.append((item, future))
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        taken: list[tuple[ItemT, asyncio.Future[ResultT]]] | None = None

        def op(txn: WriteTxn) -> list[ResultT]:
            nonlocal taken
            if taken is None:  # the first run takes the items; a retried run reuses them
                taken, self._items, self._scheduled = self._items, [], False
            return self._apply(txn, [item for item, _ in taken])

        try:
            results = await self._writer.submit(op, concurrent=self._concurrent)
        except BaseException as exc:
            pending = taken if taken is not None else self._items
            if taken is None:
                self._items, self._scheduled = [], False
            for _item, future in pending:
                if not future.done():
                    future.set_exception(
                        exc if isinstance(exc, Exception) else RuntimeError(str(exc))
                    )
            if not isinstance(exc, Exception):
                raise
            return
        assert taken is not None
        for (_item, future), result in zip(taken, results, strict=True):
            if not future.done():
                future.set_result(result)
