"""The admin API: its decisions as a table (adminapi.handle) and the server over real
sockets (TCP and a unix socket), /metrics read back with prometheus-client's parser."""

from __future__ import annotations

import json
import os
import stat
from typing import Any

import h11
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import pair_text, start_engine
from tuilb import adminapi, control
from tuilb.config import parse
from tuilb.errors import ConfigError
from tuilb.model import Model

TEXT = pair_text(weight_a=2, listener="web")
TOKEN = "t0ken-for-tests"
HOST = "127.0.0.1:9900"


def context(token: str | None = TOKEN, hosts: frozenset[str] = frozenset({HOST})) -> Any:
    config = parse(TEXT, "<t>")
    model = Model(config.pools.values())
    ctx = adminapi.Context(
        config=config,
        snapshot=model.snapshot,
        events_since=model.events_since,
        apply=lambda command: control.apply(model, command, "admin API"),
        allowed_hosts=hosts,
        token=token,
        metrics=lambda: "metrics here\n",
    )
    return ctx, model


def call(ctx: Any, method: str, target: str, body: bytes = b"", **headers: str) -> Any:
    sent = {"host": HOST, **{k.replace("_", "-"): v for k, v in headers.items()}}
    return adminapi.handle(ctx, method, target, sent, body)


AUTH = {"authorization": f"Bearer {TOKEN}"}
B = "/api/v1/backends"

CASES: list[tuple[str, str, str, bytes, dict[str, str], int, str]] = [
    # (label, method, target, body, headers, status, fragment of the JSON)
    ("status", "GET", "/api/v1/status", b"", {}, 200, '"algorithm": "weighted_round_robin"'),
    ("status by POST", "POST", "/api/v1/status", b"", AUTH, 405, "use GET"),
    ("events", "GET", "/api/v1/events?since=0", b"", {}, 200, '"events": []'),
    ("events with a bad since", "GET", "/api/v1/events?since=x", b"", {}, 400, "since"),
    ("drain needs the token", "POST", f"{B}/app/a/drain", b"", {}, 401, "token"),
    (
        "a wrong token",
        "POST",
        f"{B}/app/a/drain",
        b"",
        {"authorization": "Bearer nope"},
        401,
        "token",
    ),
    ("drain", "POST", f"{B}/app/a/drain", b"", AUTH, 200, '"state": "draining"'),
    ("drain by GET", "GET", f"{B}/app/a/drain", b"", AUTH, 405, "POST only"),
    ("unknown backend", "POST", f"{B}/app/zz/drain", b"", AUTH, 404, "no backend 'app/zz'"),
    ("unknown action", "POST", f"{B}/app/a/explode", b"", AUTH, 404, "expected"),
    ("weight", "POST", f"{B}/app/a/weight", b'{"weight": 5}', AUTH, 200, '"weight": 5'),
    ("relative weight", "POST", f"{B}/app/a/weight", b'{"weight": "+3"}', AUTH, 200, '"weight": 5'),
    ("weight out of range", "POST", f"{B}/app/a/weight", b'{"weight": 300}', AUTH, 400, "0..256"),
    ("weight not JSON", "POST", f"{B}/app/a/weight", b"five", AUTH, 400, "must be JSON"),
    ("weight missing", "POST", f"{B}/app/a/weight", b"{}", AUTH, 400, '{\\"weight\\": N}'),
    ("reset", "POST", f"{B}/app/a/reset", b"", AUTH, 200, '"config_weight": 2'),
    ("reload without a reloader", "POST", "/api/v1/reload", b"", AUTH, 501, "cannot reload"),
    ("unknown endpoint", "GET", "/api/v2/status", b"", {}, 404, "no such endpoint"),
    ("metrics", "GET", "/metrics", b"", {}, 200, "metrics here"),
]


