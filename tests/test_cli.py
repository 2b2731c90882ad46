"""The installed command line, run as a subprocess: `check`, and `run --headless`."""

from __future__ import annotations

import json
import re
import resource
import signal
import socket
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conftest import (
    close_cleanly,
    config_text,
    connect,
    echo,
    exchange,
    named,
    recv_line,
    start_server,
)

ROOT = Path(__file__).resolve().parent.parent
TUILB = [sys.executable, "-m", "tuilb"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TUILB, *args], capture_output=True, text=True, timeout=20, cwd=ROOT, check=False
    )


# -- check ---------------------------------------------------------------------------------
def test_check_sample_conf_prints_one_line_summary():
    result = cli("check", "sample.conf")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["sample.conf: OK: 1 listener(s), 1 pool(s), 3 backend(s)"]
    assert result.stderr == ""


BAD = """\
[[listeners]]
name = "web"
bind = "127.0.0.1:70000"
pool = "nope"
colour = "blue"

[pools.app]
algorithm = "fastest"

[[pools.app.backends]]
name = "a"
address = "127.0.0.1:9001"
weight = 300

[[pools.app.backends]]
name = "a"
address = "127.0.0.1:9002"
weight = "heavy"
"""

# (line, fragments that must appear together on that problem's line)
BAD_PROBLEMS = [
    (3, ["listeners[0].bind", "70000", "out of range"]),
    (4, ["listeners[0].pool", "'nope'", "app"]),
    (5, ["listeners[0].colour", "unknown key", "allowed"]),
    (8, ["pools.app.algorithm", "'fastest'", "round_robin", "source_ip_hash"]),
    (13, ["pools.app.backends[0].weight", "300", "0..256"]),
    (16, ["pools.app.backends[1].name", "duplicate", "'a'"]),
    (18, ["pools.app.backends[1].weight", "expected an integer", "a string"]),
]


