"""Bearer tokens: their text form, the hash that is stored instead of them, and how one is read
back. A token is ``qdt_<id>_<secret>``: ``id`` names the stored row (shown by ``token ls``),
``secret`` is 32 random bytes; only the secret's SHA-256 is ever stored or recorded, so a copy of
the database or the ledger grants nothing. Tokens are created by the client that asks for one
(the secret never travels to the daemon) and shown once."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Final

PREFIX: Final = "qdt_"
_SHAPE: Final = re.compile(r"qdt_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
NAME_SHAPE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""What a token's principal name may be (it appears as ``token:<name>`` on the ledger)."""


@dataclass(frozen=True, slots=True)
class NewToken:
    """A freshly made token: its text (shown once) and what is stored of it."""

    id: str
    text: str
    secret_hash: str


def new_token() -> NewToken:
    """Make a token from fresh randomness."""
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return NewToken(token_id, f"{PREFIX}{token_id}_{secret}", hash_secret(secret))


def hash_secret(secret: str) -> str:
    """The stored form of a token's secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def split_token(text: str) -> tuple[str, str] | None:
    """A token's id and secret, or None when ``text`` is not shaped like a token."""
    match = _SHAPE.fullmatch(text.strip())
    return None if match is None else (match.group(1), match.group(2))


def secret_matches(secret: str, stored_hash: str) -> bool:
    """Whether ``secret`` hashes to ``stored_hash``, in time that does not depend on where
    they differ."""
    return hmac.compare_digest(hash_secret(secret), stored_hash)
