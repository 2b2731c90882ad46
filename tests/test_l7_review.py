"""Review of the HTTP proxy's I/O shell: each test pins a bug that was found and fixed.
Real peers on 127.0.0.1 (h11, raw sockets, curl where its behaviour matters)."""

from __future__ import annotations

import socket

import pytest
import trio
import trustme

from tests.conftest import RecordingLog, connect, poll, send_all, start_engine, start_server
from tests.l7util import Client, HttpBackend, Received, http_config, start_backends
from tests.test_l7_fastpath import CLOSE, OK, Conn, RawBackend, always, fields, get, set_fast
from tests.test_l7_tls import Pki, tls_client, tls_table
from tuilb.model import AdminState


async def test_head_gets_tuilb_error_answers_without_a_body(nursery):
    # An error answer to HEAD (monitors use HEAD) used to fail inside h11 (a body for a
    # HEAD response) and went out as nothing at all: an empty reply, or a 30 s hang.
    a, b = await start_backends(nursery, "a", "b")
    config = http_config(
        {"app": [a.port], "api": [b.port]},
        listener_extra='[[listeners.routes]]\npool = "api"\nhost = "api.test"\n',
    )
    run = await start_engine(nursery, config)
    run.model.set_admin(run.model.backend("app/app1"), AdminState.DISABLED, "test")
    client = await Client.open(run.port)
    with trio.fail_after(5):
        answer = await client.request("HEAD", "/")
        assert (answer.status, answer.body, answer.complete) == (503, b"", True)
        assert answer.header(b"content-length") != []
    await client.aclose()

    run.model.set_admin(run.model.backend("app/app1"), AdminState.READY, "test")
    config = http_config({"api": [b.port]})  # no default pool: 404
    run = await start_engine(nursery, config)
    client = await Client.open(run.port)
    with trio.fail_after(5):
        answer = await client.request("HEAD", "/")
        assert (answer.status, answer.body, answer.complete) == (404, b"", True)
        answer = await client.request("HEAD", "/")  # the 404 keeps the connection
        assert answer.status == 404
    await client.aclose()


async def _read_head(sock: trio.socket.SocketType, buf: bytearray) -> bytes | None:
    """One request head (bodiless requests only) from a raw backend socket; None at EOF."""
    while b"\r\n\r\n" not in buf:
        data = await sock.recv(65536)
        if not data:
            return None
        buf += data
    head, _, _ = bytes(buf).partition(b"\r\n\r\n")
    del buf[: len(head) + 4]
    return head


async def test_bytes_left_after_a_response_keep_the_connection_out_of_the_pool(nursery):
    # A backend that sends more than the response (a body to HEAD, a second response)
    # left those bytes in h11's buffer; the connection went back to the pool as clean
    # and the next client (unrelated) got the stray bytes as its response.
    answered = 0

    async def sloppy(server, sock, seen):
        nonlocal answered
        buf = bytearray()
        while await _read_head(sock, buf) is not None:
            answered += 1
            answer = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nmine"
            if answered == 1:  # the very first answer only
                answer += b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nevil!"
            await send_all(sock, answer)

    backend = await start_server(nursery, sloppy)
    run = await start_engine(nursery, http_config({"app": [backend.port]}))
    with trio.fail_after(5):
        first = await Client.open(run.port)
        assert (await first.request("GET", "/1")).body == b"mine"
        second = await Client.open(run.port)
        for target in ("/2", "/3"):
            assert (await second.request("GET", target)).body == b"mine"
    assert backend.accepted == 2  # the first connection was not reused; the second was
    await first.aclose()
    await second.aclose()


