"""Shipped colour themes: they load, are valid and readable, cycle, and work in a real App."""

from __future__ import annotations

import asyncio
import importlib.resources
import tomllib
from pathlib import Path

import pytest
from textual.app import App, ComposeResult
from textual.color import Color
from textual.widgets import Static

from tuilb.errors import TuilbError
from tuilb.ui.themes import (
    DEFAULT_THEME,
    REQUIRED_COLOURS,
    ThemeError,
    load_themes,
    next_theme,
    theme_names,
    validate_theme_name,
)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ["tuilb-dark", "tuilb-light", "tuilb-high-contrast"]
STATUS_COLOURS = ("primary", "accent", "success", "warning", "error")


def shipped_files() -> dict[str, str]:
    """File stem -> text of every *.toml in the installed tuilb.themes package."""
    package = importlib.resources.files("tuilb.themes")
    return {
        entry.name.removesuffix(".toml"): entry.read_text(encoding="utf-8")
        for entry in package.iterdir()
        if entry.name.endswith(".toml")
    }


# -- the shipped themes --------------------------------------------------------------------
def test_all_shipped_themes_load_in_display_order() -> None:
    themes = load_themes()
    assert list(themes)[:3] == SHIPPED
    assert DEFAULT_THEME == "tuilb-dark" and DEFAULT_THEME in themes
    assert themes["tuilb-dark"].dark and themes["tuilb-high-contrast"].dark
    assert not themes["tuilb-light"].dark


def test_loading_twice_gives_independent_dicts() -> None:
    first = load_themes()
    first.clear()
    assert list(load_themes())[:3] == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_each_theme_has_every_required_colour(name: str) -> None:
    raw = tomllib.loads(shipped_files()[name])
    theme = load_themes()[name]
    for key in REQUIRED_COLOURS:
        assert isinstance(raw[key], str), key
        assert getattr(theme, key) == raw[key]
        Color.parse(raw[key])
    assert raw["name"] == name and isinstance(raw["dark"], bool)
    # Textual derives every shade and variable from it without complaint.
    assert theme.to_color_system().generate()["background"] == Color.parse(raw["background"]).hex


def test_names_are_unique_and_match_the_file_names() -> None:
    files = shipped_files()
    names = [tomllib.loads(text)["name"] for text in files.values()]
    assert len(names) == len(set(names))
    assert {tomllib.loads(text)["name"]: stem for stem, text in files.items()} == {
        stem: stem for stem in files
    }
    assert sorted(load_themes()) == sorted(files)


def test_installed_themes_are_the_source_tree_themes() -> None:
    """The install (editable or not) serves exactly the files in themes/."""
    source = {p.stem: p.read_text(encoding="utf-8") for p in (ROOT / "themes").glob("*.toml")}
    assert shipped_files() == source


def _luminance(colour: str) -> float:
    def channel(value: int) -> float:
        c = value / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = Color.parse(colour).rgb
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def contrast(a: str, b: str) -> float:
    """WCAG 2 contrast ratio, 1 to 21."""
    high, low = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


@pytest.mark.parametrize("name", SHIPPED)
def test_text_and_status_colours_are_readable(name: str) -> None:
    theme = load_themes()[name]
    assert theme.foreground and theme.background and theme.surface and theme.panel
    for ground in (theme.background, theme.surface, theme.panel):
        assert contrast(theme.foreground, ground) >= 7.0, ground  # WCAG AAA
    for key in STATUS_COLOURS:
        colour = getattr(theme, key)
        assert contrast(colour, theme.background) >= 4.5, key  # WCAG AA


def test_high_contrast_is_truly_high_contrast() -> None:
    theme = load_themes()["tuilb-high-contrast"]
    assert theme.foreground and theme.background
    assert Color.parse(theme.background) == Color(0, 0, 0)
    assert Color.parse(theme.foreground) == Color(255, 255, 255)
    assert theme.text_alpha == 1.0  # no dimmed body text
    for key in STATUS_COLOURS:
        assert contrast(getattr(theme, key), theme.background) >= 7.0, key
    assert theme.variables["text-muted"] == "#ffffff"


# -- order, cycling, names -----------------------------------------------------------------
def test_theme_names_are_in_a_stable_order() -> None:
    assert theme_names() == SHIPPED + sorted(set(load_themes()) - set(SHIPPED))
    extra = ["zeta", "tuilb-high-contrast", "alpha", "tuilb-dark", "tuilb-light"]
    assert theme_names(extra) == [*SHIPPED, "alpha", "zeta"]
    assert theme_names(["zeta", "alpha", "tuilb-light"]) == ["tuilb-light", "alpha", "zeta"]


def test_cycling_visits_every_theme_and_wraps() -> None:
    names = theme_names()
    seen = [DEFAULT_THEME]
    for _ in range(len(names)):
        seen.append(next_theme(seen[-1]))
    assert seen[-1] == DEFAULT_THEME  # wrapped
    assert sorted(seen[:-1]) == sorted(names)
    assert seen[:3] == SHIPPED


def test_cycling_over_a_given_list_and_from_an_unknown_theme() -> None:
    assert next_theme("a", ["a", "b"]) == "b"
    assert next_theme("b", ["a", "b"]) == "a"
    assert next_theme("gone", ["b", "a"]) == "a"
    assert next_theme("gone") == DEFAULT_THEME


def test_validate_theme_name() -> None:
    assert validate_theme_name("tuilb-light", load_themes()) == "tuilb-light"
    with pytest.raises(TuilbError) as info:
        validate_theme_name("nope", ["tuilb-light", "solar", "tuilb-dark"])
    assert str(info.value) == "unknown theme 'nope'; themes: tuilb-dark, tuilb-light, solar"


