"""L7 benchmark: tuilb's HTTP proxy vs a direct connection vs HAProxy (mode http, nbthread 1).

Run from the repository root:

    python bench/l7.py            # full run: 5 rounds, wrk -d5s, 1 GiB streamed upload
    python bench/l7.py --quick    # 3 rounds, wrk -d2s, 256 MiB streamed upload
    python bench/l7.py --quick --profile prof.txt   # then py-spy tuilb under keep-alive

The same shape as bench/l4.py (whose process bookkeeping and CPU accounting it imports):
everything on 127.0.0.1, started by the script and stopped on exit (Ctrl-C too):
- an HTTP backend written in C: a separate HAProxy process answering every request itself
  with `http-request return` (the one bench/l4.py uses);
- a stream sink in Python (a child process of this script), an HTTP/1.1 keep-alive server
  that reads each request's Content-Length body with a 1 MiB `recv_into` buffer, discards
  it, and answers with the byte count (`--stream down`: serves GET /bytes/N instead);
- the targets, each with one listener for the small requests and one for the stream:
  `direct` (no proxy), `haproxy` (mode http, nbthread 1, `option http-keep-alive`,
  `http-reuse always`, `option forwardfor`) and `tuilb` (`protocol = "http"` listeners,
  `python -m tuilb run CONF --headless`).

Three tests per target per round, the order of the targets rotating from round to round:
keep-alive req/s (wrk -t1 -c50), per-request connections (the same with `Connection:
close`: each request a new client connection; the proxies keep their backend connections)
and a streamed body (MB/s, MB = 10^6 bytes): by default a 1 GiB POST with Content-Length
through the proxy to the sink, timed by the client from connect until the sink's count
arrives, the count checked. Latency percentiles are wrk's (`--latency`). The report gives
medians, ratios tuilb/HAProxy against issue 5's targets, p99, and each proxy's CPU per
request. The script re-invokes itself for its helpers: `l7.py _sink`, `l7.py _stream PORT
BYTES up|down`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# bench/l4.py: process bookkeeping, CPU accounting, the HAProxy backend and report helpers
# (this script's own directory is on sys.path when it runs as `python bench/l7.py`).
from l4 import (
    _WRK_NON2XX,
    _WRK_RPS,
    _WRK_SOCKET,
    _WRK_TOTAL,
    Children,
    Sample,
    Target,
    children_cpu,
    cpu_seconds,
    free_ports,
    haproxy_maxconn,
    http_backend_cfg,
    machine,
    machine_busy,
    median,
    peak_rss_kib,
    port_open,
    sigterm_as_interrupt,
    spread,
    wait_for,
)

HOST = "127.0.0.1"
MIB = 1 << 20
CHUNK = MIB  # stream client and sink: 1 MiB sendall / recv_into
CLK_TCK = os.sysconf("SC_CLK_TCK")
TARGETS = {"keepalive": 0.15, "stream": 0.5}  # tuilb / HAProxy, issue 5
TESTS = ("keepalive", "newconn", "stream")
LABEL = {"keepalive": "keep-alive req/s", "newconn": "per-request conn req/s", "stream": ""}


# -- helpers run as separate processes ---------------------------------------------------------


def _read_head(conn: socket.socket, buf: bytearray) -> bytes | None:
    """Read until the end of a request or response head; the head, with what follows it
    left in `buf`. None at EOF before a complete head."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = bytes(buf[:end])
            del buf[: end + 4]
            return head
        data = conn.recv(65536)
        if not data:
            return None
        buf += data


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return None


