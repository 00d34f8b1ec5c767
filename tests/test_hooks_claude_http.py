"""The opt-in ``http`` hook (``integrate claude-code --http``) with the real Claude Code CLI and a
daemon serving TCP: it decides the calls as the command hook does, its token stays out of the
settings file, ``--check`` says it does not fail closed — and with the daemon down Claude Code
really runs the tool, which is why it is not the default."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.agent_cli import agent_binary, run_claude, scripted_model
from tests.conftest import quarterdeck
from tests.headless import CONFIG, Headless, wait_until
from tests.test_hooks_claude import POLICY

from quarterdeck.store.database import DB_FILENAME


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def tcp_runtime(root: Path, port: int) -> Iterator[Headless]:
    """``quarterdeck run --headless --listen 127.0.0.1:PORT`` on ``root/state``."""
    state_dir = root / "state"
    (root / "policy.toml").write_text(POLICY, encoding="utf-8")
    (root / "quarterdeck.toml").write_text(CONFIG, encoding="utf-8")
    log = root / "runtime.log"
    command = [sys.executable, "-m", "quarterdeck", "--state-dir", str(state_dir), "run",
               "--headless", "--config", str(root / "quarterdeck.toml"),
               "--listen", f"127.0.0.1:{port}"]  # fmt: skip
    with open(log, "ab") as err:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, cwd=root,
                                start_new_session=True)  # fmt: skip
    runtime = Headless(root, state_dir, proc, log, str(state_dir / DB_FILENAME))
    try:
        wait_until(runtime.started, 60, "the runtime to start", step=0.05)
        yield runtime
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


def test_the_http_hook_decides_but_fails_open(tmp_path: Path) -> None:
    claude = agent_binary("claude")
    project, home = tmp_path / "project", tmp_path / "home"
    project.mkdir()
    home.mkdir()
    port = free_port()
    with tcp_runtime(tmp_path, port) as runtime, scripted_model() as model:
        args = ("--state-dir", str(runtime.state_dir), "integrate", "claude-code",
                "--project", str(project), "--http", f"http://127.0.0.1:{port}")  # fmt: skip
        done = quarterdeck(*args, env={"HOME": str(home)})
        assert done.returncode == 0, done.stderr.decode()
        assert b"does not fail closed" in done.stdout
        settings_path = project / ".claude" / "settings.json"
        settings = json.loads(settings_path.read_text())
        (gate,) = settings["hooks"]["PreToolUse"][0]["hooks"]
        assert gate["type"] == "http" and "qdt_" not in json.dumps(settings)
        checked = quarterdeck(*args[:-2], "--check", env={"HOME": str(home)})
        assert checked.returncode == 1 and b"does not fail closed" in checked.stdout
        (credential,) = (home / ".config" / "quarterdeck" / "hooks").iterdir()
        token = json.loads(credential.read_text())["workspaces"][0]["token"]
        os.environ["QUARTERDECK_AGENT_TOKEN"] = token
        try:
            victim = project / "victim"
            victim.mkdir()
            model.tool, model.input = "Bash", {"command": f"rm -rf {victim}", "description": "x"}
            result = run_claude(claude, project, home, model)
            assert victim.exists() and result["permission_denials"], result
            assert "no-rm-rf" in json.dumps(model.tool_results()[-1])
            # the daemon goes away: only the http gate is left, and the user's own permission
            # rules (here: Bash allowed) decide, as if there were no Quarterdeck at all
            runtime.proc.terminate()
            runtime.proc.wait(timeout=30)
            settings["hooks"] = {"PreToolUse": settings["hooks"]["PreToolUse"]}
            settings["permissions"] = {"allow": ["Bash"]}
            settings_path.write_text(json.dumps(settings))
            model.input = {"command": "echo the-tool-ran", "description": "x"}
            run_claude(claude, project, home, model)
            told = model.tool_results()[-1]
            assert not told.get("is_error") and "the-tool-ran" in json.dumps(told), told
        finally:
            del os.environ["QUARTERDECK_AGENT_TOKEN"]
