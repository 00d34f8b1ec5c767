"""The token commands: ``token create`` (a bearer token for a remote supervisor, printed once),
``token ls`` and ``token revoke``.

``create`` makes the token here, in this process: only its id and its secret's SHA-256 travel,
in a ``token.create`` command envelope that a running runtime applies (as it does the
supervision commands: ``--wait``, exit 1 when refused, 3 when not applied in time). The token
is printed alone on stdout, a summary on stderr. ``revoke`` sends ``token.revoke`` and prints
its result as JSON. ``ls`` reads the database: every token with its state, never a hash.
A mistake in the flags (a bad ``--expires``, ``--principal`` or ``--role``) exits 2 naming it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import IO, Any

from pydantic import ValidationError

from quarterdeck.cli.common import UsageError, open_existing_database, print_json
from quarterdeck.domain.clock import utc_now
from quarterdeck.domain.commands import Command, TokenCreate, TokenRevoke, problems_of
from quarterdeck.domain.tokens import ID_SHAPE, expiry, new_token

EXIT_NOT_APPLIED = 3
DEFAULT_WAIT_S = 10.0
_COLUMNS = ("id", "name", "role", "workspace", "created", "by", "expires", "revoked", "state")
_FLAGS = {"principal": "--principal", "role": "--role", "workspace": "--workspace"}


def add_token_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """``token create``, ``token ls`` and ``token revoke`` on the command line's subparsers."""
    token = commands.add_parser("token", parents=[common], help="bearer tokens for remote use")
    actions = token.add_subparsers(dest="token_command", metavar="ACTION", parser_class=type(token))
    actions.required = True
    create = actions.add_parser(
        "create", parents=[common], help="a token for a principal (printed once, stored hashed)"
    )
    create.add_argument("--principal", required=True, metavar="NAME", help="token:NAME")
    create.add_argument("--role", required=True, metavar="ROLE", help="the role it carries")
    create.add_argument(
        "--expires", metavar="WHEN", help="a duration (30m, 12h, 7d) or an ISO-8601 instant"
    )
    create.add_argument("--wait", type=_seconds, default=DEFAULT_WAIT_S, metavar="SECONDS")
    listing = actions.add_parser("ls", parents=[common], help="every token (never its secret)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    revoke = actions.add_parser("revoke", parents=[common], help="revoke a token")
    revoke.add_argument("id", metavar="ID", help="the token's id (token ls)")
    revoke.add_argument("--wait", type=_seconds, default=DEFAULT_WAIT_S, metavar="SECONDS")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


async def token_command(args: argparse.Namespace, out: IO[str]) -> int:
    """Run ``token create``, ``token ls`` or ``token revoke``."""
    if args.all_workspaces:
        raise UsageError("token commands take no --all-workspaces")
    if args.token_command == "ls":
        return await _list(args, out)
    if args.token_command == "revoke":
        if not ID_SHAPE.fullmatch(args.id):
            raise UsageError(f"token revoke: ID must be 12 lower-case hex digits, got {args.id!r}")
        result = await _send(args, TokenRevoke(token_id=args.id))
        return _answer(result, out) if result is not None else EXIT_NOT_APPLIED
    return await _create(args, out)


async def _create(args: argparse.Namespace, out: IO[str]) -> int:
    made = new_token()
    try:
        expires_at = None if args.expires is None else expiry(args.expires, utc_now())
    except ValueError as exc:
        raise UsageError(f"--expires: {exc}") from None
    try:
        command = TokenCreate(
            token_id=made.id, principal=args.principal, role=args.role,
            secret_hash=made.secret_hash, workspace=args.workspace, expires_at=expires_at,
        )  # fmt: skip
    except ValidationError as exc:
        raise UsageError("; ".join(_flag_problems(problems_of(exc)))) from None
    result = await _send(args, command)
    what = (
        f"token {made.id} for token:{args.principal} (role {args.role}, "
        f"{'workspace ' + args.workspace if args.workspace else 'every workspace'}, "
        f"{'expires ' + expires_at if expires_at else 'no expiry'})"
    )
    if result is None:
        out.write(made.text + "\n")
        sys.stderr.write(f"quarterdeck: {what} works once a runtime applies the command\n")
        return EXIT_NOT_APPLIED
    if not result.get("ok"):
        return _answer(result, out)
    out.write(made.text + "\n")
    sys.stderr.write(f"quarterdeck: {what}: shown only this once\n")
    return 0


def _flag_problems(problems: Sequence[str]) -> list[str]:
    """``payload.role: ...`` as ``--role: ...``."""
    named = []
    for problem in problems:
        field, _, message = problem.removeprefix("payload.").partition(": ")
        named.append(f"{_FLAGS.get(field, field)}: {message}")
    return named


async def _send(args: argparse.Namespace, command: Command) -> dict[str, Any] | None:
    """Give ``command`` to the running daemon; its result (see
    :func:`~quarterdeck.cli.daemon.give_command`: refused when no daemon runs)."""
    from quarterdeck.cli.daemon import give_command

    return await give_command(args, command)


def _answer(result: dict[str, Any], out: IO[str]) -> int:
    print_json(result, out)
    if result.get("ok"):
        return 0
    for error in result.get("errors") or ["refused"]:
        sys.stderr.write(f"quarterdeck: refused: {error}\n")
    return 1


async def _list(args: argparse.Namespace, out: IO[str]) -> int:
    from quarterdeck.store.tokens import list_tokens

    db = await open_existing_database(args)
    try:
        async with db.read() as conn:
            tokens = await list_tokens(conn)
    finally:
        await db.dispose()
    now = utc_now()
    if args.json:
        for token in tokens:
            print_json({**asdict(token), "state": token.state(now)}, out)
        return 0
    rows = [
        [token.id, token.name, token.role, token.workspace or "*", token.created_at,
         token.created_by, token.expires_at or "-", token.revoked_at or "-", token.state(now)]
        for token in tokens
    ]  # fmt: skip
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(_COLUMNS)]
    for row in [[c.upper() for c in _COLUMNS], *rows]:
        out.write("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() + "\n")
    return 0
