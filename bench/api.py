"""The control API's cost: commands/s and reads/s through the Unix socket, next to the same
operations done in-process on the same runtime, in the same run.

Usage: python bench/api.py [--calls N] [--concurrency C] [--turns T]

One runtime on a fresh SQLite state directory serves its control API in this process (the
client is this process too, so the kernel names it the OS user, ``admin`` by default). Each
operation runs ``--calls`` times, ``--concurrency`` at a time:

- **command**: ``lane.pause`` / ``lane.resume`` in turn (a command envelope recorded and
  applied, with its ledger entry): ``Runtime.command`` in-process, ``POST /v1/commands``
  through the socket;
- **read status**: counts by state (``store.queries.status``, ``GET /v1/status``);
- **read list**: the 50 newest turns (``list_items``, ``GET /v1/items?kind=turns``);
- **read show**: one turn with its history (``get_item``, ``GET /v1/items/{id}``).

``--turns`` tasks are submitted and completed first so that the reads read something. Prints
JSON: per operation the rates both ways, and the overhead of one call through the socket
(the difference of the mean times per call).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from quarterdeck.client.api import ControlClient
from quarterdeck.runtime.api_serve import ControlOptions
from quarterdeck.runtime.config import parse_config
from quarterdeck.runtime.runtime import Runtime
from quarterdeck.store.database import open_database, sqlite_url
from quarterdeck.store.queries import get_item, list_items, pending_work, status

WS = "bench"
CONFIG = {"lanes": {"sim": {"adapter": "sim", "options": {"seed": 1, "action_rate": 0.0}}}}

Call = Callable[[int], Awaitable[Any]]


async def rate(call: Call, calls: int, concurrency: int) -> float:
    """Calls per second of ``call(i)`` for ``i`` in ``range(calls)``, ``concurrency`` at once."""
    queue = iter(range(calls))

    async def worker() -> None:
        for i in queue:
            await call(i)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return calls / (time.perf_counter() - start)


async def bench(calls: int, concurrency: int, turns: int) -> dict[str, Any]:
    state = Path(tempfile.mkdtemp(prefix="qd-bench-api-")) / "state"
    state.mkdir()
    config = parse_config(CONFIG)
    db = await open_database(sqlite_url(state))
    runtime = Runtime(
        db, config, state_dir=state, control=ControlOptions.for_state_dir(state, config)
    )
    await runtime.start()
    assert runtime.control is not None
    try:
        await runtime.submit(
            [{"idempotency_key": f"t{i}", "workspace": WS, "kind": "task",
              "payload": {"objective": f"turn {i}", "lane": "sim"}} for i in range(turns)]
        )  # fmt: skip
        while await pending_work(db):
            await asyncio.sleep(0.05)
        [turn] = await list_items(db, "turns", workspace=WS, state=None, limit=1)
        turn_id = turn["id"]

        def toggle(i: int) -> dict[str, Any]:
            return {"command": "lane.resume" if i % 2 else "lane.pause", "lane": "sim"}

        async with ControlClient(runtime.control.socket_path) as api:
            operations: dict[str, tuple[Call, Call]] = {
                "command": (
                    lambda i: runtime.command(WS, toggle(i), "bench"),
                    lambda i: api.command(WS, toggle(i)),
                ),
                "read status": (lambda i: status(db, None), lambda i: api.status()),
                "read list": (
                    lambda i: list_items(db, "turns", workspace=None, state=None, limit=50),
                    lambda i: api.items("turns", limit=50),
                ),
                "read show": (
                    lambda i: get_item(db, turn_id, workspace=None),
                    lambda i: api.show(turn_id),
                ),
            }
            results: dict[str, Any] = {}
            for name, (inside, through) in operations.items():
                await inside(0)
                await through(1)  # warm both paths (connection, caches)
                local = await rate(inside, calls, concurrency)
                remote = await rate(through, calls, concurrency)
                results[name] = {
                    "in_process_per_s": round(local, 1),
                    "socket_per_s": round(remote, 1),
                    "overhead_per_call_us": round((1 / remote - 1 / local) * 1e6 * concurrency, 1),
                }
    finally:
        await runtime.stop(grace_s=0.5)
        await db.dispose()
    return {"calls": calls, "concurrency": concurrency, "turns": turns, "operations": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2_000)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--turns", type=int, default=500)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(bench(args.calls, args.concurrency, args.turns)), indent=2))


if __name__ == "__main__":
    main()
