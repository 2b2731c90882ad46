"""`tuilb ctl` as a user runs it: a subprocess against a running engine's admin API."""

from __future__ import annotations

import json
import sys
from typing import Any

import trio

from tests.conftest import echo, pair_text, poll, start_engine, start_server
from tuilb.config import parse

TOKEN = "ctl-test-token"


def config_text(port: int, admin: str = "127.0.0.1:0") -> str:
    return pair_text(port, tail=f'[admin]\nlisten = "{admin}"\ntoken = "{TOKEN}"\n')


async def ctl(run: Any, *words: str, token: str | None = TOKEN) -> tuple[int, str, str]:
    argv = [sys.executable, "-m", "tuilb", "ctl", "--admin", run.engine.admin_address]
    if token is not None:
        argv += ["--token", token]
    result = await trio.run_process(
        [*argv, *words], capture_stdout=True, capture_stderr=True, check=False
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def engine(nursery: trio.Nursery) -> Any:
    backend = await start_server(nursery, echo)
    return await start_engine(nursery, parse(config_text(backend.port), "<t>"))


async def test_status_as_a_table_and_as_json(nursery):
    run = await engine(nursery)
    code, out, _ = await ctl(run, "status")
    assert code == 0
    assert "app/a" in out and "app/b" in out and "ready" in out
    code, out, _ = await ctl(run, "status", "--json")
    data = json.loads(out)
    assert [b["name"] for b in data["pools"][0]["backends"]] == ["a", "b"]


async def test_commands_change_the_model_and_say_what_they_did(nursery):
    run = await engine(nursery)
    a = run.model.backend("app/a")
    assert await ctl(run, "drain", "app/a") == (0, "app/a: draining\n", "")
    assert a.admin == "draining"
    code, out, _ = await ctl(run, "weight", "app/a", "-2")
    assert (code, out, a.weight) == (0, "app/a: weight 1\n", 1)
    code, out, _ = await ctl(run, "status")
    assert "1 (config 3)" in out  # a value the operator changed is marked
    code, out, _ = await ctl(run, "reset", "app/a")
    assert code == 0 and (a.admin, a.weight) == ("ready", 3)
    code, out, _ = await ctl(run, "events")
    assert "app/a state: ready -> draining  (admin API: drain)" in out


async def test_refusals_and_usage_errors_have_their_exit_codes(nursery):
    run = await engine(nursery)
    code, _, err = await ctl(run, "drain", "app/a", token="wrong-token-x")
    assert (code, err) == (1, "tuilb ctl: a valid token is needed\n")
    code, _, err = await ctl(run, "drain", "app/zz")
    assert (code, err) == (1, "tuilb ctl: no backend 'app/zz'\n")
    code, _, err = await ctl(run, "weight", "app/a", "many")
    assert code == 2 and "bad weight 'many'" in err
    code, _, err = await ctl(run, "drain", "nopool")
    assert code == 2 and "POOL/BACKEND" in err
    code, _, err = await ctl(run, "frobnicate")
    assert code == 2  # argparse's usage error
    assert run.model.backend("app/a").admin == "ready"


async def test_an_unreachable_admin_is_one_line_and_exit_1():
    result = await trio.run_process(
        [sys.executable, "-m", "tuilb", "ctl", "--admin", "127.0.0.1:1", "status"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.decode().startswith("tuilb ctl: cannot reach the admin API at 127.0.0.1:1")
    assert len(result.stderr.decode().splitlines()) == 1


async def test_drain_wait_returns_when_the_last_connection_closes(nursery):
    run = await engine(nursery)
    client = await trio.open_tcp_stream("127.0.0.1", run.port)
    await client.send_all(b"x")  # an open connection through the proxy
    with trio.fail_after(5):
        await poll(lambda: run.engine.active_connections > 0)
    target = next(b for b in run.model.pools["app"].backends if b.active)
    results: list[tuple[int, str, str]] = []

    async def wait() -> None:
        results.append(await ctl(run, "drain", f"app/{target.name}", "--wait", "--timeout", "20"))

    async with trio.open_nursery() as inner:
        inner.start_soon(wait)
        with trio.fail_after(10):
            await poll(lambda: target.admin == "draining")
        assert not results  # still waiting: a connection is open
        await client.aclose()
    code, out, _ = results[0]
    assert code == 0 and out.endswith(f"app/{target.name}: drained\n")


async def test_drain_wait_times_out_with_exit_1(nursery):
    run = await engine(nursery)
    client = await trio.open_tcp_stream("127.0.0.1", run.port)
    await client.send_all(b"x")
    with trio.fail_after(5):
        await poll(lambda: run.engine.active_connections > 0)
    target = next(b for b in run.model.pools["app"].backends if b.active)
    code, _, err = await ctl(run, "drain", f"app/{target.name}", "--wait", "--timeout", "0.3")
    assert code == 1 and "still has 1 connection(s) after 0.3s" in err
    await client.aclose()


async def test_events_follow_prints_new_events_as_they_happen(nursery):
    import subprocess

    run = await engine(nursery)
    argv = [sys.executable, "-m", "tuilb", "ctl", "--admin", run.engine.admin_address]
    process = await trio.lowlevel.open_process(
        [*argv, "events", "--follow"], stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        code, _, _ = await ctl(run, "disable", "app/b")
        assert code == 0
        seen = b""
        with trio.fail_after(10):
            while b"app/b state: ready -> disabled" not in seen:
                chunk = await process.stdout.receive_some(4096)
                assert chunk, "ctl events --follow ended"
                seen += chunk
    finally:
        process.terminate()
        await process.wait()
