"""The ``[mcp]`` table and an ``http`` lane's ``mcp_servers``: every problem named by its path."""

from __future__ import annotations

import pytest

from quarterdeck.runtime.config import ConfigError, parse_config

LANES = {"sim": {"adapter": "sim"}}


def test_servers_are_read_with_their_transport() -> None:
    config = parse_config(
        {"lanes": LANES, "mcp": {"workspace": "ops", "servers": [
            {"name": "git", "command": "mcp-server-git", "args": ["--repository", "/r"]},
            {"name": "remote", "url": "https://mcp.example.org/mcp"},
        ]}}
    )  # fmt: skip
    git, remote = config.mcp.servers
    assert (git.command, git.args, remote.url) == ("mcp-server-git", ("--repository", "/r"),
                                                   "https://mcp.example.org/mcp")  # fmt: skip
    assert config.mcp.workspace == "ops"


def test_every_problem_is_named() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            {"lanes": {**LANES, "llm": {"adapter": "http", "options": {
                "providers": [{"url": "http://127.0.0.1:1/v1"}],
                "mcp_servers": [{"name": "a__b", "command": "x"}]}}},
             "mcp": {"servers": [{"name": "both", "command": "x", "url": "http://h/mcp"},
                                 {"name": "ftp", "url": "ftp://h/mcp"},
                                 {"name": "git", "command": "x", "colour": "red"}],
                     "max_result_bytes": -1}}
        )  # fmt: skip
    problems = caught.value.problems
    assert "mcp.servers[0]: give either command (stdio) or url (streamable HTTP)" in problems
    assert "mcp.servers[1]: url: must start with http:// or https://" in problems
    assert any(p.startswith("mcp.servers[2].colour") for p in problems), problems
    assert any(p.startswith("mcp.max_result_bytes") for p in problems), problems
    assert any(p.startswith("lanes.llm.options.mcp_servers[0].name") for p in problems), problems


def test_a_name_used_twice_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"lanes": LANES, "mcp": {"servers": [
            {"name": "git", "command": "x"}, {"name": "git", "command": "y"}]}})  # fmt: skip
    assert caught.value.problems == ["mcp: servers: duplicate name 'git'"]
