"""Bearer tokens end to end: ``quarterdeck token create/ls/revoke`` as subprocesses against a
real headless runtime (SQLite and PostgreSQL), the ledger and the database holding no secret,
``token_principal`` on both backends, the token and ``--expires`` parsers under hypothesis, and
a token used over TCP against the control API until it is revoked or expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncConnection
from tests.conftest import Store, is_postgres, quarterdeck, run
from tests.headless import Headless, headless_runtime, query, wait_until

from quarterdeck.client.api import ControlClient, ControlRefused
from quarterdeck.domain.authority import SUPERVISOR, VIEWER, Kind, Principal, Roster
from quarterdeck.domain.clock import format_instant, parse_instant
from quarterdeck.domain.commands import TokenCreate, TokenRevoke
from quarterdeck.domain.tokens import (
    ID_SHAPE,
    expiry,
    hash_secret,
    new_token,
    secret_matches,
    split_token,
)
from quarterdeck.runtime.api import ControlServer
from quarterdeck.runtime.config import parse_config
from quarterdeck.runtime.listeners import default_socket_path
from quarterdeck.runtime.runtime import Runtime
from quarterdeck.runtime.token_cache import TOKEN_TTL_S, TokenCache
from quarterdeck.store.database import Database, open_database
from quarterdeck.store.tokens import TokenGrant, create_token, revoke_token, token_grant
from quarterdeck.store.writer import Writer

USER = pwd.getpwuid(os.getuid()).pw_name
LABEL = f"{USER} (uid {os.getuid()})"
"""How the daemon names this OS user on its socket (the CLI's commands go through it)."""
ME = Principal(Kind.SUPERVISOR, USER, uid=os.getuid())
"""This OS user: ``admin`` without a roster."""
TOKEN_LINE = re.compile(r"qdt_[0-9a-f]{12}_[A-Za-z0-9_-]{43}\n")


# --- the command line against a real runtime -------------------------------------------------------


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory, module_database: str) -> Iterator[Headless]:
    """One headless runtime for the module, on SQLite and on PostgreSQL."""
    with headless_runtime(tmp_path_factory.mktemp("tokens"), db=module_database) as started:
        yield started


def create(runtime: Headless, *args: str) -> tuple[str, str]:
    """``token create ARGS`` that must succeed: the token printed and its id."""
    result = runtime.cli("token", "create", *args)
    assert result.returncode == 0, result.stderr.decode()
    token = result.stdout.decode()
    assert TOKEN_LINE.fullmatch(token), token
    parts = split_token(token)
    assert parts is not None
    assert f"token {parts[0]} for token:" in result.stderr.decode()
    return token.strip(), parts[0]


def secret_of(token: str) -> str:
    parts = split_token(token)
    assert parts is not None, token
    return parts[1]


def listed(runtime: Headless) -> dict[str, dict[str, Any]]:
    """``token ls --json``, by id."""
    result = runtime.cli("token", "ls", "--json")
    assert result.returncode == 0, result.stderr.decode()
    lines = [json.loads(line) for line in result.stdout.decode().splitlines()]
    return {line["id"]: line for line in lines}


async def token_principal(
    conn: AsyncConnection, token: str, now: datetime | None = None
) -> Principal | None:
    """The principal :func:`token_grant` finds for ``token``, or None."""
    grant = await token_grant(conn, token, now)
    return None if grant is None else grant.principal


def principal_of(url: str, token: str, now: datetime | None = None) -> Principal | None:
    async def main() -> Principal | None:
        db = await open_database(url)
        try:
            async with db.read() as conn:
                return await token_principal(conn, token, now)
        finally:
            await db.dispose()

    return run(main())


