"""The ``quarterdeck`` command line: :mod:`~quarterdeck.cli.main` runs every command, except
``quarterdeck hook``, which the agent CLIs start once per tool call: it goes to
:mod:`~quarterdeck.cli.hook` before anything heavy is imported (the standard library and a
pure domain module only)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

TYPE_CHECKING = False  # not typing's: ``quarterdeck hook`` starts once per tool call
if TYPE_CHECKING:
    from typing import IO

__all__ = ["main"]


def main(argv: Sequence[str] | None = None, out: IO[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["hook"]:
        from quarterdeck.cli.hook import main as hook

        return hook(args[1:], out)
    from quarterdeck.cli.main import main as run

    return run(args, out)
