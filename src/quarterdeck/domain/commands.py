"""The command catalogue: one frozen, typed class per supervisor command, its validation, and
its wire form (``{"command": NAME, ...fields}``, see ``docs/specs/supervision.md``).

Each field's kind carries the one message a bad value gets, so a refused payload lists every
problem as ``payload.<field>: <message>``. Unknown fields are accepted and dropped. A field
name means the same thing throughout the catalogue: a command carrying a field that another
command types (``on``, ``for_s``, ``deliverable``, ``args``, ``filter``) gets it checked the
same way, although it ignores it. Optional text such as ``reason`` is read leniently: anything
but non-empty text reads as absent.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, ClassVar, Final, TypeAlias, get_args

from pydantic import BaseModel, ConfigDict, PlainValidator, ValidationError
from pydantic_core import PydanticCustomError, core_schema

from quarterdeck.domain.envelope import WORKSPACE_PATTERN
from quarterdeck.domain.tokens import HASH_SHAPE, ID_SHAPE, NAME_SHAPE, is_instant


class Check:
    """A field kind's check and the one message a value that fails it gets. ``shared``: the
    field is checked on every command that carries it, not only on those that declare it."""

    def __init__(
        self, message: str, accepts: Callable[[Any], bool], *, shared: bool = False
    ) -> None:
        self.message = message
        self.accepts = accepts
        self.shared = shared

    def __call__(self, value: Any) -> Any:
        if not self.accepts(value):
            raise PydanticCustomError("command_field", self.message)
        return dict(value) if isinstance(value, Mapping) else value

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(self)


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _is_seconds(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 10**9


def _text_or_none(value: Any) -> str | None:
    return value if _is_text(value) else None


def _number_or_none(value: Any) -> int | float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


_TEXT: Final = Check("is required", _is_text)
_FLAG: Final = Check("must be true or false", lambda v: isinstance(v, bool), shared=True)
_SECONDS: Final = Check("must be a number of seconds greater than 0", _is_seconds, shared=True)
_OBJECT: Final = Check("must be an object", lambda v: isinstance(v, Mapping), shared=True)

Text = Annotated[str, _TEXT]
"""Required non-empty text (an id, a lane, a tool)."""
Flag = Annotated[bool, _FLAG]
"""``true`` or ``false``."""
Seconds = Annotated[float, _SECONDS]
"""A number of seconds, greater than 0 (and below 10**9)."""
Object = Annotated[Mapping[str, Any], _OBJECT]
"""A JSON object."""
OptionalSeconds = Annotated[float | None, _SECONDS]
"""Seconds, or absent (an explicit ``null`` is refused)."""
OptionalObject = Annotated[Mapping[str, Any] | None, _OBJECT]
"""An object, or absent (an explicit ``null`` is refused)."""
OptionalText = Annotated[str | None, PlainValidator(_text_or_none)]
"""Text, or absent: anything but non-empty text reads as absent."""
OptionalNumber = Annotated[float | None, PlainValidator(_number_or_none)]
"""A number, or absent: anything but a number reads as absent."""
Truthy = Annotated[bool, PlainValidator(bool)]
"""Read for its truth value."""


class BaseCommand(BaseModel):
    """A supervisor command: ``name`` on the wire and its own fields. Who gives it is never
    part of it: the principal that sends it is authenticated by whoever receives it."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: ClassVar[str]

    def to_payload(self) -> dict[str, Any]:
        """The wire payload: ``{"command": NAME, ...}`` with the fields not at their default."""
        return {"command": self.name, **self.model_dump(exclude_defaults=True)}


# --- lanes ---------------------------------------------------------------------------------------


class _LaneCommand(BaseCommand):
    lane: Text


class LanePause(_LaneCommand):
    """Stop dispatching new work on ``lane``."""

    name: ClassVar[str] = "lane.pause"


class LaneResume(_LaneCommand):
    """Dispatch on ``lane`` again."""

    name: ClassVar[str] = "lane.resume"


class LaneForceFallback(_LaneCommand):
    """Send ``lane``'s next work to its fallback lane (``on``), or stop doing so."""

    name: ClassVar[str] = "lane.force_fallback"
    on: Flag


class LaneShadow(_LaneCommand):
    """Run ``lane`` in shadow (``on``), or stop."""

    name: ClassVar[str] = "lane.shadow"
    on: Flag


class LaneRebaseline(_LaneCommand):
    """Accept ``lane``'s attested files as they are now."""

    name: ClassVar[str] = "lane.rebaseline"


