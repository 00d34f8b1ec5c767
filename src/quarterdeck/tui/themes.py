"""Colour themes for the control center: TOML files that map onto :class:`textual.theme.Theme`.

Three themes ship inside the package (``quarterdeck-dark``, the default, ``quarterdeck-light``
and ``quarterdeck-high-contrast``, in ``quarterdeck/tui/themes/``); a user folder of ``*.toml``
files adds themes or replaces shipped ones by name. Nothing here raises on a bad file: every
problem is reported as ``<file>: <key>: <message>``.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Final

from textual.color import Color, ColorParseError
from textual.css.constants import VALID_STYLE_FLAGS
from textual.theme import Theme

DEFAULT_THEME: Final = "quarterdeck-dark"
"""The theme used when none is asked for, or when the one asked for cannot be used."""

COLOUR_KEYS: Final = (
    "primary",
    "secondary",
    "accent",
    "warning",
    "error",
    "success",
    "foreground",
    "background",
    "surface",
    "panel",
    "boost",
)
"""Theme fields that hold a colour (``primary`` is required, the others optional)."""

_BOOL_KEYS: Final = ("dark", "ansi")
_FRACTION_KEYS: Final = ("luminosity_spread", "text_alpha")
KNOWN_KEYS: Final = frozenset(("name", "variables", *COLOUR_KEYS, *_BOOL_KEYS, *_FRACTION_KEYS))
"""Every key a theme file may hold (the fields of :class:`textual.theme.Theme`)."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_VARIABLE = re.compile(r"[a-z0-9][a-z0-9-]*")
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)%")


@dataclass(slots=True)
class _Loaded:
    """One file's outcome: the theme or its problems, and the names it answers to."""

    label: str
    stem: str
    declared: str | None
    theme: Theme | None
    problems: list[str] = field(default_factory=list)


def _colour_problem(value: object) -> str | None:
    """Why ``value`` is not a colour Textual can parse (None when it is one)."""
    if not isinstance(value, str):
        return "must be a colour string"
    try:
        Color.parse(value)
    except ColorParseError as exc:
        hint = f" (did you mean {exc.suggested_color!r}?)" if exc.suggested_color else ""
        return f"not a colour: {value!r}{hint}"
    return None


def _variable_problem(key: str, value: object) -> str | None:
    """Why a ``[variables]`` entry is unusable: a text style for ``*-style`` keys, otherwise a
    colour, optionally followed by an opacity (``"#3b9edb 35%"``), ``auto``, or ``initial``."""
    if not isinstance(value, str) or not value.strip():
        return "must be a non-empty string"
    words = value.split()
    if key.endswith("-style"):
        unknown = [word for word in words if word not in VALID_STYLE_FLAGS]
        if unknown:
            allowed = ", ".join(sorted(VALID_STYLE_FLAGS))
            return f"not a text style: {unknown[0]!r} (use {allowed})"
        return None
    if len(words) == 2 and (match := _PERCENT.fullmatch(words[1])):
        if float(match.group(1)) > 100:
            return f"opacity must be at most 100%, got {words[1]!r}"
        words = words[:1]
    if len(words) == 1 and words[0] in ("auto", "initial", "transparent"):
        return None
    return _colour_problem(" ".join(words))


def _parse(text: str, label: str, stem: str) -> _Loaded:
    """Validate one theme document; collect every problem."""
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return _Loaded(label, stem, None, None, [f"{label}: $: not TOML: {exc}"])
    problems: list[str] = []

    def problem(key: str, message: str) -> None:
        problems.append(f"{label}: {key}: {message}")

    for key in sorted(set(data) - KNOWN_KEYS):
        problem(key, f"unknown key (known: {', '.join(sorted(KNOWN_KEYS))})")
    name = data.get("name")
    declared = name if isinstance(name, str) and name else None
    if name is None:
        problem("name", "is required")
    elif not isinstance(name, str) or not _NAME.fullmatch(name):
        problem("name", "must be letters, digits, '-', '_' or '.' (e.g. 'my-dark')")
    if "primary" not in data:
        problem("primary", "is required")
    for key in COLOUR_KEYS:
        if key in data and (message := _colour_problem(data[key])) is not None:
            problem(key, message)
    for key in _BOOL_KEYS:
        if key in data and not isinstance(data[key], bool):
            problem(key, "must be true or false")
    for key in _FRACTION_KEYS:
        value = data.get(key)
        if key in data and (
            isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1
        ):
            problem(key, "must be a number from 0 to 1")
    variables = data.get("variables", {})
    if not isinstance(variables, dict):
        problem("variables", "must be a table of variable = value")
        variables = {}
    for key, value in variables.items():
        where = f"variables.{key}"
        if not _VARIABLE.fullmatch(key):
            problem(where, "variable names are lowercase letters, digits and '-'")
        elif (message := _variable_problem(key, value)) is not None:
            problem(where, message)
    if problems:
        return _Loaded(label, stem, declared, None, problems)
    theme = Theme(
        name=str(name),
        primary=data["primary"],
        secondary=data.get("secondary"),
        accent=data.get("accent"),
        warning=data.get("warning"),
        error=data.get("error"),
        success=data.get("success"),
        foreground=data.get("foreground"),
        background=data.get("background"),
        surface=data.get("surface"),
        panel=data.get("panel"),
        boost=data.get("boost"),
        dark=data.get("dark", True),
        luminosity_spread=float(data.get("luminosity_spread", 0.15)),
        text_alpha=float(data.get("text_alpha", 0.95)),
        variables=dict(variables),
        ansi=data.get("ansi", False),
    )
    return _Loaded(label, stem, declared, theme)