async def test_expect_100_continue_is_answered_so_curl_sends_its_body_at_once(nursery):
    # curl sends `Expect: 100-continue` before a body over 1 MiB (or when asked) and waits
    # for `100 Continue` (1 s by default) before sending it. tuilb forwarded the head and
    # waited for the body without a word: every such upload stalled for curl's timeout.
    async def length(backend: HttpBackend, got: Received):
        return 200, [], f"{len(got.body)} bytes\n".encode()

    backend = HttpBackend("a", length)
    await nursery.start(backend.serve)
    run = await start_engine(nursery, http_config({"app": [backend.port]}))
    url = f"http://127.0.0.1:{run.port}/upload"
    with trio.fail_after(10):  # curl would wait 30 s for the 100 without it
        done = await trio.run_process(
            [
                "curl",
                "-sS",
                "--expect100-timeout",
                "30",
                "-H",
                "Expect: 100-continue",
                "--data-binary",
                "x" * 2048,
                url,
            ],
            capture_stdout=True,
        )
    assert done.stdout == b"2048 bytes\n"
    assert backend.requests[0].body == b"x" * 2048
    await poll(lambda: run.model.backend("app/app1").active == 0)


async def test_a_client_that_stops_reading_does_not_hold_its_backend_forever(nursery):
    # Writes had no deadline: a client that sent a request and stopped reading the
    # response held the exchange, and the backend's active count, for good.
    big = b"y" * (64 << 20)  # far more than the socket buffers on both sides hold

    async def huge(backend: HttpBackend, got: Received):
        return 200, [], big

    backend = HttpBackend("a", huge)
    await nursery.start(backend.serve)
    config = http_config({"app": [backend.port]}, extra="[timeouts]\nbody = 0.3\n")
    run = await start_engine(nursery, config)
    app1 = run.model.backend("app/app1")
    sock = await connect(run.port)
    with sock:
        await send_all(sock, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        with trio.fail_after(5):
            await poll(lambda: app1.active == 1)
            await poll(lambda: app1.active == 0 and run.engine.active_connections == 0)


async def test_an_https_client_that_stops_reading_does_not_hold_its_backend_forever(
    nursery, tmp_path
):
    pki = Pki(trustme.CA(), tmp_path)
    big = b"y" * (64 << 20)

    async def huge(backend: HttpBackend, got: Received):
        return 200, [], big

    backend = HttpBackend("a", huge)
    await nursery.start(backend.serve)
    cert, key = pki.issue("site", "example.test")
    config = http_config(
        {"app": [backend.port]},
        listener_extra=tls_table((cert, key, ())),
        extra="[timeouts]\nbody = 0.3\n",
    )
    run = await start_engine(nursery, config)
    app1 = run.model.backend("app/app1")
    _, stream = await tls_client(run.port, pki.client_context())
    await stream.send_all(b"GET / HTTP/1.1\r\nhost: example.test\r\n\r\n")
    with trio.fail_after(5):
        await poll(lambda: app1.active == 1)
        await poll(lambda: app1.active == 0 and run.engine.active_connections == 0)
    await stream.transport_stream.aclose()


async def test_a_backend_that_stops_reading_the_body_does_not_hold_the_client_forever(nursery):
    # The same toward a backend: one that took the head and then read nothing more kept
    # tuilb writing the request body forever.
    async def deaf(server, sock, seen):
        seen.data += await sock.recv(65536)
        await trio.sleep_forever()

    backend = await start_server(nursery, deaf)
    config = http_config({"app": [backend.port]}, extra="[timeouts]\nbody = 0.3\n")
    run = await start_engine(nursery, config)
    app1 = run.model.backend("app/app1")
    sock = await connect(run.port)
    body = 64 << 20

    async def upload() -> None:
        head = f"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: {body}\r\n\r\n".encode()
        try:
            await send_all(sock, head + b"z" * body)
        except OSError:
            pass  # tuilb gave up and closed

    with sock:
        async with trio.open_nursery() as inner:
            inner.start_soon(upload)
            with trio.fail_after(5):
                await poll(lambda: app1.active == 1)
                await poll(lambda: app1.active == 0 and run.engine.active_connections == 0)
            inner.cancel_scope.cancel()
    assert app1.resets == 0  # a backend that is slow to read is not one that reset
    assert run.model.listeners["web"].errors == 1  # tuilb's 504


async def test_an_error_answer_after_which_tuilb_closes_says_connection_close(nursery):
    # 502, 503 and 504 end the client connection, but the answer did not say so: a
    # keep-alive client sent its next request into a closing connection.
    (a,) = await start_backends(nursery, "a")
    run = await start_engine(nursery, http_config({"app": [a.port]}))
    run.model.set_admin(run.model.backend("app/app1"), AdminState.DISABLED, "test")
    client = await Client.open(run.port)
    with trio.fail_after(5):
        answer = await client.request("GET", "/")
        assert answer.status == 503
        assert answer.header(b"connection") == [b"close"]
        assert await client.stream.receive_some(1) == b""  # and it does close
    await client.aclose()


async def test_a_refused_request_whose_client_awaits_100_continue_is_not_waited_on(nursery):
    # A 404 to a request that waits for `100 Continue` means "don't send the body"; tuilb
    # then waited `timeouts.body` (30 s) for that body to skip it before it went on.
    (a,) = await start_backends(nursery, "a")
    run = await start_engine(nursery, http_config({"api": [a.port]}))  # no default: 404
    sock = await connect(run.port)
    with sock, trio.fail_after(5):
        await send_all(
            sock,
            b"POST / HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 10\r\n\r\n",
        )
        out = bytearray()
        while data := await sock.recv(65536):
            out += data
    assert out.startswith(b"HTTP/1.1 404 ") and b"connection: close" in out.lower()


@pytest.mark.parametrize("fast", [True, False], ids=["fast path", "h11 path"])
async def test_the_response_timeout_counts_from_the_end_of_a_slow_upload(nursery, fast):
    # The fast path counted `timeouts.response` from the request head: an upload longer
    # than that timeout got a 504 the moment its last byte went out.
    async def thoughtful(backend: HttpBackend, got: Received):
        await trio.sleep(0.15)  # half the response timeout, several sweeps of the timers
        return 200, [], b"stored\n"

    a = HttpBackend("a", thoughtful)
    await nursery.start(a.serve)
    config = http_config({"app": [a.port]}, extra="[timeouts]\nresponse = 0.3\nbody = 5\n")
    run = await start_engine(nursery, config)
    for proxy in run.engine._http:
        proxy.fast = fast
    sock = await connect(run.port)
    with sock:
        await send_all(sock, b"POST /up HTTP/1.1\r\nhost: x\r\ncontent-length: 30\r\n\r\n")
        for _ in range(6):  # paced: the upload takes 0.6 s, twice the response timeout
            await trio.sleep(0.1)
            await send_all(sock, b"z" * 5)
        with trio.fail_after(5):
            reply = b""
            while b"\r\n\r\n" not in reply:
                reply += await sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert a.requests[0].body == b"z" * 30


# -- found reviewing the fast path --------------------------------------------------------
@pytest.mark.parametrize("watched", [True, False], ids=["swept timers", "scoped waits"])
async def test_a_first_request_already_here_when_shutdown_begins_is_served(nursery, watched):
    # The watched wait returned at once once shutdown began, so a connection accepted just
    # before it was closed with its request unread (the client saw a reset).
    backend = RawBackend(always(OK))
    await nursery.start(backend.serve)
    run = await start_engine(nursery, http_config({"app": [backend.port]}))
    proxy = run.engine._http[0]
    if not watched:
        proxy.timers = None  # the scoped waits, as for TLS clients
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    with theirs:
        theirs.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        proxy.begin_shutdown()  # after accept(), before handle() runs
        with trio.fail_after(5):
            await proxy.handle(ours, ("127.0.0.1", 1234))
        theirs.settimeout(2)
        assert theirs.recv(65536).startswith(b"HTTP/1.1 200 OK\r\n")


async def test_an_empty_host_is_forwarded_alike_on_both_paths(nursery):
    # The h11 path replaced an empty Host (legal: no authority) by the listener's bind
    # address, the fast path passed it on empty. Now both pass it on as it came.
    backend = RawBackend(always(OK))
    await nursery.start(backend.serve)
    run = await start_engine(nursery, http_config({"app": [backend.port]}))
    heads = []
    for on in (True, False):
        set_fast(run, on)
        conn = await Conn.open(run.port)
        await conn.send(b"GET / HTTP/1.1\r\nHost:\r\n\r\n")
        assert (await conn.response()).startswith(b"HTTP/1.1 200 OK")
        heads.append(fields(backend.requests[-1].head + b"\r\n\r\n"))
    assert heads[0] == heads[1]
    assert (b"host", b"") in heads[0]


@pytest.mark.parametrize("on", [True, False], ids=["fast path", "h11 path"])
async def test_a_request_line_of_exactly_the_limit_passes(nursery, on):
    # The h11 path counted the CR before the LF as part of the line: 414 one byte early.
    backend = RawBackend(always(OK))
    await nursery.start(backend.serve)
    extra = "[limits]\nmax_request_line = 100\n"
    run = await start_engine(nursery, http_config({"app": [backend.port]}, extra=extra))
    set_fast(run, on)
    line = b"GET /" + b"a" * (100 - len(b"GET / HTTP/1.1")) + b" HTTP/1.1"
    assert len(line) == 100
    for extra_byte, status in ((b"", b"200"), (b"b", b"414")):
        conn = await Conn.open(run.port)
        await conn.send(line.replace(b" HTTP", extra_byte + b" HTTP") + b"\r\nHost: x\r\n\r\n")
        assert (await conn.response()).split(b" ")[1] == status


@pytest.mark.parametrize("on", [True, False], ids=["fast path", "h11 path"])
async def test_a_client_gone_mid_upload_counts_no_response(nursery, on):
    # The h11 path counted (and logged) a 400 for a client that had left mid-body.
    backend = RawBackend(always(OK))
    await nursery.start(backend.serve)
    log = RecordingLog()
    run = await start_engine(
        nursery, http_config({"app": [backend.port]}), log=log, access_log=True
    )
    set_fast(run, on)
    conn = await Conn.open(run.port)
    await conn.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
    await poll(lambda: bool(backend.conns) and backend.conns[0].endswith(b"abc"))
    await conn.stream.aclose()
    await poll(lambda: any(event == "request" for event, _, _ in log.records))
    (listener,) = run.model.snapshot().listeners
    (line,) = [fields_ for event, _, fields_ in log.records if event == "request"]
    assert (listener.requests, listener.errors, line["status"]) == (0, 0, "-")


@pytest.mark.parametrize("on", [True, False], ids=["fast path", "h11 path"])
async def test_the_retry_after_a_dead_pooled_connection_connects_anew(nursery, on):
    # The retry took the next pooled connection; after a backend restart that one was
    # dead too, and the GET got a 502.
    both_in = trio.Event()
    seen: dict[int, int] = {}

    def answer(request):
        seen[request.conn] = seen.get(request.conn, 0) + 1
        if seen[request.conn] > 1:
            return [CLOSE]  # every kept-alive connection dies under its second request
        if len(seen) == 2:
            both_in.set()
        return [both_in.wait, OK]  # hold the first two until both connections exist

    backend = RawBackend(answer)
    await nursery.start(backend.serve)
    run = await start_engine(nursery, http_config({"app": [backend.port]}))
    set_fast(run, on)
    a, b = await Conn.open(run.port), await Conn.open(run.port)
    await a.send(get("/a"))
    await b.send(get("/b"))
    assert (await a.response()).startswith(b"HTTP/1.1 200")
    assert (await b.response()).startswith(b"HTTP/1.1 200")
    app1 = run.model.pools["app"].backends[0]
    assert run.engine._http[0].upstreams.idle_count(app1) == 2
    c = await Conn.open(run.port)
    await c.send(get("/c"))
    assert (await c.response()).startswith(b"HTTP/1.1 200")
    assert len(seen) == 3  # the retry connected anew
    assert run.engine._http[0].upstreams.idle_count(app1) == 1  # the dead one's elders went
