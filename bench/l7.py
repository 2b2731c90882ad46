"""L7 benchmark: tuilb's HTTP proxy vs a direct connection vs HAProxy (mode http, nbthread 1).

Run from the repository root:

    python bench/l7.py            # full run: 5 rounds, wrk -d5s, 1 GiB streamed upload
    python bench/l7.py --quick    # 3 rounds, wrk -d2s, 256 MiB streamed upload
    python bench/l7.py --quick --profile prof.txt   # then py-spy tuilb under keep-alive

The same shape as bench/l4.py (both use bench/common.py for what they share): everything
on 127.0.0.1, started by the script and stopped on exit (Ctrl-C too):
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
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# bench/common.py: what the three benchmarks share (process bookkeeping, CPU accounting,
# configs, wrk, rounds, failure handling, JSON, command line).
import common
from common import CHUNK, CLOSE, HOST, MIB, Children, Sample, Target, median, wrk

TARGETS = {"keepalive": 0.15, "stream": 0.5}  # tuilb / HAProxy, issue 5
TESTS = ("keepalive", "newconn", "stream")
LABEL = {"keepalive": "keep-alive req/s", "newconn": "per-request conn req/s", "stream": ""}
ME = [sys.executable, str(Path(__file__).resolve())]


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

    common.serve_forever(serve)


def stream_main(port: int, total: int, direction: str) -> None:
    """Stream client: upload `total` bytes as one POST (or download them with a GET) and
    read the whole answer; print JSON (seconds, bytes counted at the other end, CPU)."""

    def transfer() -> int:
        count = -1
        with socket.create_connection((HOST, port)) as sock:
            buf = bytearray()
            if direction == "up":
                chunk = memoryview(os.urandom(CHUNK))
                sock.sendall(
                    b"POST /upload HTTP/1.1\r\nhost: bench\r\n"
                    b"content-type: application/octet-stream\r\ncontent-length: %d\r\n\r\n" % total
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
        return count

    common.timed_client(transfer)


# -- configurations ----------------------------------------------------------------------------


def haproxy_http_cfg(web_port: int, stream_port: int, backend_web: int, backend_stream: int) -> str:
    defaults = [
        "mode http",
        "option http-keep-alive",
        "option forwardfor",
        "http-reuse always",
        "timeout client 1h",
        "timeout server 1h",
        "timeout connect 5s",
        "timeout http-keep-alive 60s",
    ]
    routes = {"web": (web_port, backend_web), "stream": (stream_port, backend_stream)}
    return common.haproxy_proxy_cfg(defaults, routes)


def tuilb_http_cfg(web_port: int, stream_port: int, backend_web: int, backend_stream: int) -> str:
    return common.tuilb_cfg(
        [("web", web_port, "web"), ("stream", stream_port, "stream")],
        {"web": [("b1", backend_web)], "stream": [("b1", backend_stream)]},
        protocol="http",
        # Like HAProxy here (no `log` line), tuilb writes no per-request access log.
        listener_extra="access_log = false",
    )


# -- measurements ------------------------------------------------------------------------------


@dataclass
class L7Sample(Sample):
    latency_us: dict[str, float] | None = None  # wrk's --latency percentiles: p50 .. p99


_WRK_PCT = re.compile(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_US = {"us": 1.0, "ms": 1e3, "s": 1e6}


def run_wrk(port: int, seconds: float, connections: int, close: bool) -> L7Sample:
    out = wrk(port, seconds, connections, "--latency", *(CLOSE if close else ()))
    latency = {f"p{p}": float(v) * _US[unit] for p, v, unit in _WRK_PCT.findall(out.out)}
    return L7Sample(out.rps, out.requests, errors=out.errors, latency_us=latency)


def run_stream(port: int, nbytes: int, direction: str) -> L7Sample:
    argv = [*ME, "_stream", str(port), str(nbytes), direction]
    return common.run_transfer(argv, nbytes, 30 + nbytes / (10 * MIB), L7Sample)


# -- report ------------------------------------------------------------------------------------


def fmt(value: float, test: str) -> str:
    return f"{value:,.1f}" if test == "stream" else f"{value:,.0f}"


def _row(label: str, cells: list[str]) -> str:
    return common.row(label, cells, 30)


def report(
    results: dict[str, dict[str, list[L7Sample]]], targets: list[Target], rss: dict[str, int]
) -> dict[str, Any]:
    names = [t.name for t in targets]
    p99_ms: dict[str, dict[str, float]] = {}

    def latency(test: str) -> None:  # a row of wrk's p50 / p99 under each test's rates
        cells = []
        for name in names:
            samples = results[test][name]
            p99 = [s.latency_us["p99"] for s in samples if s.latency_us and "p99" in s.latency_us]
            if p99:
                p99_ms.setdefault(test, {})[name] = median(p99) / 1000
                p50 = median([s.latency_us["p50"] for s in samples if s.latency_us]) / 1000
                cells.append(f"{p50:.2f} / {median(p99) / 1000:.2f}")
        if cells:
            print(_row("  latency p50 / p99 ms", cells))

    med, spreads = common.median_table(results, names, LABEL, fmt, _row, latency)
    summary: dict[str, Any] = {"median": med, "spread_pct": spreads, "p99_ms": p99_ms, "cpu": {}}

    print("\nCPU (medians; % of one core over the load generator's run)")
    print(_row("", names))
    for test in TESTS:
        cells: dict[str, list[str]] = {"per": [], "proxy": []}
        for name in names:
            samples = results[test][name]
            shares = common.load_shares(samples, cells)
            entry = dict(zip(("client_pct", "backend_pct", "other_pct"), shares, strict=True))
            summary["cpu"].setdefault(test, {})[name] = entry
            timed = [s for s in samples if s.cpu and s.amount]
            if not timed:
                cells["per"].append("-")
                cells["proxy"].append("-")
                continue
            if test == "stream":  # proxy CPU-seconds per GB (10^9 bytes)
                per = median([(s.cpu or 0) / s.amount * 1e9 for s in timed])
                cells["per"].append(f"{per:.2f} s")
                entry["proxy_cpu_s_per_gb"] = per
            else:
                per = median([(s.cpu or 0) / s.amount * 1e6 for s in timed])
                cells["per"].append(f"{per:.1f} µs")
                entry["proxy_cpu_us_per_request"] = per
            entry["proxy_pct"] = median([(s.cpu or 0) / s.wall * 100 for s in timed if s.wall])
            cells["proxy"].append(f"{entry['proxy_pct']:.0f}%")
        unit = "proxy CPU-s per GB" if test == "stream" else "proxy CPU per request"
        common.print_cpu_rows(_row, f"{test}: {unit}", cells, "wrk / stream client")
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
    common.print_headroom(med, LABEL)
    summary["other_load_pct"] = common.other_load(results)
    common.note_other_load(summary["other_load_pct"])
    return summary


# -- profile -----------------------------------------------------------------------------------


def _frame(raw: str) -> str:
    """py-spy's "func (/path/pkg/file.py:123)" -> "func (pkg/file.py)"."""
    return re.sub(r" \((?:.*/)?([^/]+/[^/]*?)(?::\d+)?\)$", r" (\1)", raw)


