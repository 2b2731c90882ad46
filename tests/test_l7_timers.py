"""The swept timers of the HTTP proxy's hot path (tuilb/l7/timers.py): a wait ends with
its bytes, or with False once a sweep finds its deadline passed, or when fired."""

from __future__ import annotations

import math
import socket

import pytest
import trio
import trio.testing

from tuilb.l7.stream import SocketStream
from tuilb.l7.timers import MAX_TICK, MIN_TICK, Timers, Watch


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


async def test_a_wait_ends_with_its_bytes_before_the_deadline(pair):
    a, b = pair
    timers, watch = Timers(), Watch()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timers.run, lambda: 1.0)
        result = []

        async def waiter():
            result.append(await timers.receive(SocketStream(a), watch, trio.current_time() + 5))

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert watch in timers.armed  # armed only while waiting
        b.send(b"hello")
        with trio.fail_after(2):
            while not result:
                await trio.sleep(0.001)
        nursery.cancel_scope.cancel()
    assert result == [b"hello"]
    assert not timers.armed


async def test_a_sweep_ends_a_wait_whose_deadline_passed(pair, autojump_clock):
    a, _ = pair
    timers, watch = Timers(), Watch()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timers.run, lambda: 1.0)  # tick 0.1 s
        start = trio.current_time()
        got = await timers.receive(SocketStream(a), watch, start + 1.0)
        waited = trio.current_time() - start
        nursery.cancel_scope.cancel()
    assert got is None
    assert 1.0 <= waited <= 1.0 + 0.1 + 1e-9  # at most one tick late
    assert not timers.armed


async def test_fire_ends_a_wait_at_once_and_the_socket_stays_usable(pair):
    a, b = pair
    timers, watch = Timers(), Watch()
    ended = trio.Event()
    results = []

    async def waiter():
        results.append(await timers.wait_readable(watch, a.fileno(), math.inf))
        ended.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        timers.fire(watch)
        with trio.fail_after(2):
            await ended.wait()
    assert results == [False]
    # The descriptor was only notified, not closed: a later wait still works.
    b.send(b"x")
    with trio.fail_after(2):
        assert await timers.receive(SocketStream(a), Watch(), math.inf, wait_first=True) == b"x"


async def test_a_watch_due_after_its_waiter_woke_changes_nothing(pair):
    """The race the sweep allows: bytes arrived and the waiter is done, then the sweep runs
    with the old deadline. Firing an unarmed watch, or notifying a descriptor nobody waits
    on, must leave the next wait working."""
    a, b = pair
    timers, watch = Timers(), Watch()
    b.send(b"one")
    assert await timers.receive(SocketStream(a), watch, 0.0) == b"one"  # no wait needed
    watch.fd, watch.deadline = a.fileno(), 0.0
    timers.fire(watch)  # not armed: nothing happens
    timers.armed.add(watch)
    timers.sweep(trio.current_time())  # armed but nobody waits on the descriptor
    assert not timers.armed
    b.send(b"two")
    with trio.fail_after(2):
        assert await timers.receive(SocketStream(a), watch, math.inf, wait_first=True) == b"two"


@pytest.mark.parametrize(
    ("shortest", "tick"),
    [(10.0, MAX_TICK), (1.0, 0.1), (0.2, 0.02), (0.01, MIN_TICK)],
    ids=["default timeouts", "one second", "short test timeouts", "floor"],
)
async def test_the_tick_follows_the_shortest_timeout(shortest, tick, autojump_clock):
    timers = Timers()
    sweeps = []
    timers.sweep = sweeps.append  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timers.run, lambda: shortest)
        await trio.sleep(tick * 3 + tick / 2)
        nursery.cancel_scope.cancel()
    assert sweeps == pytest.approx([tick, tick * 2, tick * 3])
