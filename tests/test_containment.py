"""The state directory's modes and the contained ``command``-lane agent, with real processes: a
daemon started through the command line, agents that look around, OS users made with
``useradd`` (as root; skipped otherwise)."""

from __future__ import annotations

import contextlib
import grp
import importlib
import json
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import quarterdeck
from tests.headless import Headless, query, wait_until

from quarterdeck.store.database import DB_FILENAME

SECRETS = {
    "OPENAI_API_KEY": "sk-contain-test-secret",
    "PGPASSWORD": "pg-contain-test-secret",
    "DATABASE_URL": "postgresql://qd:hunter2@db.internal/qd",
}
AGENT = """\
import json, os, sys

mission = json.loads(sys.stdin.readline())
probe = mission["input"]
report = {"env": dict(os.environ), "cwd": os.getcwd(), "uid": os.getuid(),
          "gid": os.getgid(), "groups": os.getgroups()}

def attempt(action):
    try:
        action()
    except OSError as exc:
        return type(exc).__name__
    return "ok"

if "write" in probe:
    with open(probe["write"], "w") as handle:
        handle.write("acme's secret")
for name, path in probe.get("read", {}).items():
    report[name] = attempt(lambda: open(path, "rb").read())
for name, path in probe.get("list", {}).items():
    report[name] = attempt(lambda: os.listdir(path))
sys.stdout.write(json.dumps({"type": "deliverable", "deliverable": report}) + "\\n")
"""
SYSTEM_PYTHON = Path("/usr/bin/python3")
MISSION_VARIABLES = {"QUARTERDECK_MISSION_ID", "QUARTERDECK_TURN_ID", "QUARTERDECK_ATTEMPT",
                     "QUARTERDECK_WORKSPACE", "QUARTERDECK_API",
                     "QUARTERDECK_SESSION_TOKEN"}  # fmt: skip
ALLOWED = {"PATH", "HOME", "LANG", "LC_ALL", "TERM", "TZ", "TMPDIR", "USER", "LOGNAME", "SHELL",
           "MODEL", "LC_CTYPE", "QUARTERDECK_SESSION_TOKEN", "QUARTERDECK_API",
           *MISSION_VARIABLES}  # fmt: skip
"""What an agent's environment may hold: the default allow-list, its lane's ``env``, the
mission's variables, its session credential and the agents' socket, and ``LC_CTYPE``, which Python sets in its own environment when the
locale is C (PEP 538)."""


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def config(lane_options: str, extra: str = "") -> str:
    return textwrap.dedent(
        f"""\
        default_lane = "agents"
        {extra}
        [lanes.agents]
        adapter = "command"
        concurrency = 1
        timeout_s = 30
        max_attempts = 1
        options = {{ {lane_options} }}
        """
    )


@contextlib.contextmanager
def daemon(
    root: Path, toml: str, *, env: Mapping[str, str] = {}, umask: int = 0o022
) -> Iterator[Headless]:
    """``quarterdeck run --headless`` on ``root/state`` with ``env`` added to its environment
    and ``umask``; stopped at the end."""
    state_dir = root / "state"
    (root / "quarterdeck.toml").write_text(toml, encoding="utf-8")
    (root / "quarterdeck.toml").chmod(0o644)
    log = root / "runtime.log"
    environment = {**os.environ, **env, "QUARTERDECK_STATE_DIR": str(state_dir)}
    environment.pop("QUARTERDECK_WORKSPACE", None)
    command = [sys.executable, "-m", "quarterdeck", "--state-dir", str(state_dir), "run",
               "--headless", "--config", str(root / "quarterdeck.toml")]  # fmt: skip
    with open(log, "ab") as err:
        proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=err, env=environment, cwd=root,
            start_new_session=True, umask=umask,
        )  # fmt: skip
    runtime = Headless(root, state_dir, proc, log, str(state_dir / DB_FILENAME))
    try:
        wait_until(runtime.started, 60, "the runtime to start", step=0.05)
        yield runtime
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def run_turn(runtime: Headless, key: str, workspace: str, probe: dict[str, Any]) -> dict[str, Any]:
    """Submit one task to the agents' lane and return its deliverable (the agent's report)."""
    envelope = {"idempotency_key": key, "workspace": workspace, "kind": "task",
                "payload": {"objective": "look around", "input": probe}}  # fmt: skip
    submitted = quarterdeck("submit", "-", state_dir=runtime.state_dir,
                            stdin=json.dumps(envelope).encode())  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr.decode()

    def finished() -> dict[str, Any] | None:
        rows = query(runtime, "SELECT state, deliverable FROM turns WHERE workspace = ?",
                     (workspace,))  # fmt: skip
        return rows[0] if rows and rows[0]["state"] in ("completed", "failed") else None

    row = wait_until(finished, 30, f"the turn in {workspace}")
    assert row["state"] == "completed", f"{row}\n{runtime.log_tail()}"
    report: dict[str, Any] = json.loads(row["deliverable"])
    return report


