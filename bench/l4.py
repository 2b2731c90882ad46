"""L4 benchmark: tuilb vs a direct connection vs HAProxy (mode tcp, nbthread 1), side by side.

Run from the repository root:

    python bench/l4.py            # full run: 5 rounds, wrk -d5s, 1 GiB bulk (under ~6 minutes)
    python bench/l4.py --quick    # 3 rounds, wrk -d2s, 256 MiB bulk (under ~2 minutes)

Everything it needs it starts itself, on 127.0.0.1 only, and stops on exit (Ctrl-C too):
- an HTTP backend written in C: a separate HAProxy process answering every request itself
  with `http-request return` (much faster than any of the proxies under test);
- a bulk sink in Python (a child process of this script) that counts the bytes of each
  connection and replies with the count at EOF;
- the targets: `direct` (no proxy), `haproxy` (mode tcp, nbthread 1), `tuilb` (default
  pump) and `tuilb-splice` (`pump = "splice"`), each tuilb a `python -m tuilb run CONF
  --headless` subprocess with a generated configuration.

Each measurement is repeated for several rounds; within a round every target runs once, in
an order that rotates from round to round, so that noise on this shared machine hits all
targets alike. A sample during which other processes kept more than half a core busy (from
/proc/stat, minus our own processes) is measured again, within a time budget. The report
gives medians, the ratios tuilb/HAProxy and tuilb/direct against the targets of issue 2,
CPU time per test of the proxies, the load generator and the backend (/proc/PID/stat), and
the proxies' peak RSS. `--json FILE` saves every sample; `--profile FILE` adds a py-spy
profile of tuilb during one more new-connections run.

The script re-invokes itself for its helpers: `l4.py _sink`, `l4.py _send PORT BYTES` and,
only when haproxy is missing, `l4.py _http` (a Python HTTP backend: slower, says so).
"""

from __future__ import annotations

import argparse
import os
import re
import selectors
import shutil
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# bench/common.py: what the three benchmarks share (process bookkeeping, CPU accounting,
# configs, wrk, rounds, failure handling, JSON, command line).
import common
from common import CHUNK, CLOSE, HOST, MIB, Children, Sample, Target, median, wrk

TARGETS = {"keepalive": 0.45, "newconn": 0.30, "bulk": 1.0}  # tuilb / HAProxy, issue 2
TESTS = ("keepalive", "newconn", "bulk")
LABEL = {"keepalive": "keep-alive req/s", "newconn": "new connections/s", "bulk": "bulk MB/s"}
SHORT = {"keepalive": "keep-alive", "newconn": "new-connection", "bulk": "bulk"}
ME = [sys.executable, str(Path(__file__).resolve())]


# -- helpers run as separate processes ---------------------------------------------------------


def sink_main() -> None:
    """Bulk sink: count each connection's bytes, reply with the count at EOF, close."""

    def drain(conn: socket.socket) -> None:
        buf = bytearray(CHUNK)
        total = 0
        try:
            with conn:
                while True:
                    n = conn.recv_into(buf)
                    if not n:
                        break
                    total += n
                conn.sendall(f"{total}\n".encode())
        except OSError:
            pass  # the client went away; it reports the failure itself

    common.serve_forever(drain)


_RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok"
_RESPONSE_CLOSE = _RESPONSE.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n")


def http_main() -> None:
    """Fallback HTTP backend (only when haproxy is missing): far slower than a C server."""
    srv = socket.create_server((HOST, 0), backlog=1024)
    srv.setblocking(False)
    print(srv.getsockname()[1], flush=True)
    sel = selectors.DefaultSelector()
    sel.register(srv, selectors.EVENT_READ)
    pending: dict[socket.socket, bytes] = {}

    def close(conn: socket.socket) -> None:
        sel.unregister(conn)
        pending.pop(conn, None)
        conn.close()

    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is srv:
                try:
                    conn, _ = srv.accept()
                except OSError:
                    continue
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sel.register(conn, selectors.EVENT_READ)
                pending[conn] = b""
                continue
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                close(sock)
                continue
            buf = pending[sock] + data
            requests = buf.count(b"\r\n\r\n")  # wrk sends GETs without a body
            pending[sock] = buf[buf.rfind(b"\r\n\r\n") + 4 :] if requests else buf
            if not requests:
                continue
            closing = b"connection: close" in buf.lower()
            try:
                sock.sendall(_RESPONSE * requests if not closing else _RESPONSE_CLOSE)
            except OSError:
                close(sock)
                continue
            if closing:
                close(sock)