def test_check_bad_file_lists_every_problem_with_its_line(tmp_path):
    path = tmp_path / "bad.conf"
    path.write_text(BAD)
    result = cli("check", str(path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == f"{path}: {len(BAD_PROBLEMS)} problem(s):"
    problems = lines[1:]
    assert len(problems) == len(BAD_PROBLEMS), result.stderr
    for line, fragments in BAD_PROBLEMS:
        matching = [p for p in problems if p.strip().startswith(f"line {line}: ")]
        assert len(matching) == 1, f"line {line}: {result.stderr}"
        for fragment in fragments:
            assert fragment in matching[0]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("[[listeners]\nname = 'x'\n", "not valid TOML"),
        ("", "no pools defined"),
        (None, "cannot read file"),
        (b"\xff\xfe not utf-8", "not UTF-8"),
    ],
    ids=["not-toml", "empty", "missing", "not-utf8"],
)
def test_check_unusable_file_is_one_clear_problem(tmp_path, content, expected):
    path = tmp_path / "x.conf"
    if isinstance(content, str):
        path.write_text(content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    result = cli("check", str(path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert expected in result.stderr
    assert result.stdout == ""


def test_run_without_headless_exits_2_with_a_hint():
    result = cli("run", "sample.conf")
    assert result.returncode == 2
    assert "--headless" in result.stderr
    assert "Traceback" not in result.stderr


def test_port_in_use_is_one_clear_line_and_exit_1(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = tmp_path / "busy.conf"
        path.write_text(config_text([9], bind=f"127.0.0.1:{port}"))
        result = cli("run", str(path), "--headless")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr
    assert result.returncode == 1
    assert len(lines) == 1, result.stderr
    assert "startup_failed" in lines[0]
    assert f"127.0.0.1:{port}" in lines[0] and "address already in use" in lines[0]


# -- run --headless ------------------------------------------------------------------------
_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def parse_line(fmt: str, line: str) -> dict[str, Any]:
    if fmt == "json":
        record: dict[str, Any] = json.loads(line)
        return record
    ts, level, event, *_ = line.split()
    record = {"ts": ts, "level": level.lower(), "event": event}
    for key, value in _FIELD.findall(line):
        record[key] = json.loads(value) if value.startswith('"') else value
    return record


class Headless:
    """A `tuilb run --headless` subprocess whose stderr is read line by line, with timeouts."""

    def __init__(self, process: trio.Process, fmt: str) -> None:
        self.process = process
        self.fmt = fmt
        self.raw: list[str] = []
        self.records: list[dict[str, Any]] = []
        self._buffer = b""
        self._eof = False

    async def next_record(self) -> dict[str, Any] | None:
        assert self.process.stderr is not None
        while b"\n" not in self._buffer:
            data = await self.process.stderr.receive_some(65536)
            if not data:
                self._eof = True
                return None
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        text = line.decode()
        self.raw.append(text)
        record = parse_line(self.fmt, text)
        self.records.append(record)
        return record

    async def wait_event(self, event: str) -> dict[str, Any]:
        while True:
            record = await self.next_record()
            assert record is not None, f"exited before {event!r}: {self.raw}"
            if record["event"] == event:
                return record

    async def finish(self) -> int:
        """Read stderr to its end and wait for the exit status."""
        while not self._eof:
            await self.next_record()
        return await self.process.wait()

    def events(self) -> list[str]:
        return [r["event"] for r in self.records]


async def start_headless(
    nursery: trio.Nursery, path: Path, fmt: str = "text", max_fds: int | None = None
) -> tuple[Headless, int]:
    def limit() -> None:
        if max_fds is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max_fds, max_fds))

    process = await trio.lowlevel.open_process(
        [*TUILB, "run", str(path), "--headless", "--log-format", fmt],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        preexec_fn=limit,
    )

    async def reap() -> None:
        try:
            await trio.sleep_forever()
        finally:
            if process.returncode is None:
                process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()

    nursery.start_soon(reap)
    headless = Headless(process, fmt)
    with trio.fail_after(10):
        listening = await headless.wait_event("listening")
    host, _, port = listening["bind"].rpartition(":")
    assert host == "127.0.0.1" and port != "0"
    return headless, int(port)


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_headless_proxies_then_stops_on_sigterm(nursery, tmp_path, fmt):
    server = await start_server(nursery, named, "app-one")
    path = tmp_path / "front.conf"
    path.write_text(config_text([server.port]))
    headless, port = await start_headless(nursery, path, fmt)
    with trio.fail_after(5):
        sock = await connect(port)
        assert await recv_line(sock) == b"app-one\n"
        await exchange(sock, b"through the subprocess")
        await close_cleanly(sock)
        headless.process.send_signal(signal.SIGTERM)
        status = await headless.finish()
    assert status == 0, headless.raw
    events = headless.events()
    order = [events.index(e) for e in ("listening", "signal", "shutdown", "stopped")]
    assert order == sorted(order), events
    assert events[-1] == "stopped"
    assert server.accepted == 1 and server.conns[0].data == b"through the subprocess"
    assert "Traceback" not in "\n".join(headless.raw)
    listening, started = headless.records[0], headless.records[1]
    assert listening["listener"] == "front" and listening["protocol"] == "tcp"
    assert started["event"] == "started" and started["config"] == str(path)
    signal_record = headless.records[events.index("signal")]
    assert signal_record["signal"] == "SIGTERM"
    for record in headless.records:
        assert {"ts", "level", "event"} <= record.keys()
        assert record["ts"].endswith("Z")
        assert datetime.fromisoformat(record["ts"]).tzinfo is not None
        assert record["level"] in ("info", "warning", "error")
    if fmt == "json":
        assert all(line.startswith("{") for line in headless.raw)


async def test_sigterm_lets_an_open_connection_finish_then_exits_0(nursery, tmp_path):
    server = await start_server(nursery, named, "app-one")
    path = tmp_path / "front.conf"
    path.write_text(config_text([server.port], grace=20.0))
    headless, port = await start_headless(nursery, path)
    with trio.fail_after(5):
        sock = await connect(port)
        assert await recv_line(sock) == b"app-one\n"
        await exchange(sock, b"before")
        headless.process.send_signal(signal.SIGTERM)
        shutdown = await headless.wait_event("shutdown")
        assert shutdown["connections"] == (1 if headless.fmt == "json" else "1")
        with pytest.raises(ConnectionRefusedError):
            (await connect(port)).close()
        for i in range(3):
            await exchange(sock, b"after the signal %d" % i)
        assert headless.process.poll() is None  # still waiting for this connection
        await close_cleanly(sock)
        status = await headless.finish()
    assert status == 0, headless.raw
    assert headless.events()[-1] == "stopped"
    causes = " ".join(str(r.get("cause", "")) for r in headless.records)
    assert "grace period over" not in causes
    assert server.conns[0].end == "eof"


async def test_sigterm_as_soon_as_listening_is_logged_is_still_graceful(nursery, tmp_path):
    # A supervisor may stop tuilb the moment it reports it is listening.
    path = tmp_path / "front.conf"
    path.write_text(config_text([9]))
    headless, _ = await start_headless(nursery, path)
    headless.process.send_signal(signal.SIGTERM)
    with trio.fail_after(5):
        status = await headless.finish()
    assert status == 0, f"exit status {status}: {headless.raw}"
    assert headless.events()[-1] == "stopped"


async def test_out_of_descriptors_keeps_serving_and_does_not_flood_the_log(nursery, tmp_path):
    server = await start_server(nursery, echo, "b1")
    path = tmp_path / "front.conf"
    path.write_text(config_text([server.port]))
    headless, port = await start_headless(nursery, path, "json", max_fds=40)
    exhaustion = ("accept_failed", "connection_error")
    socks = []
    try:
        with trio.fail_after(10):
            first = await connect(port)
            socks.append(first)
            await exchange(first, b"served before the storm")
            # Each proxied connection costs tuilb two descriptors: 40 clients exhaust 40.
            for _ in range(40):
                socks.append(await connect(port))
            while True:
                record = await headless.next_record()
                assert record is not None, headless.raw
                if record["event"] in exhaustion:
                    break
            assert "too many open files" in record["cause"]
            # The connections it already had keep working through the storm.
            await exchange(first, b"served during the storm")
    finally:
        for sock in socks:
            sock.close()
    with trio.fail_after(10):
        # Descriptors are free again: new connections are served.
        while True:
            sock = await connect(port)
            try:
                await exchange(sock, b"served after the storm")
                break
            except (ConnectionResetError, AssertionError):
                sock.close()  # a queued client that tuilb closed while it was short
        await close_cleanly(sock)
        headless.process.send_signal(signal.SIGTERM)
        assert await headless.finish() == 0, headless.raw
    warnings = [r for r in headless.records if r["event"] in exhaustion]
    # Rate-limited: about one line a second per kind, whatever the number of failures.
    assert 1 <= len(warnings) <= 6, [headless.raw]
    assert "Traceback" not in "\n".join(headless.raw)


def test_headless_code_paths_never_import_textual():
    # Everything `run --headless` and `demo --headless` load, in a fresh interpreter.
    code = (
        "import sys\n"
        "import tuilb.cli, tuilb.host, tuilb.engine, tuilb.demo, tuilb.ui.bridge\n"
        "from tuilb.demo import Demo\n"
        "d = Demo(rate=0); tuilb.cli._demo_extra(d); d.close()\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'rich'))\n"
        "import json; print(json.dumps(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=20, check=False
    )
    assert result.returncode == 0, result.stderr
    assert not [m for m in json.loads(result.stdout) if m.startswith("textual")], result.stdout


async def test_sighup_reloads_and_a_bad_file_changes_nothing(nursery, tmp_path):
    """Operators send SIGHUP to reload, as with nginx and HAProxy."""
    one = await start_server(nursery, named, "app-one")
    two = await start_server(nursery, named, "app-two")
    path = tmp_path / "front.conf"
    path.write_text(config_text([one.port]))
    headless, port = await start_headless(nursery, path, "json")
    with trio.fail_after(5):
        path.write_text(config_text([one.port, two.port]))  # a second backend
        headless.process.send_signal(signal.SIGHUP)
        record = await headless.wait_event("reloaded")
        assert "backends added: app/b2" in record["cause"]
        seen = set()
        for _ in range(4):
            sock = await connect(port)
            seen.add(await recv_line(sock))
            await close_cleanly(sock)
        assert seen == {b"app-one\n", b"app-two\n"}
        path.write_text("this is [not toml")
        headless.process.send_signal(signal.SIGHUP)
        failed = await headless.wait_event("reload_failed")
        assert failed["level"] == "warning" and "not valid TOML" in failed["cause"]
        sock = await connect(port)  # still serving, with the last good configuration
        assert await recv_line(sock) in (b"app-one\n", b"app-two\n")
        await close_cleanly(sock)
        headless.process.send_signal(signal.SIGTERM)
        assert await headless.finish() == 0
