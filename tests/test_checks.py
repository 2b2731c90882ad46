"""Active health checks: probes against real loopback servers, and the health service.

Probes run over real sockets on 127.0.0.1 against small trio servers in the test. The
health service runs either against real servers with short intervals, or under trio's
MockClock with a scripted stand-in for `probe` where exact timing is the point.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import resource
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from tests.conftest import (
    LINGER_RESET,
    Changes,
    Seen,
    Server,
    config_text,
    refused_port,
    send_all,
    start_server,
)
from tuilb.checks import HealthService, LocalError, probe
from tuilb.config import Address, Config, parse
from tuilb.control import Disable, Drain, Enable, apply
from tuilb.engine import Engine
from tuilb.health import CheckResult, Health
from tuilb.healthconf import HealthConfig, parse_status
from tuilb.model import AdminState, Event, Model

TCP = HealthConfig(type="tcp", timeout=1.0)


def http(**options: Any) -> HealthConfig:
    return HealthConfig(type="http", **{"timeout": 1.0, **options})


def at(port: int) -> Address:
    return Address("127.0.0.1", port)


# -- loopback servers ----------------------------------------------------------------------
async def closer(server: Server, sock: trio.socket.SocketType, seen: Seen) -> None:
    """Accept and close at once: enough for a TCP check."""
    seen.end = "closed"


Respond = Callable[[trio.socket.SocketType], Awaitable[None]]


def http_handler(respond: Respond) -> Callable[[Server, trio.socket.SocketType, Seen], Any]:
    """Read a request head into `seen.data`, then let `respond` answer (or not)."""

    async def handler(server: Server, sock: trio.socket.SocketType, seen: Seen) -> None:
        while b"\r\n\r\n" not in seen.data:
            data = await sock.recv(4096)
            if not data:
                seen.end = "eof before a request"
                return
            seen.data += data
        await respond(sock)
        seen.end = "answered"

    return handler


def response(status: int, body: bytes = b"", *, headers: str = "", length: bool = True) -> bytes:
    head = f"HTTP/1.1 {status} Whatever\r\nConnection: close\r\n{headers}"
    if length:
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def answer(data: bytes) -> Respond:
    async def respond(sock: trio.socket.SocketType) -> None:
        await send_all(sock, data)

    return respond


async def http_server(nursery: trio.Nursery, respond: Respond) -> Server:
    return await start_server(nursery, http_handler(respond), "http")


def request_of(server: Server) -> tuple[str, dict[str, str]]:
    """The request line and headers (lower-cased names) of the server's only request."""
    assert server.accepted == 1
    head = bytes(server.conns[0].data).split(b"\r\n\r\n")[0].decode()
    line, *rest = head.split("\r\n")
    headers = {}
    for item in rest:
        name, _, value = item.partition(":")
        headers[name.strip().lower()] = value.strip()
    return line, headers


