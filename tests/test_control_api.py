"""The control API end to end: a real runtime on a SQLite state directory, the server on a real
Unix socket (and TCP), the client, and real child processes registered as agents.

Who is calling is always what the kernel says (or a token over TCP): the test process is its
real OS user, a registered agent's process and its descendants are agents, and the roster
decides what each may do. Effects are checked in the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
import pwd
import socket
import stat
import sys
import textwrap
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter
from tests.conftest import Store, run

from quarterdeck.client.api import ControlClient, ControlRefused, ControlUnavailable
from quarterdeck.domain.authority import SUPERVISOR, VIEWER, Kind, Principal, Roster
from quarterdeck.domain.tokens import new_token, secret_matches, split_token
from quarterdeck.runtime.api import ControlServer
from quarterdeck.runtime.config import parse_config
from quarterdeck.runtime.listeners import ListenError, default_socket_path
from quarterdeck.runtime.runtime import Runtime
from quarterdeck.store.database import open_database

REPO = Path(__file__).resolve().parent.parent
WS = "w"
USER = pwd.getpwuid(os.getuid()).pw_name
GROUPS = sorted({grp.getgrgid(gid).gr_name for gid in os.getgrouplist(USER, os.getgid())})
CONFIG = {"lanes": {"sim": {"adapter": "sim", "options": {"seed": 1, "action_rate": 0.0}}}}


def task(key: str) -> dict[str, Any]:
    return {"idempotency_key": key, "workspace": WS, "kind": "task",
            "payload": {"objective": f"objective {key}", "lane": "sim"}}  # fmt: skip


def roster_of(*roles: str) -> Roster:
    return Roster(members={USER: frozenset(roles)})


class Served:
    """A started runtime, its control server, and read access to its database."""

    def __init__(self, runtime: Runtime, server: ControlServer, store: Store) -> None:
        self.runtime = runtime
        self.server = server
        self.store = store

    @property
    def socket(self) -> Path:
        return self.server.socket_path

    def client(self) -> ControlClient:
        return ControlClient(self.socket)

    def use_roster(self, roster: Roster) -> None:
        """Who holds which roles: for the API's reads and the runtime's commands alike."""
        self.server.roster = roster
        self.runtime.plan = replace(self.runtime.plan, roster=roster)

    def paused(self, lane: str) -> bool:
        return bool(self.store.value("SELECT paused FROM lane_flags WHERE lane = ?", lane))


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, roster: Roster, **server: Any) -> AsyncIterator[Served]:
    """A runtime on ``<tmp>/s/q.db`` and its control API on ``<tmp>/s/quarterdeck.sock``."""
    state = tmp_path / "s"
    state.mkdir(exist_ok=True)
    db = await open_database(str(state / "q.db"))
    runtime = Runtime(db, parse_config(CONFIG), state_dir=state)
    await runtime.start()
    registry = CollectorRegistry()
    Counter("qd_test_requests", "A figure the registry holds.", registry=registry).inc(3)

    async def command(
        workspace: str, payload: Mapping[str, Any], principal: Principal, _key: str | None
    ) -> dict[str, Any]:
        return await runtime.command(workspace, payload, principal)

    control = ControlServer(
        roster=roster, submit=runtime.submit, command=command, registry=registry,
        socket_path=default_socket_path(state), **server,
    )  # fmt: skip
    try:
        await control.start()
        served = Served(runtime, control, Store(state / "q.db"))
        served.use_roster(roster)
        yield served
    finally:
        await control.stop()
        with contextlib.suppress(Exception):
            await runtime.stop(grace_s=0.2)
        await db.dispose()


def raw_client(socket_path: Path) -> httpx.AsyncClient:
    """A hand-made HTTP client on the socket (to send what the real client never would)."""
    return httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(uds=str(socket_path)), base_url="http://qd"
    )


async def _unused_command(
    workspace: str, payload: Mapping[str, Any], principal: Principal, key: str | None
) -> dict[str, Any]:
    raise AssertionError("a server that never starts carries out no command")


# --- the socket and who is calling ---------------------------------------------------------------


def test_socket_is_0600_and_whoami_is_the_real_os_user(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path, Roster.default(USER)) as served:
            mode = os.stat(served.socket).st_mode
            assert stat.S_ISSOCK(mode)
            assert stat.S_IMODE(mode) == 0o600
            assert not [p for p in served.socket.parent.iterdir() if p.name.startswith(".qd")]
            async with served.client() as api:
                me = await api.whoami()
            assert me.principal.kind is Kind.SUPERVISOR
            assert me.principal.uid == os.getuid()
            assert me.principal.name == USER
            assert grp.getgrgid(os.getgid()).gr_name in me.principal.groups
            assert me.roles == {"admin"}
        assert not served.socket.exists()  # removed on stop

    run(main())


def test_whoami_cannot_be_talked_into_another_name(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path, roster_of(VIEWER)) as served, raw_client(served.socket) as raw:
            answer = await raw.get(
                "/v1/whoami",
                headers={"Authorization": "Bearer qdt_000000000000_x", "X-Principal": "root"},
            )
            assert answer.status_code == 200
            assert answer.json() == {
                "kind": "supervisor", "name": USER, "label": f"{USER} (uid {os.getuid()})",
                "uid": os.getuid(), "groups": GROUPS, "workspace": None,
                "roles": ["viewer"],
            }  # fmt: skip

    run(main())


def test_group_socket_is_0660_and_belongs_to_the_group(tmp_path: Path) -> None:
    group = grp.getgrgid(os.getgid()).gr_name

    async def main() -> None:
        async with serving(tmp_path, Roster.default(USER), group=group) as served:
            found = os.stat(served.socket)
            assert stat.S_IMODE(found.st_mode) == 0o660
            assert found.st_gid == os.getgid()

    async def unknown_group() -> None:
        async with serving(tmp_path, Roster.default(USER), group="no-such-group-qd"):
            pass

    run(main())
    with pytest.raises(ListenError, match="no group named"):
        run(unknown_group())


def test_a_live_socket_is_not_taken_over_and_a_stale_one_is_replaced(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path, Roster.default(USER)) as served:
            second = ControlServer(
                roster=Roster.default(USER), submit=served.runtime.submit,
                command=_unused_command, registry=CollectorRegistry(),
                socket_path=served.socket,
            )  # fmt: skip
            with pytest.raises(ListenError, match="already listening"):
                await second.start()
            async with served.client() as api:  # the first daemon still serves
                assert (await api.whoami()).principal.name == USER

    run(main())
    stale = default_socket_path(tmp_path / "s")
    with socket.socket(socket.AF_UNIX) as gone:
        gone.bind(str(stale))  # bound, never listening: what a killed daemon leaves

    async def again() -> None:
        async with serving(tmp_path, Roster.default(USER)) as served, served.client() as api:
            assert (await api.whoami()).principal.uid == os.getuid()

    run(again())
    stale.write_text("not a socket")
    with pytest.raises(ListenError, match="not a socket"):
        run(again())


def test_client_says_when_no_daemon_listens(tmp_path: Path) -> None:
    path = tmp_path / "quarterdeck.sock"

    async def main() -> None:
        async with ControlClient(path) as api:
            with pytest.raises(ControlUnavailable, match=f"no daemon is listening on {path}"):
                await api.whoami()
        with socket.socket(socket.AF_UNIX) as dead:
            dead.bind(str(path))  # the file exists; nobody accepts
            async with ControlClient(path) as api:
                with pytest.raises(ControlUnavailable, match="no daemon is listening"):
                    await api.command(WS, {"command": "lane.pause", "lane": "sim"})

    run(main())


# --- agents: a registered process and its descendants ---------------------------------------------

AGENT_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, os, subprocess, sys
    from quarterdeck.client.api import ControlClient, ControlRefused

    async def probe(path):
        async with ControlClient(path) as api:
            me = await api.whoami()
            refused = []
            for workspace, payload in [
                ("w", {"command": "lane.pause", "lane": "sim"}),
                ("w", {"command": "approval.approve", "approval_id": "a1"}),
            ]:
                try:
                    await api.command(workspace, payload)
                except ControlRefused as exc:
                    refused.append({"status": exc.status, "code": exc.code, "error": exc.message})
            try:
                await api.submit([{"idempotency_key": "agent-task", "workspace": "w",
                                   "kind": "task", "payload": {"objective": "x"}}])
            except ControlRefused as exc:
                refused.append({"status": exc.status, "code": exc.code, "error": exc.message})
        return {"pid": os.getpid(), "kind": me.principal.kind.value, "name": me.principal.name,
                "refused": refused}

    role, path = sys.argv[1], sys.argv[2]
    if role == "child":
        sys.stdin.readline()  # registered as an agent by now
        mine = asyncio.run(probe(path))
        grandchild = subprocess.run([sys.executable, __file__, "grandchild", path],
                                    capture_output=True, check=True)
        print(json.dumps({"child": mine, "grandchild": json.loads(grandchild.stdout)}))
    else:
        print(json.dumps(asyncio.run(probe(path))))
    """
)