def sink_main() -> None:
    """Stream sink: per request, discard a Content-Length body and answer with its size
    (POST), or send N bytes (GET /bytes/N). Keep-alive, a thread per connection."""
    srv = socket.create_server((HOST, 0), backlog=128)
    print(srv.getsockname()[1], flush=True)
    payload = memoryview(os.urandom(CHUNK))

    def serve(conn: socket.socket) -> None:
        buf = bytearray()
        sink = bytearray(CHUNK)
        try:
            with conn:
                while (head := _read_head(conn, buf)) is not None:
                    target = head.split(b" ", 2)[1]
                    if target.startswith(b"/bytes/"):
                        left = int(target[7:])
                        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % left)
                        while left:
                            n = min(left, CHUNK)
                            conn.sendall(payload[:n])
                            left -= n
                        continue
                    left = _content_length(head) or 0
                    total = min(left, len(buf))
                    del buf[:total]
                    left -= total
                    while left:
                        n = conn.recv_into(sink, min(left, CHUNK))
                        if not n:
                            return
                        total += n
                        left -= n
                    body = b"%d\n" % total
                    head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body)
                    conn.sendall(head + body)
        except (OSError, ValueError, IndexError):
            pass  # the client went away or sent nonsense; it reports the failure itself

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def stream_main(port: int, total: int, direction: str) -> None:
    """Stream client: upload `total` bytes as one POST (or download them with a GET) and
    read the whole answer; print JSON (seconds, bytes counted at the other end, CPU)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_start = usage.ru_utime + usage.ru_stime
    start = time.perf_counter()
    count = -1
    with socket.create_connection((HOST, port)) as sock:
        buf = bytearray()
        if direction == "up":
            chunk = memoryview(os.urandom(CHUNK))
            sock.sendall(
                b"POST /upload HTTP/1.1\r\nhost: bench\r\ncontent-type: application/octet-stream"
                b"\r\ncontent-length: %d\r\n\r\n" % total
            )
            left = total
            while left:
                n = min(left, CHUNK)
                sock.sendall(chunk[:n])
                left -= n
            head = _read_head(sock, buf)
            length = _content_length(head) if head else None
            while length is not None and len(buf) < length and (data := sock.recv(65536)):
                buf += data
            if head and head.startswith(b"HTTP/1.1 200") and buf.strip().isdigit():
                count = int(buf)
        else:
            sock.sendall(b"GET /bytes/%d HTTP/1.1\r\nhost: bench\r\n\r\n" % total)
            head = _read_head(sock, buf)
            length = _content_length(head) if head else None
            sink = bytearray(CHUNK)
            got = len(buf)
            while length is not None and got < length:
                n = sock.recv_into(sink)
                if not n:
                    break
                got += n
            if head and head.startswith(b"HTTP/1.1 200"):
                count = got
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu_start
    print(json.dumps({"seconds": seconds, "count": count, "cpu": cpu}))


# -- configurations ----------------------------------------------------------------------------


def haproxy_http_cfg(web_port: int, stream_port: int, backend_web: int, backend_stream: int) -> str:
    return f"""global
    nbthread 1
    maxconn {haproxy_maxconn()}
defaults
    mode http
    option http-keep-alive
    option forwardfor
    http-reuse always
    timeout client 1h
    timeout server 1h
    timeout connect 5s
    timeout http-keep-alive 60s
frontend web_in
    bind {HOST}:{web_port}
    default_backend web_pool
frontend stream_in
    bind {HOST}:{stream_port}
    default_backend stream_pool
backend web_pool
    server b1 {HOST}:{backend_web}
backend stream_pool
    server b1 {HOST}:{backend_stream}
"""


def tuilb_http_cfg(web_port: int, stream_port: int, backend_web: int, backend_stream: int) -> str:
    text = ""
    for name, port in (("web", web_port), ("stream", stream_port)):
        text += f"""[[listeners]]
name = "{name}"
bind = "{HOST}:{port}"
protocol = "http"
pool = "{name}"

"""
    for name, port in (("web", backend_web), ("stream", backend_stream)):
        text += f"""[pools.{name}]
algorithm = "round_robin"

[[pools.{name}.backends]]
name = "b1"
address = "{HOST}:{port}"