def usage_error(runtime: Headless, *args: str) -> str:
    result = runtime.cli(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    err = result.stderr.decode()
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert result.stdout == b""
    return err


def test_create_list_use_revoke(runtime: Headless) -> None:
    token, token_id = create(
        runtime, "--principal", "ci-bot", "--role", "supervisor", "--workspace", "acme",
        "--expires", "7d",
    )  # fmt: skip
    secret = secret_of(token)
    principal = principal_of(runtime.url, token)
    assert principal == Principal(
        Kind.SUPERVISOR, "token:ci-bot", workspace="acme", granted=frozenset({SUPERVISOR})
    )
    line = listed(runtime)[token_id]
    assert line["name"] == "ci-bot" and line["role"] == "supervisor"
    assert line["workspace"] == "acme" and line["state"] == "active"
    assert line["created_by"] == LABEL and line["revoked_at"] is None
    in_a_week = datetime.now(UTC) + timedelta(days=7)
    assert abs(parse_instant(line["expires_at"]) - in_a_week) < timedelta(minutes=5)
    table = runtime.cli("token", "ls").stdout.decode()
    assert table.splitlines()[0].split() == [
        "ID", "NAME", "ROLE", "WORKSPACE", "CREATED", "BY", "EXPIRES", "REVOKED", "STATE",
    ]  # fmt: skip
    for output in (table, json.dumps(line)):
        assert secret not in output and hash_secret(secret) not in output

    revoked = runtime.cli("token", "revoke", token_id)
    assert revoked.returncode == 0, revoked.stderr.decode()
    assert json.loads(revoked.stdout) == {"ok": True, "command": "token.revoke", "token": token_id}
    assert principal_of(runtime.url, token) is None
    line = listed(runtime)[token_id]
    assert line["state"] == "revoked" and line["revoked_by"] == LABEL

    again = runtime.cli("token", "revoke", token_id)
    assert again.returncode == 1
    assert again.stderr.decode() == (
        "quarterdeck: refused: payload.token_id: the token is revoked already\n"
    )
    unknown = runtime.cli("token", "revoke", "0123456789ab")
    assert unknown.returncode == 1
    assert "payload.token_id: no such token" in unknown.stderr.decode()


def test_a_token_expires(runtime: Headless) -> None:
    token, token_id = create(runtime, "--principal", "short", "--role", VIEWER, "--expires", "2s")
    expires_at = parse_instant(listed(runtime)[token_id]["expires_at"])
    just_before = expires_at - timedelta(microseconds=1)
    assert principal_of(runtime.url, token, just_before) is not None
    assert principal_of(runtime.url, token, expires_at) is None
    wait_until(lambda: principal_of(runtime.url, token) is None, 10, "the token to expire")
    assert listed(runtime)[token_id]["state"] == "expired"

    later = format_instant(datetime.now(UTC) + timedelta(hours=2))
    token, token_id = create(runtime, "--principal", "dated", "--role", VIEWER, "--expires", later)
    assert listed(runtime)[token_id]["expires_at"] == later
    assert principal_of(runtime.url, token) is not None


def test_the_ledger_holds_no_secret_and_no_hash(runtime: Headless) -> None:
    token, token_id = create(runtime, "--principal", "audited", "--role", "release-lead")
    secret = secret_of(token)
    assert runtime.cli("token", "revoke", token_id).returncode == 0
    ledger = Store(runtime.url).ledger(subject=token_id)
    assert [entry["action"] for entry in ledger] == ["token.created", "token.revoked"]
    created = ledger[0]
    assert created["actor"] == LABEL and created["subject_type"] == "token"
    assert created["payload"] == {
        "name": "audited", "role": "release-lead", "workspace": None, "expires_at": None,
    }  # fmt: skip
    everything = json.dumps(query(runtime, "SELECT * FROM ledger"))
    assert secret not in everything and hash_secret(secret) not in everything
    assert token not in json.dumps(query(runtime, "SELECT * FROM receipts"), default=str)
    if not is_postgres(runtime.url):
        database = Path(runtime.url)
        files = list(database.parent.glob(database.name + "*"))
        assert files
        for path in files:  # the database, its WAL and shared memory, byte for byte
            raw = path.read_bytes()
            assert secret.encode() not in raw, path


def test_bad_flags_name_what_is_wrong(runtime: Headless) -> None:
    before = listed(runtime)
    now = datetime.now(UTC)
    cases = {
        ("--expires", "soon"): "--expires: expected a duration such as 30m, 12h or 7d",
        ("--expires", "30"): "--expires: '30' has no unit",
        ("--expires", "0m"): "--expires: '0m' is no time at all",
        ("--expires", "99999999w"): "--expires: '99999999w' is too far in the future",
        ("--expires", "2020-01-01T00:00:00Z"): "--expires: '2020-01-01T00:00:00Z' is in the past",
        ("--expires", "2030-01-01T00:00:00"): "is not an ISO-8601 instant with a time zone",
        ("--principal", "no spaces"): "--principal: must be 1 to 64 letters",
        ("--role", "x" * 65): "--role: must be 1 to 64 letters",
        ("--workspace", "Acme"): "--workspace: must be a workspace name",
    }
    for flags, message in cases.items():
        args = {"--principal": "ci", "--role": VIEWER, **dict([flags])}
        err = usage_error(runtime, "token", "create", *[v for kv in args.items() for v in kv])
        assert err.startswith("quarterdeck: error: ") and message in err, (flags, err)
    assert "ID must be 12 lower-case hex digits" in usage_error(runtime, "token", "revoke", "x")
    assert "--all-workspaces" in usage_error(runtime, "token", "ls", "-A")
    assert listed(runtime) == before  # nothing was sent
    assert not Store(runtime.url).rows(
        "SELECT id FROM receipts WHERE kind = 'command' AND received_at >= ? "
        "AND payload LIKE '%token.create%' AND payload LIKE '%\"ci\"%'",
        format_instant(now),
    )


def test_without_a_daemon_no_token_is_made(tmp_path: Path) -> None:
    state = tmp_path / "state"
    result = quarterdeck(
        "token", "create", "--principal", "later", "--role", VIEWER, "--wait", "0.3",
        state_dir=state,
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert result.stdout == b""  # no token that could never work
    assert f"no daemon is running on {state}" in result.stderr.decode()
    assert quarterdeck("token", "ls", "--json", state_dir=state).stdout == b""


# --- token_principal on both backends --------------------------------------------------------------


@contextlib.asynccontextmanager
async def writing(url: str) -> AsyncIterator[tuple[Database, Writer]]:
    db = await open_database(url)
    try:
        async with Writer(db) as writer:
            yield db, writer
    finally:
        await db.dispose()


def made(principal: str, role: str, **fields: Any) -> tuple[str, TokenCreate]:
    token = new_token()
    command = TokenCreate(
        token_id=token.id, principal=principal, role=role, secret_hash=token.secret_hash, **fields
    )
    return token.text, command


def test_token_principal(database: str) -> None:
    now = datetime.now(UTC)
    good, good_cmd = made("ci-bot", SUPERVISOR, workspace="acme")
    gone, gone_cmd = made("gone", VIEWER)
    old, old_cmd = made("old", VIEWER, expires_at=format_instant(now + timedelta(seconds=30)))

    async def main() -> None:
        async with writing(database) as (db, writer):
            for command in (good_cmd, gone_cmd, old_cmd):
                result = await writer.submit(partial(create_token, command=command, actor="t"))
                assert result["ok"], result
            await writer.submit(partial(revoke_token, token_id=gone_cmd.token_id, actor="t"))
            taken = await writer.submit(partial(create_token, command=good_cmd, actor="t"))
            assert taken == {
                "ok": False, "errors": [f"payload.token_id: a token {good_cmd.token_id} exists already"]
            }  # fmt: skip
            token_id, secret = split_token(good) or ("", "")
            other_secret = secret_of(new_token().text)
            flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
            async with db.read() as conn:
                found = await token_principal(conn, good)
                assert found == Principal(
                    Kind.SUPERVISOR, "token:ci-bot", workspace="acme",
                    granted=frozenset({SUPERVISOR}),
                )  # fmt: skip
                assert found.label == "token:ci-bot"
                assert await token_principal(conn, f"  {good}\n") == found
                for wrong in (
                    f"qdt_{token_id}_{other_secret}",  # the right shape, another secret
                    f"qdt_{token_id}_{flipped}",  # one character off
                    f"qdt_{'0' * 12}_{secret}",  # an id nobody holds
                    good[:-1], good + "x", good.upper(), f"Bearer {good}", "", "qdt_", "x" * 60,
                    good.replace("qdt_", "qdx_"), gone,
                ):  # fmt: skip
                    assert await token_principal(conn, wrong) is None, wrong
                assert await token_principal(conn, old, now) is not None
                assert await token_principal(conn, old, now + timedelta(seconds=30)) is None

    run(main())
    ledger = Store(database).ledger(action="token.created")
    assert {entry["subject_id"] for entry in ledger} == {
        good_cmd.token_id,
        gone_cmd.token_id,
        old_cmd.token_id,
    }
    assert Store(database).ledger(action="command.refused")[-1]["subject_id"] == good_cmd.token_id


def test_an_expiry_that_has_passed_is_refused_by_the_store(tmp_path: Path) -> None:
    _, command = made("late", VIEWER, expires_at="2020-01-01T00:00:00.000000Z")

    async def main() -> dict[str, Any]:
        async with writing(str(tmp_path / "q.db")) as (_db, writer):
            return await writer.submit(partial(create_token, command=command, actor="t"))

    assert run(main()) == {
        "ok": False, "errors": ["payload.expires_at: 2020-01-01T00:00:00.000000Z has passed"]
    }  # fmt: skip
    assert Store(tmp_path / "q.db").rows("SELECT * FROM tokens") == []


# --- the parsers ----------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_a_new_token_reads_back_and_only_its_own_secret_matches(data: st.DataObject) -> None:
    token = new_token()
    parts = split_token(token.text)
    assert parts is not None and parts[0] == token.id and ID_SHAPE.fullmatch(token.id)
    assert secret_matches(parts[1], token.secret_hash)
    assert hash_secret(parts[1]) == token.secret_hash != parts[1]
    position = data.draw(st.integers(0, len(token.text) - 1))
    char = data.draw(st.sampled_from("0123456789abcdefABCXYZ_-qdt"))
    mutated = token.text[:position] + char + token.text[position + 1 :]
    changed = split_token(mutated)
    if mutated != token.text and changed is not None:
        assert changed[0] != token.id or not secret_matches(changed[1], token.secret_hash)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=80) | st.from_regex(r"\s*qdt_[0-9a-fA-F]{10,14}_[\w-]{40,46}\s*"))
