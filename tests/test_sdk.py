"""The approval SDK against a real headless runtime in another process, decided from the CLI.
The SDK goes through the daemon's control API (the state directory's socket: the requester is
this OS user); decisions come from people with their own tokens over TCP (``token:alice``).

One runtime serves the whole module, once on SQLite and once on PostgreSQL (policy: ``deploy``
needs approval, ``page`` needs it within 1 s with an ``oncall`` ladder and pauses its lane on
expiry, ``rm*`` is denied, the rest is allowed). Every test uses its own action ids.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import pwd
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import run
from tests.headless import Headless, headless_runtime, query

from quarterdeck.client import (
    ActionDenied,
    ApprovalConflict,
    ApprovalDecision,
    ApprovalEditError,
    ApprovalExpired,
    ApprovalRejected,
    ApprovalTimeout,
    require_approval,
)
from quarterdeck.client.decorator import edited_call, json_arguments
from quarterdeck.domain.commands import ApprovalRequest


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory, module_database: str) -> Iterator[Headless]:
    """One headless runtime for the module, on SQLite and on PostgreSQL."""
    with headless_runtime(
        tmp_path_factory.mktemp("sdk"), db=module_database, run_args=("--listen", "127.0.0.1:0")
    ) as started:
        yield started


USER = pwd.getpwuid(os.getuid()).pw_name
LABEL = f"{USER} (uid {os.getuid()})"
"""How the daemon names this process's OS user (the SDK's requester)."""


def cli(runtime: Headless, *args: str, by: str | None = None) -> Any:
    return runtime.cli(*args, by=by)


def fresh_id(label: str) -> str:
    return f"{label}-{uuid.uuid4()}"


async def decide_from_cli(
    runtime: Headless, action_id: str, *args: str, by: str = "alice"
) -> tuple[Any, float]:
    """Find the approval of ``action_id``, then run ``quarterdeck <args[0]> ID <args[1:]>`` as
    ``token:<by>``; return the finished process and the monotonic time it exited."""
    runtime.token(by)  # made before the clock starts
    row = await asyncio.to_thread(runtime.approval_for, action_id)
    result = await asyncio.to_thread(cli, runtime, args[0], row["id"], *args[1:], by=by)
    return result, time.monotonic()


def test_approval_from_the_cli_returns_within_a_second(runtime: Headless) -> None:
    action_id = fresh_id("deploy")

    async def main() -> None:
        async with runtime.client() as client:
            returned: list[float] = []
            request = asyncio.create_task(
                client.request_approval(
                    "deploy", {"env": "prod", "replicas": 3}, action_id=action_id,
                    timeout_s=30,
                )
            )  # fmt: skip
            request.add_done_callback(lambda _task: returned.append(time.monotonic()))
            approved, exited = await decide_from_cli(runtime, action_id, "approve", by="alice")
            assert approved.returncode == 0, approved.stderr
            decision = await request
            assert returned[0] - exited < 1.0, f"returned {returned[0] - exited:.3f} s after"
            assert decision == ApprovalDecision(
                "approved",
                {"env": "prod", "replicas": 3},
                decision.approval_id,
                "token:alice",
                None,
            )
            row = runtime.approval(str(decision.approval_id))
            assert (row["state"], row["tool"], row["requested_by"]) == (
                "approved", "deploy", LABEL,
            )  # fmt: skip
            # A retry (same action id, as after a crash) binds to the same approval.
            again = await client.request_approval(
                "deploy", {"env": "prod", "replicas": 3}, action_id=action_id
            )
            assert again == decision

    run(main())


def test_edited_args_arrive_edited(runtime: Headless) -> None:
    action_id = fresh_id("deploy")

    async def main() -> None:
        async with runtime.client() as client:
            request = asyncio.create_task(
                client.request_approval("deploy", {"env": "prod"}, action_id=action_id)
            )
            edited, _ = await decide_from_cli(
                runtime, action_id, "approve", "--edit", '{"env": "staging"}', by="alice"
            )
            assert edited.returncode == 0, edited.stderr
            assert json.loads(edited.stdout)["state"] == "edited"
            decision = await asyncio.wait_for(request, 10)
        assert (decision.outcome, decision.args, decision.decided_by) == (
            "edited", {"env": "staging"}, "token:alice",
        )  # fmt: skip

    run(main())


def test_reject_raises_with_the_code(runtime: Headless) -> None:
    action_id = fresh_id("deploy")

    async def main() -> None:
        async with runtime.client() as client:
            request = asyncio.create_task(
                client.request_approval("deploy", {"env": "prod"}, action_id=action_id)
            )
            rejected, _ = await decide_from_cli(
                runtime, action_id, "reject", "--reason", "wrong_target",
                "--note", "prod is frozen", by="carol",
            )  # fmt: skip
            assert rejected.returncode == 0, rejected.stderr
            with pytest.raises(ApprovalRejected) as caught:
                await asyncio.wait_for(request, 10)
        error = caught.value
        assert (error.reason_code, error.reason, error.decided_by) == (
            "wrong_target", "prod is frozen", "token:carol",
        )  # fmt: skip
        assert error.action_id == action_id and error.approval_id is not None

    run(main())


def test_double_approve_returns_the_first_decision(runtime: Headless) -> None:
    action_id = fresh_id("deploy")

    async def main() -> None:
        async with runtime.client() as client:
            request = asyncio.create_task(
                client.request_approval("deploy", {"n": 1}, action_id=action_id)
            )
            first, _ = await decide_from_cli(runtime, action_id, "approve", by="alice")
            assert first.returncode == 0, first.stderr
            second, _ = await decide_from_cli(runtime, action_id, "approve", by="bob")
            assert second.returncode == 0, second.stderr
            answer = json.loads(second.stdout)
            assert answer["already"] is True
            assert (answer["state"], answer["decided_by"]) == ("approved", "token:alice")
            decision = await asyncio.wait_for(request, 10)
            assert decision.decided_by == "token:alice"

    run(main())


def test_denied_tool_raises_and_allowed_tool_returns_at_once(runtime: Headless) -> None:
    async def main() -> None:
        async with runtime.client() as client:
            with pytest.raises(ActionDenied) as caught:
                await client.request_approval("rm_rf", {"path": "/"}, timeout_s=10)
            assert "no-removals" in str(caught.value.reason)
            began = time.monotonic()
            decision = await client.request_approval("read_file", {"path": "a"}, timeout_s=10)
            took = time.monotonic() - began
        assert decision.outcome == "allowed" and decision.args == {"path": "a"}
        assert decision.approval_id is None
        assert took < 1.0, took

    run(main())


def test_a_reused_action_id_must_ask_for_the_same_action(runtime: Headless) -> None:
    action_id = fresh_id("read")

    async def main() -> None:
        async with runtime.client() as client:
            first = await client.request_approval("read_file", {"p": 1}, action_id=action_id)
            assert first.outcome == "allowed"
            assert await client.request_approval("read_file", {"p": 1}, action_id=action_id) == (
                first
            )
            for tool, args in (("read_file", {"p": 2}), ("rm_rf", {"p": 1})):
                with pytest.raises(ApprovalConflict, match="already requested for 'read_file'"):
                    await client.request_approval(tool, args, action_id=action_id)

    run(main())


def test_timeout_leaves_the_approval_pending(runtime: Headless) -> None:
    action_id = fresh_id("deploy")

    async def main() -> None:
        async with runtime.client() as client:
            with pytest.raises(ApprovalTimeout) as caught:
                await client.request_approval("deploy", {}, action_id=action_id, timeout_s=0.5)
            assert caught.value.approval_id is not None
            assert runtime.approval(caught.value.approval_id)["state"] == "pending"
            refused = await client.command(
                {"command": "approval.request", "action_id": fresh_id("x"), "tool": "t",
                 "args": []}
            )  # fmt: skip
            assert refused == {"ok": False, "errors": ["payload.args: must be an object"]}

    run(main())


def test_a_typed_command_travels_in_its_wire_form(runtime: Headless) -> None:
    key = fresh_id("typed")

    async def main() -> None:
        # the database path: nobody authenticates the sender, who may still ask
        async with runtime.client(daemon=False) as client:
            command = ApprovalRequest(action_id=fresh_id("x"), tool="read_file")
            sent = await client.send_command(command, idempotency_key=key)
            [row] = query(runtime, "SELECT payload FROM receipts WHERE id = ?", (sent.receipt,))
            assert json.loads(row["payload"]) == command.to_payload()
            result = await client.command_result(sent.receipt, timeout_s=10)
            assert result["ok"] is True and result["verdict"] == "allow"
            assert await client.command(command, idempotency_key=key) == result

    run(main())


def test_expiry_walks_the_ladder_and_pauses_the_lane(runtime: Headless) -> None:
    action_id = fresh_id("page")
    seen: list[tuple[str, str]] = []

    async def watch() -> None:
        while True:
            rows = query(
                runtime,
                "SELECT state, approver FROM approvals WHERE action_key = ?",
                (f"sdk:{action_id}",),
            )
            if rows and (rows[0]["state"], rows[0]["approver"]) not in seen:
                seen.append((rows[0]["state"], rows[0]["approver"]))
            await asyncio.sleep(0.02)

    async def main() -> None:
        async with runtime.client() as client:
            watcher = asyncio.create_task(watch())
            began = time.monotonic()
            with pytest.raises(ApprovalExpired) as caught:
                await client.request_approval(
                    "page", {"who": "oncall"}, action_id=action_id, lane="ops", timeout_s=20
                )
            took = time.monotonic() - began
            watcher.cancel()
        approval_id = caught.value.approval_id
        assert approval_id is not None
        row = runtime.approval(approval_id)
        assert (row["state"], row["level"], row["approver"]) == ("expired", 1, "oncall")
        assert ("escalated", "oncall") in seen, seen
        assert 1.5 < took < 10, took
        flags = query(runtime, "SELECT paused FROM lane_flags WHERE lane = 'ops'")
        assert flags[0]["paused"] == 1
        actions = [
            r["action"]
            for r in query(
                runtime,
                "SELECT action FROM ledger WHERE subject_id = ? ORDER BY seq",
                (approval_id,),
            )
        ]
        assert actions == ["approval.requested", "approval.escalated", "approval.expired"]

    run(main())


def test_an_expiry_that_cannot_pause_a_lane_says_why(runtime: Headless) -> None:
    """The rule says pause the lane on expiry, but the request named no lane, or a lane this
    runtime does not have: the action is rejected and the ledger says what was not applied."""
    no_lane, unknown_lane = fresh_id("page"), fresh_id("page")

    async def expire(action_id: str, lane: str | None) -> str:
        async with runtime.client() as client:
            with pytest.raises(ApprovalExpired) as caught:
                await client.request_approval(
                    "page", {"who": "oncall"}, action_id=action_id, lane=lane, timeout_s=20
                )
        assert caught.value.approval_id is not None
        return caught.value.approval_id

    async def main() -> list[str]:
        return list(await asyncio.gather(expire(no_lane, None), expire(unknown_lane, "nope")))

    before = query(runtime, "SELECT lane, paused, force_fallback FROM lane_flags ORDER BY lane")
    expired = run(main())
    why = {}
    for approval_id in expired:
        [entry] = query(
            runtime,
            "SELECT payload FROM ledger WHERE subject_id = ? AND action = 'approval.expired'",
            (approval_id,),
        )
        payload = json.loads(entry["payload"])
        assert payload["on_expiry"] == "pause_lane"
        why[approval_id] = payload["on_expiry_not_applied"]
    assert why == {
        expired[0]: "the request named no lane (the SDK's lane= names one)",
        expired[1]: "lane 'nope' is not configured on this runtime",
    }
    after = query(runtime, "SELECT lane, paused, force_fallback FROM lane_flags ORDER BY lane")
    assert after == before  # nothing paused, and no flag row for the unknown lane


def test_decorator_on_a_sync_function(runtime: Headless, tmp_path: Path) -> None:
    calls: list[tuple[str, str]] = []

    @require_approval(
        lambda: runtime.client(),
        tool="deploy",
        action_id=lambda args: f"write-{args['name']}",
    )
    def write_note(name: str, text: str = "draft") -> Path:
        calls.append((name, text))
        path = tmp_path / name
        path.write_text(text)
        return path

    edited_name, rejected_name = fresh_id("ok"), fresh_id("no")

    async def main() -> None:
        with pytest.raises(RuntimeError, match="running event loop"):
            write_note("inside-a-loop")
        call = asyncio.create_task(asyncio.to_thread(write_note, edited_name))
        edit = json.dumps({"name": edited_name, "text": "final"})
        edited, _ = await decide_from_cli(
            runtime, f"write-{edited_name}", "approve", "--edit", edit
        )
        assert edited.returncode == 0, edited.stderr
        path = await asyncio.wait_for(call, 20)
        assert path.read_text() == "final"
        sent = json.loads(runtime.approval_for(f"write-{edited_name}")["args"])
        assert sent == {"name": edited_name, "text": "draft"}

        call = asyncio.create_task(asyncio.to_thread(write_note, rejected_name, "x"))
        rejected, _ = await decide_from_cli(
            runtime, f"write-{rejected_name}", "reject", "--reason", "unsafe"
        )
        assert rejected.returncode == 0, rejected.stderr
        with pytest.raises(ApprovalRejected):
            await asyncio.wait_for(call, 20)

    run(main())
    assert calls == [(edited_name, "final")]
    assert not (tmp_path / rejected_name).exists()


def test_decorator_on_an_async_function(runtime: Headless) -> None:
    calls: list[dict[str, Any]] = []

    async def main() -> None:
        async with runtime.client() as client:

            @require_approval(client, action_id=lambda args: f"async-{args['target']}")
            async def deploy(target: str, replicas: int = 1) -> str:
                calls.append({"target": target, "replicas": replicas})
                return f"{target}x{replicas}"

            ok, no = fresh_id("t"), fresh_id("t")
            call = asyncio.create_task(deploy(ok))
            edit = json.dumps({"target": ok, "replicas": 5})
            edited, _ = await decide_from_cli(runtime, f"async-{ok}", "approve", "--edit", edit)
            assert edited.returncode == 0, edited.stderr
            assert await asyncio.wait_for(call, 20) == f"{ok}x5"

            call = asyncio.create_task(deploy(no, replicas=2))
            rejected, _ = await decide_from_cli(
                runtime, f"async-{no}", "reject", "--reason", "policy"
            )
            assert rejected.returncode == 0, rejected.stderr
            with pytest.raises(ApprovalRejected):
                await asyncio.wait_for(call, 20)
            assert calls == [{"target": ok, "replicas": 5}]

    run(main())


def test_edited_call_fits_the_edit_to_the_signature() -> None:
    def copy(source: Path, target: str, *, overwrite: bool = False) -> None: ...

    signature = inspect.signature(copy)
    bound = signature.bind(Path("/a"), "b")
    bound.apply_defaults()
    sent = json_arguments(bound)
    assert sent == {"source": "/a", "target": "b", "overwrite": False}

    args, kwargs = edited_call(
        signature, bound, sent, {"source": "/a", "target": "c"}, action_id="x", approval_id="y"
    )
    assert args == (Path("/a"), "c") and kwargs == {"overwrite": False}  # the original Path
    args, kwargs = edited_call(
        signature, bound, sent, {"source": "/z", "target": "c", "overwrite": True},
        action_id="x", approval_id="y",
    )  # fmt: skip
    assert args == ("/z", "c") and kwargs == {"overwrite": True}
    with pytest.raises(ApprovalEditError, match="no parameter named 'mode'"):
        edited_call(signature, bound, sent, {**sent, "mode": 1}, action_id="x", approval_id="y")
    with pytest.raises(ApprovalEditError, match="leaves out 'source'"):
        edited_call(signature, bound, sent, {"target": "c"}, action_id="x", approval_id="y")