class FallbackForce(BaseCommand):
    """Force fallback on every lane (``on``), or stop."""

    name: ClassVar[str] = "fallback.force"
    on: Flag


# --- turns ---------------------------------------------------------------------------------------


class _TurnCommand(BaseCommand):
    turn_id: Text


class TurnRequeue(_TurnCommand):
    """Give a held (dead-lettered) turn a fresh mission on its lane."""

    name: ClassVar[str] = "turn.requeue"


class TurnCancel(_TurnCommand):
    """End a turn that has not finished: its agent is stopped, its approvals rejected."""

    name: ClassVar[str] = "turn.cancel"


class TurnTakeover(_TurnCommand):
    """Take a live turn over: its agent is stopped and a person holds it."""

    name: ClassVar[str] = "turn.takeover"


class TurnRelease(_TurnCommand):
    """Hand a taken-over turn back to its lane."""

    name: ClassVar[str] = "turn.release"


class TurnComplete(_TurnCommand):
    """Complete a taken-over turn with the person's ``deliverable``."""

    name: ClassVar[str] = "turn.complete"
    deliverable: Object


# --- approvals -----------------------------------------------------------------------------------


class _ApprovalCommand(BaseCommand):
    approval_id: Text


class ApprovalApprove(_ApprovalCommand):
    """Approve; with ``args``, approve with these arguments instead (an edit). A given
    ``action_key`` must be the approval's own."""

    name: ClassVar[str] = "approval.approve"
    args: OptionalObject = None
    action_key: OptionalText = None
    reason_code: OptionalText = None
    reason: OptionalText = None


class ApprovalReject(_ApprovalCommand):
    """Reject with a ``reason_code`` from the policy's list (and optional ``reason`` text)."""

    name: ClassVar[str] = "approval.reject"
    reason_code: Text
    args: OptionalObject = None
    action_key: OptionalText = None
    reason: OptionalText = None


class ApprovalEscalate(_ApprovalCommand):
    """Escalate to the ladder's next role."""

    name: ClassVar[str] = "approval.escalate"


class ApprovalSnooze(_ApprovalCommand):
    """Hide the approval for ``for_s`` seconds (its deadline moves to at least then)."""

    name: ClassVar[str] = "approval.snooze"
    for_s: Seconds


class ApprovalClaim(_ApprovalCommand):
    """Hold the approval for ``for_s`` seconds (default: the configured claim time)."""

    name: ClassVar[str] = "approval.claim"
    for_s: OptionalSeconds = None


class ApprovalUnclaim(_ApprovalCommand):
    """Let go of a claim."""

    name: ClassVar[str] = "approval.unclaim"
    for_s: OptionalSeconds = None


class ApprovalBulk(BaseCommand):
    """Decide every open approval matching ``filter`` (``lane``, ``tool``, ``approver`` globs,
    ``kind``) in this workspace, or in all of them. The store checks ``decision``."""

    name: ClassVar[str] = "approval.bulk"
    decision: Text
    filter: Object = {}
    reason_code: OptionalText = None
    reason: OptionalText = None
    all_workspaces: Truthy = False


class ApprovalRequest(BaseCommand):
    """An SDK caller asks to run ``tool`` with ``args`` (decided now or bound to an approval;
    asking again with the same ``action_id`` gets the same answer)."""

    name: ClassVar[str] = "approval.request"
    action_id: Text
    tool: Text
    args: Object = {}
    lane: OptionalText = None
    estimated_cost: OptionalNumber = None


# --- alerts --------------------------------------------------------------------------------------


class _AlertCommand(BaseCommand):
    alert_id: Text


class AlertAck(_AlertCommand):
    """Acknowledge an alert."""

    name: ClassVar[str] = "alert.ack"


class AlertResolve(_AlertCommand):
    """Resolve an alert."""

    name: ClassVar[str] = "alert.resolve"


# --- tokens --------------------------------------------------------------------------------------


_NAME_MESSAGE: Final = "must be 1 to 64 letters, digits, dots, dashes or underscores"
_WORKSPACE_MESSAGE: Final = "must be a workspace name (a-z, 0-9, _ and -, at most 64)"


def _shaped(shape: re.Pattern[str], optional: bool = False) -> Callable[[Any], bool]:
    return lambda v: (optional and v is None) or (isinstance(v, str) and bool(shape.fullmatch(v)))


TokenId = Annotated[str, Check("must be 12 lower-case hex digits", _shaped(ID_SHAPE))]
"""A token's id."""
TokenName = Annotated[str, Check(_NAME_MESSAGE, _shaped(NAME_SHAPE))]
"""A token's principal name or role."""


