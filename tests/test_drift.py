"""Drift alerts against a real database (SQLite and PostgreSQL) and real files edited on disk
(watched with real ``watchfiles``): attested-file drift (warn and pause), re-baselining, the
policy file reloaded on edit, the alert lifecycle, and SLO breaches opening and recovery
resolving alerts.

Tests are synchronous and drive asyncio themselves. They wait for outcomes by polling the
database with a deadline, never by sleeping blindly.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import Store as BaseStore
from tests.conftest import run

from quarterdeck.domain.clock import format_instant
from quarterdeck.domain.envelope import RUNTIME_WORKSPACE
from quarterdeck.domain.policy import Policy
from quarterdeck.runtime.config import ConfigError, LaneConfig, SloThresholds
from quarterdeck.runtime.drift import DriftMonitor, FileWatch, PolicySource, SloMonitor, hash_file
from quarterdeck.store.alerts import (
    ack_alert,
    open_alert,
    read_baselines,
    resolve_alert,
    resolve_by_dedupe,
)
from quarterdeck.store.database import open_database
from quarterdeck.store.flags import set_flag
from quarterdeck.store.ledger import verify_ledger
from quarterdeck.store.outbox import Target
from quarterdeck.store.queries import slo
from quarterdeck.store.writer import Writer, WriteTxn
from quarterdeck.tui.detail import render_item

WS = "default"
HOOK = Target("hook")


# --- helpers -------------------------------------------------------------------------------------


class Store(BaseStore):
    """Raw SQL on the database under test (a fresh connection per call), with the queries
    these tests repeat."""

    def alerts(self, dedupe: str | None = None) -> list[dict[str, Any]]:
        if dedupe is None:
            return self.rows("SELECT * FROM alerts ORDER BY id")
        return self.rows("SELECT * FROM alerts WHERE dedupe = ? ORDER BY id", dedupe)

    def open_alerts(self) -> list[dict[str, Any]]:
        return self.rows("SELECT * FROM alerts WHERE state != 'resolved' ORDER BY id")

    def ledger(self, action: str | None = None) -> list[dict[str, Any]]:  # type: ignore[override]
        sql = "SELECT * FROM ledger" + (" WHERE action = ?" if action else "") + " ORDER BY seq"
        entries = self.rows(sql, *([action] if action else []))
        for entry in entries:
            entry["payload"] = json.loads(entry["payload"])
        return entries

    def paused(self, lane: str) -> bool:
        rows = self.rows("SELECT paused FROM lane_flags WHERE lane = ?", lane)
        return bool(rows and rows[0]["paused"])


async def wait_until(probe: Callable[[], Any], timeout: float = 5.0, what: str = "it") -> Any:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last: {last!r}")


@contextlib.asynccontextmanager
async def writer_for(url: str) -> AsyncIterator[Writer]:
    db = await open_database(url)
    try:
        async with Writer(db) as writer:
            yield writer
        assert (await verify_ledger(db)).ok
    finally:
        await db.dispose()


def sha(data: str) -> str:
    return hashlib.sha256(data.encode()).hexdigest()


def lane(name: str, *files: Path, on_drift: str = "warn") -> LaneConfig:
    return LaneConfig(name, "sim", attest=tuple(files), on_drift=on_drift)


def replace_by_rename(path: Path, content: str) -> None:
    """Save the way many editors do: write a new file beside it, rename it over the old one."""
    temporary = path.with_name(f".{path.name}.swp")
    temporary.write_text(content)
    os.replace(temporary, path)


# --- hashing and watching --------------------------------------------------------------------------


def test_hash_file_hashes_bytes_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "prompt.md"
    path.write_text("be careful")
    assert hash_file(path) == sha("be careful")
    assert hash_file(tmp_path / "nope.md") == "missing"
    assert hash_file(tmp_path) == "not-regular"  # a folder is not read as a file


def test_file_watch_skips_missing_folders_and_ignores_other_files(tmp_path: Path) -> None:
    watched = tmp_path / "agent.toml"
    watched.write_text("a = 1")
    seen: list[set[Path]] = []

    async def changed(paths: set[Path]) -> None:
        seen.append(paths)

    async def main() -> None:
        watch = FileWatch([watched, tmp_path / "absent" / "x.md"], changed)
        await watch.start()
        (tmp_path / "unrelated.txt").write_text("noise")
        watched.write_text("a = 2")
        await wait_until(lambda: seen, what="the change")
        await asyncio.sleep(0.2)
        await watch.stop()

    run(main())
    assert seen and all(paths == {watched} for paths in seen)


# --- attested files --------------------------------------------------------------------------------


def test_first_start_records_baselines_and_restart_sees_offline_edits(
    database: str, tmp_path: Path
) -> None:
    prompt, config = tmp_path / "prompt.md", tmp_path / "agent.toml"
    prompt.write_text("v1")
    missing = tmp_path / "later.md"
    lanes = {"sim": lane("sim", prompt, config, missing), "plain": lane("plain")}
    config.write_text("x = 1")
    store = Store(database)

    async def first() -> None:
        async with writer_for(database) as writer:
            monitor = DriftMonitor(writer, lanes, [HOOK])
            await monitor.start()
            await monitor.stop()

    run(first())
    rows = store.rows("SELECT lane, path, sha256, baselined_by FROM attestations ORDER BY path")
    assert {r["path"]: r["sha256"] for r in rows} == {
        str(prompt): sha("v1"),
        str(config): sha("x = 1"),
        str(missing): "missing",
    }
    assert {r["lane"] for r in rows} == {"sim"} and {r["baselined_by"] for r in rows} == {"drift"}
    (baselined,) = store.ledger("lane.baselined")
    assert baselined["subject_id"] == "sim" and len(baselined["payload"]["hashes"]) == 3
    assert store.alerts() == []

    prompt.write_text("v2 written while nothing watched")

    async def second() -> None:
        async with writer_for(database) as writer:
            monitor = DriftMonitor(writer, lanes, [HOOK])
            await monitor.start()
            await monitor.stop()
            assert (await baselines(writer, "sim"))[str(prompt)] == sha("v1")

    run(second())
    (alert,) = store.alerts()
    assert alert["dedupe"] == f"attest:sim:{prompt}"
    assert alert["state"] == "open" and alert["severity"] == "warn"
    assert len(store.ledger("lane.baselined")) == 1  # nothing new to baseline the second time


async def baselines(writer: Writer, lane_name: str) -> dict[str, str]:
    """The lane's baselines as the store reads them."""
    async with writer.db.read() as conn:
        return await conn.run_sync(lambda sync: read_baselines(sync, lane_name))