def send_main(port: int, total: int) -> None:
    """Bulk client: send `total` bytes, half-close, read the sink's count; print JSON."""
    chunk = memoryview(os.urandom(CHUNK))

    def send() -> int:
        with socket.create_connection((HOST, port)) as sock:
            left = total
            while left:
                n = min(left, CHUNK)
                sock.sendall(chunk[:n])
                left -= n
            sock.shutdown(socket.SHUT_WR)
            reply = b""
            while data := sock.recv(64):
                reply += data
        return int(reply) if reply.strip().isdigit() else -1

    common.timed_client(send)


# -- configurations ----------------------------------------------------------------------------


def haproxy_tcp_cfg(
    http_port: int, bulk_port: int, backend_http: int, backend_bulk: int, splice: bool = False
) -> str:
    defaults = ["mode tcp", "timeout client 1h", "timeout server 1h", "timeout connect 5s"]
    routes = {"http": (http_port, backend_http), "bulk": (bulk_port, backend_bulk)}
    return common.haproxy_proxy_cfg(defaults + ["option splice-auto"] * splice, routes)


def tuilb_cfg(
    http_port: int, bulk_port: int, backend_http: int, backend_bulk: int, pump: str
) -> str:
    return common.tuilb_cfg(
        [("http", http_port, "http"), ("bulk", bulk_port, "bulk")],
        {"http": [("b1", backend_http)], "bulk": [("b1", backend_bulk)]},
        protocol="tcp",
        listener_extra=f'pump = "{pump}"\n',
    )


# -- measurements ------------------------------------------------------------------------------


def run_wrk(port: int, seconds: float, connections: int, close: bool) -> Sample:
    out = wrk(port, seconds, connections, *(CLOSE if close else ()))
    return Sample(out.rps, out.requests, errors=out.errors)


def run_bulk(port: int, nbytes: int) -> Sample:
    argv = [*ME, "_send", str(port), str(nbytes)]
    return common.run_transfer(argv, nbytes, 30 + nbytes / (20 * MIB), Sample)


# -- report ------------------------------------------------------------------------------------


def fmt(value: float, test: str) -> str:
    return f"{value:,.0f}" if test != "bulk" else f"{value:,.1f}"


def _row(label: str, cells: list[str]) -> str:
    return common.row(label, cells, 28)


