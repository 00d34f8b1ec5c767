"""The control API's reads and approval requests, on a runtime that serves its API in this
process (``Runtime(control=...)``): a scoped reader sees only its workspaces, an approval asked
through the API is decided by a person and the decision comes back on the long poll, and the
console's change stream wakes on a commit."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.conftest import run

from quarterdeck.client.api import ControlClient, ControlRefused
from quarterdeck.domain.authority import SUPERVISOR, VIEWER, Kind, Principal, Roster
from quarterdeck.runtime.api_serve import ControlOptions
from quarterdeck.runtime.config import parse_config
from quarterdeck.runtime.runtime import Runtime
from quarterdeck.store.database import open_database, sqlite_url
from quarterdeck.store.queries import pending_work

USER = pwd.getpwuid(os.getuid()).pw_name
LEAD = Principal(Kind.SUPERVISOR, "lead")
"""Another person, a supervisor by the roster: the requester never decides its own request."""
POLICY = """
[defaults]
outcome = "allow"

[[rules]]
name = "deploys"
tool = "deploy"
outcome = "require_approval"
deadline_s = 600
"""


@contextlib.asynccontextmanager
async def served(tmp_path: Path) -> AsyncIterator[Runtime]:
    state = tmp_path / "s"
    state.mkdir()
    (tmp_path / "policy.toml").write_text(POLICY, encoding="utf-8")
    config = parse_config(
        {"policy": str(tmp_path / "policy.toml"),
         "lanes": {"sim": {"adapter": "sim", "options": {"seed": 1, "action_rate": 0.0}}},
         "roster": {USER: ["admin"], "lead": ["supervisor"]}}
    )  # fmt: skip
    db = await open_database(sqlite_url(state))
    runtime = Runtime(
        db, config, state_dir=state, control=ControlOptions.for_state_dir(state, config)
    )
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop(grace_s=0.2)
        await db.dispose()


def test_reads_are_scoped_and_an_approval_round_trips(tmp_path: Path) -> None:
    async def main() -> None:
        async with served(tmp_path) as runtime:
            assert runtime.control is not None
            socket_path = runtime.control.socket_path
            await runtime.submit(
                [{"idempotency_key": f"{ws}-{i}", "workspace": ws, "kind": "task",
                  "payload": {"objective": "x", "lane": "sim"}}
                 for ws in ("a", "b", "c") for i in range(3)]
            )  # fmt: skip
            while await pending_work(runtime.db):
                await asyncio.sleep(0.05)
            async with ControlClient(socket_path) as api:
                every = await api.items("turns")
                assert len(every) == 9
                theirs = next(t for t in every if t["workspace"] == "c")
                status = await api.status()
                assert sum(status["turns"].values()) == 9
                assert (await api.verify_ledger())["ok"] is True
                page = await api.ledger_page(limit=5)
                assert len(page["entries"]) == 5 and page["before"] is not None

                runtime.control.roster = Roster(
                    members={USER: frozenset({VIEWER})}, scopes={VIEWER: frozenset({"a", "b"})}
                )
                turns = await api.items("turns")
                assert {t["workspace"] for t in turns} == {"a", "b"} and len(turns) == 6
                assert {t["workspace"] for t in (await api.console_snapshot())["turns"]} == {
                    "a", "b"
                }  # fmt: skip
                assert await api.show(theirs["id"]) is None  # out of reach: not found
                with pytest.raises(ControlRefused, match="'viewer' in workspace 'c'"):
                    await api.items("turns", workspace="c")
                with pytest.raises(ControlRefused):
                    await api.metrics()  # the runtime's figures: every workspace

                runtime.control.roster = Roster(members={USER: frozenset({SUPERVISOR})})
                head = (await api.status())["ledger"]["entries"]
                asked = await api.request_approval("a", "act-1", "deploy", {"env": "prod"})
                assert asked["verdict"] == "pending" and asked["decision"] is None
                assert await api.console_changes(head - 1, wait_s=5) >= head
                waiting = asyncio.ensure_future(api.approval_decision(asked["approval"], 20))
                await asyncio.sleep(0.2)
                assert not waiting.done()
                runtime.control.roster = Roster.default(USER)
                result = await runtime.command(
                    "a", {"command": "approval.approve", "approval_id": asked["approval"]},
                    LEAD,
                )  # fmt: skip
                assert result["ok"], result
                answer = await asyncio.wait_for(waiting, 10)
                assert answer["decided"] is True
                assert answer["decision"]["state"] == "approved"
                assert answer["decision"]["decided_by"] == "lead"
                assert answer["decision"]["requested_by"] == f"{USER} (uid {os.getuid()})"
                again = await api.request_approval("a", "act-1", "deploy", {"env": "prod"})
                assert again["approval"] == asked["approval"]

    run(main())