def assert_contained_env(report: dict[str, Any], state_dir: Path, workspace: str) -> None:
    env: dict[str, str] = report["env"]
    for name in SECRETS:
        assert name not in env
    assert "QUARTERDECK_STATE_DIR" not in env
    for value in env.values():  # neither the state directory nor anything inside it
        for named in {str(state_dir), str(state_dir.resolve())}:
            assert value != named and named + os.sep not in value, value
    assert env["QUARTERDECK_WORKSPACE"] == workspace
    assert env["MODEL"] == "small"
    assert set(env) <= ALLOWED


def logged(runtime: Headless, message: str) -> dict[str, Any]:
    """The daemon's first log entry with ``message``."""
    for raw in runtime.log.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(raw)
            if isinstance(entry, dict) and entry.get("message") == message:
                return entry
    raise AssertionError(f"{message!r} not logged:\n{runtime.log_tail()}")


@pytest.fixture
def shared_root() -> Iterator[Path]:
    """A folder other OS users may pass through and read (the agents' script is in it)."""
    root = Path(tempfile.mkdtemp(prefix="qd-contain-", dir="/tmp"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def os_users(*names: str) -> Iterator[list[pwd.struct_passwd]]:
    """OS users made for the test (each with a group of its own), removed at the end."""
    if os.geteuid() != 0:
        pytest.skip("creating OS users with useradd needs root (this test runs as uid "
                    f"{os.geteuid()})")  # fmt: skip
    if shutil.which("useradd") is None:
        pytest.skip("useradd is not installed")
    made: list[str] = []
    try:
        for name in names:
            subprocess.run(["useradd", "-M", "-U", "-s", "/usr/sbin/nologin", name],
                           check=True, capture_output=True)  # fmt: skip
            made.append(name)
        yield [pwd.getpwnam(name) for name in names]
    finally:
        for name in made:
            subprocess.run(["userdel", name], capture_output=True)


# --- the state directory ---------------------------------------------------------------------


def test_the_daemon_keeps_its_state_private_whatever_the_umask(tmp_path: Path) -> None:
    with daemon(tmp_path, config('argv = ["true"]'), umask=0) as runtime:
        state_dir = runtime.state_dir
        db = state_dir / DB_FILENAME
        wait_until(lambda: Path(f"{db}-wal").exists() and Path(f"{db}-shm").exists(), 10,
                   "SQLite's -wal and -shm files")  # fmt: skip
        assert mode(state_dir) == 0o700
        for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            assert mode(path) == 0o600, path
        status = quarterdeck("status", state_dir=state_dir)
        assert status.returncode == 0 and b"warning" not in status.stderr


def test_an_open_state_directory_is_warned_about_and_closed_at_start(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    state_dir.chmod(0o777)
    created = quarterdeck("db", "upgrade", state_dir=state_dir)
    assert created.returncode == 0
    assert created.stderr.decode().splitlines() == [
        f"quarterdeck: warning: the state directory {state_dir} is readable and writable by "
        f"other users (mode 0777); run: chmod 700 {state_dir}"
    ]
    db = state_dir / DB_FILENAME
    db.chmod(0o644)  # as an older version, or a careless copy, would leave it
    state_dir.chmod(0o711)
    warned = quarterdeck("status", state_dir=state_dir)
    assert warned.stderr.decode().splitlines() == [
        f"quarterdeck: warning: {db} is readable by other users (mode 0644); run: chmod 600 {db}"
    ]
    state_dir.chmod(0o755)
    with daemon(tmp_path, config('argv = ["true"]')) as runtime:
        assert mode(state_dir) == 0o700 and mode(db) == 0o600
        tightened = logged(runtime, "state directory made private")
        assert f"{state_dir}: mode 0755 -> 0700" in tightened["changed"]
        assert f"{db}: mode 0644 -> 0600" in tightened["changed"]
    quiet = quarterdeck("status", state_dir=state_dir)
    assert quiet.returncode == 0 and quiet.stderr == b""


def test_a_supervisors_group_may_pass_through_the_state_directory(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        group = grp.getgrnam("daemon") if "daemon" in {g.gr_name for g in grp.getgrall()} else None
        if group is None:
            pytest.skip("no 'daemon' group to give the state directory to")
    else:
        group = grp.getgrgid(os.getgid())  # a group a user that is not root may give files to
    extra = f'[control]\nsupervisors_group = "{group.gr_name}"\n'
    with daemon(tmp_path, config('argv = ["true"]') + extra, umask=0o002):
        state_dir = tmp_path / "state"
        info = state_dir.stat()
        assert stat.S_IMODE(info.st_mode) == 0o710 and info.st_gid == group.gr_gid
        assert mode(state_dir / DB_FILENAME) == 0o600
    missing = f"qd-no-such-group-{secrets.token_hex(3)}"
    (tmp_path / "bad.toml").write_text(
        config('argv = ["true"]') + f'[control]\nsupervisors_group = "{missing}"\n'
    )
    refused = quarterdeck("run", "--headless", "--config", str(tmp_path / "bad.toml"),
                          state_dir=tmp_path / "other")  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr.decode().strip().splitlines()[-1] == (
        f"quarterdeck: error: control.supervisors_group: no OS group {missing!r}"
    )


# --- agents ------------------------------------------------------------------------------------


def test_an_agent_gets_an_allowed_environment_and_a_workspace_of_its_own(tmp_path: Path) -> None:
    script = tmp_path / "agent.py"
    script.write_text(AGENT, encoding="utf-8")
    options = f'argv = ["{sys.executable}", "{script}"], env = {{ MODEL = "small" }}'
    with daemon(tmp_path, config(options), env=SECRETS) as runtime:
        state_dir = runtime.state_dir
        acme = run_turn(runtime, "a", "acme", {"write": "secret.txt"})
        rival = run_turn(runtime, "b", "rival", {"read": {"relative": "secret.txt",
                                                           "database": str(state_dir / DB_FILENAME)}})  # fmt: skip
    for report, workspace in ((acme, "acme"), (rival, "rival")):
        assert_contained_env(report, state_dir, workspace)
        assert report["env"]["PATH"] == os.environ["PATH"]
    agents = tmp_path.resolve() / "state.agents"
    acme_dir, rival_dir = Path(acme["cwd"]), Path(rival["cwd"])
    # One session ran both turns, each in its own workspace's directory, outside the state dir.
    assert acme_dir.parent == agents / "acme" and rival_dir.parent == agents / "rival"
    assert acme_dir.name == rival_dir.name
    assert not acme_dir.is_relative_to(state_dir.resolve())
    for folder in (agents, agents / "acme", acme_dir, agents / "rival", rival_dir):
        assert mode(folder) == 0o700, folder
    assert (acme_dir / "secret.txt").is_file()
    assert rival["relative"] == "FileNotFoundError"
    # The hard boundary: an agent run as the daemon's own OS user may read what that user can.
    assert rival["database"] == "ok"


def test_env_allow_replaces_the_allowed_variables(tmp_path: Path) -> None:
    script = tmp_path / "agent.py"
    script.write_text(AGENT, encoding="utf-8")
    options = (f'argv = ["{sys.executable}", "{script}"], env = {{ MODEL = "small" }}, '
               'env_allow = ["PATH", "CI_SHARD"]')  # fmt: skip
    env = {**SECRETS, "CI_SHARD": "3"}
    with daemon(tmp_path, config(options), env=env) as runtime:
        report = run_turn(runtime, "a", "acme", {})
    assert set(report["env"]) - {"LC_CTYPE"} == {
        "PATH", "CI_SHARD", "MODEL", "QUARTERDECK_SESSION_TOKEN", "QUARTERDECK_API",
        *MISSION_VARIABLES,
    }  # fmt: skip
    assert report["env"]["CI_SHARD"] == "3"


def test_agents_run_as_another_user_cannot_read_the_state(shared_root: Path) -> None:
    if not SYSTEM_PYTHON.exists():
        pytest.skip(f"{SYSTEM_PYTHON} (an interpreter other users may run) is missing")
    name = f"qdt{secrets.token_hex(3)}"
    script = shared_root / "agent.py"
    script.write_text(AGENT, encoding="utf-8")
    script.chmod(0o644)
    options = f'argv = ["{SYSTEM_PYTHON}", "{script}"], env = {{ MODEL = "small" }}, '
    with os_users(name) as (user,):
        with daemon(shared_root, config(options + f'run_as = "{name}"'), env=SECRETS) as runtime:
            state_dir = runtime.state_dir
            db = state_dir / DB_FILENAME
            report = run_turn(runtime, "a", "acme", {
                "read": {"database": str(db)}, "list": {"state": str(state_dir)}})  # fmt: skip
        assert_contained_env(report, state_dir, "acme")
        assert (report["uid"], report["gid"]) == (user.pw_uid, user.pw_gid)
        assert 0 not in report["groups"] and report["groups"] in ([], [user.pw_gid])
        assert report["env"]["HOME"] == user.pw_dir and report["env"]["USER"] == name
        assert report["database"] == "PermissionError" and report["state"] == "PermissionError"
        info = db.stat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o600, 0)
        workdir = Path(report["cwd"])
        assert workdir.stat().st_uid == user.pw_uid and mode(workdir) == 0o700
        assert mode(workdir.parent) == 0o711 and workdir.parent.stat().st_uid == 0


def test_one_user_per_workspace_keeps_tenants_apart(shared_root: Path) -> None:
    if not SYSTEM_PYTHON.exists():
        pytest.skip(f"{SYSTEM_PYTHON} (an interpreter other users may run) is missing")
    prefix = f"qdt{secrets.token_hex(3)}"
    script = shared_root / "agent.py"
    script.write_text(AGENT, encoding="utf-8")
    script.chmod(0o644)
    options = (f'argv = ["{SYSTEM_PYTHON}", "{script}"], env = {{ MODEL = "small" }}, '
               f'run_as = "{prefix}-{{workspace}}"')  # fmt: skip
    with os_users(f"{prefix}-acme", f"{prefix}-rival") as (acme_user, rival_user):
        with daemon(shared_root, config(options), env=SECRETS) as runtime:
            acme = run_turn(runtime, "a", "acme", {"write": "secret.txt"})
            acme_dir = Path(acme["cwd"])
            rival = run_turn(runtime, "b", "rival", {
                "read": {"neighbour_file": str(acme_dir / "secret.txt")},
                "list": {"neighbour_dir": str(acme_dir), "workspaces": str(acme_dir.parent),
                         "root": str(acme_dir.parent.parent)},
            })  # fmt: skip
        assert acme["uid"] == acme_user.pw_uid and rival["uid"] == rival_user.pw_uid
        assert (acme_dir / "secret.txt").read_text() == "acme's secret"
        assert rival["neighbour_file"] == "PermissionError"
        assert rival["neighbour_dir"] == "PermissionError"
        assert rival["workspaces"] == "PermissionError"
        assert rival["root"] == "PermissionError"


def test_run_as_another_user_needs_a_daemon_running_as_root(shared_root: Path) -> None:
    (shared_root / "quarterdeck.toml").write_text(
        config('argv = ["true"], run_as = "root"'), encoding="utf-8"
    )
    (shared_root / "quarterdeck.toml").chmod(0o644)
    argv = ["--state-dir", str(shared_root / "state"), "run", "--headless",
            "--config", str(shared_root / "quarterdeck.toml")]  # fmt: skip
    if os.geteuid() != 0:
        refused = quarterdeck(*argv)
        code, err = refused.returncode, refused.stderr.decode()
        uid = os.geteuid()
    else:
        with os_users(f"qdt{secrets.token_hex(3)}") as (user,):
            code, err = _cli_as(user, argv)
        uid = user.pw_uid
    assert code == 2, err
    assert err.splitlines()[-2:] == [
        f"quarterdeck: error: bad configuration {shared_root / 'quarterdeck.toml'}:",
        "  lanes.agents.options.run_as: running agents as another OS user ('root') needs the"
        f" daemon to run as root (it runs as uid {uid})",
    ]
    assert not (shared_root / "state").exists()


def test_run_as_an_unknown_user_is_refused_at_start(tmp_path: Path) -> None:
    (tmp_path / "quarterdeck.toml").write_text(
        config('argv = ["true"], run_as = "qd-nobody-at-all"'), encoding="utf-8"
    )
    refused = quarterdeck("run", "--headless", "--config", str(tmp_path / "quarterdeck.toml"),
                          state_dir=tmp_path / "state")  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr.decode().splitlines()[-1] == (
        "  lanes.agents.options.run_as: no OS user 'qd-nobody-at-all'"
    )


def _cli_as(user: pwd.struct_passwd, argv: list[str]) -> tuple[int, str]:
    """Run the command line in a child of this process that has become ``user`` (the
    interpreter of this test run may be out of that user's reach; the child needs no file of
    it: everything the command line imports is imported here first)."""
    from quarterdeck.cli.main import main as command_line

    # The command line loads a command's modules when it runs: load them before setuid.
    for module in ("cli.run", "cli.daemon", "cli.supervise", "cli.read", "store.database",
                   "store.migrations", "runtime.config", "runtime.keys", "sqlalchemy.exc"):  # fmt: skip
        importlib.import_module(
            module if module.startswith("sqlalchemy") else f"quarterdeck.{module}"
        )

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 99
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            sys.stderr = os.fdopen(write_end, "w")
            code = command_line(argv, out=open(os.devnull, "w"))  # noqa: SIM115
            sys.stderr.flush()
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        err = pipe.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), err
