"""How the engine is hosted: headless (`trio.run`) or beside the dashboard (guest mode).

This is the only module that knows both trio and Textual, and it imports Textual only
inside `run_dashboard`, so headless mode never loads the UI stack.

Dashboard hosting: Textual runs the asyncio loop; the engine runs as a trio *guest* on
that loop (`trio.lowlevel.start_guest_run`), in the same thread. Measured on this kind of
machine this costs 2-3% over native trio, where a separate trio thread added 6x latency
under load (the GIL) and hung the process when the UI crashed. Lifetimes:
- the app's loop never ends while the guest run is alive: `_dashboard_main` wraps the
  app in try/finally that requests shutdown and awaits the guest's end;
- SIGINT/SIGTERM are handled on the host loop and start the same graceful shutdown as
  the quit key (a second one cuts the connections);
- the guest's done callback carries the engine's outcome back; a failure is shown after
  the terminal is restored, with the traceback for anything that is not a user mistake.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import trio

from tuilb import __version__, control, guest
from tuilb.config import Config
from tuilb.engine import Engine
from tuilb.errors import CommandError
from tuilb.log import Log, MemoryLog, Record
from tuilb.model import Event, Snapshot

if TYPE_CHECKING:
    import outcome

    from tuilb.ui.bridge import Extra

Companion = Callable[[Engine], Awaitable[None]]
"""A task that runs beside the engine once it is bound (the demo's backends and load)."""

Done = Callable[[str | None, str | None], None]


def reload_and_log(engine: Engine, log: Log) -> None:
    """SIGHUP: reload the configuration file; a refusal is logged and changes nothing."""
    try:
        engine.reload_from_file()  # logs "reloaded" with what changed
    except CommandError as exc:
        log("reload_failed", "warning", cause=str(exc))


async def _watch_signals(engine: Engine, log: Log, signals: AsyncIterator[int]) -> None:
    first = True
    async for signum in signals:
        if signum == signal.SIGHUP:  # reload, as nginx and HAProxy do
            log("signal", signal="SIGHUP", cause="reload the configuration")
            reload_and_log(engine, log)
            continue
        cause = "graceful shutdown" if first else "closing remaining connections now"
        log("signal", signal=signal.Signals(signum).name, cause=cause)
        first = False
        engine.request_shutdown()


async def _serve(engine: Engine, log: Log, companions: Sequence[Companion]) -> None:
    """Run the bound engine and its companions until the engine has shut down."""
    log("started", version=__version__, config=engine.config.source, pid=os.getpid())
    async with trio.open_nursery() as nursery:
        for companion in companions:
            nursery.start_soon(companion, engine)
        await engine.run()  # returns once shutdown has finished
        nursery.cancel_scope.cancel()


async def serve_headless(config: Config, log: Log, companions: Sequence[Companion] = ()) -> None:
    engine = Engine(config, log=log, access_log=True)
    # Handlers go in before anything is logged: a SIGTERM sent as soon as "listening"
    # appears must still mean a graceful shutdown.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        await engine.bind()  # outside any nursery: a port in use is a StartupError, not a group
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_signals, engine, log, signals)
            await _serve(engine, log, companions)
            nursery.cancel_scope.cancel()


def run_headless(config: Config, log: Log, companions: Sequence[Companion] = ()) -> None:
    trio.run(serve_headless, config, log, companions)


# -- the dashboard host ---------------------------------------------------------------------
ExtraHandler = Callable[[str], str]
"""(target) -> message; runs inside the trio run; raises CommandError to refuse."""


