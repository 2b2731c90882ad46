"""TCP proxying: pick a backend, connect (retrying others on failure), pump both ways.

One `TcpProxy` serves one listener. `handle()` owns one client connection from accept
to close and catches every per-connection error, so no single connection can take the
engine down. Half-close travels through (EOF on one side becomes `shutdown(SHUT_WR)` on
the other while the reverse direction keeps flowing); a reset on one side becomes a
reset (SO_LINGER 0 close) on the other.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
import struct
from collections.abc import Callable, Mapping

import trio
from trio.lowlevel import wait_readable, wait_writable

from tuilb import proxyproto, sni
from tuilb.balance import Balancer
from tuilb.config import Address, ListenerConfig, Timeouts
from tuilb.httpconf import Network
from tuilb.model import Backend, Model, Pool
from tuilb.proxy.pump import End, Pump

_LINGER_RESET = struct.pack("ii", 1, 0)
FD_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class LocalError(Exception):
    """A failure of this process (no descriptors left), not of the backend."""

    def __init__(self, error: OSError) -> None:
        self.error = error


class Connection:
    """One proxied connection: what the idle sweeper and the counters need."""

    __slots__ = ("backend", "backend_failed", "eofs", "progress", "scope", "seen", "since")

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.progress = 0  # chunks moved; the idle sweeper compares it between sweeps
        self.seen = -1
        self.since = 0.0
        self.scope: trio.CancelScope | None = None
        self.eofs = 0
        self.backend_failed = False  # the backend reset the connection

    def ended(self, dst: socket.socket) -> None:
        """One direction saw EOF: pass the half-close on. When the other direction has
        ended already, both sockets are about to be closed, and close() says it all."""
        self.eofs += 1
        if self.eofs == 1:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # already gone; the other direction will find out

    def moved(self, upstream: bool, n: int) -> None:
        self.progress += 1
        if upstream:
            self.backend.bytes_in += n
        else:
            self.backend.bytes_out += n


def arm_reset(sock: socket.socket) -> None:
    """Make the coming close() show the peer a reset rather than a clean end."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    except OSError:
        pass


def describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connect refused"
    if isinstance(exc, trio.TooSlowError):
        return "connect timeout"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return type(exc).__name__


