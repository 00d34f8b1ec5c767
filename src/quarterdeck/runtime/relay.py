"""The outbox relay: posts due notifications to their webhooks, retries failures with backoff
and dead-letters a notification after its webhook's ``max_attempts``.

A row names its webhook; the URL and signing secret come from the configuration the relay was
started with (the secrets from the environment, :mod:`quarterdeck.runtime.webhooks`), never
from the row. A row whose webhook is no longer configured is dead-lettered, naming why.

Delivery is at least once: every attempt of a notification carries the same
``Idempotency-Key`` (the notification id) so a receiver can drop repeats; each attempt is
signed afresh (``Quarterdeck-Signature``) with the time it is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping, Sequence
from datetime import timedelta

import httpx

from quarterdeck.domain.clock import Clock, format_instant, utc_now
from quarterdeck.domain.tasks import backoff_delay
from quarterdeck.runtime.config import Webhook
from quarterdeck.runtime.webhooks import SIGNATURE_HEADER, signature, webhook_secrets
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
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """``environ`` holds the webhooks' secrets (None: the process's environment).

        Raises:
            ConfigError: a signed webhook's secret cannot be read, every problem listed.
        """
        self._writer = writer
        self._webhooks = {webhook.name: webhook for webhook in webhooks}
        self._secrets = webhook_secrets(webhooks, os.environ if environ is None else environ)
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

    async def _deliver(self, row: Due) -> None:
        webhook = self._webhooks.get(row.webhook)
        try:
            if webhook is None:
                await self._unconfigured(row)
                return
            attempts = row.attempts + 1
            async with self._bound:
                error = await self._post(row, webhook)
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

    async def _unconfigured(self, row: Due) -> None:
        """Dead-letter a notification whose webhook this node's configuration no longer has:
        there is nowhere to send it (no attempt is counted)."""
        error = f"no webhook named {row.webhook!r} in the configuration"
        now = format_instant(self._clock())
        if await self._writer.submit(
            lambda txn: mark_failed(txn, row.id, row.attempts, error, now, True, actor=self._actor)
        ):
            self.dead += 1
            log.warning("notification %s dead: %s", row.id, error)

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
        """Post the notification once, signed when the webhook has a secret; None when the
        receiver accepted it, else the error."""
        body = row.payload.encode()
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": row.id,
            "User-Agent": USER_AGENT,
        }
        secret = self._secrets.get(webhook.name)
        if secret is not None:
            headers[SIGNATURE_HEADER] = signature(secret, int(self._clock().timestamp()), body)
        try:
            async with asyncio.timeout(webhook.timeout_s):
                response = await self._http().post(
                    webhook.url,
                    content=body,
                    headers=headers,
                    timeout=httpx.Timeout(webhook.timeout_s),
                )
        except (TimeoutError, httpx.TimeoutException):
            return f"timed out after {webhook.timeout_s:g} s"
        except Exception as exc:
            # The error is stored and may reach the ledger: never with the URL (a credential
            # for many receivers).
            detail = (str(exc) or "request failed").replace(webhook.url, "<the webhook's URL>")
            return f"{type(exc).__name__}: {detail}"
        if 200 <= response.status_code < 300:
            return None
        snippet = response.text[:_SNIPPET].strip()
        return f"HTTP {response.status_code}" + (f": {snippet}" if snippet else "")
