"""What the dashboard may ask of the engine, and nothing more.

The UI holds a `Bridge`: it reads snapshots and events, submits commands, and asks for
shutdown. `tuilb.host` implements it over the trio guest run; tests implement it over a
bare model. Commands go through the same `control` registry as every other entry point.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from tuilb.config import Config
from tuilb.control import Command
from tuilb.log import Record
from tuilb.model import Event, Snapshot


@dataclass(frozen=True, slots=True)
class Extra:
    """An action the host offers beyond the command registry (e.g. the demo's fail key)."""

    key: str
    name: str
    help: str


Done = Callable[[str | None, str | None], None]


class Bridge(Protocol):
    @property
    def config(self) -> Config:
        """The configuration in force (a reload replaces it)."""
        ...

    def reload(self, done: Done) -> None:
        """Re-read the configuration file (the engine's reload)."""
        ...

    extras: tuple[Extra, ...]

    def start(self, on_finished: Callable[[object], None]) -> None:
        """Start the engine, if this bridge runs one (called from the app's on_mount);
        `on_finished(outcome)` is called when it has ended, for whatever reason."""

    @property
    def running(self) -> bool:
        """An engine is running behind this bridge (quitting must wait for it)."""

    def snapshot(self) -> Snapshot: ...

    def events_since(self, last_id: int) -> list[Event]: ...

    def warnings_since(self, last_id: int) -> list[Record]:
        """Log records above info level (failed connects, ...) newer than `last_id`."""

    def submit(self, command: Command, done: Done, source: str = "keyboard") -> None:
        """Apply `command` soon; then `done(message, error)` is called on the UI's thread."""

    def run_extra(self, name: str, target: str, done: Done) -> None: ...

    def active_connections(self) -> int: ...

    def listening(self) -> dict[str, str]:
        """Listener name -> the address it is bound to (the real port, once bound)."""

    def shutdown(self) -> None:
        """Begin a graceful shutdown (idempotent; a second call cuts connections)."""

    @property
    def stopping(self) -> bool: ...
