"""Webhook credentials and signatures: each webhook's signing secret, read from the environment
variable its configuration names when the runtime starts, and the ``Quarterdeck-Signature``
header every delivery carries (docs/specs/supervision.md, "Signatures").

The value is ``t=<unix seconds>,v1=<hex HMAC-SHA256>``, the HMAC keyed with the secret (the
variable's value as UTF-8 bytes, exactly) over ``"<unix seconds>."`` followed by the body's
bytes, as Stripe does. Each attempt is signed afresh with the time it is sent.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from typing import Final

from quarterdeck.runtime.config import ConfigError, Webhook

SIGNATURE_HEADER: Final = "Quarterdeck-Signature"
"""The header that carries a delivery's signature."""


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """The signature header's value for ``body`` sent at ``timestamp`` (unix seconds)."""
    signed = f"{timestamp}.".encode("ascii") + body
    return f"t={timestamp},v1={hmac.new(secret, signed, hashlib.sha256).hexdigest()}"


def secret_problems(webhooks: Sequence[Webhook], environ: Mapping[str, str]) -> list[str]:
    """Why the signing secrets of ``webhooks`` cannot be read from ``environ``: a signed
    webhook without ``secret_env``, or whose variable is unset or empty."""
    problems: list[str] = []
    for index, hook in enumerate(webhooks):
        where = f"webhooks[{index}].secret_env"
        if not hook.signed:
            continue
        if hook.secret_env is None:
            problems.append(f"{where}: is required for webhook {hook.name!r} (or signed = false)")
        elif hook.secret_env not in environ:
            problems.append(
                f"{where}: the environment variable {hook.secret_env} (the signing secret of "
                f"webhook {hook.name!r}) is not set"
            )
        elif not environ[hook.secret_env]:
            problems.append(
                f"{where}: the environment variable {hook.secret_env} (the signing secret of "
                f"webhook {hook.name!r}) is empty"
            )
    return problems


def webhook_secrets(
    webhooks: Sequence[Webhook], environ: Mapping[str, str], source: str = "environment"
) -> dict[str, bytes]:
    """Each signed webhook's secret by name (an unsigned webhook has none).

    Raises:
        ConfigError: a secret cannot be read (:func:`secret_problems`), every problem listed.
    """
    if problems := secret_problems(webhooks, environ):
        raise ConfigError(source, problems)
    return {
        hook.name: environ[hook.secret_env].encode("utf-8")
        for hook in webhooks
        if hook.signed and hook.secret_env is not None
    }