def test_editing_an_attested_file_opens_an_alert_within_a_second(
    database: str, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    prompt = tmp_path / "prompt.md"
    prompt.write_text("you are helpful")
    store = Store(database)
    dedupe = f"attest:sim:{prompt}"

    async def main() -> float:
        async with writer_for(database) as writer:
            monitor = DriftMonitor(writer, {"sim": lane("sim", prompt)}, [HOOK])
            await monitor.start()
            assert store.alerts() == []
            started = time.monotonic()
            prompt.write_text("you are helpful and reckless")
            await wait_until(lambda: store.alerts(dedupe), what="the drift alert")
            latency = time.monotonic() - started

            # A second edit of the same file is the same condition: no second alert.
            prompt.write_text("you are reckless")
            await wait_until(
                lambda: sha("you are reckless")[:12] in store.alerts(dedupe)[0]["message"],
                what="the alert to name the new hash",
            )
            assert len(store.alerts(dedupe)) == 1
            assert not store.paused("sim")  # warn only

            # Back to the baseline: the condition cleared, so the alert resolves itself.
            prompt.write_text("you are helpful")
            await wait_until(
                lambda: store.alerts(dedupe)[0]["state"] == "resolved", what="auto-resolve"
            )
            await monitor.stop()
            return latency

    latency = run(main())
    print(f"\ndrift alert latency: {latency * 1000:.0f} ms")
    record_property("drift_alert_latency_ms", round(latency * 1000))
    assert latency < 3.0
    (alert,) = store.alerts(dedupe)
    assert alert["alert_type"] == "attested_file" and alert["severity"] == "warn"
    assert alert["workspace"] == RUNTIME_WORKSPACE  # a lane's drift is every tenant's concern
    assert (alert["subject_type"], alert["subject_id"]) == ("lane", "sim")
    assert str(prompt) in alert["message"] and sha("you are helpful")[:12] in alert["message"]
    assert alert["resolved_by"] == "drift"
    (opened,) = store.ledger("alert.opened")
    assert opened["subject_id"] == alert["id"] and opened["to_state"] == "open"
    assert opened["payload"]["type"] == "attested_file"
    assert opened["payload"]["subject"] == {"type": "lane", "id": "sim"}
    (note,) = store.rows("SELECT event, webhook, subject_id FROM outbox")
    assert note == {"event": "alert.opened", "webhook": "hook", "subject_id": alert["id"]}


def test_pause_mode_pauses_the_lane_and_rebaseline_resumes_it(
    database: str, tmp_path: Path
) -> None:
    prompt = tmp_path / "prompt.md"
    prompt.write_text("v1")
    store = Store(database)
    dedupe = f"attest:sim:{prompt}"

    async def main() -> dict[str, Any]:
        async with writer_for(database) as writer:
            lanes = {"sim": lane("sim", prompt, on_drift="pause"), "fb": lane("fb")}
            monitor = DriftMonitor(writer, lanes)
            await monitor.start()
            prompt.write_text("v2")
            await wait_until(lambda: store.paused("sim"), what="the lane to be paused")
            (alert,) = store.alerts(dedupe)
            assert alert["severity"] == "error" and alert["state"] == "open"
            # Reverting does not lift a pause: only a re-baseline does.
            assert monitor.current_hashes("sim") == {str(prompt): sha("v2")}
            result = await monitor.rebaseline("sim", "alice")
            assert not store.paused("sim")
            assert await baselines(writer, "sim") == {str(prompt): sha("v2")}
            # The new content is the baseline now; the next edit pauses again.
            prompt.write_text("v3")
            await wait_until(lambda: store.paused("sim"), what="the lane to be paused again")
            assert len(store.open_alerts()) == 1
            await monitor.stop()
            return result

    result = run(main())
    assert result["ok"] and result["resumed"] and result["resolved"] == [dedupe]
    first, second = store.alerts(dedupe)
    assert first["state"] == "resolved" and first["resolved_by"] == "alice"
    assert second["state"] == "open" and sha("v2")[:12] in second["message"]
    actions = [(e["action"], e["actor"]) for e in store.ledger() if e["subject_id"] == "sim"]
    assert actions == [
        ("lane.baselined", "drift"),
        ("lane.paused", "drift"),
        ("lane.rebaselined", "alice"),
        ("lane.resumed", "alice"),
        ("lane.paused", "drift"),
    ]
    # The pause was written in the same transaction as the alert.
    opened = store.ledger("alert.opened")[0]
    paused = store.ledger("lane.paused")[0]
    assert paused["seq"] == opened["seq"] + 1 and paused["at"] == opened["at"]
    assert store.ledger("lane.rebaselined")[0]["payload"]["hashes"] == {str(prompt): sha("v2")}


def test_rebaseline_leaves_a_pause_an_operator_set(database: str, tmp_path: Path) -> None:
    prompt = tmp_path / "prompt.md"
    prompt.write_text("v1")
    store = Store(database)

    async def main() -> dict[str, Any]:
        async with writer_for(database) as writer:
            monitor = DriftMonitor(writer, {"sim": lane("sim", prompt, on_drift="pause")})
            await monitor.start()
            prompt.write_text("v2")
            await wait_until(lambda: store.paused("sim"), what="the lane to be paused")

            def operator_pause(txn: WriteTxn) -> None:
                set_flag(txn, "sim", "paused", True, actor="bob", workspace=WS)

            await writer.submit(operator_pause)
            result = await monitor.rebaseline("sim", "alice")
            await monitor.stop()
            return result

    result = run(main())
    assert result["ok"] and not result["resumed"]
    assert store.paused("sim")
    assert store.open_alerts() == []


def test_a_file_replaced_by_rename_is_seen(database: str, tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("model = 'a'")
    store = Store(database)

    async def main() -> None:
        async with writer_for(database) as writer:
            monitor = DriftMonitor(writer, {"sim": lane("sim", config)})
            await monitor.start()
            replace_by_rename(config, "model = 'b'")
            await wait_until(lambda: store.open_alerts(), 3.0, "the drift alert")
            await monitor.stop()

    run(main())
    (alert,) = store.alerts()
    assert json.loads(alert["data"])["sha256"] == sha("model = 'b'")


def test_a_missing_folder_does_not_stop_the_monitor(database: str, tmp_path: Path) -> None:
    present = tmp_path / "prompt.md"
    present.write_text("v1")
    absent = tmp_path / "no-such-folder" / "prompt.md"
    store = Store(database)

    async def main() -> None:
        async with writer_for(database) as writer:
            monitor = DriftMonitor(writer, {"a": lane("a", absent), "b": lane("b", present)})
            await monitor.start()
            present.write_text("v2")
            await wait_until(lambda: store.open_alerts(), what="the drift alert")
            await monitor.stop()

    run(main())
    (alert,) = store.alerts()
    assert alert["subject_id"] == "b"
    baselines = {r["path"]: r["sha256"] for r in store.rows("SELECT * FROM attestations")}
    assert baselines[str(absent)] == "missing"


# --- the policy file -------------------------------------------------------------------------------

POLICY_V1 = '[defaults]\noutcome = "deny"\n'
POLICY_V2 = '[defaults]\noutcome = "allow"\n\n[[rules]]\nname = "reads"\ntool = "read*"\noutcome = "allow"\n'
POLICY_BAD = '[defaults]\noutcome = "maybe"\n\n[[rules]]\nname = "x"\n'


def test_policy_hot_reload(database: str, tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY_V1)
    store = Store(database)
    applied: list[tuple[float, Policy]] = []
    dedupe = f"policy:{path}"

    async def main() -> dict[str, float]:
        async with writer_for(database) as writer:
            source = PolicySource(
                path, writer, [HOOK], lambda p: applied.append((time.monotonic(), p)), "policy"
            )
            first = source.load()
            assert first is not None and first.hash == sha(POLICY_V1)
            await source.start()
            assert [e["payload"]["hash"] for e in store.ledger("policy.loaded")] == [sha(POLICY_V1)]

            started = time.monotonic()
            path.write_text(POLICY_V2)
            await wait_until(lambda: applied, what="on_change")
            valid_latency = applied[0][0] - started
            await wait_until(lambda: len(store.ledger("policy.loaded")) == 2, what="ledger")
            assert source.policy is applied[0][1]

            path.write_text(POLICY_BAD)
            await wait_until(lambda: store.alerts(dedupe), what="the policy_invalid alert")
            assert len(applied) == 1
            assert source.policy is not None and source.policy.hash == sha(POLICY_V2)

            replace_by_rename(path, POLICY_V2.replace("read*", "list*"))
            await wait_until(
                lambda: store.alerts(dedupe)[0]["state"] == "resolved", what="the alert resolved"
            )
            assert len(applied) == 2

            path.unlink()
            await wait_until(
                lambda: len(store.alerts(dedupe)) == 2, what="an alert for the deleted file"
            )
            assert source.policy is applied[1][1]
            await source.stop()
            return {"valid": valid_latency}

    latency = run(main())
    print(f"\npolicy reload latency: {latency['valid'] * 1000:.0f} ms")
    assert latency["valid"] < 3.0
    loaded = store.ledger("policy.loaded")
    assert [e["payload"]["hash"] for e in loaded] == [
        sha(POLICY_V1),
        sha(POLICY_V2),
        sha(POLICY_V2.replace("read*", "list*")),
    ]
    assert {(e["subject_type"], e["subject_id"]) for e in loaded} == {("policy", str(path))}
    assert loaded[0]["payload"]["path"] == str(path)
    invalid, deleted = store.alerts(dedupe)
    assert invalid["alert_type"] == "policy_invalid" and invalid["severity"] == "error"
    assert invalid["workspace"] == RUNTIME_WORKSPACE
    assert invalid["state"] == "resolved" and invalid["resolved_by"] == "policy"
    assert "defaults.outcome: must be one of allow, deny, require_approval" in invalid["message"]
    assert "rules[0].outcome: is required" in invalid["message"]
    assert deleted["state"] == "open" and "cannot read" in deleted["message"]


def test_an_invalid_policy_at_start_is_a_config_error(database: str, tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY_BAD)

    async def main() -> None:
        async with writer_for(database) as writer:
            with pytest.raises(ConfigError) as raised:
                PolicySource(path, writer, [], lambda _p: None, "policy").load()
            assert len(raised.value.problems) == 2
            with pytest.raises(ConfigError, match="cannot read"):
                PolicySource(tmp_path / "gone.toml", writer, [], lambda _p: None, "p").load()
            assert PolicySource(None, writer, [], lambda _p: None, "p").load() is None

    run(main())


# --- the alert lifecycle ---------------------------------------------------------------------------


def _open(txn: WriteTxn, dedupe: str = "cond:1", message: str = "it broke") -> tuple[str, bool]:
    return open_alert(
        txn,
        [HOOK],
        workspace=WS,
        alert_type="test",
        severity="warn",
        subject_type="lane",
        subject_id="sim",
        dedupe=dedupe,
        message=message,
        data={"n": 1},
        actor="tester",
    )


def test_alert_lifecycle_dedupe_and_refusals(database: str) -> None:
    store = Store(database)

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with writer_for(database) as writer:
            first_id, created = await writer.submit(_open)
            assert created
            again_id, created = await writer.submit(lambda t: _open(t, message="it broke more"))
            assert (again_id, created) == (first_id, False)
            assert store.alerts()[0]["message"] == "it broke more"
            out["ack"] = await writer.submit(lambda t: ack_alert(t, WS, first_id, "alice"))
            out["ack_again"] = await writer.submit(lambda t: ack_alert(t, WS, first_id, "alice"))
            out["resolve"] = await writer.submit(lambda t: resolve_alert(t, WS, first_id, "bob"))
            out["resolve_again"] = await writer.submit(
                lambda t: resolve_alert(t, WS, first_id, "bob")
            )
            out["ack_resolved"] = await writer.submit(lambda t: ack_alert(t, WS, first_id, "eve"))
            out["unknown"] = await writer.submit(lambda t: ack_alert(t, WS, "nope", "eve"))
            out["other_ws"] = await writer.submit(lambda t: ack_alert(t, "ws2", first_id, "eve"))
            # Once resolved, the same condition opens a new alert.
            out["reopened"] = await writer.submit(_open)
            out["auto"] = await writer.submit(
                lambda t: resolve_by_dedupe(t, WS, "cond:1", "monitor", "cleared")
            )
            out["auto_none"] = await writer.submit(
                lambda t: resolve_by_dedupe(t, WS, "cond:1", "monitor", "cleared")
            )
            out["first"] = first_id
        return out

    out = run(main())
    first = out["first"]
    assert out["ack"] == {"ok": True, "alert_id": first, "state": "acked", "version": 3}
    assert out["ack_again"]["ok"] is False
    assert out["ack_again"]["errors"] == ["alert is acked: illegal transition acked -> acked"]
    assert out["resolve"]["ok"] and out["resolve"]["state"] == "resolved"
    assert out["resolve_again"] == {
        "ok": True,
        "alert_id": first,
        "state": "resolved",
        "already": True,
    }
    assert not out["ack_resolved"]["ok"]
    assert out["unknown"] == {"ok": False, "errors": ["no such alert"]}
    assert out["other_ws"] == {"ok": False, "errors": ["no such alert"]}
    reopened_id, created = out["reopened"]
    assert created and reopened_id != first
    assert out["auto"] is True and out["auto_none"] is False

    row = store.rows("SELECT * FROM alerts WHERE id = ?", first)[0]
    assert (row["state"], row["acked_by"], row["resolved_by"]) == ("resolved", "alice", "bob")
    assert row["version"] == 4  # opened, message refreshed, acked, resolved
    trail = [
        (e["action"], e["from_state"], e["to_state"], e["actor"])
        for e in store.ledger()
        if e["subject_id"] == first
    ]
    assert trail == [
        ("alert.opened", None, "open", "tester"),
        ("alert.acked", "open", "acked", "alice"),
        ("command.refused", None, None, "alice"),
        ("alert.resolved", "acked", "resolved", "bob"),
        ("command.refused", None, None, "eve"),
        ("command.refused", None, None, "eve"),
    ]
    refused = [e for e in store.ledger("command.refused") if e["subject_id"] == first]
    assert refused[0]["payload"]["command"] == "alert.ack"
    assert "illegal transition acked -> acked" in refused[0]["payload"]["errors"][0]
    auto = store.ledger("alert.resolved")[-1]
    assert auto["payload"]["note"] == "cleared" and auto["subject_id"] == reopened_id
    assert [r["event"] for r in store.rows("SELECT event FROM outbox")] == ["alert.opened"] * 2


# --- service levels --------------------------------------------------------------------------------


def _seed_missions(
    url: str, now: datetime, outcomes: list[str], *, latency_s: float = 1.0, **extra: Any
) -> None:
    """Insert finished missions directly (born queued, as the store's triggers demand)."""
    store = BaseStore(url)
    for index, outcome in enumerate(outcomes):
        mission_id = f"m-{time.monotonic_ns()}-{index}"
        finished = now - timedelta(seconds=10)
        started = finished - timedelta(seconds=latency_s)
        store.execute(
            "INSERT INTO missions (id, workspace, state, version, attempt, created_at, "
            "updated_at, data, lane, role, number) VALUES (?, 'w', 'queued', 1, 1, ?, ?, "
            "'{}', 'sim', ?, 1)",
            mission_id, format_instant(started), format_instant(started), extra.get("role"),
        )  # fmt: skip
        store.execute(
            "UPDATE missions SET state = ?, started_at = ?, finished_at = ? WHERE id = ?",
            outcome, format_instant(started), format_instant(finished), mission_id,
        )  # fmt: skip


def test_slo_breach_opens_alerts_and_recovery_resolves_them(database: str) -> None:
    store = Store(database)
    now = datetime.now(UTC)
    thresholds = SloThresholds(
        window_s=300,
        failure_rate=0.5,
        fallback_rate=None,
        p95_latency_s=60.0,
        receipt_wait_s=None,
        cost_per_window=None,
    )

    async def main() -> list[dict[str, Any]]:
        async with writer_for(database) as writer:
            monitor = SloMonitor(writer, thresholds, [HOOK], lambda: now)
            reports = [await monitor.check_once()]  # nothing ran: nothing to judge
            # Old missions (outside the window) count for nothing.
            _seed_missions(database, now - timedelta(hours=1), ["failed"] * 10)
            reports.append(await monitor.check_once())
            _seed_missions(database, now, ["failed"] * 4 + ["timed_out"] + ["completed"] * 3)
            reports.append(await monitor.check_once())
            reports.append(await monitor.check_once())  # still breached: no second alert
            _seed_missions(database, now, ["completed"] * 12)
            _seed_missions(database, now, ["completed"], latency_s=500.0)
            reports.append(await monitor.check_once())
            _seed_missions(database, now, ["completed"] * 30)
            reports.append(await monitor.check_once())
        return reports

    reports = run(main())
    empty, old, breached, steady, mixed, recovered = reports
    assert empty["figures"]["failure_rate"] is None and empty["breached"] == []
    assert old["figures"]["finished"] == 0 and old["breached"] == []
    assert breached["figures"]["failure_rate"] == 0.625
    assert breached["breached"] == ["failure_rate"] and len(breached["opened"]) == 1
    assert steady["opened"] == [] and steady["breached"] == ["failure_rate"]
    # 5 of 21 failed (recovered); one mission of 21 took 500 s, so p95 is 1 s still.
    assert mixed["resolved"] == ["failure_rate"] and mixed["breached"] == []
    assert mixed["figures"]["p95_latency_s"] == 1.0
    assert recovered["breached"] == [] and recovered["opened"] == []

    (alert,) = store.alerts("slo:failure_rate")
    assert alert["alert_type"] == "slo_breach" and alert["severity"] == "warn"
    assert alert["workspace"] == RUNTIME_WORKSPACE
    assert alert["message"] == "failure rate 0.62 over 300 s is above 0.50"
    assert alert["state"] == "resolved" and alert["resolved_by"] == "slo"
    assert len(store.alerts()) == 1


def test_slo_latency_receipt_wait_and_cost(database: str) -> None:
    store = Store(database)
    now = datetime.now(UTC)
    thresholds = SloThresholds(
        window_s=60,
        failure_rate=None,
        fallback_rate=0.2,
        p95_latency_s=30.0,
        receipt_wait_s=20.0,
        cost_per_window=5.0,
        check_interval_s=0.05,
    )

    async def main() -> dict[str, Any]:
        async with writer_for(database) as writer:
            _seed_missions(database, now, ["completed"] * 3, latency_s=45.0)
            _seed_missions(database, now, ["completed"], role="fallback")
            # Not counted, however slow: a shadow's result serves no turn.
            _seed_missions(database, now, ["completed"] * 3, role="shadow", latency_s=500.0)
            store.execute(
                "INSERT INTO receipts (id, workspace, dedupe_key, received_at, status, errors, "
                "version) VALUES ('r1', 'w', 'k1', ?, 'accepted', '[]', 1)",
                format_instant(now - timedelta(seconds=75)),
            )
            for index, cost in enumerate((4.0, 3.0, 100.0)):
                store.execute(
                    "INSERT INTO decisions (id, workspace, at, kind, tool, args, estimated_cost, "
                    "outcome, verdict, trace, policy_hash) VALUES (?, 'w', ?, 'action', 't', "
                    "'{}', ?, 'allow', ?, '[]', 'h')",
                    f"d{index}", format_instant(now), cost, "deny" if cost > 50 else "allow",
                )  # fmt: skip
            monitor = SloMonitor(writer, thresholds, [], lambda: now)
            stop = asyncio.Event()
            task = asyncio.create_task(monitor.run(stop))
            await wait_until(lambda: len(store.open_alerts()) == 4, what="four SLO alerts")
            stop.set()
            await asyncio.wait_for(task, 5)
            report = await monitor.check_once()
            # The status figures (the CLI, the control center, Prometheus) say the same.
            report["status"] = await slo(writer.db, "w")
            return report

    report = run(main())
    figures = report["figures"]
    assert figures["fallback_rate"] == 0.25 and figures["started"] == 4
    assert figures["p95_latency_s"] == 45.0
    assert report["status"]["fallback_rate"] == 0.25
    assert report["status"]["mission_latency_p95_s"] == 45.0
    assert figures["receipt_wait_s"] == 75.0
    assert figures["cost"] == 7.0
    assert report["breached"] == ["cost", "fallback_rate", "p95_latency_s", "receipt_wait_s"]
    messages = {a["dedupe"]: a["message"] for a in store.alerts()}
    assert messages == {
        "slo:p95_latency_s": "p95 mission latency 45.00 s over 60 s is above 30.00 s",
        "slo:receipt_wait_s": "oldest unapplied receipt wait 75.00 s is above 20.00 s",
        "slo:cost": "cost 7.00 over 60 s is above 5.00",
        "slo:fallback_rate": "fallback rate 0.25 over 60 s is above 0.20",
    }


# --- what changed ----------------------------------------------------------------------------------


def test_a_drift_alert_shows_a_diff_of_the_file_against_its_baseline(
    database: str, tmp_path: Path
) -> None:
    """A running runtime attests a prompt; editing it on disk opens an alert whose detail (what
    ``show`` and the console read) carries a unified diff against the baseline's kept bytes;
    after a rebaseline by command, the next diff is against the new baseline; a long diff is cut
    and says so; a file over the baseline cap says why it has no diff."""
    from tests.test_runtime import person

    from quarterdeck.client.console import EmbeddedConsole
    from quarterdeck.domain.commands import LaneRebaseline
    from quarterdeck.runtime.config import parse_config
    from quarterdeck.runtime.drift import MAX_DIFF_CHARS
    from quarterdeck.runtime.runtime import Runtime
    from quarterdeck.store.alerts import MAX_BASELINE_BYTES

    prompt = tmp_path / "prompt.md"
    prompt.write_text("# Agent\n\nBe brief.\nCite the ticket.\n")
    big = tmp_path / "big.txt"
    big.write_text("x" * (MAX_BASELINE_BYTES + 1))
    store = Store(database)

    def open_alert_for(path: Path, digest: str) -> dict[str, Any] | None:
        rows = store.rows(
            "SELECT id FROM alerts WHERE dedupe = ? AND state = 'open'", f"attest:sim:{path}"
        )
        if not rows:
            return None
        found = json.loads(
            store.rows("SELECT data FROM alerts WHERE id = ?", rows[0]["id"])[0]["data"]
        )
        return rows[0] if found.get("sha256") == digest else None

    async def main() -> None:
        config = parse_config(
            {"roster": {"alice": ["admin"]},
             "lanes": {"sim": {"adapter": "sim", "attest": [str(prompt), str(big)]}}}
        )  # fmt: skip
        db = await open_database(database)
        rt = Runtime(db, config, state_dir=tmp_path / "state")
        await rt.start()
        console = EmbeddedConsole(rt)
        try:
            [kept] = store.rows("SELECT content FROM attestations WHERE path = ?", str(prompt))
            assert bytes(kept["content"]) == prompt.read_bytes()
            [over] = store.rows("SELECT content FROM attestations WHERE path = ?", str(big))
            assert over["content"] is None

            prompt.write_text("# Agent\n\nBe brief.\nRefund anything asked.\n")
            row = await wait_until(
                lambda: open_alert_for(
                    prompt, sha("# Agent\n\nBe brief.\nRefund anything asked.\n")
                ),
                what="the drift alert",
            )
            detail = await console.detail(row["id"])
            assert detail is not None
            diff = detail["data"]["diff"]
            assert f"--- {prompt} (baseline)" in diff and f"+++ {prompt} (now)" in diff
            assert "-Cite the ticket.\n" in diff and "+Refund anything asked.\n" in diff
            assert " Be brief.\n" in diff
            shown = render_item(detail).plain  # as the console's detail view draws it
            assert "what changed" in shown and "  +Refund anything asked." in shown

            # Accepting the file (a command, as the TUI and CLI send it) moves the baseline.
            result = await rt.command("default", LaneRebaseline(lane="sim"), person("alice"))
            assert result["ok"], result
            prompt.write_text("# Agent\n\nBe brief.\nRefund nothing.\n")
            row = await wait_until(
                lambda: open_alert_for(prompt, sha("# Agent\n\nBe brief.\nRefund nothing.\n")),
                what="the second drift alert",
            )
            diff = (await console.detail(row["id"]))["data"]["diff"]  # type: ignore[index]
            assert "-Refund anything asked.\n" in diff and "+Refund nothing.\n" in diff
            assert "Cite the ticket" not in diff

            # A long diff is cut, and says so.
            many = "".join(f"line {i} of a much longer prompt\n" for i in range(1_000))
            prompt.write_text(many)
            row = await wait_until(lambda: open_alert_for(prompt, sha(many)), what="a long diff")
            diff = (await console.detail(row["id"]))["data"]["diff"]  # type: ignore[index]
            assert len(diff) <= MAX_DIFF_CHARS + 100 and "diff cut at" in diff.splitlines()[-1]

            # A file over the cap kept no bytes: its alert says why there is no diff.
            big.write_text("y" * (MAX_BASELINE_BYTES + 1))
            row = await wait_until(
                lambda: open_alert_for(big, sha("y" * (MAX_BASELINE_BYTES + 1))),
                what="the big file's alert",
            )
            data = (await console.detail(row["id"]))["data"]  # type: ignore[index]
            assert "diff" not in data and "not kept" in data["diff_unavailable"]
            big_detail = await console.detail(row["id"])
            assert big_detail is not None
            assert "no diff: " in render_item(big_detail).plain
        finally:
            await rt.stop(grace_s=0.2)
            await db.dispose()

    run(main())
