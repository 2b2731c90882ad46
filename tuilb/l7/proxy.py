"""HTTP/1.1 reverse proxy: h11 on both sides, balancing per request, streamed bodies.

One `HttpProxy` serves one `protocol = "http"` listener. `handle()` owns a client
connection: read a request head (within `request_headers`, limits enforced here since
h11's buffer limit is not a header-size limit), check it (rules.py), route it
(route.py), get a backend connection (pooled or new, connect failures retried on other
backends), pass the request with re-serialized headers and its body streamed, then the
response likewise. Decisions live in rules.py and route.py; this is the I/O shell.

Retries: a failed connect is retried on other backends (up to `CONNECT_TRIES` in all);
an idempotent request without a body whose *pooled* connection turns out dead before any
response byte is sent again once on a fresh connection. Nothing is ever sent twice once
a body has gone out, so a POST is never repeated.
"""

from __future__ import annotations

import contextvars
import ipaddress
import socket
from collections.abc import Callable
from typing import Any

import h11
import trio
from trio.lowlevel import checkpoint

from tuilb import proxyproto
from tuilb.balance import Balancer
from tuilb.config import Config, ListenerConfig
from tuilb.httpconf import RouteConfig
from tuilb.l7 import fast, fastpath, rules
from tuilb.l7 import route as routing
from tuilb.l7.client import MAX_RESPONSE_HEAD
from tuilb.l7.shared import IDEMPOTENT, ClientGone, Fail, Req, Retry, receive_until, send_client
from tuilb.l7.stream import SocketStream, Stream, TimedSend
from tuilb.l7.timers import Timers, Watch
from tuilb.l7.tls import TlsServer
from tuilb.l7.upstream import Upstream, UpstreamPool
from tuilb.log import Log
from tuilb.model import AdminState, Backend, Model, Pool
from tuilb.proxy.l4 import LocalError, Origin, client_origin, connect_socket, describe

_NO_HEADERS: dict[bytes, list[bytes]] = {}  # route() without routes looks at no header
DISCARD_LIMIT = 65536  # an unwanted request body read past to keep the connection
CONNECT_TRIES = 3  # the first attempt and two retries on other backends
# The client connection's (source, destination), for PROXY headers toward backends; set by
# handle() in the task that serves the connection.
_ORIGIN: contextvars.ContextVar[Origin] = contextvars.ContextVar("origin", default=(None, None))


