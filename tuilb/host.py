"""How the engine is hosted. Headless: plain `trio.run` with signal handling.

(The dashboard host, Textual plus trio guest mode, will live here too; it is the only
module allowed to import both.)
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator

import trio

from tuilb import __version__
from tuilb.config import Config
from tuilb.engine import Engine
from tuilb.log import Log


async def _watch_signals(engine: Engine, log: Log, signals: AsyncIterator[int]) -> None:
    first = True
    async for signum in signals:
        cause = "graceful shutdown" if first else "closing remaining connections now"
        log("signal", signal=signal.Signals(signum).name, cause=cause)
        first = False
        engine.request_shutdown()


async def serve_headless(config: Config, log: Log) -> None:
    engine = Engine(config, log=log)
    # Handlers go in before anything is logged: a SIGTERM sent as soon as "listening"
    # appears must still mean a graceful shutdown.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        await engine.bind()  # outside the nursery: a port in use is a StartupError, not a group
        log("started", version=__version__, config=config.source, pid=os.getpid())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_signals, engine, log, signals)
            await engine.run()  # returns once shutdown has finished
            nursery.cancel_scope.cancel()


def run_headless(config: Config, log: Log) -> None:
    trio.run(serve_headless, config, log)
