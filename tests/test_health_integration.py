"""Health checking end to end: the engine, three real backends, client load.

Backends are trio servers on 127.0.0.1 that say their name and echo; a backend can be
killed (listener and every connection closed at once) and brought back on its port.
Clients run bounded loops of short connections and record when each started, which
backend answered and whether it failed. Health state changes are taken from the model's
events together with trio's clock at the moment they happen.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import trio

from tests.conftest import (
    CHUNK,
    LINGER_RESET,
    Changes,
    Running,
    connect,
    poll,
    recv_exactly,
    recv_line,
    recv_to_eof,
    refused_port,
    send_all,
)
from tuilb.checks import probe
from tuilb.config import Address, Config, parse
from tuilb.engine import Engine
from tuilb.health import Health
from tuilb.healthconf import HealthConfig
from tuilb.model import BackendSnapshot, Event, Model


# -- configuration -------------------------------------------------------------------------
def table(name: str, values: dict[str, Any] | None) -> str:
    if not values:
        return ""
    return f"[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())


def engine_config(
    ports: list[int],
    *,
    algorithm: str = "round_robin",
    health: dict[str, Any] | None = None,
    passive: dict[str, Any] | None = None,
    slow_start: float = 0.0,
) -> Config:
    text = (
        '[[listeners]]\nname = "front"\nbind = "127.0.0.1:0"\npool = "app"\n\n'
        f'[pools.app]\nalgorithm = "{algorithm}"\n'
    )
    if slow_start:
        text += f"slow_start = {slow_start}\n"
    for i, port in enumerate(ports, start=1):
        text += f'\n[[pools.app.backends]]\nname = "b{i}"\naddress = "127.0.0.1:{port}"\n'
    text += "\n" + table("pools.app.health", health) + table("pools.app.passive", passive)
    return parse(text + "\n[timeouts]\nconnect = 2.0\nidle = 60.0\nshutdown_grace = 1.0\n", "<t>")


async def start(nursery: trio.Nursery, config: Config, probe_: Any = None) -> Running:
    """Like conftest.start_engine, with the chance to replace the probe before any check."""
    engine = Engine(config)
    if probe_ is not None:
        engine.health.probe = probe_
    stopped = trio.Event()

    async def run(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        await engine.run(task_status=task_status)
        stopped.set()

    bound = await nursery.start(run)
    return Running(engine, bound[0].port, stopped)


# -- backends ------------------------------------------------------------------------------
class Backend:
    """Says its name on a line, then echoes; can be killed and brought back on its port."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = 0
        self.listener: trio.socket.SocketType | None = None
        self.conns: set[trio.socket.SocketType] = set()

    async def start(self, nursery: trio.Nursery) -> None:
        await nursery.start(self._serve)

    async def _serve(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listener = trio.socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        await listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self.listener = listener
        task_status.started()
        async with trio.open_nursery() as nursery:
            with listener:
                while True:
                    try:
                        sock, _ = await listener.accept()
                    except (trio.ClosedResourceError, OSError):
                        return  # killed
                    self.conns.add(sock)
                    nursery.start_soon(self._run, sock)

    async def _run(self, sock: trio.socket.SocketType) -> None:
        try:
            with sock:
                await send_all(sock, self.name.encode() + b"\n")
                while data := await sock.recv(CHUNK):
                    await send_all(sock, data)
        except (OSError, trio.ClosedResourceError):
            pass  # health checks hang up at once; killed connections end here too
        finally:
            self.conns.discard(sock)

    def kill(self) -> None:
        """Close the listener and every connection now: connects are refused from here on."""
        assert self.listener is not None
        self.listener.close()
        self.listener = None
        for sock in list(self.conns):
            sock.close()


async def backends(nursery: trio.Nursery, names: str = "b1 b2 b3") -> list[Backend]:
    out = [Backend(name) for name in names.split()]
    for b in out:
        await b.start(nursery)
    return out


class Resetter:
    """Reads the client's first bytes, then closes with SO_LINGER 0: each connection is
    reset after it was established (so the proxy's connect succeeded)."""

    def __init__(self) -> None:
        self.port = 0
        self.accepted = 0

    async def serve(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with trio.socket.socket() as listener:
            await listener.bind(("127.0.0.1", 0))
            listener.listen(128)
            self.port = listener.getsockname()[1]
            task_status.started()
            async with trio.open_nursery() as nursery:
                while True:
                    sock, _ = await listener.accept()
                    self.accepted += 1
                    nursery.start_soon(self._reset, sock)

    async def _reset(self, sock: trio.socket.SocketType) -> None:
        with sock:
            await sock.recv(CHUNK)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)


# -- clients -------------------------------------------------------------------------------
@dataclass
class Attempt:
    started: float
    ended: float = 0.0
    backend: str = ""  # who answered
    error: str = ""


class Load:
    """Client tasks making short connections: "ping", the backend's name line and the echo,
    then a clean close."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.attempts: list[Attempt] = []
        self.stop = trio.Event()
        self.changes = Changes()

    def start(self, nursery: trio.Nursery, clients: int, rounds: int = 5000) -> None:
        for _ in range(clients):
            nursery.start_soon(self._client, rounds)

    async def _client(self, rounds: int) -> None:
        for _ in range(rounds):
            if self.stop.is_set():
                return
            attempt = Attempt(trio.current_time())
            self.attempts.append(attempt)
            try:
                sock = await connect(self.port)
                with sock:
                    await send_all(sock, b"ping")
                    attempt.backend = (await recv_line(sock)).decode().strip()
                    if await recv_exactly(sock, 4) != b"ping":
                        raise EOFError("wrong echo")
                    sock.shutdown(socket.SHUT_WR)
                    if await recv_to_eof(sock) != b"":
                        raise EOFError("data after the echo")
            except (OSError, EOFError, AssertionError) as exc:
                attempt.error = repr(exc)
            attempt.ended = trio.current_time()
            self.changes.notify()

    def done(self, predicate: Callable[[Attempt], bool] = lambda a: True) -> list[Attempt]:
        return [a for a in self.attempts if a.ended and predicate(a)]

    async def wait(self, predicate: Callable[[Attempt], bool], count: int) -> None:
        await self.changes.wait_for(lambda: len(self.done(predicate)) >= count)


# -- watching the model --------------------------------------------------------------------
@dataclass
class Mark:
    t: float  # trio time
    event: Event
    failed: int  # the backend's failed connects at that moment
    assigned: int  # connections ever assigned to it: total + failed connects (an aborted
    # connect moves one from total to failed; only a new assignment raises the sum)
    snap: BackendSnapshot  # the backend as the event left it


class Watch:
    def __init__(self, model: Model) -> None:
        self.model = model
        self.marks: list[Mark] = []
        self.changes = Changes()
        model.subscribe(self._on_event)

    def _on_event(self, event: Event) -> None:
        b = self.model.backend(event.target)
        assigned = b.total + b.failed_connects
        snap = self.model.snapshot().backend(event.target)
        self.marks.append(Mark(trio.current_time(), event, b.failed_connects, assigned, snap))
        self.changes.notify()

    def of(self, target: str, kind: str, new: str | None = None) -> list[Mark]:
        return [
            m
            for m in self.marks
            if m.event.target == target
            and m.event.kind == kind
            and (new is None or m.event.new == new)
        ]

    async def wait(self, target: str, kind: str, new: str, count: int = 1) -> Mark:
        await self.changes.wait_for(lambda: len(self.of(target, kind, new)) >= count)
        return self.of(target, kind, new)[count - 1]


def all_up(model: Model) -> bool:
    return all(b.health is Health.UP for b in model.pools["app"].backends)


TCP_CHECKS = {"type": "tcp", "interval": 0.05, "timeout": 0.5, "rise": 2, "fall": 2}


# -- kill and restart under load -----------------------------------------------------------
async def test_killed_backend_gets_no_new_connection_once_down_and_rejoins_after_rise(nursery):
    servers = await backends(nursery)
    run = await start(nursery, engine_config([s.port for s in servers], health=TCP_CHECKS))
    model = run.model
    watch = Watch(model)
    b2 = model.backend("app/b2")
    load = Load(run.port)
    with trio.fail_after(15):
        async with trio.open_nursery() as clients:
            await watch.changes.wait_for(lambda: all_up(model))
            load.start(clients, clients=6)
            await load.wait(lambda a: a.backend == "b2", 20)  # steady load, b2 serving
            killed_at = trio.current_time()
            servers[1].kill()
            down = await watch.wait("app/b2", "health", "down")
            await load.wait(lambda a: a.started > down.t, 150)
            await servers[1].start(nursery)  # back on the same port
            up = await watch.wait("app/b2", "health", "up", count=2)
            await load.wait(lambda a: a.started > up.t and a.backend == "b2", 20)
            load.stop.set()

    failed = load.done(lambda a: bool(a.error))
    assert all(a.started < killed_at for a in failed), [
        (a.started - killed_at, a.error) for a in failed if a.started >= killed_at
    ]
    # The window between the kill and "down": connects to b2 were refused and retried.
    in_window = load.done(lambda a: killed_at < a.started < down.t)
    assert in_window and not any(a.error for a in in_window)
    assert b2.failed_connects >= 1
    assert b2.last_error == "connect refused"
    # While down, no connection at all was assigned to b2.
    assert up.assigned == down.assigned
    while_down = load.done(lambda a: a.started > down.t and a.ended < up.t)
    assert len(while_down) >= 150
    assert {a.backend for a in while_down} == {"b1", "b3"}
    # Causes, and the rejoin after exactly `rise` good checks.
    assert down.event.cause == "health: down after 2 failed checks (last: connect refused)"
    assert up.event.cause == "health: up after 2 successful checks (last: connected)"
    assert [(c.ok, c.reason) for c in up.snap.checks[-3:]] == [
        (False, "connect refused"),
        (True, "connected"),
        (True, "connected"),
    ]
    assert up.snap.eligible and up.snap.health_progress == "2/2"
    health = [(m.event.old, m.event.new) for m in watch.of("app/b2", "health")]
    assert health == [("unknown", "up"), ("up", "down"), ("down", "up")]
    assert all(not watch.of(f"app/{n}", "health", "down") for n in ("b1", "b3"))


async def test_slow_start_ramps_a_returning_backends_share(nursery):
    servers = await backends(nursery)
    slow = 1.0
    config = engine_config(
        [s.port for s in servers],
        algorithm="weighted_round_robin",
        health=TCP_CHECKS,
        slow_start=slow,
    )
    run = await start(nursery, config)
    model = run.model
    watch = Watch(model)
    b2 = model.backend("app/b2")
    pool = model.pools["app"]
    load = Load(run.port)
    samples: list[tuple[float, float, float]] = []  # (time since up, effective weight, share)

    def totals() -> tuple[int, int]:
        return b2.total, sum(b.total for b in pool.backends)

    with trio.fail_after(15):
        async with trio.open_nursery() as clients:
            await watch.changes.wait_for(lambda: all_up(model))
            load.start(clients, clients=6)
            await load.wait(lambda a: True, 50)
            servers[1].kill()
            await watch.wait("app/b2", "health", "down")
            await servers[1].start(nursery)
            up = await watch.wait("app/b2", "health", "up", count=2)
            ramping = await watch.wait("app/b2", "slow_start", "ramping")
            # Early in the ramp: until the weight has passed 0.4.
            early_start = totals()
            await poll(lambda: b2.effective_weight >= 0.4)
            early_end = totals()
            while b2.ramp < 1.0:  # observe the ramp as it moves (sampling, not waiting)
                samples.append((trio.current_time() - up.t, b2.effective_weight, b2.ramp))
                await trio.sleep(0.02)
            full = await watch.wait("app/b2", "slow_start", "full")
            full_start = totals()
            await load.wait(lambda a: a.started > full.t, 300)
            full_end = totals()
            load.stop.set()

    assert ramping.t == pytest.approx(up.t, abs=0.05)  # the ramp starts with the return
    assert ramping.event.cause == "slow start (back up): ramping to full weight over 1s"
    assert (ramping.snap.effective_weight, ramping.snap.slow_start) == (0.1, 0.1)
    weights = [w for _, w, _ in samples]
    assert weights == sorted(weights)  # rises ...
    assert len(set(weights)) >= 5  # ... in steps, not at once
    assert full.t - up.t >= slow * 0.95  # full weight only after the configured time
    assert full.t - up.t < slow + 1.0
    assert model.snapshot().backend("app/b2").effective_weight == 1.0

    def share(a: tuple[int, int], b: tuple[int, int]) -> float:
        return (b[0] - a[0]) / max(1, b[1] - a[1])

    early, later = share(early_start, early_end), share(full_start, full_end)
    assert early_end[1] - early_start[1] >= 30  # enough connections to judge a share
    assert early < 0.2, f"b2 took {early:.0%} while ramping from a tenth of its weight"
    assert 0.27 < later < 0.4, f"b2 took {later:.0%} at full weight (expected a third)"


# -- passive ejection ----------------------------------------------------------------------
PASSIVE = {"consecutive_failures": 3, "eject_time": 0.3, "max_eject_time": 5.0}


async def test_refusing_backend_is_ejected_returns_and_a_repeat_doubles(nursery):
    dead, dead_port = refused_port()
    with dead:
        good = await backends(nursery, "b2 b3")
        config = engine_config([dead_port, good[0].port, good[1].port], passive=PASSIVE)
        run = await start(nursery, config)
        model = run.model
        watch = Watch(model)
        load = Load(run.port)
        snaps = []
        model.subscribe(
            lambda e: (
                snaps.append(model.snapshot().backend("app/b1"))
                if e.kind == "eject" and e.new == "ejected"
                else None
            )
        )
        with trio.fail_after(10):
            async with trio.open_nursery() as clients:
                load.start(clients, clients=1)  # one client: the failures come in order
                back = await watch.wait("app/b1", "eject", "in", count=2)
                load.stop.set()

    out = watch.of("app/b1", "eject", "ejected")
    returns = watch.of("app/b1", "eject", "in")
    assert [m.event.cause for m in out] == [
        "passive: 3 failures in a row (last: connect refused); out for 0.3s",
        "passive: 3 failures in a row (last: connect refused); out for 0.6s",
    ]
    assert [m.event.cause for m in returns] == ["passive: ejection time over"] * 2
    assert returns[1] is back
    for ejected, returned, seconds in zip(out, returns, (0.3, 0.6), strict=True):
        assert seconds <= returned.t - ejected.t < seconds + 0.25
        assert returned.failed == ejected.failed  # not tried at all while ejected
    assert [m.failed for m in out] == [3, 6]  # three more failures after it came back
    assert [(s.ejected, s.eligible, s.ejections) for s in snaps] == [
        (True, False, 1),
        (True, False, 2),
    ]
    assert 0.25 < snaps[0].eject_left <= 0.3 and 0.55 < snaps[1].eject_left <= 0.6
    assert not any(a.error for a in load.attempts if a.ended)  # connect retry hid every one
    assert {a.backend for a in load.done()} == {"b2", "b3"}


async def test_last_eligible_backend_of_a_pool_is_never_ejected(nursery):
    dead1, port1 = refused_port()
    dead2, port2 = refused_port()
    with dead1, dead2:
        config = engine_config(
            [port1, port2], passive={**PASSIVE, "eject_time": 30.0, "max_eject_time": 60.0}
        )
        run = await start(nursery, config)
        model = run.model
        watch = Watch(model)
        with trio.fail_after(5):
            for _ in range(8):  # every connection is tried on both backends and refused
                sock = await connect(run.port)
                with sock:
                    try:
                        assert await recv_to_eof(sock) == b""
                    except ConnectionResetError:
                        pass
            await poll(lambda: model.pools["app"].refused == 8)

    snap = model.snapshot()
    b1, b2 = snap.backend("app/b1"), snap.backend("app/b2")
    assert [m.event.cause for m in watch.of("app/b1", "eject", "ejected")] == [
        "passive: 3 failures in a row (last: connect refused); out for 30s"
    ]
    assert b1.ejected and not b1.eligible
    assert watch.of("app/b2", "eject", "ejected") == []
    spared = watch.of("app/b2", "eject", "in")
    assert len(spared) == 2  # at the 3rd and the 6th connection (b1 out after the 3rd)
    assert all(
        m.event.cause == "passive: 3 failures in a row (last: connect refused), but it is the "
        "last eligible backend of pool 'app': not ejected"
        for m in spared
    )
    assert not b2.ejected and b2.eligible
    assert b2.failed_connects == 8  # still tried for every connection


@pytest.mark.parametrize(
    "failures",
    [1, 3],
)
async def test_resetting_backend_is_ejected_after_consecutive_resets(nursery, failures):
    resetter = Resetter()
    await nursery.start(resetter.serve)
    good = await backends(nursery, "b2 b3")
    passive = {**PASSIVE, "consecutive_failures": failures}
    run = await start(
        nursery, engine_config([resetter.port, *(g.port for g in good)], passive=passive)
    )
    model = run.model
    watch = Watch(model)
    load = Load(run.port)
    with trio.fail_after(5):
        async with trio.open_nursery() as clients:
            load.start(clients, clients=1, rounds=10 * failures + 10)  # bounded
            await load.changes.wait_for(
                lambda: (
                    bool(watch.of("app/b1", "eject", "ejected"))
                    or len(load.done()) >= 10 * failures
                )
            )
            load.stop.set()

    out = watch.of("app/b1", "eject", "ejected")
    assert out, f"{model.backend('app/b1').resets} resets, never ejected"
    assert out[0].event.cause == (
        f"passive: {failures} failures in a row (last: reset by backend); out for 0.3s"
    )
    assert resetter.accepted == failures


# -- flapping ------------------------------------------------------------------------------
class Flapper:
    """A port that listens or refuses, switched by the test between two checks."""

    def __init__(self) -> None:
        self.port = 0
        self.sock: socket.socket | None = None

    def set(self, up: bool) -> None:
        if up and self.sock is None:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self.port))
            sock.listen(64)  # the kernel completes the handshakes; that is all a check needs
            self.port = sock.getsockname()[1]
            self.sock = sock
        elif not up and self.sock is not None:
            self.sock.close()
            self.sock = None


async def test_flapping_backend_changes_state_no_faster_than_rise_and_fall(nursery):
    flapper = Flapper()
    flapper.set(True)
    others = await backends(nursery, "b2 b3")
    # Up/down faster than fall = 3 while up, faster than rise = 2 while down.
    plan = [True] + [False, False, True] * 4 + [False] * 3 + [True, False] * 4 + [True] * 2
    seen: list[tuple[bool, bool]] = []  # (listening, check passed), b1 only
    checked = Changes()

    async def flapping_probe(address: Address, config: HealthConfig) -> Any:
        if address.port != flapper.port:
            return await probe(address, config)
        up = plan[len(seen)] if len(seen) < len(plan) else True
        flapper.set(up)
        result = await probe(address, config)
        seen.append((up, result.ok))
        checked.notify()
        return result

    health = {**TCP_CHECKS, "interval": 0.02, "rise": 2, "fall": 3}
    config = engine_config([flapper.port, *(o.port for o in others)], health=health)
    run = await start(nursery, config, flapping_probe)
    watch = Watch(run.model)
    at_check: list[int] = []  # how many b1 checks had run when its health changed
    run.model.subscribe(
        lambda e: at_check.append(len(seen)) if (e.target, e.kind) == ("app/b1", "health") else None
    )
    try:
        with trio.fail_after(5):
            await checked.wait_for(lambda: len(seen) >= len(plan))
    finally:
        flapper.set(False)

    assert [up for up, _ in seen[: len(plan)]] == plan
    assert [ok for _, ok in seen[: len(plan)]] == plan  # every check saw the flap
    changes = watch.of("app/b1", "health")
    assert [(m.event.old, m.event.new, m.event.cause) for m in changes] == [
        ("unknown", "up", "health: up after the first check passed (connected)"),
        ("up", "down", "health: down after 3 failed checks (last: connect refused)"),
        ("down", "up", "health: up after 2 successful checks (last: connected)"),
    ]
    # Where they fell: the first check; the third failure in a row (check 16); the second
    # pass in a row (check 26). Nothing in between, though the port flapped all along.
    assert at_check == [1, 16, 26]
