"""The HTTP proxy's fast path (tuilb/l7/fast.py, fastpath.py, timers.py) end to end: which
path serves a request, response shapes the fast parser hands to h11, bodies, timeouts by
the swept timers, retries, refusals and counters. Real sockets on 127.0.0.1: raw clients
and, where the h11 backend cannot produce a shape, raw backends that write exact bytes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

from tests.conftest import RecordingLog, Running, poll, start_engine
from tests.l7util import HttpBackend, Received, http_config
from tuilb.l7 import fastpath

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext"
CLOSE = object()  # a raw backend step: close the connection
HANG = object()  # a raw backend step: never answer


def out(body: bytes, *headers: bytes) -> bytes:
    """A 200 with a Content-Length as the proxy writes it (`headers` after the length)."""
    extra = b"".join(h + b"\r\n" for h in headers)
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


OK_OUT = out(b"next")  # what the client gets for OK


# -- peers ----------------------------------------------------------------------------------
@dataclass
class RawRequest:
    conn: int  # which backend connection carried it (counts from 1)
    head: bytes  # without the final CRLF CRLF
    body: bytes

    @property
    def target(self) -> bytes:
        return self.head.split(b" ")[1]


@dataclass
class RawBackend:
    """Per request (head and Content-Length body) received, `answer(request)` gives the
    steps: bytes written as they are, CLOSE, HANG, or an async callable awaited."""

    answer: Callable[[RawRequest], list[Any]]
    port: int = 0
    conns: list[bytearray] = field(default_factory=list)  # every byte each one received
    requests: list[RawRequest] = field(default_factory=list)

    async def serve(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._conn, listeners)

    async def _conn(self, stream: trio.SocketStream) -> None:
        seen, buf = bytearray(), bytearray()
        self.conns.append(seen)
        number = len(self.conns)

        async def more() -> bool:
            data = await stream.receive_some(65536)
            buf.extend(data)
            seen.extend(data)
            return bool(data)

        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    if not await more():
                        return
                head = bytes(buf).partition(b"\r\n\r\n")[0]
                length = int(_header(head, b"content-length") or 0)
                del buf[: len(head) + 4]
                while len(buf) < length:
                    if not await more():
                        return
                self.requests.append(RawRequest(number, head, bytes(buf[:length])))
                del buf[:length]
                for step in self.answer(self.requests[-1]):
                    if step is CLOSE:
                        return
                    if step is HANG:
                        await trio.sleep_forever()
                    await (step() if callable(step) else stream.send_all(step))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await stream.aclose()


def _header(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


def always(*steps: Any) -> Callable[[RawRequest], list[Any]]:
    return lambda request: list(steps)


def first_then_ok(*steps: Any) -> Callable[[RawRequest], list[Any]]:
    """`steps` for the request to /1, OK for every other one."""
    return lambda request: list(steps) if request.target == b"/1" else [OK]


def _size(buf: bytes, head_request: bool) -> int | None:
    """Bytes of the response at the start of `buf` when they are all there, else None (a
    close-delimited response is never complete before EOF)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head, end = buf[:end], end + 4
    status = int(head[9:12])
    if head_request or status in (204, 304) or status < 200:
        return end
    length = _header(head, b"content-length")
    if length is not None:
        return end + int(length) if len(buf) >= end + int(length) else None
    if _header(head, b"transfer-encoding") != b"chunked":
        return None
    while (line := buf.find(b"\r\n", end)) >= 0:
        n = int(buf[end:line], 16)
        end = line + 2 + n + 2
        if n == 0:
            return end if len(buf) >= end else None  # no trailers are sent here
    return None


