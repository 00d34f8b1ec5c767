"""Signed checkpoints on real state directories: a headless node does real work (``submit``,
then ``run --headless --until-idle`` as subprocesses, checkpointing every few entries and at
drain), and the attacks of issue 16 are made on a copy of what it left: entries cut from the end
with the head moved back, an entry rewritten with the chain and head recomputed, the whole
ledger deleted, the checkpoint file tampered with, a wrong key. Plain ``ledger verify`` accepts
each of those chains (the attack); ``ledger verify --checkpoints`` names the seq. ``ledger
prove`` is checked by the very program ``docs/specs/ledger.md`` gives. SQLite and PostgreSQL.

Damage is made as someone holding the database would: having dropped the append-only
triggers first (:func:`conftest.unguard_ledger`)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from conftest import REPO, RawConnection, Store, is_postgres, quarterdeck, run, unguard_ledger
from quarterdeck.domain.checkpoints import (
    Checkpoint,
    CheckpointFormatError,
    key_id_of,
    parse_checkpoint_lines,
    parse_public_keys,
    public_hex,
    sign_checkpoint,
    signature_holds,
)
from quarterdeck.domain.ledger import GENESIS_HASH, body_text, chain_hash
from quarterdeck.domain.states import Kind
from quarterdeck.runtime.checkpointer import Checkpointer
from quarterdeck.store.checkpoints import verify_with_checkpoints
from quarterdeck.store.database import open_database
from quarterdeck.store.items import create_item
from quarterdeck.store.writer import Writer

TASKS = 30
EVERY = 25
CONFIG = f"""
[lanes.sim]
adapter = "sim"
options = {{ seed = 3, max_latency_ms = 20 }}
fallback = "sim-fallback"

[lanes.sim-fallback]
adapter = "sim"
options = {{ seed = 4, max_latency_ms = 20 }}

[ledger]
checkpoint_every = {EVERY}
"""


@dataclass
class Node:
    """A state directory (key, checkpoint file) and the database a node worked on."""

    state: Path
    db: str
    config: Path

    @property
    def checkpoint_file(self) -> Path:
        return self.state / "ledger-checkpoints.jsonl"

    def cli(self, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return quarterdeck("--db", self.db, *args, state_dir=self.state, stdin=stdin)

    def checkpoints(self) -> list[Checkpoint]:
        lines = parse_checkpoint_lines(self.checkpoint_file.read_text(encoding="utf-8"))
        found = [c for _, c in lines if isinstance(c, Checkpoint)]
        assert len(found) == len(lines)
        return found

    def verify(self, *args: str) -> tuple[int, dict[str, Any]]:
        result = self.cli("ledger", "verify", "--json", *args)
        assert "Traceback" not in result.stderr.decode(), result.stderr.decode()
        return result.returncode, json.loads(result.stdout)

    def verify_checkpoints(self, *args: str) -> tuple[int, dict[str, Any]]:
        return self.verify("--checkpoints", str(self.checkpoint_file), *args)

    def head(self) -> tuple[int, str]:
        row = Store(self.db).one("SELECT seq, hash FROM ledger_head WHERE id = 1")
        assert row is not None
        return int(row["seq"]), str(row["hash"])


def run_node(node: Node, tag: str, tasks: int = TASKS) -> subprocess.CompletedProcess[bytes]:
    lines = "".join(
        json.dumps({"idempotency_key": f"{tag}-{i}", "workspace": "default", "kind": "task",
                    "payload": {"objective": f"{tag} {i}", "input": {"n": i}}}) + "\n"
        for i in range(tasks)
    ).encode()  # fmt: skip
    submitted = node.cli("submit", "-", stdin=lines)
    assert submitted.returncode == 0, submitted.stderr.decode()
    ran = node.cli("run", "--headless", "--until-idle", "--config", str(node.config))
    assert ran.returncode == 0, ran.stderr.decode()[-3000:]
    return ran


@pytest.fixture(scope="module")
def worked(module_database: str, tmp_path_factory: pytest.TempPathFactory) -> Node:
    """A node's state after real work: two runs of a headless daemon."""
    root = tmp_path_factory.mktemp("worked")
    config = root / "quarterdeck.toml"
    config.write_text(CONFIG, encoding="utf-8")
    state = Path(module_database).parent if not is_postgres(module_database) else root / "state"
    node = Node(state, module_database, config)
    run_node(node, "first")
    run_node(node, "second")
    return node