def test_any_text_is_a_token_or_none(text: str) -> None:
    parts = split_token(text)
    if parts is not None:
        assert f"qdt_{parts[0]}_{parts[1]}" == text.strip()
        assert ID_SHAPE.fullmatch(parts[0]) and len(parts[1]) == 43


NOW = datetime(2026, 12, 5, 19, 0, tzinfo=UTC)
UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@settings(deadline=None)
@given(st.integers(1, 10**5), st.sampled_from(sorted(UNIT_S)))
def test_a_duration_counts_from_now(count: int, unit: str) -> None:
    assert expiry(f"{count}{unit}", NOW) == format_instant(
        NOW + timedelta(seconds=count * UNIT_S[unit])
    )


@settings(deadline=None)
@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)))
def test_an_instant_is_taken_as_it_is_when_it_is_later(when: datetime) -> None:
    instant = when.replace(tzinfo=UTC)
    text = instant.isoformat()
    if instant > NOW:
        assert expiry(text, NOW) == format_instant(instant)
    else:
        with pytest.raises(ValueError, match="is in the past"):
            expiry(text, NOW)


@settings(deadline=None)
@given(st.text(max_size=40))
def test_any_expires_text_is_a_later_instant_or_a_named_error(text: str) -> None:
    try:
        found = expiry(text, NOW)
    except ValueError as exc:
        assert repr(text) in str(exc)
    else:
        assert found > format_instant(NOW)
        assert format_instant(parse_instant(found)) == found


