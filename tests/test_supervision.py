"""Supervision in the embedded runtime, against real databases (SQLite and PostgreSQL):
persisted decisions for every dispatch and action (and the database refusing anything without
one), approvals on dispatches and on agents' tool calls (approve, edit, reject with reason
codes, claims, snooze, escalation ladders ending in the default-safe action, bulk), and take
over / release / complete with the agent fenced off."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.conftest import run
from tests.test_runtime import (
    Store,
    assert_ledger_ok,
    config,
    person,
    runtime,
    submit_one,
    task,
    turn_in,
    turn_of,
    wait_until,
)

from quarterdeck.domain.policy import Policy, parse_policy

pytestmark = pytest.mark.usefixtures("database")  # every test runs on SQLite and PostgreSQL
INTEGRITY_ERRORS = (sqlite3.IntegrityError, psycopg.IntegrityError)
"""What the database raises when a no-bypass trigger refuses a write, on either backend."""

POLICY = """
[defaults]
outcome = "allow"
reject_reasons = ["unsafe", "wrong_target", "other"]

[[rules]]
name = "no-rm"
tool = "rm*"
outcome = "deny"

[[rules]]
name = "deploys"
tool = "deploy"
outcome = "require_approval"
approver = "release-lead"
deadline_s = 600

[[rules]]
name = "risky-dispatch"
tool = "mission.dispatch"
args = { risky = true }
outcome = "require_approval"
approver = "supervisor"

[[rules]]
name = "forbidden-dispatch"
tool = "mission.dispatch"
args = { forbidden = true }
outcome = "deny"

[[rules]]
name = "ladder"
tool = "page_everyone"
outcome = "require_approval"
approver = "supervisor"
deadline_s = 1
ladder = ["oncall"]
on_expiry = "pause_lane"
"""


def policy(text: str = POLICY) -> Policy:
    parsed = parse_policy(text)
    assert isinstance(parsed, Policy), parsed
    return parsed


def acting(key: str, *actions: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A task whose simulated agent asks for ``actions`` (and then completes)."""
    envelope = task(key, latency_ms=10, **extra)
    envelope["payload"]["input"]["sim"]["actions"] = list(actions)
    return envelope


async def approval_of(store: Store, turn_id: str, timeout: float = 5.0) -> dict[str, Any]:
    row: dict[str, Any] = await wait_until(
        lambda: store.one(
            "SELECT * FROM approvals WHERE turn_id = ? AND state IN ('pending', 'escalated')",
            turn_id,
        ),
        timeout,
        f"an open approval on turn {turn_id}",
    )
    return row


