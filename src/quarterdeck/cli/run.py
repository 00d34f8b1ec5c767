"""The commands that run the runtime or draw the control center: ``run`` (the control center
over an embedded runtime), ``run --headless`` (a daemon until SIGTERM), ``demo`` (a simulated
fleet on fresh state) and ``attach`` (the control center on a running daemon, through its
control API).

The TUI is imported inside the functions that launch it, so that the other commands, and
``run --headless``, never load textual."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING

from quarterdeck.cli.common import UsageError, state_directory
from quarterdeck.cli.serve_web import served_to_a_browser
from quarterdeck.client.api import ControlUnavailable
from quarterdeck.runtime.config import ConfigError, RuntimeConfig
from quarterdeck.runtime.lanes.registry import startup_problems
from quarterdeck.runtime.webhooks import secret_problems
from quarterdeck.store.database import Database, open_database, sqlite_url

if TYPE_CHECKING:
    from quarterdeck.runtime.api_serve import ControlOptions


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
            (agents run as another OS user by a daemon that is not root; a webhook's secret
            missing from the environment).
    """
    if not args.headless:
        if args.until_idle:
            raise UsageError("--until-idle needs --headless")
        _need_terminal()
    args.run_config = _load_run_config(args)
    config = args.run_config[0]
    problems = [
        *startup_problems(config.lanes.values()),
        *secret_problems(config.webhooks, os.environ),
    ]
    if problems:
        raise ConfigError(args.run_config[1], problems)
    if args.run_config[0].database_url and not args.db:
        args.db = args.run_config[0].database_url
    args.control = control_options(args, args.run_config[0])


def control_options(args: argparse.Namespace, config: RuntimeConfig) -> ControlOptions:
    """Where ``run`` serves the control API: the state directory's socket, and TCP with
    ``--listen`` (TLS with ``--tls-cert`` and ``--tls-key``; required off loopback).

    Raises:
        UsageError: the flags do not fit together.
    """
    from quarterdeck.runtime.api_serve import ControlOptions, ServeError

    try:
        return ControlOptions.for_state_dir(
            state_directory(args), config, listen=args.listen,
            tls_cert=Path(args.tls_cert) if args.tls_cert else None,
            tls_key=Path(args.tls_key) if args.tls_key else None,
            socket_path=Path(args.socket) if args.socket else None,
        )  # fmt: skip
    except ServeError as exc:
        raise UsageError(str(exc)) from None


async def run_command(db: Database, args: argparse.Namespace, out: IO[str]) -> int:
    """The runtime on ``db``: under the control center, or headless (see :func:`prepare_run`)."""
    from quarterdeck.runtime.api_serve import ServeError
    from quarterdeck.runtime.daemon import configure_logging, run_headless
    from quarterdeck.runtime.listeners import ListenError

    config, source = args.run_config
    try:
        if not args.headless:
            from quarterdeck.tui.launch import run_embedded

            return await run_embedded(
                db,
                config,
                state_dir=state_directory(args),
                theme=args.theme,
                keymap=config.keymap,
                node_id=args.node_id,
                control=args.control,
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
            control=args.control,
        )
    except (ServeError, ListenError) as exc:
        raise UsageError(f"the control API: {exc}") from None


async def demo_command(args: argparse.Namespace) -> int:
    """A fresh state directory (unless one is given), the demo fleet, the control center."""
    _need_terminal()
    import tempfile

    from quarterdeck.runtime.config import load_config
    from quarterdeck.runtime.demo import check_speed, prepare_demo
    from quarterdeck.tui.launch import run_embedded

    try:
        speed = check_speed(args.speed)
    except ValueError as exc:
        raise UsageError(f"--speed: {exc}") from None
    if args.state_dir:
        state_dir = Path(args.state_dir).absolute()
    else:
        state_dir = Path(tempfile.mkdtemp(prefix="quarterdeck-demo-"))
    config = load_config(prepare_demo(state_dir, speed))
    sys.stderr.write(
        f"quarterdeck: demo state directory: {state_dir} (its prompt to edit for a drift "
        f"alert: {state_dir / 'prompts' / 'triage.md'})\n"
    )
    sys.stderr.flush()
    db = await open_database(sqlite_url(state_dir))
    try:
        code = await run_embedded(
            db, config, state_dir=state_dir, theme=args.theme, keymap=config.keymap, demo=True,
            speed=speed,
        )  # fmt: skip
    finally:
        await db.dispose()
    sys.stderr.write(f"quarterdeck: the demo's state is in {state_dir}\n")
    return code


async def attach_command(args: argparse.Namespace) -> int:
    """The control center on a running daemon, through its control API (with ``--read-only``
    the daemon refuses every action from it).

    Raises:
        UsageError: no daemon runs there.
    """
    if not served_to_a_browser():  # serve-web's subprocess draws through the web driver
        _need_terminal()
    from quarterdeck.cli.daemon import daemon_address
    from quarterdeck.client.api_console import ApiConsole
    from quarterdeck.client.reach import START_HINT
    from quarterdeck.domain.policy import DEFAULT_REJECT_REASONS, Policy
    from quarterdeck.runtime.config import load_config
    from quarterdeck.runtime.policy_source import read_policy
    from quarterdeck.tui.launch import run_attached

    state_dir = state_directory(args)
    address = daemon_address(args)
    if address is None:
        raise UsageError(f"no daemon is running on {state_dir}: {START_HINT} there first")
    config = load_config(Path(args.config)) if args.config else None
    reasons = tuple(DEFAULT_REJECT_REASONS)
    if config is not None and config.policy is not None:
        policy = read_policy(config.policy)
        if isinstance(policy, Policy):
            reasons = tuple(policy.reject_reasons)
    try:
        console = await ApiConsole.open(
            address, read_only=args.read_only, reject_reasons=reasons,
            lanes=tuple(config.lanes) if config else (),
        )  # fmt: skip
    except ControlUnavailable as exc:
        raise UsageError(f"{exc.message}: {START_HINT} there first") from None
    return await run_attached(
        console, theme=args.theme, themes_dir=state_dir / "themes",
        keymap=config.keymap if config else None,
    )  # fmt: skip