# --- over TCP against the control API -------------------------------------------------------------

CONFIG = {"lanes": {"sim": {"adapter": "sim", "options": {"seed": 1, "action_rate": 0.0}}}}


@contextlib.asynccontextmanager
async def served(tmp_path: Path) -> AsyncIterator[tuple[Runtime, str]]:
    """A runtime and its control API on TCP, checking tokens against its database."""
    state = tmp_path / "s"
    state.mkdir(exist_ok=True)
    db = await open_database(str(state / "q.db"))
    runtime = Runtime(db, parse_config(CONFIG), state_dir=state)
    await runtime.start()

    async def command(
        workspace: str, payload: Mapping[str, Any], principal: Principal, _key: str | None
    ) -> dict[str, Any]:
        return await runtime.command(workspace, payload, principal)

    async def verify(token: str) -> Principal | None:
        async with db.read() as conn:
            return await token_principal(conn, token)

    control = ControlServer(
        roster=Roster.default(USER), submit=runtime.submit, command=command,
        registry=CollectorRegistry(), socket_path=default_socket_path(state),
        listen=("127.0.0.1", 0), verify_token=verify,
    )  # fmt: skip
    try:
        await control.start()
        host, port = control.tcp_address or ("", 0)
        yield runtime, f"http://{host}:{port}"
    finally:
        await control.stop()
        with contextlib.suppress(Exception):
            await runtime.stop(grace_s=0.2)
        await db.dispose()


