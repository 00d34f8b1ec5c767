"""Envelope v1: the unit of ingress, and its validation.

The spec is ``docs/specs/envelope.md``. Validation never raises: it returns
either an :class:`Envelope` or every problem found, each with its field path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from quarterdeck.domain.canonical import canonical_text
from quarterdeck.domain.clock import format_instant, parse_instant
from quarterdeck.domain.ids import is_uuid, new_id

_quote = json.encoder.encode_basestring

SCHEMA_VERSION: Final = 1
KINDS: Final = ("task", "command", "event")
MAX_PAYLOAD_BYTES: Final = 256 * 1024
MAX_LINE_BYTES: Final = 1024 * 1024
MAX_KEY_CHARS: Final = 200
MAX_REF_CHARS: Final = 200
WORKSPACE_PATTERN: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
RUNTIME_WORKSPACE: Final = "_runtime"
"""Where the runtime's own items live (sessions, runtime-wide flags, alerts about lanes, the
policy file and SLOs); every workspace's view includes them; no envelope can name it."""
_MISSING: Final = object()
_NOT_UNICODE: Final = "holds a lone surrogate (\\ud800-\\udfff escape), which is not valid Unicode"
FIELDS: Final = frozenset(
    {
        "id",
        "idempotency_key",
        "correlation_id",
        "causation_id",
        "schema_version",
        "workspace",
        "kind",
        "payload",
        "submitted_at",
    }
)


