"""The clients reach a running daemon through its control API (a real ``quarterdeck run
--headless`` in a subprocess): the CLI's reads print the same with and without a daemon,
``submit`` goes through the daemon when one runs and into the database when none does,
commands without a daemon are refused with nothing queued, ``attach --read-only`` is held to
reads by the daemon itself, and a console attached to a daemon that stopped sends nothing."""

from __future__ import annotations

import json
import os
import pwd
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.conftest import envelope, line, quarterdeck, run
from tests.headless import Headless, headless_runtime, query

from quarterdeck.client.api import ControlRefused
from quarterdeck.client.api_console import ApiConsole
from quarterdeck.client.reach import ApiAddress
from quarterdeck.domain.commands import LanePause
from quarterdeck.runtime.api import READ_ONLY_HEADER

LABEL = f"{pwd.getpwuid(os.getuid()).pw_name} (uid {os.getuid()})"


def socket_of(daemon: Headless) -> Path:
    return daemon.state_dir / "quarterdeck.sock"


def receipts(where: Headless | Path) -> int:
    return len(query(where, "SELECT id FROM receipts"))


def test_reads_print_the_same_through_the_daemon_and_from_the_database(tmp_path: Path) -> None:
    with headless_runtime(tmp_path) as daemon:
        tasks = [envelope(i, "default", payload={"objective": "wait", "lane": "held"})
                 for i in range(3)]  # fmt: skip

        async def feed() -> list[str]:
            async with daemon.client() as client:
                assert client.api is not None  # the SDK goes through the daemon
                asked = await client.command(
                    {"command": "approval.request", "action_id": "both-ways", "tool": "deploy"}
                )
                assert asked["verdict"] == "pending", asked
                return [r.receipt for r in await client.submit(tasks)]

        [first, *_] = run(feed())
        elsewhere = tmp_path / "no-daemon-here"
        empty = tmp_path / "empty.db"
        for args in (
            ("status", "--json"), ("status",), ("ls", "receipts", "--json"), ("ls", "receipts"),
            ("show", first, "--json"), ("show", first), ("approvals", "--json"),
            ("ls", "turns", "-A", "--json"),
        ):  # fmt: skip
            # Through the daemon: --db names an empty database, so what is printed is the
            # daemon's. From the database: no daemon serves that state directory.
            api = quarterdeck("--db", str(empty), *args, state_dir=daemon.state_dir)
            direct = quarterdeck("--db", daemon.url, *args, state_dir=elsewhere)
            assert api.returncode == direct.returncode == 0, (args, api.stderr, direct.stderr)
            assert api.stdout == direct.stdout, args
            assert api.stdout.strip(), args
        assert not empty.exists()
        missing = quarterdeck("show", "no-such-id", state_dir=daemon.state_dir)
        assert missing.returncode == 1
        assert missing.stderr == b"quarterdeck: no item no-such-id in workspace default\n"


def test_submit_through_the_daemon_and_without_one(tmp_path: Path) -> None:
    lines = b"\n".join(
        [
            line(envelope(1, "default", payload={"objective": "x", "lane": "held"})),
            b"{not json",
            json.dumps({"idempotency_key": "c", "workspace": "default", "kind": "command",
                        "payload": {"command": "lane.pause", "lane": "work"}}).encode(),
            line(envelope(1, "default", payload={"objective": "x", "lane": "held"})),
        ]
    ) + b"\n"  # fmt: skip
    (tmp_path / "with").mkdir()
    with headless_runtime(tmp_path / "with") as daemon:
        before = receipts(daemon)
        result = quarterdeck("submit", "-", stdin=lines, state_dir=daemon.state_dir)
        assert result.returncode == 1, result.stderr
        answers = [json.loads(text) for text in result.stdout.splitlines()]
        assert [(a["line"], a["status"]) for a in answers] == [
            (1, "accepted"), (2, "rejected"), (3, "rejected"), (4, "duplicate"),
        ]  # fmt: skip
        assert answers[3]["receipt"] == answers[0]["receipt"]
        assert answers[1]["receipt"] is None and "not recorded" in answers[1]["errors"][0]
        assert "supervision commands" in answers[2]["errors"][0]
        assert answers[2]["receipt"] is None
        assert receipts(daemon) == before + 1  # the daemon recorded the one new envelope
        assert query(daemon, "SELECT paused FROM lane_flags WHERE lane = 'work'") in (
            [], [{"paused": 0}],
        )  # fmt: skip

    # No daemon: every line is a receipt in the database, for a daemon to apply when it starts.
    state = tmp_path / "without" / "state"
    result = quarterdeck("submit", "-", stdin=lines, state_dir=state)
    assert result.returncode == 1
    statuses = [json.loads(text)["status"] for text in result.stdout.splitlines()]
    assert statuses == ["accepted", "rejected", "accepted", "duplicate"]
    assert receipts(state) == 3  # the command too: a batch for a daemon to apply when it starts


