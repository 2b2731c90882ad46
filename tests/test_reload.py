"""Configuration reload: what may change in place (a table), how the model takes it, and
reloads under steady load that lose no connection."""

from __future__ import annotations

from pathlib import Path

import h11
import pytest
import trio
import trio.testing

from tests.conftest import (
    close_cleanly,
    config_text,
    connect,
    echo,
    exchange,
    named,
    recv_line,
    start_engine,
    start_server,
)
from tuilb import reload
from tuilb.config import load, parse
from tuilb.errors import CommandError
from tuilb.model import AdminState, Model


def conf(ports: list[int], **options: object) -> str:
    return config_text(ports, **options)  # type: ignore[arg-type]


def test_plan_of_backend_changes() -> None:
    old = parse(conf([1, 2]), "<t>")
    new = parse(conf([1, 3, 4]).replace('name = "b3"', 'name = "b3"\nweight = 2', 1), "<t>")
    plan = reload.plan(old, new)
    assert plan.blockers == ()
    assert plan.backends_added == ("app/b3",)
    assert plan.backends_changed == ("app/b2",)  # b2 now points at port 3
    assert plan.pools_changed == ("app",)
    assert "backends added: app/b3" in plan.summary()


def test_plan_of_listener_changes() -> None:
    old = parse(conf([1]), "<t>")
    assert reload.plan(old, parse(conf([1], pump="splice"), "<t>")).listeners_changed == ("front",)
    every = reload.plan(old, parse(conf([1], connect=9.0), "<t>"))
    assert every.listeners_changed == ("front",) and every.blockers == ()  # proxies renewed
    two = conf([1]).replace(
        "[pools.app]",
        '[[listeners]]\nname = "more"\nbind = "127.0.0.1:0"\npool = "app"\n\n[pools.app]',
    )
    assert reload.plan(old, parse(two, "<t>")).listeners_added == ("more",)
    assert reload.plan(parse(two, "<t>"), old).listeners_removed == ("more",)


def test_plan_refuses_admin_and_state_changes() -> None:
    old = parse(conf([1]), "<t>")
    new = parse(conf([1]) + '\n[admin]\nlisten = "127.0.0.1:9900"\n', "<t>")
    assert reload.plan(old, new).blockers == ("[admin] changed: restart tuilb to apply",)


def test_the_model_keeps_operator_weights_and_drains_removed_backends() -> None:
    old = parse(conf([1, 2, 3]), "<t>")
    model = Model(old.pools.values())
    b1, b2, b3 = (model.backend(f"app/b{i}") for i in (1, 2, 3))
    model.set_weight(b1, 7, "operator")  # an operator's choice survives
    model.connection_started(b3)  # b3 has a connection open
    text = conf([1, 2]).replace('name = "b2"', 'name = "b2"\nweight = 4', 1)
    text = text.replace('name = "b1"', 'name = "b1"\nweight = 9', 1)
    model.reconfigure(parse(text, "<t>").pools.values())
    assert (b1.weight, b2.weight) == (7, 4)
    assert b3.retired and b3.admin is AdminState.DRAINING and not b3.eligible
    assert [b.name for b in model.pools["app"].backends] == ["b1", "b2", "b3"]
    model.connection_ended(b3)  # its last connection: it goes
    assert [b.name for b in model.pools["app"].backends] == ["b1", "b2"]
    causes = [e.cause for e in model.events if e.target == "app/b3"]
    assert causes[0] == "reload: removed from the configuration"
    assert causes[-1] == "reload: gone once idle"


async def _write(path: Path, text: str) -> None:
    await trio.Path(path).write_text(text)


