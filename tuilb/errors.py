"""The few exception types tuilb raises on purpose.

Messages for humans are rendered at the edge (cli.py, later ui/ and admin.py); these
classes only carry data.
"""

from __future__ import annotations

from dataclasses import dataclass


class TuilbError(Exception):
    """Base of every error tuilb expects a user may cause."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a configuration, with where it is."""

    where: str  # key path, e.g. "pools.app.backends[1].weight"
    message: str
    line: int | None = None

    def __str__(self) -> str:
        loc = self.where or "(top level)"
        if self.line is not None:
            loc = f"line {self.line}: {loc}"
        return f"{loc}: {self.message}"


class ConfigError(TuilbError):
    """A configuration that cannot be used; carries every problem found, not just the first."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s)")


class CommandError(TuilbError):
    """An operator command that cannot be applied (unknown target, bad value)."""


class StartupError(TuilbError):
    """The engine could not start, e.g. a port already in use."""