class TcpProxy:
    def __init__(
        self,
        listener: ListenerConfig,
        pool: Pool,
        balancer: Balancer,
        model: Model,
        timeouts: Timeouts,
        pump: Pump,
        connections: set[Connection],
        capacity: trio.lowlevel.ParkingLot,
        on_error: Callable[[str, Backend | None, str, str], None],
        balancers: Mapping[str, Balancer] | None = None,
        capacities: Mapping[str, trio.lowlevel.ParkingLot] | None = None,
    ) -> None:
        # With sni_routes, the pool is picked per connection from `balancers` and
        # `capacities` (the engine's, by pool name); `pool` is then the listener's pool, or
        # a stand-in when it has none (never used as a fallback: `listener.pool` says that).
        self.listener = listener
        self.pool = pool
        self.balancer = balancer
        self.model = model
        self.timeouts = timeouts
        self.pump = pump
        self.connections = connections
        self.capacity = capacity
        self.on_error = on_error  # (event, backend, reason, listener): logged, rate-limited
        self.proxy_rejected = 0  # accept_proxy: connections closed for their PROXY header
        self.balancers = balancers
        self.capacities = capacities
        self.sni_rejected = 0  # sni_routes: closed for their ClientHello (or no route for it)

    def _error(self, event: str, backend: Backend | None, reason: str) -> None:
        self.on_error(event, backend, reason, self.listener.name)

    async def handle(self, client: socket.socket, peer: object) -> None:
        upstream: socket.socket | None = None
        try:
            key = peer[0] if isinstance(peer, tuple) else ""
            header = b""
            origin: Origin | None = None
            sni_routes = self.listener.sni_routes
            if self.listener.accept_proxy or self.pool.config.send_proxy or sni_routes:
                found = await client_origin(
                    self.listener.accept_proxy, client, peer, self.timeouts.proxy_header
                )
                if isinstance(found, str):
                    self.proxy_rejected += 1
                    self.model.proxy_rejected(self.listener.name)
                    self._error("proxy_rejected", None, found)
                    return
                origin = found
                key = origin[0][0] if origin[0] is not None else key
            route = (self.pool, self.balancer, self.capacity)
            if sni_routes:
                by_name = await self._sni_route(client)
                if by_name is None:
                    return
                route = by_name
            send_proxy = route[0].config.send_proxy
            if send_proxy and origin is not None:
                header = proxyproto.build(send_proxy, *origin)
            picked = await self.connect(str(key), header, route)
            if picked is None:
                return
            upstream, backend = picked
            await self.relay(client, upstream, backend)
        except LocalError as exc:
            self._error("connection_error", None, describe(exc.error))
        except OSError as exc:
            self._error("connection_error", None, describe(exc))
        except Exception as exc:  # one connection must never end the engine
            self._error("connection_error", None, f"internal error: {exc!r}")
        finally:
            client.close()
            if upstream is not None:
                upstream.close()

    async def _sni_route(self, client: socket.socket) -> Route | None:
        """The pool for this client by its ClientHello's server name (peeked, not taken);
        None: the connection is to be closed (counted and logged here)."""
        hello = await peek_client_hello(client, self.timeouts.client_hello)
        if isinstance(hello, sni.Invalid):
            reason = hello.reason
        else:
            name = sni.route(self.listener.sni_routes, hello.server_name) or self.listener.pool
            if name is not None and self.balancers is not None and self.capacities is not None:
                return self.model.pools[name], self.balancers[name], self.capacities[name]
            reason = f"no sni route for {hello.server_name or 'a hello without a server name'}"
        self.sni_rejected += 1
        self.model.sni_rejected(self.listener.name)
        self._error("sni_rejected", None, reason)
        return None

    async def connect(
        self, key: str, header: bytes = b"", route: Route | None = None
    ) -> tuple[socket.socket, Backend] | None:
        """Try usable backends in the balancer's order until one accepts; None if none do.
        `header` (a PROXY header) is the first thing each new connection sends. `route`:
        the pool, balancer and capacity lot to use (default: the listener's)."""
        pool, balancer, capacity = route or (self.pool, self.balancer, self.capacity)
        tried: set[Backend] = set()
        deadline = trio.current_time() + self.timeouts.connect
        while True:
            backend = balancer.pick(pool.backends, key, tried)
            if backend is None:
                if self._full_but_eligible(pool, tried) and trio.current_time() < deadline:
                    with trio.move_on_at(deadline):
                        await capacity.park()
                    continue
                self.model.refused(pool)
                self._error("no_backend", None, f"no usable backend in pool {pool.name!r}")
                return None
            tried.add(backend)
            sock = await self._open(backend, header)
            if sock is not None:
                return sock, backend

    def _full_but_eligible(self, pool: Pool, tried: set[Backend]) -> bool:
        return any(b.eligible and not b.has_capacity and b not in tried for b in pool.backends)

    async def _open(self, backend: Backend, header: bytes = b"") -> socket.socket | None:
        """Connect to `backend`. The connection counts on it from the first moment.

        A plain non-blocking socket rather than trio's wrapper: this is once per
        connection, and the wrapper's address re-resolution and bookkeeping measured
        a sizeable share of the new-connection cost.
        """
        self.model.connection_started(backend)
        try:
            return await connect_socket(backend, self.timeouts.connect, header)
        except (OSError, trio.TooSlowError) as exc:
            self.model.connection_aborted(backend, describe(exc))
            self._release(backend)
            self._error("connect_failed", backend, describe(exc))
            return None
        except BaseException:
            self.model.connection_aborted(backend)
            self._release(backend)
            raise

    def _release(self, backend: Backend) -> None:
        if backend.max_connections:
            capacities = self.capacities
            lot = capacities.get(backend.pool) if capacities is not None else None
            (lot or self.capacity).unpark_all()

    async def relay(self, client: socket.socket, upstream: socket.socket, backend: Backend) -> None:
        """Pump both ways; `backend` already counts this connection (see `_open`)."""
        conn = Connection(backend)
        self.connections.add(conn)
        try:
            async with trio.open_nursery() as nursery:
                conn.scope = nursery.cancel_scope
                nursery.start_soon(
                    self._direction, client, upstream, conn, True, nursery.cancel_scope
                )
                await self._direction(upstream, client, conn, False, nursery.cancel_scope)
        finally:
            self.connections.discard(conn)
            if not conn.backend_failed:
                self.model.connection_ok(backend)
            self.model.connection_ended(backend)
            self._release(backend)

    async def _direction(
        self,
        src: socket.socket,
        dst: socket.socket,
        conn: Connection,
        upstream: bool,
        scope: trio.CancelScope,
    ) -> None:
        if not upstream:
            # The backend has not seen the request yet: skip the readv bound to fail.
            await wait_readable(src.fileno())
        end = await self.pump(src, dst, conn, upstream)
        if end is not End.EOF:
            # Either peer is gone abruptly: show it to the other one as a reset too.
            # Closing happens in handle(), after both directions have stopped.
            arm_reset(src)
            arm_reset(dst)
            scope.cancel()
            if (end is End.RESET) is not upstream:  # the backend's side failed
                conn.backend_failed = True
                self.model.backend_reset(conn.backend)


async def connect_socket(backend: Backend, timeout: float, header: bytes = b"") -> socket.socket:
    """A connected non-blocking socket to `backend`. Raises OSError or trio.TooSlowError
    for the backend's faults and `LocalError` for ours (out of descriptors). `header` (a
    PROXY protocol header) is sent before the socket is returned, within `timeout`."""
    sock = None
    try:
        family, sockaddr = backend.sockaddr or await _resolve(backend.address)
        try:
            sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError as exc:
            # Out of descriptors is our problem, not the backend's: no failure on it.
            raise LocalError(exc) from None
        err = sock.connect_ex(sockaddr)
        if err == errno.EINPROGRESS:
            with trio.move_on_after(timeout) as waited:
                await wait_writable(sock.fileno())
            if waited.cancelled_caught:
                raise trio.TooSlowError
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        view = memoryview(header)
        with trio.move_on_after(timeout):
            while view:
                try:
                    view = view[sock.send(view) :]
                except BlockingIOError:
                    await wait_writable(sock.fileno())
        if view:
            raise trio.TooSlowError
    except BaseException:
        if sock is not None:
            sock.close()
        raise
    return sock