"""
    return text + "[timeouts]\nshutdown_grace = 2.0\n"


# -- measurements ------------------------------------------------------------------------------


@dataclass
class L7Sample(Sample):
    latency_us: dict[str, float] | None = None  # wrk's --latency percentiles: p50 .. p99


_WRK_PCT = re.compile(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_US = {"us": 1.0, "ms": 1e3, "s": 1e6}


def run_wrk(port: int, seconds: float, connections: int, close: bool) -> L7Sample:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(f"http://{HOST}:{port}/")
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
    latency = {f"p{p}": float(v) * _US[unit] for p, v, unit in _WRK_PCT.findall(out)}
    return L7Sample(float(rps.group(1)), int(total.group(1)), errors=errors, latency_us=latency)


def run_stream(port: int, nbytes: int, direction: str) -> L7Sample:
    argv = [sys.executable, str(Path(__file__).resolve()), "_stream", str(port), str(nbytes)]
    proc = subprocess.run(
        [*argv, direction], capture_output=True, text=True, timeout=30 + nbytes / (10 * MIB)
    )
    if proc.returncode != 0:
        return L7Sample(0.0, 0, errors={"client_failed": 1})
    result = json.loads(proc.stdout)
    errors = {} if result["count"] == nbytes else {"count_mismatch": 1}
    seconds = float(result["seconds"])
    return L7Sample(
        nbytes / seconds / 1e6, nbytes, seconds, client_cpu=result["cpu"], errors=errors
    )


def measure(
    target: Target, test: str, opts: argparse.Namespace, backends: dict[str, int]
) -> L7Sample:
    backend = backends["stream" if test == "stream" else "web"]
    before = cpu_seconds(target.pid) if target.pid else 0.0
    before_backend = cpu_seconds(backend)
    before_client = children_cpu()
    before_busy = machine_busy()
    start = time.perf_counter()
    if test == "stream":
        sample = run_stream(target.bulk_port, opts.stream_mib * MIB, opts.stream)
    else:
        sample = run_wrk(target.http_port, opts.duration, opts.connections, test == "newconn")
    elapsed = time.perf_counter() - start
    busy = machine_busy() - before_busy
    client = children_cpu() - before_client
    if test != "stream":  # stream: the client timed the transfer itself, start-up excluded
        sample.wall = elapsed
        sample.client_cpu = client
    sample.backend_cpu = cpu_seconds(backend) - before_backend
    if target.pid:
        sample.cpu = cpu_seconds(target.pid) - before
    ours = client + sample.backend_cpu + (sample.cpu or 0.0)
    sample.other_pct = max(0.0, busy - ours) / elapsed * 100
    if target.proc is not None and target.proc.poll() is not None:
        raise RuntimeError(f"{target.name} exited (status {target.proc.returncode}) during {test}")
    return sample


# -- report ------------------------------------------------------------------------------------


def fmt(value: float, test: str) -> str:
    return f"{value:,.1f}" if test == "stream" else f"{value:,.0f}"


def _row(label: str, cells: list[str]) -> str:
    return f"{label:<30}" + "".join(f"{c:>17}" for c in cells)


def report(
    results: dict[str, dict[str, list[L7Sample]]], targets: list[Target], rss: dict[str, int]
) -> dict[str, Any]:
    names = [t.name for t in targets]
    med: dict[str, dict[str, float]] = {}
    summary: dict[str, Any] = {"median": med, "spread_pct": {}, "p99_ms": {}, "cpu": {}}
    print("\nmedians over rounds (± half the min-max range, relative to the median)")
    print(_row("", names))
    for test in TESTS:
        cells, p99_cells = [], []
        for name in names:
            samples = results[test][name]
            values = [s.value for s in samples]
            med.setdefault(test, {})[name] = median(values)
            summary["spread_pct"].setdefault(test, {})[name] = spread(values)
            cells.append(f"{fmt(median(values), test)} ±{spread(values):.0f}%")
            p99 = [s.latency_us["p99"] for s in samples if s.latency_us and "p99" in s.latency_us]
            if p99:
                summary["p99_ms"].setdefault(test, {})[name] = median(p99) / 1000
                p50 = median([s.latency_us["p50"] for s in samples if s.latency_us]) / 1000
                p99_cells.append(f"{p50:.2f} / {median(p99) / 1000:.2f}")
        print(_row(LABEL[test], cells))
        if p99_cells:
            print(_row("  latency p50 / p99 ms", p99_cells))

    print("\nCPU (medians; % of one core over the load generator's run)")
    print(_row("", names))
    for test in TESTS:
        per_cells, proxy_cells, client_cells, backend_cells, other_cells = [], [], [], [], []
        for name in names:
            samples = results[test][name]
            walls = [s for s in samples if s.wall]
            client = median([s.client_cpu / s.wall * 100 for s in walls])
            backend = median([s.backend_cpu / s.wall * 100 for s in walls])
            other = median([s.other_pct for s in samples])
            client_cells.append(f"{client:.0f}%")
            backend_cells.append(f"{backend:.0f}%")
            other_cells.append(f"{other:.0f}%")
            entry = {"client_pct": client, "backend_pct": backend, "other_pct": other}
            summary["cpu"].setdefault(test, {})[name] = entry
            timed = [s for s in samples if s.cpu and s.amount]
            if not timed:
                per_cells.append("-")
                proxy_cells.append("-")
                continue
            if test == "stream":  # proxy CPU-seconds per GB (10^9 bytes)
                per = median([(s.cpu or 0) / s.amount * 1e9 for s in timed])
                per_cells.append(f"{per:.2f} s")
                entry["proxy_cpu_s_per_gb"] = per
            else:
                per = median([(s.cpu or 0) / s.amount * 1e6 for s in timed])
                per_cells.append(f"{per:.1f} µs")
                entry["proxy_cpu_us_per_request"] = per
            proxy = median([(s.cpu or 0) / s.wall * 100 for s in timed if s.wall])
            entry["proxy_pct"] = proxy
            proxy_cells.append(f"{proxy:.0f}%")
        unit = "proxy CPU-s per GB" if test == "stream" else "proxy CPU per request"
        print(_row(f"{test}: {unit}", per_cells))
        print(_row("  proxy CPU", proxy_cells))
        print(_row("  wrk / stream client CPU", client_cells))
        print(_row("  backend / sink CPU", backend_cells))
        print(_row("  everything else on the box", other_cells))
    peaks = [f"{rss[n] / 1024:.1f}" if n in rss else "-" for n in names]
    print(_row("proxy peak RSS (MiB)", peaks))

    ratios: dict[str, dict[str, float]] = {}
    print("\nratios of medians")
    for test in TESTS:
        mine = med[test].get("tuilb")
        for other in ("haproxy", "direct"):
            theirs = med[test].get(other)
            if not mine or not theirs:
                continue
            ratio = mine / theirs
            ratios.setdefault(test, {})[f"tuilb/{other}"] = ratio
            note = ""
            if other == "haproxy" and test in TARGETS:
                verdict = "met" if ratio >= TARGETS[test] else "NOT met"
                note = f" (target >= {TARGETS[test]:.2f}x: {verdict})"
            print(
                f"{LABEL[test]}: tuilb {fmt(mine, test)} / {other} {fmt(theirs, test)} "
                f"= {ratio:.2f}x{note}"
            )
    for test in TESTS:
        cpu = summary["cpu"][test]
        key = "proxy_cpu_s_per_gb" if test == "stream" else "proxy_cpu_us_per_request"
        mine, theirs = cpu.get("tuilb", {}).get(key), cpu.get("haproxy", {}).get(key)
        if mine and theirs:
            ratios.setdefault(test, {})["tuilb/haproxy per CPU-s"] = theirs / mine
            print(
                f"{LABEL[test]} per proxy CPU-second: tuilb / haproxy = {theirs / mine:.2f}x "
                "(less sensitive to CPU contention than the rates)"
            )
    summary["ratios"] = ratios
    for test in ("keepalive", "newconn"):
        fastest = max((med[test][n] for n in names if n != "direct"), default=0.0)
        if fastest and med[test].get("direct"):
            headroom = med[test]["direct"] / fastest
            print(
                f"backend headroom, {LABEL[test]}: direct = {headroom:.1f}x the fastest proxy"
                + ("" if headroom >= 1.5 else " (low: the backend or wrk may be limiting)")
            )
    others = [s.other_pct for per in results.values() for ss in per.values() for s in ss]
    summary["other_load_pct"] = median(others)
    if median(others) >= 20:
        print(
            f"note: other processes kept {median(others):.0f}% of a core busy (median over "
            "tests): absolute rates are depressed and noisier than on a quiet machine"
        )
    return summary


# -- profile -----------------------------------------------------------------------------------


def _frame(raw: str) -> str:
    """py-spy's "func (/path/pkg/file.py:123)" -> "func (pkg/file.py)"."""
    return re.sub(r" \((?:.*/)?([^/]+/[^/]*?)(?::\d+)?\)$", r" (\1)", raw)


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process, from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def summarize_profile(path: Path, us_per_request: float, top: int = 25) -> dict[str, Any]:
    """Self and inclusive shares per function and self shares per module, from py-spy's
    collapsed stacks, with each share also as µs of tuilb CPU per request."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    modules: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + n
        module = frames[-1].rpartition(" (")[2].rstrip(")")
        modules[module] = modules.get(module, 0) + n
        for frame in set(frames):
            incl[frame] = incl.get(frame, 0) + n
    out: dict[str, Any] = {"samples": total, "us_per_request": us_per_request}
    if not total:
        return out
    print(
        f"\nprofile {path.name}: {total} samples of tuilb during a keep-alive run, "
        f"{us_per_request:.1f} µs of tuilb CPU per request (µs below: share x that)"
    )
    for title, table in (("self", own), ("inclusive", incl), ("self, per module", modules)):
        print(f"  top {title}:")
        ranked = [(f, n) for f, n in table.items() if n < 0.97 * total]  # skip entry frames
        rows = sorted(ranked, key=lambda kv: -kv[1])[:top]
        for frame, n in rows:
            share = n / total
            print(f"    {share * 100:5.1f}%  {share * us_per_request:5.1f} µs  {frame}")
        out[title] = [[frame, n / total] for frame, n in rows]
    return out


def profile_keepalive(
    target: Target, opts: argparse.Namespace, out: Path, backend_pid: int
) -> dict[str, Any]:
    """py-spy record tuilb during one more keep-alive run; print the top frames.

    py-spy samples wall time of a running thread: on a box where wrk and the backend
    compete with tuilb for 2 cores, a send() that wakes one of them often lets it take
    tuilb's core, and that wait would be charged to the send. So for this run tuilb gets a
    core of its own (sched_setaffinity: tuilb on the last CPU, wrk and the backend on the
    others), and the samples are close to tuilb's CPU time. py-spy stops tuilb at each
    sample (its default mode: torn stacks otherwise), which costs some throughput; the
    CPU per request printed is measured in the same run."""
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(pyspy).exists():
        print("note: --profile needs py-spy (pip install py-spy); skipped")
        return {}
    assert target.pid is not None
    seconds = max(5.0, opts.duration)
    argv = [pyspy, "record", "-r", "200", "-d", f"{seconds + 1:.0f}", "-f", "raw", "--function"]
    argv += ["-o", str(out), "-p", str(target.pid)]
    cpus = sorted(os.sched_getaffinity(0))
    pinned = len(cpus) >= 2
    if pinned:
        os.sched_setaffinity(target.pid, cpus[-1:])
        os.sched_setaffinity(backend_pid, cpus[:-1])
        os.sched_setaffinity(0, cpus[:-1])  # wrk inherits it
    spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(0.5)
        user0, sys0 = cpu_split(target.pid)
        began = time.perf_counter()
        sample = run_wrk(target.http_port, seconds, opts.connections, close=False)
        sample.wall = time.perf_counter() - began
        user1, sys1 = cpu_split(target.pid)
        user, kernel = user1 - user0, sys1 - sys0
        cpu = user + kernel
        _, err = spy.communicate(timeout=seconds + 30)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait()
        if pinned:
            for pid in (0, target.pid, backend_pid):
                os.sched_setaffinity(pid, cpus)
    if not out.exists():
        print(f"note: py-spy wrote no profile: {err.decode(errors='replace').strip()[-300:]}")
        return {}
    per = cpu / sample.amount * 1e6 if sample.amount else 0.0
    where = f"tuilb alone on CPU {cpus[-1]}" if pinned else "not pinned (1 CPU)"
    print(
        f"\nkeep-alive run under py-spy ({where}): {sample.value:,.0f} req/s; tuilb CPU "
        f"{cpu / sample.wall * 100 if sample.wall else 0:.0f}% of a core, {per:.1f} µs per "
        f"request, of which user {user / cpu * 100 if cpu else 0:.0f}%, kernel (system "
        f"calls) {kernel / cpu * 100 if cpu else 0:.0f}%"
    )
    result = summarize_profile(out, per)
    result.update(rps=sample.value, user_s=user, system_s=kernel, pinned=pinned)
    return result


# -- the run -----------------------------------------------------------------------------------


def start_all(kids: Children) -> tuple[list[Target], dict[str, int]]:
    """Start the backends and the proxies; the targets and the backends' pids."""
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        raise RuntimeError("haproxy is needed (apt-get install haproxy): backend and target")
    workdir = kids.workdir
    me = [sys.executable, str(Path(__file__).resolve())]
    ports = iter(free_ports(5))
    be_web = next(ports)
    (workdir / "backend.cfg").write_text(http_backend_cfg(be_web))
    backend = kids.start("backend", [haproxy, "-f", "backend.cfg", "-db"])
    wait_for(lambda: port_open(be_web), backend, "the HTTP backend (haproxy)")
    sink = kids.start("sink", [*me, "_sink"], stdout=subprocess.PIPE)
    assert sink.stdout is not None
    be_stream = int(sink.stdout.readline())

    targets = [Target("direct", be_web, be_stream)]
    web, stream = next(ports), next(ports)
    (workdir / "haproxy.cfg").write_text(haproxy_http_cfg(web, stream, be_web, be_stream))
    proc = kids.start("haproxy", [haproxy, "-f", "haproxy.cfg", "-db"])
    wait_for(lambda: port_open(web) and port_open(stream), proc, "haproxy (http)")
    targets.append(Target("haproxy", web, stream, proc))

    web, stream = next(ports), next(ports)
    conf = workdir / "tuilb.toml"
    conf.write_text(tuilb_http_cfg(web, stream, be_web, be_stream))
    proc = kids.start("tuilb", [sys.executable, "-m", "tuilb", "run", str(conf), "--headless"])
    wait_for(lambda: kids.log_text("tuilb").count(" listening ") >= 2, proc, "tuilb (http)")
    targets.append(Target("tuilb", web, stream, proc))
    return targets, {"web": backend.pid, "stream": sink.pid}