def summarize_profile(path: Path, us_per_request: float, top: int = 25) -> dict[str, Any]:
    """Self and inclusive shares per function and self shares per module, from py-spy's
    collapsed stacks, with each share also as µs of tuilb CPU per request."""
    own, incl, total = common.frame_counts(path, _frame)
    modules: dict[str, int] = {}
    for frame, n in own.items():
        module = frame.rpartition(" (")[2].rstrip(")")
        modules[module] = modules.get(module, 0) + n
    out: dict[str, Any] = {"samples": total, "us_per_request": us_per_request}
    if not total:
        return out
    print(
        f"\nprofile {path.name}: {total} samples of tuilb during a keep-alive run, "
        f"{us_per_request:.1f} µs of tuilb CPU per request (µs below: share x that)"
    )
    for title, table in (("self", own), ("inclusive", incl), ("self, per module", modules)):
        print(f"  top {title}:")
        rows = common.top_frames(table, total, 0.97, top)  # skip entry frames
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
    pid = target.pid
    assert pid is not None
    seconds = max(5.0, opts.duration)
    cpus = sorted(os.sched_getaffinity(0))
    pinned = len(cpus) >= 2 and common.find_pyspy() is not None

    def load() -> tuple[L7Sample, float, float]:
        user0, sys0 = common.cpu_split(pid)
        began = time.perf_counter()
        sample = run_wrk(target.http_port, seconds, opts.connections, close=False)
        sample.wall = time.perf_counter() - began
        user1, sys1 = common.cpu_split(pid)
        return sample, user1 - user0, sys1 - sys0

    if pinned:
        os.sched_setaffinity(pid, cpus[-1:])
        os.sched_setaffinity(backend_pid, cpus[:-1])
        os.sched_setaffinity(0, cpus[:-1])  # wrk inherits it
    try:
        ran = common.pyspy_record(pid, out, seconds, 200, load)
    finally:
        if pinned:
            for who in (0, pid, backend_pid):
                os.sched_setaffinity(who, cpus)
    if ran is None:
        return {}
    sample, user, kernel = ran
    cpu = user + kernel
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
    if shutil.which("haproxy") is None:
        raise RuntimeError("haproxy is needed (apt-get install haproxy): backend and target")
    workdir = kids.workdir
    ports = iter(common.free_ports(5))
    be_web = next(ports)
    cfg = common.http_backend_cfg([be_web])
    backend = kids.start_haproxy("backend", cfg, [be_web], "the HTTP backend (haproxy)")
    sink, be_stream = kids.start_server("sink", [*ME, "_sink"])

    targets = [Target("direct", be_web, be_stream)]
    web, stream = next(ports), next(ports)
    cfg = haproxy_http_cfg(web, stream, be_web, be_stream)
    proc = kids.start_haproxy("haproxy", cfg, [web, stream], "haproxy (http)")
    targets.append(Target("haproxy", web, stream, proc))

    web, stream = next(ports), next(ports)
    conf = workdir / "tuilb.toml"
    conf.write_text(tuilb_http_cfg(web, stream, be_web, be_stream))
    proc = kids.start_tuilb("tuilb", conf, 2, "tuilb (http)")
    targets.append(Target("tuilb", web, stream, proc))
    return targets, {"http": backend.pid, "sink": sink.pid}


