"""TLS passthrough by SNI end to end: real TLS clients and TLS backends (trustme
certificates) on loopback, tuilb routing on the ClientHello without terminating TLS."""

from __future__ import annotations

import socket
import ssl
from functools import partial
from typing import Any

import pytest
import trio
import trustme

from tests.conftest import (
    RecordingLog,
    closed_by_tuilb,
    connect,
    named,
    poll,
    recv_exactly,
    recv_to_eof,
    reply_after_eof,
    send_all,
    start_engine,
    start_server,
)
from tuilb.config import parse


class TlsBackend:
    """Completes the handshake with its own certificate, then answers `name:` + one read."""

    def __init__(self, name: str, context: ssl.SSLContext) -> None:
        self.name = name
        self.context = context
        self.accepted = 0
        self.port = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        self.accepted += 1
        tls = trio.SSLStream(stream, self.context, server_side=True)
        try:
            await tls.do_handshake()
            data = await tls.receive_some(1024)
            await tls.send_all(self.name.encode() + b":" + data)
            await tls.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def tls_backend(
    nursery: trio.Nursery, ca: trustme.CA, name: str, *server_names: str
) -> TlsBackend:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*server_names).configure_cert(context)
    backend = TlsBackend(name, context)
    listeners = await nursery.start(partial(trio.serve_tcp, backend.handle, 0, host="127.0.0.1"))
    backend.port = listeners[0].socket.getsockname()[1]
    return backend


def config(pools: dict[str, int], routes: list[tuple[str, str]], pool: str | None) -> str:
    text = '[[listeners]]\nname = "tls"\nbind = "127.0.0.1:0"\n'
    if pool is not None:
        text += f'pool = "{pool}"\n'
    for server_name, target in routes:
        text += f'[[listeners.sni_routes]]\nserver_name = "{server_name}"\npool = "{target}"\n'
    for name, port in pools.items():
        text += f'\n[pools.{name}]\nalgorithm = "round_robin"\n'
        text += f'[[pools.{name}.backends]]\nname = "{name}1"\naddress = "127.0.0.1:{port}"\n'
    return text + "\n[timeouts]\nconnect = 2\nclient_hello = 0.5\n"


