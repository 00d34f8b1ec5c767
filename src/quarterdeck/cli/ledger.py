"""``quarterdeck ledger``: ``verify`` the hash chain (and, with ``--checkpoints``, that it still
holds every signed head), ``export`` entries, ``prove`` that an entry is in the signed log, and
print the node's public ``key``. Exit 1 when the ledger is broken or nothing proves the entry."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import IO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from quarterdeck.cli.common import UsageError, print_json, state_directory, workspace_scope
from quarterdeck.domain.canonical import canonical_text
from quarterdeck.domain.checkpoints import (
    Checkpoint,
    check_proof,
    key_id_of,
    make_proof,
    parse_checkpoint_lines,
    public_hex,
)
from quarterdeck.domain.display import escape_controls
from quarterdeck.runtime.keys import KeyFileError, load_key, node_keys, read_trusted_keys
from quarterdeck.runtime.ledger_config import LedgerConfig
from quarterdeck.store.database import Database


def _ledger_settings(args: argparse.Namespace) -> LedgerConfig:
    """The ``[ledger]`` settings of ``--config``, else of ``./quarterdeck.toml``, else the
    defaults (as ``run`` finds its configuration)."""
    from quarterdeck.runtime.config import load_config

    path = Path(args.config) if args.config else Path("quarterdeck.toml")
    if not args.config and not path.is_file():
        return LedgerConfig()
    return load_config(path).ledger


def _node_key_path(args: argparse.Namespace) -> Path:
    return _ledger_settings(args).key_path(state_directory(args))


def key_command(args: argparse.Namespace, out: IO[str]) -> int:
    """Print the node's public key (created by the node's first start): its 64 hex digits
    first, so that the line can be appended to a ``--keys`` file as it is."""
    path = _node_key_path(args)
    if not path.exists():
        sys.stderr.write(
            f"quarterdeck: no ledger key at {path} yet (a node makes it when it first starts)\n"
        )
        return 1
    try:
        public = load_key(path).public_key()
    except KeyFileError as exc:
        raise UsageError(str(exc)) from exc
    if args.json:
        print_json(
            {"algorithm": "ed25519", "public_key": public_hex(public),
             "key_id": key_id_of(public), "path": str(path)},
            out,
        )  # fmt: skip
    else:
        out.write(f"{public_hex(public)} ed25519 key {key_id_of(public)} ({path})\n")
    return 0


def _trusted_keys(args: argparse.Namespace) -> dict[str, Ed25519PublicKey]:
    """The keys checkpoints must be signed with: ``--keys FILE``, else the node's own."""
    try:
        if args.keys:
            return read_trusted_keys(Path(args.keys))
        path = _node_key_path(args)
        if not path.exists():
            raise UsageError(
                f"no keys to check signatures with: give --keys FILE ({path} is missing)"
            )
        return node_keys(path)
    except KeyFileError as exc:
        raise UsageError(str(exc)) from exc


def _checkpoint_lines(path: str) -> list[tuple[int, Checkpoint | str]]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the checkpoints {path}: {exc}") from exc
    return parse_checkpoint_lines(text)


_SHOWN = 100
"""Disagreements listed at most (the total is always given)."""


async def ledger_command(db: Database, args: argparse.Namespace, out: IO[str]) -> int:
    """Verify the hash chain (exit 1 when broken), export entries as canonical JSON lines, or
    print a proof."""
    if args.ledger_command == "verify":
        return await _verify(db, args, out)
    if args.ledger_command == "prove":
        return await _prove(db, args, out)
    from quarterdeck.store.ledger import iter_entries

    async for entry in iter_entries(db, since=args.since, workspace=workspace_scope(args)):
        out.write(canonical_text(entry) + "\n")
    return 0


async def _verify(db: Database, args: argparse.Namespace, out: IO[str]) -> int:
    from quarterdeck.store.checkpoints import verify_with_checkpoints
    from quarterdeck.store.ledger import verify_ledger
    from quarterdeck.store.ledger_audit import audit_state

    if args.keys and not args.checkpoints:
        raise UsageError("--keys goes with --checkpoints FILE")
    if args.checkpoints is None:
        result = await verify_ledger(db)
        shown = result.to_dict()
        signed = ""
    else:
        lines = _checkpoint_lines(args.checkpoints)  # read before the chain: see the store
        keys = _trusted_keys(args)
        result = await verify_with_checkpoints(db, lines, keys)
        checkpoints = [c for _, c in lines if isinstance(c, Checkpoint)]
        last = max((c.seq for c in checkpoints), default=0)
        shown = result.to_dict()
        if result.ok:
            shown.update(checkpoints=len(checkpoints), checkpointed_seq=last)
        signed = f"; {len(checkpoints)} signed checkpoints hold (the last at seq {last})"
    disagreements = await audit_state(db) if result.ok else []
    if disagreements:
        shown.update(
            ok=False,
            reason=f"{len(disagreements)} stored values disagree with the ledger",
            disagreements=[d.to_dict() for d in disagreements[:_SHOWN]],
            disagreements_total=len(disagreements),
        )
    if args.json:
        print_json(shown, out)
    elif not result.ok:
        out.write(
            f"ledger BROKEN at seq {result.first_bad_seq}: {escape_controls(str(result.reason))}\n"
        )
    elif disagreements:
        out.write(
            f"ledger chain ok ({result.entries} entries{signed}), but the state disagrees with "
            f"it in {len(disagreements)} places:\n"
        )
        for disagreement in disagreements[:_SHOWN]:
            out.write(f"  {escape_controls(disagreement.describe())}\n")
        if len(disagreements) > _SHOWN:
            out.write(f"  ... and {len(disagreements) - _SHOWN} more\n")
    else:
        out.write(f"ledger ok: {result.entries} entries, head {result.head}{signed}\n")
    return 0 if result.ok and not disagreements else 1


async def _prove(db: Database, args: argparse.Namespace, out: IO[str]) -> int:
    """The entries from SEQ to the first checkpoint at or after it, and that checkpoint."""
    from quarterdeck.store.checkpoints import entries_between, first_checkpoint_from

    if not 1 <= args.seq < 2**63:
        raise UsageError(f"SEQ must be a seq of the ledger, from 1, got {args.seq}")
    if args.checkpoints is None:
        checkpoint = await first_checkpoint_from(db, args.seq)
    else:
        found = [c for _, c in _checkpoint_lines(args.checkpoints) if isinstance(c, Checkpoint)]
        checkpoint = min((c for c in found if c.seq >= args.seq), key=lambda c: c.seq, default=None)
    if checkpoint is None:
        sys.stderr.write(f"quarterdeck: no checkpoint covers seq {args.seq} yet\n")
        return 1
    proof = make_proof(args.seq, await entries_between(db, args.seq, checkpoint.seq), checkpoint)
    failure = check_proof(proof)
    if failure is not None:
        sys.stderr.write(f"quarterdeck: the ledger does not reach its checkpoint: {failure}\n")
        return 1
    out.write(canonical_text(proof) + "\n")
    return 0
