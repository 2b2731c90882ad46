"""PROXY protocol end to end: real loopback clients, backends and the engine, L4 and L7.

Clients connect from 127.0.0.1 and announce other addresses in their PROXY headers; the
backends read back what tuilb sends them (`send_proxy`)."""

from __future__ import annotations

import socket

import pytest
import trio

from tests.conftest import (
    RecordingLog,
    Seen,
    Server,
    closed_by_tuilb,
    connect,
    named,
    poll,
    recv_line,
    recv_to_eof,
    reply_after_eof,
    send_all,
    start_engine,
    start_server,
)
from tests.l7util import Client, start_backends
from tuilb import proxyproto
from tuilb.config import parse
from tuilb.proxyproto import Header, build_v1, build_v2

CLIENT = ("203.0.113.7", 40123)
FRONT = ("198.51.100.1", 443)


def config(
    protocol: str,
    ports: list[int],
    *,
    accept: str = '["127.0.0.1"]',
    send: str = "",
    algorithm: str = "round_robin",
    extra: str = "",
) -> str:
    text = (
        f'[[listeners]]\nname = "front"\nbind = "127.0.0.1:0"\nprotocol = "{protocol}"\n'
        f'pool = "app"\n{f"accept_proxy = {accept}" if accept else ""}\n\n'
        f'[pools.app]\nalgorithm = "{algorithm}"\n{f"send_proxy = {send!r}" if send else ""}\n\n'
    ).replace("'", '"')
    for i, port in enumerate(ports, start=1):
        text += f'[[pools.app.backends]]\nname = "b{i}"\naddress = "127.0.0.1:{port}"\n\n'
    return text + f"[timeouts]\nconnect = 2\nproxy_header = 0.5\n{extra}"


def parsed(data: bytes) -> Header:
    header = proxyproto.parse(data)
    assert isinstance(header, Header), header
    return header


async def through(port: int, data: bytes) -> bytes:
    """Send `data`, half-close, read to EOF (the backend answers after its EOF)."""
    sock = await connect(port)
    with sock:
        await send_all(sock, data)
        sock.shutdown(socket.SHUT_WR)
        return await recv_to_eof(sock)


# -- L4 --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("incoming", "send"),
    [(build_v1(CLIENT, FRONT), "v2"), (build_v2(CLIENT, FRONT), "v1"), (b"", "v1")],
)
async def test_l4_real_client_reaches_the_backend(nursery, incoming, send):
    backend = await start_server(nursery, reply_after_eof)
    accept = '["10.0.0.0/8", "127.0.0.1"]' if incoming else ""
    run = await start_engine(
        nursery, parse(config("tcp", [backend.port], accept=accept, send=send), "<test>")
    )
    answer = await through(run.port, incoming + b"payload")
    assert answer.startswith(b"after-eof:")
    seen = answer[len(b"after-eof:") :]
    header = parsed(seen)
    assert header.version == int(send[1])
    assert seen[header.length :] == b"payload"  # the client's bytes, after the header only
    if incoming:
        assert (header.source, header.destination) == (CLIENT, FRONT)
    else:  # no accept_proxy: the socket's own addresses
        assert header.source is not None and header.source[0] == "127.0.0.1"
        assert header.destination == ("127.0.0.1", run.port)


async def test_l4_header_is_consumed_and_the_rest_passed_on(nursery):
    backend = await start_server(nursery, reply_after_eof)
    run = await start_engine(nursery, parse(config("tcp", [backend.port]), "<test>"))
    for incoming in (build_v1(CLIENT, FRONT), build_v2(CLIENT, FRONT), b"PROXY UNKNOWN\r\n"):
        assert await through(run.port, incoming + b"hello") == b"after-eof:hello"


async def test_l4_header_in_pieces(nursery):
    backend = await start_server(nursery, reply_after_eof)
    run = await start_engine(nursery, parse(config("tcp", [backend.port]), "<test>"))
    sock = await connect(run.port)
    with sock:
        data = build_v1(CLIENT, FRONT) + b"x"
        for i in range(0, len(data), 7):
            await send_all(sock, data[i : i + 7])
            await trio.sleep(0.01)
        sock.shutdown(socket.SHUT_WR)
        assert await recv_to_eof(sock) == b"after-eof:x"


async def test_l4_source_ip_hash_uses_the_announced_client(nursery):
    servers: list[Server] = [await start_server(nursery, named, f"b{i}") for i in (1, 2)]
    run = await start_engine(
        nursery,
        parse(config("tcp", [s.port for s in servers], algorithm="source_ip_hash"), "<test>"),
    )

    async def picked(ip: str) -> bytes:
        sock = await connect(run.port)
        with sock:
            await send_all(sock, build_v1((ip, 1000), FRONT))
            return await recv_line(sock)

    clients = [f"192.0.2.{i}" for i in range(1, 25)]
    first = {ip: await picked(ip) for ip in clients}
    assert set(first.values()) == {b"b1\n", b"b2\n"}  # spread by announced address
    for ip in clients[:8]:
        assert await picked(ip) == first[ip]  # and sticky