async def refused_with(url: str, token: str, status: int = 401) -> ControlRefused:
    async with ControlClient(url=url, token=token) as api:
        with pytest.raises(ControlRefused) as refused:
            await api.whoami()
    assert refused.value.status == status
    return refused.value


def test_a_token_over_tcp_until_revoked_or_expired(tmp_path: Path) -> None:
    async def main() -> None:
        async with served(tmp_path) as (runtime, url):
            admin, admin_cmd = made("root-ci", "admin")
            created = await runtime.command("default", admin_cmd, ME)
            assert created["ok"], created

            # an admin token creates a supervisor's token over TCP
            ops = new_token()
            async with ControlClient(url=url, token=admin) as api:
                assert (await api.whoami()).roles == {"admin"}
                answer = await api.command(
                    "default",
                    TokenCreate(
                        token_id=ops.id, principal="ops", role=SUPERVISOR,
                        secret_hash=ops.secret_hash, workspace="acme",
                    ).to_payload(),
                )  # fmt: skip
            assert answer["ok"], answer
            async with ControlClient(url=url, token=ops.text) as api:
                me = await api.whoami()
                assert me.principal.name == "token:ops" and me.principal.workspace == "acme"
                assert me.roles == {SUPERVISOR}
                assert (await api.command("acme", {"command": "alert.ack", "alert_id": "x"}))[
                    "errors"
                ]  # allowed through, refused by the store: there is no such alert
                with pytest.raises(ControlRefused, match="acts only in workspace 'acme'"):
                    await api.command("other", {"command": "alert.ack", "alert_id": "x"})
                sneaky = new_token()
                with pytest.raises(ControlRefused, match="'admin'"):
                    await api.command(
                        "acme",
                        TokenCreate(
                            token_id=sneaky.id, principal="me-too", role="admin",
                            secret_hash=sneaky.secret_hash,
                        ).to_payload(),
                    )  # fmt: skip
            await refused_with(url, sneaky.text)

            # revoked: refused from the next request on
            async with ControlClient(url=url, token=admin) as api:
                answer = await api.command("default", TokenRevoke(token_id=ops.id).to_payload())
            assert answer["ok"], answer
            refusal = await refused_with(url, ops.text)
            assert refusal.message == "the token is unknown, expired or revoked"

            # wrong tokens: the right shape with another secret, and not a token at all
            token_id = (split_token(admin) or ("", ""))[0]
            await refused_with(url, f"qdt_{token_id}_{secret_of(new_token().text)}")
            await refused_with(url, admin[:-1])
            await refused_with(url, "hunter2")

            # expired: works until its instant, refused after
            soon = format_instant(datetime.now(UTC) + timedelta(seconds=2))
            brief, brief_cmd = made("brief", VIEWER, expires_at=soon)
            assert (await runtime.command("default", brief_cmd, ME))["ok"]
            async with ControlClient(url=url, token=brief) as api:
                assert (await api.whoami()).roles == {VIEWER}
            await asyncio.sleep(max(0.0, (parse_instant(soon) - datetime.now(UTC)).total_seconds()))
            await refused_with(url, brief)

            async with ControlClient(url=url, token=admin) as api:  # the admin's still works
                assert (await api.whoami()).principal.name == "token:root-ci"

    run(main())
    ledger = Store(tmp_path / "s" / "q.db").ledger()
    actions = [(e["action"], e["actor"]) for e in ledger if e["subject_type"] == "token"]
    assert ("token.created", "token:root-ci") in actions
    assert ("token.revoked", "token:root-ci") in actions
    assert ("token.created", ME.label) in actions  # given in-process by this OS user


