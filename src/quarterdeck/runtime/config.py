"""Runtime configuration: ``quarterdeck.toml`` (lanes, adapters, fallback, timeouts, retry
budgets, flag defaults, the default lane), validated with every problem listed.

Without a file, :func:`builtin_config` runs a ``sim`` lane with a ``sim-fallback`` lane.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

ADAPTERS: Final = ("sim", "command", "http", "python")


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` lists every problem found."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source}: " + "; ".join(problems))
        self.source = source
        self.problems = problems


@dataclass(frozen=True, slots=True)
class LaneConfig:
    """One lane: where missions run and how hard to try."""

    name: str
    adapter: str
    options: Mapping[str, Any] = field(default_factory=dict)
    fallback: str | None = None
    timeout_s: float = 60.0
    max_attempts: int = 3
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 30.0
    concurrency: int = 8
    shadow: bool = False
    paused: bool = False
    force_fallback: bool = False
    attest: tuple[Path, ...] = ()
    """Files (prompts, agent configs) hashed at baseline and watched for drift."""
    on_drift: str = "warn"
    """``warn`` (an alert only) or ``pause`` (the lane is paused until re-baselined)."""


@dataclass(frozen=True, slots=True)
class SloThresholds:
    """Service-level thresholds; a breach opens a drift alert, recovery resolves it."""

    window_s: float = 300.0
    failure_rate: float | None = 0.5
    fallback_rate: float | None = 0.5
    p95_latency_s: float | None = 120.0
    receipt_wait_s: float | None = 60.0
    cost_per_window: float | None = None
    check_interval_s: float = 5.0


@dataclass(frozen=True, slots=True)
class Webhook:
    """Where notifications go: a URL, the payload format, and which events it wants."""

    name: str
    url: str
    format: str = "json"
    """``json`` (the generic payload) or ``slack`` (an incoming-webhook message)."""
    events: tuple[str, ...] = ("*",)
    max_attempts: int = 8
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    timeout_s: float = 5.0


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    """The whole runtime configuration."""

    lanes: Mapping[str, LaneConfig]
    default_lane: str
    force_fallback: bool = False
    lease_s: float = 30.0
    sweep_interval_s: float = 5.0
    hold_s: float = 3600.0
    """How long a dead-lettered item waits in ``held`` for an operator before it is ``dead``."""
    drain_grace_s: float = 10.0
    database_url: str | None = None
    policy: Path | None = None
    """The policy file (None: the built-in policy, which allows everything)."""
    claim_s: float = 120.0
    """How long a supervisor's claim on an approval holds."""
    slo: SloThresholds = field(default_factory=SloThresholds)
    webhooks: tuple[Webhook, ...] = ()
    keymap: Mapping[str, str] = field(default_factory=dict)
    """The control center's key overrides: action name -> key (checked by the TUI)."""


_Expected = type | tuple[type, ...]
_LANE_KEYS: Final[dict[str, _Expected]] = {
    "adapter": str,
    "options": dict,
    "fallback": str,
    "timeout_s": (int, float),
    "max_attempts": int,
    "backoff_initial_s": (int, float),
    "backoff_max_s": (int, float),
    "concurrency": int,
    "shadow": bool,
    "paused": bool,
    "force_fallback": bool,
    "attest": list,
    "on_drift": str,
}
_TOP_KEYS: Final[dict[str, _Expected]] = {
    "default_lane": str,
    "lanes": dict,
    "force_fallback": bool,
    "lease_s": (int, float),
    "sweep_interval_s": (int, float),
    "hold_s": (int, float),
    "drain_grace_s": (int, float),
    "database_url": str,
    "policy": str,
    "claim_s": (int, float),
    "slo": dict,
    "webhooks": list,
    "keymap": dict,
}
_SLO_KEYS: Final = (
    "window_s",
    "failure_rate",
    "fallback_rate",
    "p95_latency_s",
    "receipt_wait_s",
    "cost_per_window",
    "check_interval_s",
)
_WEBHOOK_KEYS: Final[dict[str, _Expected]] = {
    "name": str,
    "url": str,
    "format": str,
    "events": list,
    "max_attempts": int,
    "backoff_initial_s": (int, float),
    "backoff_max_s": (int, float),
    "timeout_s": (int, float),
}


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


def _typed(value: object, expected: _Expected) -> bool:
    if (
        isinstance(value, bool)
        and expected is not bool
        and bool not in (expected if isinstance(expected, tuple) else (expected,))
    ):
        return False
    return isinstance(value, expected)


def _type_name(expected: _Expected) -> str:
    names = {str: "a string", dict: "a table", bool: "true or false", int: "an integer"}
    if isinstance(expected, tuple):
        return "a number"
    return names.get(expected, expected.__name__)


