"""Signed webhook deliveries and credential-free outbox rows, against the real runtime and relay
posting to real HTTP receivers on 127.0.0.1 (SQLite and PostgreSQL): the signature verifies
with the webhook's secret, and fails for a tampered body, another secret, another timestamp or
a replay outside the tolerance; no stored row holds a URL or a secret; a secret missing from the
environment stops the start; step 12 drops the URLs that rows used to hold.

The receiver's check here is written from the documentation (docs/specs/supervision.md,
"Signatures"), not taken from the code under test."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from tests.conftest import Store, is_postgres, quarterdeck, run
from tests.test_migrations import sync_conn
from tests.test_outbox import Receiver
from tests.test_runtime import config, runtime, submit_one, turn_of, wait_until
from tests.test_supervision import acting, approval_of, policy

from quarterdeck.runtime.config import ConfigError, parse_config
from quarterdeck.runtime.runtime import Runtime
from quarterdeck.store.database import open_database
from quarterdeck.store.migrations import HEAD_VERSION, migrate

TOLERANCE_S = 300


def verify(header: str | None, body: bytes, secret: str, now: float) -> bool:
    """A receiver's check of ``Quarterdeck-Signature``: every ``v1`` is compared in constant
    time with the HMAC-SHA256 of ``"<t>." + body`` under the secret, and ``t`` must be within
    the tolerance of the receiver's clock."""
    if not header:
        return False
    parts = [part.partition("=") for part in header.split(",")]
    stamps = [value for key, _, value in parts if key == "t"]
    candidates = [value for key, _, value in parts if key == "v1"]
    if len(stamps) != 1 or not stamps[0].isdigit() or not candidates:
        return False
    if abs(now - int(stamps[0])) > TOLERANCE_S:
        return False
    expected = hmac.new(
        secret.encode(), stamps[0].encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)


