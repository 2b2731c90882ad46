"""The dashboard, driven with Textual's Pilot.

Most tests run the real engine on loopback: `tuilb.demo.Demo(rate=0)` provides the backends
(served inside the guest trio run) and the configuration, `GuestBridge` hosts the engine as a
trio guest on the app's asyncio loop, exactly as `tuilb run` does. A few tests use
`FakeBridge`, a Bridge over a bare Model with a fixed clock, to feed the UI text no config
would allow (markup, escape sequences) or errors no engine would produce.

pytest runs in trio mode, so these are plain sync tests that call `asyncio.run`; every wait
polls a condition inside `pilot.pause()` with a bounded number of steps.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from rich.text import Text
from textual import events
from textual.app import App
from textual.command import CommandList, CommandPalette
from textual.geometry import Region
from textual.pilot import Pilot
from textual.widgets import Input, RichLog, Sparkline, Static
from textual.widgets._toast import Toast

from tests.conftest import make_config
from tuilb import control
from tuilb.config import Config, UiConfig, parse
from tuilb.control import Command, Disable, Drain, Enable, SetWeight, empties_pool
from tuilb.demo import Demo
from tuilb.errors import CommandError
from tuilb.healthconf import HealthConfig
from tuilb.host import GuestBridge
from tuilb.log import Record
from tuilb.model import (
    AdminState,
    BackendSnapshot,
    Event,
    Health,
    Model,
    PoolSnapshot,
    Snapshot,
)
from tuilb.stats import Rates, RateTracker, human_bytes
from tuilb.ui import themes
from tuilb.ui.app import Spark, TuilbApp, event_line
from tuilb.ui.bridge import Extra
from tuilb.ui.keymap import KEYS
from tuilb.ui.screens import Confirm, Details, Help, WeightInput
from tuilb.ui.table import BackendTable, drain_text, matches, row_cells
from tuilb.ui.text import clean, safe

SIZE = (160, 45)
SCENARIO_TIMEOUT = 20.0  # seconds for one asyncio scenario (pytest-timeout is the backstop)
FIXED_TS = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
HOSTILE = "[bold red]boom[/] \x1b[31mred\x9b2J\x07[link=http://evil]x[/link]"


@pytest.fixture(autouse=True)
def _unfreeze_gc() -> Iterator[None]:
    # The app (and the engine) call gc.freeze() once built; in a long-lived test process
    # that would pin every app of every earlier test in the permanent generation.
    yield
    gc.unfreeze()


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(scenario(), SCENARIO_TIMEOUT)

    asyncio.run(bounded())


async def until(pilot: Pilot[Any], predicate: Callable[[], bool], what: str) -> None:
    """Let the app run until `predicate()` holds; at most ~5 s."""
    for _ in range(250):
        if predicate():
            return
        if pilot.app._exception is not None:
            raise AssertionError(f"the app crashed waiting for {what}") from pilot.app._exception
        await pilot.pause(0.02)
    assert predicate(), f"timed out waiting for {what}"


CHARACTERS = {"plus": "+", "equals_sign": "=", "minus": "-", "slash": "/", "question_mark": "?"}


async def press(pilot: Pilot[Any], *keys: str) -> None:
    """Press `keys` one by one, as the terminal driver delivers them: a Key event posted to
    the app (bindings, focus and widgets handle it as they would a real key), then wait
    until the screen has processed it. `Pilot.press` does the same plus two waits for the
    CPU to go idle per key, about 0.1 s each here, which would make this file several
    times slower; conditions that follow a key are waited for with `until`."""
    for key in keys:
        event = events.Key(key, key if len(key) == 1 else CHARACTERS.get(key))
        event.set_sender(pilot.app)
        pilot.app.post_message(event)
        await pilot.pause(0)


async def modal(pilot: Pilot[Any], kind: type) -> None:
    """Wait until a `kind` screen is on top and laid out (its text can be read)."""
    await until(
        pilot,
        lambda: isinstance(pilot.app.screen, kind) and screen_text(pilot.app).strip() != "",
        f"a {kind.__name__} screen",
    )


def table_of(app: TuilbApp) -> BackendTable:
    return app.query_one(BackendTable)


def cell(app: TuilbApp, target: str, column: str) -> str:
    value = table_of(app).get_cell(target, column)
    return value.plain if isinstance(value, Text) else str(value)


def rows(app: TuilbApp) -> list[str]:
    return table_of(app).order


def screen_text(app: App[Any]) -> str:
    """What the terminal shows now, as plain text lines."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


def toasts(app: TuilbApp) -> list[str]:
    return [str(toast.render()) for toast in app.screen.query(Toast)]


def log_lines(app: TuilbApp) -> list[str]:
    return [line.text for line in app.query_one("#events", RichLog).lines]


# -- a real engine on loopback -------------------------------------------------------------------
@dataclass
class Live:
    app: TuilbApp
    pilot: Pilot[int]
    bridge: GuestBridge
    demo: Demo

    def port(self, listener: str) -> int:
        return int(self.bridge.listening()[listener].rpartition(":")[2])

    def state(self, target: str) -> AdminState:
        return self.bridge.snapshot().backend(target).state

    def weight(self, target: str) -> int:
        return self.bridge.snapshot().backend(target).weight

    async def until(self, predicate: Callable[[], bool], what: str) -> None:
        await until(self.pilot, predicate, what)

    async def press(self, *keys: str) -> None:
        await press(self.pilot, *keys)

    async def modal(self, kind: type) -> None:
        await modal(self.pilot, kind)

    async def main_screen(self) -> None:
        await self.until(lambda: len(self.app.screen_stack) == 1, "the main screen")