def test_an_agent_process_and_its_grandchild_are_agents_and_refused(tmp_path: Path) -> None:
    script = tmp_path / "agent.py"
    script.write_text(AGENT_SCRIPT)

    async def main() -> None:
        async with serving(tmp_path, Roster.default(USER)) as served:
            child = await asyncio.create_subprocess_exec(
                sys.executable, str(script), "child", str(served.socket),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={**os.environ, "PYTHONPATH": str(REPO / "src")},
            )  # fmt: skip
            served.server.agent_pids.add(child.pid)
            out, err = await asyncio.wait_for(child.communicate(b"go\n"), timeout=60)
            assert child.returncode == 0, err.decode()
            report = json.loads(out)
            for who in ("child", "grandchild"):
                seen = report[who]
                assert seen["kind"] == "agent", who
                assert seen["name"] == f"agent:pid/{seen['pid']}", who
                assert [r["status"] for r in seen["refused"]] == [403, 403, 403], who
                assert {r["code"] for r in seen["refused"]} == {"agent"}, who
                assert "is an agent" in seen["refused"][0]["error"], who
            assert report["grandchild"]["pid"] != child.pid
            assert not served.paused("sim")
            # each refused command recorded with the agent that gave it; no task was taken
            refusals = served.store.ledger(action="command.refused")
            assert {e["payload"]["principal"]["kind"] for e in refusals} == {"agent"}
            assert len(refusals) == 4  # two commands from each of the two processes
            assert served.store.value("SELECT COUNT(*) FROM receipts WHERE kind <> 'command'") == 0
            async with served.client() as api:  # the test process itself is still a person
                me = await api.whoami()
                assert me.principal.kind is Kind.SUPERVISOR
                assert (await api.command(WS, {"command": "lane.pause", "lane": "sim"}))["ok"]
            assert served.paused("sim")

    run(main())


