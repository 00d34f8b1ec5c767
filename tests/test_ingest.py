"""Ingest under volume, hostile input and concurrency, against real databases: each test that
stores anything runs on a SQLite file and on PostgreSQL (the ``database`` fixture); the
property tests of validation need no database.

Every input must come back as exactly one result, in order; every distinct input must be
exactly one receipt; the ledger must verify afterwards. The spec is docs/specs/envelope.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conftest import REPO, Store, envelope, line, run

from quarterdeck.domain.canonical import canonical_text
from quarterdeck.domain.clock import parse_instant
from quarterdeck.domain.envelope import Envelope, Rejection, parse_envelope
from quarterdeck.runtime.ingest import Ingestor, draft_for
from quarterdeck.store import queries
from quarterdeck.store.database import open_database
from quarterdeck.store.ledger import verify_ledger
from quarterdeck.store.receipts import RAW_KEEP_BYTES, UNKNOWN_WORKSPACE, IngestResult
from quarterdeck.store.writer import Writer

NOW_TEXT = "2026-11-22T12:00:00.000000Z"
DIFFERENT_CONTENT = (
    "idempotency_key: already used for different content; the original receipt stands"
)
WORKSPACES = ("acme", "beta", "gamma-2")


# --------------------------------------------------------------------------------------
# helpers


def ingest_batches(url: str, batches: list[list[Any]]) -> list[list[IngestResult]]:
    """Ingest each batch in turn through one writer; returns the results per batch."""

    async def main() -> list[list[IngestResult]]:
        db = await open_database(url)
        try:
            async with Writer(db) as writer:
                ingestor = Ingestor(writer)
                return [await ingestor.ingest(batch) for batch in batches]
        finally:
            await db.dispose()

    return run(main())


def status_and_verify(url: str, workspaces: list[str | None]) -> tuple[dict, Any]:
    async def main() -> tuple[dict, Any]:
        db = await open_database(url)
        try:
            counts = {ws: await queries.status(db, ws) for ws in workspaces}
            return counts, await verify_ledger(db)
        finally:
            await db.dispose()

    return run(main())


def receipt_rows(url: str) -> list[dict[str, Any]]:
    return Store(url).rows(
        "SELECT id, workspace, status, idempotency_key, kind, payload, errors, raw, raw_size, "
        "dedupe_key"
        " FROM receipts"
    )


def ledger_rows(url: str) -> list[dict[str, Any]]:
    return Store(url).rows("SELECT * FROM ledger ORDER BY seq")


def has_path(errors: tuple[str, ...] | list[str], path: str) -> bool:
    return any(error.startswith(f"{path}: ") for error in errors)


# --------------------------------------------------------------------------------------
# (a) volume: 10,000 inputs, 30% duplicates, 5% malformed of many sorts


@dataclass
class Case:
    """One input and what the test expects of it."""

    raw: bytes
    ident: tuple[str, str] | None = None
    """(workspace, idempotency_key) of a valid envelope."""
    content: str | None = None
    """kind, schema_version and canonical payload: what decides the different-content note."""
    payload: str | None = None
    """Canonical payload text of a valid envelope."""
    paths: tuple[str, ...] = ()
    """Field paths a rejected input's errors must name."""
    workspace: str = UNKNOWN_WORKSPACE
    """Workspace a rejected input is filed under."""


def valid_case(obj: dict[str, Any], raw: bytes | None = None) -> Case:
    payload = canonical_text(obj["payload"])
    content = canonical_text([obj["kind"], obj.get("schema_version", 1), obj["payload"]])
    return Case(
        raw=line(obj) if raw is None else raw,
        ident=(obj["workspace"], obj["idempotency_key"]),
        content=content,
        payload=payload,
    )


