"""The root trio task: listeners, connections, idle sweeping, drain and shutdown.

Nursery tree, outermost first:
  services    the idle sweeper and the health service (checks, ejections, slow start);
              cancelled last
  connections one task per proxied connection; given `shutdown_grace` on shutdown
  accepts     one accept loop per listener; cancelled first on shutdown

`Engine.run()` binds every listener before it accepts anything (a port in use fails the
start with `StartupError` and nothing half-running), then reports the bound addresses
through `task_status.started()`. The engine never imports the UI.
"""

from __future__ import annotations

import errno
import gc
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio
from trio.lowlevel import checkpoint, wait_readable

from tuilb import admin, balance, metrics, reload, state
from tuilb.checks import HealthService
from tuilb.config import Config, ListenerConfig, load
from tuilb.errors import CommandError, ConfigError, StartupError
from tuilb.l7.timers import Timers
from tuilb.log import BatchLog, Log, RateLimit, StreamLog, null_log
from tuilb.model import Backend, Event, Model
from tuilb.proxy.l4 import FD_ERRNOS, Connection, TcpProxy
from tuilb.proxy.pump import (
    CHUNK,
    BufferPool,
    PipePool,
    Pump,
    make_copy_pump,
    make_splice_pump,
)
from tuilb.proxy.udp import UdpProxy
from tuilb.reload import Plan

if TYPE_CHECKING:
    from tuilb.l7.proxy import HttpProxy
    from tuilb.l7.tls import TlsServer

# Accept errors that concern one connection that died in the queue, not the listener.
_TRANSIENT_ACCEPT = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR})


@dataclass(frozen=True, slots=True)
class _Accepting:
    listener: ListenerConfig
    sock: socket.socket
    scope: trio.CancelScope


@dataclass(frozen=True, slots=True)
class Bound:
    listener: str
    host: str
    port: int