def run(opts: argparse.Namespace) -> int:
    if not common.need("wrk"):
        return 2
    LABEL["stream"] = f"stream {opts.stream}load MB/s"
    what = "upload (POST)" if opts.stream == "up" else "download (GET)"

    def profile(targets: list[Target], backends: dict[str, int], summary: dict[str, Any]) -> None:
        where = Path(opts.profile).resolve()
        summary["profile"] = profile_keepalive(targets[-1], opts, where, backends["http"])

    return common.run_proxies(
        opts,
        common.ProxyRun(
            kind="L7",
            settings=f"{opts.rounds} rounds; wrk -t1 -c{opts.connections} -d{opts.duration:g}s "
            f"--latency; streamed {what} of {opts.stream_mib} MiB through each target",
            prefix="tuilb-bench-l7-",
            tests=TESTS,
            start=start_all,
            wrk=run_wrk,
            transfer=lambda port: run_stream(port, opts.stream_mib * MIB, opts.stream),
            report=report,
            profile=profile,
            tuilbs=("tuilb",),
            json_settings={
                "connections": opts.connections,
                "stream": opts.stream,
                "stream_mib": opts.stream_mib,
            },
        ),
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = common.parser(__doc__, "3 rounds, 2 s runs, 256 MiB stream")
    parser.add_argument("--stream-mib", type=int, help="MiB per streamed body (1024, quick 256)")
    parser.add_argument(
        "--stream",
        choices=("up", "down"),
        default="up",
        help="stream direction: up = POST to the sink (default), down = GET from it",
    )
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (50)")
    profile = "afterwards, py-spy record tuilb during one more keep-alive run into FILE"
    opts = common.parse(parser, argv, (90.0, 25.0), profile)
    opts.stream_mib = opts.stream_mib or (256 if opts.quick else 1024)
    return opts


def main() -> int:
    helpers: dict[str, Callable[..., int | None]] = {
        "_sink": sink_main,
        "_stream": lambda port, total, way: stream_main(int(port), int(total), way),
    }
    return common.main(helpers, run, parse_args)


if __name__ == "__main__":
    sys.exit(main())