def base_envelope(i: int) -> dict[str, Any]:
    workspace = WORKSPACES[i % len(WORKSPACES)]
    # the same key in every workspace: keys are scoped by workspace, never shared
    obj = envelope(i // len(WORKSPACES), workspace)
    obj["kind"] = ("task", "command", "event")[i % 7 % 3]
    obj["payload"] = {
        "objective": f"objective {i} — ünïcødé ✓",
        "input": {"n": i, "ratio": i / 7, "tags": ["a", "b"][: i % 3], "none": None},
    }
    if i % 5 == 0:
        obj["submitted_at"] = "2026-01-02T03:04:05+02:00"
    if i % 11 == 0:
        obj["correlation_id"] = f"corr-{i}"
        obj["causation_id"] = f"cause-{i}"
    return obj


def bad_cases(count: int) -> list[Case]:
    """``count`` malformed inputs of every sort, each with the paths its errors must name."""
    big: list[Case] = []
    for j in range(4):  # payload over the 256 KiB canonical limit, line under 1 MiB
        obj = envelope(90_000 + j, "acme", payload={"blob": "x" * (300 * 1024), "n": j})
        big.append(Case(line(obj), paths=("payload",), workspace="acme"))
    big.append(Case(b"x" * (1024 * 1024 + 10), paths=("$",)))  # line over 1 MiB
    big.append(Case(b"[" * 100_000, paths=("$",)))
    big.append(Case(b"[" * 100_000, paths=("$",)))  # the same bytes again
    big.append(Case(b'{"payload": ' + b"[" * 100_000, paths=("$",)))
    big.append(Case(b'{"payload": {"a": ' + b'{"b": ' * 50_000, paths=("$",)))

    def small(j: int) -> Case:
        k = 80_000 + j
        sort = j % 26
        ws = WORKSPACES[j % len(WORKSPACES)]
        if sort == 0:  # bad JSON: truncated object
            return Case(b'{"idempotency_key": "bad-%d", "workspace": "acme"' % j, paths=("$",))
        if sort == 1:  # wrong type: kind
            return Case(line(envelope(k, ws, kind=7)), paths=("kind",), workspace=ws)
        if sort == 2:  # wrong type: payload
            return Case(line(envelope(k, ws, payload=[j])), paths=("payload",), workspace=ws)
        if sort == 3:  # wrong type: idempotency_key
            obj = envelope(k, ws, idempotency_key=j)
            return Case(line(obj), paths=("idempotency_key",), workspace=ws)
        if sort == 4:  # wrong type: workspace
            return Case(line(envelope(k, ["acme"])), paths=("workspace",))
        if sort == 5:  # missing idempotency_key
            obj = envelope(k, ws)
            del obj["idempotency_key"]
            obj["payload"]["j"] = j
            return Case(line(obj), paths=("idempotency_key",), workspace=ws)
        if sort == 6:  # unknown field
            obj = envelope(k, ws, priority=j)
            return Case(line(obj), paths=("priority",), workspace=ws)
        if sort == 7:  # bad workspace slugs
            slug = ("Acme Corp", "-lead", "x" * 65, "", "ACME")[j // 26 % 5]
            return Case(line(envelope(k, slug)), paths=("workspace",))
        if sort == 8:  # empty and blank lines (identical bytes recur)
            return Case((b"", b"   ", b"\t")[j // 26 % 3], paths=("$",))
        if sort == 9:  # invalid UTF-8
            raw = (
                b'{"idempotency_key": "utf-%d", "workspace": "acme", "payload": {"x": "\xff\xfe"}}'
            )
            return Case(raw % j, paths=("$",))
        if sort == 10:  # lone surrogate escape inside the payload (a value)
            raw = b'{"idempotency_key": "s-%d", "workspace": "%s", "kind": "task", "payload": {"a": "\\ud800"}}'
            return Case(raw % (j, ws.encode()), paths=("payload",), workspace=ws)
        if sort == 11:  # lone surrogate escape inside the payload (an object key)
            raw = b'{"idempotency_key": "s-%d", "workspace": "%s", "kind": "task", "payload": {"\\udfff": 1}}'
            return Case(raw % (j, ws.encode()), paths=("payload",), workspace=ws)
        if sort == 12:  # lone surrogate escape inside the idempotency key
            raw = b'{"idempotency_key": "k-\\udc00-%d", "workspace": "%s", "kind": "task", "payload": {}}'
            return Case(raw % (j, ws.encode()), paths=("idempotency_key",), workspace=ws)
        if sort == 13:  # an array instead of an object
            return Case(b"[" + line(envelope(k, ws)) + b"]", paths=("$",))
        if sort == 14:  # NaN and infinities are not JSON
            constant = (b"NaN", b"Infinity", b"-Infinity")[j // 26 % 3]
            raw = b'{"idempotency_key": "n-%d", "workspace": "acme", "kind": "task", "payload": {"x": %s}}'
            return Case(raw % (j, constant), paths=("$",))
        if sort == 15:  # JSON scalars
            return Case((b"42", b'"text"', b"null", b"true")[j // 26 % 4], paths=("$",))
        if sort == 16:  # bad kind
            return Case(line(envelope(k, ws, kind="banana")), paths=("kind",), workspace=ws)
        if sort == 17:  # bad schema version
            obj = envelope(k, ws, schema_version=("1", 2, True)[j // 26 % 3])
            return Case(line(obj), paths=("schema_version",), workspace=ws)
        if sort == 18:  # bad id
            return Case(line(envelope(k, ws, id="not-a-uuid")), paths=("id",), workspace=ws)
        if sort == 19:  # bad submitted_at
            obj = envelope(k, ws, submitted_at=("yesterday", "2026-01-01T00:00:00", 5)[j % 3])
            return Case(line(obj), paths=("submitted_at",), workspace=ws)
        if sort == 20:  # key too long / empty
            obj = envelope(k, ws, idempotency_key=("x" * 201, "")[j // 26 % 2])
            return Case(line(obj), paths=("idempotency_key",), workspace=ws)
        if sort == 21:  # missing payload / null payload
            obj = envelope(k, ws)
            if j // 26 % 2:
                obj["payload"] = None
            else:
                del obj["payload"]
            return Case(line(obj), paths=("payload",), workspace=ws)
        if sort == 22:  # several problems at once: every one is reported
            obj = {"workspace": "Bad Slug", "kind": "job", "payload": "p", "extra": j}
            return Case(
                line(obj), paths=("idempotency_key", "workspace", "kind", "payload", "extra")
            )
        if sort == 23:  # trailing garbage after a valid object
            return Case(line(envelope(k, ws)) + b" x", paths=("$",))
        if sort == 24:  # a huge integer (beyond Python's int-from-text limit)
            raw = b'{"idempotency_key": "i-%d", "workspace": "acme", "kind": "task", "payload": {"x": %s}}'
            return Case(raw % (j, b"9" * 5000), paths=("$",))
        # sort 25: a float literal that overflows to infinity
        raw = b'{"idempotency_key": "f-%d", "workspace": "%s", "kind": "task", "payload": {"x": 1e400}}'
        return Case(raw % (j, ws.encode()), paths=("payload",), workspace=ws)

    return big + [small(j) for j in range(count - len(big))]


def volume_cases(total: int, rng: random.Random) -> list[Case]:
    n_bad = total * 5 // 100
    n_dup = total * 30 // 100
    n_new = total - n_bad - n_dup
    originals = [base_envelope(i) for i in range(n_new)]
    cases = [valid_case(obj) for obj in originals]
    for d in range(n_dup):
        original = rng.choice(originals)
        variant = d % 4
        if variant == 0:  # byte-identical redelivery
            cases.append(valid_case(original))
        elif variant == 1:  # same content, other key order, spacing, id and timestamps
            copy = dict(reversed(list(original.items())))
            copy["submitted_at"] = "2026-03-03T03:03:03Z"
            copy["correlation_id"] = f"redelivery-{d}"
            raw = json.dumps(copy, indent=1, ensure_ascii=False).encode().replace(b"\n", b" ")
            cases.append(valid_case(copy, raw))
        elif variant == 2:  # same key, different payload: still a duplicate, with a note
            cases.append(valid_case({**original, "payload": {"changed": d}}))
        else:  # same key, different kind: also different content
            kind = "event" if original["kind"] != "event" else "task"
            cases.append(valid_case({**original, "kind": kind}))
    cases.extend(bad_cases(n_bad))
    rng.shuffle(cases)
    return cases


def test_ten_thousand_inputs_with_duplicates_and_malformed_lines(database: str) -> None:
    rng = random.Random(20261122)
    cases = volume_cases(10_000, rng)
    inputs = [case.raw for case in cases]
    batches: list[list[bytes]] = []
    start = 0
    while start < len(inputs):
        size = rng.choice((1, 2, 7, 100, 500, 999, 1000, 1500))
        batches.append(inputs[start : start + size])
        start += size

    per_batch = ingest_batches(database, batches)
    assert [len(r) for r in per_batch] == [len(b) for b in batches]
    results = [result for batch in per_batch for result in batch]
    assert len(results) == len(inputs)
    tally = Counter(result.status for result in results)
    assert set(tally) <= {"accepted", "duplicate", "rejected"}
    assert tally["accepted"] + tally["duplicate"] + tally["rejected"] == len(inputs)

    # Walk the inputs in order, predicting each result from the first occurrence.
    first_valid: dict[tuple[str, str], tuple[str, Case]] = {}
    first_bad: dict[tuple[str, bytes], IngestResult] = {}
    for number, (case, result) in enumerate(zip(cases, results, strict=True)):
        where = f"input {number}: {case.raw[:120]!r} -> {result}"
        if case.ident is not None:
            if case.ident not in first_valid:
                assert result.status == "accepted", where
                assert result.errors == (), where
                first_valid[case.ident] = (result.receipt, case)
            else:
                receipt, original = first_valid[case.ident]
                assert result.status == "duplicate", where
                assert result.receipt == receipt, where
                expected = () if case.content == original.content else (DIFFERENT_CONTENT,)
                assert result.errors == expected, where
        else:
            assert result.status == "rejected", where
            assert result.errors, where
            assert all(": " in error for error in result.errors), where
            for path in case.paths:
                assert has_path(result.errors, path), f"{where}: no error for {path!r}"
            key = (case.workspace, case.raw)
            if key in first_bad:
                assert result == first_bad[key], where  # same receipt, same reasons
            else:
                first_bad[key] = result
    assert len({r.receipt for r in first_bad.values()}) == len(first_bad)

    # What is stored: exactly one receipt per distinct input.
    rows = receipt_rows(database)
    by_id = {row["id"]: row for row in rows}
    assert len(by_id) == len(rows) == len(first_valid) + len(first_bad)
    accepted_rows = [row for row in rows if row["status"] == "accepted"]
    rejected_rows = [row for row in rows if row["status"] == "rejected"]
    assert len(accepted_rows) + len(rejected_rows) == len(rows)
    assert {(r["workspace"], r["idempotency_key"]) for r in accepted_rows} == set(first_valid)
    for (workspace, key), (receipt, original) in first_valid.items():
        row = by_id[receipt]
        assert (row["workspace"], row["idempotency_key"]) == (workspace, key)
        assert row["payload"] == original.payload  # the first occurrence's content stands
        assert row["raw"] is None
    for (workspace, raw), result in first_bad.items():
        row = by_id[result.receipt]
        assert row["status"] == "rejected"
        assert row["workspace"] == workspace
        # raw bytes kept up to the cap, invalid UTF-8 and all, with the whole's size and hash
        assert bytes(row["raw"]) == raw[:RAW_KEEP_BYTES]
        assert row["raw_size"] == len(raw)
        assert row["dedupe_key"] == "raw:" + hashlib.sha256(raw).hexdigest()
        assert tuple(json.loads(row["errors"])) == result.errors

    # Status counts: per workspace and across all of them.
    duplicates = Counter(
        case.ident[0]
        for case, result in zip(cases, results, strict=True)
        if result.status == "duplicate" and case.ident is not None
    )
    scopes: list[str | None] = [None, *WORKSPACES, UNKNOWN_WORKSPACE]
    counts, verified = status_and_verify(database, scopes)
    for scope in scopes:
        in_scope = [r for r in rows if scope is None or r["workspace"] == scope]
        expected = {
            "accepted": sum(r["status"] == "accepted" for r in in_scope),
            "duplicate": sum(duplicates.values()) if scope is None else duplicates[scope],
            "rejected": sum(r["status"] == "rejected" for r in in_scope),
        }
        assert counts[scope]["receipts"] == expected, scope
    assert counts[None]["receipts"] == {
        "accepted": len(first_valid),
        "duplicate": tally["duplicate"],
        "rejected": len(first_bad),
    }
    assert counts[UNKNOWN_WORKSPACE]["receipts"]["rejected"] > 0

    # The ledger verifies, and records every receipt once, under its workspace.
    assert verified.ok, verified
    entries = ledger_rows(database)
    assert verified.entries == len(entries) == counts[None]["ledger"]["entries"]
    assert verified.head == counts[None]["ledger"]["head"]
    recorded: dict[str, list[str]] = {"accepted": [], "rejected": []}
    for entry in entries:
        assert entry["action"] == "receipts.recorded"
        payload = json.loads(entry["payload"])
        for name in ("accepted", "rejected"):
            for receipt in payload.get(name, []):
                assert by_id[receipt]["workspace"] == entry["workspace"]
                recorded[name].append(receipt)
    assert sorted(recorded["accepted"]) == sorted(r["id"] for r in accepted_rows)
    assert sorted(recorded["rejected"]) == sorted(r["id"] for r in rejected_rows)


def test_str_and_dict_inputs_are_recorded_like_lines(database: str) -> None:
    valid = envelope(1, payload={"text": "é✓"})
    inputs: list[Any] = [
        json.dumps(valid, ensure_ascii=False),  # str
        valid,  # dict: the same delivery
        {**valid, "idempotency_key": "other"},  # dict, new
        "{broken",  # str, malformed
        {"workspace": "acme", "payload": {}},  # dict, malformed
        ["not", "an", "object"],  # neither bytes, str nor mapping
    ]
    (results,) = ingest_batches(database, [inputs])
    assert [r.status for r in results] == [
        "accepted",
        "duplicate",
        "accepted",
        "rejected",
        "rejected",
        "rejected",
    ]
    assert results[1].receipt == results[0].receipt and results[1].errors == ()
    assert has_path(results[3].errors, "$")
    assert has_path(results[4].errors, "idempotency_key") and has_path(results[4].errors, "kind")
    assert has_path(results[5].errors, "$")
    rows = {row["id"]: row for row in receipt_rows(database)}
    assert bytes(rows[results[3].receipt]["raw"]) == b"{broken"
    assert rows[results[4].receipt]["workspace"] == "acme"
    assert json.loads(rows[results[4].receipt]["raw"]) == {"workspace": "acme", "payload": {}}


def test_rejection_does_not_use_up_the_key(database: str) -> None:
    bad = line(envelope(5, kind="job"))
    good = line(envelope(5))
    first, second = ingest_batches(database, [[bad, bad], [good, bad, good]])
    assert [r.status for r in first] == ["rejected", "rejected"]
    assert first[0] == first[1]
    assert [r.status for r in second] == ["accepted", "rejected", "duplicate"]
    assert second[1] == first[0]
    assert second[2].receipt == second[0].receipt != first[0].receipt


# --------------------------------------------------------------------------------------
# bugs found while writing this file (each test names the behaviour the spec promises)


def test_lone_surrogate_as_a_field_name_is_rejected_not_raised(database: str) -> None:
    """envelope.md: "a JSON escape for a lone surrogate is rejected" and ingest never raises.

    A top-level *field name* that is a lone surrogate escape becomes the path of an
    ``unknown field`` error; that error text cannot be encoded as UTF-8, so the INSERT of
    the whole batch fails with UnicodeEncodeError and every input in the batch is lost.
    """
    poisoned = b'{"\\ud800": 1, "idempotency_key": "k", "workspace": "acme", "kind": "task", "payload": {}}'
    innocent = line(envelope(1))
    (results,) = ingest_batches(database, [[innocent, poisoned]])
    assert [r.status for r in results] == ["accepted", "rejected"]
    assert results[1].errors


def test_deeply_nested_dict_input_is_rejected_not_raised(database: str) -> None:
    """ingest.py: "No input, however malformed ..., raises out of Ingestor.ingest".

    A decoded (dict) input nested deeper than the recursion limit makes ``draft_for`` raise
    RecursionError: validation's failure is caught, but ``_raw_bytes`` then re-encodes the
    object with ``canonical_json`` (only TypeError/ValueError are caught) and ``repr``.
    """
    deep: dict[str, Any] = {}
    cursor = deep
    for _ in range(100_000):
        cursor["a"] = {}
        cursor = cursor["a"]
    poisoned = envelope(2, payload=deep)
    try:
        draft = draft_for(poisoned, NOW_TEXT)
    except RecursionError as exc:
        pytest.fail(f"draft_for raised {exc!r}")
    assert draft.status == "rejected"
    (results,) = ingest_batches(database, [[line(envelope(1)), poisoned]])
    assert [r.status for r in results] == ["accepted", "rejected"]


@pytest.mark.parametrize("submitted_at", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_submitted_at_out_of_range_is_a_field_error(submitted_at: str) -> None:
    """envelope.md: "Validation never raises", every problem carries its field path.

    ``parse_instant`` converts to UTC with ``astimezone``, which raises OverflowError (not
    ValueError) past year 1 / 9999, so ``parse_envelope`` raises; ``draft_for`` catches it
    but reports ``$: could not be validated: OverflowError`` instead of ``submitted_at``.
    """
    raw = envelope(3, submitted_at=submitted_at)
    try:
        result = parse_envelope(raw, NOW_TEXT)
    except OverflowError as exc:
        pytest.fail(f"parse_envelope raised {exc!r}")
    assert isinstance(result, Rejection)
    assert [e.path for e in result.errors] == ["submitted_at"]
    assert has_path(json.loads(draft_for(raw, NOW_TEXT).errors), "submitted_at")


def test_submitted_at_before_year_1000_is_stored_fixed_width() -> None:
    """envelope.md: submitted_at is "Stored as YYYY-MM-DDTHH:MM:SS.ffffffZ in UTC".

    ``format_instant`` uses ``strftime("%Y")``, which does not zero-pad years below 1000
    on glibc: "0999-01-01T00:00:00Z" is stored as "999-01-01T00:00:00.000000Z", which
    ``parse_instant`` itself cannot read back.
    """
    result = parse_envelope(envelope(4, submitted_at="0999-01-01T00:00:00Z"), NOW_TEXT)
    assert isinstance(result, Envelope)
    assert result.submitted_at == "0999-01-01T00:00:00.000000Z"


# --------------------------------------------------------------------------------------
# (b) properties: validation never raises; valid envelopes round-trip


def storable(draft: Any) -> None:
    """Every text column of a draft can be written to SQLite (encodes as UTF-8)."""
    for name, value in zip(draft._fields, draft, strict=True):
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise AssertionError(f"draft column {name} cannot be stored: {exc}") from exc


def check_any_input(raw: Any) -> None:
    result = parse_envelope(raw, NOW_TEXT)
    assert isinstance(result, Envelope | Rejection)
    if isinstance(result, Rejection):
        assert result.errors
        assert all(isinstance(e.path, str) and e.message for e in result.errors)
    draft = draft_for(raw, NOW_TEXT)
    assert draft.status == ("accepted" if isinstance(result, Envelope) else "rejected")
    if draft.status == "rejected":
        errors = json.loads(draft.errors)
        assert errors and all(isinstance(e, str) and ": " in e for e in errors)
        assert isinstance(draft.raw, bytes)
        if isinstance(raw, bytes):
            assert draft.raw == raw
    storable(draft)


texts = st.text(st.one_of(st.characters(), st.characters(categories=["Cs"])), max_size=40)
"""Text that includes lone surrogates, as JSON escapes can deliver them."""
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=20,
)
offsets = st.integers(min_value=-23 * 60, max_value=23 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
instants = st.builds(lambda when, tz: when.replace(tzinfo=tz).isoformat(), st.datetimes(), offsets)
field_values = {
    "id": st.one_of(st.uuids().map(str), st.uuids().map(lambda u: str(u).upper()), json_values),
    "idempotency_key": st.one_of(texts, json_values),
    "correlation_id": st.one_of(st.none(), texts, json_values),
    "causation_id": st.one_of(st.none(), texts, json_values),
    "schema_version": st.one_of(st.just(1), json_values),
    "workspace": st.one_of(st.from_regex(r"[a-z0-9][a-z0-9_-]{0,63}", fullmatch=True), texts),
    "kind": st.one_of(st.sampled_from(["task", "command", "event"]), json_values),
    "payload": st.one_of(st.dictionaries(texts, json_values, max_size=5), json_values),
    "submitted_at": st.one_of(instants, texts, json_values),
}
envelope_like = st.fixed_dictionaries(
    {},
    optional={**field_values, "extra": json_values, "\ud800": json_values},
)
any_object = st.one_of(envelope_like, st.dictionaries(texts, json_values, max_size=6))
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    check_any_input(raw)


@PROPERTY
@given(st.one_of(texts, st.text(max_size=200)))
def test_arbitrary_text_never_raises(raw: str) -> None:
    check_any_input(raw)
    check_any_input(raw.encode("utf-8", "surrogatepass"))


@settings(PROPERTY, max_examples=150)
@given(any_object)
def test_arbitrary_json_objects_never_raise(obj: dict[str, Any]) -> None:
    check_any_input(obj)  # as a decoded object
    check_any_input(json.dumps(obj))  # as text, lone surrogates as \u escapes
    check_any_input(json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass"))


@settings(PROPERTY, max_examples=150)
@given(any_object, st.integers(min_value=0, max_value=10_000), st.binary(max_size=3))
def test_damaged_json_never_raises(obj: dict[str, Any], cut: int, noise: bytes) -> None:
    text = json.dumps(obj).encode()
    cut %= len(text) + 1
    check_any_input(text[:cut] + noise + text[cut:])
    check_any_input(text[:cut])


plain_text = st.text(max_size=30)  # no lone surrogates
plain_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**30), max_value=10**30),
        st.floats(allow_nan=False, allow_infinity=False),
        plain_text,
    ),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(plain_text, inner, max_size=4),
    max_leaves=25,
)
valid_envelopes = st.fixed_dictionaries(
    {
        "idempotency_key": st.text(min_size=1, max_size=200),
        "workspace": st.from_regex(r"[a-z0-9][a-z0-9_-]{0,63}", fullmatch=True),
        "kind": st.sampled_from(["task", "command", "event"]),
        "payload": st.dictionaries(plain_text, plain_values, max_size=6),
    },
    optional={
        "id": st.uuids().map(str),
        "correlation_id": st.text(min_size=1, max_size=200),
        "causation_id": st.one_of(st.none(), st.text(min_size=1, max_size=200)),
        "schema_version": st.just(1),
        "submitted_at": st.builds(
            lambda when, tz: when.replace(tzinfo=tz).isoformat(),
            st.datetimes(
                min_value=datetime(1000, 1, 2),  # see the two submitted_at bug tests above
                max_value=datetime(9998, 12, 30),
            ),
            offsets,
        ),
    },
)


@PROPERTY
@given(valid_envelopes)
def test_valid_envelope_round_trips(obj: dict[str, Any]) -> None:
    canonical = canonical_text(obj["payload"])
    forms: list[Any] = [
        obj,
        json.dumps(obj),
        json.dumps(obj, ensure_ascii=False).encode(),
        json.dumps(obj, indent=2, sort_keys=True).encode(),
    ]
    for form in forms:
        result = parse_envelope(form, NOW_TEXT)
        assert isinstance(result, Envelope), result
        assert result.payload_json == canonical
        assert result.payload == json.loads(canonical)
        assert canonical_text(result.payload) == canonical  # re-encoding is stable
        assert (result.workspace, result.idempotency_key, result.kind) == (
            obj["workspace"],
            obj["idempotency_key"],
            obj["kind"],
        )
        if "id" in obj:
            assert result.id == obj["id"].lower()
        assert result.correlation_id == (obj.get("correlation_id") or result.id)
        assert result.causation_id == obj.get("causation_id")
        if "submitted_at" in obj:
            assert parse_instant(result.submitted_at) == parse_instant(obj["submitted_at"])
        else:
            assert result.submitted_at == NOW_TEXT
        assert len(result.submitted_at) == len(NOW_TEXT)
        assert result.submitted_at.endswith("Z")
        draft = draft_for(form, NOW_TEXT)
        assert draft.status == "accepted"
        assert draft.payload == canonical
        assert (draft.workspace, draft.idempotency_key) == (
            obj["workspace"],
            obj["idempotency_key"],
        )
        assert json.loads(draft.errors) == []
        storable(draft)


def test_round_trip_keeps_tricky_numbers_and_text() -> None:
    payload = {
        "b": [1e-07, 1e21, 2.5, -0.0, 10**25, 0],
        "a": {"é": '✓\u2028\n\t"\\', "\x00": None},
        "": True,
    }
    raw = json.dumps(envelope(9, payload=payload)).encode()
    result = parse_envelope(raw, NOW_TEXT)
    assert isinstance(result, Envelope)
    assert result.payload_json == canonical_text(payload)
    assert result.payload_json.startswith('{"":true,"a":{"\\u0000":null,"é":"✓\u2028\\n\\t')


# --------------------------------------------------------------------------------------
# (c) group commit: concurrent ingest calls from many tasks


def test_concurrent_ingest_calls_share_commits(database: str) -> None:
    tasks_count, rounds = 24, 3

    def batch_for(task: int, round_: int) -> list[Any]:
        # keys overlap with the neighbouring tasks' keys; one bad line is shared by all
        start = task * 40 + round_ * 7
        batch: list[Any] = [
            line(envelope(k, WORKSPACES[k % 3], payload={"k": k})) for k in range(start, start + 80)
        ]
        batch.append(b"{shared bad line")
        batch.append(line(envelope(task, "acme", kind="job")))  # bad, distinct per task
        if task % 2:
            batch.append(envelope(10_000 + task, "beta"))  # a dict input, unique
        return batch

    async def main() -> tuple[list[list[list[IngestResult]]], int, int]:
        db = await open_database(database)
        try:
            async with Writer(db) as writer:
                ingestor = Ingestor(writer)

                async def worker(task: int) -> list[list[IngestResult]]:
                    out = []
                    for round_ in range(rounds):
                        out.append(await ingestor.ingest(batch_for(task, round_)))
                        await asyncio.sleep(0)
                    return out

                results = await asyncio.gather(*(worker(t) for t in range(tasks_count)))
                return results, writer.commits, writer.ops
        finally:
            await db.dispose()

    results, commits, ops = run(main())
    calls = tasks_count * rounds
    assert ops == calls
    assert commits < calls, f"{commits} commits for {calls} calls: no group commit"

    receipts_by_key: dict[tuple[str, str], set[str]] = {}
    accepted_per_key: Counter[tuple[str, str]] = Counter()
    bad_receipts: set[str] = set()
    shared_bad: set[str] = set()
    for task, per_round in enumerate(results):
        for round_, batch_results in enumerate(per_round):
            batch = batch_for(task, round_)
            assert len(batch_results) == len(batch)
            for raw, result in zip(batch, batch_results, strict=True):
                obj = raw if isinstance(raw, dict) else None
                if obj is None:
                    try:
                        obj = json.loads(raw)
                    except ValueError:
                        obj = None
                if obj is None or obj.get("kind") == "job":
                    assert result.status == "rejected"
                    (shared_bad if obj is None else bad_receipts).add(result.receipt)
                    continue
                key = (obj["workspace"], obj["idempotency_key"])
                assert result.status in ("accepted", "duplicate"), result
                assert result.errors == ()
                receipts_by_key.setdefault(key, set()).add(result.receipt)
                accepted_per_key[key] += result.status == "accepted"
    assert all(len(ids) == 1 for ids in receipts_by_key.values())
    assert set(accepted_per_key.values()) == {1}
    assert len(shared_bad) == 1 and len(bad_receipts) == tasks_count

    rows = receipt_rows(database)
    stored = {
        (r["workspace"], r["idempotency_key"]): r["id"] for r in rows if r["status"] == "accepted"
    }
    assert len(stored) == sum(r["status"] == "accepted" for r in rows)
    assert stored == {key: next(iter(ids)) for key, ids in receipts_by_key.items()}
    assert {r["id"] for r in rows if r["status"] == "rejected"} == bad_receipts | shared_bad
    counts, verified = status_and_verify(database, [None])
    assert verified.ok, verified
    statuses = Counter(r.status for per_round in results for b in per_round for r in b)
    assert statuses["rejected"] == 2 * calls  # two bad lines per call, some of them re-sent
    assert counts[None]["receipts"] == {
        "accepted": len(stored),
        "duplicate": statuses["duplicate"],
        "rejected": len(bad_receipts) + 1,
    }


# --------------------------------------------------------------------------------------
# (d) two OS processes ingesting overlapping keys into one database


CHILD = """
import asyncio, json, os, sys, time
from pathlib import Path
from quarterdeck.runtime.ingest import Ingestor
from quarterdeck.store.database import open_database
from quarterdeck.store.receipts import RAW_KEEP_BYTES
from quarterdeck.store.writer import Writer

db_path, first, last, step, batch, ready, go, out = sys.argv[1:]
keys = list(range(int(first), int(last), int(step)))


async def main():
    db = await open_database(db_path)
    lines = [
        json.dumps({"idempotency_key": f"key-{k}", "workspace": "acme" if k % 2 else "beta",
                    "kind": "task", "payload": {"k": k}}).encode()
        for k in keys
    ]
    Path(ready).touch()
    while not os.path.exists(go):
        time.sleep(0.001)
    results = []
    began = time.time()
    async with Writer(db) as writer:
        ingestor = Ingestor(writer)
        for start in range(0, len(lines), int(batch)):
            for key, result in zip(keys[start:], await ingestor.ingest(lines[start:start + int(batch)])):
                results.append([key, result.status, result.receipt, list(result.errors)])
        commits = writer.commits
    await db.dispose()
    ended = time.time()
    Path(out).write_text(json.dumps(
        {"results": results, "commits": commits, "began": began, "ended": ended}
    ))


asyncio.run(main())
"""


def test_two_processes_ingest_overlapping_keys(tmp_path: Path, database: str) -> None:
    async def create() -> None:
        db = await open_database(database)
        await db.dispose()

    run(create())
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    go = tmp_path / "go"
    # One process walks keys upwards, the other downwards: they meet in the overlap.
    plans = {"up": ("0", "6000", "1", "50"), "down": ("8999", "2999", "-1", "37")}
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    procs = {}
    for name, (first, last, step, batch) in plans.items():
        args = [database, first, last, step, batch, str(tmp_path / f"{name}.ready"), str(go)]
        args.append(str(tmp_path / f"{name}.json"))
        procs[name] = subprocess.Popen(
            [sys.executable, str(script), *args], env=env, stderr=subprocess.PIPE
        )
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"{name}.ready").exists() for name in plans):
        assert all(p.poll() is None for p in procs.values()), "a child died before starting"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    go.touch()
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{name}: {err.decode(errors='replace')}"

    outputs = {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in plans}
    results = [r for out in outputs.values() for r in out["results"]]
    assert len(outputs["up"]["results"]) == 6000 and len(outputs["down"]["results"]) == 6000
    assert {status for _, status, _, _ in results} <= {"accepted", "duplicate"}
    assert all(errors == [] for *_, errors in results)

    rows = receipt_rows(database)
    per_key = Counter(r["idempotency_key"] for r in rows)
    assert set(per_key) == {f"key-{k}" for k in range(9000)}
    assert set(per_key.values()) == {1}, "a key has more than one receipt"
    receipt_of = {int(r["idempotency_key"].removeprefix("key-")): r["id"] for r in rows}
    accepted = Counter(key for key, status, _, _ in results if status == "accepted")
    assert all(accepted[k] == 1 for k in range(9000)), "a key was accepted twice or never"
    for key, _, receipt, _ in results:
        assert receipt == receipt_of[key]
    # they really ran side by side
    began = max(out["began"] for out in outputs.values())
    assert all(out["ended"] > began for out in outputs.values()), outputs.keys()

    counts, verified = status_and_verify(database, [None, "acme", "beta"])
    assert verified.ok, verified
    assert counts[None]["receipts"] == {"accepted": 9000, "duplicate": 3000, "rejected": 0}
    assert counts["acme"]["receipts"]["accepted"] == 4500
    commits = outputs["up"]["commits"] + outputs["down"]["commits"]
    assert verified.entries >= commits  # each commit recorded at least one ledger entry