def deliverable(store: Store, turn_id: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(store.turn(turn_id)["deliverable"])
    return value


# --- no bypass -----------------------------------------------------------------------------------


def test_the_database_refuses_dispatch_and_release_without_an_allowing_decision(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with runtime(tmp_path, config(), policy=policy()) as (rt, store):
            turn = await turn_of(store, await submit_one(rt, acting("ok", {"tool": "read"})))
            await turn_in(store, turn, "completed")
            await rt.command("w", {"command": "lane.pause", "lane": "sim"}, person("t"))
            queued = await turn_of(store, await submit_one(rt, task("held")))
        [mission] = store.missions(queued)
        assert mission["state"] == "queued" and mission["decision_id"] is None
        with pytest.raises(INTEGRITY_ERRORS, match="allowing decision"):
            store.execute("UPDATE missions SET state = 'running' WHERE id = ?", mission["id"])
        # A denying decision is no better than none.
        store.execute(
            "INSERT INTO decisions (id, workspace, at, kind, mission_id, tool, args, "
            "outcome, verdict, trace, policy_hash) VALUES ('d-deny', 'w', '2026', "
            "'dispatch', ?, 'mission.dispatch', '{}', 'deny', 'deny', '[]', 'x')",
            mission["id"],
        )
        with pytest.raises(INTEGRITY_ERRORS, match="allowing decision"):
            store.execute(
                "UPDATE missions SET state = 'running', decision_id = 'd-deny' WHERE id = ?",
                mission["id"],
            )
        with pytest.raises(INTEGRITY_ERRORS, match="allowing decision"):
            store.execute(
                "INSERT INTO missions (id, workspace, state, version, attempt, created_at, "
                "updated_at, data, turn_id) VALUES ('m-x', 'w', 'running', 1, 1, '', '', "
                "'{}', ?)",
                queued,
            )
        allowed = store.one(
            "SELECT id, action_key, mission_id FROM decisions WHERE kind = 'action' "
            "AND verdict = 'allow'"
        )
        assert allowed is not None
        release = (
            "INSERT INTO action_releases (id, workspace, at, turn_id, mission_id, "
            "action_key, decision_id, args) VALUES ('r', 'w', '', ?, ?, ?, ?, '{}')"
        )
        for action_key, decision in (
            ("turn:x:other", allowed["id"]),  # another action's decision
            (allowed["action_key"], "d-deny"),  # a denial
            (allowed["action_key"], "missing"),  # nothing at all
        ):
            with pytest.raises(INTEGRITY_ERRORS, match="allowing decision"):
                store.execute(release, turn, allowed["mission_id"], action_key, decision)
        store.execute("UPDATE turns SET state = 'taken_over' WHERE id = ?", turn)
        with pytest.raises(INTEGRITY_ERRORS, match="allowing decision"):
            store.execute(
                release, turn, allowed["mission_id"], allowed["action_key"], allowed["id"]
            )
        assert not store.rows("SELECT * FROM action_releases WHERE id = 'r'")
        assert store.one("SELECT state FROM missions WHERE id = ?", mission["id"]) == {
            "state": "queued"
        }

    run(main())


def test_every_dispatch_and_release_has_its_decision_and_trace(tmp_path: Path) -> None:
    async def main() -> None:
        async with runtime(tmp_path, config(), policy=policy()) as (rt, store):
            turns = [
                await turn_of(store, await submit_one(rt, acting(f"t{i}", {"tool": "search"})))
                for i in range(5)
            ]
            for turn in turns:
                await turn_in(store, turn, "completed")
        for turn in turns:
            for mission in store.missions(turn):
                decision = store.one("SELECT * FROM decisions WHERE id = ?", mission["decision_id"])
                assert decision is not None and decision["verdict"] == "allow"
                assert decision["mission_id"] == mission["id"]
                assert decision["tool"] == "mission.dispatch"
                assert decision["policy_hash"] == policy().hash
                trace = json.loads(decision["trace"])
                assert [step["rule"] for step in trace if step["kind"] == "rule"] == [
                    "no-rm", "deploys", "risky-dispatch", "forbidden-dispatch", "ladder",
                ]  # fmt: skip
                [release] = store.rows(
                    "SELECT * FROM action_releases WHERE mission_id = ?", mission["id"]
                )
                action = store.one("SELECT * FROM decisions WHERE id = ?", release["decision_id"])
                assert action is not None and action["verdict"] == "allow"
                assert action["tool"] == "search"
            assert deliverable(store, turn)["actions"][0]["outcome"] == "approved"

    run(main())


def test_without_a_policy_everything_is_allowed_and_says_so(tmp_path: Path) -> None:
    async def main() -> None:
        async with runtime(tmp_path, config()) as (rt, store):
            turn = await turn_of(store, await submit_one(rt, acting("a", {"tool": "rm_rf"})))
            await turn_in(store, turn, "completed")
        decisions = store.rows("SELECT * FROM decisions WHERE turn_id = ? ORDER BY kind", turn)
        assert [(d["kind"], d["verdict"], d["policy_hash"]) for d in decisions] == [
            ("action", "allow", "none"),
            ("dispatch", "allow", "none"),
        ]
        assert "no policy file" in decisions[0]["trace"]

    run(main())


# --- dispatch decisions ----------------------------------------------------------------------------


def test_a_denied_dispatch_fails_the_turn_and_never_runs(tmp_path: Path) -> None:
    async def main() -> None:
        async with runtime(tmp_path, config(), policy=policy()) as (rt, store):
            turn = await turn_of(store, await submit_one(rt, task("no", forbidden=True)))
            row = await turn_in(store, turn, "failed")
        assert "forbidden-dispatch" in row["error"]
        [mission] = store.missions(turn)
        assert mission["state"] == "failed" and mission["started_at"] is None
        assert not store.ledger(action="mission.running", subject=mission["id"])
        decision = store.one("SELECT * FROM decisions WHERE id = ?", mission["decision_id"])
        assert decision is not None and decision["verdict"] == "deny"
        assert decision["rule"] == "forbidden-dispatch"

    run(main())


def test_a_dispatch_waits_for_a_person_then_runs_with_edited_input(tmp_path: Path) -> None:
    async def main() -> None:
        async with runtime(tmp_path, config(), policy=policy()) as (rt, store):
            turn = await turn_of(store, await submit_one(rt, task("risky", risky=True)))
            approval = await approval_of(store, turn)
            assert approval["kind"] == "dispatch" and approval["approver"] == "supervisor"
            await turn_in(store, turn, "awaiting_approval")
            await asyncio.sleep(0.3)
            assert store.missions(turn)[0]["state"] == "queued"  # nothing ran meanwhile
            edited = dict(json.loads(approval["args"]), risky=False, note="checked")
            result = await rt.command(
                "w", {"command": "approval.approve", "approval_id": approval["id"], "args": edited},
                person("alice"),
            )  # fmt: skip
            assert result["ok"] and result["state"] == "edited"
            await turn_in(store, turn, "completed")
        assert json.loads(store.turn(turn)["input"])["note"] == "checked"
        decision = store.one("SELECT * FROM decisions WHERE approval_id = ?", approval["id"])
        assert decision is not None and decision["verdict"] == "allow"
        assert decision["decided_by"] == "alice"

    run(main())


def test_a_rejected_dispatch_fails_the_turn_with_the_reason(tmp_path: Path) -> None:
    async def main() -> None:
        async with runtime(tmp_path, config(), policy=policy()) as (rt, store):
            turn = await turn_of(store, await submit_one(rt, task("risky", risky=True)))
            approval = await approval_of(store, turn)
            refused = await rt.command(
                "w", {"command": "approval.reject", "approval_id": approval["id"],
                      "reason_code": "meh"}, person("operator"),
            )  # fmt: skip
            assert not refused["ok"]
            assert "unsafe, wrong_target, other" in refused["errors"][0]
            good = await rt.command(
                "w", {"command": "approval.reject", "approval_id": approval["id"],
                      "reason_code": "unsafe", "reason": "too broad"}, person("bob"),
            )  # fmt: skip
            assert good["state"] == "rejected"
            row = await turn_in(store, turn, "failed")
        assert "not approved" in row["error"]
        assert store.missions(turn)[0]["state"] == "cancelled"
        [entry] = store.ledger(action="approval.rejected", subject=approval["id"])
        assert entry["payload"]["reason_code"] == "unsafe"
        assert entry["payload"]["reason"] == "too broad" and entry["actor"] == "bob"
        assert store.ledger(action="command.refused", subject=approval["id"])

    run(main())


# --- action approvals --------------------------------------------------------------------------


def test_an_action_waits_blocked_and_the_agent_gets_the_edited_args(tmp_path: Path) -> None:
    async def main() -> None:
        async with runtime(tmp_path, config(), policy=policy()) as (rt, store):
            turn = await turn_of(
                store,
                await submit_one(rt, acting("dep", {"tool": "deploy", "args": {"env": "prod"}})),
            )
            approval = await approval_of(store, turn)
            assert approval["kind"] == "action" and approval["approver"] == "release-lead"
            assert approval["action_key"].startswith(f"turn:{turn}:")
            await turn_in(store, turn, "awaiting_approval")
            assert store.missions(turn)[0]["state"] == "blocked"
            first = await rt.command(
                "w", {"command": "approval.approve", "approval_id": approval["id"],
                      "args": {"env": "staging"}}, person("alice"),
            )  # fmt: skip
            assert first["state"] == "edited"
            second = await rt.command(
                "w", {"command": "approval.reject", "approval_id": approval["id"],
                      "reason_code": "unsafe"}, person("bob"),
            )  # fmt: skip
            assert second["already"] and second["state"] == "edited"
            assert second["decided_by"] == "alice"
            await turn_in(store, turn, "completed")
        actions = deliverable(store, turn)["actions"]
        assert actions == [{"tool": "deploy", "outcome": "edited", "args": {"env": "staging"}}]
        [release] = store.rows("SELECT * FROM action_releases WHERE turn_id = ?", turn)
        assert json.loads(release["args"]) == {"env": "staging"}
        assert [e["to_state"] for e in store.ledger(subject=store.missions(turn)[0]["id"])
                if e["to_state"]] == ["queued", "running", "blocked", "running", "completed"]  # fmt: skip

    run(main())


def test_a_rejected_or_denied_action_reaches_the_agent_with_the_reason(tmp_path: Path) -> None:
    async def main() -> None:
        async with runtime(tmp_path, config(), policy=policy()) as (rt, store):
            turn = await turn_of(
                store,
                await submit_one(
                    rt, acting("two", {"tool": "rm_all"}, {"tool": "deploy", "args": {"n": 1}})
                ),
            )
            approval = await approval_of(store, turn)
            await rt.command(
                "w", {"command": "approval.reject", "approval_id": approval["id"],
                      "reason_code": "wrong_target"}, person("carol"),
            )  # fmt: skip
            await turn_in(store, turn, "completed")
        actions = deliverable(store, turn)["actions"]
        assert [(a["tool"], a["outcome"]) for a in actions] == [
            ("rm_all", "rejected"),
            ("deploy", "rejected"),
        ]
        assert not store.rows("SELECT * FROM action_releases WHERE turn_id = ?", turn)
        decided = store.ledger(action="action.decided")
        reasons = [e["payload"]["reason"] for e in decided]
        assert any("no-rm" in (r or "") for r in reasons)

    run(main())


def test_claims_keep_a_second_supervisor_out_and_snooze_defers(tmp_path: Path) -> None:
    async def main() -> None:
        async with runtime(tmp_path, config(), policy=policy()) as (rt, store):
            turn = await turn_of(
                store, await submit_one(rt, acting("c", {"tool": "deploy", "args": {}}))
            )
            approval = await approval_of(store, turn)
            claim = await rt.command(
                "w", {"command": "approval.claim", "approval_id": approval["id"]}, person("alice")
            )
            assert claim["ok"] and claim["claimed_by"] == "alice"
            stolen = await rt.command(
                "w", {"command": "approval.approve", "approval_id": approval["id"]}, person("bob")
            )
            assert not stolen["ok"] and "claimed by alice" in stolen["errors"][0]
            snoozed = await rt.command(
                "w",
                {"command": "approval.snooze", "approval_id": approval["id"], "for_s": 3600},
                person("alice"),
            )
            assert snoozed["ok"] and snoozed["snoozed_until"] >= snoozed["deadline_at"][:0]
            assert snoozed["deadline_at"] >= snoozed["snoozed_until"]
            wrong = await rt.command(
                "w",
                {"command": "approval.approve", "approval_id": approval["id"],
                 "action_key": "turn:other:0"},
                person("alice"),
            )  # fmt: skip
            assert not wrong["ok"] and "not turn:other:0" in wrong["errors"][0]
            done = await rt.command(
                "w", {"command": "approval.approve", "approval_id": approval["id"]}, person("alice")
            )
            assert done["ok"] and done["state"] == "approved"
            await turn_in(store, turn, "completed")

    run(main())


def test_the_ladder_escalates_then_expires_into_the_default_safe_action(tmp_path: Path) -> None:
    async def main() -> None:
        async with runtime(tmp_path, config(), policy=policy()) as (rt, store):
            turn = await turn_of(
                store, await submit_one(rt, acting("p", {"tool": "page_everyone"}))
            )
            approval = await approval_of(store, turn)
            escalated = await wait_until(
                lambda: store.one(
                    "SELECT * FROM approvals WHERE id = ? AND state = 'escalated'", approval["id"]
                ),
                5,
                "the approval to escalate",
            )
            assert escalated["approver"] == "oncall" and escalated["level"] == 1
            await wait_until(
                lambda: store.one(
                    "SELECT * FROM approvals WHERE id = ? AND state = 'expired'", approval["id"]
                ),
                5,
                "the approval to expire",
            )
            await turn_in(store, turn, "completed")
            paused = store.value("SELECT paused FROM lane_flags WHERE lane = 'sim'")
            await assert_ledger_ok(rt.db)
        assert paused == 1
        assert deliverable(store, turn)["actions"][0]["outcome"] == "rejected"
        actions = [e["action"] for e in store.ledger(subject=approval["id"])]
        assert actions == [
            "approval.requested",
            "approval.escalated",
            "approval.expired",
        ]
        assert store.ledger(action="lane.paused")

    run(main())


def test_bulk_decides_each_matching_approval_on_its_own_entry(tmp_path: Path) -> None:
    async def main() -> None:
        async with runtime(tmp_path, config(), policy=policy()) as (rt, store):
            turns = [
                await turn_of(store, await submit_one(rt, task(f"r{i}", risky=True)))
                for i in range(3)
            ]
            for turn in turns:
                await approval_of(store, turn)
            result = await rt.command(
                "w",
                {"command": "approval.bulk", "decision": "approve",
                 "filter": {"tool": "mission.*"}},
                person("dana"),
            )  # fmt: skip
            assert result["ok"] and len(result["decided"]) == 3 and not result["skipped"]
            for turn in turns:
                await turn_in(store, turn, "completed")
        assert len(store.ledger(action="approval.approved")) == 3

    run(main())


# --- take over -----------------------------------------------------------------------------------


def test_take_over_fences_the_agent_and_the_persons_deliverable_is_the_only_one(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with runtime(tmp_path, config(), policy=policy()) as (rt, store):
            turn = await turn_of(store, await submit_one(rt, task("h", outcome="hang")))
            await turn_in(store, turn, "running")
            [mission] = store.missions(turn)
            taken = await rt.command(
                "w", {"command": "turn.takeover", "turn_id": turn}, person("erin")
            )
            assert taken["ok"] and taken["cancelled_missions"] == [mission["id"]]
            assert store.turn(turn)["lease_owner"] == "human:erin"
            await wait_until(lambda: rt.running == 0, 5, "the agent to be stopped")
            other = await rt.command(
                "w",
                {"command": "turn.complete", "turn_id": turn, "deliverable": {"x": 1}},
                person("frank"),
            )
            assert not other["ok"] and "held by human:erin" in other["errors"][0]
            done = await rt.command(
                "w",
                {"command": "turn.complete", "turn_id": turn, "deliverable": {"answer": 42}},
                person("erin"),
            )
            assert done["ok"]
        row = store.turn(turn)
        assert row["state"] == "completed"
        assert json.loads(row["deliverable"]) == {"answer": 42, "completed_by": "erin"}
        assert store.missions(turn)[0]["state"] == "cancelled"
        assert not store.ledger(action="mission.completed", subject=mission["id"])

    run(main())


def test_a_late_agent_result_after_take_over_is_rejected(tmp_path: Path) -> None:
    async def main() -> None:
        async with runtime(tmp_path, config(), policy=policy()) as (rt, store):
            turn = await turn_of(store, await submit_one(rt, task("slow", latency_ms=600)))
            await turn_in(store, turn, "running")
            # Take over from "another process": straight on the database, so this node
            # learns of it only when its agent's result is refused.
            await rt.command("w", {"command": "turn.takeover", "turn_id": turn}, person("erin"))
            await asyncio.sleep(1.0)
            assert store.turn(turn)["state"] == "taken_over"
            released = await rt.command(
                "w", {"command": "turn.release", "turn_id": turn}, person("erin")
            )
            assert released["ok"]
            await turn_in(store, turn, "completed")
        missions = store.missions(turn)
        assert [m["state"] for m in missions] == ["cancelled", "completed"]

    run(main())


def test_no_action_is_released_while_a_person_holds_the_turn(tmp_path: Path) -> None:
    async def main() -> None:
        async with runtime(tmp_path, config(), policy=policy()) as (rt, store):
            turn = await turn_of(
                store, await submit_one(rt, acting("d", {"tool": "deploy", "args": {}}))
            )
            approval = await approval_of(store, turn)
            await rt.command("w", {"command": "turn.takeover", "turn_id": turn}, person("erin"))
            row = store.one("SELECT * FROM approvals WHERE id = ?", approval["id"])
            assert row is not None
            assert row["state"] == "rejected" and row["reason_code"] == "taken_over"
            await wait_until(lambda: rt.running == 0, 5, "the agent to be stopped")
        assert not store.rows("SELECT * FROM action_releases WHERE turn_id = ?", turn)
        assert store.turn(turn)["state"] == "taken_over"

    run(main())


# --- a real subprocess agent ---------------------------------------------------------------------


@pytest.mark.parametrize("decision", ["edit", "reject"])
def test_a_command_lane_agent_receives_the_persons_decision(tmp_path: Path, decision: str) -> None:
    from tests.test_lane_command import ACTION_AGENT, agent

    argv = agent(tmp_path, ACTION_AGENT)
    lanes = {"cmd": {"adapter": "command", "timeout_s": 30, "options": {"argv": argv}}}

    async def main() -> None:
        data = config(lanes=lanes, default_lane="cmd")
        async with runtime(tmp_path, data, policy=policy()) as (rt, store):
            envelope = {"idempotency_key": "c", "workspace": "w", "kind": "task",
                        "payload": {"objective": "ship it", "lane": "cmd"}}  # fmt: skip
            turn = await turn_of(store, await submit_one(rt, envelope))
            approval = await approval_of(store, turn)
            assert json.loads(approval["args"]) == {"env": "prod", "replicas": 3}
            payload: dict[str, Any] = {"approval_id": approval["id"]}
            if decision == "edit":
                payload.update(command="approval.approve", args={"env": "staging", "replicas": 1})
            else:
                payload.update(command="approval.reject", reason_code="unsafe", reason="frozen")
            await rt.command("w", payload, person("gail"))
            await turn_in(store, turn, "completed", timeout=20)
        first, second = deliverable(store, turn)["decisions"]
        if decision == "edit":
            assert first["outcome"] == "edited"
            assert first["args"] == {"env": "staging", "replicas": 1}
        else:
            assert first["outcome"] == "rejected"
            assert "unsafe" in first["reason"] and "frozen" in first["reason"]
            assert "gail" in first["reason"]
        assert second["outcome"] == "approved" and second["args"] == {"to": "ops"}

    run(main())


# --- notifications -------------------------------------------------------------------------------


def test_approvals_notify_through_the_outbox_in_both_formats(tmp_path: Path) -> None:
    from tests.test_outbox import Receiver

    async def main() -> None:
        async with Receiver(lambda _path, _key, nth: 500 if nth == 1 else 200) as receiver:
            hooks = [
                {"name": "generic", "url": receiver.url("/json"), "events": ["approval.*"],
                 "backoff_initial_s": 0.05, "backoff_max_s": 0.1, "signed": False},
                {"name": "chat", "url": receiver.url("/slack"), "format": "slack", "signed": False,
                 "events": ["approval.pending"], "backoff_initial_s": 0.05, "backoff_max_s": 0.1},
            ]  # fmt: skip
            async with runtime(tmp_path, config(webhooks=hooks), policy=policy()) as (rt, store):
                turn = await turn_of(
                    store, await submit_one(rt, acting("n", {"tool": "deploy", "args": {}}))
                )
                approval = await approval_of(store, turn)
                await wait_until(lambda: len(receiver.accepted()) == 2, 10, "two deliveries")
                await rt.command(
                    "w",
                    {"command": "approval.escalate", "approval_id": approval["id"]},
                    person("ivy"),
                )
                await wait_until(lambda: len(receiver.accepted()) == 3, 10, "the escalation")
        keys = receiver.keys()
        assert len(keys) == 3 and all(count == 2 for count in keys.values())  # one retry each
        bodies = {s.path: s.body for s in receiver.seen if s.reply == 200 and s.path == "/slack"}
        assert "deploy" in bodies["/slack"]["text"]
        generic = [s.body for s in receiver.seen if s.reply == 200 and s.path == "/json"]
        assert [b["event"] for b in generic] == ["approval.pending", "approval.escalated"]
        assert all(b["subject"] == {"type": "approval", "id": approval["id"]} for b in generic)
        assert len(store.ledger(action="notification.delivered")) == 3

    run(main())


# --- drift -----------------------------------------------------------------------------------------


def test_drift_on_an_attested_prompt_pauses_the_lane_until_rebaselined(tmp_path: Path) -> None:
    prompt = tmp_path / "prompt.md"
    prompt.write_text("You are a careful agent.\n", encoding="utf-8")
    data = config()
    data["lanes"]["sim"].update(attest=[str(prompt)], on_drift="pause")

    async def main() -> None:
        async with runtime(tmp_path, data, policy=policy()) as (rt, store):
            first = await turn_of(store, await submit_one(rt, task("before")))
            await turn_in(store, first, "completed")
            prompt.write_text("You are a reckless agent.\n", encoding="utf-8")
            alert = await wait_until(
                lambda: store.one("SELECT * FROM alerts WHERE alert_type = 'attested_file' "
                                  "AND state = 'open'"),
                5, "a drift alert",
            )  # fmt: skip
            assert alert["severity"] == "error" and alert["subject_id"] == "sim"
            await wait_until(
                lambda: store.value("SELECT paused FROM lane_flags WHERE lane = 'sim'") == 1, 5
            )
            held = await turn_of(store, await submit_one(rt, task("during")))
            await asyncio.sleep(0.5)
            assert store.turn(held)["state"] == "queued"
            result = await rt.command(
                "default", {"command": "lane.rebaseline", "lane": "sim"}, person("jo")
            )
            assert result["ok"] and result["resumed"], result
            await turn_in(store, held, "completed")
            assert store.one("SELECT state FROM alerts WHERE id = ?", alert["id"]) == {
                "state": "resolved"
            }

    run(main())


def test_a_policy_edit_applies_to_the_next_decision_and_a_bad_edit_is_an_alert(
    tmp_path: Path,
) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('[defaults]\noutcome = "allow"\n', encoding="utf-8")

    async def main() -> None:
        async with runtime(tmp_path, config(policy=str(path))) as (rt, store):
            turn = await turn_of(store, await submit_one(rt, acting("a", {"tool": "email"})))
            await turn_in(store, turn, "completed")
            assert deliverable(store, turn)["actions"][0]["outcome"] == "approved"
            strict = '[defaults]\noutcome = "allow"\n\n[[rules]]\nname = "no-email"\n'
            path.write_text(strict + 'tool = "email"\noutcome = "deny"\n', encoding="utf-8")
            new_hash = policy(path.read_text(encoding="utf-8")).hash
            await wait_until(
                lambda: any(e["payload"].get("hash") == new_hash
                            for e in store.ledger(action="policy.loaded")),
                5, "the edit to load",
            )  # fmt: skip
            turn = await turn_of(store, await submit_one(rt, acting("b", {"tool": "email"})))
            await turn_in(store, turn, "completed")
            assert deliverable(store, turn)["actions"][0]["outcome"] == "rejected"
            path.write_text('[defaults]\noutcome = "perhaps"\n', encoding="utf-8")
            alert = await wait_until(
                lambda: store.one("SELECT * FROM alerts WHERE alert_type = 'policy_invalid' "
                                  "AND state = 'open'"),
                5, "a policy alert",
            )  # fmt: skip
            assert "defaults.outcome" in alert["message"]
            turn = await turn_of(store, await submit_one(rt, acting("c", {"tool": "email"})))
            await turn_in(store, turn, "completed")
            assert deliverable(store, turn)["actions"][0]["outcome"] == "rejected"  # kept
        decision = store.one(
            "SELECT policy_hash FROM decisions WHERE turn_id = ? AND kind = 'action'", turn
        )
        assert decision == {"policy_hash": new_hash}

    run(main())


def test_an_approval_shows_the_request_its_rule_trace_recent_events_and_cost(
    tmp_path: Path,
) -> None:
    from quarterdeck.store.queries import get_item

    async def main() -> None:
        async with runtime(tmp_path, config(), policy=policy()) as (rt, store):
            turn = await turn_of(
                store, await submit_one(rt, acting("v", {"tool": "deploy", "args": {"env": "x"}}))
            )
            approval = await approval_of(store, turn)
            await asyncio.sleep(0.4)  # events are stored in batches
            item = await get_item(rt.db, approval["id"], workspace="w")
            assert item is not None and item["tool"] == "deploy"
            assert json.loads(item["args"]) == {"env": "x"}
            context = item["context"]
            assert context["decision"]["rule"] == "deploys"
            assert context["decision"]["verdict"] == "pending"
            assert [s["rule"] for s in context["decision"]["trace"]][:2] == ["no-rm", "deploys"]
            assert any(e["type"] == "progress" for e in context["recent_events"])
            assert context["turn_cost"] == 0
            assert [h["action"] for h in item["history"]] == ["approval.requested"]

    run(main())


def test_the_agents_result_after_take_over_is_refused_by_fencing(tmp_path: Path) -> None:
    from quarterdeck.store.finishing import finish_mission

    async def main() -> None:
        async with runtime(tmp_path, config(), policy=policy()) as (rt, store):
            turn = await turn_of(store, await submit_one(rt, task("h", outcome="hang")))
            await turn_in(store, turn, "running")
            # The row commits before the runtime has registered the claim it returned.
            [held] = await wait_until(
                lambda: [r.claim for r in rt._running.values() if r.claim.turn_id == turn],
                5,
                "the runtime to hold the turn's mission",
            )
            await rt.command("w", {"command": "turn.takeover", "turn_id": turn}, person("erin"))
            late = await rt.writer.submit(
                lambda txn: finish_mission(
                    txn, held, "completed", rt.plan, result={"summary": "the agent's late work"}
                )
            )
            assert not late.accepted
            await rt.command(
                "w", {"command": "turn.complete", "turn_id": turn, "deliverable": {"by": "me"}},
                person("erin"),
            )  # fmt: skip
        assert json.loads(store.turn(turn)["deliverable"]) == {"by": "me", "completed_by": "erin"}
        assert store.counter("late_writes_rejected") >= 1
        refused = store.ledger(action="mission.late_write_rejected", subject=held.mission_id)
        # The late result is refused once; the node's own heartbeat of the lost lease may be
        # refused too, if one came between the take-over and the end of the test.
        assert [e["payload"]["write"] for e in refused if e["payload"]["write"] != "heartbeat"] == [
            "completed"
        ]
        alert = store.one("SELECT * FROM alerts WHERE alert_type = 'out_of_sequence'")
        assert alert is not None and alert["subject_id"] == held.mission_id
        assert store.rows("SELECT result FROM missions WHERE turn_id = ?", turn) == [
            {"result": None}
        ]

    run(main())


def test_a_mission_finishing_during_the_revocation_check_is_not_a_lost_lease(
    tmp_path: Path,
) -> None:
    """The check for taken-over missions reads beside running missions: a mission whose own
    finish commits meanwhile has lost nothing, and its agent is left alone."""
    from quarterdeck.store.finishing import finish_mission

    async def main() -> None:
        async with runtime(tmp_path, config(), policy=policy()) as (rt, store):
            turn = await turn_of(store, await submit_one(rt, task("h", outcome="hang")))
            [running] = await wait_until(
                lambda: [r for r in rt._running.values() if r.claim.turn_id == turn],
                5,
                "the runtime to hold the turn's mission",
            )
            # The worker's finish commits, and the check reads before the worker has seen it
            # return: the row is finished at the claim's attempt, its lease owner cleared.
            done = await rt.writer.submit(
                lambda txn: finish_mission(
                    txn, running.claim, "completed", rt.plan, result={"summary": "done"}
                )
            )
            assert done.accepted
            await rt.supervision.stop_revoked()
            assert rt.metrics.leases_lost == 0
            assert not running.lost and running.task is not None and not running.task.done()
            # A take-over is still a revocation: the mission is cancelled at the same attempt.
            other = await turn_of(store, await submit_one(rt, task("h2", outcome="hang")))
            [taken] = await wait_until(
                lambda: [r for r in rt._running.values() if r.claim.turn_id == other],
                5,
                "the runtime to hold the second turn's mission",
            )
            await rt.command("w", {"command": "turn.takeover", "turn_id": other}, person("erin"))
            await wait_until(lambda: taken.lost, 5, "the taken-over agent to be stopped")
            assert rt.metrics.leases_lost == 1
        assert store.turn(turn)["state"] == "completed"

    run(main())


def test_taking_over_a_turn_waiting_for_dispatch_approval_holds_it(tmp_path: Path) -> None:
    async def main() -> None:
        async with runtime(tmp_path, config(), policy=policy()) as (rt, store):
            turn = await turn_of(store, await submit_one(rt, task("r", risky=True)))
            approval = await approval_of(store, turn)
            taken = await rt.command(
                "w", {"command": "turn.takeover", "turn_id": turn}, person("kim")
            )
            assert taken["ok"] and taken["rejected_approvals"] == 1
            row = store.turn(turn)
            assert (row["state"], row["lease_owner"]) == ("taken_over", "human:kim")
            released = await rt.command(
                "w", {"command": "turn.release", "turn_id": turn}, person("kim")
            )
            assert released["ok"]
            # Back in the queue, the new mission is decided afresh: approval again.
            second = await approval_of(store, turn)
            assert second["id"] != approval["id"]
        assert store.one("SELECT state FROM approvals WHERE id = ?", approval["id"]) == {
            "state": "rejected"
        }

    run(main())
