"""`tuilb demo`: built-in backends, an embedded configuration and a traffic generator.

`Demo()` binds its backends' listening sockets at once (stdlib, 127.0.0.1 port 0) so the
configuration it builds can name their ports before trio starts. `run(engine)` serves them
inside the engine's trio run and sends traffic through the engine's listeners: HTTP
requests to "web" and a few slow, long-lived echo conversations through "echo". The web
backends answer after 0, 20 and 100 ms: with shorter delays, at 20 requests/s connections
overlap too rarely for least_connections to show its preference for the fast one.
`toggle("pool/backend")` makes a backend fail (listening socket closed, open connections
reset) or recover (listening again, same port). For trying tuilb out, not for production.
"""

from __future__ import annotations

import random
import socket
import struct
from typing import TYPE_CHECKING

import trio

from tuilb.config import Config, parse
from tuilb.errors import CommandError

if TYPE_CHECKING:
    from tuilb.engine import Engine

HOST = "127.0.0.1"
MAX_IN_FLIGHT = 50  # generator sessions open at once; beyond that a session is skipped
ECHO_CLIENTS = 3
KEEPALIVE_IDLE = 30.0  # an HTTP backend closes a keep-alive connection idle this long
REQUEST_TIMEOUT = 5.0
MAX_HEAD = 8192
MAX_BODY = 65536
_WEIGHTS = {"fast": 3, "medium": 2, "slow": 1}
_SPEEDS = (("fast", 0.0), ("medium", 0.020), ("slow", 0.100))
_METHODS = (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH")
_VERSIONS = (b"HTTP/1.1", b"HTTP/1.0")
_LINGER_RESET = struct.pack("ii", 1, 0)

# Health in the demo: HTTP checks on the web pool (so `f` shows a backend going down and,
# on recovery, rising and ramping up under slow start), passive ejection on top, and TCP
# handshake checks on the echo pool.
_DEMO_HEALTH = """slow_start = 10

[pools.web.health]
type = "http"
path = "/healthz"
interval = 1
fast_interval = 0.5
down_interval = 2
timeout = 1
rise = 2
fall = 2

[pools.web.passive]
consecutive_failures = 3
eject_time = 10

[pools.echo]

[pools.echo.health]
type = "tcp"
interval = 2

"""


class _Broken(Exception):
    """The peer sent something we cannot use, or went away mid-message."""


_ERRORS = (OSError, _Broken, trio.TooSlowError, trio.ClosedResourceError)


def _listen(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, port))
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class _Backend:
    def __init__(self, target: str, delay: float | None) -> None:
        self.target = target
        self.delay = delay  # seconds before an HTTP answer; None: a TCP echo server
        self.body = f"hello from {target}\n".encode()
        self.listener: socket.socket | None = _listen(0)
        self.port: int = self.listener.getsockname()[1]
        self.conns: set[trio.socket.SocketType] = set()
        self.scope = trio.CancelScope()
        self.failing = False

    def stop(self) -> None:
        """Refuse new connections and reset the open ones, at once."""
        self.scope.cancel()
        if self.listener is not None:
            try:
                trio.lowlevel.notify_closing(self.listener)  # wakes the task in accept()
            except RuntimeError:
                pass  # outside a trio run: nobody can be waiting
            self.listener.close()
            self.listener = None
        for conn in self.conns:
            try:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            except OSError:
                pass
            conn.close()  # the task reading it sees ClosedResourceError
        self.conns.clear()


