"""What the HTTP proxy's two exchange paths share: the exceptions that steer an exchange,
the access-log record of a request, and two small I/O helpers."""

from __future__ import annotations

import trio

from tuilb.l7.stream import SocketStream, Stream

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


class Fail(Exception):
    """End this exchange with an error response (if none was started) and close."""

    def __init__(self, status: int, detail: str = "") -> None:
        self.status = status
        self.detail = detail


class Retry(Exception):
    """A pooled connection was dead before any response byte: try a fresh one."""


class ClientGone(Exception):
    pass


class Req:
    """What the access log says about one request."""

    __slots__ = ("backend", "bytes", "method", "path", "start", "status")

    def __init__(self, method: bytes, path: bytes, start: float) -> None:
        self.method = method
        self.path = path
        self.start = start
        self.status = 0  # 0: no response was sent (the client went away first)
        self.bytes = 0  # response body bytes sent to the client
        self.backend = ""


async def receive_until(stream: Stream, deadline: float) -> bytes | None:
    """`stream.receive()` by `deadline` (trio time); None when it passed."""
    if type(stream) is SocketStream:
        return await stream.receive_until(deadline)  # no timer when bytes are waiting
    with trio.move_on_at(deadline):
        return await stream.receive()
    return None


async def send_client(stream: Stream, data: bytes | None) -> None:
    """Send to the client; a failure means it is gone."""
    if data:
        try:
            await stream.send(data)
        except OSError:
            raise ClientGone from None
