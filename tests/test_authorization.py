"""Who may give which command, checked by the store in the command's own transaction: a real
runtime on SQLite and on PostgreSQL, commands given through :meth:`Runtime.command` by
authenticated principals, and every refusal read back from the ledger and the counters.

The rules themselves are pure functions (``tests/test_authority.py`` checks them with
generated rosters); these tests prove that production applies them to every command kind."""

from __future__ import annotations

import uuid
from typing import Any

from tests.conftest import run
from tests.test_runtime import Store, runtime, submit_one, task, turn_in, turn_of

from quarterdeck.domain.authority import Kind, Principal
from quarterdeck.domain.commands import CATALOGUE
from quarterdeck.domain.envelope import RUNTIME_WORKSPACE
from quarterdeck.runtime.runtime import Runtime
from quarterdeck.store.alerts import open_alert
from quarterdeck.store.writer import WriteTxn

POLICY = """
[defaults]
outcome = "allow"
reject_reasons = ["unsafe", "other"]

[[rules]]
name = "deploys"
tool = "deploy"
outcome = "require_approval"
approver = "release-lead"
deadline_s = 600
ladder = ["oncall"]

[[rules]]
name = "transfers"
tool = "transfer"
outcome = "require_approval"
approver = "release-lead"
deadline_s = 600
approvals_required = 2
"""


def person(name: str) -> Principal:
    return Principal(Kind.SUPERVISOR, name)


ALICE, BOB, OLGA, VIC, BOSS = (person(n) for n in ("alice", "bob", "olga", "vic", "boss"))


def agent(workspace: str) -> Principal:
    """A lane's session: pinned to its workspace; it may ask, never decide."""
    return Principal(Kind.AGENT, f"agent:session/{uuid.uuid4().hex[:8]}", workspace=workspace)


def config(tmp_path: Any) -> dict[str, Any]:
    (tmp_path / "policy.toml").write_text(POLICY, encoding="utf-8")
    return {
        "policy": str(tmp_path / "policy.toml"),
        "lease_s": 2,
        "sweep_interval_s": 0.3,
        "roster": {
            "alice": ["supervisor", "release-lead"],
            "bob": ["supervisor", "release-lead"],
            "olga": ["oncall"],
            "vic": ["viewer"],
            "boss": ["admin"],
        },
        "roles": {
            "supervisor": {"workspaces": ["a"]},
            "release-lead": {"workspaces": ["a"]},
            "oncall": {"workspaces": ["a"]},
        },
        "lanes": {
            "sim": {"adapter": "sim", "options": {"seed": 1, "action_rate": 0.0}},
            "held": {"adapter": "sim", "paused": True},
        },
    }


async def ask(rt: Runtime, workspace: str, tool: str, who: Principal | None = None) -> str:
    """An SDK approval request for ``tool``; the open approval's id."""
    result = await rt.command(
        workspace,
        {"command": "approval.request", "action_id": str(uuid.uuid4()), "tool": tool,
         "lane": "sdk", "args": {"n": 1}},
        who or agent(workspace),
    )  # fmt: skip
    assert result["verdict"] == "pending", result
    return str(result["approval"])


async def queued_turn(rt: Runtime, store: Store, workspace: str) -> str:
    """A turn queued on the paused lane ``held`` (live, nobody holds it)."""
    envelope = task(f"held-{uuid.uuid4()}", lane="held")
    envelope["workspace"] = workspace
    return await turn_of(store, await submit_one(rt, envelope))


def refusals(store: Store, name: str) -> list[dict[str, Any]]:
    """The ``command.refused`` entries of the principal called ``name``."""
    return [
        e
        for e in store.ledger(action="command.refused")
        if (e["payload"].get("principal") or {}).get("name") == name
    ]


def counter(store: Store, name: str) -> int:
    row = store.one("SELECT value FROM counters WHERE name = ?", name)
    return 0 if row is None else int(row["value"])


