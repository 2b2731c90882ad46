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

from tuilb.config import Config
from tuilb.control import parse_weight
from tuilb.errors import CommandError
from tuilb.model import BackendSnapshot, Event, Snapshot
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


DetailData = tuple[BackendSnapshot, list[Event], list[tuple[str, str]]]
"""A backend, its recent events, and (listener route, hits) rows for its pool."""


def route_rows(config: Config, snapshot: Snapshot, pool: str) -> list[tuple[str, str]]:
    """The HTTP routes that lead to `pool` (and listeners whose default it is), with how
    many requests each matched."""
    stats = {listener.name: listener for listener in snapshot.listeners}
    rows: list[tuple[str, str]] = []
    for listener in config.listeners:
        if listener.protocol != "http":
            continue
        seen = stats.get(listener.name)
        hits = dict(seen.route_hits) if seen else {}
        for i, route in enumerate(listener.http.routes):
            if route.pool != pool:
                continue
            conditions = [
                f"host {route.host}" if route.host else "",
                f"path {route.path_prefix}*" if route.path_prefix else "",
                "methods " + ",".join(route.methods) if route.methods else "",
                " ".join(f"{n}: {v}" for n, v in route.headers),
            ]
            what = "  ".join(c for c in conditions if c) or "every request"
            rows.append((f"{listener.name} route {i + 1}", f"{what}: {hits.get(i, 0)} requests"))
        if listener.pool == pool:
            default = seen.default_hits if seen else 0
            rows.append((f"{listener.name} default", f"no route matched: {default} requests"))
    return rows


class Details(ModalScreen[None]):
    """One backend's full counters and its recent events, refreshed by the app."""

    BINDINGS = [Binding("escape,enter,q", "close", "Close")]

    def __init__(self, target: str, read: Callable[[], DetailData]):
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
        backend, events, routes = self.read()
        table = Table(title=safe(self.target), expand=True, show_header=False, show_edge=False)
        table.add_column("what", style="bold", no_wrap=True)
        table.add_column("value")
        rows = [
            ("address", backend.address),
            ("state", backend.state),
            ("health", health_text(backend)),
            ("checks", check_text(backend)),
            ("passive", passive_text(backend)),
            ("weight", f"{backend.weight} (configured {backend.config_weight})"),
            ("effective weight", weight_text(backend)),
            ("max connections", backend.max_connections or "unlimited"),
            ("active connections", backend.active_connections),
            ("total connections", backend.total_connections),
            ("failed connects", backend.failed_connects),
            ("resets by backend", backend.resets),
            *http_rows(backend),
            ("last error", backend.last_error or "-"),
            (
                "bytes in / out",
                f"{human_bytes(backend.bytes_in)} / {human_bytes(backend.bytes_out)}",
            ),
        ]
        for name, value in rows:
            table.add_row(name, safe(value))
        if routes:
            table.add_row("", "")
            table.add_row("routes to this pool", "")
            for where, what in routes:
                table.add_row(safe(where), safe(what))
        if backend.checks:
            table.add_row("", "")
            table.add_row("recent checks", "")
            for check in backend.checks[-8:]:
                verdict = Text("pass", "green") if check.ok else Text("FAIL", "bold red")
                took = f"{check.duration * 1000:.0f} ms"
                table.add_row(
                    _clock(check.ts), verdict + Text(f"  {took:>7}  ") + safe(check.reason)
                )
        table.add_row("", "")
        table.add_row("recent events", "")
        for event in events[-12:]:
            table.add_row(_clock(event.ts), safe(f"{event.old} -> {event.new}: {event.cause}"))
        self.query_one("#details", Static).update(table)

    def action_close(self) -> None:
        self.dismiss(None)


def http_rows(b: BackendSnapshot) -> list[tuple[str, str]]:
    """HTTP counters, for backends that answered requests."""
    if not b.requests:
        return []
    classes = "  ".join(f"{i + 1}xx {n}" for i, n in enumerate(b.responses) if n)
    rows = [("requests", str(b.requests)), ("responses", classes)]
    if b.latency:
        p50, p90, p99 = (f"{v * 1000:.1f}" for v in b.latency)
        rows.append(("latency (10 s)", f"p50 {p50} ms  p90 {p90} ms  p99 {p99} ms"))
    return rows


def health_text(b: BackendSnapshot) -> str:
    """'up 3/3' (3 failures from down), 'down 1/2' (1 of 2 successes to up), 'unknown'."""
    text = f"{b.health} {b.health_progress}".strip()
    return f"{text}, ejected" if b.ejected else text


def check_text(b: BackendSnapshot) -> str:
    if b.check == "none":
        return "none configured"
    last = b.last_check
    if last is None:
        return f"{b.check}: no result yet"
    verdict = "passed" if last.ok else "failed"
    return f"{b.check}: last {verdict} ({last.reason}) in {last.duration * 1000:.0f} ms"


def passive_text(b: BackendSnapshot) -> str:
    ejections = f"{b.ejections} ejection{'s' if b.ejections != 1 else ''} so far"
    if b.ejected:
        return f"ejected, back in {b.eject_left:.0f}s ({ejections})"
    return f"in ({ejections})" if b.ejections else "in"


def weight_text(b: BackendSnapshot) -> str:
    if b.slow_start < 1.0:
        return f"{b.effective_weight:.1f} (slow start: {b.slow_start:.0%} of {b.weight})"
    return f"{b.effective_weight:g}"


def _clock(ts: float) -> str:
    import time

    return time.strftime("%H:%M:%S", time.localtime(ts))