def test_supervision_commands_without_a_daemon_are_refused_and_queue_nothing(
    tmp_path: Path,
) -> None:
    with headless_runtime(tmp_path) as daemon:
        state = daemon.state_dir
        before = receipts(daemon)
        assert quarterdeck("lane", "pause", "ops", state_dir=state).returncode == 0
        assert receipts(daemon) == before + 1  # the daemon's receipt for the command
        daemon.proc.send_signal(signal.SIGTERM)
        daemon.proc.wait(timeout=15)
    after = receipts(state)
    for args in (("lane", "resume", "ops"), ("approve", "a-1"), ("cancel", "t-1"),
                 ("token", "create", "--principal", "late", "--role", "viewer")):  # fmt: skip
        refused = quarterdeck(*args, state_dir=state)
        assert refused.returncode == 3, (args, refused.stderr)
        assert refused.stdout == b""
        assert refused.stderr.decode() == (
            f"quarterdeck: no daemon is running on {state} (nothing answers on "
            f"{state / 'quarterdeck.sock'}): start one with 'quarterdeck run --headless' "
            "there, or name one with --api URL; the command was not sent\n"
        )
    assert receipts(state) == after  # nothing was queued
    # Reads still work, from the database.
    status = quarterdeck("status", "--json", state_dir=state)
    assert status.returncode == 0 and json.loads(status.stdout)["receipts"]["accepted"] >= 1


def test_a_named_daemon_that_does_not_answer_is_an_error_not_the_database(
    tmp_path: Path,
) -> None:
    result = quarterdeck(
        "status", state_dir=tmp_path / "state",
        env={"QUARTERDECK_API": str(tmp_path / "gone.sock")},
    )  # fmt: skip
    assert result.returncode == 3
    assert result.stderr.decode() == (
        f"quarterdeck: no daemon is listening on {tmp_path / 'gone.sock'}\n"
    )
    assert not (tmp_path / "state").exists()
    no_token = quarterdeck("--api", "http://127.0.0.1:9", "status", state_dir=tmp_path / "s")
    assert no_token.returncode == 2
    assert b"give a token (QUARTERDECK_TOKEN or --token-file FILE)" in no_token.stderr


def test_attach_read_only_is_held_to_reads_by_the_daemon(tmp_path: Path) -> None:
    with headless_runtime(tmp_path) as daemon:
        pause = {"workspace": "default", "command": {"command": "lane.pause", "lane": "work"}}
        task = [envelope(7, "default", payload={"objective": "x", "lane": "held"})]
        headers = {READ_ONLY_HEADER: "1"}
        # A hand-made client, as the same OS user (admin), asking on a read-only connection.
        with httpx.Client(
            transport=httpx.HTTPTransport(uds=str(socket_of(daemon))), base_url="http://qd"
        ) as raw:
            answers: dict[str, Any] = {
                "command": raw.post("/v1/commands", json=pause, headers=headers),
                "envelopes": raw.post("/v1/envelopes", json=task, headers=headers),
                "request": raw.post(
                    "/v1/approvals/request",
                    headers=headers,
                    json={"workspace": "default", "action_id": "ro", "tool": "deploy"},
                ),
            }
            for name, answer in answers.items():
                assert answer.status_code == 403, (name, answer.text)
                assert answer.json()["code"] == "read_only", name
            assert raw.get("/v1/status", headers=headers).status_code == 200
            assert raw.get("/v1/whoami", headers=headers).json()["roles"] == ["admin"]

        async def console() -> None:
            attached = await ApiConsole.open(ApiAddress(socket_path=socket_of(daemon)),
                                             read_only=True)  # fmt: skip
            try:
                assert attached.principal.label == LABEL
                assert (await attached.snapshot()).header.read_only
                # Past the screen's own check: the daemon refuses the console's connection.
                with pytest.raises(ControlRefused, match="read-only") as caught:
                    await attached.api.command("default", LanePause(lane="work").to_payload())
                assert caught.value.code == "read_only"
            finally:
                await attached.close()

        run(console())
        assert not query(
            daemon, "SELECT seq FROM ledger WHERE action = 'lane.paused' AND subject_id = 'work'"
        )
        assert receipts(daemon) == 0
        with httpx.Client(
            transport=httpx.HTTPTransport(uds=str(socket_of(daemon))), base_url="http://qd"
        ) as raw:
            metrics = raw.get("/metrics").text
        refusals = {
            sample.labels["code"]: sample.value
            for family in text_string_to_metric_families(metrics)
            if family.name == "quarterdeck_node_api_refusals"
            for sample in family.samples
            if sample.name.endswith("_total")
        }
        assert refusals.get("read_only") == 4  # three by hand, one from the console


def test_a_console_attached_to_a_daemon_that_stopped_sends_nothing(tmp_path: Path) -> None:
    with headless_runtime(tmp_path) as daemon:
        state = daemon.state_dir

        async def open_console() -> ApiConsole:
            return await ApiConsole.open(ApiAddress(socket_path=socket_of(daemon)))

        async def scenario() -> None:
            attached = await open_console()
            try:
                assert (await attached.command(LanePause(lane="work")))["ok"] is True
                daemon.proc.send_signal(signal.SIGTERM)
                daemon.proc.wait(timeout=15)
                before = receipts(state)
                result = await attached.command(LanePause(lane="ops"))
                assert result["ok"] is False
                [error] = result["errors"]
                assert "no daemon is listening" in error and "not sent" in error
                assert await attached.wait_change(0.1) is True  # the next snapshot says why
                assert receipts(state) == before
            finally:
                await attached.close()

        run(scenario())
    [paused] = query(
        state, "SELECT actor FROM ledger WHERE action = 'lane.paused' AND subject_id = 'work'"
    )
    assert paused["actor"] == LABEL
