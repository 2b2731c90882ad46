"""Dashboard benchmark: the same L4 load through `tuilb run` headless and with the dashboard.

Run from the repository root:

    python bench/dashboard.py            # 5 rounds, wrk -d5s per load: 3-4 minutes (< 5)
    python bench/dashboard.py --quick    # 3 rounds, wrk -d2s: about 1 minute (< 2)

Issue 3 ("The refresh must not slow the proxy") sets the targets: with the dashboard at the
default refresh, throughput >= 0.9x headless and p99 latency at most 5 ms above headless.

Everything it needs it starts itself, on 127.0.0.1 only, and stops on exit (Ctrl-C too):
- an HTTP backend written in C: one HAProxy process (`nbthread 1`) with three binds that
  answers every request itself (`http-request return status 200`);
- `headless`: `python -m tuilb run CONF --headless`;
- `dashboard`: `python -m tuilb run CONF` in a real terminal: a detached tmux session
  (160x45, on a private tmux socket) that the dashboard renders to; the script waits until
  the pane shows the backend table;
- optionally `guest` (`--guest`): tuilb's engine as a trio guest on a bare asyncio loop,
  no Textual, to tell the cost of guest mode from the cost of the UI;
- optionally more dashboards at other refresh rates (`--refresh 2,10`).
Each tuilb has one tcp listener in front of one pool of three backends (the three HAProxy
binds), so the dashboard's table has three rows whose counters change at every refresh.

Three loads, each run once per target per round, the order of the targets rotating from
round to round, all keep-alive: `saturated` (wrk -t1 -c20: the proxy is the bottleneck),
`light` (wrk -t1 -c2: two requests in flight at a time) and `paced` (wrk -t1 -c10 with a 5 ms
think time before each request, through wrk's Lua `delay`: about 1,600 req/s, the proxy
mostly idle, so a UI stall shows up as latency, not as lost throughput). Latency percentiles
come from wrk (a small Lua `done` hook prints them in microseconds); wrk 4 corrects its
histogram for coordinated omission, so they estimate what requests arriving at the measured
rate would see, which is what a repaint that blocks the process costs real clients. The
report gives medians over the rounds of req/s, p50/p90/p99, tuilb CPU per request, the ratio
dashboard/headless and the p99 difference against the targets. `--stalls` and `--profile
FILE` add diagnostics after the rounds (see --help).

The script re-invokes itself for two helpers: `dashboard.py _guest CONF` (the `guest`
target) and `dashboard.py _traced OUT tuilb-args...` (`--stalls`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# bench/common.py: what the three benchmarks share (process bookkeeping, CPU accounting,
# configs, wrk, rounds, failure handling, JSON, command line).
import common
from common import Children, median, port_open, spread

BACKENDS = ("app1", "app2", "app3")
DEFAULT_REFRESH = 2.0  # tuilb's [ui] refresh default, per second
THROUGHPUT_TARGET = 0.9  # dashboard / headless req/s, issue 3
P99_TARGET_MS = 5.0  # dashboard p99 - headless p99, issue 3

LATENCY_LUA = """\
done = function(summary, latency, requests)
  io.write(string.format(
    "LATENCY_US p50=%d p90=%d p99=%d p999=%d max=%d mean=%.1f\\n",
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
"""


@dataclass
class Load:
    name: str
    connections: int
    delay_ms: int = 0  # think time before each request, per connection (wrk's Lua `delay`)
    script: Path | None = None  # the wrk Lua script, written into the work directory

    def describe(self, seconds: float) -> str:
        pace = f", {self.delay_ms} ms think time per request" if self.delay_ms else ""
        return f"wrk -t1 -c{self.connections} -d{seconds:g}s, keep-alive{pace}"

    def write_script(self, workdir: Path) -> None:
        self.script = workdir / f"wrk-{self.name}.lua"
        pace = f"delay = function() return {self.delay_ms} end\n" if self.delay_ms else ""
        self.script.write_text(LATENCY_LUA + pace)


# -- helpers run as separate processes ---------------------------------------------------------


def guest_main(conf: str, driver: str = "") -> int:
    """The engine as a trio guest on a bare asyncio loop (tuilb's GuestBridge), no Textual."""
    import asyncio

    if driver:
        os.environ["TUILB_GUEST_DRIVER"] = driver

    from tuilb.config import load
    from tuilb.host import GuestBridge

    async def main() -> None:
        bridge = GuestBridge(load(conf))
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, bridge.shutdown)
        bridge.start()
        while bridge.running and not bridge.listening():
            await asyncio.sleep(0.02)
        print(f"listening {bridge.listening()} ({bridge.driver})", file=sys.stderr, flush=True)
        result = await bridge.wait_finished()
        result.unwrap()

    asyncio.run(main())
    return 0


def _is_trio(name: str) -> bool:
    """A callback or frame of the trio guest run: tuilb's epoll driver (tuilb/guest.py)
    or trio's stock guest driver."""
    return "_EpollDriver" in name or "guest_tick" in name or "in_main_thread" in name


def traced_main(out: str, argv: list[str]) -> int:
    """`tuilb` (argv) with timings of the host loop's slow callbacks, repaints and gc.

    Records (start, seconds, kind), start on CLOCK_MONOTONIC like the benchmark's own
    clock, and writes them as JSON to `out` when tuilb exits:
    - `ui` / `trio`: every asyncio callback that ran >= 1 ms, by who it belongs to (trio's
      guest ticks, or everything else: Textual's message pumps and timers);
    - `repaint`: every `Screen._on_timer_update` (layout, compositor, render of dirty
      widgets), `refresh_data`: every `TuilbApp.refresh_data` (snapshot, table cells);
    - `gc0` / `gc1` / `gc2`: every garbage collection, by generation.
    The wrappers cost about a microsecond per callback: a diagnostic, not a measurement.
    """
    import asyncio.events
    import atexit
    import gc

    from textual.screen import Screen

    from tuilb.cli import main
    from tuilb.ui.app import TuilbApp

    records: list[tuple[float, float, str]] = []
    perf, mono = time.perf_counter, time.monotonic
    run_handle = asyncio.events.Handle._run

    def timed_run(self: Any) -> None:
        began = perf()
        run_handle(self)
        took = perf() - began
        if took >= 0.001:
            name = getattr(self._callback, "__qualname__", "")
            records.append((mono() - took, took, "trio" if _is_trio(name) else "ui"))

    asyncio.events.Handle._run = timed_run  # type: ignore[method-assign]

    def wrap(cls: type, attr: str, kind: str) -> None:
        original = getattr(cls, attr, None)
        if original is None:
            return

        def timed(*args: Any, **kwargs: Any) -> Any:
            began = perf()
            try:
                return original(*args, **kwargs)
            finally:
                took = perf() - began
                records.append((mono() - took, took, kind))

        setattr(cls, attr, timed)

    wrap(Screen, "_on_timer_update", "repaint")
    wrap(TuilbApp, "refresh_data", "refresh_data")
    gc_began = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_began[0] = perf()
        else:
            took = perf() - gc_began[0]
            records.append((mono() - took, took, f"gc{info['generation']}"))

    gc.callbacks.append(on_gc)

    def dump() -> None:
        Path(out).write_text(json.dumps(records))

    atexit.register(dump)
    return main(argv)


# -- tuilb configuration and processes ---------------------------------------------------------


def tuilb_cfg(port: int, backend_ports: list[int], refresh: float | None) -> str:
    pool = list(zip(BACKENDS, backend_ports, strict=True))
    text = common.tuilb_cfg([("web", port, "app")], {"app": pool}, protocol="tcp")
    if refresh is not None:
        text += f"\n[ui]\nrefresh = {refresh:g}\n"
    return text


@dataclass
class Target:
    name: str
    kind: str  # headless | dashboard | guest
    port: int
    refresh: float = DEFAULT_REFRESH
    driver: str = ""  # guest: "thread" forces trio's stock guest driver
    pid: int = 0  # the tuilb process
    term_pid: int = 0  # dashboards: the tmux server that renders the pane
    proc: subprocess.Popen[bytes] | None = None  # headless/guest: our child
    tmux: Tmux | None = None
    exit_code: int | None = None
    exit_note: str = ""


class Tmux:
    """A tuilb dashboard in a detached tmux session on a private socket (own server)."""

    def __init__(self, workdir: Path, name: str) -> None:
        tag = re.sub(r"[^A-Za-z0-9_-]", "-", name)  # tmux rewrites "." and ":" in names
        self.socket = f"tuilb-bench-{os.getpid()}-{tag}"
        self.session = f"tuilb-{tag}"
        self.workdir = workdir
        self.name = name
        self.conf = workdir / "tmux.conf"
        if not self.conf.exists():
            term = "tmux-256color" if _has_terminfo("tmux-256color") else "screen-256color"
            self.conf.write_text(
                f'set -g default-terminal "{term}"\n'
                "set -g remain-on-exit on\n"  # keep a dead pane: its exit status, its screen
                "set -g history-limit 200\n"
            )
        self.started = False

    def tmux(self, *args: str, check: bool = True) -> str:
        argv = ["tmux", "-L", self.socket, "-f", str(self.conf), *args]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{shlex.join(argv)}: {proc.stderr.strip()}")
        return proc.stdout

    def start(self, argv: list[str]) -> None:
        command = "exec " + shlex.join(argv)  # exec: the pane's pid is tuilb's
        self.started = True
        self.tmux(
            "new-session", "-d", "-s", self.session, "-x", "160", "-y", "45",
            "-c", str(self.workdir), "-e", "COLORTERM=truecolor", command,
        )  # fmt: skip

    def query(self, fmt: str) -> str:
        return self.tmux("display-message", "-p", "-t", self.session, fmt).strip()

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", self.session, check=False)

    def dead(self) -> bool:
        return self.query("#{pane_dead}") == "1"

    def wait_ready(self, marker: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if marker in self.screen():
                return
            if self.dead():
                status = self.query("#{pane_dead_status}")
                tail = "\n  ".join(self.screen().strip().splitlines()[-8:])
                raise RuntimeError(
                    f"{self.name} exited (status {status}) while starting:\n  {tail}"
                )
            time.sleep(0.1)
        raise RuntimeError(f"{self.name}: the pane did not show {marker!r} within {timeout:g} s")

    def stop(self, pid: int, grace: float = 10.0) -> tuple[int | None, str]:
        """SIGTERM tuilb (graceful shutdown), wait for it to exit, end the tmux server.

        Returns tuilb's exit status (None if unknown) and, when it is not 0, what happened.
        A tuilb that has restored the terminal but is still running a second later gets a
        py-spy dump (NAME.hang.txt in the work directory) before it is killed.
        """
        if not self.started:
            return None, "not started"
        code: int | None = None
        note = ""
        try:
            (self.workdir / f"{self.name}.screen.txt").write_text(self.screen())
            if self.dead():
                note = "had already exited"
            elif pid:
                began = time.monotonic()
                os.kill(pid, signal.SIGTERM)
                while not self.dead() and time.monotonic() - began < grace:
                    time.sleep(0.05)
                closed = time.monotonic() - began
                # tmux marks the pane dead when the pty closes, which tuilb does before it
                # has finished: wait for the process itself.
                while _alive(pid) and time.monotonic() - began < grace:
                    if time.monotonic() - began > closed + 1 and not note:
                        note = f"closed its terminal {closed:.1f} s after SIGTERM, then hung"
                        _dump_stacks(pid, self.workdir / f"{self.name}.hang.txt")
                    time.sleep(0.05)
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)
                    note = (note or "did not exit") + f"; killed {grace:g} s after SIGTERM"
                    time.sleep(0.2)
            # tmux learns the exit status when it reaps the process, a moment later. Now and
            # then tmux 3.3a leaves the exited tuilb a zombie for seconds (a missed SIGCHLD?):
            # a second SIGCHLD to the server makes it look again.
            began = time.monotonic()
            status = ""
            nudged = False
            while time.monotonic() - began < 3:
                status = self.query("#{pane_dead_status}#{pane_dead_signal}")
                if status:
                    break
                if not nudged and time.monotonic() - began > 0.5:
                    server = self.query("#{pid}")
                    if server.isdigit():
                        os.kill(int(server), signal.SIGCHLD)
                    nudged = True
                time.sleep(0.05)
            if self.query("#{pane_dead_signal}"):
                note = note or f"ended by signal {status}"
            elif status.lstrip("-").isdigit():
                code = int(status)
            else:
                note = note or "tmux did not report an exit status"
            (self.workdir / f"{self.name}.final.txt").write_text(self.screen())
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
            note = f"stopping it failed: {exc}"
        finally:
            self.tmux("kill-server", check=False)
            self.started = False
        return code, note


def _alive(pid: int) -> bool:
    """True while the process runs (a zombie waiting for tmux to reap it has ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _dump_stacks(pid: int, out: Path) -> None:
    pyspy = common.find_pyspy()
    if pyspy is None:
        return
    try:
        dump = subprocess.run([pyspy, "dump", "-p", str(pid)], capture_output=True, timeout=10)
        out.write_bytes(dump.stdout + dump.stderr)
    except (OSError, subprocess.TimeoutExpired):
        pass


def _has_terminfo(name: str) -> bool:
    if not shutil.which("infocmp"):
        return any(
            Path(d, name[0], name).exists() for d in ("/usr/share/terminfo", "/lib/terminfo")
        )
    return subprocess.run(["infocmp", name], capture_output=True).returncode == 0


class Fleet:
    """Everything the benchmark starts: Children (common.py) plus the tmux servers."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.kids = Children(workdir)
        self.targets: list[Target] = []
        self.backend_pid = 0
        self.me = [sys.executable, str(Path(__file__).resolve())]

    def start_backend(self, ports: list[int]) -> None:
        cfg = common.http_backend_cfg(ports)
        proc = self.kids.start_haproxy("backend", cfg, ports, "the HTTP backend (haproxy)")
        self.backend_pid = proc.pid

    def start_target(self, target: Target, backend_ports: list[int]) -> None:
        refresh = None if target.refresh == DEFAULT_REFRESH else target.refresh
        conf = self.workdir / f"{target.name}.toml"
        conf.write_text(tuilb_cfg(target.port, backend_ports, refresh))
        self.targets.append(target)
        if target.kind == "headless":
            target.proc = self.kids.start_tuilb(target.name, conf, 1, "tuilb")
            target.pid = target.proc.pid
        elif target.kind == "guest":
            target.proc = self.kids.start(
                target.name, [*self.me, "_guest", str(conf), target.driver]
            )
            common.wait_for(
                lambda: "listening" in self.kids.log_text(target.name), target.proc, "guest"
            )
            target.pid = target.proc.pid
        else:
            self.start_dashboard(target, [sys.executable, "-m", "tuilb", "run", str(conf)])

    def start_dashboard(self, target: Target, argv: list[str]) -> None:
        target.tmux = Tmux(self.workdir, target.name)
        target.tmux.start(argv)
        target.pid = int(target.tmux.query("#{pane_pid}"))
        target.term_pid = int(target.tmux.query("#{pid}"))
        target.tmux.wait_ready(f"app/{BACKENDS[-1]}")
        deadline = time.monotonic() + 10
        while not port_open(target.port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{target.name}: the table is shown but nothing listens")
            time.sleep(0.05)

    def stop_target(self, target: Target) -> None:
        if target.tmux is not None:
            target.exit_code, target.exit_note = target.tmux.stop(target.pid)
            target.tmux = None
        elif target.proc is not None:
            self.kids.stop(target.name, target.proc)
            target.exit_code = self.kids.exit_codes.get(target.name)
            self.kids.procs = [(n, p) for n, p in self.kids.procs if p is not target.proc]
            target.proc = None

    def stop_all(self) -> None:
        for target in reversed(self.targets):
            try:
                self.stop_target(target)
            except BaseException:
                if target.tmux is not None:
                    target.tmux.tmux("kill-server", check=False)
        self.kids.stop_all()

    def our_pids(self) -> list[int]:
        pids = [self.backend_pid]
        for t in self.targets:
            pids += [p for p in (t.pid, t.term_pid) if p]
        return pids


# -- measurements ------------------------------------------------------------------------------


@dataclass
class Sample:
    rps: float
    requests: int
    latency_us: dict[str, float]  # p50, p90, p99, p999, max, mean (wrk, CO-corrected)
    wall: float = 0.0
    cpu: float = 0.0  # tuilb CPU seconds during the run
    term_cpu: float = 0.0  # dashboards: the tmux server's CPU seconds
    client_cpu: float = 0.0  # wrk
    backend_cpu: float = 0.0
    idle_cpu: float = 0.0  # the other tuilb processes (and their terminals), idle meanwhile
    other_pct: float = 0.0  # CPU busy outside the benchmark's processes, % of one core
    errors: dict[str, int] = field(default_factory=dict)


_WRK_LAT = re.compile(r"LATENCY_US (.*)")


def run_wrk(port: int, seconds: float, load: Load) -> Sample:
    assert load.script is not None
    out = common.wrk(port, seconds, load.connections, "-s", str(load.script))
    lat = _WRK_LAT.search(out.out)
    if lat is None:
        raise RuntimeError(f"cannot parse wrk output:\n{out.out}")
    latency = {k: float(v) for k, v in (kv.split("=") for kv in lat.group(1).split())}
    return Sample(out.rps, out.requests, latency, errors=out.errors)


def measure(fleet: Fleet, target: Target, load: Load, opts: argparse.Namespace) -> Sample:
    idle = [p for t in fleet.targets if t is not target for p in (t.pid, t.term_pid) if p]
    meter = common.CpuMeter(
        tuilb=[target.pid],
        term=[target.term_pid] if target.term_pid else [],
        backend=[fleet.backend_pid],
        idle=idle,
    )
    sample = run_wrk(target.port, opts.duration, load)
    usage = meter.stop()
    sample.wall = usage.wall
    sample.client_cpu = usage.client
    sample.cpu = usage.cpu["tuilb"]
    sample.term_cpu = usage.cpu["term"]
    sample.backend_cpu = usage.cpu["backend"]
    sample.idle_cpu = usage.cpu["idle"]
    sample.other_pct = usage.other_pct
    common.check_running(target.name, target.proc)
    if target.tmux is not None and target.tmux.dead():
        raise RuntimeError(f"{target.name} exited (the tmux pane is dead)")
    return sample


# -- report ------------------------------------------------------------------------------------


def ms(us: float) -> str:
    return f"{us / 1000:.2f}"


def _row(label: str, cells: list[str]) -> str:
    return common.row(label, cells, 30, 18)


def summarize(samples: list[Sample]) -> dict[str, float]:
    timed = [s for s in samples if s.wall]
    served = [s for s in samples if s.requests]

    def ms_of(p: str) -> float:  # a latency percentile's median, in ms
        return median([s.latency_us[p] for s in samples]) / 1000

    return {
        "rps": median([s.rps for s in samples]),
        "rps_spread_pct": spread([s.rps for s in samples]),
        "p50_ms": ms_of("p50"),
        "p90_ms": ms_of("p90"),
        "p99_ms": ms_of("p99"),
        "p99_spread_pct": spread([s.latency_us["p99"] for s in samples]),
        "p999_ms": ms_of("p999"),
        "max_ms": ms_of("max"),
        **{
            f"{cpu}_us_per_req": median([getattr(s, cpu) / s.requests * 1e6 for s in served])
            for cpu in ("cpu", "term_cpu")
        },
        **{
            f"{cpu}_pct": median([getattr(s, cpu) / s.wall * 100 for s in timed])
            for cpu in ("cpu", "term_cpu", "client_cpu", "backend_cpu", "idle_cpu")
        },
        "other_pct": median([s.other_pct for s in samples]),
    }


# The rows of each load's table: label, and the cell's format (fields: `summarize`'s keys).
ROWS = [
    ("req/s", "{rps:,.0f} ±{rps_spread_pct:.0f}%"),
    ("p50 ms", "{p50_ms:.2f}"),
    ("p90 ms", "{p90_ms:.2f}"),
    ("p99 ms", "{p99_ms:.2f} ±{p99_spread_pct:.0f}%"),
    ("p99.9 ms", "{p999_ms:.2f}"),
    ("max ms", "{max_ms:.1f}"),
    ("tuilb CPU µs/request", "{cpu_us_per_req:.1f}"),
    ("tuilb CPU (% of a core)", "{cpu_pct:.0f}%"),
    ("tmux server CPU", "{term_cpu_pct:.0f}%"),
    ("wrk CPU", "{client_cpu_pct:.0f}%"),
    ("backend CPU", "{backend_cpu_pct:.0f}%"),
    ("idle tuilbs (+ their tmux)", "{idle_cpu_pct:.0f}%"),
    ("everything else on the box", "{other_pct:.0f}%"),
]


def report(
    results: dict[str, dict[str, list[Sample]]], targets: list[Target], opts: argparse.Namespace
) -> dict[str, Any]:
    names = [t.name for t in targets]
    summary: dict[str, Any] = {"median": {}, "comparison": {}, "verdict": {}}
    print("\nmedians over rounds (± half the min-max range, relative to the median)")
    for load in opts.loads:
        meds = {n: summarize(results[load.name][n]) for n in names}
        summary["median"][load.name] = meds
        print(f"\n{load.name}: {load.describe(opts.duration)}")
        print(_row("", names))
        for label, cell in ROWS:
            cells = []
            for t in targets:
                if label == "tmux server CPU" and not t.term_pid:
                    cells.append("-")
                else:
                    cells.append(cell.format(**meds[t.name]))
            print(_row(label, cells))

    print("\ncompared with headless (ratio, or difference, of the medians; [per-round median])")
    loads = [load.name for load in opts.loads]
    print(_row("", loads))
    base = "headless"
    for t in targets:
        if t.name == base:
            continue
        cells: dict[str, list[str]] = {"rps": [], "p99": [], "cpu": []}
        for load in loads:
            mine, theirs = summary["median"][load][t.name], summary["median"][load][base]
            ratio = mine["rps"] / theirs["rps"] if theirs["rps"] else 0.0
            delta = mine["p99_ms"] - theirs["p99_ms"]
            paired = median(
                [
                    (a.latency_us["p99"] - b.latency_us["p99"]) / 1000
                    for a, b in zip(results[load][t.name], results[load][base], strict=False)
                ]
            )
            per_req = theirs["cpu_us_per_req"]
            cpu = mine["cpu_us_per_req"] / per_req if per_req else 0.0
            summary["comparison"].setdefault(t.name, {})[load] = {
                "rps_ratio": ratio,
                "p99_delta_ms": delta,
                "p99_delta_ms_paired_median": paired,
                "cpu_per_request_ratio": cpu,
            }
            cells["rps"].append(f"{ratio:.2f}x")
            cells["p99"].append(f"{delta:+.2f} [{paired:+.2f}]")
            cells["cpu"].append(f"{cpu:.2f}x")
        print(_row(f"{t.name} req/s", cells["rps"]))
        print(_row(f"{t.name} p99 ms", cells["p99"]))
        print(_row(f"{t.name} CPU per request", cells["cpu"]))

    dash = next(
        (t for t in targets if t.kind == "dashboard" and t.refresh == DEFAULT_REFRESH), None
    )
    if dash is not None:
        comp = summary["comparison"][dash.name]
        print(f"\ntargets (issue 3), {dash.name} at the default refresh vs headless:")
        if "saturated" in comp:
            ratio = comp["saturated"]["rps_ratio"]
            ok = ratio >= THROUGHPUT_TARGET
            summary["verdict"]["throughput"] = {"load": "saturated", "ratio": ratio, "met": ok}
            print(
                f"  throughput (saturated) {ratio:.3f}x, target >= {THROUGHPUT_TARGET}x: "
                + ("met" if ok else "NOT met")
            )
        for load in loads:
            delta = comp[load]["p99_delta_ms"]
            ok = delta <= P99_TARGET_MS
            summary["verdict"][f"p99_{load}"] = {"delta_ms": delta, "met": ok}
            print(
                f"  p99 ({load}) {delta:+.2f} ms, target <= +{P99_TARGET_MS:g} ms: "
                + ("met" if ok else "NOT met")
            )
    common.note_other_load(
        common.other_load(results),
        "): absolute figures are depressed and noisier than on a quiet machine; compare "
        "within the run",
    )
    return summary


# -- diagnostics -------------------------------------------------------------------------------


def stalls(fleet: Fleet, opts: argparse.Namespace, backend_ports: list[int]) -> dict[str, Any]:
    """One more dashboard, traced (see traced_main), through every load: where the loop went."""
    port = common.free_ports(1)[0]
    target = Target("traced", "dashboard", port, opts.refresh_list[0])
    out = fleet.workdir / "stalls.json"
    conf = fleet.workdir / "traced.toml"
    refresh = None if target.refresh == DEFAULT_REFRESH else target.refresh
    conf.write_text(tuilb_cfg(port, backend_ports, refresh))
    fleet.targets.append(target)
    fleet.start_dashboard(target, [*fleet.me, "_traced", str(out), "run", str(conf)])
    windows: dict[str, tuple[float, float]] = {}
    run_wrk(port, 1, opts.loads[0])  # warm-up
    for load in opts.loads:
        began = time.monotonic()
        sample = run_wrk(port, opts.duration, load)
        windows[load.name] = (began, time.monotonic())
        print(
            f"  traced dashboard, {load.name}: {sample.rps:,.0f} req/s, "
            f"p99 {ms(sample.latency_us['p99'])} ms (the tracing itself costs a little)"
        )
    fleet.stop_target(target)
    fleet.targets.remove(target)
    if not out.exists():
        print("note: the traced dashboard wrote no timings")
        return {}
    records = json.loads(out.read_text())
    result: dict[str, Any] = {}
    kinds = ("repaint", "refresh_data", "ui", "trio", "gc0", "gc1", "gc2")
    print(
        "\nhost-loop timings of the traced dashboard (ui/trio: asyncio callbacks >= 1 ms; "
        "repaint: Screen._on_timer_update;\nrefresh_data: TuilbApp.refresh_data; gcN: "
        "collections of generation N)"
    )
    print(f"{'':<22}{'per s':>8}{'median ms':>11}{'p90 ms':>9}{'max ms':>9}{'% of time':>11}")
    for load, (began, ended) in windows.items():
        seconds = ended - began
        print(f"{load}:")
        for kind in kinds:
            took = sorted(d for t, d, k in records if k == kind and began <= t < ended)
            if not took:
                continue
            stats = {
                "per_s": len(took) / seconds,
                "median_ms": median(took) * 1000,
                "p90_ms": took[math.ceil(0.9 * len(took)) - 1] * 1000,  # nearest rank
                "max_ms": took[-1] * 1000,
                "time_pct": sum(took) / seconds * 100,
            }
            result.setdefault(load, {})[kind] = stats
            print(
                f"  {kind:<20}{stats['per_s']:>8.1f}{stats['median_ms']:>11.2f}"
                f"{stats['p90_ms']:>9.2f}{stats['max_ms']:>9.2f}{stats['time_pct']:>10.1f}%"
            )
        long_ui = [d for t, d, k in records if k == "ui" and began <= t < ended and d >= 0.005]
        result.setdefault(load, {})["ui_callbacks_over_5ms_per_s"] = len(long_ui) / seconds
        print(f"  ui callbacks >= 5 ms: {len(long_ui) / seconds:.1f}/s")
    return result


def profile(target: Target, opts: argparse.Namespace, out: Path) -> dict[str, Any]:
    """py-spy record on a dashboard during one more saturated run; print where time went."""
    seconds = max(3.0, opts.duration)
    ran = common.pyspy_record(
        target.pid, out, seconds, 200, lambda: run_wrk(target.port, seconds, opts.loads[0])
    )
    return {} if ran is None else summarize_profile(out)


def _short(frame: str) -> str:
    # "func (/venv/.../site-packages/textual/dom.py:123)" -> "func (textual/dom.py)"
    return re.sub(
        r" \((?:[^()]*/(?:site-packages|python3\.\d+)/)?([^()]*?)(?::\d+)?\)$", r" (\1)", frame
    )


_UI_FRAME = re.compile(r"\((?:[^()]*/)?(?:textual|rich|tuilb/ui)/")


def summarize_profile(path: Path, top: int = 12) -> dict[str, Any]:
    """Main-thread samples by owner (UI, engine, idle) and the top UI frames."""
    shares = {"engine": 0, "ui": 0, "idle": 0, "other": 0}
    threads = 0
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    for frames, n in common.collapsed_stacks(path):
        if any("Thread._bootstrap" in f for f in frames):
            threads += n  # Textual's input and writer threads, trio's I/O thread
            continue
        if any(_UI_FRAME.search(f) for f in frames):
            shares["ui"] += n
            common.tally([_short(f) for f in frames], n, own, incl)
        elif any(_is_trio(f) for f in frames):
            shares["engine"] += n
        elif "select (" in frames[-1]:
            shares["idle"] += n
        else:
            shares["other"] += n
    main = sum(shares.values())
    if not main:
        return {}
    print(
        f"\nprofile {path.name}: {main} samples of the dashboard's main thread during a "
        f"saturated run (and {threads} of its other threads: input, writer, trio's I/O wait)"
    )
    labels = {
        "engine": "trio engine (guest ticks: the proxy)",
        "ui": "UI (textual, rich, tuilb.ui)",
        "idle": "host loop waiting (select)",
        "other": "other main-thread code (asyncio, ...)",
    }
    for key, label in labels.items():
        print(f"  {shares[key] / main * 100:5.1f}%  {label}")
    ui_total = shares["ui"] or 1
    for title, table in (("self", own), ("inclusive", incl)):
        print(f"  top UI frames, {title} (% of UI samples):")
        limit = top if title == "self" else top + 6
        for frame, n in common.top_frames(table, ui_total, 0.95, limit):
            print(f"    {n / ui_total * 100:5.1f}%  {frame}")
    return {
        "main_thread_samples": main,
        "other_thread_samples": threads,
        "main_thread_pct": {k: v / main * 100 for k, v in shares.items()},
        "top_ui_inclusive": sorted(incl.items(), key=lambda kv: -kv[1])[:40],
        "top_ui_self": sorted(own.items(), key=lambda kv: -kv[1])[:40],
    }


# -- the run -----------------------------------------------------------------------------------


def make_targets(opts: argparse.Namespace, ports: list[int]) -> list[Target]:
    it = iter(ports)
    targets = [Target("headless", "headless", next(it))]
    if opts.guest:
        targets.append(Target("guest", "guest", next(it)))
        targets.append(Target("guest-thread", "guest", next(it), driver="thread"))
    for refresh in opts.refresh_list:
        name = "dashboard" if len(opts.refresh_list) == 1 else f"dashboard@{refresh:g}"
        targets.append(Target(name, "dashboard", next(it), refresh))
    return targets


def run(opts: argparse.Namespace) -> int:
    if not common.need("wrk", "tmux", "haproxy"):
        return 2
    info = common.machine()
    refreshes = ", ".join(f"{r:g}/s" for r in opts.refresh_list)
    print(common.headline("dashboard", info))
    print(
        f"{opts.rounds} rounds, dashboard refresh {refreshes}; loads: "
        + "; ".join(f"{load.name} {load.describe(opts.duration)}" for load in opts.loads)
    )
    bench = common.Bench(opts, "tuilb-dash-bench-")
    for load in opts.loads:
        load.write_script(bench.workdir)
    loads = {load.name: load for load in opts.loads}
    fleet = Fleet(bench.workdir)
    targets: list[Target] = []
    results: dict[str, dict[str, list[Sample]]] = {}
    summary: dict[str, Any] = {}
    diagnostics: dict[str, Any] = {}
    rss: dict[str, int] = {}

    def body() -> None:
        ports = common.free_ports(3 + 3 + len(opts.refresh_list))
        backend_ports = ports[:3]
        fleet.start_backend(backend_ports)
        targets[:] = make_targets(opts, ports[3:])
        for target in targets:
            fleet.start_target(target, backend_ports)
        for target in targets:  # warm-up, not recorded
            run_wrk(target.port, 1, opts.loads[0])
        results.update(
            bench.rounds(
                targets, list(loads), lambda t, name: measure(fleet, t, loads[name], opts), "load"
            )
        )
        for target in targets:
            try:
                rss[target.name] = common.peak_rss_kib(target.pid)
            except OSError:
                pass
        for target in targets:
            if target.tmux is not None and "Total" not in target.tmux.screen():
                bench.problems.append(f"{target.name}: the pane no longer shows the table")
        summary.update(report(results, targets, opts))
        peaks = [f"{rss[t.name] / 1024:.1f}" if t.name in rss else "-" for t in targets]
        print(_row("peak RSS (MiB)", peaks))
        bench.note_discarded()
        if opts.profile:
            dash = next(t for t in targets if t.kind == "dashboard")
            diagnostics["profile"] = profile(dash, opts, Path(opts.profile).resolve())
        if opts.stalls:
            print("\n--stalls: a traced dashboard (its own tmux) through every load")
            diagnostics["stalls"] = stalls(fleet, opts, backend_ports)

    def running() -> list[str]:
        return [t.name for t in targets] + ["backend"]

    kept = "logs, configs and final screens"
    code = bench.guard(body, fleet.stop_all, running, fleet.kids.log_text, kept)
    if code:
        return code

    for target in targets:
        note = f" ({target.exit_note})" if target.exit_note else ""
        bench.check_tuilb(target.name, target.exit_code, fleet.kids.log_text(target.name), note)
    bench.finish("no wrk socket errors or non-2xx", kept)
    settings = {
        "loads": [
            {"name": load.name, "connections": load.connections, "delay_ms": load.delay_ms}
            for load in opts.loads
        ],
        "refresh": opts.refresh_list,
        "guest": opts.guest,
    }
    issue = {"targets": {"throughput_ratio": THROUGHPUT_TARGET, "p99_delta_ms": P99_TARGET_MS}}
    bench.save(
        info, settings, results, rss, settings_tail=issue, diagnostics=diagnostics, **summary
    )
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = common.parser(__doc__, "3 rounds, 2 s runs")
    parser.add_argument(
        "--connections", type=int, default=20, help="wrk connections, saturated load (20)"
    )
    parser.add_argument(
        "--light-connections", type=int, default=2, help="wrk connections, light load (2)"
    )
    parser.add_argument(
        "--paced-connections",
        type=int,
        default=10,
        help="wrk connections, paced load (10; 0 leaves the paced load out)",
    )
    parser.add_argument(
        "--paced-delay",
        type=int,
        default=5,
        metavar="MS",
        help="paced load: think time before each request on each connection (5 ms)",
    )
    parser.add_argument(
        "--refresh",
        default=f"{DEFAULT_REFRESH:g}",
        metavar="N[,N...]",
        help="dashboard refreshes per second; several give one dashboard target each, side by "
        "side; a value other than the default is written as `[ui] refresh = N` (default 2)",
    )
    parser.add_argument(
        "--guest",
        action="store_true",
        help="add a target: the engine as a trio guest on a bare asyncio loop, no UI",
    )
    parser.add_argument(
        "--stalls",
        action="store_true",
        help="afterwards, run a dashboard whose host loop is timed (slow callbacks, repaints, "
        "refresh_data, gc) through every load and print the timings",
    )
    profile = "afterwards, py-spy record the dashboard during one saturated run into FILE"
    opts = common.parse(parser, argv, (60.0, 20.0), profile)
    opts.loads = [
        Load("saturated", opts.connections),
        Load("light", opts.light_connections),
    ]
    if opts.paced_connections:
        opts.loads.append(Load("paced", opts.paced_connections, max(1, opts.paced_delay)))
    try:
        opts.refresh_list = [float(r) for r in opts.refresh.split(",")]
    except ValueError:
        parser.error(f"--refresh: not a number list: {opts.refresh!r}")
    if not all(0.2 <= r <= 30 for r in opts.refresh_list):
        parser.error("--refresh: tuilb accepts 0.2 to 30 per second")
    if len(set(opts.refresh_list)) != len(opts.refresh_list):
        parser.error("--refresh: each value once")
    return opts


def main() -> int:
    helpers: dict[str, Callable[..., int | None]] = {
        "_guest": lambda *args: guest_main(*args[:2]),
        "_traced": lambda out, *args: traced_main(out, list(args)),
    }
    return common.main(helpers, run, parse_args)


if __name__ == "__main__":
    sys.exit(main())