def payloads(approval: str, turn: str, alert: str) -> dict[str, dict[str, Any]]:
    """One valid payload of every supervisor command, aimed at real items."""
    return {
        "alert.ack": {"alert_id": alert},
        "alert.resolve": {"alert_id": alert},
        "approval.approve": {"approval_id": approval},
        "approval.reject": {"approval_id": approval, "reason_code": "unsafe"},
        "approval.claim": {"approval_id": approval},
        "approval.unclaim": {"approval_id": approval},
        "approval.escalate": {"approval_id": approval},
        "approval.snooze": {"approval_id": approval, "for_s": 60},
        "approval.bulk": {"decision": "approve"},
        "fallback.force": {"on": True},
        "lane.force_fallback": {"lane": "sim", "on": True},
        "lane.pause": {"lane": "sim"},
        "lane.resume": {"lane": "held"},
        "lane.rebaseline": {"lane": "sim"},
        "lane.shadow": {"lane": "sim", "on": True},
        "token.create": {"token_id": "0123456789ab", "principal": "ci", "role": "admin",
                         "secret_hash": "0" * 64},
        "token.revoke": {"token_id": "0123456789ab"},
        "turn.cancel": {"turn_id": turn},
        "turn.complete": {"turn_id": turn, "deliverable": {"done": True}},
        "turn.release": {"turn_id": turn},
        "turn.requeue": {"turn_id": turn},
        "turn.takeover": {"turn_id": turn},
    }  # fmt: skip


def test_every_command_out_of_reach_is_refused_recorded_and_counted(
    tmp_path: Any, database: str
) -> None:
    """In workspace ``b`` alice (a supervisor of ``a`` only), vic (a viewer) and an agent of
    ``b`` give every supervisor command the catalogue has: each is refused naming what is
    missing, recorded with the principal, counted, and nothing changes."""

    async def main() -> None:
        async with runtime(tmp_path, config(tmp_path)) as (rt, store):
            approval = await ask(rt, "b", "deploy")
            turn = await queued_turn(rt, store, "b")

            def raise_alert(txn: WriteTxn) -> str:
                alert_id, _ = open_alert(
                    txn, (), workspace="b", alert_type="drift", severity="warn",
                    subject_type="lane", subject_id="sim", dedupe="test:b",
                    message="moved", data={}, actor="test",
                )  # fmt: skip
                return str(alert_id)

            alert = await rt.writer.submit(raise_alert)
            commands = payloads(approval, turn, alert)
            assert set(commands) == set(CATALOGUE) - {"approval.request"}
            outsiders = {"alice": ALICE, "vic": VIC, "agent": agent("b")}
            for label, who in outsiders.items():
                before = counter(store, "commands_refused")
                for name, body in commands.items():
                    result = await rt.command("b", {"command": name, **body}, who)
                    assert result["ok"] is False, (label, name, result)
                    assert result["refused"] in {"missing_role", "agent"}, (label, name, result)
                    assert result["errors"] and who.label in result["errors"][0], result
                assert counter(store, "commands_refused") - before == len(commands), label
                assert len(refusals(store, who.name)) == len(commands), label
            # nothing moved
            assert store.one("SELECT state FROM approvals WHERE id = ?", approval)["state"] == (
                "pending"
            )
            assert store.turn(turn)["state"] == "queued"
            assert store.one("SELECT state FROM alerts WHERE id = ?", alert)["state"] == "open"
            assert store.value("SELECT count(*) FROM tokens") == 0
            flags = store.rows("SELECT * FROM lane_flags WHERE lane = 'sim'")
            assert all(not f["paused"] and not f["shadow"] for f in flags)
            # the admin may do it all (one of them for the record)
            assert (await rt.command("b", {"command": "lane.pause", "lane": "sim"}, BOSS))["ok"]

    run(main())


def test_an_approval_asks_for_its_current_levels_role_and_never_its_requester(
    tmp_path: Any, database: str
) -> None:
    async def main() -> None:
        async with runtime(tmp_path, config(tmp_path)) as (rt, store):
            approval = await ask(rt, "a", "deploy", BOB)  # a person may ask too
            approve = {"command": "approval.approve", "approval_id": approval}
            own = await rt.command("a", approve, BOB)
            assert own["refused"] == "own_request", own
            mine = await rt.command("a", approve, agent("a"))
            assert mine["refused"] == "agent", mine
            early = await rt.command("a", approve, OLGA)  # on call, but level 0 is release-lead
            assert early["refused"] == "missing_role" and "'release-lead'" in early["errors"][0]
            escalated = await rt.command(
                "a", {"command": "approval.escalate", "approval_id": approval}, ALICE
            )
            assert escalated["ok"] and escalated["approver"] == "oncall", escalated
            late = await rt.command("a", approve, ALICE)  # the ladder moved past her role
            assert late["refused"] == "missing_role" and "'oncall'" in late["errors"][0], late
            decided = await rt.command("a", approve, OLGA)
            assert decided["ok"] and decided["decided_by"] == "olga", decided
            codes = [e["payload"]["refusal"] for e in store.ledger(action="command.refused")]
            assert codes == ["own_request", "agent", "missing_role", "missing_role"]
            row = store.one("SELECT state, requested_by, decided_by FROM approvals WHERE id = ?",
                            approval)  # fmt: skip
            assert dict(row) == {"state": "approved", "requested_by": "bob", "decided_by": "olga"}

    run(main())


