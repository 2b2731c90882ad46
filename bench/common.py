"""What bench/l4.py, bench/l7.py and bench/dashboard.py share.

The scripts import it as `common` (a script's own directory is on sys.path when it runs as
`python bench/NAME.py`). In order:
- helpers of the processes the scripts re-invoke themselves as (servers, transfer clients);
- process bookkeeping: free ports, `Children` (every subprocess, in its own session, stopped
  on exit), starting HAProxy, tuilb and helper processes, waiting for them;
- CPU accounting from /proc: per process, reaped children (the load generator), the whole
  machine, and `CpuMeter`, which turns them into one test's figures and "everything else";
- configurations: HAProxy (the C HTTP backend, proxies) and tuilb TOML;
- measurements: wrk (run and parse), transfer clients, `Target` and `Sample` of l4/l7;
- `Bench`: one run's work directory, its interleaved rounds with the re-run of samples taken
  under outside load, failure handling, the problems list and the JSON file;
- report helpers (medians, spreads, table rows, shared notes), py-spy, command line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

HOST = "127.0.0.1"
MIB = 1 << 20
CHUNK = MIB  # transfer clients and sinks: 1 MiB sendall / recv_into
CLK_TCK = os.sysconf("SC_CLK_TCK")
CLOSE = ("-H", "Connection: close")  # wrk: a new connection per request


# -- helpers run as separate processes ---------------------------------------------------------


def serve_forever(handle: Callable[[socket.socket], None], backlog: int = 128) -> None:
    """Listen on a free port, print it (the parent reads it), serve each connection in a
    thread of its own."""
    srv = socket.create_server((HOST, 0), backlog=backlog)
    print(srv.getsockname()[1], flush=True)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def timed_client(transfer: Callable[[], int]) -> None:
    """Run a transfer (it returns the byte count the other end saw, -1 if unknown) and print
    JSON for `run_transfer`: its seconds, that count and this process's CPU seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_start = usage.ru_utime + usage.ru_stime
    start = time.perf_counter()
    count = transfer()
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu_start
    print(json.dumps({"seconds": seconds, "count": count, "cpu": cpu}))


# -- process bookkeeping -----------------------------------------------------------------------


def free_ports(n: int) -> list[int]:
    """n distinct free ports (all held open together, then released)."""
    socks = [socket.create_server((HOST, 0)) for _ in range(n)]
    try:
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Children:
    """Every long-lived subprocess we start; `stop_all()` ends them (TERM, then KILL)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.exit_codes: dict[str, int | None] = {}

    def start(
        self, name: str, argv: list[str], stdout: int | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=stdout if stdout is not None else log,
            stderr=log,
            cwd=self.workdir,
            start_new_session=True,  # Ctrl-C reaches us only; we stop them in order
        )
        self.procs.append((name, proc))
        return proc

    def start_server(self, name: str, argv: list[str]) -> tuple[subprocess.Popen[bytes], int]:
        """A helper that prints its port first (see `serve_forever`): the process and port."""
        proc = self.start(name, argv, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        return proc, int(proc.stdout.readline())

    def start_haproxy(
        self, name: str, cfg: str, ports: list[int], what: str
    ) -> subprocess.Popen[bytes]:
        """HAProxy with `cfg` (saved as NAME.cfg), once it accepts on every port."""
        haproxy = shutil.which("haproxy")
        if haproxy is None:
            raise RuntimeError("haproxy is needed: apt-get install haproxy")
        (self.workdir / f"{name}.cfg").write_text(cfg)
        proc = self.start(name, [haproxy, "-f", f"{name}.cfg", "-db"])
        wait_for(lambda: all(port_open(p) for p in ports), proc, what)
        return proc

    def start_tuilb(
        self, name: str, conf: Path, listeners: int, what: str
    ) -> subprocess.Popen[bytes]:
        """`python -m tuilb run CONF --headless`, once its log says all listeners listen."""
        argv = [sys.executable, "-m", "tuilb", "run", str(conf), "--headless"]
        proc = self.start(name, argv)
        wait_for(lambda: self.log_text(name).count(" listening ") >= listeners, proc, what)
        return proc

    def log_text(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, name: str, proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.exit_codes[name] = proc.returncode

    def stop_all(self) -> None:
        for name, proc in reversed(self.procs):
            try:
                self.stop(name, proc)
            except BaseException:
                proc.kill()
        self.procs.clear()


def wait_for(check: Callable[[], bool], proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if check():
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} while starting")
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not start within 15 s")


def port_open(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=0.5).close()
    except OSError:
        return False
    return True


def check_running(name: str, proc: subprocess.Popen[bytes] | None, during: str = "") -> None:
    """A RuntimeError if our child `proc` has exited (during a test)."""
    if proc is not None and proc.poll() is not None:
        where = f" during {during}" if during else ""
        raise RuntimeError(f"{name} exited (status {proc.returncode}){where}")


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    haproxy = shutil.which("haproxy")
    version = ""
    if haproxy:
        first = subprocess.run([haproxy, "-v"], capture_output=True, text=True).stdout
        version = " ".join(first.split()[:3]) if first else ""  # "HAProxy version 2.6.12-1"
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "haproxy": version,
    }


def headline(kind: str, info: dict[str, Any]) -> str:
    return (
        f"tuilb {kind} benchmark  {info['date']}  {info['cpus']} CPUs ({info['cpu_model']}), "
        f"Python {info['python']}, {info['haproxy'] or 'no haproxy'}"
    )


# -- CPU accounting ----------------------------------------------------------------------------


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process, from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK  # fields 14 and 15 of stat(5)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat."""
    return sum(cpu_split(pid))


