"""The node's Ed25519 ledger key, kept outside the database: a PEM (PKCS#8) file, by default
``<state-dir>/keys/ledger-ed25519.key``, created on the node's first start (its folder 0700,
the file 0600) and refused when others may read it; and the lists of trusted public keys that
checkpoints are verified with."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from quarterdeck.domain.checkpoints import CheckpointFormatError, key_id_of, parse_public_keys


class KeyFileError(Exception):
    """A key file is missing, unreadable, not an Ed25519 key, or readable by others."""


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The key in ``path``, made there first if there is none (a node's first start).

    Raises:
        KeyFileError: the file exists but is not a private Ed25519 key only its owner reads.
    """
    if not path.exists():
        _create(path)
    return load_key(path)


def _create(path: Path) -> None:
    """Write a new key to ``path``: in a private temporary file first, then linked into
    place, so that a node starting beside another never sees half a key and never replaces
    one (the first link wins)."""
    folder = path.parent
    if not folder.exists():
        folder.mkdir(mode=0o700, parents=True)
        folder.chmod(0o700)
    key = Ed25519PrivateKey.generate()
    data = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".ledger-key-")  # mode 0600
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        os.unlink(temporary)
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def load_key(path: Path) -> Ed25519PrivateKey:
    """The private key in ``path``.

    Raises:
        KeyFileError: missing, unreadable, readable by group or others, or not Ed25519.
    """
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read the ledger key {path}: {exc.strerror}") from exc
    if mode & 0o077:
        raise KeyFileError(
            f"the ledger key {path} may be read by others (mode {stat.S_IMODE(mode):04o}): "
            "make it 0600"
        )
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path} is not a PEM private key without a password") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 key")
    return key


def node_keys(path: Path) -> dict[str, Ed25519PublicKey]:
    """The public half of the node key in ``path``, by key id.

    Raises:
        KeyFileError: as :func:`load_key`.
    """
    public = load_key(path).public_key()
    return {key_id_of(public): public}


def read_trusted_keys(path: Path) -> dict[str, Ed25519PublicKey]:
    """The public keys listed in ``path`` (one 64-hex-digit key at the start of each line, as
    ``quarterdeck ledger key`` prints it), by key id.

    Raises:
        KeyFileError: the file cannot be read, or a line is not a key.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read the keys {path}: {exc}") from exc
    try:
        keys = parse_public_keys(text)
    except CheckpointFormatError as exc:
        raise KeyFileError(f"{path}: {exc}") from exc
    if not keys:
        raise KeyFileError(f"{path} lists no keys")
    return keys
