"""Shared helpers for the integration tests: configs on ephemeral ports and real backends.

Backends are trio servers on 127.0.0.1:0 inside the test process. Each records, per
connection, the bytes it received and how the connection ended, and wakes waiters on
every change so tests wait on conditions instead of sleeping.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from tuilb.config import Config, parse
from tuilb.engine import Engine
from tuilb.log import null_log
from tuilb.model import Model

LINGER_RESET = struct.pack("ii", 1, 0)
CHUNK = 65536


# -- configuration -------------------------------------------------------------------------
def config_text(
    ports: Sequence[int],
    *,
    pump: str = "default",
    algorithm: str = "round_robin",
    max_connections: int = 0,
    connect: float = 2.0,
    idle: float = 60.0,
    grace: float = 5.0,
    bind: str = "127.0.0.1:0",
) -> str:
    """One listener `front` over pool `app` with backends b1..bN on the given ports."""
    text = (
        f'[[listeners]]\nname = "front"\nbind = "{bind}"\npool = "app"\npump = "{pump}"\n\n'
        f'[pools.app]\nalgorithm = "{algorithm}"\n\n'
    )
    for i, port in enumerate(ports, start=1):
        text += (
            f'[[pools.app.backends]]\nname = "b{i}"\naddress = "127.0.0.1:{port}"\n'
            f"max_connections = {max_connections}\n\n"
        )
    return text + f"[timeouts]\nconnect = {connect}\nidle = {idle}\nshutdown_grace = {grace}\n"


def pair_text(port: int = 9, weight_a: int = 3, listener: str = "front", tail: str = "") -> str:
    """A tcp listener over pool `app` (weighted round robin) with backends `a` (weight
    `weight_a`) and `b` (weight 1), both at `port`; `tail` adds tables ([admin], ...)."""
    return (
        f'[[listeners]]\nname = "{listener}"\nbind = "127.0.0.1:0"\npool = "app"\n\n'
        '[pools.app]\nalgorithm = "weighted_round_robin"\n\n'
        f'[[pools.app.backends]]\nname = "a"\naddress = "127.0.0.1:{port}"\nweight = {weight_a}\n\n'
        f'[[pools.app.backends]]\nname = "b"\naddress = "127.0.0.1:{port}"\n\n{tail}'
    )


def make_config(ports: Sequence[int], **options: Any) -> Config:
    return parse(config_text(ports, **options), "<test>")


# -- waiting on conditions -----------------------------------------------------------------
class Changes:
    """A condition variable without a lock: `notify()` wakes every `wait_for()`."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._event.wait()


async def poll(predicate: Callable[[], bool]) -> None:
    """For state with no event to wait on (engine counters). Bound it with fail_after."""
    while not predicate():
        await trio.sleep(0.01)


