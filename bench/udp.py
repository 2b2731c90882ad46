"""UDP benchmark: tuilb vs direct vs nginx's stream module (`udp`), side by side.

Run from the repository root:

    python bench/udp.py            # full run: 5 rounds of 5 s per target (about 2 minutes)
    python bench/udp.py --quick    # 3 rounds of 2 s per target (under a minute)

Everything it needs it starts itself, on 127.0.0.1 only, and stops on exit (Ctrl-C too):
- a UDP echo backend in Python (a child process of this script: recvfrom, sendto);
- the targets: `direct` (no proxy), `tuilb` (`python -m tuilb run CONF --headless`, one
  `protocol = "udp"` listener over a pool of that one backend) and `nginx` (the stream
  module: `listen ... udp`, `proxy_pass`, `proxy_responses 1`, `worker_processes 1`, run in
  the foreground with a config in the work directory; skipped with a note when nginx or its
  stream module is not installed: `apt-get install nginx-light libnginx-mod-stream`).

The load is a client process (`--clients` of them) with `--flows` UDP sockets, each its own
flow (client address and port), each keeping `--window` request datagrams in flight: a reply
sends the next request. A request unanswered after `--loss-timeout` is counted lost and
replaced. The client counts replies for `--duration` seconds (or until `--max-datagrams`
replies), then waits briefly for the stragglers. The rounds interleave the targets, their
order rotating, as in l4.py; the report gives medians, the ratios tuilb/direct and
tuilb/nginx, CPU per request/reply pair of each proxy (/proc/PID/stat), and lost datagrams.

The script re-invokes itself for its helpers: `udp.py _echo` and `udp.py _load ...`.
"""

from __future__ import annotations

import argparse
import json
import resource
import select
import shutil
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# bench/common.py: what the benchmarks share (process bookkeeping, CPU accounting, configs,
# rounds, failure handling, JSON, command line).
import common
from common import HOST, Children, median, spread

ME = [sys.executable, str(Path(__file__).resolve())]
TEST = "udp"
LABEL = "replies/s"
SEQ = struct.Struct("!Q")
BUFFER = 1 << 20  # SO_RCVBUF / SO_SNDBUF of the helpers' sockets
STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")


# -- helpers run as separate processes ---------------------------------------------------------


def _big_buffers(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)


def echo_main() -> None:
    """UDP echo backend: every datagram goes back to its sender, unchanged."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    _big_buffers(sock)
    sock.bind((HOST, 0))
    print(sock.getsockname()[1], flush=True)
    recvfrom, sendto = sock.recvfrom, sock.sendto
    while True:
        data, peer = recvfrom(65535)
        try:
            sendto(data, peer)
        except OSError:
            pass  # a full buffer: dropped, as the network would


def load_main(
    port: str, flows: str, window: str, seconds: str, limit: str, size: str, timeout: str
) -> None:
    """Request/reply load over `flows` sockets, `window` requests in flight on each; prints
    JSON: replies counted in the timed part, its seconds, sent, lost, late and failed sends,
    replies in the drain after it, and this process's CPU seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_start = usage.ru_utime + usage.ru_stime
    n, win, loss_after = int(flows), int(window), float(timeout)
    pad = b"x" * max(0, int(size) - SEQ.size)
    socks = []
    for _ in range(n):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        _big_buffers(sock)
        sock.connect((HOST, int(port)))
        sock.setblocking(False)
        socks.append(sock)
    index = {s.fileno(): i for i, s in enumerate(socks)}
    out: list[dict[int, float]] = [{} for _ in range(n)]  # per flow: seq -> sent at
    next_seq = [0] * n
    counts = {"sent": 0, "lost": 0, "late": 0, "send_failed": 0, "recv_errors": 0}
    pack, unpack_from, clock = SEQ.pack, SEQ.unpack_from, time.perf_counter

    def send(i: int, now: float) -> None:
        seq = next_seq[i]
        next_seq[i] = seq + 1
        try:
            socks[i].send(pack(seq) + pad)
        except OSError:  # EAGAIN, ENOBUFS, ECONNREFUSED (ICMP): the slot is refilled later
            counts["send_failed"] += 1
            return
        out[i][seq] = now
        counts["sent"] += 1

    def refill(now: float) -> None:
        """Declare requests older than the loss timeout lost; top every window up."""
        for i in range(n):
            pending = out[i]
            for seq in [s for s, t in pending.items() if now - t > loss_after]:
                del pending[seq]
                counts["lost"] += 1
            for _ in range(win - len(pending)):
                send(i, now)

    def receive(wait: float, refill_windows: bool) -> int:
        """One poll: read every waiting reply; each answered request is replaced when
        `refill_windows`. The replies matched."""
        got = 0
        for fd, _ in poller.poll(wait):
            i = index[fd]
            sock, pending = socks[i], out[i]
            for _ in range(4 * win):
                try:
                    data = sock.recv(65535)
                except BlockingIOError:
                    break
                except OSError:
                    counts["recv_errors"] += 1
                    break
                if pending.pop(unpack_from(data)[0], None) is None:
                    counts["late"] += 1  # answered after it was declared lost
                    continue
                got += 1
                if refill_windows:
                    send(i, clock())
        return got

    poller = select.epoll()
    for sock in socks:
        poller.register(sock.fileno(), select.EPOLLIN)
    start = clock()
    refill(start)
    end, cap, received, swept = start + float(seconds), int(limit), 0, start
    now = start
    while now < end and received < cap:
        received += receive(0.01, True)
        now = clock()
        if now - swept >= 0.02:
            refill(now)
            swept = now
    seconds_taken = now - start
    drained, drain_end = 0, clock() + min(0.5, loss_after)
    while any(out) and clock() < drain_end:
        drained += receive(0.01, False)
    counts["lost"] += sum(len(p) for p in out)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu_start
    result = {"received": received, "seconds": seconds_taken, "drained": drained, "cpu": cpu}
    print(json.dumps({**result, **counts}))


