"""Agent CLI hooks (Claude Code, Codex), as pure rules: reading a hook's JSON input, the action
id of a tool call, the workspace a working directory maps to, the ruling that comes back from
the policy or a person, and the answer each CLI expects on stdout.

Nothing here does I/O: the command hook (``cli/hook.py``) and the control API's hook routes
(``runtime/api_hooks.py``) share these functions, so a call gets the same answer either way.
Both CLIs let a tool run unless the answer says ``deny`` (or the hook exits 2): every answer
built here is explicit.

Stopping Claude Code takes two answers (measured with 2.1.197): a denied call never ends its
loop, whatever the denial carries (``continue: false`` included: the denial goes back to the
model, which asks again), and ``continue: false`` on a call that is not denied ends the loop
only after the tool ran. What ends it with nothing run is the deny of the call and then
``continue: false`` from ``PostToolBatch``, which Claude Code runs after each batch of tool
calls, before its next model request.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

TYPE_CHECKING = False  # not typing's: the command hook imports this module on each call
if TYPE_CHECKING:
    from typing import Any, Final

CLAUDE_CODE: Final = "claude-code"
CODEX: Final = "codex"
AGENTS: Final = (CLAUDE_CODE, CODEX)
"""The CLIs whose hooks are understood (also the lane their actions are decided on)."""
GATE_EVENTS: Final = frozenset({"PreToolUse", "PermissionRequest"})
"""Events that ask whether a tool call may run."""
RECORDED_EVENTS: Final = frozenset(
    {"PostToolUse", "UserPromptSubmit", "SessionStart", "SessionEnd", "Notification", "Stop"}
)
"""Events that are only recorded (their answer lets the agent go on)."""
BATCH_EVENTS: Final = frozenset({"PostToolBatch"})
"""Events that ask whether the agent may go on after a batch of tool calls (Claude Code's
``PostToolBatch``, before its next model request): not once its turn was taken over or
cancelled."""
STILL_WAITING: Final = "still waiting for a supervisor: ask again"
"""The reason given when the hook's own deadline comes before a person decided."""
MAX_RESULT_CHARS: Final = 16 * 1024
"""How much of a tool's result goes on the record (its full size and SHA-256 always do)."""
MAX_TEXT_CHARS: Final = 4096
"""How much of a prompt or a notification goes on the record."""
MAX_ID_CHARS: Final = 200


class HookInputError(ValueError):
    """The hook's input is not what the CLI sends; the message names the field."""


class _Value:
    """An immutable record compared by value, with slots (what ``@dataclass(frozen=True,
    slots=True)`` makes; written out because generating those methods costs the command hook,
    which imports this module on each tool call, ~10 ms a start)."""

    __slots__: tuple[str, ...] = ()

    def _set(self, **values: object) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: cannot set {name}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: cannot delete {name}")

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, _Value)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({shown})"


