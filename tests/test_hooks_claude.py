"""The real Claude Code CLI (``claude -p``, pinned in package-lock.json) supervised through the
hooks ``quarterdeck integrate claude-code --project`` installs, against a scripted Anthropic
Messages API server and a real daemon: an allowed read runs, a denied ``rm -rf`` does not run
and Claude hears why, a call approved with an edit by a supervisor runs the edited command, a
rejected call does not run, with the daemon down the call is blocked, not let through, and a
turn taken over or cancelled ends Claude Code's loop before the model is asked again."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.agent_cli import ScriptedModel, agent_binary, run_claude, scripted_model
from tests.conftest import quarterdeck
from tests.headless import CONFIG, Headless, headless_runtime, query, wait_until

POLICY = """
[defaults]
outcome = "require_approval"
reject_reasons = ["unsafe", "wrong_target", "needs_context", "policy", "other"]

[[rules]]
name = "reads"
tool = "Read"
outcome = "allow"

[[rules]]
name = "no-rm-rf"
tool = "Bash"
args = { command = { glob = "rm -rf*" } }
outcome = "deny"
"""


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Headless, Path, Path, ScriptedModel, Path]]:
    """A daemon, a project with the hooks installed, a scratch HOME, a scripted model."""
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
        yield runtime, project, home, model, claude


def denial_text(result: dict[str, Any], model: ScriptedModel) -> str:
    """What Claude was told about its denied call."""
    results = model.tool_results()
    assert results, f"no tool result reached the model: {result}"
    return json.dumps(results[-1])


def test_integrate_writes_the_hooks_and_a_private_credential(
    world: tuple[Headless, Path, Path, ScriptedModel, Path],
) -> None:
    runtime, project, home, _model, _claude = world
    settings = json.loads((project / ".claude" / "settings.json").read_text())
    (group,) = settings["hooks"]["PreToolUse"]
    command = group["hooks"][0]["command"]
    (batch,) = settings["hooks"]["PostToolBatch"]
    assert batch["hooks"][0]["command"] == command and "matcher" not in batch
    assert " hook claude-code --credential " in command and "qdt_" not in command
    (credential,) = (home / ".config" / "quarterdeck" / "hooks").iterdir()
    assert credential.stat().st_mode & 0o777 == 0o600
    tokens = query(runtime, "SELECT role, workspace FROM tokens")
    assert tokens == [{"role": "agent", "workspace": "default"}]


def test_an_allowed_read_runs(world: tuple[Headless, Path, Path, ScriptedModel, Path]) -> None:
    runtime, project, home, model, claude = world
    (project / "notes.txt").write_text("the secret word is quince\n")
    model.tool, model.input = "Read", {"file_path": str(project / "notes.txt")}
    result = run_claude(claude, project, home, model)
    assert not result.get("permission_denials"), result
    assert "quince" in json.dumps(model.tool_results())
    rows = query(runtime, "SELECT payload FROM ledger WHERE action = 'event.recorded'")
    events = [json.loads(r["payload"])["payload"] for r in rows]
    assert {"SessionStart", "UserPromptSubmit", "PostToolUse", "SessionEnd"} <= {
        e["event"] for e in events
    }
    (post,) = [e for e in events if e["event"] == "PostToolUse"]
    assert post["tool_name"] == "Read" and len(post["result"]["sha256"]) == 64


def test_a_denied_rm_rf_does_not_run_and_claude_hears_why(
    world: tuple[Headless, Path, Path, ScriptedModel, Path],
) -> None:
    _runtime, project, home, model, claude = world
    victim = project / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("keep")
    model.tool, model.input = "Bash", {"command": f"rm -rf {victim}", "description": "clean"}
    result = run_claude(claude, project, home, model)
    assert (victim / "keep.txt").exists()
    assert result["permission_denials"], result
    assert "no-rm-rf" in denial_text(result, model)


def transcript_attachments(home: Path, session: str, kind: str) -> list[dict[str, Any]]:
    """The attachments of type ``kind`` in Claude Code's transcript of ``session``."""
    (path,) = home.glob(f".claude/projects/*/{session}.jsonl")
    found = []
    for line in path.read_text().splitlines():
        attachment = json.loads(line).get("attachment")
        if isinstance(attachment, dict) and attachment.get("type") == kind:
            found.append(attachment)
    return found