@pytest.fixture
def node(worked: Node, tmp_path: Path, request: pytest.FixtureRequest) -> Node:
    """A copy of the worked node's state (database, key, checkpoint file) to damage."""
    state = tmp_path / "state"
    shutil.copytree(worked.state, state, ignore=shutil.ignore_patterns("quarterdeck.db*"))
    if is_postgres(worked.db):
        db = request.getfixturevalue("pg_cluster").clone_database(worked.db)
    else:
        db = str(state / "quarterdeck.db")
        with sqlite3.connect(worked.db) as source, sqlite3.connect(db) as copy:
            source.backup(copy)
    return Node(state, db, worked.config)


# --- what a node leaves ------------------------------------------------------------------------


def test_a_node_signs_checkpoints_outside_the_database(worked: Node):
    keys = worked.state / "keys"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert stat.S_IMODE((keys / "ledger-ed25519.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(worked.checkpoint_file.stat().st_mode) == 0o600
    checkpoints = worked.checkpoints()
    assert len(checkpoints) >= 4, checkpoints
    prev = GENESIS_HASH
    for checkpoint in checkpoints:
        assert checkpoint.prev == prev
        prev = checkpoint.hash
    seqs = [c.seq for c in checkpoints]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    # every N entries while running (N = 25; group commits may pass it by a few) ...
    assert any(0 < b - a <= 2 * EVERY for a, b in zip([0, *seqs], seqs, strict=False))
    # ... and the head as each node left it, at drain
    assert seqs[-1] == worked.head()[0]
    assert checkpoints[-1].head == worked.head()[1]
    assert len({c.node for c in checkpoints}) == 2  # two runs, two node ids, one file
    stored = Store(worked.db).rows("SELECT * FROM ledger_checkpoints ORDER BY seq")
    assert [Checkpoint(**{k: r[k] for k in ("seq", "head", "at", "node", "prev", "key_id",
                                            "signature")}) for r in stored] == checkpoints  # fmt: skip
    assert [r["hash"] for r in stored] == [c.hash for c in checkpoints]


def test_ledger_key_and_verify_with_checkpoints(worked: Node, tmp_path: Path):
    shown = worked.cli("ledger", "key")
    assert shown.returncode == 0, shown.stderr.decode()
    as_json = json.loads(worked.cli("ledger", "key", "--json").stdout)
    assert shown.stdout.decode() == (
        f"{as_json['public_key']} ed25519 key {as_json['key_id']} ({as_json['path']})\n"
    )
    assert {c.key_id for c in worked.checkpoints()} == {as_json["key_id"]}
    trusted = tmp_path / "trusted.keys"
    trusted.write_bytes(b"# the fleet\n" + shown.stdout)

    head_seq, head_hash = worked.head()
    expected = {"ok": True, "entries": head_seq, "head": head_hash,
                "checkpoints": len(worked.checkpoints()), "checkpointed_seq": head_seq}  # fmt: skip
    assert worked.verify_checkpoints() == (0, expected)
    assert worked.verify_checkpoints("--keys", str(trusted)) == (0, expected)
    text = worked.cli("ledger", "verify", "--checkpoints", str(worked.checkpoint_file))
    assert text.returncode == 0
    assert text.stdout.decode() == (
        f"ledger ok: {head_seq} entries, head {head_hash}; {expected['checkpoints']} signed "
        f"checkpoints hold (the last at seq {head_seq})\n"
    )


# --- the attacks of issue 16 -------------------------------------------------------------------


def _checkpoint_at_or_above(node: Node, seq: int) -> int:
    return min(c.seq for c in node.checkpoints() if c.seq >= seq)


def test_cut_entries_and_a_moved_back_head_are_found(node: Node):
    last, _ = node.head()
    unguard_ledger(node.db)
    store = Store(node.db)
    store.execute("DELETE FROM ledger WHERE seq > ?", last - 5)
    cut = store.one("SELECT hash FROM ledger WHERE seq = ?", last - 5)
    assert cut is not None
    store.execute("UPDATE ledger_head SET seq = ?, hash = ? WHERE id = 1", last - 5, cut["hash"])
    assert node.verify() == (0, {"ok": True, "entries": last - 5, "head": cut["hash"]})  # the hole
    code, report = node.verify_checkpoints()
    assert code == 1
    assert report["first_bad_seq"] == last
    assert f"the ledger ends at seq {last - 5}" in report["reason"]
    text = node.cli("ledger", "verify", "--checkpoints", str(node.checkpoint_file))
    assert text.returncode == 1
    assert text.stdout.decode().startswith(f"ledger BROKEN at seq {last}: ")


def rewrite_from(url: str, seq: int, actor: str) -> None:
    """Change entry ``seq``'s actor, then recompute every later hash and the head, as an
    attacker who knows the format would."""
    raw = RawConnection(url)
    try:
        rows = raw.execute(
            "SELECT seq, at, workspace, actor, action, subject_type, subject_id, from_state,"
            " to_state, payload, prev_hash FROM ledger WHERE seq >= ? ORDER BY seq",
            seq,
        )
        prev = rows[0][10]
        for s, at, ws, who, action, stype, sid, frm, to, payload, _ in rows:
            who = actor if s == seq else who
            digest = chain_hash(prev, body_text(s, at, ws, who, action, stype, sid, frm, to,
                                                payload))  # fmt: skip
            raw.execute(
                "UPDATE ledger SET actor = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                who, prev, digest, s,
            )  # fmt: skip
            prev = digest
        raw.execute("UPDATE ledger_head SET hash = ? WHERE id = 1", prev)
    finally:
        raw.close()


def test_a_rewritten_entry_with_the_chain_recomputed_is_found(node: Node):
    first = node.checkpoints()[0].seq
    target = first // 2
    unguard_ledger(node.db)
    rewrite_from(node.db, target, "mallory")
    assert Store(node.db).value("SELECT actor FROM ledger WHERE seq = ?", target) == "mallory"
    code, plain = node.verify()
    assert (code, plain["ok"]) == (0, True)  # the chain alone holds
    code, report = node.verify_checkpoints()
    assert code == 1
    assert report["first_bad_seq"] == _checkpoint_at_or_above(node, target) == first
    assert f"rewritten at or below seq {first}" in report["reason"]
    proved = node.cli("ledger", "prove", str(target))  # no proof over a rewritten chain
    assert proved.returncode == 1 and proved.stdout == b""
    assert proved.stderr.decode() == (
        "quarterdeck: the ledger does not reach its checkpoint: the entries do not end at the "
        f"checkpointed head (seq {first})\n"
    )

    # the same, above the first checkpoint: the first checkpoint at or above it is named
    later = node.checkpoints()[2].seq - 1
    rewrite_from(node.db, later, "mallory")
    code, report = node.verify_checkpoints()
    assert (code, report["first_bad_seq"]) == (1, first)  # still the earliest broken one


def test_a_deleted_ledger_is_found(node: Node):
    assert int(Store(node.db).value("SELECT count(*) FROM turns")) == 2 * TASKS
    unguard_ledger(node.db)
    Store(node.db).execute("DELETE FROM ledger")
    Store(node.db).execute("DELETE FROM ledger_head")
    code, plain = node.verify()  # the chain alone is empty and whole; the state gives it away
    assert code == 1 and plain["entries"] == 0 and plain["head"] == GENESIS_HASH
    assert plain["disagreements_total"] >= 2 * TASKS
    code, report = node.verify_checkpoints()
    assert code == 1
    first = node.checkpoints()[0].seq
    assert report["first_bad_seq"] == first
    assert "the ledger ends at seq 0" in report["reason"]


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(lines), encoding="utf-8")


def test_a_tampered_checkpoint_file_is_found(node: Node, tmp_path: Path):
    original = node.checkpoint_file.read_text(encoding="utf-8").splitlines(keepends=True)
    checkpoints = node.checkpoints()
    middle = len(original) // 2
    target = checkpoints[middle]

    # a signed field changed: the signature no longer verifies
    changed = json.loads(original[middle])
    changed["node"] = "node-mallory"
    _write_lines(node.checkpoint_file, [*original[:middle], json.dumps(changed) + "\n",
                                        *original[middle + 1 :]])  # fmt: skip
    code, report = node.verify_checkpoints()
    assert (code, report["first_bad_seq"]) == (1, target.seq)
    assert "the signature does not verify" in report["reason"]

    # a line removed: the next no longer follows the one before it
    _write_lines(node.checkpoint_file, [*original[:middle], *original[middle + 1 :]])
    code, report = node.verify_checkpoints()
    assert (code, report["first_bad_seq"]) == (1, checkpoints[middle + 1].seq)
    assert "does not follow the line before it" in report["reason"]

    # a line forged with another key, in its place
    mallory = Ed25519PrivateKey.generate()
    forged = sign_checkpoint(mallory, seq=target.seq, head=target.head, at=target.at,
                             node=target.node, prev=target.prev)  # fmt: skip
    _write_lines(node.checkpoint_file, [*original[:middle], forged.to_line(),
                                        *original[middle + 1 :]])  # fmt: skip
    code, report = node.verify_checkpoints()
    assert (code, report["first_bad_seq"]) == (1, target.seq)
    assert f"signed by an unknown key {key_id_of(mallory.public_key())}" in report["reason"]

    # a garbled line
    _write_lines(node.checkpoint_file, [*original[:middle], "{not json\n", *original[middle:]])
    code, report = node.verify_checkpoints()
    assert code == 1 and report["first_bad_seq"] is None
    assert f"line {middle + 1} is not a checkpoint" in report["reason"]

    # the true file, but checked against the wrong key
    _write_lines(node.checkpoint_file, original)
    wrong = tmp_path / "wrong.keys"
    wrong.write_text(public_hex(mallory.public_key()) + "\n", encoding="utf-8")
    code, report = node.verify_checkpoints("--keys", str(wrong))
    assert (code, report["first_bad_seq"]) == (1, checkpoints[0].seq)
    assert "signed by an unknown key" in report["reason"]
    assert node.verify_checkpoints()[0] == 0


def test_a_node_signs_nothing_over_a_rewritten_chain(node: Node):
    """A node started on a rewritten chain signs no checkpoint over it: it logs the failure
    and opens an alert; the file keeps its true lines, and still exposes the rewrite."""
    before = node.checkpoint_file.read_bytes()
    last_checkpoint = node.checkpoints()[-1].seq
    unguard_ledger(node.db)
    rewrite_from(node.db, last_checkpoint - 3, "mallory")
    ran = run_node(node, "third", tasks=3)
    assert node.checkpoint_file.read_bytes() == before
    errors = [json.loads(line) for line in ran.stderr.decode().splitlines()
              if line.startswith("{") and '"error"' in line]  # fmt: skip
    assert any(f"no longer holds the checkpoint at seq {last_checkpoint}" in e["message"]
               for e in errors), errors  # fmt: skip
    alerts = Store(node.db).rows(
        "SELECT workspace, state, message FROM alerts WHERE alert_type = 'ledger_checkpoint'"
    )
    assert len(alerts) == 1 and alerts[0]["workspace"] == "_runtime", alerts
    assert alerts[0]["state"] == "open"
    code, report = node.verify_checkpoints()
    assert (code, report["first_bad_seq"]) == (1, last_checkpoint)


# --- proofs and the spec's independent verifier ------------------------------------------------


def spec_verifier(tmp_path: Path) -> Path:
    """The verifying program of docs/specs/ledger.md, as written there."""
    spec = (REPO / "docs" / "specs" / "ledger.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", spec, re.S)
    (program,) = [b for b in blocks if "--proof" in b]
    path = tmp_path / "verify.py"
    path.write_text(program, encoding="utf-8")
    return path


def outsider(program: Path, *args: str, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    """The program run with nothing of Quarterdeck's on its path."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-I", str(program), *args], input=stdin,
                          capture_output=True, env=env, cwd=program.parent, timeout=120)  # fmt: skip


def test_ledger_prove_is_checked_by_the_specs_verifier(worked: Node, tmp_path: Path):
    program = spec_verifier(tmp_path)
    keys = tmp_path / "trusted.keys"
    keys.write_bytes(worked.cli("ledger", "key").stdout)
    checkpoints = worked.checkpoints()
    for seq in (1, checkpoints[0].seq, checkpoints[0].seq + 1, checkpoints[-1].seq):
        proved = worked.cli("ledger", "prove", str(seq))
        assert proved.returncode == 0, proved.stderr.decode()
        proof = json.loads(proved.stdout)
        covering = _checkpoint_at_or_above(worked, seq)
        assert proof["type"] == "quarterdeck.ledger.proof/1" and proof["seq"] == seq
        assert [e["seq"] for e in proof["entries"]] == list(range(seq, covering + 1))
        assert proof["checkpoint"]["seq"] == covering
        checked = outsider(program, "--proof", "--keys", str(keys), stdin=proved.stdout)
        assert checked.returncode == 0, checked.stderr.decode()
        assert json.loads(checked.stdout) == {"ok": True, "seq": seq, "checkpointed_seq": covering}

    # from the file instead of the table: the same proof
    from_file = worked.cli("ledger", "prove", "1", "--checkpoints", str(worked.checkpoint_file))
    assert from_file.stdout == worked.cli("ledger", "prove", "1").stdout

    proved = worked.cli("ledger", "prove", str(checkpoints[1].seq - 2))
    proof = json.loads(proved.stdout)
    # the verifier is not a rubber stamp: a changed entry, a changed head, another key
    forged = json.loads(proved.stdout)
    forged["entries"][0]["actor"] = "mallory"
    checked = outsider(program, "--proof", "--keys", str(keys), stdin=json.dumps(forged).encode())
    assert checked.returncode != 0 and b"bad hash" in checked.stderr
    forged = json.loads(proved.stdout)
    forged["checkpoint"]["head"] = forged["entries"][-1]["prev_hash"]
    checked = outsider(program, "--proof", "--keys", str(keys), stdin=json.dumps(forged).encode())
    assert checked.returncode != 0 and b"bad signature" in checked.stderr
    other = tmp_path / "other.keys"
    other.write_text(public_hex(Ed25519PrivateKey.generate().public_key()) + "\n")
    checked = outsider(program, "--proof", "--keys", str(other), stdin=proved.stdout)
    assert checked.returncode != 0 and b"unknown key" in checked.stderr
    assert proof["entries"][-1]["hash"] == proof["checkpoint"]["head"]

    # nothing covers the entries after the last checkpoint, nor seq 0
    after = worked.cli("ledger", "prove", str(worked.head()[0] + 1))
    assert after.returncode == 1
    assert (
        after.stderr.decode()
        == f"quarterdeck: no checkpoint covers seq {worked.head()[0] + 1} yet\n"
    )
    assert worked.cli("ledger", "prove", "0").returncode == 2


def test_the_specs_verifier_checks_an_export_against_checkpoints(node: Node, tmp_path: Path):
    program = spec_verifier(tmp_path)
    keys = tmp_path / "trusted.keys"
    keys.write_bytes(node.cli("ledger", "key").stdout)
    args = ("--checkpoints", str(node.checkpoint_file), "--keys", str(keys))
    export = node.cli("ledger", "export", "-A").stdout
    checked = outsider(program, *args, stdin=export)
    assert checked.returncode == 0, checked.stderr.decode()
    head_seq, head_hash = node.head()
    assert json.loads(checked.stdout) == {"ok": True, "entries": head_seq, "head": head_hash,
                                          "checkpoints": len(node.checkpoints())}  # fmt: skip
    assert json.loads(outsider(program, stdin=export).stdout) == {
        "ok": True, "entries": head_seq, "head": head_hash}  # fmt: skip

    # the chain rewritten and recomputed: the export verifies alone, not against checkpoints
    unguard_ledger(node.db)
    rewrite_from(node.db, 5, "mallory")
    export = node.cli("ledger", "export", "-A").stdout
    assert outsider(program, stdin=export).returncode == 0
    checked = outsider(program, *args, stdin=export)
    first = node.checkpoints()[0].seq
    assert checked.returncode != 0
    assert f"checkpoint at seq {first}: head not in the chain".encode() in checked.stderr


# --- keys --------------------------------------------------------------------------------------


def test_ledger_key_without_a_key_and_with_a_loose_one(tmp_path: Path):
    state = tmp_path / "state"
    missing = quarterdeck("ledger", "key", state_dir=state)
    assert missing.returncode == 1
    assert missing.stderr.decode() == (
        f"quarterdeck: no ledger key at {state / 'keys' / 'ledger-ed25519.key'} yet "
        "(a node makes it when it first starts)\n"
    )
    assert not (state / "quarterdeck.db").exists()  # the key alone, no database
    config = tmp_path / "quarterdeck.toml"
    config.write_text('[lanes.sim]\nadapter = "sim"\n[ledger]\nkey_file = "node.key"\n')
    configured = quarterdeck("ledger", "key", "--config", str(config), state_dir=state)
    assert configured.returncode == 1 and str(tmp_path / "node.key") in configured.stderr.decode()

    key = tmp_path / "node.key"
    key.write_bytes(b"")
    key.chmod(0o644)
    loose = quarterdeck("ledger", "key", "--config", str(config), state_dir=state)
    assert loose.returncode == 2
    assert loose.stderr.decode() == (
        f"quarterdeck: error: the ledger key {key} may be read by others (mode 0644): "
        "make it 0600\n"
    )
    ran = quarterdeck("run", "--headless", "--until-idle", "--config", str(config),
                      state_dir=state)  # fmt: skip
    assert ran.returncode == 2
    assert "may be read by others" in ran.stderr.decode() and "Traceback" not in ran.stderr.decode()


# --- the checkpointer in process, and the record ----------------------------------------------


async def _poll(probe: Any, timeout: float = 10.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if value := probe():
            return value
        await asyncio.sleep(0.02)
    raise AssertionError("timed out")


def test_checkpointers_sign_every_n_entries_or_t_seconds_into_one_file(
    database: str, tmp_path: Path
):
    """Two checkpointers (two nodes sharing a state directory) append to one file: by count,
    by time, and at once (the file's lock keeps one chain)."""
    path = tmp_path / "state" / "ledger-checkpoints.jsonl"
    key = Ed25519PrivateKey.generate()

    def lines() -> list[Checkpoint]:
        if not path.exists():
            return []
        return [c for _, c in parse_checkpoint_lines(path.read_text()) if isinstance(c, Checkpoint)]

    async def go() -> None:
        db = await open_database(database)
        try:
            async with Writer(db) as writer:

                async def add(count: int) -> None:
                    for _ in range(count):
                        await writer.submit(
                            lambda txn: create_item(txn, Kind.ALERT, workspace="w", actor="t")
                        )

                by_count = Checkpointer(db, writer, key, node_id="a", path=path, every=5,
                                        interval_s=3600)  # fmt: skip
                by_count.start()
                await add(4)
                await asyncio.sleep(0.3)
                assert lines() == []  # 4 entries: not yet
                await add(1)
                await _poll(lambda: [c.seq for c in lines()] == [5])
                await add(7)
                await _poll(lambda: len(lines()) == 2)
                assert 10 <= lines()[1].seq <= 12 and lines()[1].node == "a"
                by_time = Checkpointer(db, writer, key, node_id="b", path=path, every=1000,
                                       interval_s=0.2)  # fmt: skip
                by_time.start()
                await add(2)  # fewer than by_count's 5: only time signs them
                await _poll(lambda: lines()[-1].seq == 14)
                assert lines()[-1].node == "b"
                await add(2)
                both = await asyncio.gather(by_count.checkpoint(), by_time.checkpoint())
                assert sum(c is not None for c in both) <= 1  # one signs 16, the other finds it
                assert lines()[-1].seq == 16
                count = len(lines())
                await by_count.stop()
                await by_time.stop()
                assert len(lines()) == count  # nothing new to sign at drain
            keys = {key_id_of(key.public_key()): key.public_key()}
            numbered = parse_checkpoint_lines(path.read_text())
            result = await verify_with_checkpoints(db, numbered, keys)
            assert result.ok, result
            stored = Store(database).value("SELECT count(*) FROM ledger_checkpoints")
            assert stored == count
        finally:
            await db.dispose()

    run(go())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_checkpoint_record_and_its_signature():
    key = Ed25519PrivateKey.generate()
    checkpoint = sign_checkpoint(key, seq=7, head="1" * 64, at="2030-01-01T00:00:00.000000Z",
                                 node="node-ü", prev=GENESIS_HASH)  # fmt: skip
    signed = json.dumps({k: v for k, v in checkpoint.to_dict().items() if k != "signature"},
                        sort_keys=True, separators=(",", ":"), ensure_ascii=False)  # fmt: skip
    assert checkpoint.signed_bytes() == signed.encode()
    assert checkpoint.hash == hashlib.sha256(signed.encode()).hexdigest()
    raw = public_hex(key.public_key())
    assert checkpoint.key_id == hashlib.sha256(bytes.fromhex(raw)).hexdigest()[:32]
    assert signature_holds(checkpoint, key.public_key())
    assert Checkpoint.from_dict(json.loads(checkpoint.to_line())) == checkpoint
    for change in ({"seq": 8}, {"head": "2" * 64}, {"node": "node-x"}, {"at": "2031"}):
        assert not signature_holds(replace(checkpoint, **change), key.public_key()), change
    assert not signature_holds(checkpoint, Ed25519PrivateKey.generate().public_key())
    record = checkpoint.to_dict()
    for bad in (
        {**record, "extra": 1},
        {k: v for k, v in record.items() if k != "prev"},
        {**record, "seq": True},
        {**record, "seq": 0},
        {**record, "head": "A" * 64},
        {**record, "signature": "ab"},
        {**record, "type": "other"},
        [record],
    ):
        with pytest.raises(CheckpointFormatError):
            Checkpoint.from_dict(bad)
    listed = parse_public_keys(f"# fleet\n\n{raw} node a\n  {raw.upper()}\n")
    assert list(listed) == [checkpoint.key_id]
    with pytest.raises(CheckpointFormatError, match="line 2"):
        parse_public_keys(f"{raw}\nnot-a-key\n")


def test_each_checkpoint_is_queued_for_the_witness_webhook(database: str, tmp_path: Path):
    """With ``[ledger] witness``, each checkpoint goes into the outbox for that webhook in the
    transaction that stores it (the relay delivers it like any notification); the witness must
    name a JSON webhook."""
    from quarterdeck.runtime.config import ConfigError, parse_config
    from quarterdeck.runtime.runtime import Runtime

    hooks = [{"name": "witness", "url": "http://127.0.0.1:9/w", "events": ["approval.*"],
              "signed": False},
             {"name": "chat", "url": "http://127.0.0.1:9/c", "format": "slack", "signed": False}]  # fmt: skip
    lanes = {"sim": {"adapter": "sim"}}
    for witness, problem in (("nobody", "no webhook named 'nobody'"), ("chat", "format json")):
        with pytest.raises(ConfigError, match=problem):
            parse_config({"lanes": lanes, "webhooks": hooks, "ledger": {"witness": witness}})
    config = parse_config({"lanes": lanes, "webhooks": hooks, "ledger": {"witness": "witness"}})

    async def go() -> None:
        db = await open_database(database)
        runtime = Runtime(db, config, state_dir=tmp_path / "state")
        try:
            await runtime.start()
            await runtime.writer.submit(
                lambda txn: create_item(txn, Kind.ALERT, workspace="w", actor="t")
            )
            await runtime.stop()  # the checkpoint at drain
        finally:
            await db.dispose()

    run(go())
    lines = parse_checkpoint_lines((tmp_path / "state" / "ledger-checkpoints.jsonl").read_text())
    signed = [c for _, c in lines if isinstance(c, Checkpoint)]
    assert signed
    rows = Store(database).rows("SELECT webhook, event, payload FROM outbox ORDER BY created_at")
    shipped = [row for row in rows if row["event"] == "ledger.checkpoint"]
    assert [row["webhook"] for row in shipped] == ["witness"] * len(signed)
    assert [json.loads(row["payload"])["data"] for row in shipped] == [c.to_dict() for c in signed]