def stalled_listener() -> tuple[list[socket.socket], int]:
    """A listener whose accept queue is full, so the kernel drops further SYNs and a
    connect never completes. listen(0) holds one connection in the queue on Linux; we
    keep connecting (each with a short bound) until one does not complete."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    held = [listener]
    for _ in range(16):
        filler = socket.socket()
        filler.settimeout(0.2)
        held.append(filler)
        try:
            filler.connect(("127.0.0.1", port))
        except TimeoutError:
            return held, port
    for sock in held:
        sock.close()
    pytest.skip("this kernel completes handshakes beyond a full accept queue")


# -- TCP probes ----------------------------------------------------------------------------
async def test_tcp_check_of_a_listener_passes(nursery):
    server = await start_server(nursery, closer)
    result = await probe(at(server.port), TCP)
    assert (result.ok, result.reason) == (True, "connected")
    assert 0 <= result.duration < 1.0
    with trio.fail_after(2):
        await server.changes.wait_for(lambda: server.accepted == 1)


async def test_tcp_check_of_a_closed_port_fails_as_refused():
    sock, port = refused_port()
    with sock:
        result = await probe(at(port), TCP)
    assert (result.ok, result.reason) == (False, "connect refused")


async def test_tcp_check_of_a_listener_that_never_completes_the_handshake_times_out():
    held, port = stalled_listener()
    try:
        result = await probe(at(port), HealthConfig(type="tcp", timeout=0.3))
    finally:
        for sock in held:
            sock.close()
    assert (result.ok, result.reason) == (False, "timeout")
    assert 0.3 <= result.duration < 1.0


async def test_port_override_checks_that_port_instead_of_the_backends(nursery):
    server = await start_server(nursery, closer)
    dead, dead_port = refused_port()
    with dead:
        passing = await probe(at(dead_port), HealthConfig(type="tcp", port=server.port))
        failing = await probe(at(server.port), HealthConfig(type="tcp", port=dead_port))
    assert (passing.ok, passing.reason) == (True, "connected")
    assert (failing.ok, failing.reason) == (False, "connect refused")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux descriptor limits")
async def test_out_of_descriptors_is_a_local_error_not_a_verdict(nursery):
    server = await start_server(nursery, closer)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.dup(0)
    os.close(lowest_free)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
    try:
        with pytest.raises(LocalError):
            await probe(at(server.port), TCP)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert (await probe(at(server.port), TCP)).ok  # and with descriptors it works again


# -- HTTP probes ---------------------------------------------------------------------------
async def test_http_200_passes_and_the_request_carries_path_host_and_close(nursery):
    server = await http_server(nursery, answer(response(200, b"fine")))
    result = await probe(at(server.port), http(path="/healthz?deep=1"))
    assert (result.ok, result.reason) == (True, "HTTP 200")
    line, headers = request_of(server)
    assert line == "GET /healthz?deep=1 HTTP/1.1"
    assert headers["host"] == f"127.0.0.1:{server.port}"
    assert headers["connection"] == "close"
    assert headers["user-agent"].startswith("tuilb-health/")


async def test_http_check_sends_the_configured_host_header(nursery):
    server = await http_server(nursery, answer(response(204)))
    result = await probe(at(server.port), http(host="app.internal:8443"))
    assert (result.ok, result.reason) == (True, "HTTP 204")
    line, headers = request_of(server)
    assert line == "GET / HTTP/1.1"
    assert headers["host"] == "app.internal:8443"


async def test_http_check_on_an_override_port_names_that_port_in_the_host_header(nursery):
    server = await http_server(nursery, answer(response(200)))
    dead, dead_port = refused_port()
    with dead:
        result = await probe(at(dead_port), http(port=server.port))
    assert (result.ok, result.reason) == (True, "HTTP 200")
    assert request_of(server)[1]["host"] == f"127.0.0.1:{server.port}"


async def test_http_503_fails_naming_the_status_and_what_was_expected(nursery):
    server = await http_server(nursery, answer(response(503, b"overloaded")))
    result = await probe(at(server.port), http())
    assert (result.ok, result.reason) == (False, "HTTP 503 (expected 200-399)")


@pytest.mark.parametrize(
    ("status", "expect", "ok", "reason"),
    [
        (302, "200-399", True, "HTTP 302"),
        (302, "200", False, "HTTP 302 (expected 200)"),
        (302, ["200", "300-302"], True, "HTTP 302"),
        (303, ["200", "300-302"], False, "HTTP 303 (expected 200, 300-302)"),
        (404, [200, 404], True, "HTTP 404"),
        (200, "201-204", False, "HTTP 200 (expected 201-204)"),
        (500, "500-599", True, "HTTP 500"),
    ],
)
async def test_http_expect_status_codes_ranges_and_lists(nursery, status, expect, ok, reason):
    server = await http_server(nursery, answer(response(status)))
    result = await probe(at(server.port), http(expect_status=parse_status(expect)))
    assert (result.ok, result.reason) == (ok, reason)


@pytest.mark.parametrize(
    ("reply", "ok", "reason"),
    [
        (response(200, b'{"status": "healthy"}'), True, "HTTP 200, body matched"),
        (response(200, b'{"status": "degraded"}'), False, "HTTP 200, body mismatch"),
        # No Content-Length: the body runs to the close.
        (response(200, b"all healthy here", length=False), True, "HTTP 200, body matched"),
        (response(200, b"all sick here", length=False), False, "HTTP 200, body mismatch"),
        # Chunked, the expected text split across two chunks.
        (
            response(200, headers="Transfer-Encoding: chunked\r\n", length=False)
            + b"4\r\nheal\r\n3\r\nthy\r\n0\r\n\r\n",
            True,
            "HTTP 200, body matched",
        ),
        # The status decides first: a good body does not rescue a 503.
        (response(503, b"healthy"), False, "HTTP 503 (expected 200-399)"),
    ],
)
async def test_http_expect_body(nursery, reply, ok, reason):
    server = await http_server(nursery, answer(reply))
    result = await probe(at(server.port), http(expect_body="healthy"))
    assert (result.ok, result.reason) == (ok, reason)


async def test_http_body_mismatch_when_the_text_is_beyond_the_read_limit(nursery):
    body = b"x" * (70 * 1024) + b"healthy"
    server = await http_server(nursery, answer(response(200, body)))
    result = await probe(at(server.port), http(expect_body="healthy"))
    assert not result.ok
    assert result.reason.startswith("HTTP 200, body mismatch")


async def test_http_slow_reply_beyond_the_timeout_fails_as_timeout(nursery):
    release = trio.Event()

    async def slow(sock: trio.socket.SocketType) -> None:
        await release.wait()  # answers only after the check has given up
        await send_all(sock, response(200))

    server = await http_server(nursery, slow)
    try:
        result = await probe(at(server.port), http(timeout=0.25))
    finally:
        release.set()
    assert (result.ok, result.reason) == (False, "timeout")
    assert 0.25 <= result.duration < 1.0
    assert request_of(server)[0] == "GET / HTTP/1.1"  # the request got there


async def test_http_server_closing_without_an_answer_fails(nursery):
    async def hang_up(sock: trio.socket.SocketType) -> None:
        pass  # the handler returns and the connection closes cleanly

    server = await http_server(nursery, hang_up)
    result = await probe(at(server.port), http())
    assert (result.ok, result.reason) == (False, "connection closed before a response")


async def test_http_server_resetting_fails_as_reset(nursery):
    async def reset(sock: trio.socket.SocketType) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)

    server = await http_server(nursery, reset)
    result = await probe(at(server.port), http())
    assert (result.ok, result.reason) == (False, "connection reset")


async def test_http_server_sending_garbage_fails_as_bad_response(nursery):
    server = await http_server(nursery, answer(b"SSH-2.0-OpenSSH_9.6\r\n\r\n"))
    result = await probe(at(server.port), http())
    assert not result.ok
    assert result.reason.startswith("bad response")


async def test_http_check_of_a_closed_port_fails_as_refused():
    sock, port = refused_port()
    with sock:
        result = await probe(at(port), http())
    assert (result.ok, result.reason) == (False, "connect refused")


# -- the health service: helpers ---------------------------------------------------------------
def toml_value(value: object) -> str:
    return json.dumps(value)  # strings, numbers and lists of them read the same in TOML


def health_config(ports: list[int], **health: object) -> Config:
    table = "".join(f"{key} = {toml_value(value)}\n" for key, value in health.items())
    return parse(config_text(ports) + "\n[pools.app.health]\n" + table, "<test>")


class FixedRandom(random.Random):
    """Jitter at the middle of its range: intervals exactly as configured."""

    def random(self) -> float:
        return 0.5


class Script:
    """A stand-in for `probe`: per-port outcomes (True/False or an exception to raise),
    ok once the script runs out; records (trio time, port) of every call."""

    def __init__(self, outcomes: dict[int, list[bool | Exception]] | None = None) -> None:
        self.outcomes = outcomes or {}
        self.calls: list[tuple[float, int]] = []
        self.changes = Changes()

    def times(self, port: int) -> list[float]:
        return [t for t, p in self.calls if p == port]

    async def __call__(self, address: Address, config: HealthConfig) -> CheckResult:
        self.calls.append((trio.current_time(), address.port))
        self.changes.notify()
        await trio.lowlevel.checkpoint()
        queue = self.outcomes.get(address.port, [])
        outcome = queue.pop(0) if queue else True
        if isinstance(outcome, Exception):
            raise outcome
        return CheckResult(outcome, "connected" if outcome else "connect refused", 0.001)


class Recorder:
    """Model events with the trio time they happened at; wait on them with a bound."""

    def __init__(self, model: Model) -> None:
        self.events: list[tuple[float, Event]] = []
        self.changes = Changes()
        model.subscribe(self._on_event)

    def _on_event(self, event: Event) -> None:
        self.events.append((trio.current_time(), event))
        self.changes.notify()

    def health(self, target: str) -> list[tuple[str, str, str]]:
        return [
            (e.old, e.new, e.cause)
            for _, e in self.events
            if e.target == target and e.kind == "health"
        ]

    async def wait_health(self, target: str, count: int, seconds: float = 5.0) -> None:
        with trio.fail_after(seconds):
            await self.changes.wait_for(lambda: len(self.health(target)) >= count)


def service_for(config: Config, script: Script | None = None) -> tuple[Model, HealthService]:
    model = Model(config.pools.values(), monotonic=trio.current_time)
    service = HealthService(model, FixedRandom())
    if script is not None:
        service.probe = script
    return model, service


# -- the health service against real servers -----------------------------------------------
class Listener:
    """A TCP port that can stop and start listening; connections are accepted and closed."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.port = 0
        self.opened = trio.Event()
        self.open()

    def open(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self.sock = sock
        self.opened.set()

    def close(self) -> None:
        if self.sock is not None:
            sock, self.sock = self.sock, None
            self.opened = trio.Event()
            trio.lowlevel.notify_closing(sock)
            sock.close()

    async def serve(self) -> None:
        while True:
            sock = self.sock
            if sock is None:
                await self.opened.wait()
                continue
            try:
                await trio.lowlevel.wait_readable(sock)
                conn, _ = sock.accept()
                conn.close()
            except (BlockingIOError, trio.ClosedResourceError, OSError):
                pass


async def test_tcp_rise_and_fall_against_a_real_listener_are_events_with_causes(nursery):
    listener = Listener()
    nursery.start_soon(listener.serve)
    config = health_config([listener.port], type="tcp", interval=0.05, rise=2, fall=3)
    model, service = service_for(config)
    service.rng = random.Random(1)
    recorder = Recorder(model)
    nursery.start_soon(service.run)
    b1 = model.backend("app/b1")

    await recorder.wait_health("app/b1", 1)
    listener.close()
    await recorder.wait_health("app/b1", 2)
    at_down = model.snapshot().backend("app/b1")
    listener.open()
    await recorder.wait_health("app/b1", 3)
    at_up = model.snapshot().backend("app/b1")
    listener.close()

    assert recorder.health("app/b1") == [
        ("unknown", "up", "health: up after the first check passed (connected)"),
        ("up", "down", "health: down after 3 failed checks (last: connect refused)"),
        ("down", "up", "health: up after 2 successful checks (last: connected)"),
    ]
    down_checks = [(c.ok, c.reason) for c in at_down.checks]
    assert down_checks[-4:] == [(True, "connected")] + [(False, "connect refused")] * 3
    assert at_down.health is Health.DOWN and at_down.health_progress == "0/2"
    assert not at_down.eligible
    up_checks = [(c.ok, c.reason) for c in at_up.checks]
    assert up_checks[-3:] == [(False, "connect refused")] + [(True, "connected")] * 2
    assert at_up.health is Health.UP and at_up.health_progress == "3/3"
    assert b1.eligible
    assert all(c.ts > 0 and c.duration < 1.0 for c in at_up.checks)


async def test_http_rise_and_fall_against_a_real_server(nursery):
    status = [200]

    async def respond(sock: trio.socket.SocketType) -> None:
        await send_all(sock, response(status[0]))

    server = await http_server(nursery, respond)
    config = health_config(
        [server.port], type="http", path="/healthz", interval=0.05, rise=2, fall=2
    )
    model, service = service_for(config)
    recorder = Recorder(model)
    nursery.start_soon(service.run)

    await recorder.wait_health("app/b1", 1)
    status[0] = 503
    await recorder.wait_health("app/b1", 2)
    status[0] = 200
    await recorder.wait_health("app/b1", 3)

    assert recorder.health("app/b1") == [
        ("unknown", "up", "health: up after the first check passed (HTTP 200)"),
        ("up", "down", "health: down after 2 failed checks (last: HTTP 503 (expected 200-399))"),
        ("down", "up", "health: up after 2 successful checks (last: HTTP 200)"),
    ]
    assert all(
        bytes(c.data).startswith(b"GET /healthz HTTP/1.1\r\n") for c in server.conns if c.data
    )


async def test_first_failed_check_of_an_unknown_backend_takes_it_out(nursery):
    dead, port = refused_port()
    with dead:
        model, service = service_for(health_config([port], type="tcp", interval=0.05))
        recorder = Recorder(model)
        assert model.backend("app/b1").eligible  # unknown: usable meanwhile
        nursery.start_soon(service.run)
        await recorder.wait_health("app/b1", 1)
    assert recorder.health("app/b1") == [
        ("unknown", "down", "health: down after the first check failed (connect refused)")
    ]
    assert not model.backend("app/b1").eligible


# -- the health service under a mock clock ---------------------------------------------------
async def test_three_intervals_stable_changing_and_down(nursery, autojump_clock):
    config = health_config(
        [9001], type="tcp", interval=2.0, fast_interval=0.5, down_interval=5.0, rise=2, fall=3
    )
    ok, bad = True, False
    script = Script({9001: [ok, ok, bad, bad, bad, bad, ok, ok, ok, ok]})
    model, service = service_for(config, script)
    recorder = Recorder(model)
    nursery.start_soon(service.run)
    await trio.sleep(20.0)

    times = script.times(9001)
    assert times[0] == pytest.approx(0.1)  # a twentieth of the interval: the jitter share
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(times)]
    # up: 2 s; failing toward down: 0.5 s; down: 5 s; rising toward up: 0.5 s; up: 2 s
    assert gaps == [2.0, 2.0, 0.5, 0.5, 5.0, 5.0, 0.5, 2.0, 2.0]
    changes = [(round(t, 6), e.new) for t, e in recorder.events if e.kind == "health"]
    assert changes == [(0.1, "up"), (5.1, "down"), (15.6, "up")]