# -- targets -----------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    port: int
    proc: subprocess.Popen[bytes] | None = None  # the proxy (nginx: its master)

    def pids(self) -> list[int]:
        """The proxy's processes: nginx's master and its worker(s)."""
        if self.proc is None:
            return []
        pids = [self.proc.pid]
        try:
            path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
            pids += [int(p) for p in path.read_text().split()]
        except OSError:
            pass
        return pids


@dataclass
class Sample(common.Sample):
    sent: int = 0
    lost: int = 0
    late: int = 0
    send_failed: int = 0


def udp_answers(port: int, timeout: float = 0.2) -> bool:
    """Whether a datagram sent to the port comes back (through a proxy to the echo)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(b"probe", (HOST, port))
            return sock.recvfrom(64)[0] == b"probe"
        except OSError:
            return False


def wait_udp(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    common.wait_for(lambda: udp_answers(port), proc, what)


def nginx_binary() -> tuple[str | None, str, bool]:
    """nginx's path (None when it is skipped), its version (or why it is skipped), and
    whether its stream module is a dynamic one to load."""
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if nginx is None:
        return (
            None,
            "nginx is not installed (apt-get install nginx-light libnginx-mod-stream)",
            False,
        )
    built = subprocess.run([nginx, "-V"], capture_output=True, text=True).stderr
    version = built.splitlines()[0].split(":", 1)[-1].strip() if built else "nginx"
    static = "--with-stream " in built + " "
    if not static and not STREAM_MODULE.exists():
        return None, "nginx has no stream module (apt-get install libnginx-mod-stream)", False
    return nginx, version, not static


def nginx_cfg(port: int, backend: int, dynamic: bool) -> str:
    load = f"load_module {STREAM_MODULE};\n" if dynamic else ""
    return f"""{load}worker_processes 1;
daemon off;
pid nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
stream {{
    upstream echo {{ server {HOST}:{backend}; }}
    server {{
        listen {HOST}:{port} udp;
        proxy_pass echo;
        proxy_responses 1;
        proxy_timeout 10s;
    }}
}}
"""


def start(kids: Children, opts: argparse.Namespace) -> tuple[list[Target], int, list[str]]:
    """The echo backend and the targets: targets, the echo's pid, notes."""
    notes: list[str] = []
    echo, echo_port = kids.start_server("echo", [*ME, "_echo"])
    targets = [Target("direct", echo_port)]
    tuilb_port, nginx_port = common.free_ports(2)
    conf = kids.workdir / "tuilb.toml"
    conf.write_text(
        common.tuilb_cfg([("udp", tuilb_port, "echo")], {"echo": [("e1", echo_port)]}, "udp")
    )
    proc = kids.start_tuilb("tuilb", conf, 1, "tuilb")
    wait_udp(tuilb_port, proc, "tuilb")
    targets.append(Target("tuilb", tuilb_port, proc))
    if opts.no_nginx:
        return targets, echo.pid, notes
    nginx, why, dynamic = nginx_binary()
    if nginx is None:
        notes.append(f"nginx target skipped: {why}")
        return targets, echo.pid, notes
    (kids.workdir / "nginx.conf").write_text(nginx_cfg(nginx_port, echo_port, dynamic))
    base = [nginx, "-p", str(kids.workdir), "-c", "nginx.conf", "-e", "stderr"]
    check = subprocess.run([*base, "-t"], capture_output=True, text=True, cwd=kids.workdir)
    if check.returncode != 0:
        notes.append(f"nginx target skipped: its config test failed: {check.stderr.strip()[-300:]}")
        return targets, echo.pid, notes
    proc = kids.start("nginx", base)
    wait_udp(nginx_port, proc, "nginx")
    targets.append(Target("nginx", nginx_port, proc))
    return targets, echo.pid, notes