async def _resolve(address: Address) -> tuple[int, tuple[str, int]]:
    infos = await trio.socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(errno.EHOSTUNREACH, f"cannot resolve {address.host}")
    family, _, _, _, sockaddr = infos[0]
    return family, (str(sockaddr[0]), int(sockaddr[1]))


Origin = tuple[tuple[str, int] | None, tuple[str, int] | None]
Route = tuple[Pool, Balancer, trio.lowlevel.ParkingLot]


async def client_origin(
    accept_proxy: tuple[Network, ...], sock: socket.socket, peer: object, timeout: float
) -> Origin | str:
    """Where a client connection really comes from and goes to, as (source, destination):
    the PROXY header's addresses on a listener with `accept_proxy` (only those sources may
    connect there, and must send one), else the socket's own. A string: why the connection
    must be closed. The header is consumed exactly; what follows it stays unread."""
    source = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
    try:
        own = sock.getsockname()
        destination = (str(own[0]), int(own[1])) if isinstance(own, tuple) else None
    except OSError:
        destination = None
    if not accept_proxy:
        return source, destination
    try:
        ip = ipaddress.ip_address(source[0]) if source is not None else None
    except ValueError:
        ip = None
    if ip is None or not any(ip in network for network in accept_proxy):
        where = source[0] if source is not None else "an unknown address"
        return f"a connection from {where}, which is not in accept_proxy"
    header = await read_proxy_header(sock, timeout)
    if isinstance(header, proxyproto.Invalid):
        return f"from {source[0] if source else '?'}: {header.reason}"
    if header.source is None:  # LOCAL or UNKNOWN: the connection's own addresses
        return source, destination
    return header.source, header.destination


async def read_proxy_header(
    sock: socket.socket, timeout: float
) -> proxyproto.Header | proxyproto.Invalid:
    """Read the PROXY header at the start of `sock` within `timeout`, and not one byte more:
    bytes are peeked, and only those that belong to the header are taken."""
    taken = b""
    with trio.move_on_after(timeout):
        while True:
            try:
                chunk = sock.recv(proxyproto.MAX_HEADER - len(taken), socket.MSG_PEEK)
            except BlockingIOError:
                await wait_readable(sock.fileno())
                continue
            if not chunk:
                return proxyproto.Invalid("the client closed before its PROXY header ended")
            result = proxyproto.parse(taken + chunk)
            if isinstance(result, proxyproto.Invalid):
                return result
            # NEED_MORE: every peeked byte is part of the header, so all are taken and the
            # next wait is for new bytes (a peek leaves the socket readable).
            if isinstance(result, proxyproto.Header):
                want = result.length - len(taken)
            else:
                want = len(chunk)
            taken += sock.recv(want)
            if isinstance(result, proxyproto.Header) and len(taken) == result.length:
                return result
    return proxyproto.Invalid(f"no complete PROXY header within {timeout:g}s")


async def peek_client_hello(sock: socket.socket, timeout: float) -> sni.Hello | sni.Invalid:
    """The TLS ClientHello at the start of `sock`, within `timeout`, read with MSG_PEEK
    only: every byte stays in the socket for the backend."""
    seen = 0
    with trio.move_on_after(timeout):
        while True:
            try:
                data = sock.recv(sni.MAX_BYTES, socket.MSG_PEEK)
            except BlockingIOError:
                await wait_readable(sock.fileno())
                continue
            if not data or (len(data) == seen and _peer_closed(sock)):
                return sni.Invalid("the client closed before its ClientHello ended")
            if len(data) == seen:
                await trio.sleep(0.01)  # woken with nothing new: do not spin
            seen = len(data)
            result = sni.parse(data)
            if not isinstance(result, sni.Incomplete):
                return result
            await _wait_for_bytes(sock, result.needed)
    return sni.Invalid(f"no complete ClientHello within {timeout:g}s")


def _peer_closed(sock: socket.socket) -> bool:
    """The peer has shut down its sending side (bytes may still be queued to read)."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLRDHUP)
    return any(events & (select.POLLRDHUP | select.POLLHUP) for _, events in poller.poll(0))


async def _wait_for_bytes(sock: socket.socket, needed: int) -> None:
    """Wait until `needed` bytes are queued on `sock` (or its peer closed). A peek leaves
    the socket readable, so readiness alone would spin: SO_RCVLOWAT makes Linux report it
    readable only once that many bytes are there; elsewhere, poll every 10 ms."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, needed)
    except OSError:
        await trio.sleep(0.01)
        return
    try:
        await wait_readable(sock.fileno())
    finally:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
        except OSError:
            pass
