"""Active health checks (the I/O half; decisions are in health.py) and the health
service: one check loop per backend of a pool with checks, and a ticker that ends
ejections and moves slow-start ramps. Results go into the model, which applies rise/fall.
"""

from __future__ import annotations

import errno
import random
import socket

import h11
import trio

from tuilb import __version__
from tuilb.config import Address
from tuilb.health import CheckResult, first_delay, jittered, next_interval
from tuilb.healthconf import HealthConfig, format_status, status_matches
from tuilb.l7 import client
from tuilb.model import AdminState, Backend, Model, Pool

BODY_LIMIT = 64 * 1024  # read at most this much of a check's response body
_LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class LocalError(Exception):
    """The check could not run for a reason of ours (out of descriptors): no verdict."""


def _first_error(exc: OSError) -> OSError:
    """trio.open_tcp_stream reports failed attempts as one OSError without an errno,
    caused by a group of the attempts' errors: the first of those says what happened."""
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        for inner in cause.exceptions:
            if isinstance(inner, OSError):
                return inner
    return exc


def _describe(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connect refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    return (exc.strerror or type(exc).__name__).lower()


async def probe(address: Address, config: HealthConfig) -> CheckResult:
    """One check of `address` as `config` says; never raises for the backend's faults."""
    start = trio.current_time()
    target = Address(address.host, config.port or address.port)
    try:
        with trio.fail_after(config.timeout):
            if config.type == "udp":
                ok, reason = await _udp(target, config)
                return CheckResult(ok, reason, trio.current_time() - start)
            stream = await trio.open_tcp_stream(target.host, target.port)
            async with stream:
                if config.type == "http":
                    ok, reason = await _http(stream, config, config.host or str(target))
                else:
                    ok, reason = True, "connected"
    except trio.TooSlowError:
        ok, reason = False, "timeout"
    except OSError as exc:
        exc = _first_error(exc)
        if exc.errno in _LOCAL_ERRNOS:
            raise LocalError(_describe(exc)) from None
        ok, reason = False, _describe(exc)
    except trio.BrokenResourceError:
        ok, reason = False, "connection reset"
    return CheckResult(ok, reason, trio.current_time() - start)


async def _udp(target: Address, config: HealthConfig) -> tuple[bool, str]:
    """Send `config.send` in a datagram and wait for a reply (the caller bounds the wait).
    A closed port answers with ICMP, which a connected UDP socket reports as refused."""
    infos = await trio.socket.getaddrinfo(target.host, target.port, type=socket.SOCK_DGRAM)
    family, _, _, _, sockaddr = infos[0]
    with trio.socket.socket(family, socket.SOCK_DGRAM) as sock:
        await sock.connect(sockaddr)
        await sock.send(config.send.encode())
        try:
            reply = await sock.recv(65536)
        except ConnectionRefusedError:
            return False, "port unreachable"
    if config.expect is not None and config.expect.encode() not in reply:
        return False, "reply mismatch"
    return True, f"reply of {len(reply)} bytes"


async def _http(stream: trio.SocketStream, config: HealthConfig, host: str) -> tuple[bool, str]:
    # Written and parsed by the proxy's own client code (tuilb/l7/client.py), so a check
    # accepts exactly the responses the proxy would pass on.
    target = config.path.encode("ascii")
    headers = [
        (b"host", host.encode("ascii")),
        (b"user-agent", f"tuilb-health/{__version__}".encode("ascii")),
        (b"accept", b"*/*"),
        (b"connection", b"close"),
    ]
    await stream.send_all(client.request_head(b"GET", target, headers))
    conn = client.response_parser(b"GET", target)
    expect = config.expect_body.encode() if config.expect_body else None
    status = 0
    body = bytearray()
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            return False, f"bad response: {exc}"[:120]
        if event is h11.NEED_DATA:
            data = await stream.receive_some(16384)
            if not data and not status:  # h11 would call this a protocol error
                return False, "connection closed before a response"
            conn.receive_data(data)
            continue
        if isinstance(event, h11.Response):
            status = event.status_code
            if not status_matches(config.expect_status, status):
                return False, f"HTTP {status} (expected {format_status(config.expect_status)})"
            if expect is None:
                return True, f"HTTP {status}"
        elif isinstance(event, h11.Data) and expect is not None:
            body += event.data
            del body[BODY_LIMIT:]  # the verdict must not depend on how the reads fall
            if expect in body:
                return True, f"HTTP {status}, body matched"
            if len(body) >= BODY_LIMIT:
                return False, f"HTTP {status}, body mismatch (not in the first 64 KiB)"
        elif isinstance(event, h11.EndOfMessage):
            return False, f"HTTP {status}, body mismatch"
        elif isinstance(event, h11.ConnectionClosed):
            if status:
                return False, f"HTTP {status}, body mismatch"
            return False, "connection closed before a response"


class HealthService:
    """Runs every pool's checks and the ejection/slow-start ticker until cancelled."""

    def __init__(self, model: Model, rng: random.Random | None = None) -> None:
        self.model = model
        self.rng = rng or random.Random()
        self._wakes: dict[str, trio.Event] = {}
        self.probe = probe

    def wake(self, backend: Backend) -> None:
        """Check `backend` now (it was enabled again)."""
        event = self._wakes.pop(backend.target, None)
        if event is not None:
            event.set()

    @property
    def needed(self) -> bool:
        return any(
            p.config.health.active or p.config.passive or p.config.slow_start
            for p in self.model.pools.values()
        )

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for pool in self.model.pools.values():
                if pool.config.health.active:
                    for index, backend in enumerate(pool.backends):
                        nursery.start_soon(self._check_loop, pool, backend, index)
            tick = self._tick_interval()
            if tick:
                nursery.start_soon(self._ticker, tick)

    def _tick_interval(self) -> float:
        spans: list[float] = []
        for pool in self.model.pools.values():
            if pool.config.slow_start:
                spans.append(pool.config.slow_start / 20)
            if pool.config.passive:
                spans.append(pool.config.passive.eject_time / 10)
        return max(0.01, min([0.25, *spans])) if spans else 0.0

    async def _ticker(self, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            self.model.tick(trio.current_time())

    async def _check_loop(self, pool: Pool, backend: Backend, index: int) -> None:
        config = pool.config.health
        count = len(pool.backends)
        await trio.sleep(first_delay(index, count, config.interval, self.rng.random()))
        while True:
            if backend.admin is AdminState.DISABLED:
                event = self._wakes.setdefault(backend.target, trio.Event())
                await event.wait()
                continue
            try:
                result = await self.probe(backend.address, config)
            except LocalError:
                result = None  # no verdict: try again at the next interval
            # Disabled while the check ran: the result no longer counts.
            if result is not None and _checked(backend):
                self.model.check_result(backend, result)
            delay = next_interval(config, backend.hysteresis)
            with trio.move_on_after(jittered(delay, self.rng.random())):
                event = self._wakes.setdefault(backend.target, trio.Event())
                await event.wait()


def _checked(backend: Backend) -> bool:
    return backend.admin is not AdminState.DISABLED