def report(
    results: dict[str, dict[str, list[Sample]]], targets: list[Target], rss: dict[str, int]
) -> dict[str, Any]:
    names = [t.name for t in targets]
    med, spreads = common.median_table(results, names, LABEL, fmt, _row)
    summary: dict[str, Any] = {"median": med, "spread_pct": spreads, "per_cpu": {}, "cpu_pct": {}}

    print("\nCPU (medians; % of one core over the load generator's run)")
    print(_row("", names))
    for test in TESTS:
        unit = "MB per proxy CPU-s" if test == "bulk" else "req per proxy CPU-s"
        cells: dict[str, list[str]] = {"per": [], "proxy": []}
        for name in names:
            samples = results[test][name]
            shares = common.load_shares(samples, cells)
            pct = dict(zip(("client", "backend", "other"), shares, strict=True))
            summary["cpu_pct"].setdefault(test, {})[name] = pct
            timed = [s for s in samples if s.cpu]
            if not timed:
                cells["per"].append("-")
                cells["proxy"].append("-")
                continue
            scale = 1e6 if test == "bulk" else 1.0
            per = median([s.amount / scale / (s.cpu or 1) for s in timed])
            pct["proxy"] = median([(s.cpu or 0) / s.wall * 100 for s in timed])
            summary["per_cpu"].setdefault(test, {})[name] = per
            cells["per"].append(fmt(per, test))
            cells["proxy"].append(f"{pct['proxy']:.0f}%")
        common.print_cpu_rows(_row, f"{test}: {unit}", cells, "wrk / bulk client")
    print(
        _row("proxy peak RSS (MiB)", [f"{rss[n] / 1024:.1f}" if n in rss else "-" for n in names])
    )

    ratios: dict[str, dict[str, float]] = {}
    print("\nratios of medians")
    for test in TESTS:
        for name in (n for n in names if n.startswith("tuilb")):
            mine = med[test][name]
            for other in ("haproxy", "haproxy-splice", "direct"):
                if not med[test].get(other):
                    continue
                ratio = mine / med[test][other]
                ratios.setdefault(test, {})[f"{name}/{other}"] = ratio
                note = ""
                if other == "haproxy":
                    verdict = "met" if ratio >= TARGETS[test] else "NOT met"
                    note = f" (target >= {TARGETS[test]:.2f}x: {verdict})"
                print(
                    f"{LABEL[test]}: {name} {fmt(mine, test)} / {other} "
                    f"{fmt(med[test][other], test)} = {ratio:.2f}x{note}"
                )
    summary["ratios"] = ratios
    per_cpu = summary["per_cpu"]
    if any("haproxy" in per_cpu.get(test, {}) for test in TESTS):
        print("per proxy CPU-second (less sensitive to CPU contention than the rates above)")
    for test in TESTS:
        mine, theirs = per_cpu.get(test, {}).get("tuilb"), per_cpu.get(test, {}).get("haproxy")
        if mine and theirs:
            ratios[test]["tuilb/haproxy per CPU-s"] = mine / theirs
            unit = "MB" if test == "bulk" else "req"
            print(
                f"{SHORT[test]} {unit} per CPU-s: tuilb {fmt(mine, test)} / "
                f"haproxy {fmt(theirs, test)} = {mine / theirs:.2f}x"
            )

    common.print_headroom(med, LABEL)
    summary["other_load_pct"] = common.other_load(results)
    common.note_other_load(summary["other_load_pct"])
    return summary


# -- the run -----------------------------------------------------------------------------------


def start_all(kids: Children, opts: argparse.Namespace) -> tuple[list[Target], dict[str, int]]:
    """Start backends and proxies; return the targets and the backends' pids."""
    workdir = kids.workdir
    haproxy = shutil.which("haproxy")
    ports = iter(common.free_ports(9))
    be_http = next(ports)

    if haproxy is not None:
        cfg = common.http_backend_cfg([be_http])
        backend = kids.start_haproxy("backend", cfg, [be_http], "the HTTP backend (haproxy)")
    else:
        print("note: no haproxy: HTTP backend in Python; check the backend headroom line")
        backend, be_http = kids.start_server("backend", [*ME, "_http"])
    sink, be_bulk = kids.start_server("sink", [*ME, "_sink"])

    targets = [Target("direct", be_http, be_bulk)]
    haproxies = [("haproxy", False)] + ([("haproxy-splice", True)] if opts.haproxy_splice else [])
    if haproxy is None or opts.no_haproxy:
        print("note: HAProxy target skipped" + (" (--no-haproxy)" if haproxy else ""))
        haproxies = []
    for name, splice in haproxies:
        http_port, bulk_port = next(ports), next(ports)
        cfg = haproxy_tcp_cfg(http_port, bulk_port, be_http, be_bulk, splice)
        proc = kids.start_haproxy(name, cfg, [http_port, bulk_port], f"{name} (tcp)")
        targets.append(Target(name, http_port, bulk_port, proc))

    pumps = [("tuilb", "default")] + ([] if opts.no_splice else [("tuilb-splice", "splice")])
    for name, pump in pumps:
        http_port, bulk_port = next(ports), next(ports)
        conf = workdir / f"{name}.toml"
        conf.write_text(tuilb_cfg(http_port, bulk_port, be_http, be_bulk, pump))
        proc = kids.start_tuilb(name, conf, 2, f"{name} ({pump})")
        targets.append(Target(name, http_port, bulk_port, proc))
    return targets, {"http": backend.pid, "sink": sink.pid}


