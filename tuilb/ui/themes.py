"""Colour themes for the dashboard: TOML palettes shipped as package data.

Each theme is one file in the top-level themes/ directory of the source tree, installed as
the package `tuilb.themes`. A file holds `name` (equal to the file name without `.toml`),
`dark`, every colour of `textual.theme.Theme` except `boost` (which is optional), optionally
`text_alpha` and `luminosity_spread`, and an optional `[variables]` table overriding
Textual's theme variables. Variables of tuilb's own stylesheet start with `tuilb-`.

A broken theme file is a user mistake, not a bug: it raises ThemeError (a TuilbError) that
names the file and every problem in it.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
import tomllib
from collections.abc import Iterable, Mapping
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from textual.color import Color, ColorParseError
from textual.css.constants import VALID_STYLE_FLAGS
from textual.design import ColorSystem
from textual.theme import Theme

from tuilb.errors import Problem, TuilbError
from tuilb.tomlpos import key_lines, line_of

DEFAULT_THEME = "tuilb-dark"
PREFERRED_ORDER = ("tuilb-dark", "tuilb-light", "tuilb-high-contrast")

REQUIRED_COLOURS = (
    "primary",
    "secondary",
    "accent",
    "foreground",
    "background",
    "surface",
    "panel",
    "success",
    "warning",
    "error",
)
OPTIONAL_COLOURS = ("boost",)
_FRACTIONS = ("text_alpha", "luminosity_spread")
_KNOWN_KEYS = frozenset(("name", "dark", "variables", *REQUIRED_COLOURS, *OPTIONAL_COLOURS))
_KNOWN_KEYS |= frozenset(_FRACTIONS)

_NAME = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_VARIABLE_NAME = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
_PERCENT = re.compile(r"\s+\d+(?:\.\d+)?%$")
_APP_VARIABLE_PREFIX = "tuilb-"
_DEFAULTS = Theme(name="defaults", primary="#000000")  # Textual's text_alpha etc.


class ThemeError(TuilbError):
    """A theme file that cannot be used; the message names the file and every problem."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"theme file {source}: " + "; ".join(map(_describe, problems)))


def _describe(problem: Problem) -> str:
    """Like str(Problem), but a problem with the whole file names no key."""
    return str(problem) if problem.where or problem.line else problem.message


@functools.cache
def _textual_variables() -> frozenset[str]:
    """Every variable name Textual's colour system defines (for catching typos)."""
    return frozenset(ColorSystem("#000000").generate())


def _parse_colour(value: str) -> str | None:
    """None if `value` is a colour Textual accepts, else why not."""
    try:
        Color.parse(value)
    except ColorParseError as exc:
        return str(exc)
    return None


def _variable_problem(name: str, value: str) -> str | None:
    """Why a [variables] value is not usable, or None.

    Style variables (`...-style`) take text-style words ("bold", "not underline", "none");
    the others a colour, "auto" or "initial", each optionally followed by an alpha like 40%.
    """
    if name.endswith("-style"):
        bad = [word for word in value.split() if word not in VALID_STYLE_FLAGS]
        if bad or not value.split():
            return f"not a text style: {value!r} (use words like bold, underline, none)"
        return None
    base = _PERCENT.sub("", value.strip())
    if base in ("auto", "initial"):
        return None
    return _parse_colour(base)


class _Checker:
    def __init__(self, text: str) -> None:
        self.lines = key_lines(text)
        self.problems: list[Problem] = []

    def problem(self, path: tuple[str, ...], message: str) -> None:
        self.problems.append(Problem(".".join(path), message, line_of(self.lines, path)))

    def theme(self, data: dict[str, Any], stem: str) -> Theme | None:
        for key in sorted(set(data) - _KNOWN_KEYS):
            self.problem((key,), "unknown key")

        name = data.get("name")
        if name is None:
            self.problem(("name",), "missing (the theme's name, the file name without .toml)")
        elif not isinstance(name, str) or not _NAME.match(name):
            self.problem(("name",), "must be lower-case letters, digits and hyphens")
        elif name != stem:
            self.problem(("name",), f"{name!r} does not match the file name {stem!r}")

        dark = data.get("dark")
        if not isinstance(dark, bool):
            self.problem(("dark",), "missing or not true/false")

        colours: dict[str, str] = {}
        for key in (*REQUIRED_COLOURS, *OPTIONAL_COLOURS):
            value = data.get(key)
            if value is None:
                if key in REQUIRED_COLOURS:
                    self.problem((key,), "missing colour")
                continue
            if not isinstance(value, str):
                self.problem((key,), 'must be a colour string such as "#1e90ff"')
                continue
            why = _parse_colour(value)
            if why is not None:
                self.problem((key,), why)
                continue
            colours[key] = value

        fractions: dict[str, float] = {}
        for key in _FRACTIONS:
            if key not in data:
                continue
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, int | float):
                self.problem((key,), "must be a number from 0 to 1")
            elif not 0.0 <= value <= 1.0:
                self.problem((key,), f"{value} is not between 0 and 1")
            else:
                fractions[key] = float(value)

        variables = self.variables(data.get("variables", {}))

        if self.problems:
            return None
        assert isinstance(name, str) and isinstance(dark, bool)
        return Theme(
            name=name,
            dark=dark,
            primary=colours["primary"],
            secondary=colours["secondary"],
            accent=colours["accent"],
            foreground=colours["foreground"],
            background=colours["background"],
            surface=colours["surface"],
            panel=colours["panel"],
            success=colours["success"],
            warning=colours["warning"],
            error=colours["error"],
            boost=colours.get("boost"),
            text_alpha=fractions.get("text_alpha", _DEFAULTS.text_alpha),
            luminosity_spread=fractions.get("luminosity_spread", _DEFAULTS.luminosity_spread),
            variables=variables,
        )

    def variables(self, table: object) -> dict[str, str]:
        if not isinstance(table, dict):
            self.problem(("variables",), "must be a table: [variables]")
            return {}
        out: dict[str, str] = {}
        known = _textual_variables()
        for key, value in table.items():
            path = ("variables", key)
            if not _VARIABLE_NAME.match(key):
                self.problem(path, "variable names are lower-case words joined by hyphens")
            elif key not in known and not key.startswith(_APP_VARIABLE_PREFIX):
                self.problem(
                    path,
                    f"unknown variable (Textual's own, or tuilb's starting with "
                    f"{_APP_VARIABLE_PREFIX!r})",
                )
            elif not isinstance(value, str):
                self.problem(path, "must be a string")
            elif (why := _variable_problem(key, value)) is not None:
                self.problem(path, why)
            else:
                out[key] = value
        return out


