"""Real HTTP peers for the L7 tests: h11 backends that record what they received, and a
small h11 client over a trio socket stream. Everything on 127.0.0.1, ephemeral ports."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import h11
import trio

from tuilb.config import Config, parse

# -- backends -------------------------------------------------------------------------------


@dataclass
class Received:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    conn: int  # which backend connection carried it (counts from 1)

    def header(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n == name]


Reply = Callable[[Received], Awaitable[tuple[int, list[tuple[bytes, bytes]], bytes] | None]]


async def default_reply(
    backend: HttpBackend, got: Received
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    body = f"{backend.name} {got.method.decode()} {got.target.decode()}\n".encode()
    return 200, [(b"content-type", b"text/plain")], body


@dataclass
class HttpBackend:
    name: str
    reply: Callable[[HttpBackend, Received], Awaitable[Any]] = default_reply
    port: int = 0
    requests: list[Received] = field(default_factory=list)
    connections: int = 0
    listener: trio.SocketListener | None = None

    async def serve(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.listener = listeners[0]
        self.port = self.listener.socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._conn, listeners)

    async def _conn(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        number = self.connections
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request: h11.Request | None = None
                body = bytearray()
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                        continue
                    if isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    else:
                        return
                assert request is not None
                got = Received(
                    request.method, request.target, list(request.headers), bytes(body), number
                )
                self.requests.append(got)
                answer = await self.reply(self, got)
                if answer is None:
                    return  # the handler chose to hang up
                if isinstance(answer, bytes):
                    await stream.send_all(answer)  # raw bytes (broken responses), then close
                    return
                status, headers, payload = answer
                if not any(n.lower() == b"content-length" for n, _ in headers) and not any(
                    n.lower() == b"transfer-encoding" for n, _ in headers
                ):
                    headers = [*headers, (b"content-length", str(len(payload)).encode())]
                await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
                if payload:
                    await stream.send_all(conn.send(h11.Data(data=payload)))
                await stream.send_all(conn.send(h11.EndOfMessage()))
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            pass
        finally:
            await stream.aclose()


async def start_backends(nursery: trio.Nursery, *names: str) -> list[HttpBackend]:
    out = []
    for name in names:
        backend = HttpBackend(name)
        await nursery.start(backend.serve)
        out.append(backend)
    return out


# -- the client -----------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    complete: bool = True  # False: the connection ended before the end of the body

    def header(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n == name]


class Client:
    """One client connection to the proxy, speaking h11."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, port: int) -> Client:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def request(
        self,
        method: str = "GET",
        target: str = "/",
        headers: list[tuple[str, str]] | None = None,
        body: bytes | list[bytes] = b"",
        host: str = "example.test",
    ) -> Answer:
        all_headers = [("host", host), *(headers or [])]
        chunks = body if isinstance(body, list) else ([body] if body else [])
        if isinstance(body, list):
            all_headers.append(("transfer-encoding", "chunked"))
        elif body:
            all_headers.append(("content-length", str(len(body))))
        data = self.conn.send(h11.Request(method=method, target=target, headers=all_headers))
        for chunk in chunks:
            data += self.conn.send(h11.Data(data=chunk))
        data += self.conn.send(h11.EndOfMessage())
        await self.stream.send_all(data)
        return await self.response()

    async def response(self) -> Answer:
        status, headers, body = 0, [], bytearray()
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError:
                return Answer(status, headers, bytes(body), complete=False)
            if event is h11.NEED_DATA:
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    data = b""
                self.conn.receive_data(data)
                continue
            if isinstance(event, h11.Response):
                status, headers = event.status_code, list(event.headers)
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
                    self.conn.start_next_cycle()
                return Answer(status, headers, bytes(body))
            elif isinstance(event, h11.ConnectionClosed):
                return Answer(status, headers, bytes(body), complete=False)

    async def aclose(self) -> None:
        await self.stream.aclose()


async def raw_exchange(port: int, data: bytes, limit: float = 5.0) -> bytes:
    """Send raw bytes and read everything until the proxy closes (for malformed input)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    out = bytearray()
    with trio.fail_after(limit):
        try:
            await stream.send_all(data)
            while chunk := await stream.receive_some(65536):
                out += chunk
        except trio.BrokenResourceError:
            pass
    await stream.aclose()
    return bytes(out)


def http_config(pools: dict[str, list[int]], listener_extra: str = "", extra: str = "") -> Config:
    """One http listener `web` (pool `app` by default when there is one) over `pools`."""
    default = 'pool = "app"\n' if "app" in pools else ""
    text = (
        f'[[listeners]]\nname = "web"\nbind = "127.0.0.1:0"\nprotocol = "http"\n{default}'
        f"{listener_extra}\n"
    )
    for pool, ports in pools.items():
        text += f'[pools.{pool}]\nalgorithm = "round_robin"\n\n'
        for i, port in enumerate(ports, start=1):
            text += (
                f'[[pools.{pool}.backends]]\nname = "{pool}{i}"\naddress = "127.0.0.1:{port}"\n\n'
            )
    return parse(text + extra, "<test>")
