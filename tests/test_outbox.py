"""The transactional outbox and its relay, against a real database (SQLite and PostgreSQL) and
real HTTP receivers on 127.0.0.1 (asyncio, minimal HTTP/1.1)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import text
from tests.conftest import run

from quarterdeck.domain.envelope import RUNTIME_WORKSPACE
from quarterdeck.runtime.config import Webhook
from quarterdeck.runtime.relay import Relay
from quarterdeck.store.database import Database, open_database
from quarterdeck.store.ledger import verify_ledger
from quarterdeck.store.outbox import (
    Target,
    due,
    enqueue,
    mark_delivered,
    mark_failed,
    notification_payload,
    outbox_counts,
)
from quarterdeck.store.writer import Writer, WriteTxn

FAST = {"backoff_initial_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 2.0, "signed": False}
"""Quick retries, unsigned (signatures: tests/test_webhook_signing.py)."""

DROP = "drop"
HANG = "hang"
Reply = int | str
"""An HTTP status to answer with, ``DROP`` (close without answering) or ``HANG``."""


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: Any
    reply: Reply
    raw: bytes = b""
    """The body's bytes as received."""


class Receiver:
    """A webhook receiver on an ephemeral port; ``respond(path, key, nth)`` decides each reply
    (``nth`` counts the requests seen with that Idempotency-Key, from 1)."""

    def __init__(self, respond: Callable[[str, str, int], Reply]) -> None:
        self.respond = respond
        self.seen: list[Seen] = []
        self._per_key: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def keys(self) -> Counter[str]:
        return Counter(s.headers.get("idempotency-key", "") for s in self.seen)

    def accepted(self) -> list[str]:
        return [
            s.headers["idempotency-key"]
            for s in self.seen
            if isinstance(s.reply, int) and 200 <= s.reply < 300
        ]

    async def __aenter__(self) -> Receiver:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            request_line, *header_lines = head.split("\r\n")
            _method, path, _ = request_line.split(" ", 2)
            headers = {}
            for header in header_lines:
                if header:
                    name, _, value = header.partition(":")
                    headers[name.strip().lower()] = value.strip()
            raw = await reader.readexactly(int(headers.get("content-length", "0")))
            key = headers.get("idempotency-key", "")
            self._per_key[key] += 1
            reply = self.respond(path, key, self._per_key[key])
            self.seen.append(Seen(path, headers, json.loads(raw), reply, raw))
            if reply == HANG:
                await asyncio.Event().wait()
            if reply == DROP:
                return
            data = b'{"ok": true}' if reply == 200 else b"receiver says no"
            writer.write(
                f"HTTP/1.1 {reply} Status\r\nContent-Length: {len(data)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + data
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()


def refused_url() -> str:
    """A URL on a port with nothing listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def notify(
    targets: list[Target], event: str, subject_id: str, data: dict[str, Any]
) -> Callable[[WriteTxn], list[str]]:
    def op(txn: WriteTxn) -> list[str]:
        return enqueue(
            txn,
            targets,
            workspace="acme",
            event=event,
            subject_type="task",
            subject_id=subject_id,
            summary=f"{event} for {subject_id}",
            data=data,
        )

    return op


async def outbox_rows(db: Database) -> dict[str, dict[str, Any]]:
    async with db.read() as conn:
        rows = (await conn.execute(text("SELECT * FROM outbox"))).mappings().all()
    return {row["id"]: dict(row) for row in rows}


async def ledger_entries(db: Database) -> list[tuple[str, str, dict[str, Any]]]:
    async with db.read() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT action, subject_id, payload FROM ledger "
                    "WHERE action LIKE 'notification.%' ORDER BY seq"
                )
            )
        ).all()
    return [(row[0], row[1], json.loads(row[2]) if row[2] else {}) for row in rows]


async def counts(db: Database) -> dict[str, int]:
    async with db.read() as conn:
        return await conn.run_sync(outbox_counts)


async def run_until_settled(db: Database, relay: Relay, deadline_s: float = 10.0) -> None:
    """Run the relay's loop until nothing is pending (or fail after ``deadline_s``)."""
    stop = asyncio.Event()
    loop = asyncio.create_task(relay.run(stop, interval_s=0.02))
    try:
        end = time.monotonic() + deadline_s
        while (await counts(db))["pending"]:
            assert not loop.done(), "the relay loop ended on its own"
            assert time.monotonic() < end, f"still pending: {await counts(db)}"
            await asyncio.sleep(0.02)
        assert not loop.done()
    finally:
        stop.set()
        await asyncio.wait_for(loop, 5)


def test_retries_then_delivers_each_notification_once(database: str) -> None:
    def flaky(path: str, key: str, nth: int) -> Reply:
        return {1: 500, 2: DROP}.get(nth, 200)

    async def main() -> None:
        db = await open_database(database)
        async with Receiver(flaky) as receiver, Writer(db) as writer:
            hooks = [
                Webhook("ops", receiver.url("/generic"), events=("task.*",), **FAST),
                Webhook("chat", receiver.url("/slack"), format="slack", **FAST),
            ]
            targets = [Target(h.name, h.format, h.events) for h in hooks]
            ids: dict[str, tuple[str, str, dict[str, Any]]] = {}
            for n in range(3):
                data = {"n": n, "result": f"done {n}"}
                made = await writer.submit(notify(targets, "task.completed", f"t{n}", data))
                assert len(made) == 2
                for notification_id, hook in zip(made, hooks, strict=True):
                    ids[notification_id] = (hook.name, f"t{n}", data)
            relay = Relay(writer, hooks, concurrency=2)
            try:
                await run_until_settled(db, relay)
            finally:
                await relay.close()
            assert (relay.delivered, relay.retried, relay.dead) == (6, 12, 0)

            # Each notification was accepted exactly once, after two failed attempts that
            # carried the same key.
            assert sorted(receiver.accepted()) == sorted(ids)
            assert receiver.keys() == Counter(dict.fromkeys(ids, 3))
            for seen in receiver.seen:
                assert seen.headers["user-agent"] == "quarterdeck"
                assert seen.headers["content-type"] == "application/json"
                hook, subject_id, data = ids[seen.headers["idempotency-key"]]
                if hook == "chat":
                    assert seen.path == "/slack"
                    assert isinstance(seen.body["text"], str)
                    assert "task.completed" in seen.body["text"]
                    assert "event" not in seen.body
                else:
                    assert seen.path == "/generic"
                    assert seen.body["id"] == seen.headers["idempotency-key"]
                    assert seen.body["event"] == "task.completed"
                    assert seen.body["subject"] == {"type": "task", "id": subject_id}
                    assert seen.body["data"] == data
                    assert seen.body["workspace"] == "acme"

            rows = await outbox_rows(db)
            assert set(rows) == set(ids)
            for row in rows.values():
                assert (row["state"], row["attempts"]) == ("delivered", 3)
                assert row["delivered_at"] is not None
                assert row["last_error"] is not None  # the last failure before success
            assert await counts(db) == {"pending": 0, "delivered": 6, "dead": 0}

            # One ledger entry per delivery; retries are counted on the row, not logged.
            entries = await ledger_entries(db)
            assert [action for action, _, _ in entries] == ["notification.delivered"] * 6
            assert sorted(subject for _, subject, _ in entries) == sorted(ids)
            for _, subject, payload in entries:
                assert payload == {
                    "webhook": ids[subject][0],
                    "event": "task.completed",
                    "attempts": 3,
                }
            # Nothing is due any more: another pass sends nothing.
            before = len(receiver.seen)
            assert await Relay(writer, hooks).deliver_due() == 0
            assert len(receiver.seen) == before
        assert (await verify_ledger(db)).ok
        await db.dispose()

    run(main())


def test_a_receiver_that_always_fails_is_dead_lettered(database: str) -> None:
    async def main() -> None:
        db = await open_database(database)
        async with Receiver(lambda path, key, nth: HANG if path == "/slow" else 503) as receiver:
            hooks = [
                Webhook("down", receiver.url("/down"), **{**FAST, "max_attempts": 3}),
                # (a timeout long enough for each request to reach the receiver on a busy machine)
                Webhook(
                    "slow", receiver.url("/slow"), **{**FAST, "timeout_s": 1.0}, max_attempts=2
                ),
                Webhook("gone", refused_url(), **{**FAST, "max_attempts": 2}),
            ]
            targets = [Target(h.name) for h in hooks]
            async with Writer(db) as writer:
                made = await writer.submit(notify(targets, "alert.opened", "a1", {}))
                by_hook = dict(zip((h.name for h in hooks), made, strict=True))
                relay = Relay(writer, hooks)
                try:
                    await run_until_settled(db, relay)
                    # Dead notifications are never attempted again.
                    seen = len(receiver.seen)
                    assert await relay.deliver_due() == 0
                    assert len(receiver.seen) == seen
                finally:
                    await relay.close()
            assert (relay.delivered, relay.dead) == (0, 3)
            assert receiver.keys() == Counter({by_hook["down"]: 3, by_hook["slow"]: 2})
            assert receiver.accepted() == []

        rows = await outbox_rows(db)
        assert {rows[by_hook[name]]["state"] for name in by_hook} == {"dead"}
        assert rows[by_hook["down"]]["attempts"] == 3
        assert rows[by_hook["down"]]["last_error"].startswith("HTTP 503")
        assert rows[by_hook["slow"]]["attempts"] == 2
        assert rows[by_hook["slow"]]["last_error"] == "timed out after 1 s"
        assert rows[by_hook["gone"]]["attempts"] == 2
        assert "ConnectError" in rows[by_hook["gone"]]["last_error"]
        assert all(row["delivered_at"] is None for row in rows.values())

        entries = await ledger_entries(db)
        assert sorted(subject for _, subject, _ in entries) == sorted(made)
        assert {action for action, _, _ in entries} == {"notification.dead"}
        dead = {subject: payload for _, subject, payload in entries}
        assert dead[by_hook["down"]] == {
            "webhook": "down",
            "event": "alert.opened",
            "attempts": 3,
            "error": rows[by_hook["down"]]["last_error"],
        }
        assert dead[by_hook["slow"]]["attempts"] == 2
        assert await counts(db) == {"pending": 0, "delivered": 0, "dead": 3}
        assert (await verify_ledger(db)).ok
        await db.dispose()

    run(main())


def test_a_webhook_no_longer_configured_is_dead_lettered_naming_why(database: str) -> None:
    """A row names its webhook; when the configuration no longer has that webhook there is
    nowhere to send it: it is dead-lettered at once with the reason (kept, on the ledger), not
    retried, and nothing is posted anywhere (not to another webhook either)."""

    async def main() -> None:
        db = await open_database(database)
        async with Receiver(lambda path, key, nth: 500) as receiver, Writer(db) as writer:
            removed = Webhook("removed", receiver.url("/old"), **FAST)
            [kept_id] = await writer.submit(notify([Target("removed")], "task.failed", "t1", {}))
            # The first relay (the webhook still configured) fails once: the row stays pending.
            relay = Relay(writer, [removed])
            try:
                assert await relay.deliver_due() == 1
            finally:
                await relay.close()
            row = (await outbox_rows(db))[kept_id]
            assert (row["state"], row["attempts"]) == ("pending", 1)
            seen = len(receiver.seen)
            # The next relay's configuration has another webhook only.
            await asyncio.sleep(0.1)  # past the retry's backoff (at most 0.05 s)
            other = Webhook("other", receiver.url("/other"), **FAST)
            relay = Relay(writer, [other])
            try:
                assert await relay.deliver_due() == 1
                assert (relay.dead, relay.retried, relay.delivered) == (1, 0, 0)
                assert await relay.deliver_due() == 0
            finally:
                await relay.close()
            assert len(receiver.seen) == seen
        row = (await outbox_rows(db))[kept_id]
        reason = "no webhook named 'removed' in the configuration"
        assert (row["state"], row["attempts"], row["last_error"]) == ("dead", 1, reason)
        assert row["payload"] and row["delivered_at"] is None
        assert await ledger_entries(db) == [
            (
                "notification.dead",
                kept_id,
                {"webhook": "removed", "event": "task.failed", "attempts": 1, "error": reason},
            )
        ]
        assert (await verify_ledger(db)).ok
        await db.dispose()

    run(main())


def test_enqueue_writes_only_for_targets_that_want_the_event(database: str) -> None:
    targets = [
        Target("tasks", events=("task.*",)),
        Target("alerts", events=("alert.opened", "alert.resolved")),
        Target("everything", format="slack"),
    ]

    async def main() -> None:
        db = await open_database(database)
        async with Writer(db) as writer:
            task_ids = await writer.submit(notify(targets, "task.completed", "t1", {}))
            alert_ids = await writer.submit(notify(targets[:2], "alert.opened", "a1", {}))
            none = await writer.submit(notify(targets[:2], "mission.started", "m1", {}))
        rows = await outbox_rows(db)
        assert none == []
        assert len(task_ids) == 2
        assert len(alert_ids) == 1
        assert set(rows) == {*task_ids, *alert_ids}
        assert sorted((r["webhook"], r["event"]) for r in rows.values()) == [
            ("alerts", "alert.opened"),
            ("everything", "task.completed"),
            ("tasks", "task.completed"),
        ]
        assert all(r["state"] == "pending" and r["attempts"] == 0 for r in rows.values())
        assert json.loads(rows[task_ids[1]]["payload"])["text"].startswith("[quarterdeck]")
        await db.dispose()

    run(main())


def test_an_enqueue_rolled_back_with_its_transaction_leaves_no_row(database: str) -> None:
    target = Target("hook")

    def enqueue_then_fail(txn: WriteTxn) -> None:
        ids = notify([target], "task.completed", "t1", {})(txn)
        assert len(ids) == 1
        raise RuntimeError("the change failed after its notification was queued")

    async def main() -> None:
        db = await open_database(database)
        async with Writer(db) as writer:
            # Alone in its commit, then beside a succeeding operation (its own savepoint).
            with pytest.raises(RuntimeError, match="after its notification"):
                await writer.submit(enqueue_then_fail)
            results = await asyncio.gather(
                writer.submit(enqueue_then_fail),
                writer.submit(notify([target], "task.completed", "t2", {})),
                return_exceptions=True,
            )
        assert isinstance(results[0], RuntimeError)
        assert not isinstance(results[1], BaseException)
        rows = await outbox_rows(db)
        assert set(rows) == set(results[1])
        assert [row["subject_id"] for row in rows.values()] == ["t2"]
        await db.dispose()

    run(main())


def test_marks_apply_only_to_pending_notifications(database: str) -> None:
    target = Target("hook")

    async def main() -> None:
        db = await open_database(database)
        async with Writer(db) as writer:
            first, second = [
                (await writer.submit(notify([target], "task.completed", s, {})))[0]
                for s in ("t1", "t2")
            ]
            rows = await writer.submit(lambda t: due(t, lease_s=0))
            assert [row.id for row in rows] == [first, second]
            # Taking rows leases them (here for 60 s): no other relay gets them meanwhile.
            again = await writer.submit(lambda t: due(t, lease_s=60))
            assert [row.id for row in again] == [first, second]
            assert await writer.submit(due) == []
            assert (rows[0].attempts, rows[0].webhook, rows[0].format) == (0, "hook", "json")
            assert json.loads(rows[0].payload)["subject"] == {"type": "task", "id": "t1"}

            far = "9999-01-01T00:00:00.000000Z"
            assert await writer.submit(lambda t: mark_failed(t, first, 1, "HTTP 500", far, False))
            assert await writer.submit(lambda t: mark_delivered(t, second, 1))
            assert not await writer.submit(lambda t: mark_delivered(t, second, 2))
            assert not await writer.submit(lambda t: mark_failed(t, second, 2, "late", far, True))
            assert await writer.submit(due) == []
        rows_by_id = await outbox_rows(db)
        assert (rows_by_id[first]["state"], rows_by_id[first]["attempts"]) == ("pending", 1)
        assert rows_by_id[first]["next_attempt_at"] == far
        assert (rows_by_id[second]["state"], rows_by_id[second]["attempts"]) == ("delivered", 1)
        assert [(a, s) for a, s, _ in await ledger_entries(db)] == [
            ("notification.delivered", second)
        ]
        assert await counts(db) == {"pending": 1, "delivered": 1, "dead": 0}
        await db.dispose()

    run(main())


def test_a_slack_message_names_the_workspace_or_says_it_is_about_the_runtime() -> None:
    def context_line(workspace: str) -> str:
        body = notification_payload(
            "slack", notification_id="n1", workspace=workspace, at="2030-01-01T00:00:00Z",
            event="alert.opened", subject_type="alert", subject_id="a1",
            summary="lane sim drifted", data={},
        )  # fmt: skip
        assert body["text"] == "[quarterdeck] alert.opened: lane sim drifted"
        return str(body["blocks"][1]["elements"][0]["text"])

    assert context_line("acme") == "alert `a1` in `acme` at 2030-01-01T00:00:00Z"
    assert context_line(RUNTIME_WORKSPACE) == "alert `a1` about the runtime at 2030-01-01T00:00:00Z"
    generic = notification_payload(
        "json", notification_id="n1", workspace=RUNTIME_WORKSPACE, at="t", event="alert.opened",
        subject_type="alert", subject_id="a1", summary="s", data={"k": 1},
    )  # fmt: skip
    assert generic["workspace"] == RUNTIME_WORKSPACE  # scripts still get the exact workspace