@asynccontextmanager
async def live(
    notifications: bool = False, refresh: float | None = None, checks: bool = False
) -> AsyncIterator[Live]:
    """The dashboard over a real engine: pools web (fast, medium, slow) and echo (echo).

    The demo's health checks are off unless `checks`: their events would interleave with
    the ones these tests count."""
    demo = Demo(rate=0)
    config = demo.config
    if not checks:
        pools = {
            name: dataclasses.replace(pool, health=HealthConfig(), passive=None)
            for name, pool in config.pools.items()
        }
        config = dataclasses.replace(config, pools=pools)
    if refresh is not None:
        config = dataclasses.replace(config, ui=UiConfig(refresh=refresh))

    async def companion(engine: Any) -> None:
        engine.before_shutdown.append(demo.stop_traffic)
        await demo.run(engine)

    fail = Extra("f", "fail", "Demo: make the selected backend fail, or recover.")
    bridge = GuestBridge(config, [companion], [(fail, demo.toggle)])
    app = TuilbApp(bridge)
    try:
        async with dashboard(app, notifications) as pilot:
            await until(pilot, lambda: len(bridge.listening()) == 2, "the listeners to be bound")
            await until(pilot, lambda: table_of(app).row_count == 4, "the backend rows")
            yield Live(app, pilot, bridge, demo)
    finally:
        if bridge.running:
            bridge.shutdown()
            bridge.shutdown()  # the second request cuts whatever is still open
            await asyncio.wait_for(bridge.wait_finished(), 10)
        demo.close()


@asynccontextmanager
async def dashboard(app: TuilbApp, notifications: bool = False) -> AsyncIterator[Pilot[int]]:
    """`app.run_test()` at SIZE. On the way out it stops the app's timers first: run_test's
    teardown closes the screens while the app's message loop (and so its refresh timer)
    still runs, unlike `App.run_async`, which stops the timers before closing anything; a
    refresh tick in between would query widgets that are gone (NoMatches)."""
    async with app.run_test(size=SIZE, notifications=notifications) as pilot:
        yield pilot
        for timer in list(app._timers):
            timer.stop()


