"""The control API served by a real daemon (``quarterdeck run --headless`` in a subprocess): the
state directory's socket names the OS user, a command through it lands on the ledger under the
peer's label, and a command-lane agent the daemon starts is an agent whatever it tries — on the
supervisors' socket without or with its session credential, and on the agents' socket — with
its credential pinned to its workspace and worthless once its mission ended. TCP off loopback
is refused without TLS; with a certificate it is served over TLS."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.conftest import quarterdeck, run
from tests.headless import headless_runtime, wait_until

from quarterdeck.client.api import ControlClient, ControlUnavailable
from quarterdeck.domain.authority import Kind

USER = pwd.getpwuid(os.getuid()).pw_name
LABEL = f"{USER} (uid {os.getuid()})"
WS = "tenant-a"

AGENT = textwrap.dedent(
    """
    import json, os, subprocess, sys
    import httpx

    main_socket = sys.argv[1]
    mission = json.loads(sys.stdin.readline())
    token = os.environ.get("QUARTERDECK_SESSION_TOKEN", "")
    api = os.environ.get("QUARTERDECK_API", "")

    def call(path, method, url, body=None, bearer=None):
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        with httpx.Client(transport=httpx.HTTPTransport(uds=path), base_url="http://qd") as c:
            r = c.request(method, url, json=body, headers=headers)
            return {"status": r.status_code, "body": r.json()}

    task = lambda ws, key: [{"idempotency_key": key, "workspace": ws, "kind": "task",
                             "payload": {"objective": "spawned", "lane": "sim"}}]
    pause = {"workspace": "tenant-a", "command": {"command": "lane.pause", "lane": "sim"}}
    bulk = {"workspace": "tenant-a", "command": {"command": "approval.bulk",
            "decision": "approve", "all_workspaces": True}}
    child = subprocess.run(
        [sys.executable, "-c", "import httpx, os, sys, json;"
         "c = httpx.Client(transport=httpx.HTTPTransport(uds=sys.argv[1]), base_url='http://qd');"
         "print(json.dumps(c.get('/v1/whoami', headers={'Authorization': 'Bearer ' + sys.argv[2]}).json()))",
         api, token], capture_output=True, text=True)
    report = {
        "env": sorted(os.environ),
        "api": api,
        "token": token,
        "plain_whoami": call(main_socket, "GET", "/v1/whoami"),
        "plain_pause": call(main_socket, "POST", "/v1/commands", pause),
        "plain_status": call(main_socket, "GET", "/v1/status"),
        "main_token_whoami": call(main_socket, "GET", "/v1/whoami", bearer=token),
        "main_token_pause": call(main_socket, "POST", "/v1/commands", pause, bearer=token),
        "agent_whoami": call(api, "GET", "/v1/whoami", bearer=token),
        "agent_no_token": call(api, "GET", "/v1/whoami"),
        "agent_forged": call(api, "GET", "/v1/whoami", bearer="qds_" + "A" * 43),
        "agent_own_ws": call(api, "POST", "/v1/envelopes", task("tenant-a", "mine"), token),
        "agent_other_ws": call(api, "POST", "/v1/envelopes", task("tenant-b", "theirs"), token),
        "agent_pause": call(api, "POST", "/v1/commands", pause, bearer=token),
        "agent_bulk": call(api, "POST", "/v1/commands", bulk, bearer=token),
        "agent_reads": call(api, "GET", "/v1/approvals", bearer=token),
        "child": json.loads(child.stdout or "null"),
    }
    print(json.dumps({"type": "deliverable", "deliverable": report}), flush=True)
    """
)

CONFIG = """
default_lane = "sim"

[lanes.sim]
adapter = "sim"
options = {{ max_latency_ms = 20 }}

