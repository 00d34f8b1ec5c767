"""Attested files and the policy file replaced by what would hang or exhaust a daemon: a link to
``/dev/zero``, a FIFO, a file over the cap. A real headless daemon on a real state directory
must start, raise an alert naming why, keep working, and still stop on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import envelope, line
from tests.headless import CONFIG, POLICY, Headless, headless_runtime, query, wait_until

from quarterdeck.runtime.filewatch import (
    MAX_ATTESTED_BYTES,
    MISSING,
    NOT_REGULAR,
    TOO_LARGE,
    UnreadableFile,
    file_state,
    read_regular,
)
from quarterdeck.runtime.policy_source import read_policy


def test_read_regular_refuses_devices_fifos_folders_and_oversized_files(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    zero = tmp_path / "zero"
    zero.symlink_to("/dev/zero")
    big = tmp_path / "big"
    with big.open("wb") as handle:
        handle.truncate(1001)
    small = tmp_path / "small"
    small.write_bytes(b"x" * 1000)
    started = time.monotonic()
    cases = {fifo: "a FIFO", zero: "a character device", tmp_path: "a folder"}
    for path, kind in cases.items():
        try:
            read_regular(path, 1000)
        except UnreadableFile as exc:
            assert exc.marker == NOT_REGULAR and kind in exc.reason, exc.reason
        else:
            raise AssertionError(f"{path} was read")
    try:
        read_regular(big, 1000)
    except UnreadableFile as exc:
        assert exc.marker == TOO_LARGE and "1001 bytes, over the 1000-byte limit" in exc.reason
    else:
        raise AssertionError("an oversized file was read")
    assert time.monotonic() - started < 5  # nothing blocked
    assert read_regular(small, 1000) == b"x" * 1000
    assert file_state(tmp_path / "nope").digest == MISSING
    assert file_state(zero).problem == "is a character device, not a regular file"
    assert read_policy(fifo) == ["is a FIFO, not a regular file"]


CONFIG_ATTESTED = CONFIG.replace(
    '[lanes.work]\nadapter = "sim"\n',
    '[lanes.work]\nadapter = "sim"\nattest = ["prompt.md", "pipe"]\n',
)


def _alert(runtime: Headless, fragment: str) -> dict[str, object] | None:
    rows = query(
        runtime,
        "SELECT * FROM alerts WHERE state = 'open' AND message LIKE ?",
        (f"%{fragment}%",),
    )
    return rows[0] if rows else None


def _submit_and_complete(runtime: Headless, i: int) -> None:
    """Submit one task to the running daemon and wait until its turn completed (on failure,
    the daemon's log tail says what it was doing)."""
    done = subprocess.run(
        [sys.executable, "-m", "quarterdeck", "--state-dir", str(runtime.state_dir),
         "--db", runtime.url, "submit", "-"],
        input=line(envelope(i)) + b"\n", capture_output=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    receipt = json.loads(done.stdout)["receipt"]
    try:
        wait_until(
            lambda: query(
                runtime,
                "SELECT 1 FROM turns WHERE receipt_id = ? AND state = 'completed'",
                (receipt,),
            ),
            30,
            "the turn to complete",
        )
    except AssertionError as exc:
        tail = runtime.log.read_text(errors="replace").splitlines()[-40:]
        raise AssertionError(f"{exc}; the daemon's log ends:\n" + "\n".join(tail)) from None


def _stops_on_sigterm(runtime: Headless) -> None:
    runtime.proc.send_signal(signal.SIGTERM)
    try:
        code = runtime.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"SIGTERM ignored:\n{runtime.log_tail()}") from None
    assert code == 0, runtime.log_tail()


def test_attested_fifo_device_and_huge_file_are_alerts_and_the_daemon_still_stops(
    tmp_path: Path,
) -> None:
    prompt = tmp_path / "prompt.md"
    prompt.write_text("be careful\n", encoding="utf-8")
    os.mkfifo(tmp_path / "pipe")  # a FIFO nobody writes: opening it must not wait
    with headless_runtime(tmp_path, config=CONFIG_ATTESTED) as runtime:
        pipe = wait_until(lambda: _alert(runtime, "pipe"), 30, "the FIFO's alert")
        assert "is a FIFO, not a regular file" in str(pipe["message"])
        assert json.loads(str(pipe["data"]))["problem"] == "is a FIFO, not a regular file"

        prompt.unlink()
        prompt.symlink_to("/dev/zero")
        zero = wait_until(
            lambda: _alert(runtime, "character device"), 30, "the /dev/zero link's alert"
        )
        assert "prompt.md of lane work is not attested" in str(zero["message"])
        _submit_and_complete(runtime, 1)  # the daemon kept working

        prompt.unlink()
        with prompt.open("wb") as handle:
            handle.truncate(MAX_ATTESTED_BYTES + 1)
        wait_until(lambda: _alert(runtime, "over the"), 30, "the oversized file's alert")
        _submit_and_complete(runtime, 2)
        _stops_on_sigterm(runtime)
    log = runtime.log.read_text(encoding="utf-8", errors="replace")
    assert "Traceback" not in log, log[-3000:]


def test_a_policy_file_linked_to_dev_zero_keeps_the_last_good_policy(tmp_path: Path) -> None:
    with headless_runtime(tmp_path) as runtime:
        policy = tmp_path / "policy.toml"
        policy.unlink()
        policy.symlink_to("/dev/zero")
        alert = wait_until(lambda: _alert(runtime, "policy file"), 30, "the policy file's alert")
        assert "is a character device, not a regular file" in str(alert["message"])
        assert alert["alert_type"] == "policy_invalid"
        policy.unlink()
        big = POLICY + "#" * (1024 * 1024) + "\n"
        policy.write_text(big, encoding="utf-8")
        wait_until(lambda: _alert(runtime, "over the 1048576-byte limit"), 30, "the size alert")
        _submit_and_complete(runtime, 1)
        _stops_on_sigterm(runtime)


def test_a_fifo_as_the_policy_file_fails_start_up_at_once_naming_why(tmp_path: Path) -> None:
    (tmp_path / "quarterdeck.toml").write_text(CONFIG, encoding="utf-8")
    os.mkfifo(tmp_path / "policy.toml")
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "quarterdeck", "--state-dir", str(tmp_path / "state"), "run",
         "--headless", "--config", str(tmp_path / "quarterdeck.toml")],
        capture_output=True, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert time.monotonic() - started < 30
    assert result.returncode != 0
    assert b"is a FIFO, not a regular file" in result.stderr, result.stderr[-2000:]