def cpu_of(pids: Sequence[int]) -> float:
    """CPU seconds of some processes together; one that has gone counts 0."""
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except OSError:
            pass
    return total


def machine_busy() -> float:
    """CPU seconds all CPUs spent busy since boot (user, nice, system, irq, softirq, steal)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def children_cpu() -> float:
    """CPU seconds of reaped children: only the load generator is reaped during a test."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


@dataclass
class Usage:
    wall: float  # seconds between the meter's start and stop
    client: float  # CPU seconds of the children reaped meanwhile: the load generator
    cpu: dict[str, float]  # CPU seconds per group of processes
    other_pct: float  # CPU busy outside all of these, % of one core


class CpuMeter:
    """CPU time over one test: of named groups of processes (the proxy, the backend, ...),
    of the load generator (a child reaped during the test) and of the whole machine, whose
    remainder is "everything else on the box"."""

    def __init__(self, **groups: Sequence[int]) -> None:
        self.groups = groups
        self.before = {name: cpu_of(pids) for name, pids in groups.items()}
        self.client = children_cpu()
        self.busy = machine_busy()
        self.start = time.perf_counter()

    def stop(self) -> Usage:
        wall = time.perf_counter() - self.start
        busy = machine_busy() - self.busy
        client = children_cpu() - self.client
        cpu = {name: cpu_of(pids) - self.before[name] for name, pids in self.groups.items()}
        other = max(0.0, busy - client - sum(cpu.values())) / wall * 100
        return Usage(wall, client, cpu, other)


# -- configurations ----------------------------------------------------------------------------


