"""Bearer tokens checked against the database at most once a second each.

Every request over TCP, and every hook's request, presents a token; looking it up costs a
database read, a large part of an auto-allowed tool call's added latency. A token found valid
is remembered for :data:`TOKEN_TTL_S` (never past its expiry), keyed by its SHA-256 so that no
secret is kept. A token revoked through this node is forgotten at once (the control server
calls :meth:`TokenCache.forget_all` after a ``token.revoke``); one revoked on another node
stops working here within :data:`TOKEN_TTL_S`. Unknown, wrong, expired and revoked tokens are
never remembered: each is looked up again, so nothing an attacker sends fills the cache.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Final

from quarterdeck.domain.authority import Principal
from quarterdeck.domain.clock import format_instant, utc_now
from quarterdeck.domain.tokens import hash_secret
from quarterdeck.store.tokens import TokenGrant

TOKEN_TTL_S: Final = 1.0
"""How long a token found valid is trusted without looking again (seconds)."""
TOKEN_CAPACITY: Final = 1_024
"""Tokens remembered at most (the oldest is forgotten first)."""

Lookup = Callable[[str], Awaitable[TokenGrant | None]]


class TokenCache:
    """Valid tokens, remembered for a short while (see the module's docstring)."""

    def __init__(
        self,
        lookup: Lookup,
        *,
        ttl_s: float = TOKEN_TTL_S,
        capacity: int = TOKEN_CAPACITY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup = lookup
        self._ttl_s = ttl_s
        self._capacity = capacity
        self._clock = clock
        self._entries: dict[str, tuple[Principal, float, str | None]] = {}
        self._generation = 0

    async def principal(self, token: str) -> Principal | None:
        """The principal ``token`` stands for, or None (unknown, wrong, expired, revoked)."""
        key = hash_secret(token)
        remembered = self._entries.get(key)
        if remembered is not None:
            principal, until, expires_at = remembered
            if self._clock() < until and (
                expires_at is None or format_instant(utc_now()) < expires_at
            ):
                return principal
            del self._entries[key]
        generation = self._generation
        grant = await self._lookup(token)
        if grant is None:
            return None
        if generation == self._generation:  # not forgotten while it was looked up
            while len(self._entries) >= self._capacity:
                del self._entries[next(iter(self._entries))]
            self._entries[key] = (grant.principal, self._clock() + self._ttl_s, grant.expires_at)
        return grant.principal

    def forget_all(self) -> None:
        """Forget every token (one was revoked): the next request of each looks again."""
        self._entries.clear()
        self._generation += 1

    def __len__(self) -> int:
        return len(self._entries)
