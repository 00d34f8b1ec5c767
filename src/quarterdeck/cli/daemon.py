"""How the command line reaches a running daemon: the control API its options and environment
name (decided by :mod:`quarterdeck.client.reach`), and giving one command through it.

A command is given only to a daemon: with none running it is refused (:class:`NotSent`, exit
3) instead of being queued in the database. The daemon records who gives it (the kernel's
name for the caller on the socket, the token's principal over TCP): nothing here names an
actor.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from quarterdeck.cli.common import UsageError, state_directory, workspace
from quarterdeck.client.api import ControlError, ControlRefused, ControlUnavailable
from quarterdeck.client.reach import (
    START_HINT,
    ApiAddress,
    ReachError,
    api_address,
    no_daemon_message,
)
from quarterdeck.domain.commands import BaseCommand, Command

EXIT_NOT_SENT = 3
MIN_TIMEOUT_S = 1.0
"""The shortest a command request waits for the daemon's answer (``--wait 0`` included)."""


class NotSent(Exception):
    """The command could not be given: no daemon runs, or it did not answer (exit 3)."""


def daemon_address(args: argparse.Namespace) -> ApiAddress | None:
    """The control API the options name (``--api``), else ``QUARTERDECK_API``, else the state
    directory's socket when a daemon answers there; None when no daemon runs.

    Raises:
        UsageError: ``--api`` is malformed or has no token.
    """
    try:
        return api_address(
            state_directory(args), url=getattr(args, "api", None),
            token_file=getattr(args, "token_file", None),
        )  # fmt: skip
    except ReachError as exc:
        raise UsageError(str(exc)) from None


async def give_command(
    args: argparse.Namespace, command: Command | Mapping[str, Any]
) -> dict[str, Any]:
    """Give ``command`` in the options' workspace to the running daemon and return its result
    (``ok`` false when the daemon refused it, the reason in ``errors``).

    Raises:
        NotSent: no daemon runs, or it did not answer within ``--wait``.
        UsageError: the daemon found the request itself malformed.
    """
    address = daemon_address(args)
    if address is None:
        raise NotSent(no_daemon_message(state_directory(args)))
    payload = command.to_payload() if isinstance(command, BaseCommand) else dict(command)
    payload.pop("actor", None)
    timeout_s = max(float(getattr(args, "wait", 0.0) or 0.0), MIN_TIMEOUT_S)
    try:
        async with address.client(timeout_s=timeout_s) as api:
            return await api.command(
                workspace(args), payload, getattr(args, "idempotency_key", None)
            )
    except ControlRefused as exc:
        return {"ok": False, "errors": [exc.message]}
    except ControlUnavailable as exc:
        if exc.message.startswith("no daemon is listening"):
            raise NotSent(f"{exc.message}: {START_HINT}; the command was not sent") from None
        raise NotSent(
            f"{exc.message} (it may have applied the command: give it again with the same"
            " --idempotency-key to be sure)"
        ) from None
    except ControlError as exc:
        if exc.status == 400:
            raise UsageError(f"the daemon refused the request: {exc.message}") from None
        raise
