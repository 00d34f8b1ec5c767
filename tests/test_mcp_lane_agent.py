"""``quarterdeck mcp serve`` inside a ``command``-lane mission: the agent's MCP client launches
it with the mission's environment, and the gateway asks with the mission's own session
credential (``agent:session/<id>``, in the mission's workspace), never as a person."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

from tests.headless import headless_runtime, query, wait_until
from tests.test_mcp_gateway import git

from quarterdeck.client.api import ControlClient

WS = "tenant-a"

AGENT = textwrap.dedent(
    """
    import json, os, sys
    import anyio
    from mcp import Client, StdioServerParameters

    mission = json.loads(sys.stdin.readline())
    repo = sys.argv[1]
    names = ("PATH", "HOME", "PYTHONPATH", "QUARTERDECK_API", "QUARTERDECK_SESSION_TOKEN")
    env = {k: os.environ[k] for k in names if k in os.environ}

    async def main():
        server = StdioServerParameters(
            command=sys.executable, args=["-m", "quarterdeck", "mcp", "serve"], env=env
        )
        async with Client(server) as client:
            status = await client.call_tool("git_status", {"repo_path": repo})
            commit = await client.call_tool(
                "git_commit", {"repo_path": repo, "message": "from a lane's agent"}
            )
        text = lambda r: "\\n".join(b.text for b in r.content)
        return {"status": text(status), "commit": text(commit), "error": commit.is_error}

    report = anyio.run(main)
    print(json.dumps({"type": "deliverable", "deliverable": report}), flush=True)
    """
)

POLICY = """
[defaults]
outcome = "allow"

[[rules]]
name = "mcp-read-only"
lane = "mcp"
annotations = { readOnlyHint = true }
outcome = "allow"

[[rules]]
name = "mcp-changes"
lane = "mcp"
outcome = "require_approval"
"""

CONFIG = """
default_lane = "agent"
policy = "policy.toml"

[lanes.agent]
adapter = "command"
timeout_s = 120
options = {{ argv = [{python}, {script}, {repo}], env_allow = ["PATH", "HOME", "PYTHONPATH"] }}

[mcp]
workspace = "default"

[[mcp.servers]]
name = "git"
command = "mcp-server-git"
args = ["--repository", {repo}]
"""


def test_a_lane_agent_asks_with_its_session_credential(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    git(repo, "-c", "user.email=t@example.org", "-c", "user.name=t", "commit", "-q",
        "--allow-empty", "-m", "init")  # fmt: skip
    (repo / "notes.txt").write_text("staged\n")
    git(repo, "add", "notes.txt")
    script = tmp_path / "agent.py"
    script.write_text(AGENT)
    config = CONFIG.format(
        python=json.dumps(sys.executable), script=json.dumps(str(script)),
        repo=json.dumps(str(repo)),
    )  # fmt: skip
    with headless_runtime(tmp_path, policy=POLICY, config=config) as daemon:
        state = daemon.state_dir

        async def submit() -> str:
            async with ControlClient.for_state_dir(state) as api:
                [sent] = await api.submit(
                    [{"idempotency_key": "lane-agent", "workspace": WS, "kind": "task",
                      "payload": {"objective": "commit the notes", "lane": "agent"}}]
                )  # fmt: skip
                assert sent.status == "accepted", sent
                return sent.receipt

        receipt = asyncio.run(submit())

        def pending() -> dict[str, Any] | None:
            rows = query(state, "SELECT * FROM approvals WHERE tool = 'git__git_commit'")
            return rows[0] if rows else None

        approval = wait_until(pending, 90, "the agent's commit to wait for a person", step=0.2)
        assert approval["workspace"] == WS  # the mission's, not the gateway's default
        assert approval["requested_by"].startswith("agent:session/")
        assert "from a lane's agent" not in git(repo, "log", "--format=%s")

        async def approve_and_wait() -> dict[str, Any]:
            async with ControlClient.for_state_dir(state) as api:
                done = await api.command(
                    WS, {"command": "approval.approve", "approval_id": approval["id"]}
                )
                assert done["ok"] is True, done
                for _ in range(1200):
                    item = await api.show(receipt)
                    turn_id = item["produced"]["id"] if item and item["produced"] else None
                    turn = None if turn_id is None else await api.show(turn_id)
                    if turn is not None and turn["state"] in ("completed", "failed"):
                        return dict(turn)
                    await asyncio.sleep(0.1)
            raise AssertionError("the turn did not finish")

        turn = asyncio.run(approve_and_wait())
        assert turn["state"] == "completed", turn
        report = turn["deliverable"]
        assert "notes.txt" in report["status"]
        assert report["error"] is False and "Changes committed" in report["commit"]
        assert "from a lane's agent" in git(repo, "log", "--format=%s")
