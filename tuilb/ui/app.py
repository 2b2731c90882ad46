"""The operations console: a Textual app that pulls snapshots and sends commands.

The app never touches sockets and never calls the engine except through its `Bridge`.
It reads a snapshot on a timer (`[ui] refresh` per second), skips the work when nothing
changed, and updates only the table cells that did: in one process every repaint is
time the proxy does not run.
"""

from __future__ import annotations

import gc
import time
from typing import Any, ClassVar

from rich.color import Color as RichColor
from rich.console import Group
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.strip import Strip
from textual.widgets import Footer, Input, RichLog, Sparkline, Static

from tuilb import control
from tuilb.errors import CommandError
from tuilb.model import AdminState, BackendSnapshot, Event, Snapshot
from tuilb.stats import RateTracker, human_bytes
from tuilb.ui import themes
from tuilb.ui.bridge import Bridge
from tuilb.ui.keymap import KEYS
from tuilb.ui.screens import Confirm, DetailData, Details, Help, WeightInput, route_rows
from tuilb.ui.table import HTTP_ONLY, BackendTable
from tuilb.ui.table import KEYS as KEYS_ALL
from tuilb.ui.text import clean, safe

EVENT_STYLE = {"state": "cyan", "weight": "magenta", "health": "yellow", "drained": "green"}


def _blend(low: RichColor, high: RichColor, ratio: float) -> RichColor:
    """Textual's blend_colors (textual.renderables._blend_colors, a private module)."""
    if low.triplet is None or high.triplet is None:
        return high
    (r1, g1, b1), (r2, g2, b2) = low.triplet, high.triplet
    return RichColor.from_rgb(
        r1 + (r2 - r1) * ratio, g1 + (g2 - g1) * ratio, b1 + (b2 - b1) * ratio
    )