# --- the daemon's token cache ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def whoami(url: str, token: str) -> Principal | None:
    """Who the daemon at ``url`` says ``token`` is; None when it refuses it (401)."""
    async with ControlClient(url=url, token=token) as api:
        try:
            return (await api.whoami()).principal
        except ControlRefused as refused:
            assert refused.status == 401, refused
            return None


def test_the_daemon_remembers_a_token_briefly_and_forgets_it_when_revoked(
    tmp_path: Path, database: str
) -> None:
    """A real daemon over TCP: a token revoked through it is refused from the next request on
    (though it was just used, so remembered); one revoked in the database by another writer
    (as another node would) is refused within the cache's second."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with headless_runtime(tmp_path, db=database, run_args=["--listen", f"127.0.0.1:{port}"]) as rt:
        ops, ops_id = create(rt, "--principal", "ops", "--role", SUPERVISOR)
        assert run(whoami(url, ops)) == run(whoami(url, ops)) is not None
        assert rt.cli("token", "revoke", ops_id).returncode == 0
        assert run(whoami(url, ops)) is None

        ci, ci_id = create(rt, "--principal", "ci", "--role", VIEWER)
        assert run(whoami(url, ci)) is not None

        async def revoke_elsewhere() -> float:
            async with writing(database) as (_db, writer):
                result = await writer.submit(partial(revoke_token, token_id=ci_id, actor="n2"))
            assert result["ok"], result
            return time.monotonic()

        revoked_at = run(revoke_elsewhere())
        wait_until(lambda: run(whoami(url, ci)) is None, 10, "the revocation to be seen", step=0.05)
        assert time.monotonic() - revoked_at < TOKEN_TTL_S + 1.0


def test_the_cache_looks_again_after_its_time_and_never_keeps_a_refusal(database: str) -> None:
    """:class:`TokenCache` over the real store lookup, with a clock the test moves."""
    good, good_cmd = made("cached", SUPERVISOR)
    soon = datetime.now(UTC) + timedelta(seconds=2)
    brief, brief_cmd = made("brief", VIEWER, expires_at=format_instant(soon))
    now = [0.0]

    async def main() -> None:
        async with writing(database) as (db, writer):
            for command in (good_cmd, brief_cmd):
                assert (await writer.submit(partial(create_token, command=command, actor="t")))[
                    "ok"
                ]
            looked: list[str] = []

            async def lookup(token: str) -> TokenGrant | None:
                looked.append(token)
                async with db.read() as conn:
                    return await token_grant(conn, token)

            cache = TokenCache(lookup, ttl_s=1.0, capacity=2, clock=lambda: now[0])
            first = await cache.principal(good)
            assert first is not None and first.name == "token:cached"
            assert await cache.principal(good) == first and looked == [good]
            now[0] = 1.0  # its second has passed: looked up again
            assert await cache.principal(good) == first and looked == [good, good]
            for wrong in (good[:-1], "hunter2", good + "x"):
                assert await cache.principal(wrong) is None
            assert len(cache) == 1  # refusals are never kept

            assert await cache.principal(brief) is not None
            assert len(cache) == 2
            await asyncio.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.05)
            assert await cache.principal(brief) is None  # expired, within its second

            cache.forget_all()
            assert len(cache) == 0
            await writer.submit(partial(revoke_token, token_id=good_cmd.token_id, actor="t"))
            assert await cache.principal(good) is None

    run(main())
