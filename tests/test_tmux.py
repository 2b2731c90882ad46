"""Smoke test in a real terminal: `tuilb demo` inside tmux, read with `capture-pane`.

A private tmux server (`-L`, no config file) runs the demo at 160x45; the test waits for
the table, drains the first backend with `d`, sees it on screen, quits with `q` (and `y`
when it asks because the demo's traffic holds connections) and checks the exit status,
which the pane's shell writes to a file. The server is killed whatever happens.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

TMUX = shutil.which("tmux")
ROOT = Path(__file__).resolve().parents[1]
WAIT = 15.0  # seconds for any one thing to show up
STEP = 0.2

pytestmark = pytest.mark.skipif(
    TMUX is None, reason="tmux is not installed (.ci/run installs it; apt-get install tmux)"
)


class Terminal:
    def __init__(self, socket: str) -> None:
        assert TMUX is not None
        self.base = [TMUX, "-L", socket, "-f", os.devnull]

    def tmux(self, *args: str) -> str:
        done = subprocess.run(
            [*self.base, *args], capture_output=True, text=True, timeout=10, check=True
        )
        return done.stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "demo")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "demo", *keys)

    def wait_for(self, predicate: Callable[[str], bool], what: str) -> str:
        """Poll the screen until `predicate(screen)`; at most WAIT seconds."""
        deadline = time.monotonic() + WAIT
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if predicate(screen):
                return screen
            time.sleep(STEP)
        raise AssertionError(f"timed out waiting for {what}; the screen:\n{screen}")


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[tuple[Terminal, Path]]:
    term = Terminal(f"tuilb-test-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    status = tmp_path / "status"
    demo = f"{shlex.quote(sys.executable)} -m tuilb demo --rate 5"
    # The pane outlives the demo (sleep) so its last screen can still be read.
    command = f"{demo}; echo $? > {shlex.quote(str(status))}; sleep 60"
    try:
        term.tmux(
            "new-session", "-d", "-s", "demo", "-x", "160", "-y", "45", "-c", str(ROOT), command
        )
        yield term, status
    finally:
        subprocess.run([*term.base, "kill-server"], capture_output=True, timeout=10)


def row(screen: str, target: str) -> str:
    """The table row of `target` ('' if it is not on screen)."""
    pattern = re.compile(rf"^\s*{re.escape(target)}\s+127\.0\.0\.1:\d+\s+.*$", re.MULTILINE)
    found = pattern.search(screen)
    return found.group(0) if found else ""


def test_demo_in_tmux_drain_with_a_key_and_quit(terminal: tuple[Terminal, Path]) -> None:
    term, status = terminal
    screen = term.wait_for(lambda s: "ready" in row(s, "web/fast"), "the web/fast row")
    assert "listeners web http 127.0.0.1:" in screen
    assert row(screen, "echo/echo")

    term.keys("d")  # the cursor starts on the first row: web/fast
    screen = term.wait_for(
        lambda s: re.search(r"\s(draining)\s", row(s, "web/fast")) is not None,
        "web/fast draining in the table",
    )
    assert "ready" in row(screen, "web/medium")
    term.wait_for(lambda s: "web/fast state: ready -> draining" in s, "the event log line")

    term.keys("q")
    screen = term.wait_for(
        lambda s: "Quit?" in s or "SHUTTING DOWN" in s or status.exists(), "the quit to begin"
    )
    if "Quit?" in screen:  # the demo's echo conversations are open connections
        term.keys("y")
    term.wait_for(lambda s: status.exists() and status.read_text().strip() != "", "the exit")
    assert status.read_text().strip() == "0", term.screen()