class Demo:
    def __init__(self, rate: float = 20.0) -> None:
        self.rate = rate
        self.requests = 0  # generator requests answered
        self.errors = 0  # generator requests or echo conversations that failed
        self.skipped = 0  # sessions not started because MAX_IN_FLIGHT were open
        self._in_flight = 0
        self._nursery: trio.Nursery | None = None
        self._traffic = trio.CancelScope()
        self._backends: dict[str, _Backend] = {}
        try:
            for name, delay in _SPEEDS:
                self._backends[f"web/{name}"] = _Backend(f"web/{name}", delay)
            self._backends["echo/echo"] = _Backend("echo/echo", None)
        except BaseException:
            self.close()
            raise
        self.targets = tuple(self._backends)
        self.config: Config = parse(self._config_text(), "<demo>")

    def _config_text(self) -> str:
        text = ""
        # The web listener is HTTP (balanced per request, with request rates and latency
        # on the dashboard); echo stays a plain TCP tunnel.
        for name, protocol in (("web", "http"), ("echo", "tcp")):
            text += (
                f'[[listeners]]\nname = "{name}"\nbind = "{HOST}:0"\npool = "{name}"\n'
                f'protocol = "{protocol}"\n\n'
            )
        # Weighted round robin with unequal weights: re-weighting visibly moves the shares,
        # and the slow backend's answers keep more connections open on it.
        text += '[pools.web]\nalgorithm = "weighted_round_robin"\n' + _DEMO_HEALTH
        for backend in self._backends.values():
            pool, _, name = backend.target.partition("/")
            weight = _WEIGHTS.get(name, 1)
            text += (
                f'[[pools.{pool}.backends]]\nname = "{name}"\naddress = "{HOST}:{backend.port}"\n'
                f"weight = {weight}\n\n"
            )
        return text + "[timeouts]\nconnect = 2\nidle = 300\nshutdown_grace = 3\n"

    # -- operator controls (sync, inside the trio run) ---------------------------------------
    def failing(self) -> frozenset[str]:
        return frozenset(t for t, b in self._backends.items() if b.failing)

    def toggle(self, target: str) -> str:
        backend = self._backends.get(target)
        if backend is None:
            known = ", ".join(self._backends)
            raise CommandError(f"no demo backend named {target!r}; demo backends: {known}")
        if not backend.failing:
            backend.failing = True
            backend.stop()
            return f"{target}: failing (connections refused)"
        try:
            backend.listener = _listen(backend.port)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise CommandError(
                f"{target}: cannot listen on port {backend.port} again: {reason}"
            ) from None
        backend.failing = False
        if self._nursery is not None:
            self._start(backend)
        return f"{target}: recovered"

    def stop_traffic(self) -> None:
        """End the generator for good, closing its connections now: call it when shutting
        down, so the engine's grace period does not wait for the demo's echo conversations."""
        self.rate = 0.0
        self._traffic.cancel()

    def close(self) -> None:
        """Close every socket. `run()` does this when it ends; call it if `run()` never ran."""
        for backend in self._backends.values():
            backend.stop()

    # -- running ------------------------------------------------------------------------------
    async def run(self, engine: Engine) -> None:
        """Serve the backends and generate traffic until cancelled; call once, after bind()."""
        bound = {b.listener: (b.host, b.port) for b in engine.bound}
        if "web" not in bound or "echo" not in bound:
            raise RuntimeError("Demo.run() needs an engine built from demo.config and bound")
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for backend in self._backends.values():
                    if backend.listener is not None:
                        self._start(backend)
                nursery.start_soon(self._run_traffic, bound["web"], bound["echo"])
        finally:
            self._nursery = None
            self.close()

    def _start(self, backend: _Backend) -> None:
        assert self._nursery is not None and backend.listener is not None
        backend.scope = trio.CancelScope()
        self._nursery.start_soon(self._serve, backend, backend.listener, backend.scope)

    async def _serve(
        self, backend: _Backend, listener: socket.socket, scope: trio.CancelScope
    ) -> None:
        with scope:
            sock = trio.socket.from_stdlib_socket(listener)
            async with trio.open_nursery() as nursery:
                while True:
                    try:
                        conn, _ = await sock.accept()
                    except (OSError, trio.ClosedResourceError):
                        if listener.fileno() == -1:  # closed by toggle() or close()
                            return
                        await trio.sleep(0.05)  # aborted in the queue, out of descriptors
                        continue
                    backend.conns.add(conn)
                    nursery.start_soon(self._handle, backend, conn)

    async def _handle(self, backend: _Backend, conn: trio.socket.SocketType) -> None:
        try:
            with conn:
                if backend.delay is None:
                    while data := await conn.recv(65536):
                        await _send_all(conn, data)
                else:
                    await _http_server(backend, conn)
        except _ERRORS:
            pass
        finally:
            backend.conns.discard(conn)

    async def _run_traffic(self, web: tuple[str, int], echo: tuple[str, int]) -> None:
        with self._traffic:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._generate, web)
                for i in range(ECHO_CLIENTS):
                    nursery.start_soon(self._echo_client, echo, i)

    async def _generate(self, address: tuple[str, int]) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                if self.rate <= 0:
                    await trio.sleep(0.25)
                    continue
                count = 1 if random.random() < 0.6 else random.randint(2, 5)
                if self._in_flight < MAX_IN_FLIGHT:
                    self._in_flight += 1
                    nursery.start_soon(self._session, address, count)
                else:
                    self.skipped += 1
                # Poisson arrivals: bursts let least_connections show its preference.
                await trio.sleep(min(random.expovariate(self.rate / count), 5.0))

    async def _session(self, address: tuple[str, int], count: int) -> None:
        """One connection, `count` requests on it (keep-alive when more than one)."""
        try:
            with trio.fail_after(REQUEST_TIMEOUT * count), trio.socket.socket() as sock:
                await sock.connect(address)
                buf = bytearray()
                for i in range(count):
                    close = b"Connection: close\r\n" if i == count - 1 else b""
                    await _send_all(sock, b"GET / HTTP/1.1\r\nHost: demo\r\n" + close + b"\r\n")
                    head = await _read_head(sock, buf)
                    if not head.startswith(b"HTTP/1.1 200 "):
                        raise _Broken(head[:40])
                    await _read_exactly(sock, buf, _content_length(_headers(head)))
                    self.requests += 1
        except _ERRORS:
            self.errors += 1
        finally:
            self._in_flight -= 1

    async def _echo_client(self, address: tuple[str, int], index: int) -> None:
        """A long conversation that trickles lines, hangs up after a while and calls again."""
        await trio.sleep(0.3 * index)
        while True:
            if self.rate <= 0:
                await trio.sleep(0.25)
                continue
            try:
                with trio.socket.socket() as sock:
                    with trio.fail_after(REQUEST_TIMEOUT):
                        await sock.connect(address)
                    with trio.move_on_after(random.uniform(5.0, 20.0)):
                        n = 0
                        while self.rate > 0:
                            line = f"demo {index}.{n}\n".encode()
                            await _send_all(sock, line)
                            with trio.fail_after(REQUEST_TIMEOUT):
                                if await _read_exactly(sock, bytearray(), len(line)) != line:
                                    raise _Broken("echo mismatch")
                            n += 1
                            await trio.sleep(random.uniform(0.2, 1.0))
            except _ERRORS:
                self.errors += 1
                await trio.sleep(1.0)