def stored_text(url: str) -> dict[str, str]:
    """Every table's rows, each table as one text (column names included)."""
    store = Store(url)
    if is_postgres(url):
        names = [
            row["table_name"]
            for row in store.rows(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
        ]
    else:
        names = [
            row["name"] for row in store.rows("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
    return {name: repr(store.rows(f"SELECT * FROM {name}")) for name in names}


def test_runtime_deliveries_are_signed_and_rows_keep_no_credentials(
    database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ops_secret = f"ops-{secrets.token_hex(16)}"
    witness_secret = f"witness-{secrets.token_hex(16)}"
    monkeypatch.setenv("QD_TEST_OPS_SECRET", ops_secret)
    monkeypatch.setenv("QD_TEST_WITNESS_SECRET", witness_secret)
    fast = {"backoff_initial_s": 0.05, "backoff_max_s": 0.1}

    async def main() -> Receiver:
        # Each notification's first attempt fails: the retry is signed afresh.
        async with Receiver(lambda _path, _key, nth: 500 if nth == 1 else 200) as receiver:
            hooks = [
                {"name": "ops", "url": receiver.url("/ops"), "events": ["approval.*"],
                 "secret_env": "QD_TEST_OPS_SECRET", **fast},
                {"name": "witness", "url": receiver.url("/witness"), "events": ["none"],
                 "secret_env": "QD_TEST_WITNESS_SECRET", **fast},
                {"name": "chat", "url": receiver.url("/chat"), "format": "slack",
                 "events": ["approval.pending"], "signed": False, **fast},
            ]  # fmt: skip
            ledger = {"witness": "witness", "checkpoint_interval_s": 0.2}
            data = config(webhooks=hooks, ledger=ledger)
            async with runtime(tmp_path, data, policy=policy()) as (rt, store):
                turn = await turn_of(
                    store, await submit_one(rt, acting("n", {"tool": "deploy", "args": {}}))
                )
                await approval_of(store, turn)

                def accepted(path: str) -> int:
                    return sum(1 for s in receiver.seen if s.path == path and s.reply == 200)

                await wait_until(
                    lambda: all(accepted(p) for p in ("/ops", "/witness", "/chat")),
                    20,
                    "a delivery to each webhook",
                )
        return receiver

    receiver = run(main())
    now = time.time()
    by_path = {path: [s for s in receiver.seen if s.path == path] for path in ("/ops", "/witness")}
    assert all(len(seen) >= 2 for seen in by_path.values())  # a failed attempt, then the retry
    for path, secret, other in (
        ("/ops", ops_secret, witness_secret),
        ("/witness", witness_secret, ops_secret),
    ):
        for seen in by_path[path]:
            header = seen.headers.get("quarterdeck-signature")
            assert header is not None and header.startswith("t="), header
            assert verify(header, seen.raw, secret, now), (path, header)
            assert not verify(header, seen.raw, other, now)
            tampered = seen.raw.replace(b'"', b"'", 1)
            assert tampered != seen.raw and not verify(header, tampered, secret, now)
            stamp = int(header.split(",")[0][2:])
            shifted = header.replace(f"t={stamp}", f"t={stamp + 1}")
            assert not verify(shifted, seen.raw, secret, now)  # the time is signed too
            assert not verify(header, seen.raw, secret, stamp + TOLERANCE_S + 1)  # a replay
    events = {seen.body["event"] for seen in by_path["/witness"]}
    assert events == {"ledger.checkpoint"}
    assert all(seen.body["event"].startswith("approval.") for seen in by_path["/ops"])
    assert all(
        "quarterdeck-signature" not in seen.headers
        for seen in receiver.seen
        if seen.path == "/chat"
    )

    # Nothing stored holds a secret or a webhook's address; outbox rows name their webhook.
    stored = stored_text(database)
    for table, content in stored.items():
        for credential in (ops_secret, witness_secret, f"127.0.0.1:{receiver.port}"):
            assert credential not in content, (table, credential)
    rows = Store(database).rows("SELECT * FROM outbox")
    assert rows and "url" not in rows[0]
    assert {row["webhook"] for row in rows} == {"ops", "witness", "chat"}
    assert {row["state"] for row in rows} <= {"delivered", "pending"}


CONFIG = """
[lanes.sim]
adapter = "sim"

[[webhooks]]
name = "ops"
url = "https://hooks.example.internal/q"
secret_env = "QD_TEST_MISSING_SECRET"

[[webhooks]]
name = "chat"
url = "https://hooks.example.internal/c"
format = "slack"
signed = false
"""


def test_a_missing_or_empty_secret_stops_the_start(tmp_path: Path) -> None:
    """``run`` refuses to start, naming the webhook and the variable, before it opens the
    database; the runtime itself refuses the same configuration."""
    path = tmp_path / "quarterdeck.toml"
    path.write_text(CONFIG, encoding="utf-8")
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if k != "QD_TEST_MISSING_SECRET"}
    for value, says in ((None, "is not set"), ("", "is empty")):
        extra = {} if value is None else {"QD_TEST_MISSING_SECRET": value}
        result = quarterdeck(
            "run", "--headless", "--until-idle", "--config", str(path), state_dir=state,
            env={**env, **extra},
        )  # fmt: skip
        stderr = result.stderr.decode()
        assert result.returncode == 2, stderr
        assert f"bad configuration {path}" in stderr
        assert (
            "webhooks[0].secret_env: the environment variable QD_TEST_MISSING_SECRET "
            f"(the signing secret of webhook 'ops') {says}"
        ) in stderr
        assert "chat" not in stderr  # signed = false says so explicitly
        assert not (state / "quarterdeck.db").exists()

    parsed = parse_config(
        {"lanes": {"sim": {"adapter": "sim"}},
         "webhooks": [{"name": "ops", "url": "http://127.0.0.1:9/q",
                       "secret_env": "QD_TEST_MISSING_SECRET"}]}
    )  # fmt: skip

    async def construct() -> None:
        db = await open_database(str(tmp_path / "q.db"))
        try:
            with pytest.raises(ConfigError, match=r"QD_TEST_MISSING_SECRET.* is not set"):
                Runtime(db, parsed, state_dir=tmp_path / "rt")
        finally:
            await db.dispose()

    run(construct())


def test_a_webhook_names_its_secret_or_says_it_is_unsigned() -> None:
    lanes = {"sim": {"adapter": "sim"}}
    hooks = [
        {"name": "a", "url": "http://x"},
        {"name": "b", "url": "http://x", "secret_env": "not a name"},
        {"name": "c", "url": "http://x", "secret_env": "S", "signed": False},
        {"name": "d", "url": "http://x", "signed": "no"},
        {"name": "e", "url": "http://x", "secret_env": "QD_E"},
        {"name": "f", "url": "http://x", "signed": False},
    ]
    with pytest.raises(ConfigError) as caught:
        parse_config({"lanes": lanes, "webhooks": hooks})
    assert sorted(caught.value.problems) == [
        "webhooks[0].secret_env: is required (or signed = false)",
        "webhooks[1].secret_env: must be an environment variable name such as 'QD_WEBHOOK_SECRET'",
        "webhooks[2].secret_env: not used when signed = false",
        "webhooks[3].signed: must be true or false",
    ]
    parsed = parse_config({"lanes": lanes, "webhooks": hooks[4:]})
    assert [(h.name, h.secret_env, h.signed) for h in parsed.webhooks] == [
        ("e", "QD_E", True),
        ("f", None, False),
    ]


OLD_ROW = {
    "id": "n1", "workspace": "w", "created_at": "2030-01-01T00:00:00.000000Z",
    "event": "approval.pending", "subject_type": "approval", "subject_id": "a1",
    "webhook": "chat", "url": "https://hooks.slack.example/services/T0/B0/token-xyz",
    "format": "slack", "payload": '{"text":"hi"}', "state": "pending", "attempts": 2,
    "next_attempt_at": "2030-01-01T00:00:00.000000Z", "last_error": "HTTP 500",
    "delivered_at": None,
}  # fmt: skip


def test_step_12_drops_the_urls_rows_held_and_keeps_the_rows(database: str) -> None:
    """Rows written before step 12 held their webhook's URL (for Slack, the credential): the
    step keeps every row and its webhook's name and drops the URLs; down again, the column
    comes back empty."""
    with sync_conn(database) as conn:
        migrate(conn, 11)
        columns = ", ".join(OLD_ROW)
        values = ", ".join(f":{name}" for name in OLD_ROW)
        conn.execute(text(f"INSERT INTO outbox ({columns}) VALUES ({values})"), OLD_ROW)
    with sync_conn(database) as conn:
        assert migrate(conn) == list(range(12, HEAD_VERSION + 1))
    [row] = Store(database).rows("SELECT * FROM outbox")
    assert row == {k: v for k, v in OLD_ROW.items() if k != "url"}
    assert all("token-xyz" not in content for content in stored_text(database).values())

    with sync_conn(database) as conn:
        assert migrate(conn, 11) == list(range(HEAD_VERSION, 11, -1))
    [row] = Store(database).rows("SELECT * FROM outbox")
    assert row == {**OLD_ROW, "url": ""}