@dataclass(frozen=True, slots=True)
class FieldError:
    """One validation problem: where it is (a field path) and what is wrong."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(slots=True)
class Envelope:
    """A valid v1 envelope. ``payload_json`` is the payload's canonical JSON text."""

    id: str
    idempotency_key: str
    correlation_id: str
    causation_id: str | None
    schema_version: int
    workspace: str
    kind: str
    payload_json: str
    submitted_at: str

    @property
    def payload(self) -> dict[str, Any]:
        """The payload as a fresh dict."""
        value: dict[str, Any] = json.loads(self.payload_json)
        return value

    def to_dict(self) -> dict[str, Any]:
        """The envelope as a JSON-ready dict with the payload decoded."""
        return {
            "id": self.id,
            "idempotency_key": self.idempotency_key,
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
            "schema_version": self.schema_version,
            "workspace": self.workspace,
            "kind": self.kind,
            "payload": self.payload,
            "submitted_at": self.submitted_at,
        }


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why an input is not a valid envelope, with whatever could be read of it."""

    errors: tuple[FieldError, ...]
    workspace: str | None = None
    idempotency_key: str | None = None
    kind: str | None = None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class DuplicateKey(ValueError):
    """A JSON object names the same key twice: which value was meant is ambiguous."""

    def __init__(self, key: str) -> None:
        super().__init__(f"duplicate key {_quote(printable(key))} in a JSON object")
        self.key = key


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return value


_DECODER: Final = json.JSONDecoder(
    parse_constant=_reject_constant, object_pairs_hook=_unique_object
)
_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f]")


def decode_line(raw: bytes | str) -> Any:
    """Decode one JSON text, refusing NaN and infinities and objects with a key twice.

    Raises:
        DuplicateKey: an object names a key twice.
        ValueError: the text is not UTF-8 or not JSON.
    """
    return _DECODER.decode(raw.decode("utf-8") if isinstance(raw, bytes) else raw)


@dataclass(frozen=True, slots=True)
class Oversized:
    """A line longer than :data:`MAX_LINE_BYTES`, as a bounded reader saw it: its first bytes,
    its full size and the SHA-256 of the whole (the rest was hashed, not kept)."""

    head: bytes
    size: int
    sha256: str

    def rejection(self) -> Rejection:
        """Why it is refused."""
        return Rejection(
            (FieldError("$", f"{self.size} bytes exceeds the {MAX_LINE_BYTES}-byte line limit"),)
        )


def parse_envelope(
    raw: bytes | str | Mapping[str, Any], now: datetime | str, default_id: str | None = None
) -> Envelope | Rejection:
    """Validate one input (a JSON line or an already-decoded object) as an envelope.

    Args:
        raw: the input as received.
        now: the time to stamp as ``submitted_at`` when the input has none (an instant, or
            its text as :func:`format_instant` writes it).
        default_id: the id to give an envelope that has none (a new UUIDv7 if not given).

    Returns:
        The envelope, or a :class:`Rejection` listing every problem with its path.
    """
    if isinstance(raw, bytes | str):
        if isinstance(raw, bytes):
            size = len(raw)
        else:
            # A character is at most 4 UTF-8 bytes: encode only when the limit is in reach.
            size = len(raw) if len(raw) * 4 <= MAX_LINE_BYTES else _utf8_size(raw)
        if size > MAX_LINE_BYTES:
            return Rejection(
                (FieldError("$", f"{size} bytes exceeds the {MAX_LINE_BYTES}-byte line limit"),)
            )
        if not raw.strip():
            return Rejection((FieldError("$", "empty line: expected one JSON object"),))
        try:
            data = decode_line(raw)
        except UnicodeDecodeError as exc:
            return Rejection((FieldError("$", f"not UTF-8: {exc.reason} at byte {exc.start}"),))
        except RecursionError:
            return Rejection((FieldError("$", "not JSON: nested too deeply"),))
        except DuplicateKey as exc:
            key = printable(exc.key)
            return Rejection(
                (
                    FieldError(
                        "$",
                        f"duplicate key {_quote(key)} in a JSON object: "
                        "which value is meant is ambiguous",
                    ),
                )
            )
        except ValueError as exc:
            return Rejection((FieldError("$", f"not JSON: {exc}"),))
    else:
        data = raw
    if not isinstance(data, Mapping):
        return Rejection((FieldError("$", f"must be a JSON object, got {_json_type(data)}"),))
    return validate_object(data, now, default_id)


def printable(text: str) -> str:
    """``text`` with any lone surrogate written as a backslash escape, so it can be stored."""
    return text if _is_unicode(text) else text.encode("utf-8", "backslashreplace").decode("utf-8")


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _is_unicode(text: str) -> bool:
    """Whether ``text`` can be stored as UTF-8 (JSON escapes can smuggle in lone surrogates)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def validate_object(
    data: Mapping[str, Any], now: datetime | str, default_id: str | None = None
) -> Envelope | Rejection:
    """Validate a decoded JSON object as an envelope, collecting every problem."""
    errors: list[FieldError] = []
    if not FIELDS.issuperset(data):
        for name in sorted(set(data) - FIELDS, key=str):
            errors.append(FieldError(printable(str(name)), "unknown field"))

    envelope_id = data.get("id")
    if envelope_id is None:
        envelope_id = default_id or new_id()
    elif type(envelope_id) is not str or not is_uuid(envelope_id):
        errors.append(FieldError("id", "must be a UUID in hyphenated form"))

    key = data.get("idempotency_key")
    if key is None:
        errors.append(FieldError("idempotency_key", "is required"))
    elif type(key) is not str:
        errors.append(FieldError("idempotency_key", f"must be a string, got {_json_type(key)}"))
        key = None
    elif not 1 <= len(key) <= MAX_KEY_CHARS:
        errors.append(
            FieldError("idempotency_key", f"must be 1-{MAX_KEY_CHARS} characters, got {len(key)}")
        )
        key = None
    elif not _is_unicode(key):
        errors.append(FieldError("idempotency_key", _NOT_UNICODE))
        key = None

    workspace = data.get("workspace")
    if workspace is None:
        errors.append(FieldError("workspace", "is required"))
    elif type(workspace) is not str:
        errors.append(FieldError("workspace", f"must be a string, got {_json_type(workspace)}"))
        workspace = None
    elif not WORKSPACE_PATTERN.fullmatch(workspace):
        errors.append(
            FieldError(
                "workspace",
                "must be a slug: 1-64 of a-z 0-9 _ -, starting with a letter or digit",
            )
        )
        workspace = None

    kind = data.get("kind")
    if kind is None:
        errors.append(FieldError("kind", "is required"))
    elif type(kind) is not str or kind not in KINDS:
        errors.append(FieldError("kind", f"must be one of {', '.join(KINDS)}, got {kind!r}"))
        kind = None

    schema_version = data.get("schema_version", SCHEMA_VERSION)
    if type(schema_version) is not int or schema_version != SCHEMA_VERSION:
        errors.append(
            FieldError("schema_version", f"must be {SCHEMA_VERSION}, got {schema_version!r}")
        )

    correlation_id = data.get("correlation_id")
    if correlation_id is not None:
        correlation_id = _check_ref("correlation_id", correlation_id, errors)
    causation_id = data.get("causation_id")
    if causation_id is not None:
        causation_id = _check_ref("causation_id", causation_id, errors)

    submitted_at = data.get("submitted_at")
    if submitted_at is None:
        submitted_text = now if isinstance(now, str) else format_instant(now)
    elif type(submitted_at) is not str:
        errors.append(FieldError("submitted_at", "must be an ISO-8601 string with a time zone"))
        submitted_text = ""
    elif (control := _CONTROL.search(submitted_at)) is not None:
        errors.append(
            FieldError(
                "submitted_at",
                f"holds control character U+{ord(control.group()):04X}: "
                "must be an ISO-8601 instant with a time zone",
            )
        )
        submitted_text = ""
    else:
        try:
            submitted_text = format_instant(parse_instant(submitted_at))
        except (ValueError, OverflowError):
            errors.append(
                FieldError("submitted_at", "must be an ISO-8601 instant with a time zone")
            )
            submitted_text = ""

    payload_json = ""
    payload = data.get("payload", _MISSING)
    if payload is _MISSING:
        errors.append(FieldError("payload", "is required"))
    elif not isinstance(payload, Mapping):
        errors.append(FieldError("payload", f"must be a JSON object, got {_json_type(payload)}"))
    else:
        try:
            payload_json = canonical_text(payload)
        except (TypeError, ValueError) as exc:
            errors.append(FieldError("payload", f"not expressible as JSON: {exc}"))
        else:
            size = len(payload_json)
            if size * 4 > MAX_PAYLOAD_BYTES:
                size = _utf8_size(payload_json)
            if not _is_unicode(payload_json):
                errors.append(FieldError("payload", _NOT_UNICODE))
            elif size > MAX_PAYLOAD_BYTES:
                errors.append(
                    FieldError(
                        "payload",
                        f"canonical size {size} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit",
                    )
                )

    if errors:
        return Rejection(tuple(errors), workspace, key, kind)
    assert isinstance(envelope_id, str) and isinstance(key, str)
    assert isinstance(workspace, str) and isinstance(kind, str)
    return Envelope(
        id=envelope_id.lower(),
        idempotency_key=key,
        correlation_id=correlation_id or envelope_id.lower(),
        causation_id=causation_id,
        schema_version=SCHEMA_VERSION,
        workspace=workspace,
        kind=kind,
        payload_json=payload_json,
        submitted_at=submitted_text,
    )


def _check_ref(name: str, value: object, errors: list[FieldError]) -> str | None:
    if type(value) is not str or not 1 <= len(value) <= MAX_REF_CHARS:
        errors.append(FieldError(name, f"must be a string of 1-{MAX_REF_CHARS} characters or null"))
        return None
    if not _is_unicode(value):
        errors.append(FieldError(name, _NOT_UNICODE))
        return None
    return value


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__