class TokenCreate(BaseCommand):
    """Store a bearer token for ``principal`` (``token:<principal>``) with ``role``, pinned to
    ``workspace`` when given, until ``expires_at`` when given. The client made the token and
    sends only its id and its secret's SHA-256: the secret never leaves it."""

    name: ClassVar[str] = "token.create"
    token_id: TokenId
    principal: TokenName
    role: TokenName
    secret_hash: Annotated[
        str, Check("must be a SHA-256 in lower-case hex (never the secret)", _shaped(HASH_SHAPE))
    ]
    workspace: Annotated[
        str | None, Check(_WORKSPACE_MESSAGE, _shaped(WORKSPACE_PATTERN, True))
    ] = None
    expires_at: Annotated[
        str | None,
        Check(
            "must be an instant like 2027-01-31T12:00:00.000000Z",
            lambda v: v is None or is_instant(v),
        ),
    ] = None


class TokenRevoke(BaseCommand):
    """Revoke a token: it authenticates nobody from now on."""

    name: ClassVar[str] = "token.revoke"
    token_id: TokenId


Command: TypeAlias = (
    LanePause | LaneResume | LaneForceFallback | LaneShadow | LaneRebaseline | FallbackForce
    | TurnRequeue | TurnCancel | TurnTakeover | TurnRelease | TurnComplete
    | ApprovalApprove | ApprovalReject | ApprovalEscalate | ApprovalSnooze | ApprovalClaim
    | ApprovalUnclaim | ApprovalBulk | ApprovalRequest | AlertAck | AlertResolve
    | TokenCreate | TokenRevoke
)  # fmt: skip
"""Any supervisor command."""

CATALOGUE: Final[Mapping[str, type[Command]]] = {cls.name: cls for cls in get_args(Command)}
"""Every command by its wire name."""


def _check(cls: type[BaseCommand], field: str) -> Check | None:
    return next((m for m in cls.model_fields[field].metadata if isinstance(m, Check)), None)


_SHARED: Final[Mapping[str, Check]] = {
    field: check
    for cls in CATALOGUE.values()
    for field in cls.model_fields
    if (check := _check(cls, field)) is not None and check.shared
}
"""Fields checked on every command that carries them, with their check."""


ACTOR_REFUSED: Final = (
    "a command names no actor: it is given by the authenticated principal that sends it "
    "(free text goes in reason, the CLI's --note)"
)
"""The problem of a payload that names an ``actor``."""


def parse_command(payload: Mapping[str, Any]) -> Command | list[str]:
    """Read a command payload (``{"command": NAME, ...fields}``); return the command or every
    problem (``payload.<field>: ...``). A payload naming an ``actor`` is refused: who gives a
    command is the principal that sends it, never a name in it."""
    name = payload.get("command")
    cls = CATALOGUE.get(name) if isinstance(name, str) else None
    if cls is None:
        return [f"payload.command: must be one of {', '.join(sorted(CATALOGUE))}, got {name!r}"]
    problems: dict[str, str] = {}
    if "actor" in payload:
        problems["actor"] = ACTOR_REFUSED
    try:
        command = cls.model_validate(dict(payload))
    except ValidationError as exc:
        command = None
        problems.update(_problems(cls, exc))
    for field, check in _SHARED.items():
        if field in payload and field not in cls.model_fields and not check.accepts(payload[field]):
            problems[field] = check.message
    if command is None or problems:
        return _listed(problems)
    return command


def problems_of(error: ValidationError) -> list[str]:
    """The problems of a command built with values the catalogue refuses (``error`` raised by
    its class), listed as :func:`parse_command` lists them."""
    cls = next(c for c in CATALOGUE.values() if c.__name__ == error.title)
    return _listed(_problems(cls, error))


def _problems(cls: type[BaseCommand], error: ValidationError) -> dict[str, str]:
    """Each field's first problem: its kind's message (also when it is missing)."""
    problems: dict[str, str] = {}
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else "command"
        check = _check(cls, field) if field in cls.model_fields else None
        problems.setdefault(field, item["msg"] if check is None else check.message)
    return problems


def _listed(problems: Mapping[str, str]) -> list[str]:
    """``payload.<field>: <message>`` for each, ``actor`` last."""
    last = {"actor": 1}
    order = sorted(problems, key=lambda field: last.get(field, 0))
    return [f"payload.{field}: {problems[field]}" for field in order]