class HookEvent(_Value):
    """One hook invocation as read from the CLI's JSON input; ``extra`` is what a recorded
    event carries besides (prompt, message, source, reason, result)."""

    __slots__ = (
        "agent",
        "cwd",
        "event",
        "extra",
        "model",
        "permission_mode",
        "session_id",
        "tool_input",
        "tool_name",
        "tool_use_id",
        "turn_id",
    )  # fmt: skip
    agent: str
    event: str
    session_id: str
    cwd: str
    tool_name: str | None
    tool_input: Mapping[str, Any]
    tool_use_id: str | None
    turn_id: str | None
    model: str | None
    permission_mode: str | None
    extra: Mapping[str, Any]

    def __init__(
        self,
        agent: str,
        event: str,
        session_id: str,
        cwd: str,
        tool_name: str | None = None,
        tool_input: Mapping[str, Any] | None = None,
        tool_use_id: str | None = None,
        turn_id: str | None = None,
        model: str | None = None,
        permission_mode: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self._set(
            agent=agent, event=event, session_id=session_id, cwd=cwd, tool_name=tool_name,
            tool_input={} if tool_input is None else tool_input, tool_use_id=tool_use_id,
            turn_id=turn_id, model=model, permission_mode=permission_mode,
            extra={} if extra is None else extra,
        )  # fmt: skip

    @property
    def gates(self) -> bool:
        """Whether this event asks whether a tool call may run."""
        return self.event in GATE_EVENTS

    @property
    def asks_to_go_on(self) -> bool:
        """Whether this event asks whether the agent may go on after a batch of calls."""
        return self.event in BATCH_EVENTS


def _text(data: Mapping[str, Any], name: str, *, required: bool) -> str | None:
    value = data.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise HookInputError(f"{name}: must be a non-empty string, got {_shown(value)}")
    if len(value) > MAX_ID_CHARS and name in ("session_id", "tool_use_id", "turn_id"):
        raise HookInputError(f"{name}: longer than {MAX_ID_CHARS} characters")
    return value


def _shown(value: object) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_event(agent: str, data: object) -> HookEvent:
    """Read one hook input of ``agent``.

    Raises:
        HookInputError: naming the first field that is missing or of the wrong type.
    """
    if agent not in AGENTS:
        raise HookInputError(f"agent: must be one of {', '.join(AGENTS)}, got {agent!r}")
    if not isinstance(data, Mapping):
        raise HookInputError(f"the hook input must be a JSON object, got {_shown(data)}")
    event = _text(data, "hook_event_name", required=True)
    session = _text(data, "session_id", required=True)
    cwd = _text(data, "cwd", required=True)
    assert event is not None and session is not None and cwd is not None
    if event not in GATE_EVENTS | RECORDED_EVENTS | BATCH_EVENTS:
        raise HookInputError(f"hook_event_name: {event!r} is not an event Quarterdeck handles")
    tool_name = tool_use_id = None
    tool_input: Mapping[str, Any] = {}
    if event in GATE_EVENTS or event == "PostToolUse":
        tool_name = _text(data, "tool_name", required=True)
        raw_input = data.get("tool_input")
        if not isinstance(raw_input, Mapping):
            raise HookInputError(f"tool_input: must be a JSON object, got {_shown(raw_input)}")
        tool_input = dict(raw_input)
        tool_use_id = _text(data, "tool_use_id", required=event != "PermissionRequest")
    extra: dict[str, Any] = {}
    for name in (
        "prompt",
        "prompt_id",
        "message",
        "title",
        "notification_type",
        "source",
        "reason",
    ):
        value = data.get(name)
        if isinstance(value, str):
            extra[name] = value[:MAX_TEXT_CHARS]
    if event == "PostToolUse":
        extra["result"] = capped_result(data.get("tool_response"))
    return HookEvent(
        agent=agent, event=event, session_id=session, cwd=cwd, tool_name=tool_name,
        tool_input=tool_input, tool_use_id=tool_use_id,
        turn_id=_text(data, "turn_id", required=False),
        model=data.get("model") if isinstance(data.get("model"), str) else None,
        permission_mode=(
            data.get("permission_mode") if isinstance(data.get("permission_mode"), str) else None
        ),
        extra=extra,
    )  # fmt: skip


def _sha256(data: bytes) -> str:
    import hashlib  # here, not at the top: OpenSSL costs the command hook ~20 ms per call

    return hashlib.sha256(data).hexdigest()


def _digest(value: object) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return _sha256(text.encode("utf-8", "surrogatepass"))


def action_id(event: HookEvent) -> str:
    """The stable id of a tool call: ``<agent>:<session>:<tool_use_id>``, so that asking again
    for the same call (a retry, the http and the command hook) binds to the same decision.
    Without a ``tool_use_id`` (a Claude Code ``PermissionRequest``), the call is named by its
    tool and input instead."""
    call = event.tool_use_id
    if call is None:
        call = "call-" + _digest([event.turn_id, event.tool_name, event.tool_input])[:32]
    return f"{event.agent}:{event.session_id}:{call}"


def capped_result(value: object) -> dict[str, Any]:
    """A tool's result as recorded: its JSON text cut at :data:`MAX_RESULT_CHARS`, with the
    full text's size and SHA-256."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    data = text.encode("utf-8", "surrogatepass")
    return {
        "text": text[:MAX_RESULT_CHARS],
        "size": len(data),
        "sha256": _sha256(data),
        "truncated": len(text) > MAX_RESULT_CHARS,
    }


def event_record(event: HookEvent) -> dict[str, Any]:
    """The payload of the event envelope that records ``event``."""
    record: dict[str, Any] = {
        "hook": event.agent, "event": event.event, "session": event.session_id,
        "cwd": event.cwd, **event.extra,
    }  # fmt: skip
    for name in ("model", "permission_mode", "turn_id", "tool_name", "tool_use_id"):
        value = getattr(event, name)
        if value is not None:
            record[name] = value
    if event.tool_name is not None:
        record["action_id"] = action_id(event)
    return record


def record_key(event: HookEvent) -> str:
    """The idempotency key of the envelope recording ``event``: a redelivery of the same
    event is a duplicate."""
    if event.tool_name is not None:
        return f"hook:{action_id(event)}:{event.event}"[:200]
    digest = _digest(event_record(event))[:32]
    return f"hook:{event.agent}:{event.session_id}:{event.event}:{digest}"[:200]


def within(path: str, prefix: str) -> bool:
    """Whether ``path`` is ``prefix`` or inside it (whole path components, both absolute)."""
    base = prefix.rstrip("/") or "/"
    return path == base or base == "/" or path.startswith(base + "/")


def workspace_for(cwd: str, prefixes: Sequence[tuple[str, str]], default: str | None) -> str | None:
    """The workspace of the longest ``(prefix, workspace)`` that holds ``cwd``; ``default``
    when none does."""
    best: tuple[int, str] | None = None
    for prefix, workspace in prefixes:
        if within(cwd, prefix) and (best is None or len(prefix) > best[0]):
            best = (len(prefix), workspace)
    return default if best is None else best[1]


def hook_origin(data: object) -> dict[str, str]:
    """The session and ``cwd`` an approval's ``data`` names when an agent CLI's hook asked
    for it (``{}`` otherwise), to show beside the call."""
    hook = data.get("hook") if isinstance(data, Mapping) else None
    if not isinstance(hook, Mapping):
        return {}
    return {k: hook[k] for k in ("session", "cwd") if isinstance(hook.get(k), str)}


# --- rulings and answers -----------------------------------------------------------------------


class Ruling(_Value):
    """What Quarterdeck says about a tool call: ``allow``, ``deny`` or ``pending`` (a person
    has not decided yet), why, the input a person edited it to, the approval, and ``stop``: a
    person took the turn over or cancelled it, so the agent must stop (a ``deny``)."""

    __slots__ = ("approval", "reason", "stop", "updated_input", "verdict")
    verdict: str
    reason: str
    updated_input: Mapping[str, Any] | None
    approval: str | None
    stop: bool

    def __init__(
        self,
        verdict: str,
        reason: str = "",
        updated_input: Mapping[str, Any] | None = None,
        approval: str | None = None,
        stop: bool = False,
    ) -> None:
        self._set(
            verdict=verdict, reason=reason, updated_input=updated_input, approval=approval,
            stop=stop,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """The JSON form the control API answers with."""
        return {
            "verdict": self.verdict, "reason": self.reason,
            "updated_input": None if self.updated_input is None else dict(self.updated_input),
            "approval": self.approval, "stop": self.stop,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: object) -> Ruling:
        """Read the control API's answer.

        Raises:
            HookInputError: the answer is not a ruling.
        """
        if not isinstance(data, Mapping) or data.get("verdict") not in ("allow", "deny", "pending"):
            raise HookInputError(f"the daemon's answer is not a ruling: {_shown(data)}")
        updated = data.get("updated_input")
        approval = data.get("approval")
        return cls(
            str(data["verdict"]), str(data.get("reason") or ""),
            dict(updated) if isinstance(updated, Mapping) else None,
            approval if isinstance(approval, str) else None,
            data.get("stop") is True and data["verdict"] == "deny",
        )  # fmt: skip


GO_ON: Final = "the turn goes on"
"""The reason of the ruling that lets the agent go on after a batch of calls."""


def stop_ruling(turn: str, state: str, by: str | None, approval: str | None = None) -> Ruling:
    """The ruling once a person took the call's turn over or cancelled it."""
    done = "taken over" if state == "taken_over" else "cancelled"
    who = f" by {by}" if by else ""
    reason = f"Quarterdeck: turn {turn} was {done}{who}; stop here"
    return Ruling("deny", reason, None, approval, stop=True)


def ruling_of_request(result: Mapping[str, Any]) -> Ruling:
    """The ruling in an ``approval.request`` command's result."""
    if not result.get("ok"):
        errors = result.get("errors") or ["refused"]
        return Ruling("deny", "refused by Quarterdeck: " + "; ".join(map(str, errors)))
    verdict = str(result.get("verdict"))
    approval = result.get("approval") if isinstance(result.get("approval"), str) else None
    if verdict == "allow":
        return Ruling("allow", _rule_reason(result, "allowed"), _edited(result), approval)
    if verdict == "deny":
        reason = str(result.get("reason") or "") or _rule_reason(result, "denied")
        decided = _decided_reason(result) if result.get("reason_code") else ""
        return Ruling("deny", decided or reason, None, approval)
    return Ruling("pending", "waiting for a supervisor", None, approval)


def ruling_of_decision(decision: Mapping[str, Any]) -> Ruling:
    """The ruling once a person decided the approval (its state, edited arguments, reason)."""
    approval = decision.get("id") if isinstance(decision.get("id"), str) else None
    state = decision.get("state")
    if state in ("approved", "edited"):
        edited = decision.get("edited_args")
        if isinstance(edited, str):  # the stored JSON text
            try:
                edited = json.loads(edited)
            except ValueError:
                edited = None
        updated = dict(edited) if isinstance(edited, Mapping) else None
        who = decision.get("decided_by") or "a supervisor"
        return Ruling("allow", f"approved by {who}", updated, approval)
    if state in ("rejected", "expired"):
        reason = _decided_reason(
            {"reason_code": decision.get("reason_code"), "reason": decision.get("reason_text"),
             "decided_by": decision.get("decided_by"), "state": state}
        )  # fmt: skip
        return Ruling("deny", reason or f"the approval {state}", None, approval)
    return Ruling("pending", "waiting for a supervisor", None, approval)


def _rule_reason(result: Mapping[str, Any], what: str) -> str:
    rule = result.get("rule")
    return f"{what} by rule {rule}" if isinstance(rule, str) and rule else f"{what} by policy"


def _edited(result: Mapping[str, Any]) -> Mapping[str, Any] | None:
    effective, asked = result.get("effective_args"), result.get("args")
    if isinstance(effective, Mapping) and effective != asked:
        return dict(effective)
    return None


def _decided_reason(result: Mapping[str, Any]) -> str:
    """``rejected by alice: unsafe: not on prod`` from a decided approval's fields."""
    code, note = result.get("reason_code"), result.get("reason")
    if not code and not note:
        return ""
    state = result.get("state") or "rejected"
    who = result.get("decided_by")
    head = f"{state} by {who}" if who else str(state)
    return ": ".join(str(part) for part in (head, code, note) if part)


def answer(agent: str, event: str, ruling: Ruling) -> dict[str, Any]:
    """What ``agent`` reads on stdout for ``event`` given ``ruling`` (a ``pending`` ruling is
    answered as a deny that says to ask again: the CLI's own timeout never decides).

    A ruling that stops the agent is a deny; Claude Code's also carries ``continue: false``
    with the reason as its ``stopReason`` (2.1.197 ignores them on a denied call: its
    ``PostToolBatch`` answer, ``continue: false`` alone, is what ends the loop). Codex hears
    the deny and its reason."""
    if event in BATCH_EVENTS:
        return {"continue": False, "stopReason": ruling.reason} if ruling.stop else {}
    if event not in GATE_EVENTS:
        return {}
    if ruling.stop and agent == CLAUDE_CODE:
        denied = answer(agent, event, Ruling("deny", ruling.reason, None, ruling.approval))
        return {"continue": False, "stopReason": ruling.reason, **denied}
    allow = ruling.verdict == "allow"
    reason = ruling.reason if ruling.verdict != "pending" else STILL_WAITING
    reason = (
        reason
        if reason and reason.strip()
        else ("allowed by Quarterdeck" if allow else "denied by Quarterdeck")
    )
    if event == "PermissionRequest":
        decision: dict[str, Any] = {"behavior": "allow" if allow else "deny"}
        if allow and ruling.updated_input is not None:
            decision["updatedInput"] = dict(ruling.updated_input)
        if not allow:
            decision["message"] = reason
        return {"hookSpecificOutput": {"hookEventName": event, "decision": decision}}
    output: dict[str, Any] = {"hookEventName": event}
    if allow:
        if agent == CODEX and ruling.updated_input is None:
            return {}  # Codex accepts an allow only with updatedInput: nothing lets it run
        output["permissionDecision"] = "allow"
        output["permissionDecisionReason"] = reason
        if ruling.updated_input is not None:
            output["updatedInput"] = dict(ruling.updated_input)
    else:
        output["permissionDecision"] = "deny"
        output["permissionDecisionReason"] = reason
    return {"hookSpecificOutput": output}
