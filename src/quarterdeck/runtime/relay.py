"""The outbox relay: posts due notifications to their webhooks, retries failures with backoff
and dead-letters a notification after its webhook's ``max_attempts``.

Delivery is at least once: every attempt of a notification carries the same
``Idempotency-Key`` (the notification id) so a receiver can drop repeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import timedelta

import httpx

from quarterdeck.domain.clock import Clock, format_instant, utc_now
from quarterdeck.domain.tasks import backoff_delay
from quarterdeck.runtime.config import Webhook
from quarterdeck.store.outbox import Due, due, mark_delivered, mark_failed
from quarterdeck.store.writer import Writer, WriterClosed

log = logging.getLogger("quarterdeck.relay")

USER_AGENT = "quarterdeck"
_SNIPPET = 200


class Relay:
    """Delivers the outbox through the writer, a pass at a time or in a loop."""

    def __init__(
        self,
        writer: Writer,
        webhooks: Sequence[Webhook],
        clock: Clock = utc_now,
        client: httpx.AsyncClient | None = None,
        *,
        concurrency: int = 8,
        batch: int = 100,
        actor: str = "relay",
    ) -> None:
        self._writer = writer
        self._webhooks = {webhook.name: webhook for webhook in webhooks}
        self._clock = clock
        self._client = client
        self._owns_client = client is None
        self._bound = asyncio.Semaphore(max(1, concurrency))
        self._batch = batch
        self._actor = actor
        self.delivered = 0
        self.retried = 0
        self.dead = 0

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(follow_redirects=False)
        return self._client

    async def deliver_due(self) -> int:
        """Attempt every due notification once (a batch at most); return how many were
        attempted. Delivery failures are recorded, not raised.

        Raises:
            WriterClosed: the writer has stopped.
        """
        rows = await self._writer.submit(lambda txn: due(txn, self._batch))
        if rows:
            await asyncio.gather(*(self._deliver(row) for row in rows))
        return len(rows)

    async def run(self, stop: asyncio.Event, interval_s: float = 0.5) -> None:
        """Deliver due notifications every ``interval_s`` until ``stop`` is set (or the
        writer stops); errors are logged, never raised."""
        while not stop.is_set():
            attempted = 0
            try:
                attempted = await self.deliver_due()
            except WriterClosed:
                if not stop.is_set():
                    log.warning("notification relay stopped: the writer is closed")
                return
            except Exception:
                log.exception("notification delivery pass failed")
            if attempted >= self._batch:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)

    async def close(self) -> None:
        """Close the HTTP client if the relay created it."""
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    def _webhook(self, row: Due) -> Webhook:
        return self._webhooks.get(row.webhook) or Webhook(name=row.webhook, url=row.url)

    async def _deliver(self, row: Due) -> None:
        webhook = self._webhook(row)
        attempts = row.attempts + 1
        async with self._bound:
            error = await self._post(row, webhook)
        try:
            if error is None:
                await self._delivered(row, attempts)
            else:
                await self._failed(row, webhook, attempts, error)
        except WriterClosed:
            log.warning("notification %s: outcome not recorded, the writer is closed", row.id)
        except Exception:
            log.exception("notification %s: recording the outcome failed", row.id)

    async def _delivered(self, row: Due, attempts: int) -> None:
        if await self._writer.submit(
            lambda txn: mark_delivered(txn, row.id, attempts, actor=self._actor)
        ):
            self.delivered += 1

    async def _failed(self, row: Due, webhook: Webhook, attempts: int, error: str) -> None:
        dead = attempts >= webhook.max_attempts
        delay = backoff_delay(attempts, webhook.backoff_initial_s, webhook.backoff_max_s)
        next_attempt_at = format_instant(self._clock() + timedelta(seconds=delay))
        recorded = await self._writer.submit(
            lambda txn: mark_failed(
                txn, row.id, attempts, error, next_attempt_at, dead, actor=self._actor
            )
        )
        if not recorded:
            return
        if dead:
            self.dead += 1
            log.warning(
                "notification %s to %s dead after %d attempts: %s",
                row.id,
                row.webhook,
                attempts,
                error,
            )
        else:
            self.retried += 1
            log.info(
                "notification %s to %s failed (attempt %d, retry in %.2f s): %s",
                row.id,
                row.webhook,
                attempts,
                delay,
                error,
            )

    async def _post(self, row: Due, webhook: Webhook) -> str | None:
        """Post the notification once; None when the receiver accepted it, else the error."""
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": row.id,
            "User-Agent": USER_AGENT,
        }
        try:
            async with asyncio.timeout(webhook.timeout_s):
                response = await self._http().post(
                    row.url,
                    content=row.payload.encode(),
                    headers=headers,
                    timeout=httpx.Timeout(webhook.timeout_s),
                )
        except (TimeoutError, httpx.TimeoutException):
            return f"timed out after {webhook.timeout_s:g} s"
        except Exception as exc:
            detail = str(exc) or "request failed"
            return f"{type(exc).__name__}: {detail}"
        if 200 <= response.status_code < 300:
            return None
        snippet = response.text[:_SNIPPET].strip()
        return f"HTTP {response.status_code}" + (f": {snippet}" if snippet else "")
