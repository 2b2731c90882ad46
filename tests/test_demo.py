"""`tuilb demo`: its backends, configuration, traffic generator and fail/recover toggle."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
import trio

from tests.conftest import connect, poll, recv_exactly, recv_to_eof, send_all
from tuilb.config import Address
from tuilb.demo import Demo
from tuilb.engine import Engine
from tuilb.errors import CommandError
from tuilb.model import Snapshot

GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
GET_CLOSE = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"


@dataclass
class Running:
    demo: Demo
    engine: Engine
    ports: dict[str, int]  # listener name -> bound port


@asynccontextmanager
async def running(rate: float) -> AsyncIterator[Running]:
    demo = Demo(rate=rate)
    engine = Engine(demo.config)
    await engine.bind()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.run)
        nursery.start_soon(demo.run, engine)
        yield Running(demo, engine, {b.listener: b.port for b in engine.bound})
        nursery.cancel_scope.cancel()


def port_of(demo: Demo, target: str) -> int:
    pool, _, name = target.partition("/")
    address: Address = next(b.address for b in demo.config.pools[pool].backends if b.name == name)
    return address.port


async def get(sock: trio.socket.SocketType, request: bytes = GET) -> bytes:
    """Send one request, return the body of the answer (heads here are small, one recv)."""
    await send_all(sock, request)
    head = b""
    while b"\r\n\r\n" not in head:
        data = await sock.recv(1)
        assert data, f"EOF inside the head: {head!r}"
        head += data
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return await recv_exactly(sock, length)


def all_tasks() -> list[trio.lowlevel.Task]:
    out, todo = [], [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        assert task is not None
        out.append(task)
        todo += [t for n in task.child_nurseries for t in n.child_tasks]
    return out


def web_total(snap: Snapshot) -> int:
    return sum(b.total_connections for p in snap.pools if p.name == "web" for b in p.backends)


def test_config_names_pools_and_backends() -> None:
    demo = Demo()
    try:
        config = demo.config
        assert config.source == "<demo>"
        assert [(li.name, li.pool, str(li.bind)) for li in config.listeners] == [
            ("web", "web", "127.0.0.1:0"),
            ("echo", "echo", "127.0.0.1:0"),
        ]
        assert [b.name for b in config.pools["web"].backends] == ["fast", "medium", "slow"]
        assert [b.name for b in config.pools["echo"].backends] == ["echo"]
        assert config.timeouts.connect == 2 and config.timeouts.shutdown_grace == 3
        ports = {b.address.port for p in config.pools.values() for b in p.backends}
        assert len(ports) == 4 and 0 not in ports
        assert demo.targets == ("web/fast", "web/medium", "web/slow", "echo/echo")
        assert demo.failing() == frozenset()
    finally:
        demo.close()


async def test_generator_sends_traffic_through_the_engine() -> None:
    with trio.fail_after(5):
        async with running(rate=200) as run:
            model = run.engine.model

            def busy() -> bool:
                snap = model.snapshot()
                return web_total(snap) >= 20 and snap.backend("echo/echo").active_connections >= 1

            await poll(busy)
            assert run.demo.requests >= 10
            snap = model.snapshot()
            assert all(snap.backend(f"web/{n}").total_connections > 0 for n in ("fast", "slow"))
            # A request of our own through the balancer is answered by a demo backend.
            with await connect(run.ports["web"]) as sock:
                assert (await get(sock)).startswith(b"hello from web/")


async def test_rate_zero_sends_nothing_and_backends_keep_alive() -> None:
    with trio.fail_after(5):
        async with running(rate=0) as run:
            with await connect(run.ports["web"]) as sock:  # keep-alive: two answers, one conn
                first = await get(sock)
                assert first.startswith(b"hello from web/") and first.endswith(b"\n")
                # The web listener is HTTP: each request is balanced on its own (3/2/1).
                second = await get(sock, GET_CLOSE)
                assert second.startswith(b"hello from web/") and second != first
                assert await recv_to_eof(sock) == b""
            with await connect(run.ports["web"]) as sock:
                assert (await get(sock, GET_CLOSE)).startswith(b"hello from web/")
            with await connect(run.ports["echo"]) as sock:
                await send_all(sock, b"ping\n")
                assert await recv_exactly(sock, 5) == b"ping\n"
            await poll(lambda: run.engine.active_connections == 0)
            # A negative check needs time to pass: nothing else may show up meanwhile.
            await trio.sleep(0.3)
            snap = run.engine.model.snapshot()
            assert web_total(snap) == 3  # requests: the web listener counts each one
            assert snap.backend("echo/echo").total_connections == 1
            assert run.demo.requests == run.demo.errors == 0


async def test_backend_closes_malformed_input() -> None:
    with trio.fail_after(5):
        async with running(rate=0) as run:
            port = port_of(run.demo, "web/fast")
            for garbage in (b"hello there\r\n\r\n", b"GET /\r\n\r\n", b"x" * 20000):
                with await connect(port) as sock:
                    await send_all(sock, garbage)
                    assert await recv_to_eof(sock) == b""
            with await connect(port) as sock:  # a chunked body: told so (through tuilb: 411)
                await send_all(sock, b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
                assert (await recv_to_eof(sock)).startswith(b"HTTP/1.1 411 Length Required\r\n")
            with await connect(port) as sock:  # HTTP/1.0: one answer, then close
                assert await get(sock, b"GET / HTTP/1.0\r\n\r\n") == b"hello from web/fast\n"
                assert await recv_to_eof(sock) == b""


async def test_toggle_fails_and_recovers_a_backend() -> None:
    with trio.fail_after(5):
        async with running(rate=0) as run:
            demo = run.demo
            port = port_of(demo, "web/slow")
            open_conn = await connect(port)
            assert await get(open_conn) == b"hello from web/slow\n"

            assert demo.toggle("web/slow") == "web/slow: failing (connections refused)"
            assert demo.failing() == frozenset({"web/slow"})
            with pytest.raises(OSError):
                await connect(port)
            with open_conn, pytest.raises(OSError):  # reset, not a polite close
                await open_conn.recv(100)
            # The engine steers around it: every request is still answered.
            for _ in range(4):
                with await connect(run.ports["web"]) as sock:
                    assert (await get(sock, GET_CLOSE)) != b"hello from web/slow\n"

            assert demo.toggle("web/slow") == "web/slow: recovered"
            assert demo.failing() == frozenset()
            with await connect(port) as sock:
                assert await get(sock) == b"hello from web/slow\n"


async def test_toggle_unknown_target_raises() -> None:
    demo = Demo(rate=0)
    try:
        for target in ("web/nope", "nope", "web", ""):
            with pytest.raises(CommandError, match="no demo backend"):
                demo.toggle(target)
        assert demo.failing() == frozenset()
    finally:
        demo.close()


async def test_cancellation_is_prompt_and_leaves_nothing_running() -> None:
    demo = Demo(rate=500)
    engine = Engine(demo.config)
    await engine.bind()
    port = port_of(demo, "web/fast")
    with trio.fail_after(3):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(engine.run)
            nursery.start_soon(demo.run, engine)
            demo.toggle("web/medium")  # while running: a fail and a recovery mid-traffic
            await poll(lambda: demo.requests >= 20)
            demo.toggle("web/medium")
            await poll(lambda: engine.active_connections > 0)
            assert any(t.name.startswith("tuilb.demo.") for t in all_tasks())
            nursery.cancel_scope.cancel()
    assert [t.name for t in all_tasks() if "tuilb" in t.name] == []
    with pytest.raises(OSError):  # the backends are closed with the run
        await connect(port)


async def test_stop_traffic_ends_the_generators_connections_at_once() -> None:
    with trio.fail_after(5):
        async with running(rate=200) as run:
            model = run.engine.model
            await poll(lambda: model.snapshot().backend("echo/echo").active_connections >= 1)
            run.demo.stop_traffic()
            assert run.demo.rate == 0
            with trio.fail_after(1):  # not the 5-20 s an echo conversation lasts
                await poll(lambda: run.engine.active_connections == 0)
            # The backends still serve.
            with await connect(run.ports["web"]) as sock:
                assert (await get(sock)).startswith(b"hello from web/")
