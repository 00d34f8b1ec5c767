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
from datetime import datetime, timedelta
from typing import Final

from quarterdeck.domain.clock import format_instant, parse_instant

PREFIX: Final = "qdt_"
_SHAPE: Final = re.compile(r"qdt_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
ID_SHAPE: Final = re.compile(r"[0-9a-f]{12}")
"""A token's id (``token ls`` shows it; ``token revoke`` takes it)."""
HASH_SHAPE: Final = re.compile(r"[0-9a-f]{64}")
"""A secret's stored form: its SHA-256 as lower-case hex."""
NAME_SHAPE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""What a token's principal name and its role may be (the name appears as ``token:<name>``
on the ledger)."""
AGENT_ROLE: Final = "agent"
"""The role of an agent token (``quarterdeck integrate`` issues one to a hook): it makes its
holder the agent ``agent:token/<name>`` pinned to the token's workspace, which may ask and
never decide; it carries no role at all."""
_DURATION: Final = re.compile(r"([0-9]{1,9})([smhdw])")
_UNIT_S: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


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


def is_instant(text: object) -> bool:
    """Whether ``text`` is an instant as the store writes them (fixed-width UTC text), so that
    instants compare as text."""
    if not isinstance(text, str):
        return False
    try:
        return format_instant(parse_instant(text)) == text
    except (ValueError, OverflowError):
        return False


def expiry(text: str, now: datetime) -> str:
    """When a token given ``--expires text`` at ``now`` expires, as instant text: ``text`` is
    a duration (``90s``, ``30m``, ``12h``, ``7d``, ``2w``) or an ISO-8601 instant with a time
    zone (``2027-01-31T12:00:00Z``), later than ``now``.

    Raises:
        ValueError: naming what is wrong with ``text``.
    """
    given = text.strip()
    duration = _DURATION.fullmatch(given)
    try:
        if duration is not None:
            seconds = int(duration.group(1)) * _UNIT_S[duration.group(2)]
            if seconds == 0:
                raise ValueError(f"{text!r} is no time at all: give a duration greater than 0")
            return format_instant(now + timedelta(seconds=seconds))
        if given.isdigit():
            raise ValueError(f"{text!r} has no unit: give s, m, h, d or w (30m, 12h, 7d)")
        if not given[:1].isdigit():
            raise ValueError(
                f"expected a duration such as 30m, 12h or 7d, or an ISO-8601 instant such as "
                f"2027-01-31T12:00:00Z, got {text!r}"
            )
        try:
            instant = parse_instant(given)
        except ValueError as exc:
            raise ValueError(
                f"{text!r} is not an ISO-8601 instant with a time zone: {exc}"
            ) from None
        if instant <= now:
            raise ValueError(f"{text!r} is in the past (it is {format_instant(now)} now)")
        return format_instant(instant)
    except OverflowError:
        raise ValueError(f"{text!r} is too far in the future") from None