def profile_newconn(target: Target, opts: argparse.Namespace, out: Path) -> None:
    """py-spy record on tuilb during one extra new-connections run; print the top frames."""
    assert target.pid is not None
    seconds = max(3.0, opts.duration)
    ran = common.pyspy_record(
        target.pid,
        out,
        seconds,
        250,
        lambda: run_wrk(target.http_port, seconds, opts.connections, close=True),
    )
    if ran is not None:
        summarize_profile(out)


def _frame(raw: str) -> str:
    """py-spy's "func (/path/to/file.py:123)" -> "func (file.py)" (--function: first lines)."""
    return re.sub(r" \((?:.*/)?([^/]*?)(?::\d+)?\)$", r" (\1)", raw)


def summarize_profile(path: Path, top: int = 15) -> None:
    """Self and inclusive sample shares per frame from py-spy's collapsed-stack output."""
    own, incl, total = common.frame_counts(path, _frame)
    if not total:
        return
    print(f"\nprofile of {path.name}: {total} samples of tuilb during a new-connections run")
    for title, table in (("self", own), ("inclusive", incl)):
        print(f"  top {title}:")
        for frame, n in common.top_frames(table, total, 0.9, top):  # skip the entry frames
            print(f"    {n / total * 100:5.1f}%  {frame}")


def run(opts: argparse.Namespace) -> int:
    if not common.need("wrk"):
        return 2
    if shutil.which("haproxy") is None:
        print("note: haproxy is not installed (apt-get install haproxy): no HAProxy target")

    def profile(targets: list[Target], backends: dict[str, int], summary: dict[str, Any]) -> None:
        tuilb = next((t for t in targets if t.name == "tuilb"), None)
        if tuilb is not None:
            profile_newconn(tuilb, opts, Path(opts.profile).resolve())

    return common.run_proxies(
        opts,
        common.ProxyRun(
            kind="L4",
            settings=f"{opts.rounds} rounds; wrk -t1 -c{opts.connections} -d{opts.duration:g}s; "
            f"bulk {opts.bulk_mib} MiB through each target",
            prefix="tuilb-bench-",
            tests=TESTS,
            start=lambda kids: start_all(kids, opts),
            wrk=run_wrk,
            transfer=lambda port: run_bulk(port, opts.bulk_mib * MIB),
            report=report,
            profile=profile,
            tuilbs=("tuilb", "tuilb-splice"),
            json_settings={"connections": opts.connections, "bulk_mib": opts.bulk_mib},
            exit_note=" (expected 0)",
        ),
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = common.parser(__doc__, "3 rounds, 2 s runs, 256 MiB bulk")
    parser.add_argument("--bulk-mib", type=int, help="MiB per bulk transfer (1024, quick 256)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (50)")
    parser.add_argument("--no-haproxy", action="store_true", help="skip the HAProxy target")
    parser.add_argument("--no-splice", action="store_true", help="skip the tuilb splice target")
    parser.add_argument(
        "--haproxy-splice",
        action="store_true",
        help="add a target: HAProxy with `option splice-auto` (not in the issue's ratios)",
    )
    profile = "afterwards, py-spy record tuilb during one new-connections run into FILE"
    opts = common.parse(parser, argv, (90.0, 25.0), profile)
    opts.bulk_mib = opts.bulk_mib or (256 if opts.quick else 1024)
    return opts


def main() -> int:
    helpers: dict[str, Callable[..., int | None]] = {
        "_sink": sink_main,
        "_http": http_main,
        "_send": lambda port, total: send_main(int(port), int(total)),
    }
    return common.main(helpers, run, parse_args)


if __name__ == "__main__":
    sys.exit(main())