@pytest.mark.parametrize(
    ("accept", "data", "why"),
    [
        ('["10.0.0.0/8"]', build_v1(CLIENT, FRONT) + b"data", "not in accept_proxy"),
        ('["::1"]', b"data", "not in accept_proxy"),
        ('["127.0.0.1"]', b"GET / HTTP/1.1\r\n\r\n", "no PROXY protocol header"),
        ('["127.0.0.1"]', b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\ndata", "out of range"),
        ('["127.0.0.1"]', b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\ndata", "CRLF"),
        ('["127.0.0.1"]', proxyproto.V2_SIGNATURE + b"\x31\x11\x00\x0c" + bytes(12), "version"),
        ('["127.0.0.1"]', b"PROXY TCP4 1.2.3.4", "within 0.5s"),  # stalls: timed out
    ],
)
async def test_l4_rejects_without_passing_anything_on(nursery, accept, data, why):
    backend = await start_server(nursery, reply_after_eof)
    log = RecordingLog()
    run = await start_engine(
        nursery, parse(config("tcp", [backend.port], accept=accept), "<test>"), log
    )
    assert await closed_by_tuilb(run.port, data) == b""
    await log.wait("proxy_rejected")
    record = next(r for r in log.records if r[0] == "proxy_rejected")
    assert why in record[2]["cause"]
    assert record[2]["listener"] == "front"
    assert backend.accepted == 0  # never connected, so nothing was passed on


async def test_rejections_are_logged_rate_limited(nursery):
    backend = await start_server(nursery, reply_after_eof)
    log = RecordingLog()
    run = await start_engine(
        nursery, parse(config("tcp", [backend.port], accept='["10.0.0.0/8"]'), "<test>"), log
    )
    for _ in range(5):
        await closed_by_tuilb(run.port, b"data")
    await log.wait("proxy_rejected")
    assert log.events().count("proxy_rejected") == 1
    assert backend.accepted == 0
    # the count is in the snapshot (for the dashboard and the admin API), every one of them
    with trio.fail_after(5):
        await poll(lambda: run.model.snapshot().listeners[0].proxy_rejected == 5)


# -- L7 --------------------------------------------------------------------------------------
async def test_l7_client_address_from_the_header(nursery):
    (a,) = await start_backends(nursery, "a")
    log = RecordingLog()
    run = await start_engine(
        nursery, parse(config("http", [a.port]), "<test>"), log, access_log=True
    )
    v6 = build_v2(("2001:db8::5", 1), ("2001:db8::1", 80))
    for header, ip in ((build_v1(CLIENT, FRONT), CLIENT[0]), (v6, "2001:db8::5")):
        stream = await trio.open_tcp_stream("127.0.0.1", run.port)
        await stream.send_all(header)
        client = Client(stream)
        for _ in range(2):  # and for every request of the connection
            answer = await client.request("GET", "/x", headers=[("x-forwarded-for", "6.6.6.6")])
            assert answer.status == 200
            assert a.requests[-1].header(b"x-forwarded-for") == [ip.encode()]
            assert ip.encode() in a.requests[-1].header(b"forwarded")[0]
        await client.aclose()
    await poll_log(log, "request")
    clients = {r[2]["client"] for r in log.records if r[0] == "request"}
    assert clients == {CLIENT[0], "2001:db8::5"}


async def poll_log(log: RecordingLog, event: str) -> None:
    with trio.fail_after(5):
        await log.wait(event)


async def proxy_reader(server: Server, sock: trio.socket.SocketType, seen: Seen) -> None:
    """A backend that reads a PROXY header, then one HTTP request, and answers with what
    the header said (one request per connection)."""
    while not seen.data.endswith(b"\r\n\r\n") or isinstance(
        proxyproto.parse(seen.data), proxyproto.Incomplete
    ):
        data = await sock.recv(65536)
        if not data:
            seen.end = "eof"
            return
        seen.data += data
    header = parsed(bytes(seen.data))
    request = bytes(seen.data[header.length :])
    body = f"{header.version} {header.source} {header.destination}\n".encode() + request
    await send_all(
        sock,
        b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body,
    )
    seen.end = "answered"


@pytest.mark.parametrize("send", ["v1", "v2"])
async def test_l7_send_proxy(nursery, send):
    backend = await start_server(nursery, proxy_reader)
    run = await start_engine(nursery, parse(config("http", [backend.port], send=send), "<test>"))
    stream = await trio.open_tcp_stream("127.0.0.1", run.port)
    await stream.send_all(build_v1(CLIENT, FRONT))
    client = Client(stream)
    for i in range(2):
        answer = await client.request("GET", f"/{i}")
        assert answer.status == 200
        first, _, request = answer.body.partition(b"\n")
        assert first == f"{send[1]} {CLIENT} {FRONT}".encode()
        assert request.startswith(f"GET /{i} HTTP/1.1\r\n".encode())
        assert b"x-forwarded-for: 203.0.113.7\r\n" in request
    # A backend connection that carries a client's PROXY header is never reused.
    assert backend.accepted == 2
    await client.aclose()


@pytest.mark.parametrize(
    ("accept", "data", "why"),
    [
        ('["10.0.0.0/8"]', build_v1(CLIENT, FRONT) + b"GET / HTTP/1.1\r\nhost: x\r\n\r\n",
         "not in accept_proxy"),
        ('["127.0.0.1"]', b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", "no PROXY protocol header"),
        ('["127.0.0.1"]', b"PROXY TCP6 1.2.3.4 ::1 1 2\r\nGET / HTTP/1.1\r\nhost: x\r\n\r\n",
         "IPv6"),
    ],
)  # fmt: skip
async def test_l7_rejects_before_http(nursery, accept, data, why):
    (a,) = await start_backends(nursery, "a")
    log = RecordingLog()
    run = await start_engine(nursery, parse(config("http", [a.port], accept=accept), "<test>"), log)
    assert await closed_by_tuilb(run.port, data) == b""  # no HTTP answer at all: closed
    await poll_log(log, "proxy_rejected")
    record = next(r for r in log.records if r[0] == "proxy_rejected")
    assert why in record[2]["cause"]
    assert a.connections == 0 and a.requests == []
    assert run.engine._http[0].proxy_rejected == 1
    assert run.model.snapshot().listeners[0].proxy_rejected == 1