@pytest.mark.parametrize(("outcome", "checks"), [(True, 11), (False, 5)])
async def test_checks_per_time_while_up_and_while_down(nursery, autojump_clock, outcome, checks):
    config = health_config([9001], type="tcp", interval=2.0, fast_interval=0.5, down_interval=5.0)
    script = Script({9001: [outcome] * 100})
    _, service = service_for(config, script)
    nursery.start_soon(service.run)
    await trio.sleep(21.0)
    assert len(script.calls) == checks  # 21 s: every 2 s while up, every 5 s while down


async def test_first_checks_are_spread_over_the_interval(nursery, autojump_clock):
    ports = [9001, 9002, 9003, 9004]
    config = health_config(ports, type="tcp", interval=2.0)
    script = Script()
    _, service = service_for(config, script)
    service.rng = random.Random(7)
    nursery.start_soon(service.run)
    await trio.sleep(1.6)  # all first checks; a second one comes 1.9 s after the first
    first = [script.times(p)[0] for p in ports]
    slot = 2.0 / len(ports)
    for index, t in enumerate(first):
        assert index * slot <= t < index * slot + 0.1 * slot
    assert len(script.calls) == len(ports)  # one check each within the first interval


async def test_local_error_gives_no_verdict_and_the_check_is_retried(nursery, autojump_clock):
    config = health_config([9001], type="tcp", interval=2.0, fast_interval=0.5)
    script = Script({9001: [LocalError("too many open files")] * 2 + [True]})
    model, service = service_for(config, script)
    recorder = Recorder(model)
    nursery.start_soon(service.run)
    await trio.sleep(1.0)
    snap = model.snapshot().backend("app/b1")
    assert len(script.calls) == 2
    assert snap.health is Health.UNKNOWN and snap.checks == ()  # no verdict, nothing recorded
    assert recorder.events == []
    await trio.sleep(1.0)
    snap = model.snapshot().backend("app/b1")
    assert [round(t, 6) for t, _ in script.calls] == [0.1, 0.6, 1.1]  # unknown: fast interval
    assert snap.health is Health.UP and [c.reason for c in snap.checks] == ["connected"]


