"""Timeouts for the HTTP proxy's hot path without a cancel scope per wait.

A trio cancel scope with a deadline costs ~6 µs to enter and leave, and a keep-alive
request waits twice (for the client's next request, for the backend's answer): together
more than a tenth of the request. Here a wait arms a `Watch` (two attribute writes and a
set insertion) and one sweeper task per engine looks at the armed watches every tick;
one whose deadline passed is woken with `trio.lowlevel.notify_closing` on the descriptor
it waits for, so its `wait_readable` raises ClosedResourceError and the waiter reports a
timeout. The socket itself stays open (the waiter closes it, or answers 504 first).

Timeouts fire up to one tick late; the tick follows the shortest configured HTTP timeout
(a tenth of it, between 5 ms and 250 ms). A watch that is due just as its bytes arrive is
harmless either way: if the waiter was already woken, notify_closing finds no waiter and
the exchange goes on.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import trio
from trio.lowlevel import notify_closing, wait_readable

from tuilb.l7.stream import CHUNK, SocketStream

MIN_TICK = 0.005
MAX_TICK = 0.25


class Watch:
    """One connection's timer: armed for one wait at a time."""

    __slots__ = ("deadline", "fd")

    def __init__(self) -> None:
        self.deadline = math.inf
        self.fd = -1


class Timers:
    def __init__(self) -> None:
        self.armed: set[Watch] = set()

    async def wait_readable(self, watch: Watch, fd: int, deadline: float) -> bool:
        """Wait until `fd` is readable; False when `deadline` (trio time) passed first, or
        the wait was cut short by `fire` (shutdown)."""
        watch.fd = fd
        watch.deadline = deadline
        armed = self.armed
        armed.add(watch)
        try:
            await wait_readable(fd)
        except trio.ClosedResourceError:
            return False
        finally:
            armed.discard(watch)
        return True

    def fire(self, watch: Watch) -> None:
        """End `watch`'s wait now (as if its deadline had passed)."""
        if watch in self.armed:
            self.armed.discard(watch)
            notify_closing(watch.fd)

    def sweep(self, now: float) -> None:
        due = [watch for watch in self.armed if watch.deadline <= now]
        for watch in due:
            self.fire(watch)

    async def receive(
        self, stream: SocketStream, watch: Watch, deadline: float, wait_first: bool = False
    ) -> bytes | None:
        """`stream.receive()` by `deadline`; None when it passed. Bytes already waiting are
        taken without arming anything, unless `wait_first` says they cannot be there yet
        (the answer to what was just sent). Raises OSError on a reset."""
        if not wait_first:
            data = stream.receive_nowait()
            if data is not None:
                return data
        recv = stream.sock.recv
        while True:
            if not await self.wait_readable(watch, stream.fd, deadline):
                return None
            try:
                return recv(CHUNK)
            except BlockingIOError:
                continue

    async def run(self, shortest: Callable[[], float]) -> None:
        """Sweep forever; `shortest()` is the shortest HTTP timeout now configured."""
        while True:
            await trio.sleep(min(MAX_TICK, max(MIN_TICK, shortest() / 10)))
            self.sweep(trio.current_time())