def approval_of(runtime: Headless, tool: str = "Bash") -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        rows = query(runtime, "SELECT * FROM approvals WHERE tool = ? AND state = 'pending'",
                     (tool,))  # fmt: skip
        return rows[0] if rows else None

    return wait_until(find, 60, "the hook's approval")


def test_a_call_approved_with_an_edit_runs_the_edited_command(
    world: tuple[Headless, Path, Path, ScriptedModel, Path],
) -> None:
    runtime, project, home, model, claude = world
    model.tool = "Bash"
    model.input = {"command": "echo asked > out.txt", "description": "write"}
    import threading

    outcome: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: outcome.update(run_claude(claude, project, home, model))
    )
    thread.start()
    approval = approval_of(runtime)
    assert approval["requested_by"].startswith("agent:token/")
    assert json.loads(approval["args"])["command"] == "echo asked > out.txt"
    edited = json.dumps({"command": "echo edited > out.txt", "description": "write"})
    done = runtime.cli("approve", approval["id"], "--edit", edited, "-w", "default")
    assert done.returncode == 0, done.stderr.decode()
    thread.join(timeout=120)
    assert (project / "out.txt").read_text() == "edited\n"
    assert not outcome.get("permission_denials"), outcome


def test_a_rejected_call_does_not_run_and_claude_hears_the_reason(
    world: tuple[Headless, Path, Path, ScriptedModel, Path],
) -> None:
    runtime, project, home, model, claude = world
    model.tool = "Bash"
    model.input = {"command": "touch rejected.txt", "description": "touch"}
    import threading

    outcome: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: outcome.update(run_claude(claude, project, home, model))
    )
    thread.start()
    approval = approval_of(runtime)
    done = runtime.cli(
        "reject", approval["id"], "--reason", "unsafe", "--note", "not today", "-w", "default"
    )
    assert done.returncode == 0, done.stderr.decode()
    thread.join(timeout=120)
    assert not (project / "rejected.txt").exists()
    told = denial_text(outcome, model)
    assert "unsafe" in told and "not today" in told


def test_with_the_daemon_down_nothing_runs(
    world: tuple[Headless, Path, Path, ScriptedModel, Path],
) -> None:
    runtime, project, home, model, claude = world
    runtime.proc.terminate()
    runtime.proc.wait(timeout=30)
    model.tool = "Bash"
    model.input = {"command": "touch ran.txt", "description": "touch"}
    result = run_claude(claude, project, home, model)
    assert not (project / "ran.txt").exists()
    assert "UserPromptSubmit operation blocked by hook" in result["result"]
    assert "no Quarterdeck daemon answers" in result["result"]
    # the gate alone: with only the PreToolUse hook, the call itself is denied
    path = project / ".claude" / "settings.json"
    settings = json.loads(path.read_text())
    settings["hooks"] = {"PreToolUse": settings["hooks"]["PreToolUse"]}
    path.write_text(json.dumps(settings))
    result = run_claude(claude, project, home, model)
    assert not (project / "ran.txt").exists()
    assert "no Quarterdeck daemon answers" in denial_text(result, model)


