"""Screenshots of the dashboard compared with accepted ones (pytest-textual-snapshot).

Frozen data only: a `FakeBridge` over a Model whose clock never moves (so no rates, no
ports, no wall time), event times rendered in UTC, a fixed terminal size. After an
intended change of the screen, review and accept the new pictures with
`python -m pytest tests/test_ui_snapshots.py --snapshot-update` (they live in
tests/__snapshots__/test_ui_snapshots/).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from textual.pilot import Pilot

from tests.test_ui import FakeBridge
from tuilb.config import parse
from tuilb.model import AdminState, Health
from tuilb.ui.app import TuilbApp
from tuilb.ui.table import BackendTable

SIZE = (120, 36)

CONFIG = """
[[listeners]]
name = "www"
bind = "0.0.0.0:8080"
pool = "web"

[[listeners]]
name = "pg"
bind = "127.0.0.1:5433"
pool = "db"

[pools.web]
algorithm = "least_connections"

[[pools.web.backends]]
name = "web-1"
address = "10.0.0.11:80"
weight = 3

[[pools.web.backends]]
name = "web-2"
address = "10.0.0.12:80"

[[pools.web.backends]]
name = "web-3"
address = "10.0.0.13:80"
max_connections = 100

[pools.db]

[[pools.db.backends]]
name = "primary"
address = "10.0.1.5:5432"
"""


class FrozenBridge(FakeBridge):
    """Listeners report their configured addresses; nothing ever moves."""

    def listening(self) -> dict[str, str]:
        return {listener.name: str(listener.bind) for listener in self.config.listeners}


def frozen_app() -> TuilbApp:
    bridge = FrozenBridge(parse(CONFIG, "<snapshot>"))
    model = bridge.model
    web1, web2, web3 = (model.backend(f"web/web-{i}") for i in (1, 2, 3))
    primary = model.backend("db/primary")
    for backend, connections in ((web1, 12), (web2, 3), (primary, 2)):
        for _ in range(connections):
            model.connection_started(backend)
    web1.total, web1.bytes_in, web1.bytes_out = 3456, 1_572_864, 20_971_520
    web2.total, web2.bytes_in, web2.bytes_out = 1200, 524_288, 6_291_456
    primary.total, primary.bytes_in, primary.bytes_out = 87, 4096, 1_048_576
    model.connect_failed(web3, "connection refused")
    model.connect_failed(web3, "connection refused")
    model.set_admin(web2, AdminState.DRAINING, "keyboard: drain")
    model.set_admin(web3, AdminState.DISABLED, "keyboard: disable")
    model.set_health(primary, Health.UP, "check ok")
    return TuilbApp(bridge)


@pytest.fixture(autouse=True)
def _utc_and_gc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Event times are shown with time.localtime: render them in UTC on every machine.
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()
    gc.unfreeze()  # the app freezes the heap once built (see tests/test_ui.py)


def test_main_screen(snap_compare: Any) -> None:
    assert snap_compare(frozen_app(), terminal_size=SIZE)


def test_help_screen(snap_compare: Any) -> None:
    assert snap_compare(frozen_app(), press=["question_mark"], terminal_size=SIZE)


def select(row: int) -> Callable[[Pilot[Any]], Awaitable[None]]:
    async def run_before(pilot: Pilot[Any]) -> None:
        pilot.app.query_one(BackendTable).move_cursor(row=row)
        await pilot.pause()

    return run_before


def test_disable_confirmation(snap_compare: Any) -> None:
    # web/web-2 (draining): disabling it leaves web-1, so this is the ordinary question.
    assert snap_compare(frozen_app(), press=["x"], terminal_size=SIZE, run_before=select(1))


def test_last_backend_of_a_pool_warning(snap_compare: Any) -> None:
    # db/primary is the only backend of pool 'db'.
    assert snap_compare(frozen_app(), press=["d"], terminal_size=SIZE, run_before=select(3))