def parse_theme(text: str, source: str, stem: str) -> Theme:
    """Validate one theme file's text; `stem` is its file name without `.toml`."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ThemeError(source, [Problem("", f"not valid TOML: {exc}")]) from None
    checker = _Checker(text)
    theme = checker.theme(data, stem)
    if theme is None:
        raise ThemeError(source, checker.problems)
    return theme


def _shipped() -> Traversable:
    """The installed `tuilb.themes` package, or themes/ of a source tree not installed."""
    try:
        return importlib.resources.files("tuilb.themes")
    except ModuleNotFoundError:
        source_tree = Path(__file__).resolve().parents[2] / "themes"
        if source_tree.is_dir():
            return source_tree
        raise TuilbError(
            "tuilb's themes are not installed (package tuilb.themes is missing); reinstall tuilb"
        ) from None


def _load(directory: Traversable) -> dict[str, Theme]:
    try:
        entries = sorted(
            (e for e in directory.iterdir() if e.name.endswith(".toml") and e.is_file()),
            key=lambda e: e.name,
        )
    except OSError as exc:
        raise TuilbError(f"cannot read theme directory {directory}: {exc.strerror}") from None
    themes: dict[str, Theme] = {}
    for entry in entries:
        source = str(entry)
        try:
            text = entry.read_bytes().decode("utf-8")
        except OSError as exc:
            raise ThemeError(source, [Problem("", f"cannot read file: {exc.strerror}")]) from None
        except UnicodeDecodeError:
            raise ThemeError(source, [Problem("", "the file is not UTF-8 text")]) from None
        theme = parse_theme(text, source, entry.name.removesuffix(".toml"))
        themes[theme.name] = theme
    if not themes:
        raise TuilbError(f"no theme files (*.toml) in {directory}")
    return {name: themes[name] for name in _ordered(themes)}


@functools.cache
def _load_shipped() -> dict[str, Theme]:
    return _load(_shipped())


def load_themes(path: str | Path | Traversable | None = None) -> dict[str, Theme]:
    """Every theme in `path` (default: the shipped themes), keyed by name, in display order.

    The shipped themes are read once per process; the result is a fresh dict each call.
    """
    if path is None:
        return dict(_load_shipped())
    return _load(Path(path) if isinstance(path, str) else path)


def _ordered(names: Iterable[str]) -> list[str]:
    """tuilb-dark, tuilb-light, tuilb-high-contrast first, then the rest alphabetically."""
    rank = {name: i for i, name in enumerate(PREFERRED_ORDER)}
    return sorted(set(names), key=lambda n: (rank.get(n, len(rank)), n))


def theme_names(themes: Mapping[str, Theme] | Iterable[str] | None = None) -> list[str]:
    """Theme names in a stable order (the shipped themes when `themes` is None)."""
    return _ordered(load_themes() if themes is None else themes)


def next_theme(current: str, names: Iterable[str] | None = None) -> str:
    """The theme after `current` (the `t` key), wrapping at the end.

    An unknown `current` gives the first theme, so a cycle always lands somewhere valid.
    """
    ordered = theme_names(names)
    if current not in ordered:
        return ordered[0]
    return ordered[(ordered.index(current) + 1) % len(ordered)]


def validate_theme_name(name: str, available: Iterable[str]) -> str:
    """`name` if it is one of `available`, else a TuilbError listing the choices."""
    names = _ordered(available)
    if name not in names:
        raise TuilbError(f"unknown theme {name!r}; themes: {', '.join(names)}")
    return name