def test_the_session_is_a_session_the_prompt_a_turn_the_call_an_action(
    world: tuple[Headless, Path, Path, ScriptedModel, Path],
) -> None:
    runtime, project, home, model, claude = world
    (project / "notes.txt").write_text("plums\n")
    model.tool, model.input = "Read", {"file_path": str(project / "notes.txt")}
    result = run_claude(claude, project, home, model, prompt="read the notes please")
    assert not result.get("permission_denials"), result
    (session,) = query(runtime, "SELECT * FROM sessions WHERE lane = 'claude-code'")
    data = json.loads(session["data"])
    assert (session["state"], session["workdir"], session["workspace"]) == (
        "idle", str(project), "default",
    )  # fmt: skip
    assert data["session"] == result["session_id"] and data["cwd"] == str(project)
    assert data["permission_mode"] == "default" and data["ended"]
    (turn,) = query(runtime, "SELECT * FROM turns WHERE lane = 'claude-code'")
    assert (turn["objective"], turn["state"]) == ("read the notes please", "completed")
    assert json.loads(turn["input"]) == {"cwd": str(project), "session": result["session_id"]}
    (decided,) = query(runtime, "SELECT tool, verdict FROM decisions WHERE turn_id = ?",
                       (turn["id"],))  # fmt: skip
    assert decided == {"tool": "Read", "verdict": "allow"}
    moves = query(runtime, "SELECT action, to_state FROM ledger WHERE subject_id = ? ORDER BY seq",
                  (turn["id"],))  # fmt: skip
    assert [m["action"] for m in moves] == [
        "turn.created", "turn.leased", "turn.running", "turn.action", "turn.completed",
    ]  # fmt: skip
    verified = runtime.cli("ledger", "verify")  # the chain, and the tables against it
    assert verified.returncode == 0, verified.stdout.decode() + verified.stderr.decode()


@pytest.mark.parametrize("command", ["takeover", "cancel"])
def test_a_turn_taken_over_or_cancelled_stops_claude(
    world: tuple[Headless, Path, Path, ScriptedModel, Path], command: str
) -> None:
    runtime, project, home, model, claude = world
    model.tool = "Bash"
    model.input = {"command": "touch stopped.txt", "description": "touch"}
    model.calls = 3  # the model asks for another call as long as Claude Code's loop goes on
    import threading

    outcome: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: outcome.update(run_claude(claude, project, home, model))
    )
    thread.start()
    approval = approval_of(runtime)
    assert approval["turn_id"]
    done = runtime.cli(command, approval["turn_id"], "-w", "default")
    assert done.returncode == 0, done.stderr.decode()
    thread.join(timeout=120)
    assert not (project / "stopped.txt").exists()
    # The waiting call was denied, and the PostToolBatch hook answered continue: false: Claude
    # Code ended its loop before asking the model again (a denied call's own continue: false
    # does not end it), so the model was asked once and never heard of the denial.
    assert len(model.requests) == 1 and not model.tool_results(), model.requests[1:]
    assert outcome["terminal_reason"] == "hook_stopped", outcome
    (denied,) = outcome["permission_denials"]
    assert denied["tool_input"]["command"] == "touch stopped.txt"
    (stop,) = transcript_attachments(home, outcome["session_id"], "hook_stopped_continuation")
    done_as = "taken over" if command == "takeover" else "cancelled"
    assert stop["hookEvent"] == "PostToolBatch", stop
    assert f"turn {approval['turn_id']} was {done_as}" in stop["message"]
    assert stop["message"].endswith("; stop here")
    (turn,) = query(runtime, "SELECT state FROM turns WHERE id = ?", (approval["turn_id"],))
    assert turn["state"] == ("taken_over" if command == "takeover" else "cancelled")


def test_a_turn_taken_over_while_its_call_runs_ends_after_the_call(
    world: tuple[Headless, Path, Path, ScriptedModel, Path],
) -> None:
    runtime, project, home, model, claude = world
    model.tool = "Bash"
    model.input = {"command": "touch started.txt && sleep 4 && touch finished.txt",
                   "description": "slow"}  # fmt: skip
    model.calls = 3
    import threading

    outcome: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: outcome.update(run_claude(claude, project, home, model))
    )
    thread.start()
    approval = approval_of(runtime)
    assert runtime.cli("approve", approval["id"], "-w", "default").returncode == 0
    wait_until(lambda: (project / "started.txt").exists() or None, 60, "the call to start")
    done = runtime.cli("takeover", approval["turn_id"], "-w", "default")
    assert done.returncode == 0, done.stderr.decode()
    thread.join(timeout=120)
    # the call a person approved ran to its end; then the loop ended, the model not asked again
    assert (project / "finished.txt").exists()
    assert len(model.requests) == 1 and not outcome.get("permission_denials"), outcome
    assert outcome["terminal_reason"] == "hook_stopped", outcome
    (stop,) = transcript_attachments(home, outcome["session_id"], "hook_stopped_continuation")
    assert f"turn {approval['turn_id']} was taken over" in stop["message"]
