"""Shared test helpers: every test gets its own SQLite file under pytest's tmp_path."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent


def run(coro: Awaitable[T]) -> T:
    """Run a coroutine to completion on a fresh event loop."""

    async def wrapper() -> T:
        return await coro

    return asyncio.run(wrapper())


def envelope(i: int, workspace: str = "acme", **overrides: Any) -> dict[str, Any]:
    """A valid task envelope whose idempotency key is derived from ``i``."""
    value: dict[str, Any] = {
        "idempotency_key": f"key-{i}",
        "workspace": workspace,
        "kind": "task",
        "payload": {"objective": f"objective {i}", "input": {"n": i}},
    }
    value.update(overrides)
    return value


def line(value: Any) -> bytes:
    """One JSON line (no newline) as bytes."""
    return json.dumps(value).encode()


def quarterdeck(
    *args: str, state_dir: Path, stdin: bytes | None = None, check: bool = False
) -> subprocess.CompletedProcess[bytes]:
    """Run the real ``quarterdeck`` command line in a subprocess."""
    env = {**os.environ, "QUARTERDECK_STATE_DIR": str(state_dir)}
    env.pop("QUARTERDECK_WORKSPACE", None)
    return subprocess.run(
        [sys.executable, "-m", "quarterdeck", *args],
        input=stdin,
        capture_output=True,
        env=env,
        check=check,
        timeout=300,
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Path of a fresh SQLite database file for this test."""
    return tmp_path / "state" / "quarterdeck.db"


RunAsync = Callable[[Awaitable[T]], T]