class RecordingLog:
    """A `tuilb.log.Log` that keeps every record and lets tests wait for an event."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []
        self.changes = Changes()

    def __call__(self, event: str, level: str = "info", **fields: Any) -> None:
        self.records.append((event, level, fields))
        self.changes.notify()

    def events(self) -> list[str]:
        return [r[0] for r in self.records]

    async def wait(self, event: str) -> None:
        await self.changes.wait_for(lambda: event in self.events())


# -- the engine under test -----------------------------------------------------------------
@dataclass
class Running:
    engine: Engine
    port: int
    stopped: trio.Event  # set when Engine.run() has returned

    @property
    def model(self) -> Model:
        return self.engine.model


async def start_engine(
    nursery: trio.Nursery, config: Config, log: Any = None, access_log: bool = False
) -> Running:
    engine = Engine(config, log=log or null_log, access_log=access_log)
    stopped = trio.Event()

    async def run(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        await engine.run(task_status=task_status)
        stopped.set()

    bound = await nursery.start(run)
    assert bound[0].host == "127.0.0.1" and bound[0].port != 0
    return Running(engine, bound[0].port, stopped)


# -- backends ------------------------------------------------------------------------------
@dataclass
class Seen:
    """What a backend saw on one connection."""

    data: bytearray = field(default_factory=bytearray)
    end: str = ""  # "eof" or "reset" (or an error text)
    done: trio.Event = field(default_factory=trio.Event)


Handler = Callable[["Server", trio.socket.SocketType, Seen], Awaitable[None]]


class Server:
    def __init__(self, name: str, handler: Handler) -> None:
        self.name = name
        self.handler = handler
        self.port = 0
        self.conns: list[Seen] = []
        self.active = 0
        self.peak = 0  # most connections open at once
        self.changes = Changes()

    @property
    def accepted(self) -> int:
        return len(self.conns)

    @property
    def finished(self) -> int:
        return sum(c.done.is_set() for c in self.conns)

    async def serve(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listener = trio.socket.socket()
        with listener:
            await listener.bind(("127.0.0.1", 0))
            listener.listen(128)
            self.port = listener.getsockname()[1]
            task_status.started(self)
            async with trio.open_nursery() as nursery:
                while True:
                    sock, _ = await listener.accept()
                    nursery.start_soon(self._run, sock)

    async def _run(self, sock: trio.socket.SocketType) -> None:
        seen = Seen()
        self.conns.append(seen)
        self.active += 1
        self.peak = max(self.peak, self.active)
        self.changes.notify()
        try:
            with sock:
                await self.handler(self, sock, seen)
        except ConnectionResetError:
            seen.end = "reset"
        except OSError as exc:
            seen.end = f"error: {exc!r}"
        finally:
            self.active -= 1
            seen.done.set()
            self.changes.notify()


async def start_server(nursery: trio.Nursery, handler: Handler, name: str = "b") -> Server:
    return await nursery.start(Server(name, handler).serve)


async def _read_to_eof(sock: trio.socket.SocketType, seen: Seen, echo: bool) -> None:
    while True:
        data = await sock.recv(CHUNK)
        if not data:
            seen.end = "eof"
            return
        seen.data += data
        if echo:
            await send_all(sock, data)


async def echo(server: Server, sock: trio.socket.SocketType, seen: Seen) -> None:
    """Echo every byte until EOF, then close."""
    await _read_to_eof(sock, seen, echo=True)


async def named(server: Server, sock: trio.socket.SocketType, seen: Seen) -> None:
    """Say its name on a line, then echo until EOF."""
    await send_all(sock, server.name.encode() + b"\n")
    await _read_to_eof(sock, seen, echo=True)


async def reply_after_eof(server: Server, sock: trio.socket.SocketType, seen: Seen) -> None:
    """Read until the client half-closes, then answer with what it got."""
    await _read_to_eof(sock, seen, echo=False)
    await send_all(sock, b"after-eof:" + bytes(seen.data))


async def half_closer(server: Server, sock: trio.socket.SocketType, seen: Seen) -> None:
    """Send a greeting and half-close at once, then keep reading until the client's EOF."""
    await send_all(sock, b"bye\n")
    sock.shutdown(socket.SHUT_WR)
    await _read_to_eof(sock, seen, echo=False)


async def resetter(server: Server, sock: trio.socket.SocketType, seen: Seen) -> None:
    """Read one chunk, answer part of it, then reset the connection (SO_LINGER 0 close)."""
    seen.data += await sock.recv(CHUNK)
    await send_all(sock, b"partial")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
    seen.end = "sent reset"


# -- clients -------------------------------------------------------------------------------
async def connect(port: int) -> trio.socket.SocketType:
    sock = trio.socket.socket()
    try:
        await sock.connect(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return sock


async def send_all(sock: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[await sock.send(view) :]


async def recv_exactly(sock: trio.socket.SocketType, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        data = await sock.recv(min(CHUNK, n - len(out)))
        if not data:
            raise EOFError(f"EOF after {len(out)} of {n} bytes")
        out += data
    return bytes(out)


async def recv_to_eof(sock: trio.socket.SocketType) -> bytes:
    out = bytearray()
    while data := await sock.recv(CHUNK):
        out += data
    return bytes(out)


async def recv_line(sock: trio.socket.SocketType) -> bytes:
    out = bytearray()
    while not out.endswith(b"\n"):
        data = await sock.recv(1)
        if not data:
            raise EOFError(f"EOF inside a line: {bytes(out)!r}")
        out += data
    return bytes(out)


async def exchange(sock: trio.socket.SocketType, data: bytes) -> None:
    """Send `data` to an echoing peer and check it comes back intact."""
    await send_all(sock, data)
    assert await recv_exactly(sock, len(data)) == data


async def closed_by_tuilb(port: int, data: bytes) -> bytes:
    """Send `data` and read until tuilb closes the connection (a reset counts as closed);
    what came back, which should be nothing for a rejected connection."""
    sock = await connect(port)
    with sock, trio.fail_after(5):
        try:
            await send_all(sock, data)
            return await recv_to_eof(sock)
        except OSError:
            return b""


async def close_cleanly(sock: trio.socket.SocketType) -> None:
    """Half-close, expect the peer (an echo) to end its side too, then close."""
    with sock:
        sock.shutdown(socket.SHUT_WR)
        assert await recv_to_eof(sock) == b""


def refused_port() -> tuple[socket.socket, int]:
    """A port that refuses connections: bound, not listening, held until closed."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock, sock.getsockname()[1]