def test_a_two_person_rule_needs_two_different_people(tmp_path: Any, database: str) -> None:
    async def main() -> None:
        async with runtime(tmp_path, config(tmp_path)) as (rt, store):
            approval = await ask(rt, "a", "transfer")
            approve = {"command": "approval.approve", "approval_id": approval}
            first = await rt.command("a", approve, ALICE)
            assert first["ok"], first
            state = store.one("SELECT state FROM approvals WHERE id = ?", approval)["state"]
            assert state == "pending"  # one approval of two: nothing is released yet
            again = await rt.command("a", approve, ALICE)
            assert again["refused"] == "second_approval", again
            second = await rt.command("a", approve, BOB)
            assert second["ok"] and second["state"] == "approved", second
            counted = store.ledger(action="approval.approval_counted")
            assert [e["actor"] for e in counted] == ["alice"]
            [approved] = store.ledger(action="approval.approved")
            assert approved["actor"] == "bob"
            assert approved["payload"]["approved_by"] == ["alice", "bob"]

    run(main())


def test_only_the_holder_completes_or_releases_a_taken_over_turn(
    tmp_path: Any, database: str
) -> None:
    async def main() -> None:
        async with runtime(tmp_path, config(tmp_path)) as (rt, store):
            turn = await queued_turn(rt, store, "a")
            took = await rt.command("a", {"command": "turn.takeover", "turn_id": turn}, ALICE)
            assert took["ok"] and took["holder"] == "human:alice", took
            for name in ("turn.complete", "turn.release"):
                body = {"command": name, "turn_id": turn, "deliverable": {"x": 1}}
                refused = await rt.command("a", body, BOB)
                assert refused["ok"] is False, refused
                assert refused["errors"] == ["turn is held by human:alice"], refused
            done = await rt.command(
                "a", {"command": "turn.complete", "turn_id": turn, "deliverable": {"x": 1}}, ALICE
            )
            assert done["ok"], done
            await turn_in(store, turn, "completed")

    run(main())


def test_bulk_decisions_and_global_switches_stay_within_reach(tmp_path: Any, database: str) -> None:
    async def main() -> None:
        async with runtime(tmp_path, config(tmp_path)) as (rt, store):
            mine = await ask(rt, "a", "deploy")
            theirs = await ask(rt, "b", "deploy")
            everywhere = {"command": "approval.bulk", "decision": "approve", "all_workspaces": True}
            refused = await rt.command("a", everywhere, ALICE)
            assert refused["refused"] == "missing_role" and "'admin'" in refused["errors"][0]
            local = await rt.command(
                "a", {"command": "approval.bulk", "decision": "approve"}, ALICE
            )
            assert local["ok"] and local["decided"] == [mine], local
            switch = await rt.command("a", {"command": "fallback.force", "on": True}, ALICE)
            assert switch["refused"] == "missing_role", switch
            every_lane = await rt.command("a", {"command": "lane.pause", "lane": "*"}, ALICE)
            assert every_lane["refused"] == "missing_role", every_lane
            state = store.one("SELECT state FROM approvals WHERE id = ?", theirs)["state"]
            assert state == "pending"
            done = await rt.command("a", everywhere, BOSS)
            assert done["ok"] and done["decided"] == [theirs], done

    run(main())


def test_the_runtimes_own_alerts_need_supervisors_of_every_workspace(
    tmp_path: Any, database: str
) -> None:
    async def main() -> None:
        async with runtime(tmp_path, config(tmp_path)) as (rt, store):

            def raise_alert(txn: WriteTxn) -> str:
                alert_id, _ = open_alert(
                    txn, (), workspace=RUNTIME_WORKSPACE, alert_type="slo_breach",
                    severity="warn", subject_type="metric", subject_id="failure_rate",
                    dedupe="test:slo", message="slow", data={}, actor="test",
                )  # fmt: skip
                return str(alert_id)

            alert = await rt.writer.submit(raise_alert)
            ack = {"command": "alert.ack", "alert_id": alert}
            assert (await rt.command("a", ack, ALICE))["refused"] == "missing_role"
            [refusal] = refusals(store, "alice")
            assert refusal["subject_id"] == alert
            assert (await rt.command("a", ack, BOSS))["ok"]

    run(main())
