"""Runtime configuration: ``quarterdeck.toml`` (lanes, adapters, fallback, timeouts, retry
budgets, flag defaults, the default lane), validated with every problem listed.

Without a file, :func:`builtin_config` runs a ``sim`` lane with a ``sim-fallback`` lane.

Each table is a pydantic dataclass whose fields declare their TOML type (strict: ``"3"`` is not
a number, ``1`` is not true), default and bounds; an unknown key is refused, and a lane's
``options`` are checked by its adapter (:mod:`quarterdeck.runtime.lanes.registry`). Every problem
is reported as ``path: message`` (:mod:`quarterdeck.runtime.validation`), all of them in one
:class:`ConfigError`. Hand-written, and why:

- each lane and each webhook is validated on its own, and the checks across them (at least one
  lane, fallback and default lanes name a valid lane, webhook names are unique, a webhook names
  its secret's variable or says ``signed = false``) run over the valid ones: a pydantic model
  validator runs only once every field is valid, so it could not report these problems beside
  the others;
- the adapter name, the attested files and a webhook's URL have small validators of their own,
  because their messages say what is allowed (the adapters, file paths, http or https).
"""

from __future__ import annotations

import os
import pwd
import re
import tomllib
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Final, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    Strict,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.dataclasses import dataclass

from quarterdeck.domain.authority import ADMIN, ALL_WORKSPACES, Roster
from quarterdeck.runtime import validation
from quarterdeck.runtime.lanes.registry import ADAPTERS
from quarterdeck.runtime.ledger_config import LedgerConfig, witness_problem
from quarterdeck.runtime.mcp_config import McpConfig
from quarterdeck.runtime.validation import problem, required, says

