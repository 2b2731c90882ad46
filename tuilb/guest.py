"""Drive a trio guest run on an asyncio loop without trio's I/O thread.

Stock guest mode (`trio.lowlevel.start_guest_run`) waits for I/O by running trio's
`epoll_wait` in a worker thread and hopping back with `call_soon_threadsafe`. Under load
that hop happens for nearly every batch of work: a thread wake-up, a GIL hand-off and a
self-pipe write per batch, which measured 12-38% more CPU per proxied request than
native `trio.run` on a 2-core machine.

On Linux trio's I/O backend is one epoll instance, and an epoll descriptor is itself
pollable: it turns readable when any descriptor registered in it is ready, including
trio's wake-up socket (written when another thread, a signal or the host schedules trio
work). So the host loop can wait on it directly (`add_reader`) beside a timer for trio's
next deadline, and every tick runs in the host thread.

This needs three private attributes of trio's guest machinery (`GuestState`'s generator
and its `runner`, and the epoll object of the I/O manager). `start()` checks for them and
falls back to stock guest mode when they are not there (another platform, another trio),
so an upgrade can cost speed but never correctness. `TUILB_GUEST_DRIVER=thread` forces the
stock driver (for comparisons in bench/dashboard.py).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any

import outcome
import sniffio
import trio

DoneCallback = Callable[[outcome.Outcome[None]], None]


def start(
    async_fn: Callable[[], Awaitable[None]],
    loop: asyncio.AbstractEventLoop,
    done_callback: DoneCallback,
) -> str:
    """Start `async_fn` as a trio guest on `loop`; return which driver runs it."""
    first: list[Callable[[], object]] = []

    def soon(fn: Callable[[], object]) -> None:
        # Catches the first tick (stock guest mode schedules it before returning), so the
        # driver can be chosen before any tick runs; every later call goes to the loop.
        if first:
            loop.call_soon(fn)
        else:
            first.append(fn)

    trio.lowlevel.start_guest_run(
        async_fn,
        run_sync_soon_threadsafe=loop.call_soon_threadsafe,
        # Catches the first tick (stock guest mode schedules it before returning), so the
        # driver can be chosen before any tick runs; every later call goes to the loop.
        run_sync_soon_not_threadsafe=lambda fn: (
            first.append(fn) if not first else loop.call_soon(fn)
        ),
        done_callback=done_callback,
        host_uses_signal_set_wakeup_fd=True,  # the asyncio loop handles signals
    )
    tick = first[0]
    driver = _EpollDriver.attach(tick, loop, done_callback)
    if driver is None:
        loop.call_soon(tick)
        return "thread"
    loop.call_soon(driver.tick)
    return "epoll"


class _EpollDriver:
    """Runs trio's unrolled run loop in the host thread, waiting on trio's epoll fd."""

    __slots__ = (
        "_deadline",
        "_done",
        "_fd",
        "_get_events",
        "_loop",
        "_runner",
        "_state",
        "_waiting",
    )

    def __init__(
        self,
        state: Any,
        fd: int,
        loop: asyncio.AbstractEventLoop,
        done_callback: DoneCallback,
    ) -> None:
        self._state = state
        self._runner = state.runner
        self._get_events = state.runner.io_manager.get_events
        self._fd = fd
        self._loop = loop
        self._done = done_callback
        self._waiting = False
        self._deadline: asyncio.TimerHandle | None = None

    @classmethod
    def attach(
        cls,
        tick: Callable[[], object],
        loop: asyncio.AbstractEventLoop,
        done_callback: DoneCallback,
    ) -> _EpollDriver | None:
        if os.environ.get("TUILB_GUEST_DRIVER") == "thread":
            return None
        state = getattr(tick, "__self__", None)
        runner = getattr(state, "runner", None)
        epoll = getattr(getattr(runner, "io_manager", None), "_epoll", None)
        needed = (
            hasattr(state, "unrolled_run_gen")
            and hasattr(state, "unrolled_run_next_send")
            and hasattr(runner, "guest_tick_scheduled")
            and hasattr(runner, "main_task_outcome")
            and callable(getattr(epoll, "fileno", None))
            and isinstance(loop, asyncio.SelectorEventLoop)
        )
        if not needed:
            return None
        driver = cls(state, epoll.fileno(), loop, done_callback)  # type: ignore[union-attr]
        # Registered once for the run's life: asyncio's selector is level-triggered, and a
        # readiness that arrives while a tick is already queued is consumed by that tick.
        loop.add_reader(driver._fd, driver._wake)
        return driver

    def tick(self) -> None:
        state = self._state
        previous, sniffio.thread_local.name = sniffio.thread_local.name, "trio"
        try:
            timeout = state.unrolled_run_next_send.send(state.unrolled_run_gen)
        except StopIteration:
            self._finish(self._runner.main_task_outcome)
            return
        except trio.TrioInternalError as exc:
            self._finish(outcome.Error(exc))
            return
        finally:
            sniffio.thread_local.name = previous
        events = outcome.capture(self._get_events, 0)
        if timeout <= 0 or isinstance(events, outcome.Error) or events.value:
            state.unrolled_run_next_send = events
            self._runner.guest_tick_scheduled = True
            self._loop.call_soon(self.tick)
            return
        # Nothing ready: sleep in the host's selector until trio's epoll fd turns readable
        # or trio's next deadline passes, whichever comes first.
        self._runner.guest_tick_scheduled = False
        self._waiting = True
        self._deadline = self._loop.call_later(timeout, self._wake)

    def _wake(self) -> None:
        if not self._waiting:
            return  # a tick is queued already and will collect the events
        self._waiting = False
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._state.unrolled_run_next_send = outcome.capture(self._get_events, 0)
        self._runner.guest_tick_scheduled = True
        self.tick()

    def _finish(self, result: outcome.Outcome[None]) -> None:
        self._loop.remove_reader(self._fd)
        self._state = None  # let the finished run go
        self._done(result)