class GuestBridge:
    """The dashboard's `Bridge`: reads happen directly (same thread, between trio ticks);
    anything that changes state runs inside the trio run via the run's token."""

    def __init__(
        self,
        config: Config,
        companions: Sequence[Companion] = (),
        extras: Sequence[tuple[Extra, ExtraHandler]] = (),
    ) -> None:
        self.log = MemoryLog()
        self.engine = Engine(config, log=self.log)
        self.companions = tuple(companions)
        self.extras = tuple(extra for extra, _ in extras)
        self._handlers = {extra.name: handler for extra, handler in extras}
        self._token: trio.lowlevel.TrioToken | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._finished: asyncio.Future[outcome.Outcome[None]] | None = None
        self._stopping = False
        self.on_finished: Callable[[outcome.Outcome[None]], None] | None = None
        self.driver = ""  # which guest driver runs the engine (tuilb.guest)

    # -- lifetime ---------------------------------------------------------------------------
    def start(self, on_finished: Callable[[outcome.Outcome[None]], None] | None = None) -> None:
        """Start the engine as a trio guest on the running asyncio loop (from on_mount)."""
        if on_finished is not None:
            self.on_finished = on_finished
        if self._finished is not None:
            return  # started already
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._finished = loop.create_future()
        self.driver = guest.start(self._guest_main, loop, self._done)

    async def _guest_main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        await self.engine.bind()
        if self._stopping:  # asked to stop before it even started
            self.engine.request_shutdown()
        await _serve(self.engine, self.log, self.companions)

    def _done(self, result: outcome.Outcome[None]) -> None:
        self._token = None
        assert self._finished is not None
        if not self._finished.done():
            self._finished.set_result(result)
        if self.on_finished is not None:
            self.on_finished(result)

    @property
    def started(self) -> bool:
        return self._finished is not None

    @property
    def running(self) -> bool:
        return self._finished is not None and not self._finished.done()

    async def wait_finished(self) -> outcome.Outcome[None]:
        assert self._finished is not None
        return await self._finished

    @property
    def stopping(self) -> bool:
        return self._stopping

    def shutdown(self) -> None:
        self._stopping = True
        self._call(self.engine.request_shutdown)

    # -- reads ------------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        return self.engine.model.snapshot()

    def events_since(self, last_id: int) -> list[Event]:
        return self.engine.model.events_since(last_id)

    def warnings_since(self, last_id: int) -> list[Record]:
        return [r for r in self.log.since(last_id) if r.level != "info"]

    def listening(self) -> dict[str, str]:
        return {
            b.listener: f"[{b.host}]:{b.port}" if ":" in b.host else f"{b.host}:{b.port}"
            for b in self.engine.bound
        }

    def active_connections(self) -> int:
        return sum(b.active for p in self.engine.model.pools.values() for b in p.backends)

    # -- changes ----------------------------------------------------------------------------
    def submit(self, command: control.Command, done: Done, source: str = "keyboard") -> None:
        self._run(lambda: control.apply(self.engine.model, command, source), done)

    @property
    def config(self) -> Config:
        return self.engine.config

    def reload(self, done: Done) -> None:
        def action() -> str:
            try:
                return self.engine.reload_from_file()
            except CommandError as exc:
                self.log("reload_failed", "warning", cause=str(exc))  # into the event pane
                raise

        self._run(action, done)

    def run_extra(self, name: str, target: str, done: Done) -> None:
        handler = self._handlers.get(name)
        if handler is None:
            done(None, f"no action named {name!r} here")
            return
        self._run(lambda: handler(target), done)

    def _run(self, action: Callable[[], str], done: Done) -> None:
        def inside_trio() -> None:
            try:
                message, error = action(), None
            except CommandError as exc:
                message, error = None, str(exc)
            assert self._loop is not None
            self._loop.call_soon(done, message, error)

        if not self._call(inside_trio):
            done(None, "the engine is not running")

    def _call(self, fn: Callable[[], Any]) -> bool:
        token = self._token
        if token is None:
            return False
        try:
            token.run_sync_soon(fn)
        except trio.RunFinishedError:
            return False
        return True


async def _dashboard_main(app: Any, bridge: GuestBridge) -> outcome.Outcome[None] | None:
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        bridge.log(
            "signal",
            signal=signal.Signals(signum).name,
            cause="graceful shutdown" if signals == 1 else "closing connections now",
        )
        app.shutdown_requested(signal.Signals(signum).name)

    def on_hangup() -> None:
        bridge.log("signal", signal="SIGHUP", cause="reload the configuration")
        app.reload("SIGHUP")

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    try:
        await app.run_async()
    finally:
        # Never let the loop end under a live guest run: it would be abandoned silently.
        if bridge.running:
            if not bridge.stopping:
                bridge.shutdown()
            await bridge.wait_finished()
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(signum)
    return await bridge.wait_finished() if bridge.started else None


def run_dashboard(bridge: GuestBridge, theme: str | None = None) -> outcome.Outcome[None] | None:
    """Run the dashboard until the operator quits and the engine has shut down.

    Returns the engine's outcome (None if it never started). Raises TuilbError for a bad
    theme before the terminal is touched.
    """
    from tuilb.ui.app import TuilbApp  # Textual is loaded only here

    app = TuilbApp(bridge, theme=theme or bridge.config.ui.theme)
    return asyncio.run(_dashboard_main(app, bridge))
