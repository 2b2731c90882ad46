"""The L4 TCP proxy end to end: real loopback sockets on both sides, both pumps."""

from __future__ import annotations

import os
import socket
from collections import Counter

import pytest
import trio
import trio.testing

from tests.conftest import (
    LINGER_RESET,
    Handler,
    RecordingLog,
    Server,
    close_cleanly,
    connect,
    echo,
    exchange,
    half_closer,
    make_config,
    named,
    poll,
    recv_exactly,
    recv_line,
    recv_to_eof,
    refused_port,
    reply_after_eof,
    resetter,
    send_all,
    start_engine,
    start_server,
)
from tuilb.control import Drain, apply
from tuilb.model import BackendSnapshot, Event, Model


@pytest.fixture(params=["default", "splice"])
def pump(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def servers(nursery: trio.Nursery, handler: Handler, n: int) -> list[Server]:
    return [await start_server(nursery, handler, f"b{i}") for i in range(1, n + 1)]


def backend(model: Model, name: str) -> BackendSnapshot:
    return model.snapshot().backend(f"app/{name}")


async def all_closed(model: Model) -> None:
    """Wait until the engine has accounted every connection's end."""
    await poll(lambda: all(b.active == 0 for p in model.pools.values() for b in p.backends))


# -- balancing and counters ----------------------------------------------------------------
async def test_round_robin_spreads_evenly_and_counts_bytes(nursery, pump):
    backends = await servers(nursery, named, 3)
    run = await start_engine(nursery, make_config([s.port for s in backends], pump=pump))
    sent: Counter[str] = Counter()
    answered: Counter[str] = Counter()
    with trio.fail_after(5):
        for i in range(30):
            sock = await connect(run.port)
            name = (await recv_line(sock)).decode().strip()
            payload = bytes([i]) * (100 + i * 37)
            await exchange(sock, payload)
            await close_cleanly(sock)
            answered[name] += 1
            sent[name] += len(payload)
        await all_closed(run.model)

    assert answered == {"b1": 10, "b2": 10, "b3": 10}
    assert [s.accepted for s in backends] == [10, 10, 10]
    for server in backends:
        snap = backend(run.model, server.name)
        assert snap.total_connections == 10
        assert snap.active_connections == 0
        assert snap.failed_connects == 0
        assert snap.bytes_in == sent[server.name] == sum(len(c.data) for c in server.conns)
        assert snap.bytes_out == sent[server.name] + 10 * len(b"b1\n")


async def test_large_transfer_both_ways_intact(nursery, pump):
    (server,) = await servers(nursery, echo, 1)
    run = await start_engine(nursery, make_config([server.port], pump=pump))
    size = 8 * 1024 * 1024
    payload = os.urandom(size)
    received = bytearray()

    async def read_back(sock: trio.socket.SocketType) -> None:
        received.extend(await recv_exactly(sock, size))

    with trio.fail_after(10):
        sock = await connect(run.port)
        async with trio.open_nursery() as both:
            both.start_soon(read_back, sock)
            await send_all(sock, payload)
        await close_cleanly(sock)
        await all_closed(run.model)

    assert received == payload
    assert server.conns[0].data == payload
    snap = backend(run.model, "b1")
    assert (snap.bytes_in, snap.bytes_out) == (size, size)


# -- half-close ----------------------------------------------------------------------------
async def test_client_half_close_reaches_backend_and_reply_flows_back(nursery, pump):
    (server,) = await servers(nursery, reply_after_eof, 1)
    run = await start_engine(nursery, make_config([server.port], pump=pump))
    with trio.fail_after(5):
        sock = await connect(run.port)
        with sock:
            await send_all(sock, b"question")
            sock.shutdown(socket.SHUT_WR)
            reply = await recv_to_eof(sock)
        await server.conns[0].done.wait()
    assert server.conns[0].end == "eof"
    assert reply == b"after-eof:question"


async def test_backend_half_close_reaches_client_and_client_can_still_send(nursery, pump):
    (server,) = await servers(nursery, half_closer, 1)
    run = await start_engine(nursery, make_config([server.port], pump=pump))
    with trio.fail_after(5):
        sock = await connect(run.port)
        with sock:
            assert await recv_to_eof(sock) == b"bye\n"  # the backend's EOF came through
            await send_all(sock, b"still talking")
            sock.shutdown(socket.SHUT_WR)
            await server.conns[0].done.wait()
            assert await recv_to_eof(sock) == b""
    assert server.conns[0].data == b"still talking"
    assert server.conns[0].end == "eof"


# -- connect failures ----------------------------------------------------------------------
async def test_refusing_backend_is_retried_on_the_next_and_counted(nursery, pump):
    dead, dead_port = refused_port()
    with dead:
        good = [await start_server(nursery, named, name) for name in ("b2", "b3")]
        config = make_config([dead_port, good[0].port, good[1].port], pump=pump)
        run = await start_engine(nursery, config)
        names = []
        with trio.fail_after(5):
            for _ in range(4):
                sock = await connect(run.port)
                names.append((await recv_line(sock)).decode().strip())
                await exchange(sock, b"ping")
                await close_cleanly(sock)
            await all_closed(run.model)

    assert sorted(names) == ["b2", "b2", "b3", "b3"]
    snap = run.model.snapshot()
    refusing = snap.backend("app/b1")
    assert refusing.failed_connects >= 1
    assert refusing.total_connections == 0
    assert refusing.last_error == "connect refused"
    assert snap.backend("app/b2").total_connections + snap.backend("app/b3").total_connections == 4
    assert snap.pools[0].refused == 0


async def test_all_backends_refusing_closes_client_and_counts_refusal(nursery, pump):
    dead1, port1 = refused_port()
    dead2, port2 = refused_port()
    with dead1, dead2:
        log = RecordingLog()
        run = await start_engine(nursery, make_config([port1, port2], pump=pump), log=log)
        with trio.fail_after(5):
            sock = await connect(run.port)
            with sock:
                await send_all(sock, b"anyone?")
                try:
                    data = await recv_to_eof(sock)
                except ConnectionResetError:
                    data = b""
    assert data == b""
    snap = run.model.snapshot()
    assert snap.pools[0].refused == 1
    assert [b.failed_connects for b in snap.pools[0].backends] == [1, 1]
    assert [b.total_connections for b in snap.pools[0].backends] == [0, 0]
    assert "no_backend" in log.events()


# -- resets --------------------------------------------------------------------------------
async def test_backend_reset_mid_stream_reaches_client(nursery, pump):
    (server,) = await servers(nursery, resetter, 1)
    run = await start_engine(nursery, make_config([server.port], pump=pump))
    with trio.fail_after(5):
        sock = await connect(run.port)
        with sock:
            await send_all(sock, b"hello")
            got = bytearray()
            with pytest.raises(ConnectionResetError):
                while data := await sock.recv(1024):
                    got += data
        await all_closed(run.model)
    assert bytes(got) in (b"", b"partial")
    assert server.conns[0].data == b"hello"
    assert backend(run.model, "b1").active_connections == 0


async def test_client_reset_ends_backend_connection(nursery, pump):
    (server,) = await servers(nursery, echo, 1)
    run = await start_engine(nursery, make_config([server.port], pump=pump))
    with trio.fail_after(5):
        sock = await connect(run.port)
        await exchange(sock, b"before the reset")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        sock.close()
        await server.conns[0].done.wait()
        await all_closed(run.model)
    assert server.conns[0].end == "reset"
    assert server.conns[0].data == b"before the reset"


# -- drain ---------------------------------------------------------------------------------
async def test_drain_under_load_loses_no_connection(nursery, pump):
    backends = await servers(nursery, echo, 3)
    run = await start_engine(nursery, make_config([s.port for s in backends], pump=pump))
    model = run.model
    b1 = model.backend("app/b1")
    n_clients, min_rounds = 24, 12
    at_drained: list[tuple[int, int]] = []  # (b1 active in the model, b1 server finished)
    drained = trio.Event()

    def watch(event: Event) -> None:
        if event.kind == "drained" and event.target == "app/b1":
            at_drained.append((b1.active, backends[0].finished))
            drained.set()

    model.subscribe(watch)
    halfway = 0
    all_halfway = trio.Event()
    stop = trio.Event()
    intact: dict[int, bool] = {}

    async def client(i: int) -> None:
        nonlocal halfway
        sock = await connect(run.port)
        sent = bytearray()
        back = bytearray()
        rounds = 0
        while rounds < min_rounds or not stop.is_set():
            chunk = os.urandom(2048 + 97 * i + rounds)
            await send_all(sock, chunk)
            back += await recv_exactly(sock, len(chunk))
            sent += chunk
            rounds += 1
            if rounds == min_rounds // 2:
                halfway += 1
                if halfway == n_clients:
                    all_halfway.set()
        await close_cleanly(sock)
        intact[i] = back == sent

    with trio.fail_after(10):
        async with trio.open_nursery() as clients:
            for i in range(n_clients):
                clients.start_soon(client, i)
            await all_halfway.wait()  # every client is mid-stream, and keeps streaming
            assert [s.accepted for s in backends] == [8, 8, 8]
            assert b1.active == 8
            apply(model, Drain("app/b1"))
            assert not drained.is_set()
            for _ in range(9):  # new connections while b1 drains
                sock = await connect(run.port)
                await exchange(sock, b"new")
                await close_cleanly(sock)
            assert backends[0].accepted == 8
            assert sorted(s.accepted for s in backends[1:]) == [8 + 4, 8 + 5]
            stop.set()
        await drained.wait()

    assert intact == dict.fromkeys(range(n_clients), True)
    assert at_drained == [(0, 8)]  # recorded once, when the last b1 connection closed
    assert [s.finished for s in backends[:1]] == [8]
    assert all(c.end == "eof" for s in backends for c in s.conns)
    kinds = [(e.kind, e.new) for e in model.events if e.target == "app/b1"]
    assert kinds == [("state", "draining"), ("drained", "drained")]
    assert backend(model, "b1").drained


# -- max_connections -----------------------------------------------------------------------
async def test_full_backends_make_a_new_connection_wait_until_one_closes(nursery, pump):
    backends = await servers(nursery, echo, 2)
    config = make_config([s.port for s in backends], pump=pump, max_connections=1, connect=3.0)
    run = await start_engine(nursery, config)
    with trio.fail_after(5):
        first = await connect(run.port)
        await exchange(first, b"one")
        second = await connect(run.port)
        await exchange(second, b"two")
        assert [s.accepted for s in backends] == [1, 1]
        third = await connect(run.port)
        await send_all(third, b"three")
        with trio.move_on_after(0.3):  # must not be served while both backends are full
            await backends[0].changes.wait_for(lambda: sum(s.accepted for s in backends) > 2)
        assert [s.accepted for s in backends] == [1, 1]
        await close_cleanly(first)
        assert await recv_exactly(third, 5) == b"three"  # now served, by the freed b1
        await close_cleanly(second)
        await close_cleanly(third)
    assert [s.accepted for s in backends] == [2, 1]
    assert [s.peak for s in backends] == [1, 1]
    assert run.model.snapshot().pools[0].refused == 0


async def test_full_backends_refuse_after_the_connect_timeout(nursery, pump):
    (server,) = await servers(nursery, echo, 1)
    config = make_config([server.port], pump=pump, max_connections=1, connect=0.4)
    run = await start_engine(nursery, config)
    with trio.fail_after(5):
        first = await connect(run.port)
        await exchange(first, b"one")
        start = trio.current_time()
        second = await connect(run.port)
        with second:
            await send_all(second, b"two")
            try:
                data = await recv_to_eof(second)
            except ConnectionResetError:
                data = b""
        waited = trio.current_time() - start
        await exchange(first, b"still served")
        await close_cleanly(first)
    assert data == b""
    assert 0.35 <= waited < 2.0
    assert server.accepted == 1
    assert run.model.snapshot().pools[0].refused == 1


async def test_max_connections_holds_when_several_waiters_wake_at_once(nursery, pump):
    (server,) = await servers(nursery, echo, 1)
    config = make_config([server.port], pump=pump, max_connections=1, connect=3.0)
    run = await start_engine(nursery, config)
    with trio.fail_after(5):
        first = await connect(run.port)
        await exchange(first, b"first")
        waiting = [await connect(run.port) for _ in range(3)]
        for sock in waiting:
            await send_all(sock, b"x")
        await trio.testing.wait_all_tasks_blocked(0.05)  # the three wait for room
        assert server.accepted == 1
        await close_cleanly(first)  # room for exactly one of them
        await server.changes.wait_for(lambda: server.accepted >= 2)
        with trio.move_on_after(0.3):  # a second one must not get in alongside it
            await server.changes.wait_for(lambda: server.accepted >= 3)
        for sock in waiting:
            sock.close()
    assert server.peak == 1, f"max_connections = 1 but the backend had {server.peak} at once"
    assert server.accepted == 2


# -- idle timeout --------------------------------------------------------------------------
async def test_idle_tunnel_is_closed_and_active_one_is_not(nursery, pump):
    backends = await servers(nursery, echo, 1)
    idle = 0.2
    run = await start_engine(nursery, make_config([backends[0].port], pump=pump, idle=idle))
    pings = 0
    alive_long_enough = trio.Event()

    async def keep_busy(sock: trio.socket.SocketType, since: float) -> None:
        nonlocal pings
        while True:
            await exchange(sock, b"ping %d" % pings)  # fails on EOF or a wrong echo
            pings += 1
            if trio.current_time() - since > 4 * idle:
                alive_long_enough.set()
            await trio.sleep(idle / 10)  # traffic pacing, not waiting for an outcome

    with trio.fail_after(5):
        quiet = await connect(run.port)
        busy = await connect(run.port)
        await exchange(quiet, b"hello")
        start = trio.current_time()
        async with trio.open_nursery() as inner:
            inner.start_soon(keep_busy, busy, start)
            assert await recv_to_eof(quiet) == b""  # the idle tunnel is closed by tuilb
            closed_after = trio.current_time() - start
            await alive_long_enough.wait()
            inner.cancel_scope.cancel()
        await exchange(busy, b"last")
        await close_cleanly(busy)
        quiet.close()
    assert idle * 0.9 <= closed_after < idle * 5
    assert pings > 10
    assert backends[0].conns[0].end == "eof"


# -- graceful shutdown ---------------------------------------------------------------------
async def test_shutdown_stops_accepting_and_lets_open_connection_finish(nursery, pump):
    (server,) = await servers(nursery, echo, 1)
    log = RecordingLog()
    run = await start_engine(nursery, make_config([server.port], pump=pump, grace=10.0), log=log)
    with trio.fail_after(5):
        sock = await connect(run.port)
        await exchange(sock, b"before")
        run.engine.request_shutdown()
        await log.wait("shutdown")
        with pytest.raises(ConnectionRefusedError):
            (await connect(run.port)).close()
        for i in range(5):
            await exchange(sock, b"during shutdown %d" % i)
        assert not run.stopped.is_set()
        await close_cleanly(sock)
        await run.stopped.wait()
    assert server.conns[0].end == "eof"
    assert log.events()[-1] == "stopped"
    assert not any("grace period over" in str(r[2].get("cause")) for r in log.records)


async def test_shutdown_grace_cuts_a_stuck_connection(nursery, pump):
    (server,) = await servers(nursery, echo, 1)
    log = RecordingLog()
    grace = 0.3
    run = await start_engine(nursery, make_config([server.port], pump=pump, grace=grace), log=log)
    with trio.fail_after(5):
        sock = await connect(run.port)
        with sock:
            await exchange(sock, b"stuck")
            start = trio.current_time()
            run.engine.request_shutdown()
            await run.stopped.wait()
            took = trio.current_time() - start
            try:
                rest = await recv_to_eof(sock)
            except ConnectionResetError:
                rest = b""
        await server.conns[0].done.wait()
    assert rest == b""
    assert grace <= took < 2.0
    assert any("grace period over" in str(r[2].get("cause")) for r in log.records)
    assert log.events()[-1] == "stopped"


# -- resources -----------------------------------------------------------------------------
def _pipe_fds() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:")
        except OSError:
            pass
    return count


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
async def test_splice_idle_connections_do_not_each_hold_pipes(nursery):
    (server,) = await servers(nursery, echo, 1)
    run = await start_engine(nursery, make_config([server.port], pump="splice"))
    n = 20
    with trio.fail_after(5):
        warm = await connect(run.port)
        await exchange(warm, b"warm up")
        before = _pipe_fds()
        socks = []
        for i in range(n):
            sock = await connect(run.port)
            await exchange(sock, b"idle %d" % i)  # both directions now wait for data
            socks.append(sock)
        held = _pipe_fds() - before
        for sock in [warm, *socks]:
            await close_cleanly(sock)
    # Pipes are leased per chunk from a shared pool; idle tunnels should not pin them.
    assert held < n, f"{n} idle spliced connections hold {held // 2} pipes"
