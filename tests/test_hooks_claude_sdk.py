"""The real Claude Code CLI in SDK mode (``-p --input-format stream-json --output-format
stream-json --permission-prompt-tool stdio``), where ``PermissionRequest`` fires: the hook
``quarterdeck integrate claude-code`` installs for it decides the call (the SDK's own
``can_use_tool`` request is never answered here, so only the hook can). With the PreToolUse
gate taken out, so that the call reaches the permission prompt: a call a supervisor approves
runs, a call the policy denies does not run and Claude hears the rule."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.agent_cli import ScriptedModel, agent_binary, scripted_model
from tests.conftest import quarterdeck
from tests.headless import CONFIG, Headless, headless_runtime, query, wait_until

POLICY = """
[defaults]
outcome = "require_approval"
reject_reasons = ["unsafe", "other"]

[[rules]]
name = "no-rm-rf"
tool = "Bash"
args = { command = { glob = "rm -rf*" } }
outcome = "deny"
"""


def run_sdk(claude: Path, project: Path, home: Path, model: ScriptedModel) -> list[dict[str, Any]]:
    """One prompt through Claude Code's SDK mode; every message it printed, up to its result.
    Its stdin stays open until the result (closing it fails the permission request)."""
    env = {
        **os.environ, "HOME": str(home), "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{model.port}",
        "ANTHROPIC_API_KEY": "sk-test", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1", "DISABLE_ERROR_REPORTING": "1",
    }  # fmt: skip
    command = [
        str(claude), "-p", "--input-format", "stream-json", "--output-format", "stream-json",
        "--verbose", "--permission-prompt-tool", "stdio", "--permission-mode", "default",
    ]  # fmt: skip
    proc = subprocess.Popen(
        command, cwd=project, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True, bufsize=1,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    timer = threading.Timer(180, proc.kill)
    timer.start()
    messages: list[dict[str, Any]] = []
    try:
        prompt = {"type": "user", "message": {"role": "user", "content": "go"}}
        proc.stdin.write(json.dumps(prompt) + "\n")
        proc.stdin.flush()
        for line in proc.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            messages.append(message)
            if message.get("type") == "result":
                break
    finally:
        timer.cancel()
        proc.stdin.close()
        proc.wait(timeout=30)
    assert messages and messages[-1].get("type") == "result", messages[-3:]
    return messages


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Headless, Path, Path, ScriptedModel, Path]]:
    """A daemon; a project whose only gate is the PermissionRequest hook."""
    claude = agent_binary("claude")
    project, home = tmp_path / "project", tmp_path / "home"
    project.mkdir()
    home.mkdir()
    with headless_runtime(tmp_path, POLICY, CONFIG) as runtime, scripted_model() as model:
        done = quarterdeck(
            "--state-dir", str(runtime.state_dir), "integrate", "claude-code",
            "--project", str(project), env={"HOME": str(home)},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr.decode()
        path = project / ".claude" / "settings.json"
        settings = json.loads(path.read_text())
        (group,) = settings["hooks"]["PermissionRequest"]
        assert " hook claude-code " in group["hooks"][0]["command"]
        del settings["hooks"]["PreToolUse"]
        path.write_text(json.dumps(settings))
        yield runtime, project, home, model, claude


def test_a_permission_request_approved_by_a_supervisor_runs(
    world: tuple[Headless, Path, Path, ScriptedModel, Path],
) -> None:
    runtime, project, home, model, claude = world
    model.tool = "Bash"
    model.input = {"command": "touch approved.txt", "description": "touch"}
    outcome: list[dict[str, Any]] = []
    thread = threading.Thread(target=lambda: outcome.extend(run_sdk(claude, project, home, model)))
    thread.start()

    def pending() -> dict[str, Any] | None:
        rows = query(runtime, "SELECT * FROM approvals WHERE state = 'pending'")
        return rows[0] if rows else None

    approval = wait_until(pending, 60, "the PermissionRequest hook's approval")
    assert json.loads(approval["args"])["command"] == "touch approved.txt"
    assert approval["turn_id"] and json.loads(approval["data"])["hook"]["cwd"] == str(project)
    done = runtime.cli("approve", approval["id"], "-w", "default")
    assert done.returncode == 0, done.stderr.decode()
    thread.join(timeout=180)
    assert (project / "approved.txt").exists()
    assert not outcome[-1].get("permission_denials"), outcome[-1]


def test_a_permission_request_the_policy_denies_does_not_run(
    world: tuple[Headless, Path, Path, ScriptedModel, Path],
) -> None:
    _runtime, project, home, model, claude = world
    victim = project / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("keep")
    model.tool, model.input = "Bash", {"command": f"rm -rf {victim}", "description": "clean"}
    messages = run_sdk(claude, project, home, model)
    assert (victim / "keep.txt").exists()
    assert messages[-1]["permission_denials"], messages[-1]
    assert "no-rm-rf" in json.dumps(model.tool_results())
