"""The HTTP proxy end to end: real h11 clients and backends on loopback, the real engine."""

from __future__ import annotations

import trio

from tests.conftest import poll, start_engine
from tests.l7util import Client, HttpBackend, Received, http_config, raw_exchange, start_backends


async def test_get_is_proxied_with_forwarding_headers_and_hop_by_hop_dropped(nursery):
    (a,) = await start_backends(nursery, "a")
    run = await start_engine(nursery, http_config({"app": [a.port]}))
    client = await Client.open(run.port)
    answer = await client.request(
        "GET",
        "/hello?x=1",
        headers=[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("x-forwarded-for", "6.6.6.6"),
            ("user-agent", "test"),
        ],
    )
    assert (answer.status, answer.body) == (200, b"a GET /hello?x=1\n")
    got = a.requests[0]
    assert got.target == b"/hello?x=1"
    assert got.header(b"host") == [b"example.test"]
    assert got.header(b"x-forwarded-for") == [b"127.0.0.1"]  # not trusted: replaced
    assert got.header(b"x-forwarded-proto") == [b"http"]
    assert got.header(b"x-forwarded-host") == [b"example.test"]
    assert got.header(b"user-agent") == [b"test"]
    for name in (b"x-secret", b"keep-alive"):
        assert got.header(name) == []
    await client.aclose()


async def test_keep_alive_on_both_sides(nursery):
    (a,) = await start_backends(nursery, "a")
    run = await start_engine(nursery, http_config({"app": [a.port]}))
    client = await Client.open(run.port)
    for i in range(5):
        answer = await client.request("GET", f"/{i}")
        assert answer.status == 200 and answer.body == f"a GET /{i}\n".encode()
    assert len(a.requests) == 5
    assert a.connections == 1  # one backend connection, reused
    await client.aclose()


async def test_requests_of_one_client_are_balanced(nursery):
    a, b = await start_backends(nursery, "a", "b")
    run = await start_engine(nursery, http_config({"app": [a.port, b.port]}))
    client = await Client.open(run.port)
    bodies = [(await client.request("GET", "/")).body for _ in range(4)]
    assert bodies == [b"a GET /\n", b"b GET /\n"] * 2
    await client.aclose()


async def test_routes_by_host_path_method_and_header(nursery):
    app, api, canary = await start_backends(nursery, "app", "api", "canary")
    routes = (
        '[[listeners.routes]]\npool = "canary"\nheaders = { "x-canary" = "1" }\n'
        '[[listeners.routes]]\npool = "api"\nhost = "*.example.com"\npath_prefix = "/api/"\n'
        'methods = ["GET", "POST"]\n'
    )
    config = http_config(
        {"app": [app.port], "api": [api.port], "canary": [canary.port]}, listener_extra=routes
    )
    run = await start_engine(nursery, config)
    client = await Client.open(run.port)
    cases = [
        ("GET", "/api/x", "a.example.com", [], b"api"),
        ("GET", "/api/x", "a.example.com:8080", [], b"api"),  # the port is ignored
        ("DELETE", "/api/x", "a.example.com", [], b"app"),  # method not listed
        ("GET", "/apix", "a.example.com", [], b"app"),
        ("GET", "/api/x", "example.com", [], b"app"),  # the wildcard needs a subdomain
        ("GET", "/", "other", [("x-canary", "1")], b"canary"),
        ("GET", "/", "other", [("x-canary", "2")], b"app"),
    ]
    for method, target, host, headers, pool in cases:
        answer = await client.request(method, target, headers=headers, host=host)
        assert answer.body.split(b" ")[0] == pool, (method, target, host, headers)
    (listener,) = run.model.snapshot().listeners
    assert listener.route_hits == ((0, 1), (1, 2))  # canary once, api twice
    assert listener.default_hits == 4
    await client.aclose()


async def test_no_route_and_no_default_pool_is_a_404(nursery):
    (api,) = await start_backends(nursery, "api")
    routes = '[[listeners.routes]]\npool = "api"\npath_prefix = "/api/"\n'
    run = await start_engine(nursery, http_config({"api": [api.port]}, listener_extra=routes))
    client = await Client.open(run.port)
    answer = await client.request("GET", "/nothing")
    assert answer.status == 404
    answer = await client.request("GET", "/api/ok")  # the connection is still usable
    assert answer.status == 200
    assert [r.target for r in api.requests] == [b"/api/ok"]
    await client.aclose()