async def test_ten_reloads_under_load_lose_no_connection(nursery, tmp_path):
    servers = [await start_server(nursery, echo) for _ in range(3)]
    ports = [s.port for s in servers]
    path = tmp_path / "tuilb.conf"
    path.write_text(conf(ports[:2]))
    run = await start_engine(nursery, load(path))
    failures: list[BaseException] = []
    done = 0

    async def client() -> None:
        nonlocal done
        for i in range(60):
            try:
                sock = await connect(run.port)
                await exchange(sock, b"ping %d" % i)
                await close_cleanly(sock)
                done += 1
            except BaseException as exc:
                failures.append(exc)
                return

    with trio.fail_after(30):
        async with trio.open_nursery() as load_nursery:
            for _ in range(4):
                load_nursery.start_soon(client)
            for i in range(10):
                await trio.sleep(0.02)  # let traffic flow between reloads
                # backends and the listener's pump change every time: a new proxy takes
                # over the same socket each reload
                pump = "splice" if i % 2 else "default"
                await _write(path, conf(ports[:2] if i % 2 else ports, pump=pump))
                assert run.engine.reload_from_file().startswith("reloaded")
    assert failures == [] and done == 240
    assert sum(s.accepted for s in servers[2:]) > 0  # the added backend took traffic


async def test_an_invalid_or_refused_reload_changes_nothing(nursery, tmp_path):
    server = await start_server(nursery, echo)
    path = tmp_path / "tuilb.conf"
    path.write_text(conf([server.port]))
    run = await start_engine(nursery, load(path))
    before = run.model.snapshot()
    path.write_text("[[listeners]]\nname = 5\n")
    with pytest.raises(CommandError, match="problem"):
        run.engine.reload_from_file()
    path.write_text(conf([server.port]) + '\n[admin]\nlisten = "127.0.0.1:0"\n')
    with pytest.raises(CommandError, match=r"\[admin\] changed: restart tuilb to apply"):
        run.engine.reload_from_file()
    assert run.model.snapshot().pools == before.pools


async def test_ctl_reload_through_the_admin_api(nursery, tmp_path):
    import sys

    server = await start_server(nursery, echo)
    path = tmp_path / "tuilb.conf"
    admin = '\n[admin]\nlisten = "127.0.0.1:0"\n'
    path.write_text(conf([server.port]) + admin)
    run = await start_engine(nursery, load(path))
    argv = [sys.executable, "-m", "tuilb", "ctl", "--admin", str(run.engine.admin_address)]

    async def ctl(*words: str) -> tuple[int, str, str]:
        result = await trio.run_process(
            [*argv, *words], capture_stdout=True, capture_stderr=True, check=False
        )
        return result.returncode, result.stdout.decode(), result.stderr.decode()

    await _write(path, conf([server.port, server.port]) + admin)
    code, out, _ = await ctl("reload")
    assert (code, out) == (0, "reloaded: backends added: app/b2\n")
    assert [b.name for b in run.model.pools["app"].backends] == ["b1", "b2"]
    await _write(path, "[[listeners]]\n" + admin)
    code, _, err = await ctl("reload")
    assert code == 1 and "problem(s)" in err and "line" in err
    assert [b.name for b in run.model.pools["app"].backends] == ["b1", "b2"]


async def test_listeners_added_removed_and_changed_by_a_reload(nursery, tmp_path):
    one = await start_server(nursery, named, "one")
    two = await start_server(nursery, named, "two")
    path = tmp_path / "tuilb.conf"
    base = conf([one.port])
    path.write_text(base)
    run = await start_engine(nursery, load(path))
    kept = await connect(run.port)  # an open connection through "front" across reloads
    assert await recv_line(kept) == b"one\n"
    extra = (
        '[[listeners]]\nname = "more"\nbind = "127.0.0.1:0"\npool = "other"\n\n'
        f'[pools.other]\n[[pools.other.backends]]\nname = "x"\naddress = "127.0.0.1:{two.port}"\n\n'
    )
    await _write(path, base.replace("[pools.app]", extra + "[pools.app]"))
    message = run.engine.reload_from_file()
    assert "listeners added: more" in message
    more = next(b.port for b in run.engine.bound if b.listener == "more")
    sock = await connect(more)
    assert await recv_line(sock) == b"two\n"
    await close_cleanly(sock)
    # change "front" to the other pool: new connections go there, the open one stays
    await _write(
        path,
        base.replace('pool = "app"', 'pool = "other"', 1).replace(
            "[pools.app]", extra.replace('name = "more"', 'name = "more2"') + "[pools.app]"
        ),
    )
    message = run.engine.reload_from_file()
    assert "listeners changed: front" in message and "listeners removed: more" in message
    sock = await connect(run.port)  # the same port: its socket was kept
    assert await recv_line(sock) == b"two\n"
    await close_cleanly(sock)
    with pytest.raises(OSError):
        (await connect(more)).close()  # "more" is gone
    await exchange(kept, b"still here")  # the connection from before carries on
    await close_cleanly(kept)