# -- measurement -------------------------------------------------------------------------------


def run_load(port: int, opts: argparse.Namespace, seconds: float) -> list[dict[str, Any]]:
    """`--clients` load processes at once, their flows split among them: their results."""
    per = [
        opts.flows // opts.clients + (i < opts.flows % opts.clients) for i in range(opts.clients)
    ]
    limit = opts.max_datagrams // opts.clients
    procs = []
    for flows in per:
        argv = [*ME, "_load", str(port), str(flows), str(opts.window), f"{seconds:g}"]
        argv += [str(limit), str(opts.size), f"{opts.loss_timeout:g}"]
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    results = []
    for proc in procs:
        try:
            stdout, _ = proc.communicate(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
        results.append(json.loads(stdout) if proc.returncode == 0 and stdout else {})
    return results


def measure(target: Target, opts: argparse.Namespace, echo: int) -> Sample:
    meter = common.CpuMeter(proxy=target.pids(), backend=[echo])
    results = run_load(target.port, opts, opts.duration)
    usage = meter.stop()
    if not all(results):
        sample = Sample(0.0, 0, errors={"client_failed": sum(not r for r in results)})
    else:
        seconds = max(r["seconds"] for r in results)
        received = sum(r["received"] for r in results)
        sample = Sample(
            received / seconds,
            received + sum(r["drained"] for r in results),
            seconds,
            client_cpu=sum(r["cpu"] for r in results),
            sent=sum(r["sent"] for r in results),
            lost=sum(r["lost"] for r in results),
            late=sum(r["late"] for r in results),
            send_failed=sum(r["send_failed"] for r in results),
        )
        errors = sum(r["recv_errors"] for r in results)
        if errors:
            sample.errors["recv_errors"] = errors
        # The client's own CPU is in its result; the meter's wall also holds its start-up.
        sample.wall = usage.wall
    sample.backend_cpu = usage.cpu["backend"]
    if target.proc is not None:
        sample.cpu = usage.cpu["proxy"]
    sample.other_pct = usage.other_pct
    common.check_running(target.name, target.proc, TEST)
    return sample


# -- report ------------------------------------------------------------------------------------


def row(label: str, cells: list[str]) -> str:
    return common.row(label, cells, 34, 16)


def report(
    results: dict[str, dict[str, list[Sample]]], targets: list[Target], rss: dict[str, int]
) -> dict[str, Any]:
    names = [t.name for t in targets]
    per = results[TEST]
    med = {n: median([s.value for s in per[n]]) for n in names}
    print(common.MEDIANS)
    print(row("", names))
    print(row(LABEL, [f"{med[n]:,.0f} ±{spread([s.value for s in per[n]]):.0f}%" for n in names]))
    cpu_us: dict[str, float] = {}
    cells: dict[str, list[str]] = {}
    for n in names:
        samples = per[n]
        timed = [s for s in samples if s.wall and s.amount]
        if samples[0].cpu is not None and timed:
            cpu_us[n] = median([(s.cpu or 0) / s.amount * 1e6 for s in timed])
            share = median([(s.cpu or 0) / s.wall * 100 for s in timed])
            cells.setdefault("per", []).append(f"{cpu_us[n]:.1f} µs")
            cells.setdefault("proxy", []).append(f"{share:.0f}%")
        else:
            cells.setdefault("per", []).append("-")
            cells.setdefault("proxy", []).append("-")
        common.load_shares(samples, cells)
        lost = sum(s.lost for s in samples)
        sent = sum(s.sent for s in samples)
        cells.setdefault("lost", []).append(f"{lost:,} ({lost / sent * 100 if sent else 0:.2g}%)")
        cells.setdefault("late", []).append(f"{sum(s.late for s in samples):,}")
        cells.setdefault("rss", []).append(f"{rss[n] / 1024:.1f} MiB" if n in rss else "-")
    common.print_cpu_rows(row, "proxy CPU per request+reply", cells, "client")
    print(row("lost datagrams (all rounds)", cells["lost"]))
    print(row("  answered after the timeout", cells["late"]))
    print(row("peak RSS", cells["rss"]))
    summary: dict[str, Any] = {"medians": med, "proxy_cpu_us_per_reply": cpu_us}
    fastest = max((v for n, v in med.items() if n != "direct"), default=0.0)
    if fastest and med.get("direct"):
        headroom = med["direct"] / fastest
        print(
            f"backend headroom: direct = {headroom:.1f}x the fastest proxy"
            + ("" if headroom >= 1.5 else " (low: the echo or the client may be limiting)")
        )
    ratios: dict[str, float] = {}
    print()
    for other in ("direct", "nginx"):
        if med.get(other) and med.get("tuilb"):
            ratios[f"tuilb/{other}"] = med["tuilb"] / med[other]
            line = f"tuilb / {other}: {ratios[f'tuilb/{other}']:.2f}x ({LABEL}, medians)"
            if other in cpu_us and cpu_us.get("tuilb"):
                ratios[f"tuilb/{other} per proxy CPU-s"] = cpu_us[other] / cpu_us["tuilb"]
                line += f", {cpu_us[other] / cpu_us['tuilb']:.2f}x per proxy CPU-second"
            print(line)
    summary["ratios"] = ratios
    common.note_other_load(common.other_load(results))
    return summary


# -- the run -----------------------------------------------------------------------------------


def run(opts: argparse.Namespace) -> int:
    info = common.machine()
    nginx, nginx_version, _ = nginx_binary()
    info["nginx"] = nginx_version if nginx else ""
    print(common.headline("UDP", info) + f", {info['nginx'] or 'no nginx'}")
    print(
        f"{opts.rounds} rounds of {opts.duration:g} s per target; {opts.clients} client "
        f"process(es), {opts.flows} flows, {opts.window} in flight per flow, "
        f"{opts.size}-byte datagrams, lost after {opts.loss_timeout:g} s"
    )
    bench = common.Bench(opts, "tuilb-bench-udp-")
    kids = Children(bench.workdir)
    results: dict[str, dict[str, list[Sample]]] = {}
    rss: dict[str, int] = {}
    summary: dict[str, Any] = {}

    def body() -> None:
        targets, echo, notes = start(kids, opts)
        for note in notes:
            print(f"note: {note}")
        for target in targets:  # warm-up, not recorded
            run_load(target.port, opts, 1.0)
        results.update(bench.rounds(targets, (TEST,), lambda t, _: measure(t, opts, echo)))
        for target in targets:
            pids = target.pids()
            if pids:
                rss[target.name] = sum(common.peak_rss_kib(p) for p in pids)
        summary.update(report(results, targets, rss))
        summary["notes"] = notes
        bench.note_discarded()

    def running() -> list[str]:
        return [name for name, _ in kids.procs]

    code = bench.guard(body, kids.stop_all, running, kids.log_text, "logs and configs")
    if code:
        return code
    if "tuilb" in kids.exit_codes:
        bench.check_tuilb("tuilb", kids.exit_codes["tuilb"], kids.log_text("tuilb"))
    bench.finish("every client finished", "logs and configs")
    settings = {
        "clients": opts.clients,
        "flows": opts.flows,
        "window": opts.window,
        "size": opts.size,
        "loss_timeout_s": opts.loss_timeout,
        "max_datagrams": opts.max_datagrams,
    }
    bench.save(info, settings, results, rss, **summary)
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = common.parser(__doc__, "3 rounds of 2 s (default: 5 rounds of 5 s)")
    parser.add_argument("--clients", type=int, default=1, help="load processes (default 1)")
    parser.add_argument("--flows", type=int, default=8, help="UDP flows in all (default 8)")
    parser.add_argument(
        "--window", type=int, default=8, help="requests in flight per flow (default 8)"
    )
    parser.add_argument("--size", type=int, default=64, help="datagram bytes (default 64)")
    parser.add_argument(
        "--loss-timeout",
        type=float,
        default=0.2,
        metavar="S",
        help="a request unanswered after S seconds counts as lost (default 0.2)",
    )
    parser.add_argument(
        "--max-datagrams",
        type=int,
        default=10_000_000,
        metavar="N",
        help="stop a sample after N replies even before --duration (default 10,000,000)",
    )
    parser.add_argument("--no-nginx", action="store_true", help="leave out nginx")
    opts = common.parse(parser, argv, (40.0, 15.0), "(not used by this benchmark)")
    opts.clients = max(1, min(opts.clients, opts.flows))
    return opts


if __name__ == "__main__":
    helpers = {"_echo": echo_main, "_load": load_main}
    sys.exit(common.main(helpers, run, parse_args))
