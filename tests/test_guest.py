"""The guest driver (tuilb.guest): a trio run on an asyncio loop, with and without trio's
I/O thread. Every behaviour is checked under both drivers, because the fast one replaces
the stock tick and must keep all of its wake-up paths."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import outcome
import pytest
import trio
import trio._core._run as trio_run
import trio.testing

from tuilb import guest

DRIVERS = ["epoll", "thread"]


@pytest.fixture(params=DRIVERS)
def driver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "thread":
        monkeypatch.setenv("TUILB_GUEST_DRIVER", "thread")
    else:
        monkeypatch.delenv("TUILB_GUEST_DRIVER", raising=False)
    return str(request.param)


def host_run(
    trio_main: Callable[[], Awaitable[Any]],
    host_side: Callable[[asyncio.AbstractEventLoop], Awaitable[None]] | None = None,
) -> tuple[str, outcome.Outcome[Any]]:
    """Run `trio_main` as a guest on a fresh asyncio loop; return the driver and result."""

    async def main() -> tuple[str, outcome.Outcome[Any]]:
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[outcome.Outcome[Any]] = loop.create_future()
        chosen = guest.start(trio_main, loop, finished.set_result)
        if host_side is not None:
            await host_side(loop)
        return chosen, await asyncio.wait_for(finished, 10)

    return asyncio.run(main())


async def until(condition: Callable[[], bool]) -> None:
    """Poll from the host loop (between guest ticks) until `condition` holds."""
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0.001)


async def parked(flag: list[bool]) -> None:
    """A trio task that raises `flag` once every other task is blocked (parked in a wait)."""
    await trio.testing.wait_all_tasks_blocked()
    flag.append(True)


def test_the_epoll_driver_is_chosen_here_and_the_thread_one_on_request(driver: str) -> None:
    async def nothing() -> None:
        await trio.lowlevel.checkpoint()

    chosen, result = host_run(nothing)
    result.unwrap()
    assert chosen == driver


def test_deadlines_wake_the_guest(driver: str) -> None:
    async def sleeper() -> float:
        start = trio.current_time()
        for _ in range(5):
            await trio.sleep(0.02)
        return trio.current_time() - start

    _, result = host_run(sleeper)
    assert 0.1 <= result.unwrap() < 2


def test_socket_io_round_trips(driver: str) -> None:
    async def echo() -> bytes:
        a, b = trio.socket.socketpair()
        with a, b:
            got = b""
            for i in range(50):
                await a.send(b"x%02d" % i)
                got += await b.recv(16)
            return got

    _, result = host_run(echo)
    assert result.unwrap() == b"".join(b"x%02d" % i for i in range(50))


def test_a_peer_outside_trio_wakes_a_blocked_receive(driver: str) -> None:
    """The data arrives from the host loop while trio sleeps in recv with no deadline."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)

    blocked: list[bool] = []

    async def reader() -> bytes:
        sock = trio.socket.from_stdlib_socket(ours)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(parked, blocked)
            with sock:
                return await sock.recv(16)
        raise AssertionError("unreachable")

    async def host_side(loop: asyncio.AbstractEventLoop) -> None:
        await until(lambda: bool(blocked))  # trio sits in recv, its run idle
        theirs.send(b"hello")

    try:
        _, result = host_run(reader, host_side)
    finally:
        theirs.close()
    assert result.unwrap() == b"hello"


def test_the_host_thread_and_other_threads_can_call_in(driver: str) -> None:
    token_box: list[trio.lowlevel.TrioToken] = []
    seen: list[str] = []
    events: list[trio.Event] = []  # set in turn by the host thread and by another thread

    async def two_events() -> list[str]:
        token_box.append(trio.lowlevel.current_trio_token())
        for _ in range(2):
            event = trio.Event()
            events.append(event)
            with trio.fail_after(5):
                await event.wait()
        return seen

    async def host_side(loop: asyncio.AbstractEventLoop) -> None:
        await until(lambda: len(events) == 1)
        token = token_box[0]

        def from_host() -> None:
            seen.append("host")
            events[0].set()

        token.run_sync_soon(from_host)
        await until(lambda: len(events) == 2)

        def from_thread() -> None:
            seen.append("thread")
            events[1].set()

        thread = threading.Thread(target=token.run_sync_soon, args=(from_thread,))
        thread.start()
        thread.join()

    _, result = host_run(two_events, host_side)
    assert result.unwrap() == ["host", "thread"]


def test_a_cancel_from_the_host_thread_cuts_a_long_sleep(driver: str) -> None:
    """Host code touching trio directly (no token) must still get the guest ticking."""
    scopes: list[trio.CancelScope] = []
    blocked: list[bool] = []

    async def long_sleep() -> float:
        start = time.monotonic()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(parked, blocked)
            with trio.CancelScope() as scope:
                scopes.append(scope)
                await trio.sleep(3600)
        return time.monotonic() - start

    async def host_side(loop: asyncio.AbstractEventLoop) -> None:
        await until(lambda: bool(blocked))
        scopes[0].cancel()

    _, result = host_run(long_sleep, host_side)
    assert result.unwrap() < 5


def test_an_exception_in_the_guest_reaches_the_done_callback(driver: str) -> None:
    async def boom() -> None:
        await trio.sleep(0.01)
        raise RuntimeError("engine failed")

    _, result = host_run(boom)
    with pytest.raises(RuntimeError, match="engine failed"):
        result.unwrap()


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every job trio's guest machinery hands to its thread cache, counted."""
    jobs: list[object] = []
    real = trio_run.start_thread_soon

    def counting(*args: Any, **kwargs: Any) -> None:
        jobs.append(args[0])
        real(*args, **kwargs)

    monkeypatch.setattr(trio_run, "start_thread_soon", counting)
    return jobs


def test_the_epoll_driver_never_starts_trio_threads(
    monkeypatch: pytest.MonkeyPatch, started: list[object]
) -> None:
    monkeypatch.delenv("TUILB_GUEST_DRIVER", raising=False)

    async def waits() -> None:
        a, b = trio.socket.socketpair()
        with a, b:
            for _ in range(20):
                await trio.sleep(0.001)
                await a.send(b"x")
                await b.recv(1)

    chosen, result = host_run(waits)
    result.unwrap()
    assert chosen == "epoll"
    assert started == []


def test_the_stock_driver_uses_trio_threads(
    monkeypatch: pytest.MonkeyPatch, started: list[object]
) -> None:
    """The counter above can see threads: the stock driver, waiting the same way, starts some."""
    monkeypatch.setenv("TUILB_GUEST_DRIVER", "thread")

    async def waits() -> None:
        for _ in range(5):
            await trio.sleep(0.001)

    chosen, result = host_run(waits)
    result.unwrap()
    assert chosen == "thread"
    assert len(started) >= 5


def test_a_host_loop_without_a_selector_falls_back_to_the_stock_driver(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TUILB_GUEST_DRIVER", raising=False)
    monkeypatch.setattr(guest._EpollDriver, "attach", classmethod(lambda cls, *a: None))

    async def sleeper() -> str:
        await trio.sleep(0.01)
        return "ok"

    chosen, result = host_run(sleeper)
    assert (chosen, result.unwrap()) == ("thread", "ok")