def parse_config(
    data: Mapping[str, Any], source: str = "configuration", base: Path | None = None
) -> RuntimeConfig:
    """Validate decoded TOML; raise :class:`ConfigError` listing every problem. Relative paths
    (the policy file, attested files) are taken from ``base`` (the config file's folder)."""
    base = base or Path(".")
    problems: list[str] = []
    for key, value in data.items():
        expected = _TOP_KEYS.get(key)
        if expected is None:
            problems.append(f"{key}: unknown setting")
        elif not _typed(value, expected):
            problems.append(f"{key}: must be {_type_name(expected)}")
    raw_lanes = data.get("lanes", {})
    lanes: dict[str, LaneConfig] = {}
    if isinstance(raw_lanes, dict):
        if not raw_lanes:
            problems.append("lanes: at least one lane is required")
        for name, raw in raw_lanes.items():
            lane = _parse_lane(name, raw, problems, base)
            if lane is not None:
                lanes[name] = lane
    for lane in lanes.values():
        if lane.fallback is not None:
            if lane.fallback not in lanes:
                problems.append(f"lanes.{lane.name}.fallback: no lane named {lane.fallback!r}")
            elif lane.fallback == lane.name:
                problems.append(f"lanes.{lane.name}.fallback: a lane cannot fall back to itself")
    default_lane = data.get("default_lane")
    if default_lane is None:
        default_lane = "sim" if "sim" in lanes else next(iter(lanes), "")
    if isinstance(default_lane, str) and lanes and default_lane not in lanes:
        problems.append(f"default_lane: no lane named {default_lane!r}")
    slo = _parse_slo(data.get("slo", {}), problems)
    keymap = data.get("keymap", {})
    if isinstance(keymap, dict):
        for action, key in keymap.items():
            if not isinstance(key, str) or not key:
                problems.append(f"keymap.{action}: must be a key name such as 'y' or 'ctrl+y'")
    else:
        keymap = {}
    webhooks = _parse_webhooks(data.get("webhooks", []), problems)
    for key in ("lease_s", "sweep_interval_s", "hold_s", "drain_grace_s", "claim_s"):
        value = data.get(key)
        if isinstance(value, int | float) and _typed(value, (int, float)) and value <= 0:
            problems.append(f"{key}: must be greater than 0")
    for lane in lanes.values():
        if not any(p.startswith(f"lanes.{lane.name}.") for p in problems):
            problems.extend(f"lanes.{lane.name}.options.{p}" for p in _adapter_refusals(lane))
    if problems:
        raise ConfigError(source, problems)
    defaults = RuntimeConfig(lanes={}, default_lane="")
    return RuntimeConfig(
        lanes=lanes,
        default_lane=str(default_lane),
        force_fallback=bool(data.get("force_fallback", defaults.force_fallback)),
        lease_s=float(data.get("lease_s", defaults.lease_s)),
        sweep_interval_s=float(data.get("sweep_interval_s", defaults.sweep_interval_s)),
        hold_s=float(data.get("hold_s", defaults.hold_s)),
        drain_grace_s=float(data.get("drain_grace_s", defaults.drain_grace_s)),
        database_url=data.get("database_url"),
        policy=base / data["policy"] if isinstance(data.get("policy"), str) else None,
        claim_s=float(data.get("claim_s", defaults.claim_s)),
        slo=slo,
        webhooks=webhooks,
        keymap=keymap,
    )


def _parse_slo(raw: object, problems: list[str]) -> SloThresholds:
    if not isinstance(raw, dict):
        return SloThresholds()
    values: dict[str, float | None] = {}
    for key, value in raw.items():
        if key not in _SLO_KEYS:
            problems.append(f"slo.{key}: unknown setting")
        elif not _typed(value, (int, float)) or value < 0:
            problems.append(f"slo.{key}: must be a number of at least 0")
        else:
            values[key] = float(value)
    for key in ("window_s", "check_interval_s"):
        if values.get(key) == 0:
            problems.append(f"slo.{key}: must be greater than 0")
    defaults = SloThresholds()
    merged = {key: values.get(key, getattr(defaults, key)) for key in _SLO_KEYS}
    return SloThresholds(**merged)


def _parse_webhooks(raw: object, problems: list[str]) -> tuple[Webhook, ...]:
    if not isinstance(raw, list):
        return ()
    hooks: list[Webhook] = []
    for index, item in enumerate(raw):
        where = f"webhooks[{index}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: must be a table")
            continue
        before = len(problems)
        for key, value in item.items():
            expected = _WEBHOOK_KEYS.get(key)
            if expected is None:
                problems.append(f"{where}.{key}: unknown setting")
            elif not _typed(value, expected):
                problems.append(f"{where}.{key}: must be {_type_name(expected)}")
        for key in ("name", "url"):
            if not isinstance(item.get(key), str) or not item.get(key):
                problems.append(f"{where}.{key}: is required")
        url = item.get("url")
        if isinstance(url, str) and not url.startswith(("http://", "https://")):
            problems.append(f"{where}.url: must start with http:// or https://")
        if item.get("format", "json") not in ("json", "slack"):
            problems.append(f"{where}.format: must be json or slack")
        events = item.get("events", ["*"])
        if not isinstance(events, list) or not all(isinstance(e, str) and e for e in events):
            problems.append(f"{where}.events: must be a list of event globs")
        if isinstance(item.get("max_attempts"), int) and item["max_attempts"] < 1:
            problems.append(f"{where}.max_attempts: must be at least 1")
        if len(problems) > before:
            continue
        defaults = Webhook("", "")
        hooks.append(
            Webhook(
                name=item["name"],
                url=item["url"],
                format=item.get("format", "json"),
                events=tuple(events),
                max_attempts=int(item.get("max_attempts", defaults.max_attempts)),
                backoff_initial_s=float(item.get("backoff_initial_s", defaults.backoff_initial_s)),
                backoff_max_s=float(item.get("backoff_max_s", defaults.backoff_max_s)),
                timeout_s=float(item.get("timeout_s", defaults.timeout_s)),
            )
        )
    names = [hook.name for hook in hooks]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"webhooks: duplicate name {name!r}")
    return tuple(hooks)