# -- user mistakes in theme files ----------------------------------------------------------
GOOD = """\
name = "mine"
dark = true
primary = "#4aa3ff"
secondary = "#8fa3bf"
accent = "#ffb454"
foreground = "#e6e9ee"
background = "#101418"
surface = "#171c22"
panel = "#222a33"
success = "#5fd37a"
warning = "#ffcc4d"
error = "#ff6b6b"
"""


def write(directory: Path, stem: str, text: str) -> Path:
    path = directory / f"{stem}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_theme_directory_can_be_given(tmp_path: Path) -> None:
    write(tmp_path, "mine", GOOD + 'boost = "#ffffff"\n[variables]\ntuilb-drained = "red 50%"\n')
    (tmp_path / "notes.txt").write_text("not a theme")
    for where in (tmp_path, str(tmp_path)):
        themes = load_themes(where)
        assert list(themes) == ["mine"]
        assert themes["mine"].boost == "#ffffff"
        assert themes["mine"].variables == {"tuilb-drained": "red 50%"}


BROKEN = [
    ("not toml", 'name = "mine"\ndark = \n', "not valid TOML"),
    ("missing colour", GOOD.replace('panel = "#222a33"\n', ""), "panel: missing colour"),
    ("bad colour", GOOD.replace('"#ff6b6b"', '"#ff6b6"'), "line 12: error: failed to parse"),
    ("colour not a string", GOOD.replace('"#101418"', "16"), "background: must be a colour"),
    ("name mismatch", GOOD.replace('"mine"', '"yours"'), "does not match the file name"),
    ("missing name", GOOD.replace('name = "mine"\n', ""), "name: missing"),
    ("bad name", GOOD.replace('"mine"', '"Mine!"'), "name: must be lower-case"),
    ("dark not bool", GOOD.replace("dark = true", 'dark = "yes"'), "dark: missing or not"),
    ("unknown key", GOOD + 'primery = "#fff"\n', "line 13: primery: unknown key"),
    ("fraction", GOOD + "text_alpha = 2\n", "text_alpha: 2 is not between 0 and 1"),
    ("variables", GOOD + 'variables = "x"\n', "variables: must be a table"),
    ("variable typo", GOOD + '[variables]\nfooter-kee = "red"\n', "unknown variable"),
    ("variable colour", GOOD + '[variables]\nborder = "blurple"\n', "variables.border:"),
    ("variable style", GOOD + '[variables]\nlink-style = "shiny"\n', "not a text style"),
    ("variable type", GOOD + "[variables]\nborder = 3\n", "variables.border: must be a"),
]


@pytest.mark.parametrize(("text", "expected"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_a_broken_theme_file_is_a_clear_error(tmp_path: Path, text: str, expected: str) -> None:
    write(tmp_path, "aaa-good", GOOD.replace('"mine"', '"aaa-good"'))
    path = write(tmp_path, "mine", text)
    with pytest.raises(ThemeError) as info:
        load_themes(tmp_path)
    error = info.value
    assert isinstance(error, TuilbError)
    message = str(error)
    assert message.startswith(f"theme file {path}: ")
    assert expected in message
    assert "\n" not in message  # one line for the user
    # No chained traceback behind it.
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


def test_every_problem_in_a_file_is_reported(tmp_path: Path) -> None:
    text = GOOD.replace('"#ff6b6b"', '"nope"').replace("dark = true", "dark = 1") + "x = 1\n"
    with pytest.raises(ThemeError) as info:
        load_themes(write(tmp_path, "mine", text).parent)
    assert [p.where for p in info.value.problems] == ["x", "dark", "error"]


def test_a_theme_file_that_is_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "mine.toml").write_bytes(b'name = "\xff"\n')
    with pytest.raises(ThemeError, match=r"mine\.toml: the file is not UTF-8 text"):
        load_themes(tmp_path)


def test_a_directory_without_themes(tmp_path: Path) -> None:
    with pytest.raises(TuilbError, match="no theme files"):
        load_themes(tmp_path)
    with pytest.raises(TuilbError, match="cannot read theme directory"):
        load_themes(tmp_path / "missing")


# -- in a real Textual app -----------------------------------------------------------------
class ThemedApp(App[None]):
    def compose(self) -> ComposeResult:
        yield Static("tuilb")


def test_an_app_can_register_and_switch_to_every_theme() -> None:
    themes = load_themes()

    async def scenario() -> list[tuple[str, Color]]:
        app = ThemedApp()
        for theme in themes.values():
            app.register_theme(theme)
        seen: list[tuple[str, Color]] = []
        async with app.run_test(size=(40, 10)) as pilot:
            name = DEFAULT_THEME
            for _ in themes:
                app.theme = validate_theme_name(name, app.available_themes)
                await pilot.pause()
                seen.append((app.current_theme.name, app.screen.styles.background))
                name = next_theme(name)
        return seen

    seen = asyncio.run(scenario())
    assert [name for name, _ in seen] == theme_names()
    for name, background in seen:
        assert background == Color.parse(themes[name].background or "")


# -- packaging -----------------------------------------------------------------------------
def test_every_package_is_listed_for_setuptools() -> None:
    """pyproject lists packages explicitly (tuilb.themes is remapped); keep the list whole."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "tuilb").rglob("__init__.py")
    }
    assert set(setuptools["packages"]) == on_disk | {"tuilb.themes"}
    assert setuptools["package-dir"]["tuilb.themes"] == "themes"
    assert "*.toml" in setuptools["package-data"]["tuilb.themes"]
    assert (ROOT / "themes" / "__init__.py").is_file()
