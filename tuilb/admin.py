"""The admin API's I/O shell: an HTTP/1.1 server (h11 on trio) on a loopback TCP port or
a unix socket (mode 0600), answering with `adminapi.handle`. It runs inside the engine,
so commands apply in the same thread as everything else that changes the model."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus

import h11
import trio

from tuilb import adminapi, control
from tuilb.adminapi import Context, Reply
from tuilb.config import AdminConfig, Config
from tuilb.errors import StartupError
from tuilb.model import Model
from tuilb.stats import RateTracker

_KNOWN = frozenset(s.value for s in HTTPStatus)
REQUEST_TIMEOUT = 10.0  # a request (head and body) must arrive within this
IDLE_TIMEOUT = 60.0  # a kept-alive admin connection idle for this long is closed


def bind(admin: AdminConfig) -> tuple[trio.SocketListener, frozenset[str], str]:
    """Bind the admin socket now (a port in use fails the start, before anything runs).
    Returns the listener, the Host values it answers to, and where it listens."""
    try:
        if admin.path is not None:
            sock = _bind_unix(admin.path)
            return _listener(sock), frozenset(), f"unix:{admin.path}"
        assert admin.address is not None
        host = admin.address.host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, admin.address.port))
            sock.listen(64)
        except OSError:
            sock.close()
            raise
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise StartupError(f"admin API: cannot listen on {admin.listen}: {reason}") from None
    port = sock.getsockname()[1]
    return _listener(sock), _hosts(host, port), f"{_bracket(host)}:{port}"


def _bind_unix(path: str) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        if os.path.exists(path) and not _is_socket(path):
            raise OSError(f"{path} exists and is not a socket")
        os.unlink(path)  # a socket left by an earlier run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # created 0600: only this user may talk to the admin API
    try:
        sock.bind(path)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(64)
    return sock


def _is_socket(path: str) -> bool:
    import stat

    return stat.S_ISSOCK(os.stat(path).st_mode)


def _listener(sock: socket.socket) -> trio.SocketListener:
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _hosts(host: str, port: int) -> frozenset[str]:
    names = {host.lower()}
    try:
        if ipaddress.ip_address(host).is_loopback:
            names |= {"localhost", "127.0.0.1", "::1"}
    except ValueError:
        if host.lower() == "localhost":
            names |= {"127.0.0.1", "::1"}
    return frozenset(f"{_bracket(name)}:{port}" for name in names)


def context(
    config: Config,
    model: Model,
    allowed_hosts: frozenset[str],
    metrics: Callable[[], str],
    feeders: list[Callable[[], Awaitable[None]]],
) -> Context:
    """The API's context; `feeders` receives the task that keeps its rates current."""
    assert config.admin is not None

    def apply(command: control.Command) -> str:
        return control.apply(model, command, "admin API")

    tracker = RateTracker(history=1)

    async def feed() -> None:  # rates over the last second, for the status JSON
        while True:
            tracker.feed(model.snapshot())
            await trio.sleep(1.0)

    feeders.append(feed)
    return Context(
        config=config,
        rates=lambda: tracker.rates,
        snapshot=model.snapshot,
        events_since=model.events_since,
        apply=apply,
        allowed_hosts=allowed_hosts,
        token=config.admin.token,
        metrics=metrics,
    )


async def serve(
    listener: trio.SocketListener,
    ctx: Context,
    feeders: Sequence[Callable[[], Awaitable[None]]] = (),
) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        try:
            await _connection(stream, ctx)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async with listener, trio.open_nursery() as nursery:
        for feeder in feeders:
            nursery.start_soon(feeder)
        await trio.serve_listeners(handler, [listener])


async def _connection(stream: trio.SocketStream, ctx: Context) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16384)
    while True:
        request: h11.Request | None = None
        body = bytearray()
        reply: Reply | None = None
        with trio.move_on_after(IDLE_TIMEOUT if conn.their_state is h11.IDLE else REQUEST_TIMEOUT):
            while True:
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError as exc:
                    reply = adminapi.error(exc.error_status_hint, f"bad request: {exc}")
                    break
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > adminapi.MAX_BODY:
                        reply = adminapi.error(413, "the body is too large")
                        break
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    return  # closed, or paused on a pipelined request we will not read
        if reply is None:
            if request is None:
                return  # idle or too slow: close quietly
            headers: dict[str, str] = {}
            for name, value in request.headers:
                key = name.decode("latin-1")
                text = value.decode("latin-1")
                headers[key] = f"{headers[key]}, {text}" if key in headers else text
            reply = adminapi.handle(
                ctx,
                request.method.decode("ascii", "replace"),
                request.target.decode("latin-1"),
                headers,
                bytes(body),
            )
        if not await _respond(stream, conn, reply):
            return
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return
        conn.start_next_cycle()


async def _respond(stream: trio.SocketStream, conn: h11.Connection, reply: Reply) -> bool:
    payload = reply.payload()
    headers = [
        ("content-type", reply.content_type),
        ("content-length", str(len(payload))),
        ("cache-control", "no-store"),
        *reply.headers,
    ]
    try:
        reason = HTTPStatus(reply.status).phrase if reply.status in _KNOWN else ""
        data = conn.send(h11.Response(status_code=reply.status, headers=headers, reason=reason))
        data = (data or b"") + (conn.send(h11.Data(data=payload)) or b"")
        data += conn.send(h11.EndOfMessage()) or b""
    except h11.LocalProtocolError:
        return False
    await stream.send_all(data)
    return True
