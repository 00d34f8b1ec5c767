"""The commands that run the runtime or draw the control center: ``run`` (the control center
over an embedded runtime), ``run --headless`` (a daemon until SIGTERM), ``demo`` (a simulated
fleet on fresh state) and ``attach`` (the control center on a running daemon's database).

The TUI is imported inside the functions that launch it, so that the other commands, and
``run --headless``, never load textual."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import IO

from quarterdeck.cli.common import UsageError, database_url, state_directory
from quarterdeck.runtime.config import ConfigError, RuntimeConfig
from quarterdeck.runtime.lanes.registry import startup_problems
from quarterdeck.store.database import DB_FILENAME, Database, open_database, sqlite_url


def _load_run_config(args: argparse.Namespace) -> tuple[RuntimeConfig, str]:
    """The configuration ``--config`` names, else ``./quarterdeck.toml``, else the built-in
    one; with where it came from."""
    from quarterdeck.runtime.config import load_config

    if args.config:
        path: Path | None = Path(args.config)
    elif Path("quarterdeck.toml").is_file():
        path = Path("quarterdeck.toml")
    else:
        path = None
    return load_config(path), str(path) if path else "built-in"


def _need_terminal() -> None:
    """The control center draws on a terminal; without one, say so instead of hanging."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("the control center needs a terminal (use 'run --headless' without one)")


def prepare_run(args: argparse.Namespace) -> None:
    """Check ``run``'s options and load its configuration into ``args.run_config``, before the
    database is opened; the configuration's ``database_url`` applies unless ``--db`` is given.

    Raises:
        UsageError: ``--until-idle`` without ``--headless``, or the control center without a
            terminal.
        ConfigError: the configuration is invalid, or names what this process cannot do
            (agents run as another OS user by a daemon that is not root).
    """
    if not args.headless:
        if args.until_idle:
            raise UsageError("--until-idle needs --headless")
        _need_terminal()
    args.run_config = _load_run_config(args)
    if problems := startup_problems(args.run_config[0].lanes.values()):
        raise ConfigError(args.run_config[1], problems)
    if args.run_config[0].database_url and not args.db:
        args.db = args.run_config[0].database_url


async def run_command(db: Database, args: argparse.Namespace, out: IO[str]) -> int:
    """The runtime on ``db``: under the control center, or headless (see :func:`prepare_run`)."""
    from quarterdeck.runtime.daemon import configure_logging, run_headless

    config, source = args.run_config
    if not args.headless:
        from quarterdeck.tui.launch import run_embedded

        return await run_embedded(
            db,
            config,
            state_dir=state_directory(args),
            theme=args.theme,
            keymap=config.keymap,
            node_id=args.node_id,
        )
    configure_logging()
    return await run_headless(
        db,
        config,
        state_dir=state_directory(args),
        node_id=args.node_id,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        config_source=source,
        until_idle=args.until_idle,
    )


async def demo_command(args: argparse.Namespace) -> int:
    """A fresh state directory (unless one is given), the demo fleet, the control center."""
    _need_terminal()
    import tempfile

    from quarterdeck.runtime.config import load_config
    from quarterdeck.runtime.demo import prepare_demo
    from quarterdeck.tui.launch import run_embedded

    if args.state_dir:
        state_dir = Path(args.state_dir)
    else:
        state_dir = Path(tempfile.mkdtemp(prefix="quarterdeck-demo-"))
    config = load_config(prepare_demo(state_dir))
    db = await open_database(sqlite_url(state_dir))
    try:
        code = await run_embedded(
            db, config, state_dir=state_dir, theme=args.theme, keymap=config.keymap, demo=True
        )
    finally:
        await db.dispose()
    sys.stderr.write(f"quarterdeck: the demo's state is in {state_dir}\n")
    return code


async def attach_command(args: argparse.Namespace) -> int:
    """The control center on a running daemon's database, in this process."""
    _need_terminal()
    from quarterdeck.domain.policy import DEFAULT_REJECT_REASONS, Policy, parse_policy
    from quarterdeck.runtime.config import load_config
    from quarterdeck.tui.launch import run_attached

    url = database_url(args)
    state_dir = state_directory(args)
    if not args.db and not (state_dir / DB_FILENAME).is_file():
        raise UsageError(f"no database in {state_dir}: start a daemon there first")
    config = load_config(Path(args.config)) if args.config else None
    reasons = tuple(DEFAULT_REJECT_REASONS)
    if config is not None and config.policy is not None and config.policy.is_file():
        policy = parse_policy(config.policy.read_text(encoding="utf-8"))
        if isinstance(policy, Policy):
            reasons = tuple(policy.reject_reasons)
    db = await open_database(url, upgrade=False)
    try:
        return await run_attached(
            db, read_only=args.read_only, theme=args.theme, themes_dir=state_dir / "themes",
            keymap=config.keymap if config else None, reject_reasons=reasons,
            lanes=tuple(config.lanes) if config else (),
        )  # fmt: skip
    finally:
        await db.dispose()
