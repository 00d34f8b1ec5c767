"""The demo fleet: the prepared state directory is a valid configuration and policy, preparing
is idempotent, the feeder is deterministic and never raises, and a real runtime fed the initial
batch produces approvals, failures, completed turns and a verified ledger; the feeder holds back
what a lane should not get now and keeps the fleet moving unattended; ``speed`` runs it faster."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from quarterdeck.client.console import EmbeddedConsole
from quarterdeck.domain.policy import (
    ActionRequest,
    EvaluationContext,
    Policy,
    evaluate,
    parse_policy,
)
from quarterdeck.runtime.config import load_config
from quarterdeck.runtime.demo import DemoFeeder, holds_back, prepare_demo
from quarterdeck.runtime.runtime import Runtime
from quarterdeck.store.database import open_database
from quarterdeck.store.ledger import verify_ledger
from quarterdeck.store.queries import status
from quarterdeck.store.queries.lanes import LaneOverview


def demo_policy(state_dir: Path) -> Policy:
    policy = parse_policy((state_dir / "policy.toml").read_text(encoding="utf-8"))
    assert isinstance(policy, Policy), policy
    return policy


def decide(policy: Policy, lane: str, tool: str, args: dict[str, Any]) -> str:
    request = ActionRequest("default", lane, tool, args, None)
    context = EvaluationContext(datetime(2025, 1, 1, 12, tzinfo=UTC), lambda *_: 0)
    return evaluate(policy, request, context).outcome


def sim(envelope: dict[str, Any]) -> dict[str, Any]:
    knobs: dict[str, Any] = envelope["payload"]["input"]["sim"]
    return knobs


# --- prepare_demo --------------------------------------------------------------------------------


def test_prepare_demo_writes_a_valid_config_and_policy(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    path = prepare_demo(state_dir)
    assert path == state_dir / "quarterdeck.toml"
    config = load_config(path)
    assert {"triage", "triage-backup", "deploys", "research"} <= set(config.lanes)
    assert all(lane.adapter == "sim" for lane in config.lanes.values())
    assert config.lanes["triage"].fallback == "triage-backup"
    assert config.default_lane == "triage"
    assert config.lease_s == 10
    assert config.sweep_interval_s <= 2
    assert all(lane.timeout_s <= 60 for lane in config.lanes.values())
    assert config.policy == state_dir / "policy.toml"
    [attested] = config.lanes["triage"].attest
    assert attested == state_dir / "prompts" / "triage.md"
    assert attested.is_file() and attested.read_text(encoding="utf-8").strip()
    assert config.lanes["triage"].on_drift == "warn"
    assert "prompts/triage.md" in (state_dir / "README-demo.txt").read_text(encoding="utf-8")

    policy = demo_policy(state_dir)
    assert decide(policy, "triage", "mission.dispatch", {}) == "allow"
    assert decide(policy, "deploys", "deploy", {"service": "x", "env": "prod"}) == (
        "require_approval"
    )
    assert decide(policy, "triage", "refund", {"order": "A-1", "amount": 5}) == ("require_approval")
    assert decide(policy, "research", "send_email", {"to": "a@b"}) == "require_approval"
    assert decide(policy, "research", "search", {"query": "q"}) == "allow"
    assert decide(policy, "research", "rm_rf", {}) == "deny"
    assert decide(policy, "research", "drop_table", {"table": "t"}) == "deny"
    assert policy.reject_reasons
    deploy = evaluate(
        policy,
        ActionRequest("default", "deploys", "deploy", {"service": "x", "env": "prod"}),
        EvaluationContext(datetime(2025, 1, 1, 12, tzinfo=UTC), lambda *_: 0),
    )
    assert deploy.rule == "deploys" and deploy.on_expiry == "pause_lane" and deploy.ladder
    assert deploy.deadline_s is not None and 60 <= deploy.deadline_s <= 600
    refund = evaluate(
        policy,
        ActionRequest("default", "triage", "refund", {"order": "A-1", "amount": 5}),
        EvaluationContext(datetime(2025, 1, 1, 12, tzinfo=UTC), lambda *_: 0),
    )
    assert refund.ladder and refund.deadline_s is not None and refund.deadline_s <= 600


def test_prepare_demo_is_idempotent_and_keeps_edits(tmp_path: Path) -> None:
    first = prepare_demo(tmp_path)
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    contents = {p: p.read_bytes() for p in files}
    prompt = tmp_path / "prompts" / "triage.md"
    prompt.write_text("edited by hand\n", encoding="utf-8")
    (tmp_path / "policy.toml").unlink()
    assert prepare_demo(tmp_path) == first
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == files
    assert prompt.read_text(encoding="utf-8") == "edited by hand\n"
    assert (tmp_path / "policy.toml").read_bytes() == contents[tmp_path / "policy.toml"]
    assert first.read_bytes() == contents[first]


# --- the feeder ----------------------------------------------------------------------------------


def test_initial_batch_is_deterministic_and_covers_the_mix(tmp_path: Path) -> None:
    async def noop(_: list[dict[str, Any]]) -> None:
        return None

    batch = DemoFeeder(noop).initial_batch()
    assert batch == DemoFeeder(noop).initial_batch()
    assert batch != DemoFeeder(noop, seed=8).initial_batch()
    assert [e["idempotency_key"] for e in batch] == [f"demo-{n}" for n in range(1, 13)]
    assert {e["workspace"] for e in batch} == {"default"}
    assert {e["payload"]["lane"] for e in batch} == {"triage", "deploys", "research"}
    outcomes = Counter(sim(e)["outcome"] for e in batch)
    assert outcomes["fail"] >= 1 and outcomes["hang"] == 1 and outcomes["complete"] >= 6
    actions = [a for e in batch for a in sim(e)["actions"]]
    deploys = [a["args"] for a in actions if a["tool"] == "deploy"]
    refunds = [a["args"] for a in actions if a["tool"] == "refund"]
    assert deploys and all(set(d) == {"service", "env"} and d["env"] == "prod" for d in deploys)
    assert refunds and all(set(r) == {"order", "amount"} for r in refunds)

    prepare_demo(tmp_path)
    policy = demo_policy(tmp_path)
    verdicts = Counter(
        decide(policy, e["payload"]["lane"], a["tool"], a["args"])
        for e in batch
        for a in sim(e)["actions"]
    )
    assert verdicts["require_approval"] >= 3 and verdicts["deny"] >= 1
    assert verdicts["allow"] >= 1

    longer = DemoFeeder(noop, workspace="w").initial_batch(20)
    assert [e["idempotency_key"] for e in longer][-1] == "demo-20"
    assert {e["workspace"] for e in longer} == {"w"}


def test_run_submits_batch_then_trickle_and_survives_errors() -> None:
    calls: list[list[dict[str, Any]]] = []

    async def flaky(envelopes: list[dict[str, Any]]) -> None:
        calls.append(envelopes)
        if len(calls) % 2 == 0:
            raise RuntimeError("database is busy")

    async def main() -> DemoFeeder:
        feeder = DemoFeeder(flaky, rate_per_s=40)
        stop = asyncio.Event()
        task = asyncio.create_task(feeder.run(stop))
        deadline = time.monotonic() + 5
        while len(calls) < 6 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 2)
        return feeder

    feeder = asyncio.run(main())
    assert len(calls) >= 6
    assert len(calls[0]) == 12
    keys = [e["idempotency_key"] for batch in calls[1:] for e in batch]
    assert keys == [f"demo-{n}" for n in range(13, 13 + len(keys))]
    assert feeder.errors == len(calls) // 2
    assert feeder.submitted == 12 + sum(1 for i in range(2, len(calls), 2))


def test_zero_rate_submits_only_the_batch_and_stops_promptly() -> None:
    calls: list[int] = []

    async def record(envelopes: list[dict[str, Any]]) -> None:
        calls.append(len(envelopes))

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(DemoFeeder(record, rate_per_s=0).run(stop))
        await asyncio.sleep(0.1)
        stop.set()
        await asyncio.wait_for(task, 1)

    asyncio.run(main())
    assert calls == [12]
    with pytest.raises(ValueError):
        DemoFeeder(record, rate_per_s=-1)


# --- a real runtime ------------------------------------------------------------------------------


async def wait_for(probe: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await probe():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def test_runtime_on_the_demo_fleet(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    config = load_config(prepare_demo(state_dir))

    async def main() -> dict[str, Any]:
        db = await open_database(str(state_dir / "quarterdeck.db"))
        rt = Runtime(db, config, state_dir=state_dir)
        await rt.start()
        stop = asyncio.Event()
        feeder = DemoFeeder(rt.submit, rate_per_s=2)
        feeding = asyncio.create_task(feeder.run(stop))
        try:

            async def ready() -> bool:
                counts = await status(db, "default")
                return bool(
                    counts["approvals"]["pending"] >= 1
                    and counts["missions"]["failed"] >= 1
                    and counts["turns"]["completed"] >= 3
                )

            await wait_for(ready, 8, "approvals, failures and completed turns")
        finally:
            stop.set()
            await asyncio.wait_for(feeding, 2)
            await rt.stop(grace_s=0.2)
        counts = await status(db, "default")
        result = await verify_ledger(db)
        await db.dispose()
        assert result.ok, result
        assert feeder.errors == 0 and feeder.submitted >= 12
        return counts

    counts = asyncio.run(main())
    assert counts["receipts"]["accepted"] >= 12
    assert counts["receipts"]["rejected"] == 0
    assert counts["approvals"]["pending"] >= 1
    assert counts["missions"]["failed"] >= 1
    assert counts["turns"]["completed"] >= 3
    assert counts["ledger"]["entries"] > 0


# --- backing off, and speed ----------------------------------------------------------------------


def overview(**fields: Any) -> LaneOverview:
    """A lane as :func:`lane_overview` describes it: four free slots unless ``fields`` say."""
    values: dict[str, Any] = {
        "lane": "triage", "state": "running", "paused_by": None, "paused_reason": None,
        "paused_at": None, "forced_fallback": False, "shadow": False, "slots": 4, "in_use": 0,
        "running": 0, "awaiting_person": 0, "queued": 0, "awaiting_dispatch": 0,
        "oldest_queued_at": None, "oldest_wait_s": None, "finished": 0, "failure_rate": None,
        "started": 0, "fallback_rate": None,
    }  # fmt: skip
    values.update(fields)
    return LaneOverview(**values)


def test_the_feeder_holds_back_what_a_lane_should_not_get_now() -> None:
    assert holds_back("refund", None) is None  # nothing known: feed
    assert holds_back("refund", overview()) is None
    assert holds_back("triage", overview(state="paused")) == "paused"
    assert holds_back("triage", overview(queued=4)) == "queue deep"
    assert holds_back("triage", overview(slots=1, queued=1)) is None  # a queue of 2 at least
    assert holds_back("triage", overview(slots=1, queued=2)) == "queue deep"
    # Half the slots wait on a person: more work that asks one waits, quick work still goes.
    assert holds_back("refund", overview(awaiting_person=1)) is None
    assert holds_back("refund", overview(awaiting_person=2)) == "approvals waiting"
    assert holds_back("refund", overview(awaiting_person=1, awaiting_dispatch=1)) == (
        "approvals waiting"
    )
    assert holds_back("triage", overview(awaiting_person=2)) is None
    assert holds_back("deploy", overview(slots=1, awaiting_person=1)) == "approvals waiting"


def test_speed_shortens_deadlines_latencies_and_the_trickle(tmp_path: Path) -> None:
    async def noop(_: list[dict[str, Any]]) -> None:
        return None

    normal = DemoFeeder(noop).initial_batch()
    fast = DemoFeeder(noop, speed=10).initial_batch()
    assert [e["payload"]["objective"] for e in fast] == [e["payload"]["objective"] for e in normal]
    for slow, quick in zip(normal, fast, strict=True):
        assert sim(quick)["latency_ms"] == max(1, round(sim(slow)["latency_ms"] / 10))
    assert DemoFeeder(noop, speed=10).rate_per_s == pytest.approx(5.0)
    for bad in (0.0, -1.0, float("nan"), 101.0):
        with pytest.raises(ValueError, match="speed"):
            DemoFeeder(noop, speed=bad)

    prepare_demo(tmp_path / "fast", speed=10)
    fast_policy = demo_policy(tmp_path / "fast")
    prepare_demo(tmp_path / "normal")
    normal_policy = demo_policy(tmp_path / "normal")
    for lane, tool in (("deploys", "deploy"), ("triage", "refund"), ("research", "other")):
        request = ActionRequest("default", lane, tool, {}, None)
        context = EvaluationContext(datetime(2025, 1, 1, 12, tzinfo=UTC), lambda *_: 0)
        slow = evaluate(normal_policy, request, context).deadline_s
        quick = evaluate(fast_policy, request, context).deadline_s
        assert slow is not None and quick == max(1, round(slow / 10)), (tool, slow, quick)
    assert "--speed 10" in (tmp_path / "fast" / "policy.toml").read_text(encoding="utf-8")
    # A state directory keeps its policy whatever speed it is run at later.
    prepare_demo(tmp_path / "normal", speed=10)
    assert demo_policy(tmp_path / "normal").hash == normal_policy.hash


def test_unattended_the_fleet_keeps_moving_and_no_lane_fills_with_waits(tmp_path: Path) -> None:
    """The demo fleet at 10x speed, nobody answering, for 20 s (over three simulated minutes):
    turns keep completing, no lane ever has every slot waiting on a person, and the feeder
    held work back for lanes that waited."""
    state_dir = tmp_path / "state"
    config = load_config(prepare_demo(state_dir, speed=10))

    async def main() -> tuple[DemoFeeder, list[tuple[int, tuple[LaneOverview, ...]]]]:
        db = await open_database(str(state_dir / "quarterdeck.db"))
        rt = Runtime(db, config, state_dir=state_dir)
        await rt.start()
        console = EmbeddedConsole(rt)
        stop = asyncio.Event()
        feeder = DemoFeeder(rt.submit, speed=10, lanes=console.lanes)
        feeding = asyncio.create_task(feeder.run(stop))
        samples: list[tuple[int, tuple[LaneOverview, ...]]] = []
        try:
            for _ in range(20):
                await asyncio.sleep(1)
                counts = await status(db, "default")
                samples.append((counts["turns"].get("completed", 0), await console.lanes()))
        finally:
            stop.set()
            await asyncio.wait_for(feeding, 5)
            await rt.stop(grace_s=0.2)
            assert (await verify_ledger(db)).ok
            await db.dispose()
        return feeder, samples

    feeder, samples = asyncio.run(main())
    completed = [done for done, _ in samples]
    print(f"\ncompleted turns, one a second: {completed}; held back: {feeder.held_back}")
    for earlier, later in zip(completed[::5], completed[5::5], strict=False):
        assert later > earlier, completed  # every five seconds, more turns completed
    assert feeder.held_back.get("approvals waiting", 0) >= 1
    for _done, lanes in samples:
        for lane in lanes:
            assert lane.awaiting_person < lane.slots or lane.slots == 0, lane
            assert lane.state == "paused" or lane.queued <= 2 * lane.slots + 2, lane