class Spark(Sparkline):
    """Textual's Sparkline, same bars and colours, drawn as strips without Rich.

    Rendering the Rich sparkline took 1.5-2.5 ms for 60x3 cells (a Style and a colour
    blend per cell, then Rich's line splitting); this computes each bar once and caches
    the strips until the data, the size or the colours change.
    """

    BARS = "▁▂▃▄▅▆▇█"
    _strips: tuple[tuple[Any, ...], list[Strip]] | None = None

    def render_line(self, y: int) -> Strip:
        width, height = self.size
        base = self.visual_style.rich_style
        _, background = self.background_colors
        low = background + self.get_component_styles("sparkline--min-color").color
        high = background + self.get_component_styles("sparkline--max-color").color
        data = tuple(self.data or ())
        key = (data, width, height, base, low, high)
        if self._strips is None or self._strips[0] != key:
            self._strips = (
                key,
                self._draw(data, width, height, base, low.rich_color, high.rich_color),
            )
        strips = self._strips[1]
        return strips[y] if 0 <= y < len(strips) else Strip.blank(width, base)

    def _draw(
        self,
        data: tuple[float, ...],
        width: int,
        height: int,
        base: Style,
        low: RichColor,
        high: RichColor,
    ) -> list[Strip]:
        """The rows of textual.renderables.sparkline.Sparkline (summary: max), top first."""
        height = height or 1
        if not data:  # blank rows above a baseline (padded later, as Rich's were)
            return [
                *[Strip([])] * (height - 1),
                Strip([Segment("▁" * width, base + Style(color=low))]),
            ]
        if len(data) == 1:
            return [Strip([Segment("█" * width, base + Style(color=high))])] * height
        bars = len(self.BARS)
        segments = bars * height - 1
        minimum, maximum = min(data), max(data)
        extent = maximum - minimum or 1
        n = len(data)
        # Sparkline's buckets (int(Fraction(n, width) * i) is (n * i) // width), ...
        buckets = [data[(n * i) // width : (n * (i + 1)) // width] for i in range(width)]
        buckets = [b for b in buckets if b]
        # ... and its walk over them: per column, its height in eighths and its style.
        styles: dict[Any, Style] = {}
        columns: list[tuple[int, Style]] = []
        index, walk = 0.0, len(buckets) / width
        for _ in range(width):
            ratio = (max(buckets[int(index)]) - minimum) / extent
            color = _blend(low, high, ratio)
            style = styles.get(color.triplet)
            if style is None:
                style = styles[color.triplet] = base + Style.from_color(color)
            columns.append((int(ratio * segments), style))
            index += walk
        rows: list[Strip] = []
        for i in reversed(range(height)):
            floor, ceiling = i * bars, (i + 1) * bars
            row: list[Segment] = []
            for level, style in columns:
                if level < floor:
                    row.append(Segment(" ", base))
                elif level >= ceiling:
                    row.append(Segment("█", style))
                else:
                    row.append(Segment(self.BARS[level % bars], style))
            # Fewer segments: less work for every later pass over the line.
            rows.append(Strip(row, width).simplify())
        return rows


class TuilbApp(App[int]):
    CSS_PATH = "tuilb.tcss"
    TITLE = "tuilb"
    ENABLE_COMMAND_PALETTE = True
    BINDINGS: ClassVar[list[BindingType]] = [
        *(Binding(k.keys, k.action, k.label, show=k.footer, priority=k.priority) for k in KEYS),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]

    def __init__(self, bridge: Bridge, theme: str | None = None) -> None:
        super().__init__()
        self.bridge = bridge
        self.available = themes.load_themes()
        self.initial_theme = themes.validate_theme_name(
            theme or themes.DEFAULT_THEME, list(self.available)
        )
        self.tracker = RateTracker()
        self.needle = ""
        self.drain_start: dict[str, int] = {}
        self.last_event = 0
        self.last_record = 0
        self.last_pools: Any = None
        self.snap: Snapshot | None = None
        self.status = ""
        self.frozen = False
        self.last_summary: tuple[str, ...] = ()
        self.sparks_ts = 0.0

    # -- layout -------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Static(id="summary")
        pools = self.bridge.config.pools.values()
        http = any(listener.protocol == "http" for listener in self.bridge.config.listeners)
        yield BackendTable(
            columns=KEYS_ALL if http else tuple(k for k in KEYS_ALL if k not in HTTP_ONLY),
            widths={
                "backend": max(
                    (len(clean(f"{p.name}/{b.name}")) for p in pools for b in p.backends), default=7
                ),
                "address": max(
                    (len(clean(b.address)) for p in pools for b in p.backends), default=7
                ),
            },
        )
        with Horizontal(id="lower"):
            with Vertical(id="sparks"):
                yield Static("traffic", id="traffic-label")
                yield Spark([], id="traffic")
                yield Static("new connections/s", id="rate-label")
                yield Spark([], id="rate")
                yield Static("", id="check-label")
            yield RichLog(id="events", max_lines=500, wrap=False, markup=False)
        yield Input(placeholder="filter rows (Enter to apply, Esc to clear)", id="filter")
        yield Footer()

    def on_mount(self) -> None:
        for theme in self.available.values():
            self.register_theme(theme)
        self.theme = self.initial_theme
        for extra in self.bridge.extras:
            self.bind(extra.key, f"extra('{extra.name}')", description=extra.name)
        self.query_one("#filter", Input).display = False
        self.bridge.start(self._engine_finished)
        self.refresh_data()
        self.set_interval(1 / self.bridge.config.ui.refresh, lambda: self.refresh_data(timer=True))

    # -- pulling data -------------------------------------------------------------------------
    def refresh_data(self, timer: bool = False) -> None:
        """Pull a snapshot and show it, in one frame: the table rows whose text changed,
        the header if it changed, the sparklines. `timer` (the periodic refresh) redraws
        the sparklines at most once a second; a direct call (start, after a command)
        shows everything at once."""
        snap = self.bridge.snapshot()
        self.snap = snap
        self.tracker.feed(snap)
        moving = any(
            r.connections or r.bytes_in or r.bytes_out for r in self.tracker.rates.values()
        )
        changed = snap.pools != self.last_pools or moving
        if changed:
            self.last_pools = snap.pools
            self._track_drains(snap)
            self.query_one(BackendTable).show(snap, self.tracker, self.drain_start, self.needle)
        self._update_summary(snap)
        # A minute of history hardly moves in half a second.
        if changed and (not timer or snap.ts - self.sparks_ts >= 1.0):
            self.sparks_ts = snap.ts
            self._update_sparks()
        self._pull_events()
        if not self.frozen:
            # Built once: Textual roughly doubles the heap, and full collections that walk
            # it took ~15 ms, all of it time the proxy would not run.
            gc.freeze()
            self.frozen = True

    def _track_drains(self, snap: Snapshot) -> None:
        for pool in snap.pools:
            for b in pool.backends:
                target = f"{pool.name}/{b.name}"
                if b.state is AdminState.DRAINING:
                    self.drain_start[target] = max(
                        self.drain_start.get(target, 0), b.active_connections
                    )
                else:
                    self.drain_start.pop(target, None)

    def _update_summary(self, snap: Snapshot) -> None:
        config = self.bridge.config
        listeners = Text("listeners ", style="bold")
        bound = self.bridge.listening()
        seen = {x.name: x for x in snap.listeners}
        http = any(x.protocol == "http" for x in config.listeners)
        for i, listener in enumerate(config.listeners):
            if i:
                listeners.append("  ")
            address = bound.get(listener.name, str(listener.bind))
            listeners.append(clean(listener.name), style="bold")
            routes = len(listener.http.routes)
            to = listener.pool or "-"
            if routes:
                to += f" +{routes} route{'s' if routes > 1 else ''}"
            listeners.append(clean(f" {listener.protocol} {address} -> {to}"))
            rates = self.tracker.listener_rates.get(listener.name)
            if rates is not None and listener.protocol == "http":
                listeners.append(f" {rates[0]:.1f} req/s")
                if rates[1]:
                    listeners.append(f" {rates[1]:.1f} err/s", style="bold red")
            stats = seen.get(listener.name)
            if stats is not None and stats.proxy_rejected:
                listeners.append(f" {stats.proxy_rejected} PROXY rejected", style="bold red")
            if stats is not None and stats.sni_rejected:
                listeners.append(f" {stats.sni_rejected} hello rejected", style="bold red")
            if stats is not None and listener.protocol == "udp":
                listeners.append(f" {stats.flows} flows")
                for count, what in (
                    (stats.flows_refused, "refused"),
                    (stats.flows_moved, "moved"),
                    (stats.unrouted, "unrouted"),
                ):
                    if count:
                        listeners.append(f" {count} {what}", style="bold yellow")
        active = sum(b.active_connections for p in snap.pools for b in p.backends)
        totals = self.tracker.totals
        line = Text.assemble(
            ("active ", "bold"),
            str(active),
            ("   conn/s ", "bold"),
            f"{totals.connections:.1f}",
            *((("   req/s ", "bold"), f"{totals.requests:.1f}") if http else ()),
            ("   errors/s ", "bold"),
            (f"{totals.failures:.1f}", "bold red" if totals.failures else ""),
            ("   traffic ", "bold"),
            f"{human_bytes(totals.bytes_in)}/s in, {human_bytes(totals.bytes_out)}/s out",
        )
        pools = Text("pools ", style="bold")
        for i, pool in enumerate(snap.pools):
            eligible = sum(b.eligible for b in pool.backends)
            style = "bold red" if eligible == 0 else ""
            pools.append(("  " if i else "") + clean(f"{pool.name} ({pool.algorithm}) "))
            pools.append(f"{eligible}/{len(pool.backends)} eligible", style=style)
            if pool.refused:
                pools.append(f", {pool.refused} refused", style="red")
        parts: list[Text] = [listeners, line, pools]
        if self.bridge.stopping:
            parts.append(
                Text(
                    f"SHUTTING DOWN: {active} connection(s) finishing "
                    f"(up to {config.timeouts.shutdown_grace:g}s); "
                    "q again closes them now",
                    style="bold reverse yellow",
                )
            )
        elif self.status:
            parts.append(Text(self.status, style="bold"))
        shown = tuple(part.plain for part in parts)
        if shown != self.last_summary:  # an unchanged header is not repainted
            # A new layout of the whole screen only when the header's height changes:
            # a layout pass measured more than the repaint itself.
            relayout = len(shown) != len(self.last_summary)
            self.last_summary = shown
            self.query_one("#summary", Static).update(Group(*parts), layout=relayout)

    def _update_sparks(self) -> None:
        target = self.query_one(BackendTable).selected
        traffic = list(self.tracker.traffic.get(target or "", []))
        # HTTP backends show their latency below the traffic; TCP ones their connections.
        latency = list(self.tracker.latency.get(target or "", []))
        if latency:
            rate, label = latency, f"latency p99 {latency[-1]:.1f} ms"
        else:
            rate = list(self.tracker.connection_rate.get(target or "", []))
            label = f"new connections/s {rate[-1]:.1f}" if rate else "new connections/s -"
        # An all-zero series would draw as full bars (Sparkline scales min..max): show none.
        self.query_one("#traffic", Spark).data = traffic if any(traffic) else []
        self.query_one("#rate", Spark).data = rate if any(rate) else []
        now = human_bytes(traffic[-1]) if traffic else "0"
        self.query_one("#traffic-label", Static).update(
            safe(f"{target or '-'}  traffic {now}/s"), layout=False
        )
        self.query_one("#rate-label", Static).update(safe(label), layout=False)
        self.query_one("#check-label", Static).update(self._last_check(target), layout=False)

    def _last_check(self, target: str | None) -> Text:
        """The selected backend's last health check: verdict, reason, time taken, age."""
        if target is None or self.snap is None:
            return Text("")
        try:
            b = self.snap.backend(target)
        except KeyError:
            return Text("")
        last = b.last_check
        if b.check == "none" or last is None:
            return Text("health checks: none" if b.check == "none" else "health checks: waiting")
        verdict = Text("passed", "green") if last.ok else Text("FAILED", "bold red")
        age = max(0.0, self.snap.ts - last.ts)
        return Text.assemble(
            "last check ",
            verdict,
            " ",
            safe(last.reason),
            f" in {last.duration * 1000:.0f} ms, {age:.0f}s ago",
        )

    def _pull_events(self) -> None:
        log = self.query_one("#events", RichLog)
        for event in self.bridge.events_since(self.last_event):
            self.last_event = event.id
            log.write(event_line(event))
        for record in self.bridge.warnings_since(self.last_record):
            self.last_record = record.id
            log.write(
                Text.assemble(
                    (time.strftime("%H:%M:%S ", time.localtime(record.ts)), "dim"),
                    (clean(record.event), "bold red"),
                    " ",
                    clean(" ".join(f"{k}={v}" for k, v in record.fields.items())),
                )
            )

    def on_backend_table_row_highlighted(self) -> None:
        self._update_sparks()

    def on_backend_table_row_selected(self) -> None:
        self.action_details()

    # -- commands -----------------------------------------------------------------------------
    def _target(self) -> str | None:
        target = self.query_one(BackendTable).selected
        if target is None:
            self.notify("No backend selected.", severity="warning")
        return target

    def submit(self, command: control.Command, source: str = "keyboard") -> None:
        """Send `command`, asking first when it would leave a pool with nothing to serve."""
        # Judged on the state now, not on the last refresh (up to 1/refresh s old).
        pool = control.empties_pool(self.bridge.snapshot(), command)
        if pool is None:
            self._send(command, source)
            return
        question = safe(
            f"{describe(command)}? It is the last eligible backend of pool {pool!r}: "
            f"traffic to {pool!r} will FAIL. Go ahead?"
        )

        def answered(yes: bool | None) -> None:
            if yes:
                self._send(command, source)

        self.push_screen(Confirm(question, warning=True), answered)

    def _send(self, command: control.Command, source: str) -> None:
        def done(message: str | None, error: str | None) -> None:
            if error is not None:
                self.notify(clean(error), severity="error", markup=False)
            else:
                self.notify(clean(message or ""), markup=False)
            self.refresh_data()

        self.bridge.submit(command, done, source)

    def action_drain(self, source: str = "keyboard") -> None:
        if (target := self._target()) is not None:
            self.submit(control.Drain(target), source)

    def action_enable(self, source: str = "keyboard") -> None:
        if (target := self._target()) is not None:
            self.submit(control.Enable(target), source)

    def action_reset(self, source: str = "keyboard") -> None:
        if (target := self._target()) is not None:
            self.submit(control.Reset(target), source)

    def action_disable(self, source: str = "keyboard") -> None:
        target = self._target()
        if target is None:
            return
        command = control.Disable(target)
        if control.empties_pool(self.bridge.snapshot(), command):
            self.submit(command, source)  # the pool warning is the confirmation
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._send(command, source)

        self.push_screen(
            Confirm(
                safe(f"Disable {target}? It takes no new connections (open ones are not cut).")
            ),
            answered,
        )

    def action_weight_step(self, delta: int) -> None:
        if (target := self._target()) is not None:
            self.submit(control.SetWeight(target, delta, relative=True))

    def action_weight_input(self, source: str = "keyboard") -> None:
        target = self._target()
        if target is None:
            return
        current = self._backend(target).weight

        def entered(value: str | None) -> None:
            if value is None:
                return
            try:
                self.submit(control.build("weight", [target, value]), source)
            except CommandError as exc:
                self.notify(clean(exc), severity="error", markup=False)

        self.push_screen(WeightInput(target, current), entered)

    def action_extra(self, name: str) -> None:
        if (target := self._target()) is None:
            return

        def done(message: str | None, error: str | None) -> None:
            self.notify(
                clean(error or message or ""),
                severity="error" if error else "information",
                markup=False,
            )

        self.bridge.run_extra(name, target, done)

    def _backend(self, target: str) -> BackendSnapshot:
        return (self.snap or self.bridge.snapshot()).backend(target)

    # -- views --------------------------------------------------------------------------------
    def action_details(self) -> None:
        target = self._target()
        if target is None:
            return

        def read() -> DetailData:
            events = [e for e in self.bridge.events_since(0) if e.target == target]
            snap = self.bridge.snapshot()
            backend = snap.backend(target)
            return backend, events, route_rows(self.bridge.config, snap, backend.pool)

        self.push_screen(Details(target, read))

    def action_help(self) -> None:
        extra = [(e.key, e.help) for e in self.bridge.extras]
        self.push_screen(Help(extra))

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "filter":
            self._apply_filter(event.value)

    def action_clear_filter(self) -> None:
        self._apply_filter("")

    def _apply_filter(self, needle: str) -> None:
        self.needle = needle.strip()
        box = self.query_one("#filter", Input)
        box.value = self.needle
        box.display = bool(self.needle)
        table = self.query_one(BackendTable)
        table.focus()
        self.status = f"filter: {self.needle}" if self.needle else ""
        if self.snap is not None:
            table.show(self.snap, self.tracker, self.drain_start, self.needle)
            self._update_summary(self.snap)

    def action_cursor(self, step: int) -> None:
        table = self.query_one(BackendTable)
        table.move_cursor(row=max(0, table.cursor_row + step))

    def action_cycle_theme(self) -> None:
        self.theme = themes.next_theme(self.theme)
        self.notify(f"theme: {self.theme}")

    # -- quitting -----------------------------------------------------------------------------
    async def action_quit(self, from_anywhere: bool = False) -> None:
        if len(self.screen_stack) > 1:
            if not from_anywhere:
                return  # q inside a dialog belongs to the dialog
            while len(self.screen_stack) > 1:
                self.pop_screen()
        if self.bridge.stopping:
            self.bridge.shutdown()  # the second time: close what is left now
            return
        active = self.bridge.active_connections()
        if active == 0:
            self._begin_shutdown()
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._begin_shutdown()

        grace = self.bridge.config.timeouts.shutdown_grace
        self.push_screen(
            Confirm(
                safe(
                    f"{active} connection(s) are open. Quit? tuilb stops "
                    f"accepting and lets them finish (up to {grace:g}s)."
                ),
                warning=True,
            ),
            answered,
        )

    def reload(self, why: str) -> None:
        """From the host (SIGHUP): the same as the reload key."""
        self.action_reload(why)

    def action_reload(self, source: str = "keyboard") -> None:
        def done(message: str | None, error: str | None) -> None:
            if error:
                self.notify(clean(error), title="reload refused", severity="error", markup=False)
            else:
                self.notify(clean(message or ""), title=f"reload ({source})", markup=False)
            self.refresh_data()

        self.bridge.reload(done)

    def shutdown_requested(self, why: str) -> None:
        """From the host: a signal arrived. Same path as the quit key."""
        if self.bridge.stopping:
            self.bridge.shutdown()
        else:
            self._begin_shutdown()
        self.status = f"{why}: shutting down"

    def _begin_shutdown(self) -> None:
        self.bridge.shutdown()
        if not self.bridge.running:
            self.exit(0)  # nothing to wait for (a bridge without an engine run)
            return
        if self.snap is not None:
            self._update_summary(self.snap)

    def _engine_finished(self, result: Any) -> None:
        """The engine's run ended (shutdown done, or a failure): leave the UI."""
        failed = getattr(result, "error", None) is not None
        self.exit(1 if failed else 0)

    def get_system_commands(self, screen: Screen[Any]) -> Any:
        yield from super().get_system_commands(screen)
        tables = self.query(BackendTable)
        target = tables.first().selected if tables else None
        if target is not None:
            for name, spec in control.REGISTRY.items():
                if name == "weight":
                    continue
                action = getattr(self, f"action_{name}")
                yield SystemCommand(
                    f"{name.capitalize()} {clean(target)}",
                    spec.help,
                    lambda action=action: action("palette"),
                )
            yield SystemCommand(
                f"Weight of {clean(target)}...",
                control.REGISTRY["weight"].help,
                lambda: self.action_weight_input("palette"),
            )
            yield SystemCommand(
                f"Details of {clean(target)}", "Counters and recent events.", self.action_details
            )
            for extra in self.bridge.extras:
                yield SystemCommand(
                    f"{extra.name.capitalize()} {clean(target)}",
                    extra.help,
                    lambda name=extra.name: self.action_extra(name),
                )
        yield SystemCommand("Filter rows", "Show only matching backends.", self.action_filter)
        yield SystemCommand("Next theme", "Cycle the colour theme.", self.action_cycle_theme)
        yield SystemCommand("Key reference", "Every tuilb key with its help.", self.action_help)


def describe(command: control.Command) -> str:
    """What a command will do, for a confirmation."""
    if isinstance(command, control.SetWeight):
        if command.relative:
            return f"Change the weight of {command.target} by {command.weight:+d}"
        return f"Set the weight of {command.target} to {command.weight}"
    return f"{type(command).__name__} {command.target}"


def event_line(event: Event) -> Text:
    return Text.assemble(
        (time.strftime("%H:%M:%S ", time.localtime(event.ts)), "dim"),
        (clean(event.target), "bold"),
        " ",
        (clean(f"{event.kind}: {event.old} -> {event.new}"), EVENT_STYLE.get(event.kind, "")),
        ("  " + clean(event.cause), "italic"),
    )