class HttpProxy:
    def __init__(
        self,
        listener: ListenerConfig,
        config: Config,
        model: Model,
        balancers: dict[str, Balancer],
        on_error: Callable[[str, Backend | None, str, str], None],
        tls: TlsServer | None = None,
        timers: Timers | None = None,
    ) -> None:
        self.listener = listener
        if tls is None and listener.http.tls:  # the engine builds it before binding
            tls = TlsServer(listener.name, listener.http.tls)
        self.tls = tls
        self.routes: tuple[RouteConfig, ...] = listener.http.routes
        self.trusted = listener.http.trusted_proxies
        self.timeouts = config.timeouts
        self.limits = config.limits
        self.model = model
        self.balancers = balancers
        self.on_error = on_error
        self.access: Log | None = None  # one line per request (headless mode sets it)
        self.upstreams = UpstreamPool()
        self._own_host = str(listener.bind).encode()
        self.clients = 0  # open client connections
        self.closing = False  # shutdown began: finish what is in flight, keep nothing alive
        self.fast = True  # ordinary requests skip h11 (fastpath.py); tests turn it off
        # Timeouts of plain-socket waits; the engine sweeps them. Without it (a proxy made
        # outside an engine) nothing would fire: such a proxy keeps to the scoped waits.
        self.timers = timers
        self._idle_watches: set[Watch] = set()  # armed for a keep-alive wait
        self._idle_clients: set[trio.CancelScope] = set()
        self.proxy_rejected = 0  # accept_proxy: connections closed for their PROXY header
        self._origin_needed = bool(listener.accept_proxy) or any(
            pool.send_proxy for pool in config.pools.values()
        )

    # -- lifetime ---------------------------------------------------------------------------
    def begin_shutdown(self) -> None:
        """Close idle keep-alive clients now; responses in flight end with a close."""
        self.closing = True
        for scope in list(self._idle_clients):
            scope.cancel()
        if self.timers is not None:
            for watch in list(self._idle_watches):
                self.timers.fire(watch)

    def close(self) -> None:
        self.upstreams.close()

    def _error(self, event: str, backend: Backend | None, reason: str) -> None:
        self.on_error(event, backend, reason, self.listener.name)

    # -- one client connection --------------------------------------------------------------
    async def handle(self, sock: socket.socket, peer: Any) -> None:
        client_ip = str(peer[0]) if isinstance(peer, tuple) else ""
        stream: Stream = SocketStream(sock, self.timeouts.body)
        self.clients += 1
        try:
            if self._origin_needed:
                origin = await client_origin(
                    self.listener.accept_proxy, sock, peer, self.timeouts.proxy_header
                )
                if isinstance(origin, str):
                    self.proxy_rejected += 1
                    self.model.proxy_rejected(self.listener.name)
                    self._error("proxy_rejected", None, origin)
                    return
                _ORIGIN.set(origin)
                client_ip = origin[0][0] if origin[0] is not None else client_ip
            if self.tls is not None:
                secured = await self.tls.accept(sock, self.timeouts.tls_handshake, self._error)
                if secured is None:
                    return
                stream = TimedSend(secured, self.timeouts.body)
            await self._serve_connection(stream, client_ip)
        except (OSError, ClientGone, trio.TooSlowError):
            pass  # the client went away or stalled; nothing left to tell it
        except Exception as exc:  # one connection must never end the engine
            self._error("connection_error", None, f"internal error: {exc!r}")
        finally:
            self.clients -= 1
            sock.close()

    async def _serve_connection(self, stream: Stream, client_ip: str) -> None:
        """Requests one after another until either side ends the connection. Each request
        whose head is complete in what arrived and ordinary goes the fast path (fast.py,
        fastpath.py); any other goes through h11 with the bytes received so far."""
        pending = b""  # received, not yet part of a request (pipelined bytes included)
        first = True
        watch = Watch()
        plain = self.timers is not None and type(stream) is SocketStream
        while not self.closing or first:
            if not pending:
                if plain:
                    pending = await self._next_bytes_watched(stream, first, watch)  # type: ignore[arg-type]
                else:
                    pending = await self._next_bytes(stream, first)
                if not pending:
                    return  # end of stream, keep-alive timeout or shutdown
            head = fast.parse_request(pending) if self.fast else None
            if head is not None:
                outcome = await fastpath.exchange(self, stream, head, pending, client_ip, watch)
                if outcome is None:
                    return
                if isinstance(outcome, bytes):
                    pending = outcome
                    first = False
                    continue
            server = h11.Connection(
                h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes
            )
            request = await self._read_request(stream, server, pending)
            if request is None:
                return
            if not await self._exchange(stream, server, request, client_ip):
                return
            if server.our_state is not h11.DONE or server.their_state is not h11.DONE:
                return
            pending, closed = server.trailing_data
            pending = bytes(pending)
            if closed and not pending:
                return
            first = False

    async def _next_bytes(self, stream: Stream, first: bool) -> bytes:
        """The first bytes of the next request: within `request_headers` for a connection's
        first request, `keepalive` for later ones; b"" when none came (or shutdown began)."""
        wait = self.timeouts.request_headers if first else self.timeouts.keepalive
        return await self._receive_idle(stream, trio.current_time() + wait, idle=True) or b""

    async def _next_bytes_watched(self, stream: SocketStream, first: bool, watch: Watch) -> bytes:
        """`_next_bytes` on a plain socket, timed by the swept timers (no cancel scope)."""
        assert self.timers is not None
        if self.closing:  # a connection's first request is still served if it is here
            return (stream.receive_nowait() or b"") if first else b""
        wait = self.timeouts.request_headers if first else self.timeouts.keepalive
        idle = self._idle_watches
        idle.add(watch)
        try:
            # A new connection's first request is often there already; a later one is not
            # (the client has only just been answered), so skip that recv.
            deadline = trio.current_time() + wait
            data = await self.timers.receive(stream, watch, deadline, wait_first=not first)
        finally:
            idle.discard(watch)
        return data or b""

    async def _read_request(
        self, stream: Stream, server: h11.Connection, data: bytes
    ) -> h11.Request | None:
        """The request head that `data` (the first bytes received) begins, through h11; None
        when the client is done (or was answered with an error and must be closed)."""
        limit = self.limits.max_request_line
        line_bytes = 0  # bytes of this request seen before its first newline
        line_done = False
        deadline = trio.current_time() + self.timeouts.request_headers
        while True:
            if not line_done:
                newline = data.find(b"\n")
                line_done = newline >= 0
                line_bytes += newline if line_done else len(data)
                if line_bytes > limit + 1:  # the CR before the LF is not the line's
                    await self._send_error(stream, server, 414, "request line too long")
                    return None
            server.receive_data(data)
            try:
                event = server.next_event()
            except h11.RemoteProtocolError as exc:
                await self._send_error(stream, server, exc.error_status_hint, str(exc))
                return None
            if isinstance(event, h11.Request):
                return event
            if event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                return None
            received = await self._receive_idle(stream, deadline, idle=False)
            if received is None:  # timed out
                await self._send_error(stream, server, 408, "request head too slow")
                return None
            data = received

    async def _receive_idle(self, stream: Stream, until: float, idle: bool) -> bytes | None:
        scope = trio.CancelScope(deadline=until)
        if idle:
            self._idle_clients.add(scope)
            if self.closing:
                scope.cancel()
        try:
            with scope:
                return await stream.receive()
        finally:
            self._idle_clients.discard(scope)
        return None

    # -- one request ------------------------------------------------------------------------
    async def _exchange(
        self, stream: Stream, server: h11.Connection, request: h11.Request, client_ip: str
    ) -> bool:
        """Serve one request; False when the client connection must close."""
        req = Req(request.method, request.target, trio.current_time())
        try:
            return await self._serve(stream, server, request, client_ip, req)
        finally:
            if self.access is not None:
                self._access_line(client_ip, req)

    def _access_line(self, client_ip: str, req: Req) -> None:
        assert self.access is not None
        self.access(
            "request",
            listener=self.listener.name,
            client=client_ip,
            method=req.method.decode("ascii", "replace"),
            path=req.path.decode("latin-1"),
            status=req.status or "-",
            bytes=req.bytes,
            backend=req.backend or "-",
            ms=round((trio.current_time() - req.start) * 1000, 1),
        )

    async def _serve(
        self,
        stream: Stream,
        server: h11.Connection,
        request: h11.Request,
        client_ip: str,
        req: Req,
    ) -> bool:
        headers = list(request.headers)
        problem = rules.check_request(
            request.method, request.target, headers, self.limits, http_version=request.http_version
        )
        if problem is not None:
            await self._send_error(stream, server, problem.status, problem.reason, req, close=True)
            return False
        authority, target = rules.split_target(request.target)
        host_header = authority or next((v for n, v in headers if n == b"host"), None)
        pool_name, index, max_body = self.route(request.method, target, host_header, headers)
        self.model.route_hit(self.listener.name, index)
        if pool_name is None:
            return await self._refuse(stream, server, 404, "no route for this request", req)
        body, length = rules.request_framing(headers)
        if max_body and length is not None and length > max_body:
            await self._send_error(
                stream, server, 413, f"body over {max_body} bytes", req, close=True
            )
            return False
        trusted = self._trusted(client_ip)
        upgrade = rules.is_upgrade(headers)
        forward = rules.forward_request_headers(
            headers,
            client_ip=client_ip,
            proto="https" if self.tls is not None else "http",
            # HTTP/1.0 without Host: name ourselves (an empty Host is passed on as it came)
            host=host_header if host_header is not None else self._own_host,
            trusted=trusted,
            upgrade=upgrade,
            body=body,
            length=length,
        )
        # The headers came out of h11's parser or are tuilb's own, so h11's private
        # `_parsed` flag (there since 0.9; every test goes through it) skips a second
        # validation of each one.
        outgoing = h11.Request(method=request.method, target=target, headers=forward, _parsed=True)
        pool = self.model.pools[pool_name]
        try:
            return await self._forward(
                stream,
                server,
                pool,
                outgoing,
                client_ip,
                max_body,
                req,
                bool(length) or body == "chunked",
            )
        except Fail as fail:
            await self._send_error(stream, server, fail.status, fail.detail, req, close=True)
            return False

    def route(
        self, method: bytes, target: bytes, host: bytes | None, headers: rules.Headers
    ) -> tuple[str | None, int | None, int]:
        """(pool, route index, body limit) for a checked request (origin-form `target`, the
        Host or absolute-form authority); pool None: no route and no default (404)."""
        routes = self.routes
        pool_name, index = routing.pick_route(
            routes,
            self.listener.pool,
            method.decode("ascii"),
            routing.normalize_host(host),
            target.split(b"?", 1)[0].decode("latin-1"),
            routing.header_map(headers) if routes else _NO_HEADERS,
        )
        route = routes[index] if index is not None else None
        max_body = (route.max_body if route is not None else None) or self.limits.max_body
        return pool_name, index, max_body

    def _trusted(self, client_ip: str) -> bool:
        if not self.trusted or not client_ip:
            return False
        try:
            address = ipaddress.ip_address(client_ip)
        except ValueError:
            return False
        return any(address in network for network in self.trusted)

    async def _forward(
        self,
        stream: Stream,
        server: h11.Connection,
        pool: Pool,
        request: h11.Request,
        client_ip: str,
        max_body: int,
        req: Req,
        has_body: bool,
    ) -> bool:
        may_retry = request.method in IDEMPOTENT and not has_body
        tried: set[Backend] = set()
        resend = False  # a retry: the (bodiless) request was read from the client already
        while True:
            upstream = await self._upstream(pool, client_ip, tried, fresh=resend)
            backend = upstream.backend
            try:
                sent_at = trio.current_time()
                await self._pass_request(stream, server, upstream, request, max_body, resend)
                response = await self._response_head(upstream)
            except Retry:
                self.model.connection_ended(backend)
                upstream.close()
                if may_retry:
                    may_retry, resend = False, True
                    continue
                raise Fail(502, "the backend closed the connection") from None
            except BaseException:
                self.model.connection_ended(backend)
                upstream.close()
                raise
            break
        try:
            self.model.response(backend, response.status_code, trio.current_time() - sent_at)
            req.backend = backend.target
            if isinstance(response, h11.InformationalResponse):
                await self._tunnel(stream, server, upstream, response, req)
                keep = False
            else:
                keep = await self._pass_response(stream, server, upstream, response, req)
        except BaseException:
            self.model.connection_ended(backend)
            upstream.close()
            raise
        self.model.connection_ok(backend)
        self.model.connection_ended(backend)
        if pool.config.send_proxy:
            upstream.close()  # its PROXY header spoke for this client: never for another
        else:
            self.upstreams.give(upstream, trio.current_time(), upstream.clean)
        return keep

    async def _tunnel(
        self,
        stream: Stream,
        server: h11.Connection,
        upstream: Upstream,
        response: h11.InformationalResponse,
        req: Req,
    ) -> None:
        """After a 101: pass the switch on, then copy raw bytes both ways until either side
        ends (WebSocket and other upgrades). Idle for `timeouts.idle`: closed."""
        headers = rules.forward_response_headers(list(response.headers), close=False, upgrade=True)
        req.status = 101
        self.model.listener_response(self.listener.name, 101, ours=False)
        switch = h11.InformationalResponse(status_code=101, headers=headers, reason=response.reason)
        try:
            data = server.send(switch)
        except h11.LocalProtocolError:
            raise Fail(502, "the backend switched protocols unasked") from None
        await send_client(stream, data)
        # Bytes that came in behind the heads belong to the new protocol.
        client_extra, backend_extra = server.trailing_data[0], upstream.conn.trailing_data[0]
        if backend_extra:
            await send_client(stream, backend_extra)
        if client_extra:
            await upstream.stream.send(client_extra)
        idle = self.timeouts.idle

        async def copy(source: Stream, sink: Stream, scope: trio.CancelScope) -> None:
            try:
                while True:
                    with trio.move_on_after(idle) as waited:
                        data = await source.receive()
                    if waited.cancelled_caught or not data:
                        break
                    await sink.send(data)
                    if sink is stream:
                        req.bytes += len(data)
            except OSError:
                pass
            scope.cancel()  # either side ending ends the tunnel

        async with trio.open_nursery() as nursery:
            nursery.start_soon(copy, stream, upstream.stream, nursery.cancel_scope)
            nursery.start_soon(copy, upstream.stream, stream, nursery.cancel_scope)

    async def _upstream(
        self, pool: Pool, client_ip: str, tried: set[Backend], fresh: bool = False
    ) -> Upstream:
        """A connection to a backend of `pool`: pooled if one is idle, else a new one.
        `fresh` (the retry after a pooled connection turned out dead): a new one, and the
        backend's other idle connections, older than the dead one, are dropped too."""
        balancer = self.balancers[pool.name]
        failures = 0
        while True:
            backend = balancer.pick(pool.backends, client_ip, tried)
            if backend is None:
                self.model.refused(pool)
                if failures:
                    raise Fail(502, "no backend accepted the connection")
                self._error("no_backend", None, f"no usable backend in pool {pool.name!r}")
                raise Fail(503, f"no usable backend in pool {pool.name!r}")
            self.model.connection_started(backend)
            # Always peeked, even for a request that could be retried: stray bytes (a 408 a
            # server sends before closing an idle connection) would otherwise be taken as
            # this request's answer, not as a dead connection.
            if fresh:
                self.upstreams.drop(backend)
            else:
                upstream = self.upstreams.take(backend, trio.current_time())
                if upstream is not None:
                    return upstream
            tried.add(backend)
            try:
                sock = await connect_socket(backend, self.timeouts.connect, _header(pool))
            except LocalError:
                self.model.connection_aborted(backend)
                raise Fail(503, "out of file descriptors") from None
            except (OSError, trio.TooSlowError) as exc:
                self.model.connection_aborted(backend, describe(exc))
                self._error("connect_failed", backend, describe(exc))
                failures += 1
                if failures >= CONNECT_TRIES:
                    raise Fail(502, "no backend accepted the connection") from None
                continue
            except BaseException:
                self.model.connection_aborted(backend)
                raise
            return Upstream(backend, SocketStream(sock, self.timeouts.body))

    async def _pass_request(
        self,
        stream: Stream,
        server: h11.Connection,
        upstream: Upstream,
        request: h11.Request,
        max_body: int,
        resend: bool,
    ) -> None:
        """Send the request head and stream its body. Whatever h11 already holds goes out
        in one write with the head (a small request is one send, not three)."""
        conn = upstream.conn
        pending = [conn.send(request) or b""]
        if resend:
            pending.append(conn.send(h11.EndOfMessage()) or b"")
            await self._to_backend(upstream, pending, first=True)
            return
        first = True
        sent = 0
        while True:
            try:
                event = server.next_event()
            except h11.RemoteProtocolError as exc:
                raise Fail(exc.error_status_hint, str(exc)) from None
            if event is h11.NEED_DATA:
                if pending:
                    await self._to_backend(upstream, pending, first)
                    first, pending = False, []
                if server.they_are_waiting_for_100_continue:
                    # The client (curl, for a body over 1 MiB) holds the body back until
                    # told to go on: say so, as nginx does, rather than let it time out.
                    go_on = h11.InformationalResponse(status_code=100, headers=[])
                    await send_client(stream, server.send(go_on))
                data = await receive_until(stream, trio.current_time() + self.timeouts.body)
                if data is None:
                    raise Fail(408, "request body too slow")
                if not data:
                    raise ClientGone  # nobody left to answer
                server.receive_data(data)
                await checkpoint()  # a body in full flow must not starve other connections
            elif isinstance(event, h11.Data):
                sent += len(event.data)
                if max_body and sent > max_body:
                    raise Fail(413, f"body over {max_body} bytes")
                pending.append(conn.send(event) or b"")
            elif isinstance(event, h11.EndOfMessage):
                pending.append(conn.send(h11.EndOfMessage()) or b"")
                await self._to_backend(upstream, pending, first)
                return
            else:
                raise ClientGone

    async def _to_backend(self, upstream: Upstream, pending: list[bytes], first: bool) -> None:
        data = b"".join(pending)
        try:
            await upstream.stream.send(data)
        except TimeoutError:  # the backend took none of the request for `timeouts.body`
            raise Fail(504, "the backend did not take the request in time") from None
        except OSError:
            if first and upstream.reused:
                raise Retry from None  # a kept-alive connection closed under us
            if not first:
                self.model.backend_reset(upstream.backend)
            raise Fail(502, "the backend closed the connection") from None
        upstream.backend.bytes_in += len(data)  # toward the backend, as L4 counts them

    async def _response_head(
        self, upstream: Upstream, got_bytes: bool = False, deadline: float | None = None
    ) -> h11.Response | h11.InformationalResponse:
        """The backend's response head through h11 (`got_bytes`: some of it was received
        already and fed to h11, so a dead pooled connection is no longer the answer), by
        `deadline` (default: `timeouts.response` from now)."""
        conn = upstream.conn
        if deadline is None:
            deadline = trio.current_time() + self.timeouts.response
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                if not got_bytes and upstream.reused:
                    raise Retry from None
                self.model.backend_reset(upstream.backend)
                raise Fail(502, f"bad response from the backend: {exc}") from None
            if isinstance(event, h11.Response):
                size = sum(len(name) + len(value) + 4 for name, value in event.headers)
                if size > MAX_RESPONSE_HEAD:  # however the bytes happened to arrive
                    raise Fail(502, f"the backend's response head is over {MAX_RESPONSE_HEAD}")
                return event
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:
                    return event  # the backend took the upgrade: a tunnel follows
                continue  # 100 Continue and friends: our client gets the final answer
            if isinstance(event, h11.ConnectionClosed):
                raise Retry if upstream.reused else Fail(502, "backend closed early")
            try:
                data = await upstream.stream.receive_until(deadline)
            except OSError:
                if not got_bytes and upstream.reused:
                    raise Retry from None
                self.model.backend_reset(upstream.backend)
                raise Fail(502, "the backend reset the connection") from None
            if data is None:
                break  # timed out
            if not data and not got_bytes and upstream.reused:
                raise Retry
            got_bytes = got_bytes or bool(data)
            upstream.backend.bytes_out += len(data)
            conn.receive_data(data)
        self._error("response_timeout", upstream.backend, "no response in time")
        raise Fail(504, "the backend did not answer in time")

    async def _pass_response(
        self,
        stream: Stream,
        server: h11.Connection,
        upstream: Upstream,
        response: h11.Response,
        req: Req,
    ) -> bool:
        close = self.closing or upstream.backend.admin is not AdminState.READY
        headers = rules.forward_response_headers(list(response.headers), close=close, upgrade=False)
        req.status = response.status_code
        self.model.listener_response(self.listener.name, response.status_code, ours=False)
        out = h11.Response(
            status_code=response.status_code,
            headers=headers,
            reason=response.reason,
            _parsed=True,
        )
        # Head and whatever body is already here leave in one write.
        pending = [server.send(out) or b""]
        conn = upstream.conn
        body_timeout = self.timeouts.body
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                # The backend broke off mid-body: close the client too, so the truncation
                # shows; a partial response is never made to look complete.
                self.model.backend_reset(upstream.backend)
                await send_client(stream, b"".join(pending))
                raise ClientGone from None
            if event is h11.NEED_DATA:
                if pending:
                    await send_client(stream, b"".join(pending))
                    pending = []
                try:
                    data = await upstream.stream.receive_until(trio.current_time() + body_timeout)
                except OSError:
                    data = None
                if data is None:
                    self.model.backend_reset(upstream.backend)
                    raise ClientGone
                upstream.backend.bytes_out += len(data)
                conn.receive_data(data)
                await checkpoint()  # a body in full flow must not starve other connections
            elif isinstance(event, h11.Data):
                req.bytes += len(event.data)
                pending.append(server.send(event) or b"")
            elif isinstance(event, h11.EndOfMessage):
                pending.append(server.send(h11.EndOfMessage()) or b"")
                await send_client(stream, b"".join(pending))
                return not close and server.our_state is h11.DONE
            else:
                raise ClientGone

    # -- errors -----------------------------------------------------------------------------
    async def _refuse(
        self, stream: Stream, server: h11.Connection, status: int, why: str, req: Req
    ) -> bool:
        """An error answer that keeps the connection if the request's body (up to
        DISCARD_LIMIT, as nginx discards one) can be read past in time. A client waiting
        for `100 Continue` is told this way not to send its body: close, not wait for it."""
        if server.they_are_waiting_for_100_continue:
            await self._send_error(stream, server, status, why, req, close=True)
            return False
        await self._send_error(stream, server, status, why, req)
        discarded = 0
        with trio.move_on_after(self.timeouts.body):
            while discarded <= DISCARD_LIMIT:
                try:
                    event = server.next_event()
                except h11.RemoteProtocolError:
                    return False
                if isinstance(event, h11.EndOfMessage):
                    return server.our_state is h11.DONE
                if isinstance(event, h11.Data):
                    discarded += len(event.data)
                elif event is h11.NEED_DATA:
                    server.receive_data(await stream.receive())
                else:
                    return False
        return False

    async def _send_error(
        self,
        stream: Stream,
        server: h11.Connection,
        status: int,
        detail: str,
        req: Req | None = None,
        close: bool = False,
    ) -> None:
        """tuilb's own answer; `close` when the connection ends after it (said in the
        answer so the client does not send another request into the closing connection)."""
        headers, body = rules.error_response(status, detail)
        if close and (b"connection", b"close") not in headers:
            headers.append((b"connection", b"close"))
        head_only = req is not None and req.method == b"HEAD"  # the length, but no body
        if server.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            self.model.listener_response(self.listener.name, status, ours=True)
            if req is not None:
                req.status, req.bytes = status, 0 if head_only else len(body)
            elif self.access is not None:  # no request was parsed: log what we can
                bad = Req(b"-", b"-", trio.current_time())
                bad.status, bad.bytes = status, len(body)
                self._access_line("-", bad)
        if server.our_state is h11.IDLE:
            # No request was parsed (request line too long, head too slow): h11 has no
            # exchange to answer in, so the answer is written by hand. It always closes.
            head = f"HTTP/1.1 {status} {rules.reason_phrase(status)}\r\n".encode()
            if (b"connection", b"close") not in headers:
                headers.append((b"connection", b"close"))
            head += b"".join(name + b": " + value + b"\r\n" for name, value in headers)
            try:
                await stream.send(head + b"\r\n" + body)
            except OSError:
                pass
            return
        if server.our_state is not h11.SEND_RESPONSE:
            return  # a response has begun: all we can do is close
        try:
            reason = rules.reason_phrase(status).encode()
            data = server.send(h11.Response(status_code=status, headers=headers, reason=reason))
            data = data or b""
            if not head_only:
                data += server.send(h11.Data(data=body)) or b""
            data += server.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            return
        try:
            await stream.send(data)
        except OSError:
            pass


def _header(pool: Pool) -> bytes:
    """The PROXY header a new connection to a backend of `pool` starts with (b"": none)."""
    version = pool.config.send_proxy
    return proxyproto.build(version, *_ORIGIN.get()) if version else b""
