"""The ``[ledger]`` table of ``quarterdeck.toml``: where the node keeps its signing key and its
checkpoint file, and how often it signs a checkpoint of the ledger's head."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Final

from pydantic import BeforeValidator, ConfigDict, Field, Strict, ValidationInfo
from pydantic.dataclasses import dataclass

KEY_FILE: Final = Path("keys") / "ledger-ed25519.key"
"""The key's place under the state directory unless ``key_file`` says otherwise."""
CHECKPOINT_FILE: Final = Path("ledger-checkpoints.jsonl")
"""The checkpoint file's place under the state directory unless ``checkpoint_file`` says
otherwise."""


def _from_config_folder(value: object, info: ValidationInfo) -> object:
    """A relative path is taken from the configuration file's folder."""
    base = info.context.get("base") if isinstance(info.context, dict) else None
    return (base or Path(".")) / value if isinstance(value, str) and value else value


ConfiguredPath = Annotated[Path | None, BeforeValidator(_from_config_folder)]


@dataclass(frozen=True, slots=True, config=ConfigDict(extra="forbid"))
class LedgerConfig:
    """Signed checkpoints: at most every ``checkpoint_every`` entries or
    ``checkpoint_interval_s`` seconds (and at drain) the node signs the ledger's head."""

    checkpoints: Annotated[bool, Strict()] = True
    checkpoint_every: Annotated[int, Strict(), Field(ge=1)] = 1000
    checkpoint_interval_s: Annotated[float, Strict(), Field(gt=0)] = 60.0
    checkpoint_file: ConfiguredPath = None
    """Where checkpoints are appended (default: ``<state-dir>/ledger-checkpoints.jsonl``)."""
    key_file: ConfiguredPath = None
    """The node's Ed25519 key (default: ``<state-dir>/keys/ledger-ed25519.key``)."""
    witness: str | None = None
    """A webhook (``format = "json"``) each checkpoint is also sent to through the outbox, as
    the event ``ledger.checkpoint`` whatever its ``events`` say: an external witness."""

    def key_path(self, state_dir: Path) -> Path:
        """The key file for a node whose state directory is ``state_dir``."""
        return self.key_file or state_dir / KEY_FILE

    def checkpoint_path(self, state_dir: Path) -> Path:
        """The checkpoint file for a node whose state directory is ``state_dir``."""
        return self.checkpoint_file or state_dir / CHECKPOINT_FILE


def witness_problem(ledger: object, webhook_formats: dict[str, str]) -> str | None:
    """Why ``[ledger] witness`` (raw) names no JSON webhook of ``webhook_formats`` (name ->
    format); None when it does or is not set."""
    witness = ledger.get("witness") if isinstance(ledger, dict) else None
    if not isinstance(witness, str):
        return None
    if witness not in webhook_formats:
        return f"ledger.witness: no webhook named {witness!r}"
    if webhook_formats[witness] != "json":
        return f"ledger.witness: webhook {witness!r} must have format json"
    return None