async def test_a_result_that_arrives_after_disable_does_not_count(nursery, autojump_clock):
    config = health_config([9001], type="tcp", interval=1.0)
    release = trio.Event()
    started = trio.Event()

    async def slow_failure(address: Address, config: HealthConfig) -> CheckResult:
        started.set()
        await release.wait()
        return CheckResult(False, "connect refused", 0.5)

    model, service = service_for(config)
    service.probe = slow_failure
    nursery.start_soon(service.run)
    await started.wait()
    apply(model, Disable("app/b1"))
    release.set()
    await trio.sleep(5.0)
    snap = model.snapshot().backend("app/b1")
    assert snap.checks == () and snap.health is Health.UNKNOWN


async def test_disabled_is_not_checked_draining_is_and_enable_checks_at_once(autojump_clock):
    """Through the engine, whose event glue wakes the check of a re-enabled backend."""
    ports = [9001, 9002, 9003]
    config = health_config(ports, type="tcp", interval=1.0)
    script = Script()
    engine = Engine(config)
    engine.health.rng = FixedRandom()
    engine.health.probe = script
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        await trio.sleep(2.5)
        apply(engine.model, Disable("app/b2"))
        apply(engine.model, Drain("app/b3"))
        before = {p: len(script.times(p)) for p in ports}
        await trio.sleep(10.0)
        after = {p: len(script.times(p)) for p in ports}
        assert after[9002] == before[9002]  # disabled: not checked
        assert after[9001] - before[9001] == 10
        assert after[9003] - before[9003] == 10  # draining: checked as before
        assert engine.model.backend("app/b3").admin is AdminState.DRAINING

        enabled_at = trio.current_time()
        apply(engine.model, Enable("app/b2"))
        with trio.fail_after(0.01):  # mock time: "at once" means no time passes at all
            await script.changes.wait_for(lambda: len(script.times(9002)) > before[9002])
        assert script.times(9002)[-1] == enabled_at
        # Then the regular interval again.
        await trio.sleep(2.5)
        assert len(script.times(9002)) == before[9002] + 3
        engine.request_shutdown()


