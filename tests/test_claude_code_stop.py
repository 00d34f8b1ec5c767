"""What ends the real Claude Code CLI's loop (2.1.197, pinned in package-lock.json) without
running the tool — the facts Quarterdeck's stop of a turn taken over or cancelled rests on,
measured with plain hooks that print a fixed answer, against a scripted model that asks for
another call after every tool result (three in all) for as long as the loop goes on:

- a denied call never ends the loop, whatever the denial carries: the denial goes back to the
  model and it asks again;
- ``continue: false`` without a deny ends the loop only after the tool ran;
- the deny, then ``continue: false`` from ``PostToolBatch`` (after the batch, before the next
  model request), ends it with nothing run: what ``domain/hooks.py`` answers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.agent_cli import agent_binary, run_claude, scripted_model

STOP = "turn T was taken over; stop here"
DENY = {"hookSpecificOutput": {"hookEventName": "PreToolUse", "permissionDecision": "deny",
                               "permissionDecisionReason": STOP}}  # fmt: skip
ALLOW = {"hookSpecificOutput": {"hookEventName": "PreToolUse", "permissionDecision": "allow"}}
HALT = {"continue": False, "stopReason": STOP}
HOOK = """import json, sys
event = json.load(sys.stdin)["hook_event_name"]
with open(sys.argv[1], "a") as log:
    log.write(event + "\\n")
spec = json.load(open(sys.argv[2])).get(event)
if spec:
    sys.stderr.write(spec.get("stderr", ""))
    print(json.dumps(spec.get("stdout", {})))
    sys.exit(spec.get("exit", 0))
"""


def run(tmp_path: Path, answers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``claude -p`` with a hook on PreToolUse, PostToolUse and PostToolBatch that gives
    ``answers`` (per event: ``stdout`` JSON, ``stderr``, ``exit``); what happened."""
    claude = agent_binary("claude")
    project, home = tmp_path / "project", tmp_path / "home"
    (project / ".claude").mkdir(parents=True)
    home.mkdir()
    (tmp_path / "hook.py").write_text(HOOK)
    (tmp_path / "answers.json").write_text(json.dumps(answers))
    log = tmp_path / "events.log"
    hook = {
        "type": "command",
        "command": f"{sys.executable} {tmp_path}/hook.py {log} {tmp_path}/answers.json",
    }
    hooks = {"PreToolUse": [{"matcher": "*", "hooks": [hook]}],
             "PostToolUse": [{"matcher": "*", "hooks": [hook]}],
             "PostToolBatch": [{"hooks": [hook]}]}  # fmt: skip
    (project / ".claude" / "settings.json").write_text(json.dumps({"hooks": hooks}))
    with scripted_model() as model:
        model.tool, model.input = "Bash", {"command": "touch ran.txt", "description": "touch"}
        model.calls = 3
        result = run_claude(claude, project, home, model)
    return {
        "requests": len(model.requests), "ran": (project / "ran.txt").exists(),
        "events": log.read_text().split(), "terminal": result.get("terminal_reason"),
    }  # fmt: skip


@pytest.mark.parametrize(
    "answer",
    [{"stdout": {**HALT, **DENY}}, {"stdout": HALT, "stderr": STOP, "exit": 2},
     {"stdout": {**HALT, "decision": "block", "reason": STOP}}],
    ids=["deny-with-continue-false", "exit-2-with-continue-false", "block-with-continue-false"],
)  # fmt: skip
def test_a_denied_call_never_ends_the_loop(tmp_path: Path, answer: dict[str, Any]) -> None:
    seen = run(tmp_path, {"PreToolUse": answer})
    # the model was asked for its call, heard each denial and asked again, then finished
    assert seen == {"requests": 4, "ran": False, "terminal": "completed",
                    "events": ["PreToolUse", "PostToolBatch"] * 3}  # fmt: skip


def test_continue_false_without_a_deny_ends_the_loop_after_the_tool_ran(tmp_path: Path) -> None:
    seen = run(tmp_path, {"PreToolUse": {"stdout": {**HALT, **ALLOW}}})
    assert seen == {"requests": 1, "ran": True, "terminal": "hook_stopped",
                    "events": ["PreToolUse", "PostToolUse"]}  # fmt: skip


@pytest.mark.parametrize(
    "answer", [{"stdout": HALT}, {"stdout": {"decision": "block", "reason": STOP}},
               {"stderr": STOP, "exit": 2}],
    ids=["continue-false", "block", "exit-2"],
)  # fmt: skip
def test_a_deny_then_post_tool_batch_ends_the_loop_with_nothing_run(
    tmp_path: Path, answer: dict[str, Any]
) -> None:
    seen = run(tmp_path, {"PreToolUse": {"stdout": {**HALT, **DENY}}, "PostToolBatch": answer})
    assert seen == {"requests": 1, "ran": False, "terminal": "hook_stopped",
                    "events": ["PreToolUse", "PostToolBatch"]}  # fmt: skip
