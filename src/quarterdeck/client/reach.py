"""How a client reaches Quarterdeck: the one place that decides whether it talks to a running
daemon's control API or, with no daemon, to the database itself.

The address, first found wins:

1. one the caller names (``--api URL`` on the command line: TCP, with a bearer token from
   ``QUARTERDECK_TOKEN`` or a token file);
2. ``QUARTERDECK_API`` in the environment: a socket path or an ``http(s)://`` URL (a
   ``command``-lane agent finds its agents' socket there, with ``QUARTERDECK_SESSION_TOKEN``);
3. the state directory's socket, ``<state-dir>/quarterdeck.sock``.

The first two are *named*: when nothing answers there, that is an error, never a quiet turn to
the database. The third is found: a daemon serves it when something accepts a connection on
it. With no daemon, only reads and maintenance go to the database; commands are refused
(:func:`no_daemon_message`), so that nothing is queued where no daemon reads it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from quarterdeck.client.api import ControlClient
from quarterdeck.runtime.lanes.containment import API_ENV, SESSION_CREDENTIAL_ENV
from quarterdeck.runtime.listeners import default_socket_path

TOKEN_ENV: Final = "QUARTERDECK_TOKEN"
"""A supervisor's bearer token for ``--api URL`` (a ``qdt_...`` from ``token create``)."""
START_HINT: Final = "start one with 'quarterdeck run --headless'"


class ReachError(Exception):
    """A named address cannot be used (no token for TCP, or a malformed address)."""


@dataclass(frozen=True, slots=True)
class ApiAddress:
    """Where a daemon's control API is (a Unix socket, or a URL with a bearer token), and
    whether it was named (an error when nothing answers) or only found."""

    socket_path: Path | None = None
    url: str | None = None
    token: str | None = None
    named: bool = False

    @property
    def where(self) -> str:
        """The address as a person reads it."""
        return self.url if self.url is not None else str(self.socket_path)

    def client(self, timeout_s: float = 30.0, *, read_only: bool = False) -> ControlClient:
        """A client of this address (open it with ``async with``); ``read_only``: the daemon
        refuses it anything but reads."""
        return ControlClient(
            self.socket_path if self.url is None else None, url=self.url, token=self.token,
            timeout_s=timeout_s, read_only=read_only,
        )  # fmt: skip

    def answers(self) -> bool:
        """Whether something accepts connections here (a URL is taken on trust: the request
        says whether it answers)."""
        if self.socket_path is None:
            return True
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(self.socket_path))
        except OSError:
            return False
        finally:
            probe.close()
        return True


def api_address(
    state_dir: Path | None,
    *,
    url: str | None = None,
    token_file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> ApiAddress | None:
    """The control API a client should use: named (``url``, else ``QUARTERDECK_API``), else
    the state directory's socket when a daemon answers there; None when there is none.

    Raises:
        ReachError: ``url`` is not http(s), has no token, or the token file cannot be read.
    """
    env = os.environ if environ is None else environ
    if url is not None:
        if not url.startswith(("http://", "https://")):
            raise ReachError(f"--api {url!r}: expected an http:// or https:// URL")
        token = _read_token(token_file) if token_file else env.get(TOKEN_ENV)
        if not token:
            raise ReachError(f"--api {url}: give a token ({TOKEN_ENV} or --token-file FILE)")
        return ApiAddress(url=url.rstrip("/"), token=token.strip(), named=True)
    named = env.get(API_ENV)
    if named:
        token = env.get(SESSION_CREDENTIAL_ENV) or env.get(TOKEN_ENV) or None
        if named.startswith(("http://", "https://")):
            return ApiAddress(url=named.rstrip("/"), token=token, named=True)
        return ApiAddress(socket_path=Path(named), token=token, named=True)
    if state_dir is None:
        return None
    found = ApiAddress(socket_path=default_socket_path(state_dir))
    return found if found.answers() else None


def state_dir_of(url: str) -> Path | None:
    """The state directory of a SQLite database URL or file (its folder); None for another
    database (PostgreSQL: name the API, or use the state directory)."""
    for prefix in ("sqlite+aiosqlite:///", "sqlite:///"):
        if url.startswith(prefix):
            url = url.removeprefix(prefix)
            break
    else:
        if "://" in url:
            return None
    return Path(url).parent


def no_daemon_message(state_dir: Path) -> str:
    """Why a command was not sent: no daemon answers on the state directory's socket."""
    return (
        f"no daemon is running on {state_dir} (nothing answers on "
        f"{default_socket_path(state_dir)}): {START_HINT} there, or name one with --api URL; "
        "the command was not sent"
    )


def _read_token(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ReachError(f"--token-file {path}: {exc}") from None