# -- UDP probes ------------------------------------------------------------------------------


async def udp_responder(nursery: trio.Nursery, reply: bytes | None) -> int:
    """A UDP socket that answers every datagram with `reply` (None: never answers)."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))

    async def serve() -> None:
        with sock:
            while True:
                _, peer = await sock.recvfrom(2048)
                if reply is not None:
                    await sock.sendto(reply, peer)

    nursery.start_soon(serve)
    return int(sock.getsockname()[1])


def udp_check(**options: Any) -> HealthConfig:
    return HealthConfig(type="udp", **{"timeout": 0.5, **options})


async def test_udp_probe_passes_on_a_reply(nursery):
    port = await udp_responder(nursery, b"pong from the backend")
    result = await probe(Address("127.0.0.1", port), udp_check(expect="pong"))
    assert (result.ok, result.reason) == (True, "reply of 21 bytes")


async def test_udp_probe_reply_mismatch(nursery):
    port = await udp_responder(nursery, b"nope")
    result = await probe(Address("127.0.0.1", port), udp_check(expect="pong"))
    assert (result.ok, result.reason) == (False, "reply mismatch")


async def test_udp_probe_times_out_without_a_reply(nursery):
    port = await udp_responder(nursery, None)
    result = await probe(Address("127.0.0.1", port), udp_check(timeout=0.2))
    assert (result.ok, result.reason) == (False, "timeout")


async def test_udp_probe_sees_a_closed_port():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now: the kernel answers with ICMP
    result = await probe(Address("127.0.0.1", port), udp_check())
    assert (result.ok, result.reason) == (False, "port unreachable")


def test_udp_check_config() -> None:
    from tuilb.config import parse
    from tuilb.errors import ConfigError

    base = (
        '[[listeners]]\nname = "dns"\nbind = "127.0.0.1:0"\nprotocol = "udp"\npool = "app"\n'
        '[pools.app]\n[[pools.app.backends]]\nname = "b"\naddress = "127.0.0.1:53"\n'
    )
    config = parse(base + '[pools.app.health]\ntype = "udp"\nsend = "hi"\nexpect = "yo"\n', "<t>")
    health = config.pools["app"].health
    assert (health.type, health.send, health.expect) == ("udp", "hi", "yo")
    with pytest.raises(ConfigError) as info:
        parse(base + '[pools.app.health]\ntype = "tcp"\nsend = "hi"\n', "<t>")
    assert 'applies to type = "udp" checks only' in str(info.value.problems[0])
