"""Review of the HTTP proxy's I/O shell: each test pins a bug that was found and fixed.
Real peers on 127.0.0.1 (h11, raw sockets, curl where its behaviour matters)."""

from __future__ import annotations

import trio

from tests.conftest import start_engine
from tests.l7util import Client, http_config, start_backends
from tuilb.model import AdminState


async def test_head_gets_tuilb_error_answers_without_a_body(nursery):
    # An error answer to HEAD (monitors use HEAD) used to fail inside h11 (a body for a
    # HEAD response) and went out as nothing at all: an empty reply, or a 30 s hang.
    a, b = await start_backends(nursery, "a", "b")
    config = http_config(
        {"app": [a.port], "api": [b.port]},
        listener_extra='[[listeners.routes]]\npool = "api"\nhost = "api.test"\n',
    )
    run = await start_engine(nursery, config)
    run.model.set_admin(run.model.backend("app/app1"), AdminState.DISABLED, "test")
    client = await Client.open(run.port)
    with trio.fail_after(5):
        answer = await client.request("HEAD", "/")
        assert (answer.status, answer.body, answer.complete) == (503, b"", True)
        assert answer.header(b"content-length") != []
    await client.aclose()

    run.model.set_admin(run.model.backend("app/app1"), AdminState.READY, "test")
    config = http_config({"api": [b.port]})  # no default pool: 404
    run = await start_engine(nursery, config)
    client = await Client.open(run.port)
    with trio.fail_after(5):
        answer = await client.request("HEAD", "/")
        assert (answer.status, answer.body, answer.complete) == (404, b"", True)
        answer = await client.request("HEAD", "/")  # the 404 keeps the connection
        assert answer.status == 404
    await client.aclose()