async def tls_client(port: int, ca: trustme.CA, server_name: str | None) -> bytes:
    """A verifying TLS client through tuilb: what the backend answers to `ping`."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if server_name is None:
        context.check_hostname = False
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    tls = trio.SSLStream(stream, context, server_hostname=server_name)
    with trio.fail_after(5):
        await tls.do_handshake()
        await tls.send_all(b"ping")
        answer = b""
        while chunk := await tls.receive_some(1024):
            answer += chunk
        await tls.aclose()
    return answer


def client_hello(server_name: str | None) -> bytes:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


async def test_each_client_reaches_the_backend_of_its_name(nursery: Any, ca: trustme.CA) -> None:
    a = await tls_backend(nursery, ca, "a", "a.example.test", "x.w.example.test")
    b = await tls_backend(nursery, ca, "b", "b.example.test")
    c = await tls_backend(nursery, ca, "c", "other.example.test")
    routes = [("a.example.test", "a"), ("b.example.test", "b"), ("*.w.example.test", "a")]
    text = config({"a": a.port, "b": b.port, "c": c.port}, routes, pool="c")
    run = await start_engine(nursery, parse(text, "<test>"))
    for _ in range(2):
        assert await tls_client(run.port, ca, "a.example.test") == b"a:ping"
        assert await tls_client(run.port, ca, "B.Example.Test") == b"b:ping"
    assert await tls_client(run.port, ca, "x.w.example.test") == b"a:ping"  # wildcard
    assert await tls_client(run.port, ca, "other.example.test") == b"c:ping"  # no match
    assert await tls_client(run.port, ca, None) == b"c:ping"  # no SNI: the listener's pool
    assert (a.accepted, b.accepted, c.accepted) == (3, 2, 2)
    assert all(x.sni_rejected == 0 for x in run.model.snapshot().listeners)


async def test_hello_in_pieces_reaches_the_backend_untouched(nursery: Any) -> None:
    a = await start_server(nursery, reply_after_eof, "a")
    b = await start_server(nursery, reply_after_eof, "b")
    text = config({"a": a.port, "b": b.port}, [("b.example.test", "b")], pool="a")
    run = await start_engine(nursery, parse(text, "<test>"))
    hello = client_hello("b.example.test")
    sock = await connect(run.port)
    with sock, trio.fail_after(5):
        for i in range(0, len(hello), 50):
            await send_all(sock, hello[i : i + 50])
            await trio.sleep(0.005)
        await send_all(sock, b"after")
        sock.shutdown(socket.SHUT_WR)
        assert await recv_to_eof(sock) == b"after-eof:" + hello + b"after"
    assert (a.accepted, b.accepted) == (0, 1)


async def test_no_route_and_no_pool_closes(nursery: Any) -> None:
    a = await start_server(nursery, named, "a")
    log = RecordingLog()
    run = await start_engine(
        nursery, parse(config({"a": a.port}, [("a.example.test", "a")], None), "<test>"), log
    )
    assert await closed_by_tuilb(run.port, client_hello("z.example.test")) == b""
    assert await closed_by_tuilb(run.port, client_hello(None)) == b""
    with trio.fail_after(5):
        await poll(lambda: run.model.snapshot().listeners[0].sni_rejected == 2)
    record = next(r for r in log.records if r[0] == "sni_rejected")
    assert "no sni route for z.example.test" in record[2]["cause"]
    assert a.accepted == 0
    # the named route still works on a listener without a pool
    sock = await connect(run.port)
    with sock, trio.fail_after(5):
        await send_all(sock, client_hello("a.example.test"))
        assert await recv_exactly(sock, 2) == b"a\n"  # its name (then the echo may follow)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"GET / HTTP/1.1\r\nHost: a.example.test\r\n\r\n", "record type 71"),
        (b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00", "not a ClientHello"),
        (b"\x16\x03\x01\x00\x10", "no complete ClientHello within 0.5s"),  # stalled
        (b"", "no complete ClientHello within 0.5s"),  # says nothing at all
    ],
)
async def test_garbage_and_stalled_hellos_are_closed_and_counted(
    nursery: Any, data: bytes, why: str
) -> None:
    a = await start_server(nursery, named, "a")
    log = RecordingLog()
    run = await start_engine(
        nursery, parse(config({"a": a.port}, [("a.example.test", "a")], "a"), "<test>"), log
    )
    with trio.fail_after(5):
        started = trio.current_time()
        assert await closed_by_tuilb(run.port, data) == b""
        if "within" in why:
            assert trio.current_time() - started >= 0.45
        await log.wait("sni_rejected")
    record = next(r for r in log.records if r[0] == "sni_rejected")
    assert why in record[2]["cause"] and record[2]["listener"] == "tls"
    assert a.accepted == 0  # nothing was passed on
    assert run.model.snapshot().listeners[0].sni_rejected == 1


async def test_client_closing_early_and_rate_limited_log(nursery: Any) -> None:
    a = await start_server(nursery, named, "a")
    log = RecordingLog()
    run = await start_engine(
        nursery, parse(config({"a": a.port}, [("a.example.test", "a")], "a"), "<test>"), log
    )
    hello = client_hello("a.example.test")
    for _ in range(4):
        sock = await connect(run.port)
        with sock:
            await send_all(sock, hello[:20])
            sock.shutdown(socket.SHUT_WR)  # tuilb must see the end, not wait for the timeout
            with trio.fail_after(0.4):  # closed (a reset: the hello was never read)
                try:
                    assert await recv_to_eof(sock) == b""
                except ConnectionResetError:
                    pass
    with trio.fail_after(5):
        await poll(lambda: run.model.snapshot().listeners[0].sni_rejected == 4)
    assert log.events().count("sni_rejected") == 1
    record = next(r for r in log.records if r[0] == "sni_rejected")
    assert "closed before its ClientHello ended" in record[2]["cause"]
    assert a.accepted == 0