class Engine:
    def __init__(
        self,
        config: Config,
        model: Model | None = None,
        log: Log = null_log,
        access_log: bool = False,
    ) -> None:
        self.config = config
        self.access_log = access_log  # HTTP: a log line per request (headless mode)
        # Written in batches a few times a second when the log can batch (a StreamLog).
        self._access: Log = BatchLog(log) if isinstance(log, StreamLog) else log
        self.model = model if model is not None else Model(config.pools.values())
        self.log = log
        self.connections: set[Connection] = set()
        self.bound: list[Bound] = []
        self._shutdown = trio.Event()
        self._conn_scope: trio.CancelScope | None = None
        # Called once when shutdown begins, e.g. the demo stops its own traffic.
        self.before_shutdown: list[Callable[[], None]] = []
        self._sockets: list[tuple[ListenerConfig, socket.socket]] | None = None
        self._limit = RateLimit(1.0)
        self._buffers = BufferPool()
        self._bulk_buffers = BufferPool(4 * CHUNK, keep=64)
        self._pipes = PipePool()
        self._balancers = {name: balance.make(p.algorithm) for name, p in config.pools.items()}
        self._capacity = {name: trio.lowlevel.ParkingLot() for name in config.pools}
        self.health = HealthService(self.model)
        self._http: list[HttpProxy] = []
        self.timers = Timers()  # the HTTP proxies' timeouts, swept (tuilb/l7/timers.py)
        self._tcp: list[TcpProxy] = []
        self._udp: dict[str, UdpProxy] = {}  # udp listeners' proxies, by listener
        # Per listener name: its config, socket and the cancel scope of its accept loop.
        self._accepting: dict[str, _Accepting] = {}
        self._accepts: trio.Nursery | None = None
        self._conns: trio.Nursery | None = None
        self._services: trio.Nursery | None = None
        self._health_scope: trio.CancelScope | None = None
        self._admin: tuple[trio.SocketListener, frozenset[str], str] | None = None
        self._state_saving = False  # on once the saved state was restored
        self._tls: dict[str, TlsServer] = {}  # HTTPS listeners' certificates, by listener
        self.model.subscribe(self._on_event)

    # -- control from outside (same thread as trio) ----------------------------------------
    def request_shutdown(self) -> None:
        """Stop accepting; in-flight connections get `shutdown_grace`. A second call cuts them."""
        if not self._shutdown.is_set():
            for hook in self.before_shutdown:
                hook()
        elif self._conn_scope is not None:
            self.log("shutdown", "warning", cause="second request: closing all connections now")
            self._conn_scope.cancel()
        self._shutdown.set()

    @property
    def admin_address(self) -> str | None:
        """Where the admin API listens once bound (`127.0.0.1:9900`, `unix:/path`)."""
        return self._admin[2] if self._admin is not None else None

    @property
    def active_connections(self) -> int:
        return len(self.connections) + sum(proxy.clients for proxy in self._http)

    # -- the root task -----------------------------------------------------------------------
    async def bind(self) -> list[Bound]:
        """Bind every listener (all or none); `run()` does this itself if not done before.

        Separate so a host can report a port in use before it opens its own nursery.
        """
        if self._sockets is None:
            self._tls = _tls_servers(self.config)  # a bad certificate fails before any bind
            self._sockets = await self._bind_all()
            if self.config.admin is not None:
                try:
                    self._admin = admin.bind(self.config.admin)
                except BaseException:
                    for _, sock in self._sockets:
                        sock.close()
                    raise
                self.log("admin", listen=self._admin[2], cause="admin API listening")
        return list(self.bound)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        await self.bind()
        assert self._sockets is not None
        sockets = self._sockets
        try:
            self.model.monotonic = trio.current_time  # ejections and ramps on trio's clock
            self._restore_state()
            async with trio.open_nursery() as services:
                services.start_soon(self._sweep_idle)
                services.start_soon(self.timers.run, self._shortest_http_timeout)
                self._services = services
                if self.health.needed:
                    services.start_soon(self._run_health)
                if self._admin is not None:
                    admin_listener, hosts, _ = self._admin
                    feeders: list[Callable[[], Awaitable[None]]] = []
                    ctx = admin.context(
                        self.config, self.model, hosts, metrics.exposition(self.model), feeders
                    )
                    ctx.reload = self.reload_from_file
                    ctx.current_config = lambda: self.config
                    services.start_soon(admin.serve, admin_listener, ctx, feeders)
                if isinstance(self._access, BatchLog) and self.access_log:
                    services.start_soon(self._flush_access, self._access)
                async with trio.open_nursery() as conns:
                    self._conn_scope = conns.cancel_scope
                    async with trio.open_nursery() as accepts:
                        self._accepts, self._conns = accepts, conns
                        for listener, sock in sockets:
                            self._start_accepting(listener, sock)
                        task_status.started(list(self.bound))
                        gc.freeze()  # full collections stop walking the start-up objects
                        await self._shutdown.wait()
                        accepts.cancel_scope.cancel()
                        self._accepts = None
                    for accepting in self._accepting.values():
                        accepting.sock.close()
                    grace = self.config.timeouts.shutdown_grace
                    self.log(
                        "shutdown",
                        connections=self.active_connections,
                        cause=f"in-flight connections get up to {grace:g}s",
                    )
                    conns.cancel_scope.deadline = trio.current_time() + grace
                if conns.cancel_scope.cancelled_caught:
                    self.log("shutdown", "warning", cause="grace period over: connections cut")
                services.cancel_scope.cancel()
        finally:
            for _, sock in sockets:
                sock.close()
            for accepting in self._accepting.values():
                accepting.sock.close()
            self._pipes.close()
            for proxy in self._http:
                proxy.close()
            if isinstance(self._access, BatchLog):
                self._access.flush()
            # The dashboard may still read snapshots once the run is over, when trio's
            # clock is gone: time stands still for the model from here on.
            stopped_at = trio.current_time()
            self.model.monotonic = lambda: stopped_at
        self.log("stopped")

    async def _bind_all(self) -> list[tuple[ListenerConfig, socket.socket]]:
        out: list[tuple[ListenerConfig, socket.socket]] = []
        try:
            for listener in self.config.listeners:
                sock = _bind_now(listener)
                out.append((listener, sock))
                host, port = sock.getsockname()[:2]
                self.bound.append(Bound(listener.name, host, port))
                self.log(
                    "listening",
                    listener=listener.name,
                    bind=f"{host}:{port}" if ":" not in host else f"[{host}]:{port}",
                    protocol=listener.protocol,
                )
        except BaseException:
            for _, sock in out:
                sock.close()
            raise
        return out

    def _proxy(self, listener: ListenerConfig) -> TcpProxy | HttpProxy:
        if listener.protocol == "http":
            from tuilb.l7.proxy import HttpProxy  # only configs with http listeners load h11 paths

            http = HttpProxy(
                listener,
                self.config,
                self.model,
                self._balancers,
                self._on_error,
                self._tls.get(listener.name),
                self.timers,
            )
            if self.access_log and listener.http.access_log:
                http.access = self._access
            self._http.append(http)
            self.before_shutdown.append(http.begin_shutdown)
            return http
        # tcp listeners have a pool or sni_routes (the config check): without a pool, the
        # first route's pool stands in (TcpProxy picks per connection then)
        name = listener.pool if listener.pool is not None else listener.sni_routes[0].pool
        by_name = bool(listener.sni_routes)
        pump: Pump = (
            make_splice_pump(self._pipes)
            if listener.pump == "splice"
            else make_copy_pump(self._buffers, self._bulk_buffers)
        )
        tcp = TcpProxy(
            listener,
            self.model.pools[name],
            self._balancers[name],
            self.model,
            self.config.timeouts,
            pump,
            self.connections,
            self._capacity[name],
            self._on_error,
            self._balancers if by_name else None,
            self._capacity if by_name else None,
        )
        self._tcp.append(tcp)
        return tcp

    def _start_accepting(self, listener: ListenerConfig, sock: socket.socket) -> None:
        assert self._accepts is not None and self._conns is not None
        scope = trio.CancelScope()
        if listener.protocol == "udp":
            self._start_udp(listener, sock, scope)
            return
        proxy = self._proxy(listener)
        conns = self._conns

        async def accepting() -> None:
            # A reload may have replaced this loop (and closed its socket) before it ever
            # ran: accept() on that socket would fail before the cancellation lands.
            if scope.cancel_called:
                return
            with scope:
                await self._accept_loop(listener, sock, proxy, conns)

        self._accepts.start_soon(accepting)
        self._accepting[listener.name] = _Accepting(listener, sock, scope)

    def _start_udp(
        self, listener: ListenerConfig, sock: socket.socket, scope: trio.CancelScope
    ) -> None:
        """No accepts: one task serves the datagrams and the flows (they end with it)."""
        assert self._accepts is not None and listener.pool is not None  # udp needs a pool
        udp = self._udp[listener.name] = UdpProxy(
            listener,
            self.model.pools[listener.pool],
            self._balancers[listener.pool],
            self.model,
            self.config.timeouts,
            self._on_error,
        )

        async def serving() -> None:
            with scope:
                await udp.serve(sock)

        self._accepts.start_soon(serving)
        self._accepting[listener.name] = _Accepting(listener, sock, scope)

    async def _accept_loop(
        self,
        listener: ListenerConfig,
        sock: socket.socket,
        proxy: TcpProxy | HttpProxy,
        conns: trio.Nursery,
    ) -> None:
        handle, accept, fd = proxy.handle, sock.accept, sock.fileno()
        accepted = 0
        while True:
            try:
                client, peer = accept()
            except BlockingIOError:
                await wait_readable(fd)
                continue
            except OSError as exc:
                if exc.errno in FD_ERRNOS:
                    # Out of descriptors: keep serving what we have, retry a little later,
                    # and say so once a second at most.
                    self._on_error(
                        "accept_failed", None, (exc.strerror or "").lower(), listener.name
                    )
                    await trio.sleep(0.05)
                    continue
                if exc.errno in _TRANSIENT_ACCEPT:
                    continue
                raise
            try:
                client.setblocking(False)
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass  # the client is already gone; handle() will find out
            conns.start_soon(handle, client, peer)
            accepted += 1
            if accepted % 16 == 0:
                await checkpoint()  # a burst of accepts must not starve running connections

    async def _flush_access(self, batch: BatchLog) -> None:
        while True:
            await trio.sleep(0.2)
            batch.flush()

    def _shortest_http_timeout(self) -> float:
        t = self.config.timeouts
        return min(t.request_headers, t.keepalive, t.response, t.body)

    async def _sweep_idle(self) -> None:
        """Close tunnels that moved nothing for `idle` seconds (no per-chunk timer cost)."""
        idle = self.config.timeouts.idle
        interval = min(1.0, idle / 4)
        while True:
            await trio.sleep(interval)
            now = trio.current_time()
            for conn in list(self.connections):
                if conn.progress != conn.seen:
                    conn.seen, conn.since = conn.progress, now
                elif now - conn.since >= idle and conn.scope is not None:
                    conn.scope.cancel()

    # -- reload ----------------------------------------------------------------------------------
    def reload_from_file(self) -> str:
        """Reload the configuration file this engine started from (SIGHUP, admin API).
        Raises CommandError with every problem when the file is invalid or needs a restart;
        then nothing has changed."""
        try:
            new = load(self.config.source)
        except ConfigError as exc:
            lines = [f"{exc.source}: {len(exc.problems)} problem(s):"]
            lines += [f"  {problem}" for problem in exc.problems]
            raise CommandError("\n".join(lines)) from None
        return self.reload(new)

    def reload(self, new: Config) -> str:
        plan = reload.plan(self.config, new)
        if plan.blockers:
            raise CommandError("reload refused, nothing changed: " + "; ".join(plan.blockers))
        renewed = plan.listeners_added + plan.listeners_changed
        if (renewed or plan.listeners_removed) and self._accepts is None:
            raise CommandError("reload refused: the engine is not serving")
        sockets, tls = self._prepare_listeners(new, renewed)  # may refuse: nothing changed yet
        self.model.reconfigure(new.pools.values())
        for name, pool in new.pools.items():
            old = self.config.pools.get(name)
            if old is None or old.algorithm != pool.algorithm:
                self._balancers[name] = balance.make(pool.algorithm)
            self._capacity.setdefault(name, trio.lowlevel.ParkingLot())
        for tcp in self._tcp:
            tcp.balancer = self._balancers[tcp.pool.name]
        for udp in self._udp.values():
            udp.balancer = self._balancers[udp.pool.name]
        self.config = new
        self._tls = tls
        self._swap_listeners(new, plan, sockets)
        if plan.health_changed or plan.backends_added or plan.backends_removed or plan.pools_added:
            self._restart_health()
        summary = plan.summary()
        self.log("reloaded", config=new.source, cause=summary)
        return f"reloaded: {summary}"

    def _prepare_listeners(
        self, new: Config, renewed: tuple[str, ...]
    ) -> tuple[dict[str, socket.socket], Any]:
        """Bind what needs a new socket and load certificates, before anything changes;
        a failure closes what was bound and refuses the reload."""
        try:
            tls = _tls_servers(new)
        except StartupError as exc:
            raise CommandError(f"reload refused, nothing changed: {exc}") from None
        sockets: dict[str, socket.socket] = {}
        try:
            for listener in new.listeners:
                current = self._accepting.get(listener.name)
                if listener.name in renewed and (
                    current is None
                    or current.listener.bind != listener.bind
                    # a tcp socket cannot serve udp, nor the other way round
                    or (current.listener.protocol == "udp") != (listener.protocol == "udp")
                ):
                    sockets[listener.name] = _bind_now(listener)
        except StartupError as exc:
            for sock in sockets.values():
                sock.close()
            raise CommandError(f"reload refused, nothing changed: {exc}") from None
        return sockets, tls

    def _swap_listeners(self, new: Config, plan: Plan, sockets: dict[str, socket.socket]) -> None:
        for name in plan.listeners_removed:
            self._udp.pop(name, None)
            gone = self._accepting.pop(name)
            gone.scope.cancel()  # its connections carry on in the connections nursery
            gone.sock.close()
        for listener in new.listeners:
            if listener.name not in plan.listeners_added + plan.listeners_changed:
                continue
            current = self._accepting.pop(listener.name, None)
            self._udp.pop(listener.name, None)
            sock = sockets.get(listener.name) or (current.sock if current else None)
            assert sock is not None
            if current is not None:
                current.scope.cancel()  # the same socket, if kept, is accepted on at once
                if current.sock is not sock:
                    current.sock.close()
            self._start_accepting(listener, sock)
        self.bound = []
        for listener in new.listeners:
            host, port = self._accepting[listener.name].sock.getsockname()[:2]
            self.bound.append(Bound(listener.name, host, port))

    def _restart_health(self) -> None:
        if self._health_scope is not None:
            self._health_scope.cancel()
            self._health_scope = None
        if self._services is not None and self.health.needed:
            self._services.start_soon(self._run_health)

    async def _run_health(self) -> None:
        with trio.CancelScope() as scope:
            self._health_scope = scope
            await self.health.run()

    # -- persistent runtime state -------------------------------------------------------------
    def _restore_state(self) -> None:
        path = self.config.state_file
        if path is None:
            return
        try:
            saved = state.load(path)
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            self.log("state_file", "warning", file=path, cause=f"ignored: {reason}")
        else:
            for note in state.restore(self.model, saved):
                self.log("state_file", file=path, cause=note)
        self._state_saving = True

    def _save_state(self) -> None:
        assert self.config.state_file is not None
        try:
            state.save(self.config.state_file, state.encode(self.model))
        except OSError as exc:
            self._on_error("state_file", None, f"cannot write: {exc.strerror or exc}", None)

    # -- logging glue ------------------------------------------------------------------------
    def _on_event(self, event: Event) -> None:
        self.log(event.kind, target=event.target, from_=event.old, to=event.new, cause=event.cause)
        if event.kind == "state" and event.old == "disabled":
            self.health.wake(self.model.backend(event.target))
        if self._state_saving and event.kind in ("state", "weight"):
            self._save_state()  # operator changes only: health never changes these
        # A state or weight change may free room for connections waiting on capacity.
        for lot in self._capacity.values():
            lot.unpark_all()

    def _on_error(
        self, event: str, backend: Backend | None, reason: str, listener: str | None = None
    ) -> None:
        key = f"{event}:{backend.target if backend else listener}"
        held = self._limit.allow(key, trio.current_time())
        if held is None:
            return
        self.log(
            event,
            "warning",
            listener=listener,
            target=backend.target if backend else None,
            cause=reason,
            suppressed=held or None,
        )