def _parse_lane(name: str, raw: object, problems: list[str], base: Path) -> LaneConfig | None:
    where = f"lanes.{name}"
    if not isinstance(raw, dict):
        problems.append(f"{where}: must be a table")
        return None
    before = len(problems)
    for key, value in raw.items():
        expected = _LANE_KEYS.get(key)
        if expected is None:
            problems.append(f"{where}.{key}: unknown setting")
        elif not _typed(value, expected):
            problems.append(f"{where}.{key}: must be {_type_name(expected)}")
    adapter = raw.get("adapter")
    if adapter is None:
        problems.append(f"{where}.adapter: is required (one of {', '.join(ADAPTERS)})")
    elif isinstance(adapter, str) and adapter not in ADAPTERS:
        problems.append(f"{where}.adapter: must be one of {', '.join(ADAPTERS)}, got {adapter!r}")
    for key in ("timeout_s", "backoff_initial_s", "backoff_max_s"):
        value = raw.get(key)
        if isinstance(value, int | float) and _typed(value, (int, float)) and value <= 0:
            problems.append(f"{where}.{key}: must be greater than 0")
    for key in ("max_attempts", "concurrency"):
        value = raw.get(key)
        if isinstance(value, int) and _typed(value, int) and value < 1:
            problems.append(f"{where}.{key}: must be at least 1")
    attest = raw.get("attest", [])
    if isinstance(attest, list) and not all(isinstance(p, str) and p for p in attest):
        problems.append(f"{where}.attest: must be a list of file paths")
    if raw.get("on_drift", "warn") not in ("warn", "pause"):
        problems.append(f"{where}.on_drift: must be warn or pause")
    options = raw.get("options", {})
    if isinstance(adapter, str) and isinstance(options, dict):
        problems.extend(f"{where}.options.{p}" for p in _adapter_problems(adapter, options))
    if len(problems) > before:
        return None
    defaults = LaneConfig(name, str(adapter))
    # (the adapter's own refusals are checked once every lane is known: _adapter_refusals)
    return LaneConfig(
        name=name,
        adapter=str(adapter),
        options=dict(options),
        fallback=raw.get("fallback"),
        timeout_s=float(raw.get("timeout_s", defaults.timeout_s)),
        max_attempts=int(raw.get("max_attempts", defaults.max_attempts)),
        backoff_initial_s=float(raw.get("backoff_initial_s", defaults.backoff_initial_s)),
        backoff_max_s=float(raw.get("backoff_max_s", defaults.backoff_max_s)),
        concurrency=int(raw.get("concurrency", defaults.concurrency)),
        shadow=bool(raw.get("shadow", False)),
        paused=bool(raw.get("paused", False)),
        force_fallback=bool(raw.get("force_fallback", False)),
        attest=tuple(base / p for p in attest),
        on_drift=str(raw.get("on_drift", "warn")),
    )


def _adapter_problems(adapter: str, options: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    if adapter == "command":
        argv = options.get("argv")
        if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
            problems.append("argv: a non-empty list of strings is required")
    elif adapter == "http":
        providers = options.get("providers")
        if not (isinstance(providers, list) and providers):
            problems.append("providers: a non-empty list of provider tables is required")
        else:
            for index, provider in enumerate(providers):
                if not isinstance(provider, dict) or not isinstance(provider.get("url"), str):
                    problems.append(f"providers[{index}].url: a URL string is required")
    elif adapter == "python":
        target = options.get("callable")
        if not (isinstance(target, str) and ":" in target):
            problems.append("callable: 'package.module:function' is required")
    elif adapter == "sim":
        seed = options.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool):
            problems.append("seed: must be an integer")
        for key in ("failure_rate", "action_rate"):
            rate = options.get(key, 0.0)
            if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 <= rate <= 1:
                problems.append(f"{key}: must be a number from 0 to 1")
        latency = options.get("max_latency_ms", 400)
        if not isinstance(latency, int) or isinstance(latency, bool) or latency < 20:
            problems.append("max_latency_ms: must be an integer of at least 20")
    return problems


def _adapter_refusals(lane: LaneConfig) -> list[str]:
    """What the lane's adapter itself refuses in its options (it is built once, then dropped)."""
    from quarterdeck.runtime.runtime import build_lane

    try:
        build_lane(lane)
    except (ValueError, TypeError, KeyError) as exc:
        message = str(exc).removeprefix(f"lane {lane.name!r}: ").removeprefix("options.")
        return [message]
    return []