def run(opts: argparse.Namespace) -> int:
    if shutil.which("wrk") is None:
        print("wrk is needed: apt-get install wrk", file=sys.stderr)
        return 2
    info = machine()
    print(
        f"tuilb L7 benchmark  {info['date']}  {info['cpus']} CPUs ({info['cpu_model']}), "
        f"Python {info['python']}, {info['haproxy'] or 'no haproxy'}"
    )
    what = "upload (POST)" if opts.stream == "up" else "download (GET)"
    print(
        f"{opts.rounds} rounds; wrk -t1 -c{opts.connections} -d{opts.duration:g}s --latency; "
        f"streamed {what} of {opts.stream_mib} MiB through each target"
    )
    LABEL["stream"] = f"stream {opts.stream}load MB/s"
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="tuilb-bench-l7-"))
    kids = Children(workdir)
    results: dict[str, dict[str, list[L7Sample]]] = {}
    rss: dict[str, int] = {}
    problems: list[str] = []
    discarded: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    try:
        targets, backends = start_all(kids)
        results = {test: {t.name: [] for t in targets} for test in TESTS}
        for target in targets:  # warm-up, not recorded
            if target.name != "direct":
                run_wrk(target.http_port, 1, opts.connections, close=False)
        retry_left = opts.retry_budget
        for rnd in range(opts.rounds):
            redone = 0
            for test in TESTS:
                order = targets[rnd % len(targets) :] + targets[: rnd % len(targets)]
                for target in order:
                    for attempt in range(3):
                        began = time.monotonic()
                        sample = measure(target, test, opts, backends)
                        if sample.errors:
                            where = f"round {rnd + 1} {test} {target.name}"
                            problems.append(f"{where}: {sample.errors}")
                        time.sleep(0.2)
                        if attempt:
                            retry_left -= time.monotonic() - began
                        if sample.other_pct <= opts.max_other or attempt == 2 or retry_left <= 0:
                            break
                        # Another process took a large share of the CPUs: measure again.
                        discarded.append({"test": test, "target": target.name, **vars(sample)})
                        redone += 1
                    results[test][target.name].append(sample)
            elapsed = time.monotonic() - started
            note = f", {redone} sample(s) re-run under outside load" if redone else ""
            print(f"  round {rnd + 1}/{opts.rounds} done ({elapsed:.0f} s{note})", flush=True)
        for target in targets:
            if target.pid:
                rss[target.name] = peak_rss_kib(target.pid)
        summary = report(results, targets, rss)
        if discarded:
            print(
                f"{len(discarded)} sample(s) were measured again because other processes kept "
                f"more than {opts.max_other:g}% of a core busy during them"
            )
        if opts.profile:
            where = Path(opts.profile).resolve()
            summary["profile"] = profile_keepalive(targets[-1], opts, where, backends["web"])
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything", file=sys.stderr)
        kids.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
        return 130
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"\nbenchmark failed: {exc}", file=sys.stderr)
        for name, _ in kids.procs:
            tail = kids.log_text(name).strip().splitlines()[-5:]
            if tail:
                print(f"--- {name} log (last lines):", *tail, sep="\n  ", file=sys.stderr)
        print(f"logs and configs kept in {workdir}", file=sys.stderr)
        return 1
    finally:
        kids.stop_all()

    if kids.exit_codes.get("tuilb") not in (0, None):
        problems.append(f"tuilb exited with status {kids.exit_codes['tuilb']} on SIGTERM")
    for line in kids.log_text("tuilb").splitlines():
        if " WARN" in line or " ERROR" in line or "Traceback" in line:
            problems.append(f"tuilb log: {line}")
    print("\nproblems seen:" if problems else "\nno errors: no wrk socket errors, counts verified")
    for line in problems[:40]:
        print(f"  {line}")
    if len(problems) > 40:
        print(f"  ... and {len(problems) - 40} more")
    if problems or opts.keep:
        print(f"logs and configs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"total time {time.monotonic() - started:.0f} s")

    if opts.json:
        data = {
            "machine": info,
            "settings": {
                "rounds": opts.rounds,
                "duration_s": opts.duration,
                "connections": opts.connections,
                "stream": opts.stream,
                "stream_mib": opts.stream_mib,
                "max_other_pct": opts.max_other,
                "retry_budget_s": opts.retry_budget,
            },
            "samples": {
                test: {name: [vars(s) for s in samples] for name, samples in per.items()}
                for test, per in results.items()
            },
            "peak_rss_kib": rss,
            "discarded_samples": discarded,
            "problems": problems,
            **summary,
        }
        Path(opts.json).write_text(json.dumps(data, indent=2) + "\n")
        print(f"results saved to {opts.json}")
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds, 2 s runs, 256 MiB stream")
    parser.add_argument("--rounds", type=int, help="rounds (default 5, quick 3)")
    parser.add_argument("--duration", type=float, help="seconds per wrk run (default 5, quick 2)")
    parser.add_argument("--stream-mib", type=int, help="MiB per streamed body (1024, quick 256)")
    parser.add_argument(
        "--stream",
        choices=("up", "down"),
        default="up",
        help="stream direction: up = POST to the sink (default), down = GET from it",
    )
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (50)")
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
        help="seconds allowed for such re-runs in all (default 90, quick 25)",
    )
    parser.add_argument("--json", metavar="FILE", help="save every sample and the summary")
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="afterwards, py-spy record tuilb during one more keep-alive run into FILE",
    )
    opts = parser.parse_args(argv)
    quick = opts.quick
    opts.rounds = opts.rounds or (3 if quick else 5)
    opts.duration = opts.duration or (2.0 if quick else 5.0)
    opts.stream_mib = opts.stream_mib or (256 if quick else 1024)
    if opts.retry_budget is None:
        opts.retry_budget = 25.0 if quick else 90.0
    return opts


def main() -> int:
    argv = sys.argv[1:]
    if argv[:1] == ["_sink"]:
        sink_main()
        return 0
    if argv[:1] == ["_stream"]:
        stream_main(int(argv[1]), int(argv[2]), argv[3])
        return 0
    with sigterm_as_interrupt():
        return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
