"""UDP listeners end to end: real datagram sockets on loopback, trio echo backends."""

from __future__ import annotations

import socket
from collections import Counter
from typing import Any

import pytest
import trio
import trio.testing

from tests.conftest import Running, poll, start_engine
from tuilb.config import Config, parse
from tuilb.control import Disable, Drain, apply
from tuilb.errors import StartupError
from tuilb.health import Health
from tuilb.model import Model
from tuilb.proxy.udp import UdpProxy


class UdpEcho:
    """Answers each datagram with `name:` and the datagram; counts its sources."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sources: Counter[tuple[str, int]] = Counter()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    async def run(self) -> None:
        with self.sock:
            while True:
                data, peer = await self.sock.recvfrom(65535)
                self.sources[peer] += 1
                await self.sock.sendto(self.name.encode() + b":" + data, peer)


async def echoes(nursery: trio.Nursery, n: int) -> list[UdpEcho]:
    out = []
    for i in range(1, n + 1):
        echo = UdpEcho(f"b{i}")
        await echo.sock.bind(("127.0.0.1", 0))
        nursery.start_soon(echo.run)
        out.append(echo)
    return out


def udp_config(
    ports: list[int],
    *,
    max_flows: int = 100,
    udp_idle: float = 60.0,
    algorithm: str = "round_robin",
) -> Config:
    text = (
        '[[listeners]]\nname = "dns"\nbind = "127.0.0.1:0"\nprotocol = "udp"\npool = "app"\n'
        f'max_flows = {max_flows}\n\n[pools.app]\nalgorithm = "{algorithm}"\n\n'
    )
    for i, port in enumerate(ports, start=1):
        text += f'[[pools.app.backends]]\nname = "b{i}"\naddress = "127.0.0.1:{port}"\n\n'
    return parse(text + f"[timeouts]\nudp_idle = {udp_idle}\n", "<test>")


class Client:
    def __init__(self, port: int) -> None:
        self.sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.target = ("127.0.0.1", port)

    async def ask(self, data: bytes) -> tuple[bytes, Any]:
        """Send `data`, return the reply and where it came from (bounded wait)."""
        if self.sock.getsockname()[1] == 0:
            await self.sock.bind(("127.0.0.1", 0))
        await self.sock.sendto(data, self.target)
        with trio.fail_after(5):
            return await self.sock.recvfrom(65535)

    async def backend_of(self, data: bytes = b"x") -> str:
        reply, _ = await self.ask(data)
        return reply.split(b":", 1)[0].decode()

    def close(self) -> None:
        self.sock.close()


def proxy(running: Running) -> UdpProxy:
    return running.engine._udp["dns"]


def active(model: Model, name: str) -> int:
    return model.snapshot().backend(f"app/{name}").active_connections


async def test_a_flow_sticks_and_replies_come_from_the_listener(nursery):
    backends = await echoes(nursery, 3)
    running = await start_engine(nursery, udp_config([b.port for b in backends]))
    client = Client(running.port)
    reply, source = await client.ask(b"hello")
    name = reply.split(b":")[0].decode()
    assert reply == name.encode() + b":hello"
    assert source == ("127.0.0.1", running.port)
    for i in range(10):
        assert await client.backend_of(b"%d" % i) == name
    snap = running.model.snapshot().backend(f"app/{name}")
    assert snap.active_connections == 1 and snap.total_connections == 1
    assert snap.bytes_in == 5 + 10 and snap.bytes_out == len(reply) + 10 * (len(name) + 2)
    # one upstream socket per flow: the backend saw a single source
    echo = next(b for b in backends if b.name == name)
    assert len(echo.sources) == 1
    client.close()
    running.engine.request_shutdown()


async def test_flows_spread_across_backends(nursery):
    backends = await echoes(nursery, 3)
    running = await start_engine(nursery, udp_config([b.port for b in backends]))
    clients = [Client(running.port) for _ in range(12)]
    names = Counter([await c.backend_of() for c in clients])
    assert names == {"b1": 4, "b2": 4, "b3": 4}
    assert [active(running.model, n) for n in ("b1", "b2", "b3")] == [4, 4, 4]
    for c in clients:
        c.close()
    running.engine.request_shutdown()
    with trio.fail_after(5):
        await running.stopped.wait()
    assert [active(running.model, n) for n in ("b1", "b2", "b3")] == [0, 0, 0]


async def test_idle_flows_expire_and_close(nursery):
    backends = await echoes(nursery, 1)
    running = await start_engine(nursery, udp_config([backends[0].port], udp_idle=0.2))
    client = Client(running.port)
    await client.backend_of()
    assert active(running.model, "b1") == 1
    with trio.fail_after(5):
        await poll(lambda: active(running.model, "b1") == 0)
    assert len(proxy(running).table) == 0
    await client.backend_of()  # a new flow, through a new upstream socket
    assert running.model.snapshot().backend("app/b1").total_connections == 2
    assert len(backends[0].sources) == 2
    client.close()
    running.engine.request_shutdown()


async def test_flows_beyond_max_flows_are_refused(nursery):
    backends = await echoes(nursery, 1)
    running = await start_engine(nursery, udp_config([backends[0].port], max_flows=2))
    a, b, c = Client(running.port), Client(running.port), Client(running.port)
    await a.backend_of()
    await b.backend_of()
    await c.sock.bind(("127.0.0.1", 0))
    await c.sock.sendto(b"x", c.target)
    with trio.fail_after(5):
        await poll(lambda: proxy(running).table.refused == 1)
    with trio.move_on_after(0.2) as waited:  # no answer should come: bound the check
        await c.sock.recvfrom(100)
    assert waited.cancelled_caught
    assert await a.backend_of() == "b1"  # existing flows still pass
    assert active(running.model, "b1") == 2
    (listener,) = running.model.snapshot().listeners  # in the snapshot for the dashboard/API
    assert (listener.flows, listener.flows_refused) == (2, 1)
    for x in (a, b, c):
        x.close()
    running.engine.request_shutdown()


async def test_drain_keeps_flows_new_ones_go_elsewhere(nursery):
    backends = await echoes(nursery, 2)
    running = await start_engine(nursery, udp_config([b.port for b in backends]))
    first = Client(running.port)
    assert await first.backend_of() == "b1"
    apply(running.model, Drain("app/b1"), "test")
    for _ in range(3):
        assert await first.backend_of() == "b1"
    others = [Client(running.port) for _ in range(4)]
    assert {await c.backend_of() for c in others} == {"b2"}
    assert proxy(running).table.moved == 0
    for c in [first, *others]:
        c.close()
    running.engine.request_shutdown()


@pytest.mark.parametrize("how", ["disabled", "down"])
async def test_a_dead_backends_flow_moves(nursery, how):
    backends = await echoes(nursery, 2)
    running = await start_engine(nursery, udp_config([b.port for b in backends]))
    client = Client(running.port)
    assert await client.backend_of() == "b1"
    b1 = running.model.backend("app/b1")
    if how == "disabled":
        apply(running.model, Disable("app/b1"), "test")
    else:
        running.model.set_health(b1, Health.DOWN, "test")
    assert await client.backend_of() == "b2"
    assert await client.backend_of() == "b2"
    assert proxy(running).table.moved == 1
    assert running.model.snapshot().listeners[0].flows_moved == 1
    assert active(running.model, "b1") == 0 and active(running.model, "b2") == 1
    client.close()
    running.engine.request_shutdown()


async def test_a_udp_port_in_use_fails_the_start():
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    text = (
        f'[[listeners]]\nname = "dns"\nbind = "127.0.0.1:{port}"\nprotocol = "udp"\n'
        'pool = "app"\n[pools.app]\n[[pools.app.backends]]\nname = "b1"\n'
        'address = "127.0.0.1:9"\n'
    )
    from tuilb.engine import Engine

    with taken, pytest.raises(StartupError, match="cannot listen"):
        await Engine(parse(text, "<test>")).bind()


async def test_reload_changes_and_removes_a_udp_listener(nursery):
    backends = await echoes(nursery, 2)
    ports = [b.port for b in backends]
    running = await start_engine(nursery, udp_config(ports, max_flows=5))
    client = Client(running.port)
    await client.backend_of()
    running.engine.reload(udp_config(ports, max_flows=7))
    assert proxy(running).table.max_flows == 7
    with trio.fail_after(5):
        await poll(lambda: sum(active(running.model, n) for n in ("b1", "b2")) == 0)
    assert await client.backend_of() in ("b1", "b2")  # served by the new proxy, same port
    tcp_only = parse(
        '[[listeners]]\nname = "web"\nbind = "127.0.0.1:0"\npool = "app"\n'
        "[pools.app]\n"
        + "".join(
            f'[[pools.app.backends]]\nname = "b{i}"\naddress = "127.0.0.1:{p}"\n'
            for i, p in enumerate(ports, start=1)
        ),
        "<test>",
    )
    running.engine.reload(tcp_only)
    assert "dns" not in running.engine._udp
    with trio.fail_after(5):
        await poll(lambda: sum(active(running.model, n) for n in ("b1", "b2")) == 0)
    client.close()
    running.engine.request_shutdown()


async def test_reload_turns_a_tcp_listener_into_udp_on_the_same_port(nursery):
    backends = await echoes(nursery, 1)
    port = backends[0].port
    tcp = parse(
        '[[listeners]]\nname = "dns"\nbind = "127.0.0.1:0"\npool = "app"\n'
        f'[pools.app]\n[[pools.app.backends]]\nname = "b1"\naddress = "127.0.0.1:{port}"\n',
        "<test>",
    )
    running = await start_engine(nursery, tcp)
    bound = running.engine.bound[0].port
    udp_text = (
        f'[[listeners]]\nname = "dns"\nbind = "127.0.0.1:{bound}"\nprotocol = "udp"\n'
        f'pool = "app"\n[pools.app]\n[[pools.app.backends]]\nname = "b1"\n'
        f'address = "127.0.0.1:{port}"\n'
    )
    # let the tcp accept loop reach its first wait: one not yet started would call accept()
    # on the socket the reload closes (a separate engine race, not a udp one)
    await trio.testing.wait_all_tasks_blocked()
    running.engine.reload(parse(udp_text, "<test>"))
    client = Client(bound)
    assert await client.backend_of() == "b1"
    client.close()
    running.engine.request_shutdown()