# --- roles -----------------------------------------------------------------------------------------


def test_viewer_reads_and_is_refused_every_write_admin_pauses(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path, roster_of(VIEWER)) as served, served.client() as api:
            assert (await api.whoami()).roles == {"viewer"}
            with pytest.raises(ControlRefused) as refused:
                await api.command(WS, {"command": "lane.pause", "lane": "sim"})
            assert (refused.value.status, refused.value.code) == (403, "missing_role")
            # a lane serves every workspace
            assert "'supervisor' in every workspace" in refused.value.message
            assert USER in refused.value.message
            with pytest.raises(ControlRefused, match="'supervisor' in workspace 'w'"):
                await api.command(WS, {"command": "turn.cancel", "turn_id": "t1"})
            with pytest.raises(ControlRefused, match="'supervisor' in workspace 'w'"):
                await api.submit([task("k1")])
            async with raw_client(served.socket) as raw:
                metrics = await raw.get("/metrics")
            assert metrics.status_code == 200
            assert metrics.headers["content-type"].startswith("text/plain")
            assert "qd_test_requests_total 3.0" in metrics.text
            assert not served.paused("sim")
            # the refused commands are recorded with who gave them; nothing else is
            refusals = served.store.ledger(action="command.refused")
            assert [(e["payload"]["refusal"], e["payload"]["principal"]["name"]) for e in refusals] == [
                ("missing_role", USER), ("missing_role", USER),
            ]  # fmt: skip
            assert served.store.value("SELECT COUNT(*) FROM receipts WHERE kind <> 'command'") == 0

            served.use_roster(roster_of(SUPERVISOR))
            with pytest.raises(ControlRefused, match="'admin'"):
                await api.command(WS, {"command": "fallback.force", "lane": "sim", "on": True})
            with pytest.raises(ControlRefused, match="'admin'"):
                await api.command(WS, {"command": "approval.bulk", "decision": "approve",
                                       "all_workspaces": True})  # fmt: skip
            result = await api.command(WS, {"command": "turn.cancel", "turn_id": "t-none"})
            assert result["ok"] is False  # allowed through; the runtime answers for the turn

            served.use_roster(Roster.default(USER))
            result = await api.command(WS, {"command": "lane.pause", "lane": "sim"})
            assert result == {"ok": True, "command": "lane.pause", "lane": "sim", "paused": True}
            assert served.paused("sim")
            [entry] = served.store.ledger(action="lane.paused")
            assert entry["actor"] == f"{USER} (uid {os.getuid()})"

    run(main())


