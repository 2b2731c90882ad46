"""UDP proxying, the I/O shell around `tuilb.flows`.

One `UdpProxy` serves one udp listener: one task reads the listener's socket and asks the
flow table where each datagram goes; each flow has its own connected upstream socket
toward its backend and a task that reads the backend's replies and sends them to the
client from the listener's socket (so the client sees replies from the address it wrote
to). A flow counts on its backend as a connection (`connection_started` when it begins,
`connection_ended` when it expires, moves or the listener stops), so least-connections,
drain and the dashboard see flows like connections. Datagrams that cannot be sent at
once (a full socket buffer) are dropped, as the network would.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Collection
from typing import Any

import trio
from trio.lowlevel import checkpoint, wait_readable

from tuilb.balance import Balancer
from tuilb.config import ListenerConfig, Timeouts
from tuilb.flows import Flow, FlowTable, Outcome
from tuilb.model import Backend, Model, Pool
from tuilb.proxy.l4 import _resolve, describe

MAX_DATAGRAM = 65535
PENDING = 64  # datagrams held per flow while its upstream socket is being set up


class Upstream:
    """The I/O side of one flow: its socket toward the backend and its reply task."""

    __slots__ = ("backend", "peer", "pending", "scope", "sock")

    def __init__(self, backend: Backend, peer: tuple[Any, ...]) -> None:
        self.backend = backend
        self.peer = peer  # the client's address as recvfrom gave it (sendto wants it so)
        self.sock: socket.socket | None = None
        self.pending: list[bytes] = []
        self.scope = trio.CancelScope()


class UdpProxy:
    def __init__(
        self,
        listener: ListenerConfig,
        pool: Pool,
        balancer: Balancer,
        model: Model,
        timeouts: Timeouts,
        on_error: Callable[[str, Backend | None, str, str], None],
    ) -> None:
        self.listener = listener
        self.pool = pool
        self.balancer = balancer  # replaced by a reload that changes the algorithm
        self.model = model
        self.on_error = on_error  # (event, backend, reason, listener): logged, rate-limited
        self.table = FlowTable(
            self._pick,
            idle=timeouts.udp_idle,
            max_flows=listener.max_flows,
            clock=trio.current_time,
        )
        self.sock: socket.socket | None = None
        self._nursery: trio.Nursery | None = None

    def _pick(self, key: str, exclude: Collection[Backend]) -> Backend | None:
        return self.balancer.pick(self.pool.backends, key, exclude)

    def _error(self, event: str, backend: Backend | None, reason: str) -> None:
        self.on_error(event, backend, reason, self.listener.name)

    async def serve(self, sock: socket.socket) -> None:
        """Serve the bound datagram socket `sock` until cancelled; every flow ends with it."""
        self.sock = sock
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._expire_loop)
                await self._receive_loop(sock)
        finally:
            self._nursery = None
            for flow in self.table.clear():
                self._end(flow)

    async def _receive_loop(self, sock: socket.socket) -> None:
        recvfrom, fd = sock.recvfrom, sock.fileno()
        received = 0
        while True:
            try:
                data, peer = recvfrom(MAX_DATAGRAM)
            except BlockingIOError:
                await wait_readable(fd)
                continue
            except OSError:
                await checkpoint()  # an ICMP error queued on the socket: nothing to do
                continue
            self.datagram(data, peer)
            received += 1
            if received % 32 == 0:
                await checkpoint()  # a flood must not starve the reply tasks

    def datagram(self, data: bytes, peer: tuple[Any, ...]) -> None:
        routed = self.table.route((peer[0], peer[1]))
        flow = routed.flow
        outcome = routed.outcome
        if outcome is Outcome.SAME:
            assert flow is not None
            self._send(flow, data)
            return
        self._mirror()  # the table changed: its counters go to the model
        if outcome is Outcome.NEW:
            assert flow is not None
            self._begin(flow, peer)
        elif outcome is Outcome.MOVED:
            assert flow is not None and routed.previous is not None
            self._end(flow, routed.previous)
            self._begin(flow, peer)
        elif outcome is Outcome.FULL:
            self._error(
                "udp_flows_full", None, f"max_flows ({self.table.max_flows}) reached: refused"
            )
            return
        else:  # NO_BACKEND
            if flow is not None:
                self._end(flow, routed.previous)
            self.model.refused(self.pool)
            self._error("no_backend", None, f"pool {self.pool.name!r}: no usable backend")
            return
        self._send(flow, data)

    def _mirror(self) -> None:
        table = self.table
        self.model.udp_flows(
            self.listener.name, len(table), table.refused, table.moved, table.unrouted
        )

    def _begin(self, flow: Flow, peer: tuple[Any, ...]) -> None:
        backend = flow.backend
        self.model.connection_started(backend)
        up = flow.upstream = Upstream(backend, peer)
        if backend.sockaddr is not None:
            family, sockaddr = backend.sockaddr
            try:
                sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
            except OSError as exc:
                self._error("udp_socket", backend, describe(exc))
                return  # no socket, no task: the flow's datagrams are dropped until it ends
            try:
                sock.connect(sockaddr)
            except OSError as exc:
                sock.close()
                self.model.connect_failed(backend, describe(exc))
                return
            up.sock = sock
        assert self._nursery is not None
        self._nursery.start_soon(self._replies, flow, up)

    def _send(self, flow: Flow, data: bytes) -> None:
        up = flow.upstream
        assert isinstance(up, Upstream)
        if up.sock is None:
            if len(up.pending) < PENDING and not up.scope.cancel_called:
                up.pending.append(data)
            return
        try:
            up.sock.send(data)
        except BlockingIOError:
            return
        except OSError as exc:  # e.g. ECONNREFUSED: an ICMP port unreachable came back
            self.model.connect_failed(up.backend, describe(exc))
            return
        up.backend.bytes_in += len(data)

    def _end(self, flow: Flow, backend: Backend | None = None) -> None:
        """The flow leaves `backend` (its current one by default): close its upstream."""
        up = flow.upstream
        if not isinstance(up, Upstream):
            return
        flow.upstream = None
        up.scope.cancel()  # the reply task closes the socket
        if up.sock is not None and self._nursery is None:
            up.sock.close()  # no task will (the listener has stopped)
        self.model.connection_ended(up.backend if backend is None else backend)

    async def _replies(self, flow: Flow, up: Upstream) -> None:
        """Read the backend's replies for `flow` and send them to its client."""
        try:
            with up.scope:
                if up.sock is None:
                    if not await self._connect(up):
                        return
                    for data in up.pending:
                        self._send(flow, data)
                    up.pending.clear()
                assert up.sock is not None
                await self._reply_loop(flow, up, up.sock)
        finally:
            if up.sock is not None:
                up.sock.close()

    async def _connect(self, up: Upstream) -> bool:
        """A backend given by host name: resolve it and connect the flow's socket."""
        try:
            family, sockaddr = await _resolve(up.backend.address)
            sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        except OSError as exc:
            self.model.connect_failed(up.backend, describe(exc))
            return False
        try:
            sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            self.model.connect_failed(up.backend, describe(exc))
            return False
        up.sock = sock
        return True

    async def _reply_loop(self, flow: Flow, up: Upstream, sock: socket.socket) -> None:
        listener = self.sock
        assert listener is not None
        recv, fd, peer, backend = sock.recv, sock.fileno(), up.peer, up.backend
        while True:
            try:
                data = recv(MAX_DATAGRAM)
            except BlockingIOError:
                await wait_readable(fd)
                continue
            except OSError as exc:  # the backend's port is closed (ICMP), and the like
                self.model.connect_failed(backend, describe(exc))
                await checkpoint()
                continue
            self.table.reply(flow)
            try:
                listener.sendto(data, peer)
            except OSError:
                pass  # a full buffer or a client gone: dropped, as the network would
            else:
                backend.bytes_out += len(data)
            await checkpoint()

    async def _expire_loop(self) -> None:
        interval = min(1.0, self.table.idle / 4)
        while True:
            await trio.sleep(interval)
            expired = self.table.expire()
            for flow in expired:
                self._end(flow)
            if expired:
                self._mirror()
