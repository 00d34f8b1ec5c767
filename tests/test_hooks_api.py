"""The command hook and the hook routes against a real daemon, tried as an agent would: the
agent credential ``integrate`` issues asks and never decides, reads or mints tokens; every
failure of the hook (bad input, no or open credential file, no daemon, a revoked credential,
its own deadline) exits 2; a call still waiting at the deadline is denied with "ask again" and
asking again binds to the same approval; other events land on the ledger; ``integrate`` merges
into existing settings and ``--check`` proves the hook answers and fails closed."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import quarterdeck
from tests.headless import CONFIG, Headless, headless_runtime, query

from quarterdeck.domain.hooks import STILL_WAITING
from quarterdeck.domain.ids import short_id

POLICY = """
[defaults]
outcome = "require_approval"
reject_reasons = ["unsafe", "other"]

[[rules]]
name = "reads"
tool = "Read"
outcome = "allow"

[[rules]]
name = "no-rm"
tool = "Bash"
args = { command = { glob = "rm *" } }
outcome = "deny"
"""


@dataclass
class World:
    runtime: Headless
    project: Path
    home: Path

    @property
    def settings(self) -> Path:
        return self.project / ".claude" / "settings.json"

    def credential(self) -> Path:
        (path,) = (self.home / ".config" / "quarterdeck" / "hooks").iterdir()
        return path

    def token(self) -> str:
        return str(json.loads(self.credential().read_text())["workspaces"][0]["token"])

    def command(self) -> str:
        return str(
            json.loads(self.settings.read_text())["hooks"]["PreToolUse"][-1]["hooks"][0]["command"]
        )

    def hook(self, payload: Any, *extra: str, raw: bytes | None = None, timeout: float = 60):  # type: ignore[no-untyped-def]
        line = self.command() + "".join(f" {a}" for a in extra)
        data = raw if raw is not None else json.dumps(payload).encode()
        return subprocess.run(
            ["/bin/sh", "-c", line], input=data, capture_output=True, timeout=timeout
        )

    def api(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> httpx.Response:
        transport = httpx.HTTPTransport(uds=str(self.runtime.state_dir / "quarterdeck.sock"))
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        with httpx.Client(transport=transport, base_url="http://qd", timeout=30) as client:
            return client.request(method, path, json=body, headers=headers)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("hooks")
    project, home = root / "project", root / "home"
    project.mkdir()
    home.mkdir()
    with headless_runtime(root, POLICY, CONFIG) as runtime:
        done = quarterdeck("--state-dir", str(runtime.state_dir), "integrate", "claude-code",
                           "--project", str(project), env={"HOME": str(home)})  # fmt: skip
        assert done.returncode == 0, done.stderr.decode()
        yield World(runtime, project, home)


def pre(tool: str, tool_input: dict[str, Any], call: str, **more: Any) -> dict[str, Any]:
    return {"session_id": "sess-1", "transcript_path": "/t", "cwd": "/work/p",
            "permission_mode": "default", "hook_event_name": "PreToolUse", "tool_name": tool,
            "tool_input": tool_input, "tool_use_id": call, **more}  # fmt: skip


def decision(done: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr.decode()
    return dict(json.loads(done.stdout)["hookSpecificOutput"])


def test_the_agent_credential_asks_but_never_decides_reads_or_mints(world: World) -> None:
    token = world.token()
    who = world.api("GET", "/v1/whoami", token=token).json()
    assert (who["kind"], who["roles"], who["workspace"]) == ("agent", [], "default")
    assert who["name"].startswith("agent:token/")
    asked = world.api("POST", "/v1/hooks/claude-code",
                      {"payload": pre("Bash", {"command": "make"}, "call-own"), "wait_s": 0},
                      token)  # fmt: skip
    assert asked.json()["verdict"] == "pending"
    approval = asked.json()["approval"]
    approve = {"workspace": "default", "command": {"command": "approval.approve",
                                                   "approval_id": approval}}  # fmt: skip
    assert world.api("POST", "/v1/commands", approve, token).status_code == 403
    assert world.api("GET", "/v1/approvals", token=token).status_code == 403
    mint = {"workspace": "default", "command": {
        "command": "token.create", "token_id": "a" * 12, "principal": "me", "role": "admin",
        "secret_hash": "0" * 64}}  # fmt: skip
    assert world.api("POST", "/v1/commands", mint, token).status_code == 403
    # the OS user (no credential) is no agent: the hook route refuses it
    refused = world.api("POST", "/v1/hooks/claude-code", {"payload": pre("Read", {}, "c")})
    assert (refused.status_code, refused.json()["code"]) == (403, "not_an_agent")
    # the supervisor decides; the agent's next ask gets the decision
    assert world.api("POST", "/v1/commands", approve).status_code == 200
    again = world.api("POST", "/v1/hooks/claude-code",
                      {"payload": pre("Bash", {"command": "make"}, "call-own")}, token)  # fmt: skip
    assert again.json()["verdict"] == "allow"


def test_an_agent_token_without_a_workspace_is_refused(world: World) -> None:
    mint = {"workspace": "default", "command": {
        "command": "token.create", "token_id": "b" * 12, "principal": "loose", "role": "agent",
        "secret_hash": "1" * 64}}  # fmt: skip
    result = world.api("POST", "/v1/commands", mint).json()
    assert not result["ok"] and "pinned to a workspace" in json.dumps(result["errors"])


def test_the_hook_answers_each_verdict(world: World) -> None:
    assert decision(world.hook(pre("Read", {"file_path": "/x"}, "c-read")))[
        "permissionDecision"] == "allow"  # fmt: skip
    denied = decision(world.hook(pre("Bash", {"command": "rm -rf /"}, "c-rm")))
    assert denied["permissionDecision"] == "deny" and "no-rm" in denied["permissionDecisionReason"]


def test_a_call_still_waiting_at_the_deadline_is_denied_and_asking_again_binds(
    world: World,
) -> None:
    payload = pre("Bash", {"command": "deploy"}, "c-wait")
    started = time.monotonic()
    first = decision(world.hook(payload, "--deadline", "9"))
    assert time.monotonic() - started < 15
    assert (first["permissionDecision"], first["permissionDecisionReason"]) == (
        "deny", STILL_WAITING,
    )  # fmt: skip
    second = decision(world.hook(payload, "--deadline", "9"))
    assert second["permissionDecision"] == "deny"
    rows = query(world.runtime, "SELECT id FROM approvals WHERE action_key LIKE ?",
                 ("%sess-1:c-wait",))  # fmt: skip
    assert len(rows) == 1


@pytest.mark.parametrize(
    ("raw", "said"),
    [(b"not json", "not JSON"), (b'{"hook_event_name": "PreToolUse"}', "bad hook input"),
     (b"[]", "bad hook input")],
)  # fmt: skip
def test_bad_input_exits_2(world: World, raw: bytes, said: str) -> None:
    done = world.hook(None, raw=raw)
    assert done.returncode == 2 and said in done.stderr.decode()


def test_every_failure_of_the_hook_exits_2(world: World, tmp_path: Path) -> None:
    payload = pre("Read", {"file_path": "/x"}, "c-fail")
    dead = world.hook(payload, "--api", str(tmp_path / "none.sock"))
    assert dead.returncode == 2 and "no Quarterdeck daemon answers" in dead.stderr.decode()
    credential = world.credential()
    credential.chmod(0o644)
    try:
        opened = world.hook(payload)
    finally:
        credential.chmod(0o600)
    assert opened.returncode == 2 and "chmod 600" in opened.stderr.decode()
    bare = [sys.executable, "-m", "quarterdeck", "hook", "claude-code"]
    done = subprocess.run(bare, input=json.dumps(payload).encode(), capture_output=True,
                          env={k: v for k, v in os.environ.items()
                               if k != "QUARTERDECK_HOOK_CREDENTIAL"})  # fmt: skip
    assert done.returncode == 2 and "no credential file" in done.stderr.decode()
    forged = tmp_path / "forged.json"
    data = json.loads(credential.read_text())
    data["workspaces"][0]["token"] = data["workspaces"][0]["token"][:-4] + "AAAA"
    forged.write_text(json.dumps(data))
    forged.chmod(0o600)
    done = subprocess.run([*bare, "--credential", str(forged)], input=json.dumps(payload).encode(),
                          capture_output=True)  # fmt: skip
    assert done.returncode == 2 and "not_an_agent" in done.stderr.decode()
    # its own hard deadline: stdin that never ends
    started = time.monotonic()
    stuck = subprocess.Popen([*bare, "--credential", str(credential), "--deadline", "1"],
                             stdin=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        assert stuck.wait(timeout=20) == 2
    finally:
        stuck.kill()
        assert stuck.stdin is not None and stuck.stderr is not None
        stuck.stdin.close()
        said = stuck.stderr.read().decode()
        stuck.stderr.close()
    assert "deadline" in said and time.monotonic() - started < 15


def test_other_events_land_on_the_ledger(world: World) -> None:
    post = {**pre("Bash", {"command": "ls"}, "c-post"), "hook_event_name": "PostToolUse",
            "tool_response": {"stdout": "y" * 40_000, "stderr": ""}}  # fmt: skip
    prompt = {"session_id": "sess-1", "cwd": "/work/p", "hook_event_name": "UserPromptSubmit",
              "prompt": "fix the build", "prompt_id": "p-1"}  # fmt: skip
    for payload in (post, prompt, {**prompt, "hook_event_name": "SessionEnd", "reason": "exit"}):
        done = world.hook(payload)
        assert done.returncode == 0 and done.stdout == b"", done.stderr.decode()
    entries = query(world.runtime, "SELECT payload FROM ledger WHERE action = 'event.recorded'")
    payloads = [json.loads(e["payload"])["payload"] for e in entries]
    result = next(p for p in payloads if p["event"] == "PostToolUse")
    assert result["action_id"] == "claude-code:sess-1:c-post"
    assert result["result"]["size"] > 40_000 and result["result"]["truncated"]
    assert any(p.get("prompt") == "fix the build" for p in payloads)
    assert any(p["event"] == "SessionEnd" for p in payloads)


def test_the_http_endpoint_answers_in_claude_codes_format(world: World) -> None:
    answered = world.api("POST", "/v1/hooks/claude-code/http?wait_s=0",
                         pre("Bash", {"command": "rm x"}, "c-http"), world.token())  # fmt: skip
    output = answered.json()["hookSpecificOutput"]
    assert output["permissionDecision"] == "deny"


def test_the_hook_imports_nothing_heavy() -> None:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "quarterdeck", "hook", "claude-code"],
        input=b"{}", capture_output=True,
    )  # fmt: skip
    assert done.returncode == 2
    loaded = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.decode().splitlines()
              if line.startswith("import time:")}  # fmt: skip
    assert not loaded & {"sqlalchemy", "aiohttp", "httpx", "pydantic", "textual", "asyncio"}


def test_integrate_merges_and_check_proves_it(world: World, tmp_path: Path) -> None:
    project = tmp_path / "other"
    (project / ".claude").mkdir(parents=True)
    mine = {"model": "opus", "permissions": {"allow": ["Bash(ls)"]},
            "hooks": {"PreToolUse": [{"matcher": "Edit", "hooks": [
                {"type": "command", "command": "./lint.sh"}]}]}}  # fmt: skip
    (project / ".claude" / "settings.json").write_text(json.dumps(mine))
    args = ("--state-dir", str(world.runtime.state_dir), "integrate", "claude-code",
            "--project", str(project), "--credential-dir", str(tmp_path / "creds"))  # fmt: skip
    for _ in range(2):
        assert quarterdeck(*args).returncode == 0
    merged = json.loads((project / ".claude" / "settings.json").read_text())
    assert merged["model"] == "opus" and merged["permissions"] == mine["permissions"]
    groups = merged["hooks"]["PreToolUse"]
    assert groups[0] == mine["hooks"]["PreToolUse"][0] and len(groups) == 2
    checked = quarterdeck(*args, "--check")
    assert checked.returncode == 0, checked.stdout.decode()
    assert "fails closed" in checked.stdout.decode()
    (project / ".claude" / "settings.json").write_text(json.dumps(
        {**merged, "hooks": {k: v for k, v in merged["hooks"].items() if k != "PostToolBatch"}}
    ))  # fmt: skip
    older = quarterdeck(*args, "--check")
    assert older.returncode == 1 and b"no Quarterdeck PostToolBatch hook" in older.stdout
    assert quarterdeck(*args).returncode == 0 and quarterdeck(*args, "--check").returncode == 0
    (tmp_path / "creds").joinpath(os.listdir(tmp_path / "creds")[0]).chmod(0o640)
    assert quarterdeck(*args, "--check").returncode == 1
    (project / ".claude" / "settings.json").write_text("{not json")
    broken = quarterdeck(*args)
    assert broken.returncode == 2 and b"nothing was changed" in broken.stderr
    assert (project / ".claude" / "settings.json").read_text() == "{not json"


def test_calls_go_to_the_workspace_their_directory_maps_to(world: World, tmp_path: Path) -> None:
    project = tmp_path / "mapped"
    args = ("--state-dir", str(world.runtime.state_dir), "integrate", "claude-code",
            "--project", str(project), "--credential-dir", str(tmp_path / "creds"),
            "--map", f"{tmp_path}/team-b=team-b")  # fmt: skip
    done = quarterdeck(*args)
    assert done.returncode == 0, done.stderr.decode()
    settings = json.loads((project / ".claude" / "settings.json").read_text())
    command = settings["hooks"]["PreToolUse"][-1]["hooks"][0]["command"]
    for cwd, call in ((f"{tmp_path}/team-b/src", "c-map-b"), (f"{tmp_path}/team-bc", "c-map-d")):
        payload = pre("Bash", {"command": "make"}, call, cwd=cwd)
        ran = subprocess.run(["/bin/sh", "-c", command + " --deadline 4"],
                             input=json.dumps(payload).encode(), capture_output=True)  # fmt: skip
        assert ran.returncode == 0, ran.stderr.decode()
    rows = query(world.runtime, "SELECT workspace, action_key FROM approvals WHERE action_key "
                 "LIKE '%c-map-%' ORDER BY action_key")  # fmt: skip
    assert [r["workspace"] for r in rows] == ["team-b", "default"]
    bad = quarterdeck(*args[:-1], "nothing-here")
    assert bad.returncode == 2 and b"DIR=WORKSPACE" in bad.stderr


def test_the_hook_after_global_options_still_exits_2() -> None:
    done = quarterdeck("--workspace", "w", "hook", "claude-code", stdin=b"{}")
    assert done.returncode == 2 and b"hook comes first" in done.stderr


def test_a_stopped_turn_stops_every_later_call_and_a_new_prompt_goes_on(world: World) -> None:
    prompt = {"session_id": "sess-stop", "cwd": "/work/s", "hook_event_name": "UserPromptSubmit",
              "prompt": "tidy up", "permission_mode": "default"}  # fmt: skip
    assert world.hook(prompt).returncode == 0
    (turn,) = query(world.runtime, "SELECT id, state FROM turns WHERE objective = 'tidy up'")
    assert turn["state"] == "running"
    asked = world.hook(pre("Bash", {"command": "make"}, "s-1", session_id="sess-stop"),
                       "--deadline", "9")  # fmt: skip
    (approval,) = query(world.runtime, "SELECT id, turn_id, data FROM approvals WHERE action_key = ?",
                        ("sdk:claude-code:sess-stop:s-1",))  # fmt: skip
    assert approval["turn_id"] == turn["id"]
    assert json.loads(approval["data"])["hook"] == {
        "agent": "claude-code", "session": "sess-stop", "cwd": "/work/s",
    }  # fmt: skip
    assert decision(asked)["permissionDecisionReason"] == STILL_WAITING
    batch = {"session_id": "sess-stop", "cwd": "/work/s", "hook_event_name": "PostToolBatch",
             "tool_calls": [{"tool_name": "Bash", "tool_input": {"command": "make"},
                             "tool_use_id": "s-1", "tool_response": STILL_WAITING}]}  # fmt: skip
    went_on = world.hook(batch)
    assert (went_on.returncode, json.loads(went_on.stdout)) == (0, {}), went_on.stderr.decode()
    # a supervisor sees the session and cwd beside the call
    listed = world.runtime.cli("approvals", "-w", "default")
    line = next(li for li in listed.stdout.decode().splitlines() if "sess-stop" in li)
    assert "/work/s" in line and line.startswith(short_id(approval["id"]))
    shown = world.runtime.cli("show", approval["id"], "-w", "default").stdout.decode()
    assert re.search(r"^session +sess-stop$", shown, re.M) and re.search(
        r"^cwd +/work/s$", shown, re.M
    )
    assert world.runtime.cli("cancel", turn["id"], "-w", "default").returncode == 0
    # the call that waited, and any later call (even one the policy allows), stop the agent
    for call in (pre("Bash", {"command": "make"}, "s-1", session_id="sess-stop"),
                 pre("Read", {"file_path": "/x"}, "s-2", session_id="sess-stop")):  # fmt: skip
        done = world.hook(call)
        assert done.returncode == 0, done.stderr.decode()
        said = json.loads(done.stdout)
        assert (
            said["continue"] is False and f"turn {turn['id']} was cancelled" in said["stopReason"]
        )
        assert said["hookSpecificOutput"]["permissionDecision"] == "deny"
    assert query(world.runtime, "SELECT state FROM approvals WHERE action_key = ?",
                 ("sdk:claude-code:sess-stop:s-1",)) == [{"state": "rejected"}]  # fmt: skip
    # after the batch, Claude Code hears continue: false alone: that ends its loop
    stopped = world.hook(batch)
    assert stopped.returncode == 0, stopped.stderr.decode()
    said = json.loads(stopped.stdout)
    assert set(said) == {"continue", "stopReason"} and said["continue"] is False
    assert said["stopReason"].startswith(f"Quarterdeck: turn {turn['id']} was cancelled by ")
    assert world.api("POST", "/v1/hooks/claude-code/http", batch, world.token()).json() == said
    # the next prompt is a new turn: the agent goes on
    assert world.hook({**prompt, "prompt": "now this"}).returncode == 0
    assert json.loads(world.hook(batch).stdout) == {}
    allowed = decision(world.hook(pre("Read", {"file_path": "/x"}, "s-4", session_id="sess-stop")))
    assert allowed["permissionDecision"] == "allow"
    turns = query(world.runtime, "SELECT objective, state FROM turns WHERE lane = 'claude-code' "
                  "AND input LIKE '%sess-stop%' ORDER BY id")  # fmt: skip
    assert turns == [{"objective": "tidy up", "state": "cancelled"},
                     {"objective": "now this", "state": "running"}]  # fmt: skip


def test_the_installed_hook_starts_isolated_and_lean(world: World) -> None:
    argv = shlex.split(world.command())
    assert argv[:3] == [sys.executable, "-I", "-S"] and argv[4:6] == ["hook", "claude-code"]
    done = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], input=b"{}",
                          capture_output=True, env={"PYTHONPATH": "/nowhere"})  # fmt: skip
    assert done.returncode == 2 and b"bad hook input" in done.stderr
    loaded = {line.split("|")[-1].strip() for line in done.stderr.decode().splitlines()
              if line.startswith("import time:")}  # fmt: skip
    assert {"quarterdeck.cli.hook", "quarterdeck.domain.hooks"} <= loaded
    assert not loaded & {"site", "typing", "argparse", "dataclasses", "urllib.parse", "hashlib"}
