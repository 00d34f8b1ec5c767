"""Envelope v1 validation: every problem reported with its field path; canonical JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from quarterdeck.domain.canonical import canonical_json, canonical_text
from quarterdeck.domain.envelope import (
    MAX_LINE_BYTES,
    MAX_PAYLOAD_BYTES,
    Envelope,
    Rejection,
    parse_envelope,
)
from quarterdeck.domain.ids import is_uuid, new_id, new_ids

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)


def valid(**overrides: object) -> dict[str, object]:
    value: dict[str, object] = {
        "idempotency_key": "k-1",
        "workspace": "acme",
        "kind": "task",
        "payload": {"objective": "x"},
    }
    value.update(overrides)
    return value


def paths(result: Envelope | Rejection) -> list[str]:
    assert isinstance(result, Rejection), result
    return [error.path for error in result.errors]


def test_minimal_envelope_gets_defaults() -> None:
    result = parse_envelope(json.dumps(valid()), NOW)
    assert isinstance(result, Envelope)
    assert is_uuid(result.id)
    assert result.correlation_id == result.id
    assert result.causation_id is None
    assert result.schema_version == 1
    assert result.submitted_at == "2026-11-22T12:00:00.000000Z"
    assert result.payload == {"objective": "x"}


def test_given_fields_are_kept_and_normalised() -> None:
    envelope_id = new_id()
    result = parse_envelope(
        valid(
            id=envelope_id.upper(),
            correlation_id="corr",
            causation_id="cause",
            schema_version=1,
            submitted_at="2026-01-02T03:04:05+02:00",
        ),
        NOW,
    )
    assert isinstance(result, Envelope)
    assert result.id == envelope_id
    assert (result.correlation_id, result.causation_id) == ("corr", "cause")
    assert result.submitted_at == "2026-01-02T01:04:05.000000Z"


def test_every_problem_is_reported_with_its_path() -> None:
    result = parse_envelope(
        {
            "id": "not-a-uuid",
            "idempotency_key": "",
            "workspace": "Not A Slug",
            "kind": "job",
            "schema_version": 2,
            "correlation_id": 5,
            "submitted_at": "yesterday",
            "payload": [1, 2],
            "surprise": True,
        },
        NOW,
    )
    assert sorted(paths(result)) == sorted(
        [
            "surprise",
            "id",
            "idempotency_key",
            "workspace",
            "kind",
            "schema_version",
            "correlation_id",
            "submitted_at",
            "payload",
        ]
    )


@pytest.mark.parametrize(
    ("overrides", "path", "fragment"),
    [
        ({"idempotency_key": None}, "idempotency_key", "required"),
        ({"idempotency_key": 7}, "idempotency_key", "string"),
        ({"idempotency_key": "x" * 201}, "idempotency_key", "1-200"),
        ({"workspace": None}, "workspace", "required"),
        ({"workspace": "-lead"}, "workspace", "slug"),
        ({"workspace": "a" * 65}, "workspace", "slug"),
        ({"kind": None}, "kind", "required"),
        ({"kind": ["task"]}, "kind", "one of"),
        ({"schema_version": True}, "schema_version", "must be 1"),
        ({"schema_version": "1"}, "schema_version", "must be 1"),
        ({"causation_id": ""}, "causation_id", "1-200"),
        ({"submitted_at": "2026-01-01T00:00:00"}, "submitted_at", "time zone"),
        ({"payload": "text"}, "payload", "object"),
        ({"payload": None}, "payload", "object"),
    ],
)
def test_single_problems(overrides: dict[str, object], path: str, fragment: str) -> None:
    result = parse_envelope(valid(**overrides), NOW)
    assert isinstance(result, Rejection)
    assert [e.path for e in result.errors] == [path]
    assert fragment in result.errors[0].message


def test_missing_payload_is_required() -> None:
    data = valid()
    del data["payload"]
    result = parse_envelope(data, NOW)
    assert isinstance(result, Rejection)
    assert str(result.errors[0]) == "payload: is required"


def test_payload_limit_is_on_canonical_bytes() -> None:
    at_limit = {"p": "x" * (MAX_PAYLOAD_BYTES - len('{"p":""}'))}
    assert len(canonical_json(at_limit)) == MAX_PAYLOAD_BYTES
    assert isinstance(parse_envelope(valid(payload=at_limit), NOW), Envelope)
    over = {"p": at_limit["p"] + "x"}
    result = parse_envelope(valid(payload=over), NOW)
    assert isinstance(result, Rejection)
    assert "exceeds" in result.errors[0].message
    # Multi-byte characters count as their UTF-8 bytes.
    wide = {"p": "é" * (MAX_PAYLOAD_BYTES // 2)}
    assert isinstance(parse_envelope(valid(payload=wide), NOW), Rejection)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"", "empty line"),
        (b"   ", "empty line"),
        (b"{not json", "not JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[1, 2]", "must be a JSON object, got array"),
        (b'"text"', "got string"),
        (
            b'{"idempotency_key": "k", "workspace": "w", "kind": "task", "payload": {"x": NaN}}',
            "not JSON",
        ),
        (b"[" * 100_000, "not JSON"),
        (b"x" * (MAX_LINE_BYTES + 1), "line limit"),
    ],
)
def test_malformed_lines(raw: bytes, fragment: str) -> None:
    result = parse_envelope(raw, NOW)
    assert isinstance(result, Rejection)
    assert result.errors[0].path == "$"
    assert fragment in result.errors[0].message


def test_lone_surrogates_are_rejected_not_stored() -> None:
    raw = b'{"idempotency_key": "k\\ud800", "workspace": "w", "kind": "task", "payload": {"a": "\\udfff"}}'
    result = parse_envelope(raw, NOW)
    assert isinstance(result, Rejection)
    assert sorted(e.path for e in result.errors) == ["idempotency_key", "payload"]


def test_rejection_keeps_what_could_be_read() -> None:
    result = parse_envelope(valid(payload=3), NOW)
    assert isinstance(result, Rejection)
    assert (result.workspace, result.idempotency_key, result.kind) == ("acme", "k-1", "task")


def test_canonical_json_is_sorted_compact_utf8() -> None:
    value = {"b": 1, "a": {"d": [1, 2.5, None, True], "c": "é✓"}}
    assert canonical_text(value) == '{"a":{"c":"é✓","d":[1,2.5,null,true]},"b":1}'
    assert canonical_json(value) == canonical_text(value).encode("utf-8")
    with pytest.raises(ValueError):
        canonical_text({"x": float("nan")})


def test_new_ids_are_unique_time_ordered_uuid7() -> None:
    ids = [new_id() for _ in range(5_000)] + new_ids(5_000) + [new_id() for _ in range(10)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(is_uuid(i) and i[14] == "7" and i[19] in "89ab" for i in ids)