def _load(source: Path | Traversable) -> _Loaded:
    label = str(source)
    stem = source.name.removesuffix(".toml")
    try:
        text = source.read_bytes().decode("utf-8")
    except OSError as exc:
        return _Loaded(label, stem, None, None, [f"{label}: $: cannot read: {exc.strerror}"])
    except UnicodeDecodeError:
        return _Loaded(label, stem, None, None, [f"{label}: $: not TOML: not UTF-8 text"])
    return _parse(text, label, stem)


def load_theme_file(path: Path) -> Theme | list[str]:
    """Read one theme file: the :class:`Theme`, or every problem as ``<file>: <key>: <message>``
    (unknown keys, colours Textual cannot parse, a missing name, text that is not TOML)."""
    loaded = _load(path)
    return loaded.theme if loaded.theme is not None else loaded.problems


def builtin_theme_files() -> list[Traversable]:
    """The theme files shipped in the package, sorted by file name."""
    folder = resources.files("quarterdeck.tui").joinpath("themes")
    return sorted(
        (entry for entry in folder.iterdir() if entry.name.endswith(".toml")),
        key=lambda entry: entry.name,
    )


@dataclass(slots=True)
class _Catalog:
    themes: dict[str, Theme] = field(default_factory=dict)
    by_stem: dict[str, str] = field(default_factory=dict)
    broken: dict[str, list[str]] = field(default_factory=dict)
    broken_files: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _catalog(folder: Path | None) -> _Catalog:
    catalog = _Catalog()
    for entry in builtin_theme_files():
        loaded = _load(entry)
        catalog.problems.extend(loaded.problems)
        if loaded.theme is not None:
            catalog.themes[loaded.theme.name] = loaded.theme
            catalog.by_stem[loaded.stem] = loaded.theme.name
    if folder is None:
        return catalog
    if folder.exists() and not folder.is_dir():
        catalog.problems.append(f"{folder}: $: not a folder")
        return catalog
    user_files = sorted(folder.glob("*.toml")) if folder.is_dir() else []
    seen: dict[str, str] = {}
    for path in user_files:
        loaded = _load(path)
        catalog.problems.extend(loaded.problems)
        if loaded.theme is None:
            catalog.broken_files.append(loaded.label)
            for key in {loaded.declared, loaded.stem} - {None}:
                catalog.broken.setdefault(str(key), loaded.problems)
            continue
        name = loaded.theme.name
        if name in seen:
            catalog.problems.append(
                f"{loaded.label}: name: {name!r} is also defined in {seen[name]}; this file wins"
            )
        seen[name] = loaded.label
        catalog.themes[name] = loaded.theme
        catalog.by_stem[loaded.stem] = name
    for name in seen:  # a valid user file answers to its name even if another one is broken
        catalog.broken.pop(name, None)
    return catalog


def available_themes(folder: Path | None = None) -> tuple[dict[str, Theme], list[str]]:
    """The shipped themes plus every ``*.toml`` in ``folder`` (a user file replaces a shipped
    theme of the same name), by name, and every problem found. A missing folder is no
    problem; broken files are left out and reported."""
    catalog = _catalog(folder)
    return catalog.themes, catalog.problems


def resolve_theme(name: str | None, folder: Path | None = None) -> tuple[Theme, str | None]:
    """The theme called ``name`` (None: the default), also found by its file name without
    ``.toml`` (``high-contrast``). When the name is unknown or its file is broken: the default
    theme and one message naming the problem; otherwise no message."""
    catalog = _catalog(folder)
    default = catalog.themes.get(DEFAULT_THEME) or Theme(name=DEFAULT_THEME, primary="#3b9edb")
    wanted = name or DEFAULT_THEME
    if wanted in catalog.broken:
        problems = "; ".join(catalog.broken[wanted])
        return default, f"theme {wanted!r} could not be loaded ({problems}); using {default.name}"
    if wanted in catalog.themes:
        return catalog.themes[wanted], None
    if wanted in catalog.by_stem:
        return catalog.themes[catalog.by_stem[wanted]], None
    known = ", ".join(sorted(catalog.themes))
    unloaded = f"; could not load {', '.join(catalog.broken_files)}" if catalog.broken_files else ""
    message = f"no theme named {wanted!r} (available: {known}{unloaded}); using {default.name}"
    return default, message