# -- a little HTTP/1.1 ---------------------------------------------------------------------------
_NEED_LENGTH = b"the demo backends need a Content-Length body\n"
LENGTH_REQUIRED = (
    b"HTTP/1.1 411 Length Required\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
    b"Connection: close\r\n\r\n%s" % (len(_NEED_LENGTH), _NEED_LENGTH)
)


async def _http_server(backend: _Backend, conn: trio.socket.SocketType) -> None:
    """Answer requests until the client closes, asks to close, or sends garbage."""
    buf = bytearray()
    while True:
        with trio.move_on_after(KEEPALIVE_IDLE) as idle:
            head = await _read_head(conn, buf, eof_ok=True)
        if idle.cancelled_caught or not head:
            return
        request, _, _ = head.partition(b"\r\n")
        parts = request.split(b" ")
        if len(parts) != 3 or parts[0] not in _METHODS or parts[2] not in _VERSIONS:
            return
        headers = _headers(head)
        if b"transfer-encoding" in headers:  # too small a server to decode chunks: say so
            await _send_all(conn, LENGTH_REQUIRED)
            return
        await _read_exactly(conn, buf, _content_length(headers))
        if backend.delay:
            await trio.sleep(backend.delay)
        # HTTP/1.0 clients (ab, old tools) get one answer per connection.
        closing = headers.get(b"connection") == b"close" or parts[2] == b"HTTP/1.0"
        body = b"" if parts[0] == b"HEAD" else backend.body
        await _send_all(
            conn,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
            + f"Content-Length: {len(backend.body)}\r\n".encode()
            + (b"Connection: close\r\n" if closing else b"")
            + b"\r\n"
            + body,
        )
        if closing:
            return


def _headers(head: bytes) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise _Broken(f"bad header line {line[:40]!r}")
        out[name.lower()] = value.strip().lower()
    return out


def _content_length(headers: dict[bytes, bytes]) -> int:
    value = headers.get(b"content-length", b"0")
    if not value.isdigit() or int(value) > MAX_BODY:
        raise _Broken(f"bad content-length {value[:20]!r}")
    return int(value)


async def _read_head(sock: trio.socket.SocketType, buf: bytearray, eof_ok: bool = False) -> bytes:
    """The next message head (without the blank line); b"" on a clean EOF if `eof_ok`."""
    while (end := buf.find(b"\r\n\r\n")) < 0:
        if len(buf) > MAX_HEAD:
            raise _Broken("message head too long")
        data = await sock.recv(65536)
        if not data:
            if eof_ok and not buf:
                return b""
            raise _Broken("EOF inside a message head")
        buf += data
    head = bytes(buf[:end])
    del buf[: end + 4]
    return head


async def _read_exactly(sock: trio.socket.SocketType, buf: bytearray, n: int) -> bytes:
    while len(buf) < n:
        data = await sock.recv(65536)
        if not data:
            raise _Broken(f"EOF after {len(buf)} of {n} bytes")
        buf += data
    out = bytes(buf[:n])
    del buf[:n]
    return out


async def _send_all(sock: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[await sock.send(view) :]