T = TypeVar("T")


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` lists every problem found."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source}: " + "; ".join(problems))
        self.source = source
        self.problems = problems


def _positive(value: float) -> float:
    if value <= 0:
        raise problem("must be greater than 0")
    return value


def _present(value: str) -> str:
    if not value:
        raise problem("is required")
    return value


def _web_url(value: str) -> str:
    if value and not value.startswith(("http://", "https://")):
        raise problem("must start with http:// or https://")
    return _present(value)


_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _env_name(value: str) -> str:
    if not _ENV_NAME.fullmatch(value):
        raise problem("must be an environment variable name such as 'QD_WEBHOOK_SECRET'")
    return value


def _adapter_name(value: object) -> str:
    names = ", ".join(ADAPTERS)
    if value is None:
        raise problem(f"is required (one of {names})")
    if not isinstance(value, str):
        raise problem("must be a string")
    if value not in ADAPTERS:
        raise problem(f"must be one of {names}, got {value!r}")
    return value


def _base(info: ValidationInfo) -> Path | None:
    """The folder relative paths are taken from (only when parsing a file)."""
    context = info.context
    return context.get("base") if isinstance(context, dict) else None


def _files(value: object, info: ValidationInfo) -> tuple[Path, ...]:
    if not isinstance(value, list | tuple) or not all(
        isinstance(path, Path) or (isinstance(path, str) and path) for path in value
    ):
        raise problem("must be a list of file paths")
    base = _base(info)
    return tuple(base / path if base else Path(path) for path in value)


def _relative(value: object, info: ValidationInfo) -> object:
    return (_base(info) or Path(".")) / value if isinstance(value, str) else value


Text = Annotated[str, Strict()]
Flag = Annotated[bool, Strict()]
Number = Annotated[float, Strict()]
Seconds = Annotated[float, Strict(), Field(gt=0)]
Count = Annotated[int, Strict(), Field(ge=1)]
Threshold = Annotated[float, Strict(), Field(ge=0), says("must be a number of at least 0")]
Interval = Annotated[Threshold, AfterValidator(_positive)]
KeyName = Annotated[Text, Field(min_length=1), says("must be a key name such as 'y' or 'ctrl+y'")]
_TABLE: Final = ConfigDict(extra="forbid")


@dataclass(frozen=True, slots=True, config=_TABLE)
class LaneConfig:
    """One lane: where missions run and how hard to try."""

    name: Text
    adapter: Annotated[str, PlainValidator(_adapter_name)] = required()
    options: Mapping[Text, Any] = Field(default_factory=dict, validate_default=True)
    """The adapter's options, as written (checked by the adapter, absent ones included)."""
    fallback: Text | None = None
    timeout_s: Seconds = 60.0
    max_attempts: Count = 3
    backoff_initial_s: Seconds = 1.0
    backoff_max_s: Seconds = 30.0
    concurrency: Count = 8
    shadow: Flag = False
    paused: Flag = False
    force_fallback: Flag = False
    attest: Annotated[tuple[Path, ...], PlainValidator(_files)] = ()
    """Files (prompts, agent configs) hashed at baseline and watched for drift."""
    on_drift: Annotated[Literal["warn", "pause"], says("must be warn or pause")] = "warn"
    """``warn`` (an alert only) or ``pause`` (the lane is paused until re-baselined)."""

    @field_validator("options")
    @classmethod
    def _adapter_options(
        cls, options: Mapping[str, Any], info: ValidationInfo
    ) -> Mapping[str, Any]:
        adapter = ADAPTERS.get(info.data.get("adapter", ""))
        if adapter is not None:
            adapter.options.model_validate(dict(options))
        return options


@dataclass(frozen=True, slots=True, config=_TABLE)
class SloThresholds:
    """Service-level thresholds; a breach opens a drift alert, recovery resolves it."""

    window_s: Interval = 300.0
    failure_rate: Threshold | None = 0.5
    fallback_rate: Threshold | None = 0.5
    p95_latency_s: Threshold | None = 120.0
    receipt_wait_s: Threshold | None = 60.0
    cost_per_window: Threshold | None = None
    check_interval_s: Interval = 5.0


@dataclass(frozen=True, slots=True, config=_TABLE)
class Webhook:
    """Where notifications go: a URL, how deliveries are signed, the payload format, and which
    events it wants."""

    name: Annotated[Text, AfterValidator(_present)]
    url: Annotated[Text, AfterValidator(_web_url)]
    secret_env: Annotated[Text, AfterValidator(_env_name)] | None = None
    """The environment variable holding the signing secret (read at start; required unless
    ``signed`` is false): :mod:`quarterdeck.runtime.webhooks`."""
    signed: Flag = True
    """False sends deliveries unsigned; only when the configuration says so."""
    format: Annotated[Literal["json", "slack"], says("must be json or slack")] = "json"
    """``json`` (the generic payload) or ``slack`` (an incoming-webhook message)."""
    events: Annotated[
        tuple[Annotated[Text, Field(min_length=1)], ...], says("must be a list of event globs")
    ] = ("*",)
    max_attempts: Count = 8
    backoff_initial_s: Number = 1.0
    backoff_max_s: Number = 60.0
    timeout_s: Number = 5.0


@dataclass(frozen=True, slots=True, config=_TABLE)
class ControlSettings:
    """Who may reach the daemon's state directory besides its own OS user."""

    supervisors_group: Annotated[Text, AfterValidator(_present)] | None = None
    """An OS group whose members supervise: the state directory becomes 0710 and the group's
    (they may reach a file in it by name, never list it or read the files)."""


Name = Annotated[Text, Field(min_length=1), says("must be a non-empty string")]
RoleNames = Annotated[tuple[Name, ...], says("must be a list of role names")]


def _scope(value: tuple[str, ...]) -> tuple[str, ...]:
    if not value:
        raise problem(f"must name at least one workspace ({ALL_WORKSPACES!r}: all of them)")
    return value


@dataclass(frozen=True, slots=True, config=_TABLE)
class RoleConfig:
    """``[roles.NAME]``: where a role applies."""

    workspaces: Annotated[
        tuple[Name, ...], says("must be a list of workspace names"), AfterValidator(_scope)
    ] = (ALL_WORKSPACES,)
    """The workspaces its holders act in (``*``: all of them)."""


@dataclass(frozen=True, slots=True, config=_TABLE)
class RuntimeConfig:
    """The whole runtime configuration."""

    lanes: Mapping[str, LaneConfig]
    default_lane: Text
    force_fallback: Flag = False
    lease_s: Seconds = 30.0
    sweep_interval_s: Seconds = 5.0
    hold_s: Seconds = 3600.0
    """How long a dead-lettered item waits in ``held`` for an operator before it is ``dead``."""
    drain_grace_s: Seconds = 10.0
    database_url: Text | None = None
    policy: Annotated[Path | None, BeforeValidator(_relative)] = None
    """The policy file (None: the built-in policy, which allows everything)."""
    claim_s: Seconds = 120.0
    """How long a supervisor's claim on an approval holds."""
    slo: SloThresholds = field(default_factory=SloThresholds)
    webhooks: tuple[Webhook, ...] = ()
    keymap: Mapping[Text, KeyName] = field(default_factory=dict)
    """The control center's key overrides: action name -> key (checked by the TUI)."""
    agents_dir: Annotated[Path | None, BeforeValidator(_relative)] = None
    """Where agents work (None: ``<state dir>.agents``; :mod:`quarterdeck.runtime.workdirs`)."""
    control: ControlSettings = field(default_factory=ControlSettings)
    max_action_args_bytes: Count = 65_536
    """The largest tool call an agent or SDK client may ask for: the canonical JSON of its
    tool and arguments, in bytes. A larger one is refused (``args_too_large``) and recorded
    by its size and SHA-256 only."""
    max_actions_per_mission: Count = 200
    """How many actions one mission may ask for; the next is refused (``too_many_actions``)
    and the mission fails."""
    roster: Mapping[Name, RoleNames] | None = None
    """``[roster]``: an OS user, ``@group`` or ``token:name`` -> its roles (None: the daemon's
    own OS user and root are ``admin``, nobody else is anything)."""
    roles: Mapping[Name, RoleConfig] = field(default_factory=dict)
    """``[roles.NAME]``: where each role applies (a role not listed: in every workspace)."""
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    """Signed checkpoints of the ledger (:mod:`quarterdeck.runtime.ledger_config`)."""
    mcp: McpConfig = field(default_factory=McpConfig)
    """The MCP gateway's upstream servers (:mod:`quarterdeck.runtime.mcp_config`)."""

    @field_validator("roles")
    @classmethod
    def _admin_everywhere(cls, roles: Mapping[str, RoleConfig]) -> Mapping[str, RoleConfig]:
        admin = roles.get(ADMIN)
        if admin is not None and tuple(admin.workspaces) != (ALL_WORKSPACES,):
            raise problem(f"{ADMIN} applies in every workspace: give it no workspaces")
        return roles


def daemon_user() -> str:
    """The name of the OS user this process runs as (``uid:N`` when it has none)."""
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid:{uid}"


def roster_of(config: RuntimeConfig, daemon_user: str) -> Roster:
    """Who holds which roles where: the configured ``[roster]`` and ``[roles]``, or without
    a roster :meth:`Roster.default` (the daemon's OS user and root are ``admin``)."""
    if config.roster is None:
        return Roster.default(daemon_user)
    return Roster(
        members={name: frozenset(roles) for name, roles in config.roster.items()},
        scopes={name: frozenset(role.workspaces) for name, role in config.roles.items()},
    )


_LANE: Final = TypeAdapter(LaneConfig)
_WEBHOOK: Final = TypeAdapter(Webhook)
_RUNTIME: Final = TypeAdapter(RuntimeConfig)


def builtin_config() -> RuntimeConfig:
    """The configuration used when no file is given: ``sim`` falling back to ``sim-fallback``."""
    return RuntimeConfig(
        lanes={
            "sim": LaneConfig("sim", "sim", {"seed": 1}, fallback="sim-fallback"),
            "sim-fallback": LaneConfig("sim-fallback", "sim", {"seed": 2}),
        },
        default_lane="sim",
    )


def load_config(path: Path | None) -> RuntimeConfig:
    """Read and validate ``path`` (the built-in configuration when None).

    Raises:
        ConfigError: the file is missing, not TOML, or invalid; every problem is listed.
    """
    if path is None:
        return builtin_config()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read: {exc.strerror}"]) from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [f"not TOML: {exc}"]) from exc
    return parse_config(data, str(path), base=path.parent)


def parse_config(
    data: Mapping[str, Any], source: str = "configuration", base: Path | None = None
) -> RuntimeConfig:
    """Validate decoded TOML; raise :class:`ConfigError` listing every problem. Relative paths
    (the policy file, attested files) are taken from ``base`` (the config file's folder)."""
    context = {"base": base or Path(".")}
    settings = dict(data)
    problems: list[str] = []
    lanes: dict[str, LaneConfig] = {}
    raw_lanes = data.get("lanes", {})
    if isinstance(raw_lanes, dict):
        if not raw_lanes:
            problems.append("lanes: at least one lane is required")
        for name, raw in raw_lanes.items():
            lane = _parse_lane(name, raw, context, problems)
            if lane is not None:
                lanes[name] = lane
        problems.extend(_fallback_problems(raw_lanes, lanes))
        settings["lanes"] = lanes
    default_lane = data.get("default_lane")
    if default_lane is None:
        default_lane = "sim" if "sim" in lanes else next(iter(lanes), "")
    elif isinstance(default_lane, str) and lanes and default_lane not in lanes:
        problems.append(f"default_lane: no lane named {default_lane!r}")
    settings["default_lane"] = default_lane
    raw_webhooks = data.get("webhooks", [])
    if isinstance(raw_webhooks, list):
        settings["webhooks"] = _parse_webhooks(raw_webhooks, context, problems)
    hooks = {hook.name: hook.format for hook in settings.get("webhooks", ())}
    witness = witness_problem(data.get("ledger"), hooks)
    problems.extend([witness] if witness is not None else [])
    top: list[str] = []
    config = _validate(_RUNTIME, settings, "", context, top)
    if top or problems or config is None:
        raise ConfigError(source, top + problems)
    return config


def _validate(
    schema: TypeAdapter[T],
    value: object,
    where: str,
    context: dict[str, Any],
    problems: list[str],
) -> T | None:
    """``value`` validated, or None with its problems added to ``problems``."""
    try:
        return schema.validate_python(value, context=context)
    except ValidationError as exc:
        problems.extend(validation.problems(exc, where))
        return None


def _parse_lane(
    name: str, raw: object, context: dict[str, Any], problems: list[str]
) -> LaneConfig | None:
    where = f"lanes.{name}"
    if not isinstance(raw, dict):
        return _validate(_LANE, raw, where, context, problems)
    named = "name" in raw
    if named:
        problems.append(f"{where}.name: unknown setting")
    lane = _validate(_LANE, {**raw, "name": name}, where, context, problems)
    return None if named else lane


def _fallback_problems(
    raw_lanes: Mapping[str, object], lanes: Mapping[str, LaneConfig]
) -> list[str]:
    """A lane's fallback must name another valid lane (checked for every lane table, valid or
    not, so that this problem is listed beside the lane's others)."""
    problems: list[str] = []
    for name, raw in raw_lanes.items():
        fallback = raw.get("fallback") if isinstance(raw, dict) else None
        if not isinstance(fallback, str):
            continue
        if fallback == name:
            problems.append(f"lanes.{name}.fallback: a lane cannot fall back to itself")
        elif fallback not in lanes:
            problems.append(f"lanes.{name}.fallback: no lane named {fallback!r}")
    return problems


def _parse_webhooks(
    raw: list[object], context: dict[str, Any], problems: list[str]
) -> tuple[Webhook, ...]:
    hooks: list[Webhook] = []
    for index, item in enumerate(raw):
        hook = _validate(_WEBHOOK, item, f"webhooks[{index}]", context, problems)
        if hook is not None:
            hooks.append(hook)
        if hook is not None and hook.signed and hook.secret_env is None:
            problems.append(f"webhooks[{index}].secret_env: is required (or signed = false)")
        elif hook is not None and not hook.signed and hook.secret_env is not None:
            problems.append(f"webhooks[{index}].secret_env: not used when signed = false")
    names = [hook.name for hook in hooks]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"webhooks: duplicate name {name!r}")
    return tuple(hooks)