def _tls_servers(config: Config) -> dict[str, TlsServer]:
    """Certificates of every HTTPS listener, loaded now: StartupError if one cannot be."""
    wanted = [lst for lst in config.listeners if lst.protocol == "http" and lst.http.tls]
    if not wanted:
        return {}
    from tuilb.l7.tls import TlsServer

    return {lst.name: TlsServer(lst.name, lst.http.tls) for lst in wanted}


def _bind_now(listener: ListenerConfig) -> socket.socket:
    """Bind a listener's socket without awaiting (a reload runs synchronously)."""
    addr = listener.bind
    udp = listener.protocol == "udp"
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    try:
        infos = socket.getaddrinfo(addr.host, addr.port, type=kind, flags=socket.AI_PASSIVE)
        family, _, _, _, sockaddr = infos[0]
        sock = socket.socket(family, kind | socket.SOCK_NONBLOCK)
    except OSError as exc:
        raise StartupError(
            f"listener {listener.name!r}: cannot use {addr}: {exc.strerror or exc}"
        ) from None
    try:
        if not udp:  # for udp it would let two sockets share the port: in use must fail
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        if not udp:
            sock.listen(socket.SOMAXCONN)
    except OSError as exc:
        sock.close()
        reason = (exc.strerror or str(exc)).lower()
        raise StartupError(
            f"listener {listener.name!r}: cannot listen on {addr}: {reason}"
        ) from None
    return sock