async def test_bodies_stream_both_ways_fixed_and_chunked(nursery):
    async def echo(backend: HttpBackend, got: Received):
        return 200, [(b"transfer-encoding", b"chunked")], got.body

    backend = HttpBackend("echo", echo)
    await nursery.start(backend.serve)
    run = await start_engine(nursery, http_config({"app": [backend.port]}))
    client = await Client.open(run.port)
    big = bytes(range(256)) * 4096  # 1 MiB
    answer = await client.request("POST", "/", body=big)
    assert answer.status == 200 and answer.body == big
    answer = await client.request("PUT", "/", body=[b"one ", b"two ", b"three"])
    assert answer.body == b"one two three"
    assert backend.requests[1].header(b"transfer-encoding") == [b"chunked"]
    assert backend.requests[0].header(b"content-length") == [str(len(big)).encode()]
    await client.aclose()


async def test_503_when_no_backend_is_usable(nursery):
    (a,) = await start_backends(nursery, "a")
    run = await start_engine(nursery, http_config({"app": [a.port]}))
    run.model.set_admin(
        run.model.backend("app/app1"), run.model.backend("app/app1").admin.DISABLED, "test"
    )
    client = await Client.open(run.port)
    answer = await client.request("GET", "/")
    assert answer.status == 503
    assert b"503" in answer.body
    await client.aclose()


async def test_502_when_every_backend_refuses(nursery):
    ports = []
    for _ in range(2):  # ports with nothing listening
        sock = trio.socket.socket()
        await sock.bind(("127.0.0.1", 0))
        ports.append(sock.getsockname()[1])
        sock.close()
    run = await start_engine(nursery, http_config({"app": ports}))
    client = await Client.open(run.port)
    answer = await client.request("GET", "/")
    assert answer.status == 502
    await client.aclose()


async def test_504_when_the_backend_does_not_answer_in_time(nursery):
    async def slow(backend: HttpBackend, got: Received):
        await trio.sleep(10)
        return 200, [], b"late"

    backend = HttpBackend("slow", slow)
    await nursery.start(backend.serve)
    config = http_config({"app": [backend.port]}, extra="[timeouts]\nresponse = 0.2\n")
    run = await start_engine(nursery, config)
    client = await Client.open(run.port)
    answer = await client.request("GET", "/")
    assert answer.status == 504
    await client.aclose()