[lanes.agent]
adapter = "command"
options = {{ argv = [{python}, {script}, {socket}] }}
"""


def config_for(root: Path) -> str:
    script = root / "agent.py"
    script.write_text(AGENT, encoding="utf-8")
    socket_path = root / "state" / "quarterdeck.sock"
    return CONFIG.format(
        python=json.dumps(sys.executable), script=json.dumps(str(script)),
        socket=json.dumps(str(socket_path)),
    )  # fmt: skip


def test_the_daemon_serves_its_os_user_and_refuses_its_own_agents(tmp_path: Path) -> None:
    with headless_runtime(tmp_path, config=config_for(tmp_path)) as daemon:
        socket_path = daemon.state_dir / "quarterdeck.sock"
        assert stat.S_IMODE(os.stat(socket_path).st_mode) == 0o600

        async def person() -> dict[str, Any]:
            async with ControlClient(socket_path) as api:
                me = await api.whoami()
                assert me.principal.kind is Kind.SUPERVISOR
                assert me.principal.uid == os.getuid() and me.principal.name == USER
                assert me.roles == {"admin"}
                [sent] = await api.submit(
                    [{"idempotency_key": "work", "workspace": WS, "kind": "task",
                      "payload": {"objective": "probe the API", "lane": "agent"}}]
                )  # fmt: skip
                assert sent.status == "accepted"
                for _ in range(600):
                    item = await api.show(sent.receipt)
                    assert item is not None
                    if item["produced"]:
                        break
                    await asyncio.sleep(0.05)
                turn_id = item["produced"]["id"]
                for _ in range(600):
                    turn = await api.show(turn_id)
                    assert turn is not None
                    if turn["state"] in ("completed", "failed"):
                        break
                    await asyncio.sleep(0.05)
                assert turn["state"] == "completed", turn
                return dict(turn["deliverable"])

        report = run(person())
        assert "QUARTERDECK_STATE_DIR" not in report["env"]
        assert report["api"] and not report["api"].startswith(str(daemon.state_dir) + "/")
        assert report["token"].startswith("qds_")

        plain = report["plain_whoami"]["body"]
        assert plain["kind"] == "agent" and plain["name"].startswith("agent:pid/")
        for probe in ("plain_pause", "plain_status", "main_token_pause", "agent_pause",
                      "agent_bulk", "agent_reads", "agent_other_ws"):  # fmt: skip
            assert report[probe]["status"] == 403, (probe, report[probe])
            assert report[probe]["body"]["code"] == "agent", (probe, report[probe])
        for probe in ("main_token_whoami", "agent_whoami", "child"):
            seen = report[probe]["body"] if probe != "child" else report[probe]
            assert seen["kind"] == "agent", probe
            assert seen["name"].startswith("agent:session/"), probe
            assert seen["workspace"] == WS, probe
            assert seen["roles"] == [], probe
        assert report["agent_no_token"]["status"] == 401
        assert report["agent_forged"]["status"] == 401
        assert report["agent_own_ws"]["status"] == 200
        assert report["agent_own_ws"]["body"]["results"][0]["status"] == "accepted"

        async def afterwards() -> None:
            async with ControlClient(socket_path) as api:
                receipts = await api.items("receipts")
                assert {r["workspace"] for r in receipts} == {WS}
                keys = {r["envelope"]["idempotency_key"] for r in receipts}
                # the agents' commands were recorded (and refused): only commands besides
                assert {k for k in keys if not k.startswith("cmd:")} == {"work", "mine"}
                entries = (await api.ledger_page(limit=1000))["entries"]
                assert not [e for e in entries if e["action"] == "lane.paused"]
                refused = [e for e in entries if e["actor"].startswith("agent:")]
                assert not [e for e in refused if e["action"] == "lane.paused"]
                assert [e for e in refused if e["action"] == "command.refused"]
                result = await api.command(WS, {"command": "lane.pause", "lane": "sim"})
                assert result["ok"] is True
                entries = (await api.ledger_page(limit=50))["entries"]
                [paused] = [e for e in entries if e["action"] == "lane.paused"]
                assert paused["actor"] == LABEL
                metrics = await api.metrics()
            families = {f.name: f for f in text_string_to_metric_families(metrics)}
            assert "quarterdeck_retries" in families  # the counter quarterdeck_retries_total
            assert "quarterdeck_node_running_missions" in families
            refusals = families["quarterdeck_node_api_refusals"]
            codes = {
                s.labels["code"]: s.value for s in refusals.samples if s.name.endswith("_total")
            }
            assert codes.get("agent", 0) >= 6 and codes.get("unauthenticated", 0) >= 2

        run(afterwards())

        # The mission ended: its credential is worth nothing now, wherever it is presented.
        with httpx.Client(
            transport=httpx.HTTPTransport(uds=report["api"]), base_url="http://qd"
        ) as raw:
            answer = raw.get("/v1/whoami", headers={"Authorization": f"Bearer {report['token']}"})
        assert answer.status_code == 401
        assert "session ended" in answer.json()["error"]


def test_tcp_off_loopback_needs_tls(tmp_path: Path) -> None:
    state = tmp_path / "state"
    refused = quarterdeck("run", "--headless", "--listen", "0.0.0.0:8470", state_dir=state)
    assert refused.returncode == 2
    assert b"not a loopback address" in refused.stderr and b"--tls-cert" in refused.stderr
    lonely = quarterdeck("run", "--headless", "--tls-cert", "c.pem", state_dir=state)
    assert lonely.returncode == 2 and b"go together" in lonely.stderr
    malformed = quarterdeck("run", "--headless", "--listen", "8470", state_dir=state)
    assert malformed.returncode == 2 and b"HOST:PORT" in malformed.stderr
    assert not (state / "quarterdeck.sock").exists()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tcp_with_a_certificate_is_served_over_tls(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    state = tmp_path / "state"
    env = {**os.environ, "QUARTERDECK_STATE_DIR": str(state)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "quarterdeck", "run", "--headless", "--listen", "127.0.0.1:0",
         "--tls-cert", str(cert), "--tls-key", str(key)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=tmp_path,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        served: dict[str, Any] = {}

        def logged() -> dict[str, Any] | None:
            line = proc.stderr.readline() if proc.stderr else b""
            assert line, "the daemon exited"
            entry = json.loads(line)
            if entry.get("message") == "control API served":
                served.update(entry)
                return entry
            return None

        wait_until(logged, 60, "the control API")
        host, port = served["tcp"]
        with httpx.Client(verify=str(cert)) as client:
            answer = client.get(f"https://{host}:{port}/v1/whoami")
        assert answer.status_code == 401  # TLS spoken; no token, no entry
        with httpx.Client() as plain, pytest.raises(httpx.HTTPError):
            plain.get(f"http://{host}:{port}/v1/whoami")
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_without_a_daemon_the_client_says_so(tmp_path: Path) -> None:
    async def main() -> None:
        async with ControlClient.for_state_dir(tmp_path) as api:
            with pytest.raises(ControlUnavailable, match="no daemon is listening"):
                await api.status()

    run(main())