def haproxy_maxconn() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    # HAProxy wants about 2 * maxconn descriptors (2.5 * with splice's pipes) plus a few,
    # and refuses to start when the limit is lower. The benchmark needs only ~100.
    return max(256, min(4096, (soft - 100) // 3))


def _haproxy_head(defaults: list[str]) -> str:
    lines = "".join(f"    {line}\n" for line in defaults)
    return f"global\n    nbthread 1\n    maxconn {haproxy_maxconn()}\ndefaults\n{lines}"


def http_backend_cfg(ports: list[int]) -> str:
    """The HTTP backend: HAProxy answering every request itself, on each port."""
    binds = "".join(f"    bind {HOST}:{port}\n" for port in ports)
    head = _haproxy_head(
        ["mode http", "timeout client 60s", "timeout server 60s", "timeout connect 5s"]
    )
    return (
        f"{head}frontend http_backend\n{binds}"
        "    http-request return status 200 content-type text/plain string ok\n"
    )


def haproxy_proxy_cfg(defaults: list[str], routes: dict[str, tuple[int, int]]) -> str:
    """A proxy: per route NAME: (port, backend port), a frontend NAME_in on the port to a
    backend NAME_pool with one server."""
    text = _haproxy_head(defaults)
    for name, (port, _) in routes.items():
        text += f"frontend {name}_in\n    bind {HOST}:{port}\n    default_backend {name}_pool\n"
    for name, (_, backend) in routes.items():
        text += f"backend {name}_pool\n    server b1 {HOST}:{backend}\n"
    return text


def tuilb_cfg(
    listeners: list[tuple[str, int, str]],
    pools: dict[str, list[tuple[str, int]]],
    protocol: str,
    listener_extra: str = "",
) -> str:
    """A tuilb TOML config: listeners (name, port, pool), all of one protocol (plus
    `listener_extra` lines), round-robin pools of (name, port) backends, and a short
    shutdown grace."""
    text = ""
    for name, port, pool in listeners:
        text += f"""[[listeners]]
name = "{name}"
bind = "{HOST}:{port}"
protocol = "{protocol}"
pool = "{pool}"
{listener_extra}
"""
    for pool, backends in pools.items():
        text += f'[pools.{pool}]\nalgorithm = "round_robin"\n'
        for name, port in backends:
            text += f'\n[[pools.{pool}.backends]]\nname = "{name}"\naddress = "{HOST}:{port}"\n'
        text += "\n"
    return text + "[timeouts]\nshutdown_grace = 2.0\n"


# -- measurements ------------------------------------------------------------------------------


@dataclass
class Target:
    """An l4/l7 target: one listener for the HTTP load, one for the transfer."""

    name: str
    http_port: int
    bulk_port: int
    proc: subprocess.Popen[bytes] | None = None  # the proxy process whose CPU we measure

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


@dataclass
class Sample:
    value: float  # req/s or MB/s
    amount: float  # requests, or bytes
    wall: float = 0.0  # seconds: wrk's whole run, or the transfer itself
    cpu: float | None = None  # proxy CPU seconds during the test
    client_cpu: float = 0.0  # load generator (wrk, or the transfer client) CPU seconds
    backend_cpu: float = 0.0  # HTTP backend or sink CPU seconds
    other_pct: float = 0.0  # CPU busy outside the benchmark's processes, % of one core
    errors: dict[str, int] = field(default_factory=dict)


S = TypeVar("S", bound=Sample)


@dataclass
class Wrk:
    rps: float
    requests: int
    errors: dict[str, int]  # socket errors by kind, non-2xx/3xx answers: the non-zero ones
    out: str  # the whole output, for what a script parses itself


_WRK_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_WRK_TOTAL = re.compile(r"(\d+) requests in ")
_WRK_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


def wrk(port: int, seconds: float, connections: int, *args: str) -> Wrk:
    """`wrk -t1 -cN -dSs ARGS http://HOST:PORT/`, parsed."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", *args, f"http://{HOST}:{port}/"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30).stdout
    rps, total = _WRK_RPS.search(out), _WRK_TOTAL.search(out)
    if rps is None or total is None:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    errors: dict[str, int] = {}
    if m := _WRK_SOCKET.search(out):
        for key, value in zip(("connect", "read", "write", "timeout"), m.groups(), strict=True):
            if int(value):
                errors[key] = int(value)
    if m := _WRK_NON2XX.search(out):
        errors["non2xx"] = int(m.group(1))
    return Wrk(float(rps.group(1)), int(total.group(1)), errors, out)


def run_transfer(argv: list[str], nbytes: int, timeout: float, cls: type[S]) -> S:
    """Run a transfer client (`timed_client`): MB/s, timed by the client itself, start-up
    excluded; an error when it failed or the other end counted other than nbytes."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        return cls(0.0, 0, errors={"client_failed": 1})
    result = json.loads(proc.stdout)
    errors = {} if result["count"] == nbytes else {"count_mismatch": 1}
    seconds = float(result["seconds"])
    return cls(nbytes / seconds / 1e6, nbytes, seconds, client_cpu=result["cpu"], errors=errors)


HTTP_TESTS = ("keepalive", "newconn")  # wrk through the HTTP listener; else: the transfer


def measure_proxy(
    target: Target, test: str, run: ProxyRun, opts: argparse.Namespace, backends: dict[str, int]
) -> Sample:
    """One l4/l7 sample: a wrk run (keep-alive, or `newconn`: a connection per request) or a
    transfer through the target, with the CPU of the proxy, of the load generator (wrk; a
    transfer client reports its own), of the backend ("http" or "sink") and of the rest."""
    transfer = test not in HTTP_TESTS
    backend = backends["sink" if transfer else "http"]
    meter = CpuMeter(proxy=[target.pid] if target.pid else [], backend=[backend])
    if transfer:
        sample = run.transfer(target.bulk_port)
    else:
        close = test == "newconn"
        sample = run.wrk(target.http_port, opts.duration, opts.connections, close)
    usage = meter.stop()
    if not transfer:  # a transfer: the client timed it itself, start-up excluded
        sample.wall = usage.wall
        sample.client_cpu = usage.client
    sample.backend_cpu = usage.cpu["backend"]
    if target.pid:
        sample.cpu = usage.cpu["proxy"]
    sample.other_pct = usage.other_pct
    check_running(target.name, target.proc, test)
    return sample


@dataclass
class ProxyRun:
    """What is particular to an l4/l7 run; `run_proxies` does the rest."""

    kind: str  # "L4", "L7": for the headline
    settings: str  # the line under it
    prefix: str  # of the work directory
    tests: Sequence[str]  # HTTP_TESTS, then the transfer's name
    start: Callable[[Children], tuple[list[Target], dict[str, int]]]  # targets; "http", "sink"
    wrk: Callable[[int, float, int, bool], Sample]  # port, seconds, connections, close
    transfer: Callable[[int], Sample]  # port
    report: Callable[[Any, list[Target], dict[str, int]], dict[str, Any]]  # results, rss
    profile: Callable[[list[Target], dict[str, int], dict[str, Any]], None]  # adds to summary
    tuilbs: Sequence[str]  # whose exit status and log to check
    json_settings: dict[str, Any]
    exit_note: str = ""


# -- the run -----------------------------------------------------------------------------------


class Named(Protocol):
    @property
    def name(self) -> str: ...


T = TypeVar("T", bound=Named)
R = TypeVar("R")


class Bench:
    """One run: its options, work directory, clock, problems and re-run samples."""

    def __init__(self, opts: argparse.Namespace, prefix: str) -> None:
        self.opts = opts
        self.started = time.monotonic()
        self.workdir = Path(tempfile.mkdtemp(prefix=prefix))
        self.problems: list[str] = []
        self.discarded: list[dict[str, Any]] = []

    def rounds(
        self,
        targets: list[T],
        tests: Sequence[str],
        measure: Callable[[T, str], R],
        key: str = "test",
    ) -> dict[str, dict[str, list[R]]]:
        """Every test through every target, once per round, the targets' order rotating from
        round to round. A sample during which other processes kept more than --max-other %
        of a core busy is measured again (twice at most, within --retry-budget seconds for
        the whole run); the discarded ones are kept, with `key`: the test's name."""
        opts = self.opts
        results: dict[str, dict[str, list[R]]] = {t: {x.name: [] for x in targets} for t in tests}
        retry_left = opts.retry_budget
        for rnd in range(opts.rounds):
            redone = 0
            order = targets[rnd % len(targets) :] + targets[: rnd % len(targets)]
            for test in tests:
                for target in order:
                    for attempt in range(3):
                        began = time.monotonic()
                        sample: Any = measure(target, test)
                        if sample.errors:
                            where = f"round {rnd + 1} {test} {target.name}"
                            self.problems.append(f"{where}: {sample.errors}")
                        time.sleep(0.2)
                        if attempt:
                            retry_left -= time.monotonic() - began
                        if sample.other_pct <= opts.max_other or attempt == 2 or retry_left <= 0:
                            break
                        # Another process took a large share of the CPUs: this sample says
                        # more about it than about the proxy. Keep it on record, measure again.
                        self.discarded.append({key: test, "target": target.name, **vars(sample)})
                        redone += 1
                    results[test][target.name].append(sample)
            elapsed = time.monotonic() - self.started
            note = f", {redone} sample(s) re-run under outside load" if redone else ""
            print(f"  round {rnd + 1}/{opts.rounds} done ({elapsed:.0f} s{note})", flush=True)
        return results

    def note_discarded(self) -> None:
        if self.discarded:
            print(
                f"{len(self.discarded)} sample(s) were measured again because other processes "
                f"kept more than {self.opts.max_other:g}% of a core busy during them"
            )

    def guard(
        self,
        body: Callable[[], None],
        stop: Callable[[], None],
        running: Callable[[], list[str]],
        log_text: Callable[[str], str],
        kept: str,
    ) -> int:
        """Run `body`, then stop everything: 0. On Ctrl-C or SIGTERM: remove the work
        directory, 130. On a failure: print it and the last lines of the logs of the
        processes `running()` names, keep the work directory (`kept`: what it holds), 1."""
        try:
            body()
        except KeyboardInterrupt:
            print("\ninterrupted: stopping everything", file=sys.stderr)
            stop()
            shutil.rmtree(self.workdir, ignore_errors=True)
            return 130
        except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
            print(f"\nbenchmark failed: {exc}", file=sys.stderr)
            for name in running():
                tail = log_text(name).strip().splitlines()[-5:]
                if tail:
                    print(f"--- {name} log (last lines):", *tail, sep="\n  ", file=sys.stderr)
            print(f"{kept} kept in {self.workdir}", file=sys.stderr)
            return 1
        finally:
            stop()
        return 0

    def check_tuilb(self, name: str, code: int | None, log: str, note: str = "") -> None:
        """Problems: a tuilb that did not exit with 0 on SIGTERM, and every warning, error
        and traceback in its log."""
        if code != 0:
            self.problems.append(f"{name} exited with status {code} on SIGTERM{note}")
        for line in log.splitlines():
            if " WARN" in line or " ERROR" in line or "Traceback" in line:
                self.problems.append(f"{name} log: {line}")

    def finish(self, clean: str, kept: str) -> None:
        """Print the problems (or `clean`), remove the work directory unless there were
        problems or --keep, print the total time."""
        problems = self.problems
        print("\nproblems seen:" if problems else f"\nno errors: {clean}")
        for line in problems[:40]:
            print(f"  {line}")
        if len(problems) > 40:
            print(f"  ... and {len(problems) - 40} more")
        if problems or self.opts.keep:
            print(f"{kept} kept in {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)
        print(f"total time {time.monotonic() - self.started:.0f} s")

    def save(
        self,
        info: dict[str, Any],
        settings: dict[str, Any],
        results: dict[str, dict[str, list[Any]]],
        rss: dict[str, int],
        settings_tail: dict[str, Any] | None = None,
        **more: Any,
    ) -> None:
        """With --json FILE: the settings (the common ones, the script's `settings` and
        `settings_tail`), every sample, discarded ones and problems included, and `more`."""
        if not self.opts.json:
            return
        data = {
            "machine": info,
            "settings": {
                "rounds": self.opts.rounds,
                "duration_s": self.opts.duration,
                **settings,
                "max_other_pct": self.opts.max_other,
                "retry_budget_s": self.opts.retry_budget,
                **(settings_tail or {}),
            },
            "samples": {
                test: {name: [vars(s) for s in samples] for name, samples in per.items()}
                for test, per in results.items()
            },
            "peak_rss_kib": rss,
            "discarded_samples": self.discarded,
            "problems": self.problems,
            **more,
        }
        Path(self.opts.json).write_text(json.dumps(data, indent=2) + "\n")
        print(f"results saved to {self.opts.json}")


def run_proxies(opts: argparse.Namespace, run: ProxyRun) -> int:
    """An l4/l7 run: start everything, warm up, the rounds, report, profile, check, save."""
    info = machine()
    print(headline(run.kind, info))
    print(run.settings)
    bench = Bench(opts, run.prefix)
    kids = Children(bench.workdir)
    results: dict[str, dict[str, list[Sample]]] = {}
    rss: dict[str, int] = {}
    summary: dict[str, Any] = {}

    def body() -> None:
        targets, backends = run.start(kids)
        for target in targets:  # warm-up, not recorded
            if target.proc is not None:
                run.wrk(target.http_port, 1, opts.connections, False)

        def measure(target: Target, test: str) -> Sample:
            return measure_proxy(target, test, run, opts, backends)

        results.update(bench.rounds(targets, run.tests, measure))
        for target in targets:
            if target.pid:
                rss[target.name] = peak_rss_kib(target.pid)
        summary.update(run.report(results, targets, rss))
        bench.note_discarded()
        if opts.profile:
            run.profile(targets, backends, summary)

    def running() -> list[str]:
        return [name for name, _ in kids.procs]

    code = bench.guard(body, kids.stop_all, running, kids.log_text, "logs and configs")
    if code:
        return code
    for name in run.tuilbs:
        if name in kids.exit_codes:
            bench.check_tuilb(name, kids.exit_codes[name], kids.log_text(name), run.exit_note)
    bench.finish("no wrk socket errors, counts verified", "logs and configs")
    bench.save(info, run.json_settings, results, rss, **summary)
    return 0


def need(*tools: str) -> bool:
    """Whether every tool is installed; says which is not."""
    for tool in tools:
        if shutil.which(tool) is None:
            print(f"{tool} is needed: apt-get install {tool}", file=sys.stderr)
            return False
    return True


# -- report ------------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def spread(values: list[float]) -> float:
    """Half the min-max range, relative to the median, in percent."""
    mid = median(values)
    return (max(values) - min(values)) / 2 / mid * 100 if len(values) > 1 and mid else 0.0


def row(label: str, cells: list[str], label_width: int = 30, width: int = 17) -> str:
    return f"{label:<{label_width}}" + "".join(f"{c:>{width}}" for c in cells)


MEDIANS = "\nmedians over rounds (± half the min-max range, relative to the median)"


def median_table(
    results: dict[str, dict[str, list[Any]]],
    names: list[str],
    label: dict[str, str],
    fmt: Callable[[float, str], str],
    row: Callable[[str, list[str]], str],
    after: Callable[[str], None] = lambda test: None,
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Print per test the median of each target's sample values ± the spread (then what
    `after(test)` prints); return the medians and the spreads, by test and target."""
    med: dict[str, dict[str, float]] = {}
    spreads: dict[str, dict[str, float]] = {}
    print(MEDIANS)
    print(row("", names))
    for test, per in results.items():
        cells = []
        for name in names:
            values = [s.value for s in per[name]]
            med.setdefault(test, {})[name] = median(values)
            spreads.setdefault(test, {})[name] = spread(values)
            cells.append(f"{fmt(median(values), test)} ±{spread(values):.0f}%")
        print(row(label[test], cells))
        after(test)
    return med, spreads


def load_shares(samples: Sequence[Sample], cells: dict[str, list[str]]) -> list[float]:
    """Medians, in % of one core, of the load generator, the backend and everything else;
    each also added, formatted, to `cells` ("client", "backend", "other")."""
    timed = [s for s in samples if s.wall]
    shares = [
        median([s.client_cpu / s.wall * 100 for s in timed]),
        median([s.backend_cpu / s.wall * 100 for s in timed]),
        median([s.other_pct for s in samples]),
    ]
    for key, share in zip(("client", "backend", "other"), shares, strict=True):
        cells.setdefault(key, []).append(f"{share:.0f}%")
    return shares


def print_cpu_rows(
    row: Callable[[str, list[str]], str], title: str, cells: dict[str, list[str]], client: str
) -> None:
    """The CPU rows of one test: `title` and its cells ("per"), then the proxy's share of a
    core, the load generator's (`client`), the backend's and everything else's."""
    print(row(title, cells["per"]))
    print(row("  proxy CPU", cells["proxy"]))
    print(row(f"  {client} CPU", cells["client"]))
    print(row("  backend / sink CPU", cells["backend"]))
    print(row("  everything else on the box", cells["other"]))


def print_headroom(med: dict[str, dict[str, float]], label: dict[str, str]) -> None:
    """Direct's rate over the fastest proxy's, for the HTTP tests."""
    for test in ("keepalive", "newconn"):
        fastest = max((v for n, v in med[test].items() if n != "direct"), default=0.0)
        if fastest and med[test].get("direct"):
            headroom = med[test]["direct"] / fastest
            print(
                f"backend headroom, {label[test]}: direct = {headroom:.1f}x the fastest proxy"
                + ("" if headroom >= 1.5 else " (low: the backend or wrk may be limiting)")
            )


def other_load(results: dict[str, dict[str, list[Any]]]) -> float:
    """The median share of a core other processes used, over all samples."""
    return median([s.other_pct for per in results.values() for ss in per.values() for s in ss])


def note_other_load(
    others: float,
    tail: str = " over tests): absolute rates are depressed and noisier than on a quiet machine",
) -> None:
    if others >= 20:
        print(f"note: other processes kept {others:.0f}% of a core busy (median{tail}")


# -- profiles ----------------------------------------------------------------------------------


def find_pyspy() -> str | None:
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return pyspy if Path(pyspy).exists() else None


def pyspy_record(pid: int, out: Path, seconds: float, rate: int, load: Callable[[], R]) -> R | None:
    """`py-spy record` (collapsed stacks into `out`) a process while `load()` runs: what
    `load` returned, or None, with a note, when py-spy is missing or wrote nothing."""
    pyspy = find_pyspy()
    if pyspy is None:
        print("note: --profile needs py-spy (pip install py-spy); skipped")
        return None
    argv = [pyspy, "record", "-r", str(rate), "-d", f"{seconds + 1:.0f}", "-f", "raw"]
    argv += ["--function", "-o", str(out), "-p", str(pid)]
    spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(0.5)
        result = load()
        _, err = spy.communicate(timeout=seconds + 30)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait()
    if not out.exists():
        print(f"note: py-spy wrote no profile: {err.decode(errors='replace').strip()[-300:]}")
        return None
    return result


def collapsed_stacks(path: Path) -> Iterator[tuple[list[str], int]]:
    """py-spy's raw output: each stack (outermost frame first) and its sample count."""
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            yield stack.split(";"), int(count)


def tally(frames: list[str], n: int, own: dict[str, int], incl: dict[str, int]) -> None:
    """Count n samples of a stack: self time for its innermost frame, inclusive for each."""
    own[frames[-1]] = own.get(frames[-1], 0) + n
    for frame in set(frames):
        incl[frame] = incl.get(frame, 0) + n


def frame_counts(
    path: Path, short: Callable[[str], str]
) -> tuple[dict[str, int], dict[str, int], int]:
    """Self and inclusive samples per frame (named by `short`), and all samples."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for stack, n in collapsed_stacks(path):
        total += n
        tally([short(f) for f in stack], n, own, incl)
    return own, incl, total


def top_frames(table: dict[str, int], total: int, skip: float, top: int) -> list[tuple[str, int]]:
    """The `top` frames by samples, leaving out those in more than `skip` of `total` (the
    entry frames, in every stack)."""
    ranked = [(f, n) for f, n in table.items() if n < skip * total]
    return sorted(ranked, key=lambda kv: -kv[1])[:top]


# -- command line ------------------------------------------------------------------------------


def parser(doc: str, quick: str) -> argparse.ArgumentParser:
    """The options every script starts with: --quick, --rounds, --duration."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--rounds", type=int, help="rounds (default 5, quick 3)")
    parser.add_argument("--duration", type=float, help="seconds per wrk run (default 5, quick 2)")
    return parser


def parse(
    parser: argparse.ArgumentParser, argv: list[str], budget: tuple[float, float], profile: str
) -> argparse.Namespace:
    """Add the options every script ends with (--keep, --max-other, --retry-budget with
    `budget`: full, quick; --json, --profile with its help), parse, and fill in the defaults
    that depend on --quick."""
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (configs, logs) even if clean"
    )
    parser.add_argument(
        "--max-other",
        type=float,
        default=50.0,
        metavar="PCT",
        help="re-run a sample (twice at most) when other processes used more than PCT%% of "
        "a core during it (default 50)",
    )
    parser.add_argument(
        "--retry-budget",
        type=float,
        metavar="S",
        help=f"seconds allowed for such re-runs in all (default {budget[0]:g}, quick "
        f"{budget[1]:g})",
    )
    parser.add_argument("--json", metavar="FILE", help="save every sample and the summary")
    parser.add_argument("--profile", metavar="FILE", help=profile)
    opts = parser.parse_args(argv)
    opts.rounds = opts.rounds or (3 if opts.quick else 5)
    opts.duration = opts.duration or (2.0 if opts.quick else 5.0)
    if opts.retry_budget is None:
        opts.retry_budget = budget[1] if opts.quick else budget[0]
    return opts


def main(
    helpers: Mapping[str, Callable[..., int | None]],
    run: Callable[[argparse.Namespace], int],
    parse_args: Callable[[list[str]], argparse.Namespace],
) -> int:
    """`NAME.py HELPER ARGS...` runs a helper (the scripts re-invoke themselves for those);
    anything else is a benchmark run, SIGTERM handled like Ctrl-C."""
    argv = sys.argv[1:]
    if argv and argv[0] in helpers:
        return helpers[argv[0]](*argv[1:]) or 0
    with sigterm_as_interrupt():
        return run(parse_args(argv))
