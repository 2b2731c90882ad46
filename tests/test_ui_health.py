"""The dashboard's health surface over the demo with its health checks on: the table
spells out health with its progress, a failing backend goes down on screen, and the
details list the recent checks."""

from __future__ import annotations

from tests.test_ui import cell, live, run, screen_text
from tuilb.health import Health
from tuilb.ui.screens import Details


def test_health_checks_show_in_the_table_and_the_details() -> None:
    async def scenario() -> None:
        async with live(checks=True) as t:

            def health(target: str) -> Health:
                return t.bridge.snapshot().backend(target).health

            # The demo checks web with HTTP (rise 2, fall 2), echo with TCP (fall 3).
            await t.until(lambda: cell(t.app, "web/fast", "health") == "up 2/2", "web up")
            await t.until(lambda: cell(t.app, "echo/echo", "health") == "up 3/3", "echo up")
            await t.press("f")  # the demo's fail key: web/fast stops listening
            await t.until(lambda: health("web/fast") is Health.DOWN, "web/fast down")
            await t.until(lambda: cell(t.app, "web/fast", "health") == "down 0/2", "the cell")
            assert cell(t.app, "web/medium", "health") == "up 2/2"
            # The selected backend's last check, below its sparklines.
            await t.until(
                lambda: "last check FAILED connect refused" in screen_text(t.app),
                "the last check on screen",
            )
            await t.press("enter")
            await t.modal(Details)
            text = screen_text(t.app)
            for expected in (
                "recent checks",
                "pass",
                "HTTP 200",
                "FAIL",
                "connect refused",
                "down 0/2",
                "health: down after 2 failed checks (last: connect refused)",
            ):
                assert expected in text, expected
            await t.press("escape")
            await t.main_screen()
            await t.press("f")  # recover: two good checks bring it back
            await t.until(lambda: health("web/fast") is Health.UP, "web/fast up again")
            snap = t.bridge.snapshot().backend("web/fast")
            assert snap.slow_start < 1.0  # ramping back up, shown in the weight column
            await t.until(lambda: "(eff " in cell(t.app, "web/fast", "weight"), "the ramp")

    run(scenario)
