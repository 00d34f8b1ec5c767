"""The real Codex CLI (``codex exec``, pinned in package-lock.json) supervised through the hooks
``quarterdeck integrate codex`` installs in ``$CODEX_HOME/hooks.json``, against a scripted
Responses API server and a real daemon: an allowed command runs, a denied ``rm -rf`` does not
run and Codex hears why, a call approved with an edit runs the edited command, a rejected call
does not run, with the daemon down the call is blocked; and ``integrate codex --check`` finds
hooks Codex does not trust (it would skip them silently)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.agent_cli import (
    CODEX_CONFIG,
    ScriptedModel,
    agent_binary,
    run_codex,
    scripted_model,
)
from tests.conftest import quarterdeck
from tests.headless import CONFIG, Headless, headless_runtime, query, wait_until

POLICY = """
[defaults]
outcome = "require_approval"
reject_reasons = ["unsafe", "wrong_target", "needs_context", "policy", "other"]

[[rules]]
name = "echoes"
tool = "Bash"
args = { command = { glob = "echo allowed*" } }
outcome = "allow"

[[rules]]
name = "no-rm-rf"
tool = "Bash"
args = { command = { glob = "rm -rf*" } }
outcome = "deny"
"""


@dataclass
class World:
    runtime: Headless
    project: Path
    home: Path
    codex_home: Path
    model: ScriptedModel
    codex: Path

    def integrate(self, *extra: str) -> Any:
        return quarterdeck(
            "--state-dir", str(self.runtime.state_dir), "integrate", "codex",
            "--codex-home", str(self.codex_home), "--codex-bin", str(self.codex), *extra,
            env={"HOME": str(self.home), "CODEX_HOME": str(self.codex_home)},
        )  # fmt: skip

    def run(self, command: str, **kwargs: Any) -> list[dict[str, Any]]:
        self.model.tool, self.model.input = "exec_command", {"cmd": command}
        return run_codex(self.codex, self.project, self.home, self.codex_home, self.model, **kwargs)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    codex = agent_binary("codex")
    project, home, codex_home = tmp_path / "project", tmp_path / "home", tmp_path / "codex"
    for folder in (project, home, codex_home):
        folder.mkdir()
    with headless_runtime(tmp_path, POLICY, CONFIG) as runtime, scripted_model() as model:
        found = World(runtime, project, home, codex_home, model, codex)
        (codex_home / "config.toml").write_text(CODEX_CONFIG.format(port=model.port))
        done = found.integrate()
        assert done.returncode == 0, done.stderr.decode()
        yield found


def told(world: World) -> str:
    """What Codex sent back to the model about its call."""
    results = world.model.tool_results()
    assert results, "no tool output reached the model"
    return json.dumps(results[-1])


def test_an_allowed_command_runs(world: World) -> None:
    world.run("echo allowed > out.txt")
    assert (world.project / "out.txt").read_text() == "allowed\n"
    rows = query(world.runtime, "SELECT payload FROM ledger WHERE action = 'event.recorded'")
    events = {json.loads(r["payload"])["payload"]["event"] for r in rows}
    assert {"SessionStart", "UserPromptSubmit", "PostToolUse"} <= events, events


def test_a_denied_rm_rf_does_not_run_and_codex_hears_why(world: World) -> None:
    victim = world.project / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("keep")
    world.run(f"rm -rf {victim}")
    assert (victim / "keep.txt").exists()
    assert "no-rm-rf" in told(world)


def pending(runtime: Headless) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        rows = query(runtime, "SELECT * FROM approvals WHERE state = 'pending'")
        return rows[0] if rows else None

    return wait_until(find, 60, "the hook's approval")


def in_background(world: World, command: str) -> threading.Thread:
    thread = threading.Thread(target=lambda: world.run(command))
    thread.start()
    return thread


def test_a_call_approved_with_an_edit_runs_the_edited_command(world: World) -> None:
    thread = in_background(world, "echo asked > out.txt")
    approval = pending(world.runtime)
    assert json.loads(approval["args"])["command"] == "echo asked > out.txt"
    assert approval["lane"] == "codex"
    edited = json.dumps({"command": "echo edited > out.txt"})
    done = world.runtime.cli("approve", approval["id"], "--edit", edited, "-w", "default")
    assert done.returncode == 0, done.stderr.decode()
    thread.join(timeout=120)
    assert (world.project / "out.txt").read_text() == "edited\n"


def test_a_rejected_call_does_not_run_and_codex_hears_the_reason(world: World) -> None:
    thread = in_background(world, "touch rejected.txt")
    approval = pending(world.runtime)
    done = world.runtime.cli(
        "reject", approval["id"], "--reason", "unsafe", "--note", "not today", "-w", "default"
    )
    assert done.returncode == 0, done.stderr.decode()
    thread.join(timeout=120)
    assert not (world.project / "rejected.txt").exists()
    assert "not today" in told(world)


def test_with_the_daemon_down_the_call_is_blocked(world: World) -> None:
    world.runtime.proc.terminate()
    world.runtime.proc.wait(timeout=30)
    world.run("touch ran.txt")
    assert not (world.project / "ran.txt").exists()


def test_check_finds_hooks_codex_does_not_trust_and_trust_makes_them_run(world: World) -> None:
    checked = world.integrate("--check")
    assert checked.returncode == 1
    assert b"does not trust" in checked.stdout, checked.stdout.decode()
    assert b"fails closed" in checked.stdout
    # untrusted, Codex skips the hook silently: the call runs unsupervised
    (world.project / "kept").mkdir()
    world.run("touch unsupervised.txt", bypass_trust=False)
    assert (world.project / "unsupervised.txt").exists()
    trusted = world.integrate("--trust")
    assert trusted.returncode == 0, trusted.stderr.decode()
    checked = world.integrate("--check")
    assert checked.returncode == 0, checked.stdout.decode()
    assert "provider" in (world.codex_home / "config.toml").read_text()  # the user's config kept
    world.run(f"rm -rf {world.project / 'kept'}", bypass_trust=False)
    assert (world.project / "kept").exists()
    assert "no-rm-rf" in told(world)


def test_the_session_and_prompt_are_a_session_and_turn_and_a_cancel_stops_the_call(
    world: World,
) -> None:
    thread = in_background(world, "touch cancelled.txt")
    approval = pending(world.runtime)
    (turn,) = query(world.runtime, "SELECT * FROM turns WHERE id = ?", (approval["turn_id"],))
    (session,) = query(world.runtime, "SELECT * FROM sessions WHERE lane = 'codex'")
    assert (turn["lane"], turn["state"], turn["objective"]) == ("codex", "running", "go")
    assert session["state"] == "active" and session["workdir"] == str(world.project)
    assert json.loads(session["data"])["model"] == "gpt-fake"
    done = world.runtime.cli("cancel", turn["id"], "-w", "default")
    assert done.returncode == 0, done.stderr.decode()
    thread.join(timeout=120)
    assert not (world.project / "cancelled.txt").exists()
    assert f"turn {turn['id']} was cancelled" in told(world)