async def test_smuggling_content_length_with_transfer_encoding_never_reaches_a_backend(nursery):
    (a,) = await start_backends(nursery, "a")
    run = await start_engine(nursery, http_config({"app": [a.port]}))
    raw = (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    reply = await raw_exchange(run.port, raw)
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert a.requests == []


async def test_oversized_request_line_and_headers(nursery):
    (a,) = await start_backends(nursery, "a")
    extra = "[limits]\nmax_request_line = 100\nmax_header_bytes = 1024\nmax_headers = 5\n"
    run = await start_engine(nursery, http_config({"app": [a.port]}, extra=extra))
    reply = await raw_exchange(run.port, b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 414 ")
    reply = await raw_exchange(
        run.port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 2000 + b"\r\n\r\n"
    )
    assert reply.startswith(b"HTTP/1.1 431 ")
    many = b"".join(b"X-%d: 1\r\n" % i for i in range(10))
    reply = await raw_exchange(run.port, b"GET / HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert reply.startswith(b"HTTP/1.1 431 ")
    assert a.requests == []


async def test_413_for_a_body_over_the_limit(nursery):
    (a,) = await start_backends(nursery, "a")
    run = await start_engine(
        nursery, http_config({"app": [a.port]}, extra="[limits]\nmax_body = 10\n")
    )
    client = await Client.open(run.port)
    answer = await client.request("POST", "/", body=b"x" * 11)
    assert answer.status == 413
    assert a.requests == []


async def test_a_backend_dying_mid_body_truncates_the_client_response(nursery):
    async def half(backend: HttpBackend, got: Received):
        return b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10  # then closes

    backend = HttpBackend("half", half)
    await nursery.start(backend.serve)
    run = await start_engine(nursery, http_config({"app": [backend.port]}))
    client = await Client.open(run.port)
    with trio.fail_after(5):
        answer = await client.request("GET", "/")
    assert answer.status == 200 and not answer.complete
    await client.aclose()


async def test_http10_without_host_gets_one_and_the_connection_closes(nursery):
    (a,) = await start_backends(nursery, "a")
    run = await start_engine(nursery, http_config({"app": [a.port]}))
    reply = await raw_exchange(run.port, b"GET /old HTTP/1.0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 ") or reply.startswith(b"HTTP/1.0 200 ")
    assert reply.endswith(b"a GET /old\n")
    assert a.requests[0].header(b"host") == [b"127.0.0.1:0"]


async def test_http11_without_host_is_a_400(nursery):
    (a,) = await start_backends(nursery, "a")
    run = await start_engine(nursery, http_config({"app": [a.port]}))
    reply = await raw_exchange(run.port, b"GET / HTTP/1.1\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert a.requests == []


async def test_access_log_and_snapshot_counters(nursery):
    from tests.conftest import RecordingLog

    (a,) = await start_backends(nursery, "a")
    log = RecordingLog()
    run = await start_engine(nursery, http_config({"app": [a.port]}), log=log, access_log=True)
    client = await Client.open(run.port)
    for _ in range(3):
        assert (await client.request("GET", "/x?y=1")).status == 200
    bad = await raw_exchange(
        run.port,
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    assert bad.startswith(b"HTTP/1.1 400 ")
    lines = [fields for event, _, fields in log.records if event == "request"]
    assert len(lines) == 4
    ok = lines[0]
    assert (ok["listener"], ok["client"], ok["method"], ok["path"], ok["status"]) == (
        "web",
        "127.0.0.1",
        "GET",
        "/x?y=1",
        200,
    )
    assert ok["backend"] == "app/app1" and ok["bytes"] == len(b"a GET /x?y=1\n")
    assert isinstance(ok["ms"], float)
    assert (lines[3]["status"], lines[3]["backend"]) == (400, "-")
    snap = run.model.snapshot()
    backend = snap.backend("app/app1")
    assert backend.requests == 3 and backend.responses == (0, 3, 0, 0, 0)
    assert len(backend.latency) == 3 and 0 < backend.latency[0] <= backend.latency[2]
    (listener,) = snap.listeners
    assert (listener.name, listener.requests, listener.errors) == ("web", 4, 1)
    await client.aclose()


async def test_no_access_log_unless_asked(nursery):
    from tests.conftest import RecordingLog

    (a,) = await start_backends(nursery, "a")
    log = RecordingLog()
    run = await start_engine(nursery, http_config({"app": [a.port]}), log=log)
    client = await Client.open(run.port)
    assert (await client.request("GET", "/")).status == 200
    assert "request" not in log.events()
    await client.aclose()


async def test_an_upgrade_becomes_a_tunnel_both_ways(nursery):
    seen_heads: list[bytes] = []

    async def upgrade_echo(stream: trio.SocketStream) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            head += await stream.receive_some(4096)
        head, _, rest = head.partition(b"\r\n\r\n")
        seen_heads.append(head)
        await stream.send_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n"
            b"hello from the backend;"
        )
        if rest:
            await stream.send_all(rest)
        while data := await stream.receive_some(4096):
            await stream.send_all(data)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    nursery.start_soon(trio.serve_listeners, upgrade_echo, listeners)
    run = await start_engine(nursery, http_config({"app": [port]}))
    stream = await trio.open_tcp_stream("127.0.0.1", run.port)
    await stream.send_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nearly;"
    )
    got = b""
    with trio.fail_after(5):
        while b"early;" not in got:
            got += await stream.receive_some(4096)
        assert got.startswith(b"HTTP/1.1 101 ")
        assert b"hello from the backend;" in got
        for word in (b"ping", b"pong"):
            await stream.send_all(word)
            echoed = b""
            while len(echoed) < len(word):
                echoed += await stream.receive_some(4096)
            assert echoed == word
    head = seen_heads[0].lower()
    assert b"upgrade: echo" in head and b"connection: upgrade" in head
    await stream.aclose()


async def test_a_drain_ends_with_the_requests_in_flight_not_the_connections(nursery):
    release = trio.Event()

    async def slow(backend: HttpBackend, got: Received):
        if got.target == b"/slow":
            await release.wait()
        return 200, [], b"done"

    backend = HttpBackend("a", slow)
    await nursery.start(backend.serve)
    run = await start_engine(nursery, http_config({"app": [backend.port]}))
    model = run.model
    target = model.backend("app/app1")
    idle_client = await Client.open(run.port)
    assert (await idle_client.request("GET", "/")).status == 200  # now idle, kept alive
    busy = await Client.open(run.port)
    answers = []

    async def slow_request() -> None:
        answers.append(await busy.request("GET", "/slow"))

    nursery.start_soon(slow_request)
    with trio.fail_after(5):
        await poll(lambda: target.active == 1)
    model.set_admin(target, target.admin.DRAINING, "test")
    assert not [e for e in model.events if e.kind == "drained"]  # one request in flight
    release.set()
    with trio.fail_after(5):
        await poll(lambda: bool(answers))
    assert answers[0].status == 200
    assert answers[0].header(b"connection") == [b"close"]  # its client is told to go
    drained = [e for e in model.events if e.kind == "drained"]
    assert len(drained) == 1  # while the idle client is still connected
    await idle_client.aclose()
    await busy.aclose()


async def _dies_on_reuse(nursery) -> HttpBackend:
    """A backend that reads the second request of its first connection and hangs up
    without a byte of answer: what a kept-alive connection closing under a request
    looks like. Every other request gets "fresh"."""

    async def reply(backend: HttpBackend, got: Received):
        on_first = [r for r in backend.requests if r.conn == 1]
        if got.conn == 1 and len(on_first) == 2:
            return None
        return 200, [], b"fresh"

    backend = HttpBackend("a", reply)
    await nursery.start(backend.serve)
    return backend


async def test_an_idempotent_request_on_a_dead_pooled_connection_is_retried_once(nursery):
    backend = await _dies_on_reuse(nursery)
    run = await start_engine(nursery, http_config({"app": [backend.port]}))
    client = await Client.open(run.port)
    assert (await client.request("GET", "/1")).body == b"fresh"
    answer = await client.request("GET", "/2")
    assert (answer.status, answer.body) == (200, b"fresh")
    assert [(r.target, r.conn) for r in backend.requests] == [(b"/1", 1), (b"/2", 1), (b"/2", 2)]
    await client.aclose()


async def test_a_post_is_never_sent_twice(nursery):
    backend = await _dies_on_reuse(nursery)
    run = await start_engine(nursery, http_config({"app": [backend.port]}))
    client = await Client.open(run.port)
    assert (await client.request("GET", "/1")).body == b"fresh"
    answer = await client.request("POST", "/2", body=b"payload")
    assert answer.status == 502
    assert [(r.method, r.conn) for r in backend.requests] == [(b"GET", 1), (b"POST", 1)]
    await client.aclose()


async def test_a_slow_request_head_gets_408_and_an_idle_keepalive_client_is_closed(nursery):
    (a,) = await start_backends(nursery, "a")
    extra = "[timeouts]\nrequest_headers = 0.2\nkeepalive = 0.2\n"
    run = await start_engine(nursery, http_config({"app": [a.port]}, extra=extra))
    reply = await raw_exchange(run.port, b"GET / HTTP/1.1\r\nHost: x\r\n")  # never ends
    assert reply.startswith(b"HTTP/1.1 408 ")
    client = await Client.open(run.port)
    assert (await client.request("GET", "/")).status == 200
    with trio.fail_after(5):  # then nothing: the proxy closes the idle connection
        assert await client.stream.receive_some(100) == b""
    await client.aclose()


async def test_a_trusted_proxy_chain_is_extended_an_untrusted_one_replaced(nursery):
    (a,) = await start_backends(nursery, "a")
    trusting = http_config({"app": [a.port]}, listener_extra='trusted_proxies = ["127.0.0.0/8"]\n')
    run = await start_engine(nursery, trusting)
    client = await Client.open(run.port)
    headers = [("x-forwarded-for", "203.0.113.7"), ("forwarded", "for=203.0.113.7")]
    assert (await client.request("GET", "/", headers=headers)).status == 200
    got = a.requests[-1]
    assert got.header(b"x-forwarded-for") == [b"203.0.113.7, 127.0.0.1"]
    assert b"".join(got.header(b"forwarded")).startswith(b"for=203.0.113.7, for=127.0.0.1")
    await client.aclose()


async def test_shutdown_closes_idle_keepalive_clients_at_once(nursery):
    (a,) = await start_backends(nursery, "a")
    run = await start_engine(nursery, http_config({"app": [a.port]}))
    client = await Client.open(run.port)
    assert (await client.request("GET", "/")).status == 200
    run.engine.request_shutdown()
    with trio.fail_after(5):  # well inside the 30 s grace and the 15 s keepalive
        assert await client.stream.receive_some(100) == b""
        await run.stopped.wait()
    await client.aclose()


async def test_access_lines_reach_a_stream_log_in_batches(nursery):
    import io

    from tuilb.log import StreamLog

    (a,) = await start_backends(nursery, "a")
    out = io.StringIO()
    run = await start_engine(
        nursery, http_config({"app": [a.port]}), log=StreamLog("json", out), access_log=True
    )
    client = await Client.open(run.port)
    assert (await client.request("GET", "/logged")).status == 200
    await client.aclose()
    with trio.fail_after(5):  # flushed a few times a second, and at the latest on stop
        await poll(lambda: '"path": "/logged"' in out.getvalue())
    run.engine.request_shutdown()
    with trio.fail_after(5):
        await run.stopped.wait()
    request_lines = [line for line in out.getvalue().splitlines() if '"event": "request"' in line]
    assert len(request_lines) == 1


async def test_bytes_both_ways_count_on_the_backend(nursery):
    (a,) = await start_backends(nursery, "a")
    run = await start_engine(nursery, http_config({"app": [a.port]}))
    client = await Client.open(run.port)
    answer = await client.request("POST", "/count", body=b"x" * 1000)
    assert answer.status == 200
    backend = run.model.snapshot().backend("app/app1")
    assert 1000 < backend.bytes_in < 1400  # the body and the rewritten head
    assert len(answer.body) < backend.bytes_out < len(answer.body) + 200
    await client.aclose()


async def test_stray_bytes_on_an_idle_pooled_connection_never_answer_a_request(nursery):
    """A server may write (e.g. a 408) on a kept-alive connection before closing it; the
    next request must not take those bytes as its answer."""
    import socket as stdlib_socket

    backend_streams: list[trio.SocketStream] = []

    async def serve(stream: trio.SocketStream) -> None:
        backend_streams.append(stream)
        buf = b""
        try:
            while data := await stream.receive_some(65536):
                buf += data
                while b"\r\n\r\n" in buf:
                    _, _, buf = buf.partition(b"\r\n\r\n")
                    await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except trio.BrokenResourceError:
            pass  # the proxy dropped the connection it no longer trusted

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    nursery.start_soon(trio.serve_listeners, serve, listeners)
    run = await start_engine(nursery, http_config({"app": [port]}))
    client = await Client.open(run.port)
    assert (await client.request("GET", "/1")).body == b"ok"
    proxy = run.engine._http[0]
    backend = run.model.backend("app/app1")
    with trio.fail_after(5):
        await poll(lambda: proxy.upstreams.idle_count(backend) == 1)
    await backend_streams[0].send_all(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
    pooled = proxy.upstreams._idle[backend][0].stream.sock
    flags = stdlib_socket.MSG_PEEK | stdlib_socket.MSG_DONTWAIT

    def arrived() -> bool:
        try:
            return bool(pooled.recv(1, flags))
        except BlockingIOError:
            return False

    with trio.fail_after(5):
        await poll(arrived)  # the stray answer now waits in the pooled connection
    answer = await client.request("GET", "/2")
    assert (answer.status, answer.body) == (200, b"ok")
    await client.aclose()


async def test_response_heads_up_to_64k_pass_and_larger_ones_are_a_502(nursery):
    """The same answer however the backend's bytes are cut into reads."""

    async def big(backend: HttpBackend, got: Received):
        size = int(got.target.strip(b"/"))
        return 200, [(b"x-big", b"b" * size)], b"body"

    backend = HttpBackend("big", big)
    await nursery.start(backend.serve)
    run = await start_engine(nursery, http_config({"app": [backend.port]}))
    for size, status in ((40_000, 200), (70_000, 502)):
        client = await Client.open(run.port)
        answer = await client.request("GET", f"/{size}")
        assert answer.status == status, size
        await client.aclose()


async def test_access_log_can_be_turned_off_per_listener(nursery):
    from tests.conftest import RecordingLog

    (a,) = await start_backends(nursery, "a")
    log = RecordingLog()
    config = http_config({"app": [a.port]}, listener_extra="access_log = false\n")
    run = await start_engine(nursery, config, log=log, access_log=True)
    client = await Client.open(run.port)
    assert (await client.request("GET", "/")).status == 200
    assert "request" not in log.events()
    await client.aclose()
