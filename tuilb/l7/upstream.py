"""Backend connections for the HTTP proxy: an h11 client per connection and a pool of
idle kept-alive connections per backend.

A connection goes back to the pool only when its exchange ended cleanly (both sides
DONE, h11 ready for the next cycle); anything else is closed. Before reuse, a pooled
connection is checked with one non-blocking peek: a backend that closed it, or sent
bytes nobody asked for, makes it unusable.
"""

from __future__ import annotations

import h11

from tuilb.l7.client import MAX_RESPONSE_HEAD
from tuilb.l7.stream import SocketStream
from tuilb.model import AdminState, Backend

MAX_IDLE_PER_BACKEND = 32
IDLE_LIMIT = 30.0  # seconds an idle backend connection is kept (backends close them too)


class Upstream:
    __slots__ = ("backend", "conn", "idle_since", "reused", "stream")

    def __init__(self, backend: Backend, stream: SocketStream) -> None:
        self.backend = backend
        self.stream = stream
        # h11 enforces this only while a head is incomplete; the proxy checks whole heads.
        self.conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD)
        self.idle_since = 0.0
        self.reused = False  # taken from the pool (it may have died while idle)

    @property
    def clean(self) -> bool:
        """Both sides DONE and nothing received past the response (bytes h11 holds
        already would be taken for the next request's response)."""
        conn = self.conn
        return (
            conn.our_state is h11.DONE
            and conn.their_state is h11.DONE
            and not conn.trailing_data[0]
        )

    def close(self) -> None:
        self.stream.close()


class UpstreamPool:
    def __init__(self, keep: int = MAX_IDLE_PER_BACKEND, idle_limit: float = IDLE_LIMIT) -> None:
        self.keep = keep
        self.idle_limit = idle_limit
        self._idle: dict[Backend, list[Upstream]] = {}

    def take(self, backend: Backend, now: float) -> Upstream | None:
        """An idle connection to `backend` that is still open and quiet, or None."""
        idle = self._idle.get(backend)
        while idle:
            upstream = idle.pop()  # the most recently used: the least likely to be closed
            fresh = now - upstream.idle_since < self.idle_limit
            if fresh and upstream.stream.reusable():
                upstream.reused = True
                return upstream
            upstream.close()
        return None

    def give(self, upstream: Upstream, now: float, clean: bool) -> None:
        """Keep `upstream` for another request if its exchange ended `clean`ly (the h11
        path asks `upstream.clean`; the fast path knows without h11)."""
        if not clean or upstream.backend.admin is not AdminState.READY:
            upstream.close()  # a draining or disabled backend keeps no idle connection
            return
        if upstream.conn.our_state is h11.DONE:  # the exchange went through h11
            upstream.conn.start_next_cycle()
        idle = self._idle.setdefault(upstream.backend, [])
        if len(idle) >= self.keep:
            idle.pop(0).close()
        upstream.idle_since = now
        idle.append(upstream)

    def drop(self, backend: Backend) -> None:
        """Close every idle connection to `backend` (one turned out dead: so are older ones)."""
        for upstream in self._idle.pop(backend, ()):
            upstream.close()

    def idle_count(self, backend: Backend) -> int:
        return len(self._idle.get(backend, ()))

    def close(self) -> None:
        for idle in self._idle.values():
            for upstream in idle:
                upstream.close()
        self._idle.clear()