class Conn:
    """A raw client connection to the proxy that reads whole responses as bytes."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = b""

    @classmethod
    async def open(cls, port: int) -> Conn:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def fill(self) -> bool:
        try:
            data = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:
            data = b""
        self.buf += data
        return bool(data)

    async def response(self, head_request: bool = False) -> bytes:
        with trio.fail_after(5):
            while (size := _size(self.buf, head_request)) is None:
                if not await self.fill():
                    raise EOFError(f"EOF inside a response: {self.buf[:200]!r}")
        answer, self.buf = self.buf[:size], self.buf[size:]
        return answer

    async def rest(self) -> bytes:
        """Everything until the proxy closes."""
        with trio.fail_after(5):
            while await self.fill():
                pass
        answer, self.buf = self.buf, b""
        return answer


def get(target: str, *extra: bytes) -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: example.test\r\n%s\r\n" % (target.encode(), b"".join(extra))


async def setup(
    nursery: trio.Nursery, answer: Callable[[RawRequest], list[Any]], extra: str = ""
) -> tuple[RawBackend, Running, Conn]:
    """A raw backend, an engine over it (`extra`: more config) and a client connection."""
    backend = RawBackend(answer)
    await nursery.start(backend.serve)
    run = await start_engine(nursery, http_config({"app": [backend.port]}, extra=extra))
    return backend, run, await Conn.open(run.port)


def set_fast(run: Running, on: bool) -> None:
    assert run.engine._http
    for proxy in run.engine._http:
        proxy.fast = on


def fields(head: bytes) -> set[tuple[bytes, bytes]]:
    lines = head.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]
    return {(n.lower(), v.strip()) for n, _, v in (line.partition(b":") for line in lines)}


@pytest.fixture
def spy(monkeypatch) -> list[tuple[bytes, str]]:
    """(target, outcome) per call of fastpath.exchange: served, declined or raised."""
    calls: list[tuple[bytes, str]] = []
    real = fastpath.exchange

    async def counted(proxy, stream, head, data, client_ip, watch):
        outcome = "raised"
        try:
            result = await real(proxy, stream, head, data, client_ip, watch)
            outcome = "declined" if result is fastpath.DECLINED else "served"
            return result
        finally:
            calls.append((head.target, outcome))

    monkeypatch.setattr(fastpath, "exchange", counted)
    return calls


# -- 1. the fast path and the h11 path agree ------------------------------------------------
async def test_an_ordinary_get_goes_fast_and_the_h11_path_answers_it_alike(nursery, spy):
    reply = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"
    backend, run, conn = await setup(nursery, always(reply))
    request = get("/x?y=1", b"User-Agent: t\r\nX-Forwarded-For: 6.6.6.6\r\nKeep-Alive: 5\r\n")
    await conn.send(request)
    fast_answer = await conn.response()
    set_fast(run, False)
    conn = await Conn.open(run.port)
    await conn.send(request)
    h11_answer = await conn.response()
    assert spy == [(b"/x?y=1", "served")]  # the second went through h11 only
    assert fast_answer == (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nhi"
    )
    assert h11_answer.startswith(b"HTTP/1.1 200 OK\r\n") and h11_answer.endswith(b"\r\n\r\nhi")
    assert fields(h11_answer) == fields(fast_answer)
    fast_head, h11_head = (r.head for r in backend.requests)
    assert fast_head == (
        b"GET /x?y=1 HTTP/1.1\r\nhost: example.test\r\nuser-agent: t\r\n"
        b"x-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\n"
        b"x-forwarded-host: example.test\r\nforwarded: for=127.0.0.1;proto=http;host=example.test"
    )
    assert h11_head.split(b"\r\n")[0] == b"GET /x?y=1 HTTP/1.1"
    assert fields(h11_head) == fields(fast_head)


# -- 2. bodies in pieces, keep-alive, pipelining --------------------------------------------
async def test_a_body_in_pieces_then_keepalive_then_pipelined_requests(nursery, spy):
    def echo(request: RawRequest) -> list[Any]:
        body = request.target + b":" + request.body
        return [b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)]

    backend, _, conn = await setup(nursery, echo)
    await conn.send(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n")
    with trio.fail_after(5):
        for tail, piece in ((b"\r\n\r\n", b"abcd"), (b"abcd", b"efgh")):
            await poll(lambda t=tail: bool(backend.conns) and backend.conns[0].endswith(t))
            await conn.send(piece)  # each piece goes on as it comes (waited for above)
        await poll(lambda: backend.conns[0].endswith(b"efgh"))
    await conn.send(b"ijkl" + get("/again"))  # the last piece, and a request behind it
    assert await conn.response() == out(b"/up:abcdefghijkl")
    assert await conn.response() == out(b"/again:")
    p2 = b"POST /p2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nxyz"
    await conn.send(get("/p1") + p2 + get("/p3")[:9])
    assert await conn.response() == out(b"/p1:")
    assert await conn.response() == out(b"/p2:xyz")
    await conn.send(get("/p3")[9:])  # a head begun behind the others ends: h11 takes it
    assert await conn.response() == out(b"/p3:")
    assert [r.body for r in backend.requests] == [b"abcdefghijkl", b"", b"", b"xyz", b""]
    assert len(backend.conns) == 1
    assert spy == [(t, "served") for t in (b"/up", b"/again", b"/p1", b"/p2")]


# -- 3. Connection: close -------------------------------------------------------------------
async def test_connection_close_from_the_client_is_answered_and_honoured(nursery, spy):
    backend, _, conn = await setup(nursery, always(OK))
    await conn.send(get("/", b"Connection: close\r\n"))
    assert await conn.rest() == out(b"next", b"connection: close")  # and the close
    assert spy == [(b"/", "served")]
    assert _header(backend.requests[0].head, b"connection") is None  # hop-by-hop


# -- 4. responses the fast parser hands to h11 (and one it takes) ---------------------------
CHUNKS = b"5\r\nhello\r\n1\r\n!\r\n0\r\n\r\n"
SHAPES = {  # backend steps, what the client gets, whether the backend connection is reused
    "chunked": (
        [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-K: c\r\n\r\n" + CHUNKS],
        b"HTTP/1.1 200 OK\r\nx-k: c\r\ntransfer-encoding: chunked\r\n\r\n" + CHUNKS,
        True,
    ),
    "http10-close-delimited": (
        [b"HTTP/1.0 200 OK\r\nX-K: old\r\n\r\nuntil the end", CLOSE],
        b"HTTP/1.1 200 OK\r\nx-k: old\r\ntransfer-encoding: chunked\r\n\r\n"
        b"d\r\nuntil the end\r\n0\r\n\r\n",
        False,
    ),
    "204": (
        [b"HTTP/1.1 204 No Content\r\nX-K: none\r\n\r\n"],
        b"HTTP/1.1 204 No Content\r\nx-k: none\r\n\r\n",
        True,
    ),
    "304-with-length": (
        [b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 42\r\n\r\n'],
        b'HTTP/1.1 304 Not Modified\r\netag: "v1"\r\ncontent-length: 42\r\n\r\n',
        True,
    ),
    "100-then-200": (
        [b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
        out(b"ok"),
        True,
    ),
    "no-reason-phrase": (
        [b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok"],
        b"HTTP/1.1 200 \r\ncontent-length: 2\r\n\r\nok",
        True,
    ),
    "backend-says-close": (  # the fast parser's: the connection is not kept
        [b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"],
        out(b"ok"),
        False,
    ),
}


@pytest.mark.parametrize("shape", SHAPES)
async def test_response_shapes_are_reframed_and_keep_the_client(nursery, spy, shape):
    steps, expected, reused = SHAPES[shape]
    backend, _, conn = await setup(nursery, first_then_ok(*steps))
    await conn.send(get("/1"))
    assert await conn.response() == expected
    await conn.send(get("/2"))
    assert await conn.response() == OK_OUT
    assert [(r.target, r.conn) for r in backend.requests] == [(b"/1", 1), (b"/2", 2 - reused)]
    assert spy == [(b"/1", "served"), (b"/2", "served")]


# -- 5. HEAD --------------------------------------------------------------------------------
async def test_head_on_the_fast_path_sends_no_body_and_keeps_the_connection(nursery, spy):
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
    backend, _, conn = await setup(nursery, first_then_ok(head))
    await conn.send(get("/1").replace(b"GET", b"HEAD", 1))
    assert await conn.response(head_request=True) == head.replace(b"Content-L", b"content-l")
    await conn.send(get("/2"))
    assert await conn.response() == OK_OUT  # no stray body byte came before it
    assert [r.conn for r in backend.requests] == [1, 1]
    assert spy == [(b"/1", "served"), (b"/2", "served")]


# -- 6., 7., 8. misbehaving backends --------------------------------------------------------
@pytest.mark.parametrize("where", ["with-the-head", "with-the-body-end"])
async def test_bytes_behind_a_response_keep_the_backend_connection_out_of_the_pool(nursery, where):
    extra = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nevil!"
    relayed = trio.Event()  # the client has the body's start: the proxy is in its body loop
    steps = [OK + extra] if where == "with-the-head" else [OK[:-2], relayed.wait, OK[-2:] + extra]
    backend, _, conn = await setup(nursery, first_then_ok(*steps))
    await conn.send(get("/1"))
    with trio.fail_after(5):
        while b"\r\n\r\nne" not in conn.buf:
            assert await conn.fill()
    relayed.set()
    assert await conn.response() == OK_OUT
    await conn.send(get("/2"))
    assert await conn.response() == OK_OUT
    assert [r.conn for r in backend.requests] == [1, 2]


TRUNCATED = {
    "length": (
        [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10, CLOSE],
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"x" * 10,
    ),
    "chunked": (
        [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nonly", CLOSE],
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nonly\r\n",
    ),
}


@pytest.mark.parametrize("framing", TRUNCATED)
async def test_a_backend_closing_mid_body_closes_the_client_truncated(nursery, spy, framing):
    steps, expected = TRUNCATED[framing]
    _, run, conn = await setup(nursery, always(*steps))
    await conn.send(get("/"))
    assert await conn.rest() == expected  # then the close: no complete response
    assert spy == [(b"/", "raised")]
    assert run.model.snapshot().backend("app/app1").resets == 1


HUGE = {  # steps after a 70 000 byte header line
    "length": [b"Content-Length: 2\r\n\r\nok"],
    "chunked": [b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"],
    "never-ending": [b"X-More: " + b"m" * 10_000, HANG],  # not a 504 in 30 s: at once
}


@pytest.mark.parametrize("case", HUGE)
async def test_a_response_head_over_64k_is_a_502(nursery, spy, case):
    big = b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * 70_000 + b"\r\n"
    _, _, conn = await setup(nursery, always(big, *HUGE[case]))
    await conn.send(get("/"))
    reply = await conn.rest()
    assert reply.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert b"\r\nconnection: close\r\n" in reply and spy == [(b"/", "served")]


# -- 9. timeouts ----------------------------------------------------------------------------
async def test_no_response_in_time_is_a_504(nursery, spy):
    _, _, conn = await setup(nursery, always(HANG), "[timeouts]\nresponse = 0.2\n")
    start = trio.current_time()
    await conn.send(get("/"))
    with trio.fail_after(3):
        reply = await conn.rest()
    assert reply.startswith(b"HTTP/1.1 504 Gateway Timeout\r\n")
    assert trio.current_time() - start >= 0.2
    assert spy == [(b"/", "served")]


async def test_an_idle_keepalive_client_is_closed_after_the_keepalive_timeout(nursery, spy):
    _, _, conn = await setup(nursery, always(OK), "[timeouts]\nkeepalive = 0.2\n")
    start = trio.current_time()  # before the proxy's wait begins, for a sound lower bound
    await conn.send(get("/"))
    assert await conn.response() == OK_OUT
    with trio.fail_after(3):
        assert await conn.rest() == b""
    assert trio.current_time() - start >= 0.2
    assert spy == [(b"/", "served")]


async def test_a_head_that_never_ends_is_a_408_through_h11(nursery, spy):
    config = "[timeouts]\nrequest_headers = 0.2\n"
    backend, _, conn = await setup(nursery, always(OK), config)
    await conn.send(b"GET / HTTP/1.1\r\n")
    await conn.send(b"Host: x\r\n")  # and never the final CRLF
    with trio.fail_after(3):
        reply = await conn.rest()
    assert reply.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"\r\nconnection: close\r\n" in reply
    assert spy == [] and backend.requests == []


async def test_a_stalled_request_body_is_a_408_and_the_connection_closes(nursery, spy):
    backend, _, conn = await setup(nursery, always(OK), "[timeouts]\nbody = 0.2\n")
    await conn.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    with trio.fail_after(3):
        reply = await conn.rest()
    assert reply.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"\r\nconnection: close\r\n" in reply
    assert spy == [(b"/", "served")]  # an answer of tuilb's own, after the head went on
    with trio.fail_after(3):
        await poll(lambda: backend.conns[0].endswith(b"\r\n\r\nabc"))
    assert backend.requests == []  # it never got a whole request


# -- 10. shutdown ---------------------------------------------------------------------------
@pytest.mark.parametrize("fast", [True, False])
async def test_shutdown_closes_an_idle_keepalive_client_at_once(nursery, spy, fast):
    _, run, conn = await setup(nursery, always(OK))  # keepalive: 15 s
    set_fast(run, fast)
    await conn.send(get("/"))
    assert await conn.response() == OK_OUT
    assert len(spy) == int(fast)
    run.engine.request_shutdown()
    with trio.fail_after(2):
        assert await conn.rest() == b""
        await run.stopped.wait()


# -- 11. retries ----------------------------------------------------------------------------
async def _dies_on_reuse(nursery) -> tuple[HttpBackend, Conn]:
    """The second request of the first backend connection is read and not answered: the
    pooled connection closes under it. Every other request gets "fresh"."""

    async def reply(backend: HttpBackend, got: Received):
        if got.conn == 1 and sum(r.conn == 1 for r in backend.requests) == 2:
            return None
        return 200, [], b"fresh"

    backend = HttpBackend("a", reply)
    await nursery.start(backend.serve)
    run = await start_engine(nursery, http_config({"app": [backend.port]}))
    conn = await Conn.open(run.port)
    await conn.send(get("/1"))
    assert await conn.response() == b"HTTP/1.1 200 \r\ncontent-length: 5\r\n\r\nfresh"
    return backend, conn


async def test_a_get_on_a_dead_pooled_connection_is_retried(nursery, spy):
    backend, conn = await _dies_on_reuse(nursery)
    await conn.send(get("/2"))
    assert await conn.response() == b"HTTP/1.1 200 \r\ncontent-length: 5\r\n\r\nfresh"
    assert [(r.target, r.conn) for r in backend.requests] == [(b"/1", 1), (b"/2", 1), (b"/2", 2)]
    with trio.fail_after(5):  # the exchange ends just after the answer went out
        await poll(lambda: len(spy) == 2)
    assert spy == [(b"/1", "served"), (b"/2", "served")]


async def test_a_post_on_a_dead_pooled_connection_is_a_502_never_sent_twice(nursery, spy):
    backend, conn = await _dies_on_reuse(nursery)
    await conn.send(b"POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\npayload")
    reply = await conn.rest()
    assert reply.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert [(r.method, r.conn, r.body) for r in backend.requests] == [
        (b"GET", 1, b""),
        (b"POST", 1, b"payload"),
    ]
    assert spy == [(b"/1", "served"), (b"/2", "served")]


# -- 12. refusals: the fast path declines, h11 answers as ever ------------------------------
DECLINED = {  # the request(s), the refusal's status, the heads the backend gets per path
    "underscore-lookalike": (
        b"GET / HTTP/1.1\r\nHost: x\r\nX_Forwarded_For: 1.2.3.4\r\n\r\n",
        b"400 ",
        [],
    ),
    "no-route-then-usable": (
        get("/nothing") + get("/api/ok", b"Connection: close\r\n"),
        b"404 ",
        [b"/api/ok"],
    ),
    "body-over-max": (
        b"POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n" + b"z" * 11,
        b"413 ",
        [],
    ),
}


@pytest.mark.parametrize("case", DECLINED)
async def test_declined_requests_are_answered_exactly_as_by_the_h11_path(nursery, spy, case):
    data, status, forwarded = DECLINED[case]
    backend = RawBackend(always(OK))
    await nursery.start(backend.serve)
    routes = '[[listeners.routes]]\npool = "api"\npath_prefix = "/api/"\n'
    config = http_config(
        {"api": [backend.port]}, listener_extra=routes, extra="[limits]\nmax_body = 10\n"
    )
    run = await start_engine(nursery, config)
    replies = []
    for fast in (True, False):
        set_fast(run, fast)
        conn = await Conn.open(run.port)
        await conn.send(data)
        replies.append((await conn.response(), await conn.rest()))
    assert replies[0][0] == replies[1][0]  # the refusal, byte for byte
    assert replies[0][1].lower() == replies[1][1].lower()  # h11 writes `Connection: close`
    assert replies[0][0].startswith(b"HTTP/1.1 " + status)
    assert [r.target for r in backend.requests] == forwarded * 2
    assert spy[0][1] == "declined"
    if forwarded:  # after the 404, the connection's next request went fast again
        assert spy == [(b"/nothing", "declined"), (b"/api/ok", "served")]
        assert replies[0][1] == out(b"next", b"connection: close")
    else:
        assert replies[0][1] == b""  # closed after the refusal


# -- 13. counters ---------------------------------------------------------------------------
async def test_fast_requests_are_counted_like_any_other(nursery, spy):
    backend = RawBackend(always(OK))
    await nursery.start(backend.serve)
    routes = '[[listeners.routes]]\npool = "app"\npath_prefix = "/api/"\n'
    log = RecordingLog()
    config = http_config({"app": [backend.port]}, listener_extra=routes)
    run = await start_engine(nursery, config, log=log, access_log=True)
    conn = await Conn.open(run.port)
    n = 5
    for i in range(n):
        await conn.send(get(f"/api/{i}"))
        assert await conn.response() == OK_OUT
    assert [outcome for _, outcome in spy] == ["served"] * n
    snap = run.model.snapshot()
    counted = snap.backend("app/app1")
    assert (counted.requests, counted.responses) == (n, (0, n, 0, 0, 0))
    (listener,) = snap.listeners
    assert (listener.requests, listener.errors) == (n, 0)
    assert (listener.route_hits, listener.default_hits) == (((0, n),), 0)
    lines = [f for event, _, f in log.records if event == "request"]
    assert [(f["path"], f["status"], f["backend"], f["bytes"]) for f in lines] == [
        (f"/api/{i}", 200, "app/app1", 4) for i in range(n)
    ]