@pytest.mark.parametrize(
    ("label", "method", "target", "body", "headers", "status", "fragment"),
    CASES,
    ids=[c[0] for c in CASES],
)
def test_api_table(
    label: str,
    method: str,
    target: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    fragment: str,
) -> None:
    ctx, _ = context()
    reply = adminapi.handle(ctx, method, target, {"host": HOST, **headers}, body)
    assert reply.status == status
    assert fragment in reply.payload().decode()


def test_mutations_are_recorded_with_their_source() -> None:
    ctx, model = context()
    call(ctx, "POST", f"{B}/app/b/disable", **AUTH)
    (event,) = model.events
    assert (event.target, event.new, event.cause) == ("app/b", "disabled", "admin API: disable")


def test_a_foreign_host_is_refused_even_for_reads() -> None:
    ctx, _ = context()
    reply = adminapi.handle(ctx, "GET", "/api/v1/status", {"host": "evil.example"}, b"")
    assert reply.status == 403


def test_without_a_token_mutations_need_none_and_a_unix_socket_takes_any_host() -> None:
    ctx, model = context(token=None, hosts=frozenset())
    reply = adminapi.handle(ctx, "POST", f"{B}/app/a/drain", {"host": "localhost"}, b"")
    assert reply.status == 200 and model.backend("app/a").admin == "draining"


def test_status_shape() -> None:
    ctx, _ = context()
    data = json.loads(call(ctx, "GET", "/api/v1/status").payload())
    assert data["listeners"] == [
        {"name": "web", "bind": "127.0.0.1:0", "protocol": "tcp", "pool": "app"}
    ]
    (pool,) = data["pools"]
    a = pool["backends"][0]
    for key in (
        "name", "address", "state", "health", "weight", "effective_weight", "config_weight",
        "active_connections", "total_connections", "health_progress", "last_check",
        "latency_seconds", "responses", "failed_connects",
    ):  # fmt: skip
        assert key in a, key
    assert (a["state"], a["health"], a["weight"]) == ("ready", "unknown", 2)


@pytest.mark.parametrize(
    ("admin", "fragment"),
    [
        ('listen = "0.0.0.0:9900"', "reachable from other machines: set [admin] token"),
        ('listen = "unix:relative.sock"', "unix:/absolute/path"),
        ('listen = "127.0.0.1:9900"\ntoken = "short"', "8 or more printable characters"),
        ('token = "long-enough-token"', "missing required key 'listen'"),
    ],
)
def test_bad_admin_configs(admin: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(TEXT + "\n[admin]\n" + admin + "\n", "<t>")
    assert any(fragment in p.message for p in info.value.problems), info.value.problems


def test_good_admin_configs() -> None:
    remote = parse(TEXT + '\n[admin]\nlisten = "0.0.0.0:9900"\ntoken = "long-enough-1"\n', "<t>")
    assert remote.admin is not None and remote.admin.token == "long-enough-1"
    local = parse(TEXT + '\n[admin]\nlisten = "unix:/run/x.sock"\n', "<t>")
    assert local.admin is not None and local.admin.listen == "unix:/run/x.sock"


# -- over real sockets ------------------------------------------------------------------------


async def request(
    stream: trio.abc.Stream, method: str, target: str, host: str, body: bytes = b"", **hdrs: str
) -> tuple[int, bytes]:
    conn = h11.Connection(h11.CLIENT)
    headers = [("host", host), ("content-length", str(len(body))), *hdrs.items()]
    data = conn.send(h11.Request(method=method, target=target, headers=headers))
    data += conn.send(h11.Data(data=body)) if body else b""
    await stream.send_all(data + conn.send(h11.EndOfMessage()))
    status, out = 0, bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            out += event.data
        elif isinstance(event, h11.EndOfMessage):
            return status, bytes(out)


async def test_the_server_over_tcp_with_metrics(nursery):
    config = parse(TEXT + f'\n[admin]\nlisten = "127.0.0.1:0"\ntoken = "{TOKEN}"\n', "<t>")
    run = await start_engine(nursery, config)
    where = run.engine.admin_address
    assert where is not None
    port = int(where.rpartition(":")[2])
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    host = f"127.0.0.1:{port}"
    status, body = await request(stream, "GET", "/api/v1/status", host)
    assert status == 200 and json.loads(body)["pools"][0]["name"] == "app"
    with trio.fail_after(5):  # rates appear once a second has been measured
        while json.loads(body)["pools"][0]["backends"][0]["rates"] is None:
            await trio.sleep(0.1)
            status, body = await request(stream, "GET", "/api/v1/status", host)
    rates = json.loads(body)["pools"][0]["backends"][0]["rates"]
    assert rates["connections_per_second"] == 0 and "requests_per_second" in rates
    auth = {"authorization": f"Bearer {TOKEN}"}
    status, _ = await request(stream, "POST", "/api/v1/backends/app/a/drain", host, **auth)
    assert status == 200 and run.model.backend("app/a").admin == "draining"
    status, _ = await request(stream, "GET", "/api/v1/status", f"localhost:{port}")
    assert status == 200  # the same address by its loopback name
    status, text = await request(stream, "GET", "/metrics", host)
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}
    states = {
        (s.labels["backend"], s.labels["state"]): s.value
        for s in families["tuilb_backend_state"].samples
    }
    assert states[("a", "draining")] == 1.0 and states[("a", "ready")] == 0.0
    assert "tuilb_backend_http_response_seconds" in families
    await stream.aclose()
    evil = await trio.open_tcp_stream("127.0.0.1", port)
    status, _ = await request(evil, "GET", "/api/v1/status", "attacker.example")
    assert status == 403
    await evil.aclose()


