"""Theme files: the shipped three load and apply in a real (headless) Textual app, broken files
are reported key by key and fall back to the default, user files override by name, and the
high-contrast theme meets WCAG AAA for text."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from textual.app import App, ComposeResult
from textual.color import Color
from textual.theme import Theme
from textual.widgets import Footer, Static

from quarterdeck.tui.themes import (
    DEFAULT_THEME,
    available_themes,
    builtin_theme_files,
    load_theme_file,
    resolve_theme,
)

REPO = Path(__file__).resolve().parent.parent
PACKAGED = REPO / "src" / "quarterdeck" / "tui" / "themes"
SHIPPED = {
    "dark.toml": "quarterdeck-dark",
    "light.toml": "quarterdeck-light",
    "high-contrast.toml": "quarterdeck-high-contrast",
}
OKABE_ITO = {"#e69f00", "#56b4e9", "#009e73", "#f0e442", "#0072b2", "#d55e00", "#cc79a7"}


class Probe(App[None]):
    """A small app to apply a theme to."""

    def compose(self) -> ComposeResult:
        yield Static("quarterdeck", id="label")
        yield Footer()


def relative_luminance(colour: str) -> float:
    """WCAG 2.x relative luminance of an opaque colour."""
    parsed = Color.parse(colour)

    def channel(value: int) -> float:
        c = value / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    return 0.2126 * channel(parsed.r) + 0.7152 * channel(parsed.g) + 0.0722 * channel(parsed.b)


def contrast(a: str, b: str) -> float:
    """WCAG contrast ratio of two colours (1 to 21)."""
    high, low = sorted((relative_luminance(a), relative_luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def loaded(path: Path) -> Theme:
    theme = load_theme_file(path)
    assert isinstance(theme, Theme), theme
    return theme


# --- shipped files -------------------------------------------------------------------------------


def test_packaged_and_repo_copies_are_identical() -> None:
    packaged = {path.name: path.read_bytes() for path in PACKAGED.glob("*.toml")}
    repo = {path.name: path.read_bytes() for path in (REPO / "themes").glob("*.toml")}
    assert set(packaged) == set(SHIPPED)
    assert packaged == repo
    assert sorted(entry.name for entry in builtin_theme_files()) == sorted(SHIPPED)


@pytest.mark.parametrize(("file", "name"), sorted(SHIPPED.items()))
def test_shipped_theme_loads_registers_and_applies(file: str, name: str) -> None:
    theme = loaded(PACKAGED / file)
    assert theme.name == name
    assert theme.dark is (file != "light.toml")

    async def main() -> None:
        app = Probe()
        app.register_theme(theme)
        async with app.run_test(headless=True) as pilot:
            app.theme = name
            await pilot.pause()
            assert app.current_theme.name == name
            variables = app.get_css_variables()
            assert theme.background is not None and theme.primary is not None
            assert Color.parse(variables["background"]) == Color.parse(theme.background)
            assert Color.parse(variables["primary"]) == Color.parse(theme.primary)
            for key, value in theme.variables.items():
                assert variables[key] == value, key
            label = app.query_one("#label", Static)
            assert label.styles.background is not None

    asyncio.run(main())


def test_default_is_dark_and_all_three_are_available() -> None:
    themes, problems = available_themes()
    assert problems == []
    assert set(themes) == set(SHIPPED.values())
    theme, message = resolve_theme(None, None)
    assert (theme.name, message) == (DEFAULT_THEME, None)
    assert resolve_theme("quarterdeck-light", None)[0].name == "quarterdeck-light"
    # the file name without .toml is an alias
    assert resolve_theme("high-contrast", None) == (themes["quarterdeck-high-contrast"], None)


def test_high_contrast_is_aaa_and_uses_okabe_ito() -> None:
    theme = loaded(PACKAGED / "high-contrast.toml")
    assert theme.foreground is not None and theme.background is not None
    assert contrast(theme.foreground, theme.background) >= 7.0
    status = [theme.success, theme.warning, theme.error, theme.accent]
    assert all(colour is not None for colour in status)
    assert {c.lower() for c in status if c} <= OKABE_ITO
    assert len({c.lower() for c in status if c}) == 4
    for colour in status:
        assert colour is not None
        assert contrast(colour, theme.background) >= 4.5, colour
    for key in ("text", "text-muted", "text-disabled"):
        assert contrast(theme.variables[key], theme.background) >= 7.0, key


@pytest.mark.parametrize("file", sorted(SHIPPED))
def test_every_shipped_theme_has_readable_text(file: str) -> None:
    theme = loaded(PACKAGED / file)
    assert theme.foreground is not None and theme.background is not None
    assert contrast(theme.foreground, theme.background) >= 7.0


# --- broken files --------------------------------------------------------------------------------


def test_bad_colour_unknown_key_and_missing_name_are_all_reported(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(
        'primary = "#12345"\nsucess = "#00ff00"\nwarning = "nope"\ndark = "yes"\n'
        "[variables]\n"
        'footer-key-foreground = "not-a-colour"\nblock-cursor-text-style = "shiny"\n'
        'input-selection-background = "#3b9edb 35%"\n',
        encoding="utf-8",
    )
    problems = load_theme_file(path)
    assert isinstance(problems, list)
    keys = [problem.removeprefix(f"{path}: ").split(":", 1)[0] for problem in problems]
    assert all(problem.startswith(f"{path}: ") for problem in problems)
    assert sorted(keys) == sorted(
        [
            "sucess",
            "name",
            "primary",
            "warning",
            "dark",
            "variables.footer-key-foreground",
            "variables.block-cursor-text-style",
        ]
    )
    assert any("sucess: unknown key" in problem for problem in problems)
    assert any("name: is required" in problem for problem in problems)
    assert any("primary: not a colour: '#12345'" in problem for problem in problems)


def test_not_toml_and_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "garbage.toml"
    path.write_text('name = "x\nprimary = [', encoding="utf-8")
    [problem] = load_theme_file(path)  # type: ignore[misc]
    assert problem.startswith(f"{path}: $: not TOML: ")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00name")
    assert load_theme_file(binary) == [f"{binary}: $: not TOML: not UTF-8 text"]


def test_broken_requested_theme_falls_back_to_default_with_one_message(tmp_path: Path) -> None:
    (tmp_path / "mine.toml").write_text(
        'name = "mine"\nprimary = "#zzzzzz"\nbogus = 1\n', encoding="utf-8"
    )
    themes, problems = available_themes(tmp_path)
    assert "mine" not in themes
    assert len(problems) == 2
    theme, message = resolve_theme("mine", tmp_path)
    assert theme.name == DEFAULT_THEME
    assert message is not None
    assert "'mine'" in message and "primary: not a colour" in message and "bogus" in message
    assert message.endswith(f"using {DEFAULT_THEME}")


def test_unparseable_file_falls_back_by_file_name(tmp_path: Path) -> None:
    (tmp_path / "ocean.toml").write_text("this is not toml", encoding="utf-8")
    theme, message = resolve_theme("ocean", tmp_path)
    assert theme.name == DEFAULT_THEME
    assert message is not None and "not TOML" in message


def test_unknown_theme_falls_back_with_one_message(tmp_path: Path) -> None:
    theme, message = resolve_theme("no-such-theme", tmp_path / "missing")
    assert theme.name == DEFAULT_THEME
    assert message is not None
    assert "'no-such-theme'" in message
    for name in SHIPPED.values():
        assert name in message


# --- user files ----------------------------------------------------------------------------------


def test_user_file_overrides_by_name_and_adds_new_themes(tmp_path: Path) -> None:
    dark = (PACKAGED / "dark.toml").read_text(encoding="utf-8")
    (tmp_path / "my-default.toml").write_text(
        dark.replace('background = "#0f1620"', 'background = "#202020"'), encoding="utf-8"
    )
    (tmp_path / "ocean.toml").write_text(
        'name = "ocean"\nprimary = "#1e90ff"\nbackground = "#001f3f"\ndark = true\n',
        encoding="utf-8",
    )
    themes, problems = available_themes(tmp_path)
    assert problems == []
    assert set(themes) == {*SHIPPED.values(), "ocean"}
    assert themes[DEFAULT_THEME].background == "#202020"
    theme, message = resolve_theme(None, tmp_path)
    assert (theme.background, message) == ("#202020", None)
    theme, message = resolve_theme("ocean", tmp_path)
    assert (theme.name, theme.primary, message) == ("ocean", "#1e90ff", None)


def test_broken_override_of_the_default_uses_the_shipped_default(tmp_path: Path) -> None:
    (tmp_path / "dark.toml").write_text(
        'name = "quarterdeck-dark"\nprimary = "blurple"\n', encoding="utf-8"
    )
    themes, problems = available_themes(tmp_path)
    assert themes[DEFAULT_THEME].primary == "#3b9edb"
    assert len(problems) == 1 and "primary: not a colour" in problems[0]
    theme, message = resolve_theme(DEFAULT_THEME, tmp_path)
    assert theme.primary == "#3b9edb"
    assert message is not None and "blurple" in message


def test_copied_shipped_file_registers_in_app(tmp_path: Path) -> None:
    copy = tmp_path / "copy.toml"
    copy.write_text(
        (REPO / "themes" / "light.toml")
        .read_text(encoding="utf-8")
        .replace('name = "quarterdeck-light"', 'name = "my-light"'),
        encoding="utf-8",
    )
    theme, message = resolve_theme("my-light", tmp_path)
    assert message is None and theme.name == "my-light"

    async def main() -> None:
        app = Probe()
        app.register_theme(theme)
        async with app.run_test(headless=True) as pilot:
            app.theme = "my-light"
            await pilot.pause()
            assert app.current_theme.name == "my-light"

    asyncio.run(main())