def test_a_person_without_any_role_may_not_read_metrics(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path, Roster()) as served, raw_client(served.socket) as raw:
            answer = await raw.get("/metrics")
            assert answer.status_code == 403
            assert answer.json()["code"] == "missing_role"
            who = await raw.get("/v1/whoami")
            assert who.status_code == 200 and who.json()["roles"] == []

    run(main())


def test_envelopes_through_the_api_become_receipts_and_turns(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path, roster_of(SUPERVISOR)) as served, served.client() as api:
            results = await api.submit([task("k1"), task("k1"), {"workspace": WS, "kind": "task"}])
            assert [r.status for r in results] == ["accepted", "duplicate", "rejected"]
            assert results[0].receipt == results[1].receipt
            assert "idempotency_key: is required" in results[2].errors
            for _ in range(200):
                if served.store.produced(results[0].receipt)[0] == "turn":
                    break
                await asyncio.sleep(0.02)
            assert served.store.produced(results[0].receipt)[0] == "turn"
            served.use_roster(
                Roster(
                    members={USER: frozenset({SUPERVISOR})}, scopes={SUPERVISOR: frozenset({WS})}
                )
            )
            with pytest.raises(ControlRefused, match="'supervisor' in workspace '_unknown'"):
                await api.submit([{"kind": "task"}])  # no workspace: it would land in _unknown

    run(main())


# --- TCP: tokens only ------------------------------------------------------------------------------


def test_tcp_without_a_token_callback_is_always_401(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path, Roster.default(USER), listen=("127.0.0.1", 0)) as served:
            address = served.server.tcp_address
            assert address is not None and address[1] > 0
            url = f"http://{address[0]}:{address[1]}"
            for token in (None, new_token().text):
                async with ControlClient(url=url, token=token) as api:
                    with pytest.raises(ControlRefused) as refused:
                        await api.whoami()
                    assert (refused.value.status, refused.value.code) == (401, "unauthenticated")
                    assert "no tokens" in refused.value.message
            async with httpx.AsyncClient() as raw:
                answer = await raw.get(f"{url}/v1/whoami")
                assert answer.headers["www-authenticate"].startswith("Bearer")
            async with served.client() as api:  # the socket still serves the OS user
                assert (await api.whoami()).principal.uid == os.getuid()

    run(main())


