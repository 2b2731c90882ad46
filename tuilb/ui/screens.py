"""Modal screens: confirmation, exact weight, help, and a backend's details."""

from __future__ import annotations

from collections.abc import Callable

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from tuilb.control import parse_weight
from tuilb.errors import CommandError
from tuilb.model import BackendSnapshot, Event
from tuilb.stats import human_bytes
from tuilb.ui.keymap import KEYS
from tuilb.ui.text import safe


class Confirm(ModalScreen[bool]):
    """y confirms; n or Escape cancels."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: Text, warning: bool = False) -> None:
        super().__init__(classes="modal")
        self.question = question
        self.warning = warning

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog" + (" danger" if self.warning else "")):
            yield Static(self.question, id="question")
            yield Static(Text("y: yes    n / Esc: no", style="bold"), classes="hint")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class WeightInput(ModalScreen[str | None]):
    """A small input for an exact weight (or +N / -N); Enter sets, Escape cancels."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, target: str, current: int) -> None:
        super().__init__(classes="modal")
        self.target = target
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(safe(f"Weight for {self.target} (now {self.current}): 0..256, +N, -N"))
            yield Input(placeholder=str(self.current), id="weight")
            yield Static("", id="weight-error", classes="error")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        try:
            parse_weight(event.value)
        except CommandError as exc:
            self.query_one("#weight-error", Static).update(safe(exc))
            return
        self.dismiss(event.value.strip())

    def action_cancel(self) -> None:
        self.dismiss(None)


class Help(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "close", "Close")]

    def __init__(self, extra: list[tuple[str, str]]) -> None:
        super().__init__(classes="modal")
        self.extra = extra

    def compose(self) -> ComposeResult:
        table = Table(title="Keys", expand=True, show_edge=False)
        table.add_column("key", style="bold", no_wrap=True)
        table.add_column("what it does")
        for key in KEYS:
            table.add_row(_key_names(key.keys), key.help)
        for keys, help_text in self.extra:
            table.add_row(_key_names(keys), help_text)
        table.add_row("ctrl+p", "Command palette: every action, searchable.")
        with Vertical(classes="dialog wide"):
            yield Static(table)
            yield Static(Text("Esc / ? to close", style="bold"), classes="hint")

    def action_close(self) -> None:
        self.dismiss(None)


def _key_names(keys: str) -> str:
    names = {"plus": "+", "equals_sign": "=", "minus": "-", "slash": "/", "question_mark": "?"}
    return " ".join(names.get(k, k) for k in keys.split(","))


class Details(ModalScreen[None]):
    """One backend's full counters and its recent events, refreshed by the app."""

    BINDINGS = [Binding("escape,enter,q", "close", "Close")]

    def __init__(self, target: str, read: Callable[[], tuple[BackendSnapshot, list[Event]]]):
        super().__init__(classes="modal")
        self.target = target
        self.read = read

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Static(id="details")
            yield Static(Text("Esc / Enter to close", style="bold"), classes="hint")

    def on_mount(self) -> None:
        self.update_view()
        self.set_interval(1.0, self.update_view)

    def update_view(self) -> None:
        backend, events = self.read()
        table = Table(title=safe(self.target), expand=True, show_header=False, show_edge=False)
        table.add_column("what", style="bold", no_wrap=True)
        table.add_column("value")
        rows = [
            ("address", backend.address),
            ("state", backend.state),
            ("health", backend.health),
            ("weight", f"{backend.weight} (configured {backend.config_weight})"),
            ("effective weight", backend.effective_weight),
            ("max connections", backend.max_connections or "unlimited"),
            ("active connections", backend.active_connections),
            ("total connections", backend.total_connections),
            ("failed connects", backend.failed_connects),
            ("last error", backend.last_error or "-"),
            (
                "bytes in / out",
                f"{human_bytes(backend.bytes_in)} / {human_bytes(backend.bytes_out)}",
            ),
        ]
        for name, value in rows:
            table.add_row(name, safe(value))
        table.add_row("", "")
        table.add_row("recent events", "")
        for event in events[-12:]:
            table.add_row(_clock(event.ts), safe(f"{event.old} -> {event.new}: {event.cause}"))
        self.query_one("#details", Static).update(table)

    def action_close(self) -> None:
        self.dismiss(None)


def _clock(ts: float) -> str:
    import time

    return time.strftime("%H:%M:%S", time.localtime(ts))