async def open_echo(t: Live) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client connection through the 'echo' listener, checked with one round trip."""
    reader, writer = await asyncio.open_connection("127.0.0.1", t.port("echo"))
    writer.write(b"ping\n")
    await writer.drain()
    assert await asyncio.wait_for(reader.readexactly(5), 5) == b"ping\n"
    return reader, writer


async def read_to_end(reader: asyncio.StreamReader) -> bytes:
    """What is left until the peer closes (a reset counts as closed)."""
    try:
        return await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:
        return b""


async def _select(t: Live, target: str) -> None:
    """Put the cursor on `target` without keys (moving with keys has its own test)."""
    table = table_of(t.app)
    table.move_cursor(row=rows(t.app).index(target))
    await t.pilot.pause()
    assert table.selected == target


def _apply(t: Live, command: Command) -> None:
    """Apply `command` through the bridge (set-up for a test, not what it tests)."""
    t.bridge.submit(command, lambda message, error: None, "test")


# -- start, cursor, movement ---------------------------------------------------------------------
def test_start_cursor_on_the_first_backend_row_and_movement_keys() -> None:
    async def scenario() -> None:
        async with live() as t:
            table = table_of(t.app)
            assert rows(t.app) == ["web/fast", "web/medium", "web/slow", "echo/echo"]
            assert (table.cursor_row, table.selected) == (0, "web/fast")
            assert t.app.focused is table
            # The header names the real bound ports (not the configured :0).
            web, echo = (f"127.0.0.1:{t.port(name)}" for name in ("web", "echo"))
            await t.until(
                lambda: f"web http {web} -> web  echo tcp {echo} -> echo" in screen_text(t.app),
                "the bound addresses in the header",
            )
            assert "web (weighted_round_robin) 3/3 eligible" in screen_text(t.app)

            await t.pilot.press("j")  # Pilot's own press agrees with `press` (used below)
            assert table.selected == "web/medium"
            await t.pilot.press("k")
            assert table.selected == "web/fast"
            moves = [("k", "web/fast"), ("j", "web/medium"), ("down", "web/slow")]
            moves += [("j", "echo/echo"), ("j", "echo/echo"), ("up", "web/slow")]
            moves += [("k", "web/medium")]
            for key, expected in moves:
                await t.press(key)
                await t.until(lambda: table.selected == expected, f"{key}: {expected}")  # noqa: B023

    run(scenario)


# -- commands from keys --------------------------------------------------------------------------
def test_d_drains_and_e_enables_the_selected_backend() -> None:
    async def scenario() -> None:
        async with live(notifications=True) as t:
            await t.press("d")
            await t.until(lambda: t.state("web/fast") is AdminState.DRAINING, "web/fast draining")
            assert t.state("web/medium") is AdminState.READY
            events = [e for e in t.bridge.events_since(0) if e.kind == "state"]
            assert [(e.target, e.old, e.new) for e in events] == [("web/fast", "ready", "draining")]
            assert "keyboard" in events[0].cause
            await t.until(lambda: cell(t.app, "web/fast", "state") == "draining", "the cell")
            # No connection open: the drain is done at once, and the table says so.
            await t.until(lambda: cell(t.app, "web/fast", "drain") == "done", "drain done")
            # Visible feedback: a toast and a line in the event log pane.
            await t.until(lambda: "web/fast: draining" in toasts(t.app), "the toast")
            await t.until(
                lambda: any("web/fast state: ready -> draining" in s for s in log_lines(t.app)),
                "the event log line",
            )
            assert any("keyboard: drain" in s for s in log_lines(t.app))

            await t.press("e")
            await t.until(lambda: t.state("web/fast") is AdminState.READY, "ready again")
            last = [e for e in t.bridge.events_since(0) if e.kind == "state"][-1]
            assert (last.old, last.new) == ("draining", "ready")
            assert "keyboard" in last.cause
            await t.until(lambda: cell(t.app, "web/fast", "state") == "ready", "the cell")
            assert cell(t.app, "web/fast", "drain") == ""
            await t.until(lambda: "web/fast: ready" in toasts(t.app), "the toast")

    run(scenario)


def test_x_asks_first_n_or_escape_cancel_and_y_disables() -> None:
    async def scenario() -> None:
        async with live() as t:
            for cancel in ("n", "escape"):
                await t.press("x")
                await t.modal(Confirm)
                assert "Disable web/fast?" in screen_text(t.app)
                assert not t.app.screen.query_one(".dialog").has_class("danger")
                await t.press(cancel)
                await t.main_screen()
                assert t.state("web/fast") is AdminState.READY
            assert t.bridge.events_since(0) == []

            await t.press("x")
            await t.modal(Confirm)
            await t.press("y")
            await t.main_screen()
            await t.until(lambda: t.state("web/fast") is AdminState.DISABLED, "disabled")
            event = t.bridge.events_since(0)[-1]
            assert (event.target, event.new) == ("web/fast", "disabled")
            assert "keyboard" in event.cause
            await t.until(lambda: cell(t.app, "web/fast", "state") == "disabled", "the cell")
            await t.until(
                lambda: "web (weighted_round_robin) 2/3 eligible" in screen_text(t.app), "header"
            )

    run(scenario)


def test_plus_and_minus_change_the_weight_by_one() -> None:
    async def scenario() -> None:
        async with live() as t:
            start = t.weight("web/fast")
            await t.press("plus")
            await t.until(lambda: t.weight("web/fast") == start + 1, "weight +1")
            await t.press("equals_sign")  # '=' is '+' without shift
            await t.until(lambda: t.weight("web/fast") == start + 2, "weight +2")
            await t.until(
                lambda: cell(t.app, "web/fast", "weight") == f"{start + 2} (cfg {start})", "cell"
            )
            await t.press("minus")
            await t.until(lambda: t.weight("web/fast") == start + 1, "weight -1")
            weights = [e for e in t.bridge.events_since(0) if e.kind == "weight"]
            assert [(e.old, e.new) for e in weights] == [
                (str(start), str(start + 1)),
                (str(start + 1), str(start + 2)),
                (str(start + 2), str(start + 1)),
            ]
            assert all("keyboard" in e.cause for e in weights)

    run(scenario)


def test_w_sets_an_exact_weight_refuses_bad_values_and_escape_cancels() -> None:
    async def scenario() -> None:
        async with live() as t:
            start = t.weight("web/fast")
            assert start != 7
            await t.press("w")
            await t.modal(WeightInput)
            box = t.app.screen.query_one("#weight", Input)
            assert t.app.focused is box
            assert f"Weight for web/fast (now {start})" in screen_text(t.app)
            # Bad values: the error shows in the dialog, which stays; nothing changes.
            for typed, message in (
                ("ab", "bad weight 'ab'"),
                ("300", "weight 300 is out of range 0..256"),
                ("", "bad weight ''"),
            ):
                box.value = typed
                await t.press("enter")
                await t.until(lambda: message in screen_text(t.app), message)  # noqa: B023
                assert isinstance(t.app.screen, WeightInput)
            assert t.weight("web/fast") == start
            # Still usable: type a good value, and it applies.
            box.value = ""
            await t.press("7", "enter")
            await t.main_screen()
            await t.until(lambda: t.weight("web/fast") == 7, "weight 7")
            await t.until(lambda: cell(t.app, "web/fast", "weight") == "7 (cfg 3)", "the cell")
            event = t.bridge.events_since(0)[-1]
            assert (event.kind, event.old, event.new) == ("weight", str(start), "7")
            assert "keyboard" in event.cause
            # +N / -N are relative; Escape cancels.
            await t.press("w")
            await t.modal(WeightInput)
            t.app.screen.query_one("#weight", Input).value = "-2"
            await t.press("enter")
            await t.until(lambda: t.weight("web/fast") == 5, "weight 5")
            await t.press("w")
            await t.modal(WeightInput)
            t.app.screen.query_one("#weight", Input).value = "9"
            await t.press("escape")
            await t.main_screen()
            await t.pilot.pause(0.05)
            assert t.weight("web/fast") == 5

    run(scenario)


# -- the safety rail -----------------------------------------------------------------------------
def test_emptying_a_pool_warns_naming_the_pool_and_n_or_escape_cancel() -> None:
    async def scenario() -> None:
        async with live() as t:
            await _select(t, "echo/echo")  # the only backend of pool 'echo'
            before = t.bridge.snapshot().backend("echo/echo")
            actions = (
                ("d", "n", "Drain echo/echo?"),
                ("x", "escape", "Disable echo/echo?"),
                ("minus", "n", "Change the weight of echo/echo by -1?"),
            )
            for key, cancel, action in actions:
                await t.press(key)
                await t.modal(Confirm)
                text = t.app.screen.question.plain
                assert action in text, key
                assert "the last eligible backend of pool 'echo'" in text, key
                assert "traffic to 'echo' will FAIL" in text
                assert "traffic to 'echo' will" in screen_text(t.app)  # and it is on screen
                assert t.app.screen.query_one(".dialog").has_class("danger")
                await t.press(cancel)
                await t.main_screen()
            await t.pilot.pause(0.05)
            assert t.bridge.snapshot().backend("echo/echo") == before
            assert t.bridge.events_since(0) == []

    run(scenario)


@pytest.mark.parametrize(("key", "wanted"), [("d", "draining"), ("x", "disabled")])
def test_emptying_a_pool_applies_on_y(key: str, wanted: str) -> None:
    async def scenario() -> None:
        async with live() as t:
            # Pool 'web': with fast and medium out, slow is the last eligible backend.
            _apply(t, Disable("web/fast"))
            _apply(t, Drain("web/medium"))
            await t.until(lambda: cell(t.app, "web/medium", "state") == "draining", "the table")
            await _select(t, "web/slow")
            await t.press(key)
            await t.modal(Confirm)
            assert "the last eligible backend of pool 'web'" in t.app.screen.question.plain
            await t.press("y")
            await t.main_screen()
            await t.until(lambda: t.state("web/slow") == wanted, wanted)
            event = [e for e in t.bridge.events_since(0) if e.kind == "state"][-1]
            assert (event.target, event.new) == ("web/slow", wanted)
            assert event.cause.startswith("keyboard: ")
            await t.until(
                lambda: "web (weighted_round_robin) 0/3 eligible" in screen_text(t.app), "header"
            )

    run(scenario)


def test_the_safety_rail_judges_the_current_state_not_the_last_refresh() -> None:
    """The rail asks `empties_pool` about the snapshot of the last refresh (`self.snap`),
    which can be a whole refresh period old (5 s at `[ui] refresh = 0.2`). A change that
    came from elsewhere in between (admin API, health checks, another operator) is not
    seen, and the last eligible backend is drained with no warning."""

    async def scenario() -> None:
        async with live(refresh=0.2) as t:  # one refresh at start, the next in 5 s
            _apply(t, Disable("web/fast"))
            _apply(t, Disable("web/medium"))
            await t.until(lambda: t.state("web/medium") is AdminState.DISABLED, "the set-up")
            await _select(t, "web/slow")
            await t.press("d")
            await t.pilot.pause(0.1)
            assert isinstance(t.app.screen, Confirm), "drained the last backend of 'web' unasked"
            assert "the last eligible backend of pool 'web'" in t.app.screen.question.plain
            assert t.state("web/slow") is AdminState.READY

    run(scenario)


# -- filter, theme, help, details, palette -------------------------------------------------------
def test_slash_filters_rows_and_escape_clears() -> None:
    async def scenario() -> None:
        async with live(notifications=True) as t:
            box = t.app.query_one("#filter", Input)
            assert not box.display
            await t.press("slash")
            await t.until(lambda: box.display and t.app.focused is box, "the filter input")
            await t.press("s", "l", "enter")  # typed once; below the text is set directly
            await t.until(lambda: rows(t.app) == ["web/slow"], "only web/slow")
            assert table_of(t.app).selected == "web/slow"
            assert t.app.focused is table_of(t.app)
            await t.until(lambda: "filter: sl" in screen_text(t.app), "the filter status")
            # Commands act on what is shown.
            await t.press("d")
            await t.until(lambda: t.state("web/slow") is AdminState.DRAINING, "web/slow drains")
            assert t.state("web/fast") is AdminState.READY
            await t.press("escape")
            await t.until(lambda: len(rows(t.app)) == 4, "every row again")
            assert not box.display
            await t.until(lambda: "filter:" not in screen_text(t.app), "no filter status")
            # The state column counts too; Escape while typing clears as well.
            await t.press("slash")
            await t.until(lambda: t.app.focused is box, "the filter input")
            box.value = "drain"
            await t.press("enter")
            await t.until(lambda: rows(t.app) == ["web/slow"], "the draining row")
            await t.press("slash")
            await t.until(lambda: t.app.focused is box, "the filter input")
            await t.press("escape")
            await t.until(lambda: len(rows(t.app)) == 4, "every row again")
            assert t.app.needle == ""
            # Nothing matches: no target, and a key says so instead of acting.
            await t.press("slash")
            await t.until(lambda: t.app.focused is box, "the filter input")
            box.value = "no such backend"
            await t.press("enter")
            await t.until(lambda: rows(t.app) == [], "no rows")
            await t.press("e")
            await t.until(lambda: "No backend selected." in toasts(t.app), "the warning")
            assert t.state("web/slow") is AdminState.DRAINING

    run(scenario)


def test_t_cycles_the_theme() -> None:
    async def scenario() -> None:
        async with live() as t:
            names = themes.theme_names()
            assert t.app.theme == themes.DEFAULT_THEME == names[0]
            seen = []
            for _ in names:
                await t.press("t")
                seen.append(t.app.theme)
            assert seen == [*names[1:], names[0]]

    run(scenario)


def test_question_mark_lists_every_key_with_its_help() -> None:
    async def scenario() -> None:
        async with live() as t:
            await t.press("question_mark")
            await t.modal(Help)
            text = screen_text(t.app)
            for key in KEYS:
                assert key.help in text, key
            assert "Demo: make the selected backend fail, or recover." in text  # the extra
            assert "Command palette" in text
            await t.press("escape")
            await t.main_screen()
            await t.press("question_mark")
            await t.modal(Help)
            await t.press("question_mark")
            await t.main_screen()

    run(scenario)


def test_q_on_the_help_screen_closes_it_and_keeps_running() -> None:
    """Help binds q to close (like Escape and ?). The app's q binding is a priority
    binding, so today q on the help screen quits the whole balancer instead."""

    async def scenario() -> None:
        async with live() as t:
            await t.press("question_mark")
            await t.modal(Help)
            await t.press("q")
            await t.pilot.pause(0.1)
            assert not t.bridge.stopping, "q on the help screen shut the balancer down"
            assert len(t.app.screen_stack) == 1

    run(scenario)


def test_enter_opens_details_with_counters_and_recent_events() -> None:
    async def scenario() -> None:
        async with live() as t:
            await t.press("d")
            await t.until(lambda: t.state("web/fast") is AdminState.DRAINING, "draining")
            await t.press("enter")
            await t.modal(Details)
            assert len(t.app.screen_stack) == 2  # one Enter, one details screen
            text = screen_text(t.app)
            address = t.bridge.snapshot().backend("web/fast").address
            for expected in (
                "web/fast",
                address,
                "active connections",
                "total connections",
                "failed connects",
                "recent events",
                "ready -> draining: keyboard: drain",
            ):
                assert expected in text, expected
            await t.press("escape")
            await t.main_screen()

    run(scenario)


def test_the_palette_offers_the_registry_commands_for_the_selected_backend() -> None:
    async def scenario() -> None:
        async with live() as t:
            await _select(t, "web/medium")
            titles = [c.title for c in t.app.get_system_commands(t.app.screen)]
            for name in control.REGISTRY:
                wanted = "Weight of web/medium..." if name == "weight" else None
                wanted = wanted or f"{name.capitalize()} web/medium"
                assert wanted in titles, (name, titles)
            assert "Details of web/medium" in titles

            # Through the real palette: search, pick, and the command is applied.
            await t.press("ctrl+p")
            await t.modal(CommandPalette)
            await t.press("d", "r")
            t.app.screen.query_one(Input).value = "drain"
            found = t.app.screen.query_one(CommandList)
            await t.until(
                lambda: (
                    found.option_count > 0
                    and str(found.get_option_at_index(0).prompt).startswith("Drain web/medium")
                ),
                "the palette to offer 'Drain web/medium'",
            )
            await t.press("enter")
            await t.until(lambda: t.state("web/medium") is AdminState.DRAINING, "drained")
            assert t.bridge.events_since(0)[0].cause == "palette: drain"

    run(scenario)


def test_the_demo_fail_key_is_bound() -> None:
    async def scenario() -> None:
        async with live() as t:
            await t.press("f")
            await t.until(lambda: t.demo.failing() == {"web/fast"}, "web/fast failing")
            await t.press("f")
            await t.until(lambda: t.demo.failing() == frozenset(), "web/fast recovered")

    run(scenario)


# -- the table follows the engine ----------------------------------------------------------------
def test_the_table_reflects_a_real_connection_and_its_drain() -> None:
    async def scenario() -> None:
        async with live() as t:
            _, writer = await open_echo(t)
            await t.until(lambda: cell(t.app, "echo/echo", "active") == "1", "Active 1")
            assert cell(t.app, "echo/echo", "total") == "1"
            await t.until(lambda: cell(t.app, "echo/echo", "in") == "5", "5 bytes in")
            assert cell(t.app, "echo/echo", "out") == "5"
            assert cell(t.app, "web/fast", "active") == "0"
            # The header is painted in the next frame.
            await t.until(lambda: "active 1" in screen_text(t.app), "the header's total")

            await _select(t, "echo/echo")
            await t.press("d")
            await t.modal(Confirm)  # the pool warning: echo has one backend
            await t.press("y")
            await t.until(lambda: cell(t.app, "echo/echo", "drain") == "1 left 0%", "progress")
            writer.close()
            await writer.wait_closed()
            await t.until(lambda: cell(t.app, "echo/echo", "active") == "0", "Active 0")
            await t.until(lambda: cell(t.app, "echo/echo", "drain") == "done", "drain done")
            drained = [e for e in t.bridge.events_since(0) if e.kind == "drained"]
            assert [e.cause for e in drained] == ["last connection closed"]

    run(scenario)


# -- quitting ------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["q", "ctrl+q", "ctrl+c"])
def test_quit_keys_with_no_connection_quit_and_the_engine_finishes(key: str) -> None:
    async def scenario() -> None:
        async with live() as t:
            await t.press(key)
            await t.until(lambda: not t.bridge.running, "the engine to finish")
            await t.until(lambda: t.app.return_code == 0, "the app to exit with 0")
            result = await t.bridge.wait_finished()
            assert result.unwrap() is None  # the engine ended without an error

    run(scenario)


def test_q_with_an_open_connection_asks_and_shuts_down_gracefully() -> None:
    async def scenario() -> None:
        async with live() as t:
            reader, writer = await open_echo(t)
            await t.until(lambda: t.bridge.active_connections() == 1, "one active connection")

            await t.press("q")
            await t.modal(Confirm)
            assert "1 connection(s) are open. Quit?" in screen_text(t.app)
            await t.press("n")
            await t.main_screen()
            await t.pilot.pause(0.1)
            assert t.bridge.running and not t.bridge.stopping

            await t.press("q")
            await t.modal(Confirm)
            await t.press("y")
            await t.until(lambda: t.bridge.stopping, "stopping")
            await t.until(lambda: "SHUTTING DOWN" in screen_text(t.app), "the draining banner")
            await t.until(
                lambda: any(r.event == "shutdown" for r in t.bridge.log.records),
                "the listeners to close",
            )
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection("127.0.0.1", t.port("echo"))
            # The open connection keeps working within the grace period...
            writer.write(b"still here\n")
            await writer.drain()
            assert await asyncio.wait_for(reader.readexactly(11), 5) == b"still here\n"
            assert t.bridge.running
            # ...and once it ends, the engine finishes and the app exits cleanly.
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            await t.until(lambda: not t.bridge.running, "the engine to finish")
            await t.until(lambda: t.app.return_code == 0, "the app to exit with 0")
            cut = [r for r in t.bridge.log.records if "cut" in str(r.fields)]
            assert cut == []

    run(scenario)


def test_q_twice_while_shutting_down_cuts_the_connections() -> None:
    async def scenario() -> None:
        async with live() as t:
            reader, writer = await open_echo(t)
            await t.until(lambda: t.bridge.active_connections() == 1, "one active connection")
            await t.press("q")
            await t.modal(Confirm)
            await t.press("y")
            await t.until(lambda: t.bridge.stopping, "stopping")
            await t.main_screen()
            await t.press("q")  # "q again closes them now"
            assert await read_to_end(reader) == b""
            writer.close()
            await t.until(lambda: not t.bridge.running, "the engine to finish")
            assert t.app.return_code == 0

    run(scenario)


# -- untrusted text ------------------------------------------------------------------------------
class FakeBridge:
    """A `Bridge` over a bare Model with a fixed clock: no engine, no sockets, no time.

    `frozen`, when set, is returned instead of the model's snapshot (to show names no
    config accepts); `extra_events` are appended to the model's; `error`, when set, is what
    every command fails with.
    """

    def __init__(self, config: Config | None = None, listening: str = "127.0.0.1:8080") -> None:
        self.config = config if config is not None else make_config([9001, 9002, 9003])
        self.extras: tuple[Extra, ...] = ()
        self.model = Model(self.config.pools.values(), clock=lambda: FIXED_TS)
        self.frozen: Snapshot | None = None
        self.extra_events: list[Event] = []
        self.error: str | None = None
        self.commands: list[tuple[Command, str]] = []
        self.active = 0
        self.running = False
        self._listening = listening
        self._stopping = False

    def start(self, on_finished: Callable[[object], None]) -> None:
        """No engine behind this bridge: nothing to start."""

    def warnings_since(self, last_id: int) -> list[Record]:
        return []

    def snapshot(self) -> Snapshot:
        return self.frozen if self.frozen is not None else self.model.snapshot()

    def events_since(self, last_id: int) -> list[Event]:
        events = [*self.model.events_since(0), *self.extra_events]
        return [e for e in events if e.id > last_id]

    def submit(
        self,
        command: Command,
        done: Callable[[str | None, str | None], None],
        source: str = "keyboard",
    ) -> None:
        self.commands.append((command, source))
        if self.error is not None:
            done(None, self.error)
            return
        try:
            message = control.apply(self.model, command, source)
        except CommandError as exc:
            done(None, str(exc))
            return
        done(message, None)

    def run_extra(
        self, name: str, target: str, done: Callable[[str | None, str | None], None]
    ) -> None:
        done(None, self.error or f"no action named {name!r} here")

    def active_connections(self) -> int:
        return self.active

    def listening(self) -> dict[str, str]:
        return {listener.name: self._listening for listener in self.config.listeners}

    def shutdown(self) -> None:
        self._stopping = True

    @property
    def stopping(self) -> bool:
        return self._stopping


def _hostile_snapshot() -> Snapshot:
    backend = BackendSnapshot(
        pool="p[b]",
        name=HOSTILE,
        address="\x9b2J[i]10.0.0.1[/i]:80",
        state=AdminState.READY,
        health=Health.UNKNOWN,
        weight=1,
        effective_weight=1,
        config_weight=1,
        max_connections=0,
        active_connections=0,
        total_connections=0,
        failed_connects=1,
        bytes_in=0,
        bytes_out=0,
        eligible=True,
        drained=False,
        last_error=HOSTILE,
    )
    other = dataclasses.replace(backend, name="plain", last_error="")
    return Snapshot(FIXED_TS, (PoolSnapshot("p[b]", "round_robin", 0, (backend, other)),))


def _assert_literal(shown: str, raw: str) -> None:
    assert clean(raw) in shown, (raw, shown)
    assert not any(c in shown for c in "\x1b\x9b\x07"), shown


def test_clean_and_safe_show_control_characters_and_markup_literally() -> None:
    assert clean("a\x1b[31mb") == "a\\x1b[31mb"
    assert clean("\x9b2J") == "\\x9b2J"
    assert clean("\x00\x07\t\n\x7f") == "\\x00\\x07\\x09\\x0a\\x7f"
    assert clean("[bold]x[/]") == "[bold]x[/]"
    assert clean("caf\u00e9 \u2192 \u00a0") == "caf\u00e9 \u2192 \u00a0"  # printable: kept
    assert clean(42) == "42"
    text = safe("[bold red]x[/] \x1b[31m", "italic")
    assert text.plain == "[bold red]x[/] \\x1b[31m"
    assert text.spans == []
    assert text.style == "italic"
    assert text.no_wrap


def test_event_line_is_literal() -> None:
    event = Event(1, FIXED_TS, "p/[b]x", "state", "ready", "\x1b[2J", HOSTILE)
    line = event_line(event)
    _assert_literal(line.plain, HOSTILE)
    assert "p/[b]x" in line.plain
    assert "\\x1b[2J" in line.plain
    assert all(span.style != "bold red" for span in line.spans)


def test_hostile_names_addresses_and_causes_are_shown_literally() -> None:
    async def scenario() -> None:
        bridge = FakeBridge()
        bridge.frozen = _hostile_snapshot()
        target = f"p[b]/{HOSTILE}"
        bridge.extra_events.append(Event(1, FIXED_TS, target, "state", "ready", "x", HOSTILE))
        app = TuilbApp(bridge)
        async with dashboard(app) as pilot:
            await until(pilot, lambda: table_of(app).row_count == 2, "the rows")
            backend = table_of(app).get_cell(target, "backend")
            address = table_of(app).get_cell(target, "address")
            assert backend.plain == clean(target)
            assert address.plain == "\\x9b2J[i]10.0.0.1[/i]:80"
            assert [s.style for s in backend.spans] == []
            assert backend.style == "bold"  # from the table, not from the name
            await until(pilot, lambda: len(log_lines(app)) == 1, "the event line")
            _assert_literal(log_lines(app)[0], HOSTILE)
            text = screen_text(app)
            assert "p[b] (round_robin)" in text
            assert not any(c in text for c in "\x1b\x9b\x07")

            await press(pilot, "x")  # the question repeats the name
            await modal(pilot, Confirm)
            question = app.screen.query_one("#question", Static).content
            assert isinstance(question, Text)
            assert question.plain.startswith(f"Disable {clean(target)}? ")
            assert question.spans == []

    run(scenario)


def test_details_show_hostile_text_literally() -> None:
    """The details view names the backend in its title. Today the title is a plain str
    given to a Rich Table, which parses it as markup: '[bold red]boom[/]' turns into a
    bold red 'boom' and the link markup into a link."""

    async def scenario() -> None:
        bridge = FakeBridge()
        bridge.frozen = _hostile_snapshot()
        target = f"p[b]/{HOSTILE}"
        app = TuilbApp(bridge)
        async with dashboard(app) as pilot:
            await until(pilot, lambda: table_of(app).row_count == 2, "the rows")
            await press(pilot, "enter")
            await modal(pilot, Details)
            text = screen_text(app)
            assert "\\x9b2J[i]10.0.0.1[/i]:80" in text  # the address
            assert clean(HOSTILE) in text  # the last error
            assert not any(c in text for c in "\x1b\x9b\x07")
            assert clean(target) in text, "the title is not shown literally"

    run(scenario)


@pytest.mark.parametrize("error", ["[bold red]boom[/] \x1b[31m", "refused: x [/] y"])
def test_command_errors_from_the_bridge_are_shown_literally(error: str) -> None:
    """The toast for a failed command shows the error text as it is. Today the app passes it
    to `notify()` with markup on: '[bold red]boom[/]' renders as a bold red 'boom', and a
    stray '[/]' raises MarkupError while the toast is laid out, which ends the dashboard."""

    async def scenario() -> None:
        bridge = FakeBridge()
        bridge.error = error
        app = TuilbApp(bridge)
        async with dashboard(app, notifications=True) as pilot:
            await until(pilot, lambda: table_of(app).row_count == 3, "the rows")
            app.action_drain()  # what `d` does; Pilot's press would wait on a dead app
            await until(pilot, lambda: bool(toasts(app)), "the error toast")
            assert clean(error) in toasts(app)[0]

    run(scenario)


class _Sparks(App[None]):
    def __init__(self, data: list[float]) -> None:
        super().__init__()
        self.data = data

    def compose(self) -> Any:
        yield Sparkline(self.data, id="textual")
        yield Spark(self.data, id="ours")


SPARK_CSS = "Sparkline { height: 3; width: 60; }"


@pytest.mark.parametrize(
    "data",
    [
        [],
        [5.0],
        [0.0, 1.0],
        [float(i % 7) for i in range(60)],
        [i * 1.5 for i in range(37)],  # fewer points than columns
        [float((i * 7919) % 101) for i in range(150)],  # more points than columns
        [3.0] * 20,  # flat
    ],
)
def test_spark_draws_exactly_what_textuals_sparkline_draws(data: list[float]) -> None:
    async def scenario() -> None:
        app = _Sparks(data)
        app.CSS = SPARK_CSS
        async with app.run_test(size=(80, 10)) as pilot:
            await pilot.pause()
            textual, ours = app.query_one("#textual"), app.query_one("#ours")
            crop = Region(0, 0, 60, 3)
            assert [s.simplify() for s in ours.render_lines(crop)] == [
                s.simplify() for s in textual.render_lines(crop)
            ]

    run(scenario)


def test_column_labels_are_not_cut_by_short_names() -> None:
    """Backend and address columns are as wide as the config's longest value. Names shorter
    than the label ('app/b1' is 6 characters) cut the header to 'Backen' today."""

    async def scenario() -> None:
        app = TuilbApp(FakeBridge())
        async with dashboard(app) as pilot:
            await until(pilot, lambda: table_of(app).row_count == 3, "the rows")
            header = next(line for line in screen_text(app).splitlines() if "Address" in line)
            assert header.split()[:3] == ["Backend", "Address", "State"], header

    run(scenario)


def test_fake_bridge_quit_exits_at_once() -> None:
    async def scenario() -> None:
        bridge = FakeBridge()
        app = TuilbApp(bridge)
        async with dashboard(app) as pilot:
            await until(pilot, lambda: table_of(app).row_count == 3, "the rows")
            await press(pilot, "q")
            await until(pilot, lambda: app.return_code == 0, "the exit")
            assert bridge.stopping

    run(scenario)


# -- pure helpers: the rail, the rates, the cells ------------------------------------------------
def _model() -> Model:
    text = (
        '[[listeners]]\nname = "l"\nbind = "127.0.0.1:0"\npool = "a"\n\n'
        '[pools.a]\n\n[[pools.a.backends]]\nname = "x"\naddress = "127.0.0.1:1"\n\n'
        '[[pools.a.backends]]\nname = "y"\naddress = "127.0.0.1:2"\nweight = 3\n\n'
        '[pools.b]\n\n[[pools.b.backends]]\nname = "only"\naddress = "127.0.0.1:3"\n'
    )
    return Model(parse(text, "<test>").pools.values(), clock=lambda: FIXED_TS)


@pytest.mark.parametrize(
    ("setup", "command", "pool"),
    [
        ([], Drain("a/x"), None),  # a/y is still eligible
        ([], Disable("a/x"), None),
        ([], Drain("b/only"), "b"),
        ([], Disable("b/only"), "b"),
        ([], Enable("b/only"), None),
        ([], SetWeight("b/only", 0), "b"),
        ([], SetWeight("b/only", -1, relative=True), "b"),
        ([], SetWeight("b/only", -5, relative=True), "b"),
        ([], SetWeight("b/only", 1, relative=True), None),
        ([], SetWeight("b/only", 4), None),
        ([("a/y", "drain")], Drain("a/x"), "a"),
        ([("a/y", "disable")], SetWeight("a/x", 0), "a"),
        ([("a/y", "weight0")], Disable("a/x"), "a"),
        ([("a/y", "down")], Drain("a/x"), "a"),
        ([("a/x", "drain")], Drain("a/y"), "a"),
        ([("b/only", "drain")], Disable("b/only"), None),  # not eligible: nothing to lose
        ([("b/only", "drain")], Drain("b/only"), None),
        ([], Drain("c/nope"), None),
        ([], Drain("a/nope"), None),
    ],
)
def test_empties_pool(setup: list[tuple[str, str]], command: Command, pool: str | None) -> None:
    model = _model()
    for target, what in setup:
        backend = model.backend(target)
        if what == "drain":
            model.set_admin(backend, AdminState.DRAINING, "t")
        elif what == "disable":
            model.set_admin(backend, AdminState.DISABLED, "t")
        elif what == "weight0":
            model.set_weight(backend, 0, "t")
        else:
            model.set_health(backend, Health.DOWN, "t")
    assert empties_pool(model.snapshot(), command) == pool


def _snapshot(ts: float, **counters: tuple[int, int, int, int]) -> Snapshot:
    """Pool 'p' with one backend per keyword: (total, bytes_in, bytes_out, failed)."""
    backends = []
    for name, (total, bytes_in, bytes_out, failed) in counters.items():
        backends.append(
            BackendSnapshot(
                pool="p",
                name=name,
                address="127.0.0.1:1",
                state=AdminState.READY,
                health=Health.UNKNOWN,
                weight=1,
                effective_weight=1,
                config_weight=1,
                max_connections=0,
                active_connections=0,
                total_connections=total,
                failed_connects=failed,
                bytes_in=bytes_in,
                bytes_out=bytes_out,
                eligible=True,
                drained=False,
                last_error="",
            )
        )
    return Snapshot(ts, (PoolSnapshot("p", "round_robin", 0, tuple(backends)),))


def test_rate_tracker_rates_totals_and_history() -> None:
    tracker = RateTracker(history=3)
    tracker.feed(_snapshot(100.0, a=(10, 1000, 2000, 0), b=(0, 0, 0, 0)))
    assert tracker.rates == {}  # one snapshot: no interval yet
    assert tracker.totals == Rates()
    tracker.feed(_snapshot(102.0, a=(20, 3000, 2000, 4), b=(1, 0, 10, 0)))
    assert tracker.rates["p/a"] == Rates(5.0, 1000.0, 0.0, 2.0)
    assert tracker.rates["p/b"] == Rates(0.5, 0.0, 5.0, 0.0)
    assert tracker.totals == Rates(5.5, 1000.0, 5.0, 2.0)
    assert list(tracker.traffic["p/a"]) == [1000.0]
    assert list(tracker.connection_rate["p/b"]) == [0.5]
    # Same timestamp (a refresh with a frozen clock): nothing changes, nothing divides by 0.
    tracker.feed(_snapshot(102.0, a=(30, 3000, 2000, 4), b=(1, 0, 10, 0)))
    assert tracker.rates["p/a"] == Rates(5.0, 1000.0, 0.0, 2.0)
    # Counters that went down (a reload) never give negative rates.
    tracker.feed(_snapshot(103.0, a=(0, 0, 0, 0), b=(1, 0, 10, 0)))
    assert tracker.rates["p/a"] == Rates()
    for ts in (104.0, 105.0, 106.0):
        tracker.feed(_snapshot(ts, a=(int(ts) - 103, 0, 0, 0), b=(1, 0, 10, 0)))
    assert len(tracker.traffic["p/a"]) == 3  # bounded by `history`
    assert list(tracker.connection_rate["p/a"]) == [1.0, 1.0, 1.0]
    # A backend that appears later starts without a rate.
    tracker.feed(_snapshot(107.0, a=(4, 0, 0, 0), b=(1, 0, 10, 0), c=(5, 5, 5, 5)))
    assert "p/c" not in tracker.rates
    assert tracker.totals.connections == 1.0


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0"), (1023, "1023"), (1024, "1.0K"), (1536, "1.5K"), (5 * 1024**2, "5.0M")],
)
def test_human_bytes(n: int, text: str) -> None:
    assert human_bytes(n) == text


def test_drain_text_and_row_cells() -> None:
    model = _model()
    x = model.backend("a/x")
    assert drain_text(model.snapshot().backend("a/x"), 0) == ("", "")
    for _ in range(3):
        model.connection_started(x)
    model.set_admin(x, AdminState.DRAINING, "t")
    snap = model.snapshot().backend("a/x")
    assert drain_text(snap, 10) == ("3 left 70%", "yellow")
    assert drain_text(snap, 0) == ("3 left 0%", "yellow")  # never below its own count
    for _ in range(3):
        model.connection_ended(x)
    assert drain_text(model.snapshot().backend("a/x"), 10) == ("done", "bold green")

    y = model.snapshot().backend("a/y")
    cells = row_cells(y, RateTracker(), 0)
    assert [text for text, _ in cells] == [
        "a/y",
        "127.0.0.1:2",
        "ready",
        "unknown",
        "3",
        "0",
        "0",
        "-",  # conn/s: no second snapshot yet
        "-",  # req/s: no HTTP requests
        "-",  # p99: no HTTP requests
        "0",
        "0",
        "0",
        "",
    ]
    assert matches(cells, "")
    assert matches(cells, "A/Y")
    assert matches(cells, "ready")
    assert matches(cells, "127.0.0.1:2")
    assert not matches(cells, "3")  # the weight: only name, address, state and health count


# -- re-weighting moves the share ----------------------------------------------------------------
async def _get(t: Live) -> bytes:
    """One HTTP request on a new connection through the 'web' listener."""
    reader, writer = await asyncio.open_connection("127.0.0.1", t.port("web"))
    writer.write(b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
    await writer.drain()
    body = await read_to_end(reader)
    writer.close()
    return body


def _totals(t: Live) -> dict[str, int]:
    pool = next(p for p in t.bridge.snapshot().pools if p.name == "web")
    return {b.name: b.total_connections for b in pool.backends}


def test_reweighting_from_the_keyboard_moves_the_share() -> None:
    async def scenario() -> None:
        async with live() as t:
            # Demo weights 3/2/1 under weighted round robin: 60 requests split 30/20/10.
            for _ in range(60):
                assert (await _get(t)).endswith(b"\n")
            first = _totals(t)
            assert first == {"fast": 30, "medium": 20, "slow": 10}
            # Two presses of '-' on web/fast: 3 -> 1; the next 40 split 10/20/10.
            await _select(t, "web/fast")
            await t.press("minus", "minus")
            await t.until(lambda: t.weight("web/fast") == 1, "weight 1")
            for _ in range(40):
                await _get(t)
            after = _totals(t)
            moved = {name: after[name] - first[name] for name in after}
            assert moved == {"fast": 10, "medium": 20, "slow": 10}

    run(scenario)


def test_health_and_slow_start_cells_spell_out_the_state() -> None:
    from tuilb.health import CheckResult
    from tuilb.ui.table import health_cell

    base = _model().snapshot().backend("a/y")
    cases = [
        (dict(check="tcp", health=Health.UP, health_progress="3/3"), "up 3/3"),
        (dict(check="tcp", health=Health.UP, health_progress="2/3"), "up 2/3"),
        (dict(check="http", health=Health.DOWN, health_progress="1/2"), "down 1/2"),
        (dict(check="none", health=Health.UNKNOWN, health_progress=""), "unknown"),
        (dict(ejected=True, eject_left=24.6, health=Health.UP), "ejected 25s"),
    ]
    for changes, text in cases:
        shown, style = health_cell(dataclasses.replace(base, **changes))
        assert shown == text
        assert style  # coloured too, but never colour alone
    ramping = dataclasses.replace(base, weight=4, effective_weight=0.4, slow_start=0.1)
    weight = row_cells(ramping, RateTracker(), 0)[4][0]
    assert weight == "4 (eff 0.4)"
    http = dataclasses.replace(
        base,
        requests=10,
        responses=(0, 9, 0, 1, 0),
        latency=(0.001, 0.002, 0.0125),
        checks=(CheckResult(True, "HTTP 200", 0.003, 1.7e9),),
    )
    assert row_cells(http, RateTracker(), 0)[9][0] == "12.5"  # p99 in ms


def test_route_rows_name_the_routes_to_a_pool_with_their_hits() -> None:
    from tuilb.model import ListenerSnapshot
    from tuilb.ui.screens import route_rows

    config = parse(
        '[[listeners]]\nname = "web"\nbind = "127.0.0.1:0"\nprotocol = "http"\npool = "app"\n'
        '[[listeners.routes]]\npool = "api"\nhost = "*.example.com"\npath_prefix = "/api/"\n'
        '[[listeners.routes]]\npool = "app"\nmethods = ["GET"]\nheaders = { "x-canary" = "1" }\n'
        '[pools.app]\n[[pools.app.backends]]\nname = "a"\naddress = "127.0.0.1:1"\n'
        '[pools.api]\n[[pools.api.backends]]\nname = "b"\naddress = "127.0.0.1:2"\n',
        "<test>",
    )
    snapshot = Snapshot(0.0, (), (ListenerSnapshot("web", 10, 0, ((0, 7), (1, 2)), 1),))
    assert route_rows(config, snapshot, "api") == [
        ("web route 1", "host *.example.com  path /api/*: 7 requests")
    ]
    assert route_rows(config, snapshot, "app") == [
        ("web route 2", "methods GET  x-canary: 1: 2 requests"),
        ("web default", "no route matched: 1 requests"),
    ]
    assert route_rows(config, Snapshot(0.0, ()), "api") == [
        ("web route 1", "host *.example.com  path /api/*: 0 requests")
    ]


def test_r_resets_the_backend_to_its_configuration() -> None:
    async def scenario() -> None:
        async with live() as t:
            await t.press("d", "minus")
            await t.until(
                lambda: t.state("web/fast") is AdminState.DRAINING and t.weight("web/fast") == 2,
                "drained and re-weighted",
            )
            await t.press("r")
            await t.until(
                lambda: t.state("web/fast") is AdminState.READY and t.weight("web/fast") == 3,
                "back to the configuration",
            )
            resets = [e for e in t.bridge.events_since(0) if e.cause == "keyboard: reset"]
            assert {(e.kind, e.new) for e in resets} == {("state", "ready"), ("weight", "3")}

    run(scenario)
