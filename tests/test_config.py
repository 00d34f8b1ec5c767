"""Configuration: every problem of a ``quarterdeck.toml`` is listed at once, and ``quarterdeck
run`` refuses a bad one (exit 2) or a start without a terminal (no database involved)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import quarterdeck

from quarterdeck.runtime.config import ConfigError, LaneConfig, parse_config
from quarterdeck.runtime.lanes.registry import ADAPTERS, build_lane
from quarterdeck.runtime.lanes.sim import SimLane


def test_parse_config_lists_every_problem() -> None:
    data = {
        "bogus": 1,
        "lease_s": "soon",
        "hold_s": 0,
        "force_fallback": "yes",
        "default_lane": "nope",
        "lanes": {
            "a": {"adapter": "sim", "fallback": "ghost"},
            "b": {"adapter": "sim", "colour": "red"},
            "c": {"adapter": "sim", "max_attempts": "3"},
            "d": {"adapter": "command"},
            "e": {"adapter": "teleport"},
            "f": {"adapter": "sim", "concurrency": 0},
            "g": {"adapter": "sim", "fallback": "g"},
            "h": {"adapter": "python", "options": {"callable": "no_colon"}},
            "i": {"adapter": "sim", "shadow": 1},
            "j": {},
            "k": {"adapter": "sim", "timeout_s": True},
            "m": {"adapter": "command", "options": {"argv": []}},
            "n": "not a table",
        },
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(data, "test.toml")
    assert caught.value.source == "test.toml"
    assert sorted(caught.value.problems) == sorted(
        [
            "bogus: unknown setting",
            "lease_s: must be a number",
            "hold_s: must be greater than 0",
            "force_fallback: must be true or false",
            "default_lane: no lane named 'nope'",
            "lanes.a.fallback: no lane named 'ghost'",
            "lanes.b.colour: unknown setting",
            "lanes.c.max_attempts: must be an integer",
            "lanes.d.options.argv: a non-empty list of strings is required",
            "lanes.e.adapter: must be one of sim, command, http, python, got 'teleport'",
            "lanes.f.concurrency: must be at least 1",
            "lanes.g.fallback: a lane cannot fall back to itself",
            "lanes.h.options.callable: 'package.module:function' is required",
            "lanes.i.shadow: must be true or false",
            "lanes.j.adapter: is required (one of sim, command, http, python)",
            "lanes.k.timeout_s: must be a number",
            "lanes.m.options.argv: a non-empty list of strings is required",
            "lanes.n: must be a table",
        ]
    )
    with pytest.raises(ConfigError) as caught:
        parse_config({})
    assert caught.value.problems == ["lanes: at least one lane is required"]

    parsed = parse_config(
        {"lease_s": 2, "lanes": {"x": {"adapter": "sim", "fallback": "y"}, "y": {"adapter": "sim"}}}
    )
    assert parsed.default_lane == "x"  # no sim lane: the first one
    assert parsed.lease_s == 2.0 and parsed.lanes["x"].fallback == "y"
    assert parsed.lanes["x"].max_attempts == 3 and parsed.lanes["y"].fallback is None


@pytest.mark.parametrize(
    ("lane", "option"),
    [
        ({"adapter": "command", "options": {"argv": ["true"], "env": {"A": 1}}}, "env"),
        ({"adapter": "sim", "options": {"failure_rate": "lots"}}, "failure_rate"),
    ],
)
def test_adapter_options_the_lanes_reject_are_configuration_problems(
    tmp_path: Path, lane: dict[str, Any], option: str
) -> None:
    """Options that make the adapter refuse to start must be reported by ``parse_config``
    (and by ``run --headless`` as exit 2 with the list), not crash the daemon later."""
    with pytest.raises(ConfigError) as caught:
        parse_config({"lanes": {"x": lane}})
    assert any(p.startswith(f"lanes.x.options.{option}") for p in caught.value.problems)


def test_nested_tables_report_every_problem_with_its_path() -> None:
    data = {
        "lanes": {
            "llm": {
                "adapter": "http",
                "options": {"providers": [{"url": "http://x"}, {"timeout_s": 0}]},
            }
        },
        "slo": {"window_s": 0, "failure_rate": -1, "colour": 1},
        "keymap": {"approve": ""},
        "webhooks": [
            {"name": "ops", "url": "ftp://x", "format": "xml"},
            {"name": "ops", "url": "http://a", "signed": False},
            {"name": "ops", "url": "http://b", "signed": False},
        ],
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert sorted(caught.value.problems) == sorted(
        [
            "lanes.llm.options.providers[1].url: a URL string is required",
            "lanes.llm.options.providers[1].timeout_s: must be greater than 0",
            "slo.window_s: must be greater than 0",
            "slo.failure_rate: must be a number of at least 0",
            "slo.colour: unknown setting",
            "keymap.approve: must be a key name such as 'y' or 'ctrl+y'",
            "webhooks[0].url: must start with http:// or https://",
            "webhooks[0].format: must be json or slack",
            "webhooks: duplicate name 'ops'",
        ]
    )


def test_relative_paths_are_taken_from_the_file_folder(tmp_path: Path) -> None:
    parsed = parse_config(
        {
            "policy": "policy.toml",
            "lanes": {"sim": {"adapter": "sim", "attest": ["prompt.md", "/abs/agent.toml"]}},
        },
        base=tmp_path,
    )
    assert parsed.policy == tmp_path / "policy.toml"
    assert parsed.lanes["sim"].attest == (tmp_path / "prompt.md", Path("/abs/agent.toml"))


def test_lanes_are_built_through_the_registry_with_the_same_option_checks() -> None:
    assert list(ADAPTERS) == ["sim", "command", "http", "python"]
    lane = build_lane(LaneConfig("x", "sim", {"seed": 4}))
    assert isinstance(lane, SimLane) and lane.name == "x" and lane.seed == 4
    with pytest.raises(ValueError, match=r"options\.argv"):
        LaneConfig("x", "command", options={})
    with pytest.raises(ValueError, match=r"options\.seed: must be an integer"):
        ADAPTERS["sim"].build("x", {"seed": "4"})


def test_run_with_a_bad_configuration_exits_2_listing_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        textwrap.dedent(
            """\
            lease_s = -1
            colour = "red"

            [lanes.sim]
            adapter = "sim"
            fallback = "ghost"

            [lanes.cmd]
            adapter = "command"
            """
        ),
        encoding="utf-8",
    )
    done = quarterdeck("run", "--headless", "--config", str(bad), state_dir=tmp_path / "s")
    assert done.returncode == 2
    err = done.stderr.decode()
    lines = err.splitlines()
    assert lines[0] == f"quarterdeck: error: bad configuration {bad}:"
    assert sorted(line.strip() for line in lines[1:]) == sorted(
        [
            "lease_s: must be greater than 0",
            "colour: unknown setting",
            "lanes.sim.fallback: no lane named 'ghost'",
            "lanes.cmd.options.argv: a non-empty list of strings is required",
        ]
    )
    assert "Traceback" not in err

    not_toml = tmp_path / "broken.toml"
    not_toml.write_text("[lanes\n", encoding="utf-8")
    done = quarterdeck("run", "--headless", "--config", str(not_toml), state_dir=tmp_path / "s")
    assert done.returncode == 2
    assert "not TOML" in done.stderr.decode()

    missing = quarterdeck(
        "run", "--headless", "--config", str(tmp_path / "nope.toml"), state_dir=tmp_path / "s"
    )
    assert missing.returncode == 2
    assert "cannot read" in missing.stderr.decode()


def test_run_without_headless_exits_2_with_one_line(tmp_path: Path) -> None:
    done = quarterdeck("run", state_dir=tmp_path / "s")
    assert done.returncode == 2
    assert done.stdout == b""
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("quarterdeck: error:") and "--headless" in lines[0]