async def test_the_server_on_a_unix_socket_is_private(nursery, tmp_path):
    path = tmp_path / "admin.sock"
    config = parse(TEXT + f'\n[admin]\nlisten = "unix:{path}"\n', "<t>")
    run = await start_engine(nursery, config)
    assert run.engine.admin_address == f"unix:{path}"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    stream = await trio.open_unix_socket(str(path))
    status, body = await request(stream, "POST", "/api/v1/backends/app/b/weight", "localhost",
                                 b'{"weight": 7}')  # fmt: skip
    assert status == 200 and json.loads(body)["backend"]["weight"] == 7
    await stream.aclose()


@pytest.mark.parametrize(
    ("label", "method", "target", "body", "headers", "status", "fragment"),
    [c for c in CASES if c[0] != "reload without a reloader"],
    ids=[c[0] for c in CASES if c[0] != "reload without a reloader"],
)
async def test_api_table_over_a_real_socket(
    nursery, label, method, target, body, headers, status, fragment
):
    """The same table through the server: h11 on both ends, a real loopback socket."""
    config = parse(TEXT + f'\n[admin]\nlisten = "127.0.0.1:0"\ntoken = "{TOKEN}"\n', "<t>")
    run = await start_engine(nursery, config)
    port = int(str(run.engine.admin_address).rpartition(":")[2])
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    got_status, got = await request(stream, method, target, f"127.0.0.1:{port}", body, **headers)
    await stream.aclose()
    assert got_status == status
    expected = fragment if label != "metrics" else "tuilb_backend_weight"
    assert expected in got.decode()


async def test_reload_over_the_socket_answers_with_the_problems(nursery, tmp_path):
    path = tmp_path / "tuilb.conf"
    path.write_text(TEXT + f'\n[admin]\nlisten = "127.0.0.1:0"\ntoken = "{TOKEN}"\n')
    from tuilb.config import load

    run = await start_engine(nursery, load(path))
    port = int(str(run.engine.admin_address).rpartition(":")[2])
    host, auth = f"127.0.0.1:{port}", {"authorization": f"Bearer {TOKEN}"}
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    status, body = await request(stream, "POST", "/api/v1/reload", host, **auth)
    assert (status, json.loads(body)["result"]) == (200, "reloaded: no changes")
    path.write_text("[[listeners]]\n")
    status, body = await request(stream, "POST", "/api/v1/reload", host, **auth)
    assert status == 400 and "problem(s)" in json.loads(body)["error"]
    await stream.aclose()