def test_tcp_with_tokens(tmp_path: Path) -> None:
    issued = new_token()
    stored = {issued.id: ("ci-bot", issued.secret_hash)}

    async def verify(text: str) -> Principal | None:
        parts = split_token(text)
        if parts is None or parts[0] not in stored:
            return None
        name, secret_hash = stored[parts[0]]
        if not secret_matches(parts[1], secret_hash):
            return None
        return Principal(Kind.SUPERVISOR, f"token:{name}", granted=frozenset({VIEWER}))

    async def main() -> None:
        async with serving(
            tmp_path, Roster.default(USER), listen=("127.0.0.1", 0), verify_token=verify
        ) as served:
            host, port = served.server.tcp_address or ("", 0)
            url = f"http://{host}:{port}"
            async with ControlClient(url=url, token=issued.text) as api:
                me = await api.whoami()
                assert me.principal.name == "token:ci-bot" and me.principal.uid is None
                assert me.roles == {"viewer"}
                with pytest.raises(ControlRefused, match="'supervisor' in every workspace"):
                    await api.command(WS, {"command": "lane.pause", "lane": "sim"})
            wrong = issued.text[:-4] + ("aaaa" if not issued.text.endswith("aaaa") else "bbbb")
            for token in (None, wrong, "not-a-token"):
                async with ControlClient(url=url, token=token) as api:
                    with pytest.raises(ControlRefused) as refused:
                        await api.whoami()
                    assert refused.value.status == 401
            assert not served.paused("sim")

    run(main())


# --- malformed requests ----------------------------------------------------------------------------


def test_bad_requests_are_json_errors(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            serving(tmp_path, Roster.default(USER)) as served,
            raw_client(served.socket) as raw,
        ):

            async def error(method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
                answer = await raw.request(method, path, content=body)
                assert answer.headers["content-type"].startswith("application/json")
                assert "Traceback" not in answer.text
                return answer.status_code, answer.json()

            status, body = await error("POST", "/v1/envelopes", b"x" * (1024 * 1024 + 1))
            assert (status, body["code"]) == (413, "too_large")
            status, body = await error("POST", "/v1/commands", b'{"workspace": "w",')
            assert (status, body["code"]) == (400, "bad_json")
            assert "line 1 column 19" in body["error"]
            status, body = await error("POST", "/v1/commands", b'{"workspace": NaN}')
            assert (status, body["code"]) == (400, "bad_json") and "NaN" in body["error"]
            status, body = await error("POST", "/v1/commands", b"\xff")
            assert (status, body["code"]) == (400, "bad_json")
            status, body = await error(
                "POST", "/v1/commands",
                json.dumps({"command": {"command": "lane.pause", "actor": "cto"}, "as": 1}).encode(),
            )  # fmt: skip
            assert status == 400
            for problem in ("as: unknown field", "workspace: is required", "command.actor"):
                assert problem in body["error"]
            status, body = await error("POST", "/v1/envelopes", b'{"kind": "task"}')
            assert (status, body["error"]) == (400, "the body must be a JSON array of envelopes")
            status, body = await error("POST", "/v1/envelopes", b'["{\\"kind\\": \\"command\\"}"]')
            assert (status, body["error"]) == (400, "envelope 0 is not a JSON object")
            status, body = await error(
                "POST", "/v1/envelopes",
                json.dumps([task("k1"), {**task("k2"), "kind": "command"}]).encode(),
            )  # fmt: skip
            assert (status, body["code"]) == (400, "command_envelope")
            assert "envelope 1" in body["error"]
            status, body = await error("GET", "/v1/nothing")
            assert (status, body["code"]) == (404, "not_found")
            status, body = await error("DELETE", "/v1/whoami")
            assert (status, body["code"]) == (405, "method_not_allowed")
            assert served.store.value("SELECT COUNT(*) FROM receipts") == 0

            await served.runtime.stop(grace_s=0.2)  # its writer is gone: submitting fails
            status, body = await error("POST", "/v1/envelopes", json.dumps([task("k3")]).encode())
            assert (status, body) == (
                500, {"error": "internal error (see the daemon's log)", "code": "internal"}
            )  # fmt: skip

    run(main())