async def test_a_port_in_use_refuses_the_whole_reload(nursery, tmp_path):
    server = await start_server(nursery, echo)
    path = tmp_path / "tuilb.conf"
    path.write_text(conf([server.port]))
    run = await start_engine(nursery, load(path))
    taken = next(b.port for b in run.engine.bound)
    clash = conf([server.port, server.port]).replace(
        "[pools.app]",
        f'[[listeners]]\nname = "clash"\nbind = "127.0.0.1:{taken}"\npool = "app"\n\n[pools.app]',
    )
    await _write(path, clash)
    with pytest.raises(CommandError, match="cannot listen on"):
        run.engine.reload_from_file()
    assert [b.name for b in run.model.pools["app"].backends] == ["b1"]  # nothing changed
    assert [b.listener for b in run.engine.bound] == ["front"]


async def test_ten_reloads_under_http_load_lose_no_request(nursery, tmp_path):
    from tests.l7util import Client, start_backends

    backends = await start_backends(nursery, "a", "b", "c")
    ports = [b.port for b in backends]

    def http_conf(use: list[int], keepalive: float) -> str:
        text = conf(use).replace('pump = "default"\n', 'pump = "default"\nprotocol = "http"\n', 1)
        return text.replace("[timeouts]\n", f"[timeouts]\nkeepalive = {keepalive}\n", 1)

    path = tmp_path / "tuilb.conf"
    path.write_text(http_conf(ports[:2], 15))
    run = await start_engine(nursery, load(path))
    statuses: list[int] = []

    async def client(keep_alive: bool) -> None:
        conn = await Client.open(run.port)
        for i in range(40):
            # A response from a draining backend says Connection: close: open a new one.
            if not keep_alive or conn.conn.our_state is h11.MUST_CLOSE:
                await conn.aclose()
                conn = await Client.open(run.port)
            answer = await conn.request("GET", f"/{i}")
            statuses.append(answer.status if answer.complete else -1)
        await conn.aclose()

    with trio.fail_after(30):
        async with trio.open_nursery() as load_nursery:
            for keep in (True, False, True):
                load_nursery.start_soon(client, keep)
            for i in range(10):
                await trio.sleep(0.02)
                # backends change, and every other time the timeouts: new proxies each time
                await _write(path, http_conf(ports[:2] if i % 2 else ports, 15 + i % 2))
                assert run.engine.reload_from_file().startswith("reloaded")
    assert statuses == [200] * 120


async def test_a_reload_right_after_another_replaces_a_loop_that_never_ran(nursery, tmp_path):
    """Two reloads with no checkpoint between: the accept loop the first one started has not
    run when the second closes its socket; that must not fail the engine."""
    server = await start_server(nursery, named, "one")
    path = tmp_path / "tuilb.conf"
    path.write_text(conf([server.port]))
    run = await start_engine(nursery, load(path))
    path.write_text(conf([server.port], pump="splice"))  # a new proxy on the same socket
    run.engine.reload_from_file()
    path.write_text(conf([server.port], pump="splice", bind="127.0.0.2:0"))  # a new socket
    run.engine.reload_from_file()
    with trio.fail_after(5):
        await trio.testing.wait_all_tasks_blocked()
    port = next(b.port for b in run.engine.bound)
    sock = trio.socket.socket()
    with sock:
        await sock.connect(("127.0.0.2", port))
        assert await recv_line(sock) == b"one\n"
    assert not run.stopped.is_set()
