"""The reload key (R) in the dashboard: a good file applies, a bad one changes nothing and
says why."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.conftest import config_text
from tests.test_ui import dashboard, log_lines, rows, run, toasts, until
from tuilb.config import load
from tuilb.host import GuestBridge
from tuilb.ui.app import TuilbApp


def test_r_reloads_the_configuration_file(tmp_path: Path) -> None:
    path = tmp_path / "tuilb.conf"
    path.write_text(config_text([9, 10]))

    async def scenario() -> None:
        bridge = GuestBridge(load(path))
        app = TuilbApp(bridge)
        try:
            async with dashboard(app, notifications=True) as pilot:
                await until(pilot, lambda: rows(app) == ["app/b1", "app/b2"], "two rows")
                path.write_text(config_text([9, 10, 11]))
                await pilot.press("R")
                await until(pilot, lambda: rows(app) == ["app/b1", "app/b2", "app/b3"], "b3")
                await until(
                    pilot, lambda: any("backends added: app/b3" in t for t in toasts(app)), "toast"
                )
                path.write_text("this is [not toml")
                await pilot.press("R")
                await until(
                    pilot, lambda: any("not valid TOML" in line for line in log_lines(app)), "log"
                )
                assert rows(app) == ["app/b1", "app/b2", "app/b3"]  # nothing changed
        finally:
            if bridge.running:
                bridge.shutdown()
                bridge.shutdown()
                await asyncio.wait_for(bridge.wait_finished(), 10)

    run(scenario)
