"""Byte streams for the HTTP proxy: a non-blocking socket read and written directly (the
L4 pump's reasoning: trio's SocketStream wrapper costs per call on the hottest path), and
later a TLS stream with the same two methods."""

from __future__ import annotations

import math
import socket
from typing import Protocol

import trio
from trio.lowlevel import wait_readable, wait_writable

CHUNK = 65536


class Stream(Protocol):
    async def receive(self) -> bytes:
        """Some bytes; b"" at end of stream. Raises OSError on a reset."""
        ...

    async def send(self, data: bytes | bytearray | memoryview) -> None: ...

    def close(self) -> None: ...


class SocketStream:
    __slots__ = ("fd", "send_timeout", "sock")

    def __init__(self, sock: socket.socket, send_timeout: float = math.inf) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        # A peer that takes no byte for this long fails the send with TimeoutError (an
        # OSError, so callers treat it as a dead peer); timed only when a send must wait.
        self.send_timeout = send_timeout

    async def receive(self) -> bytes:
        recv = self.sock.recv
        while True:
            try:
                return recv(CHUNK)
            except BlockingIOError:
                await wait_readable(self.fd)

    def receive_nowait(self) -> bytes | None:
        """Bytes already waiting (b"" at end of stream), None when none are. Raises OSError
        on a reset."""
        try:
            return self.sock.recv(CHUNK)
        except BlockingIOError:
            return None

    async def receive_until(self, deadline: float) -> bytes | None:
        """`receive()` by `deadline` (trio time), None when it passed; no timer at all when
        bytes are already waiting (the common case on a busy connection)."""
        data = self.receive_nowait()
        if data is not None:
            return data
        with trio.move_on_at(deadline):
            while True:
                await wait_readable(self.fd)
                try:
                    return self.sock.recv(CHUNK)
                except BlockingIOError:
                    continue
        return None

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        try:  # most sends go out whole at once: skip the memoryview
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return
        view = memoryview(data)[sent:]
        send = self.sock.send
        with trio.move_on_after(self.send_timeout) as waiting:
            while view:
                try:
                    sent = send(view)
                except BlockingIOError:
                    await wait_writable(self.fd)
                    continue
                view = view[sent:]
                waiting.deadline = trio.current_time() + self.send_timeout
        if view:
            raise TimeoutError(f"the peer took no byte for {self.send_timeout:g}s")

    def close(self) -> None:
        self.sock.close()

    def reusable(self) -> bool:
        """An idle kept-alive connection is reusable when nothing is waiting on it: no EOF
        (the backend closed it) and no stray bytes (a protocol error). One syscall."""
        try:
            self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False  # EOF or stray bytes: either way not for another request


class TimedSend:
    """Another stream (TLS) whose sends fail like `SocketStream`'s: TimeoutError when a
    send does not complete within `send_timeout` seconds."""

    __slots__ = ("inner", "send_timeout")

    def __init__(self, inner: Stream, send_timeout: float) -> None:
        self.inner = inner
        self.send_timeout = send_timeout

    async def receive(self) -> bytes:
        return await self.inner.receive()

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        with trio.move_on_after(self.send_timeout):
            await self.inner.send(data)
            return
        raise TimeoutError(f"the peer took no byte for {self.send_timeout:g}s")

    def close(self) -> None:
        self.inner.close()
