"""`tuilb ctl`: operate a running tuilb through its admin API.

Commands come from `control.REGISTRY` (the same help text as the dashboard's keys), plus
status, events, reload and `drain --wait`. Exit codes: 0 done, 1 refused or failed
(message on stderr), 2 usage error (argparse's own). Plain stdlib HTTP (http.client), over
TCP or a unix socket; no trio, no Textual.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sys
import time
from typing import Any
from urllib.parse import quote

from tuilb import control
from tuilb.errors import CommandError

DEFAULT_ADMIN = "127.0.0.1:9900"
API = "/api/v1"


def add_parser(sub: Any) -> None:
    ctl = sub.add_parser(
        "ctl",
        help="operate a running tuilb through its admin API",
        description="Operate a running tuilb through its admin API ([admin] in its config).",
    )
    ctl.add_argument(
        "--admin",
        default=os.environ.get("TUILB_ADMIN", DEFAULT_ADMIN),
        help=f"admin address: host:port or unix:/path (env TUILB_ADMIN; {DEFAULT_ADMIN})",
    )
    ctl.add_argument(
        "--token",
        default=os.environ.get("TUILB_ADMIN_TOKEN"),
        help="bearer token for changes (env TUILB_ADMIN_TOKEN)",
    )
    cmds = ctl.add_subparsers(dest="ctl_command", required=True, metavar="COMMAND")
    status = cmds.add_parser("status", help="pools and backends, like the dashboard's table")
    status.add_argument("--json", action="store_true", help="the API's JSON, for scripts")
    for name, spec in control.REGISTRY.items():
        cmd = cmds.add_parser(name, help=spec.help, description=spec.help)
        cmd.add_argument("target", metavar="POOL/BACKEND")
        if name == "weight":
            cmd.add_argument("weight", metavar="N|+N|-N")
        if name == "drain":
            cmd.add_argument(
                "--wait", action="store_true", help="return once its connections reach zero"
            )
            cmd.add_argument(
                "--timeout", type=float, default=300.0, help="with --wait: give up after S seconds"
            )
    cmds.add_parser("reload", help="reload the configuration file")
    events = cmds.add_parser("events", help="the event log, oldest first")
    events.add_argument("--follow", action="store_true", help="keep printing new events")


class AdminError(Exception):
    pass


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.path)
        self.sock = sock


class Admin:
    def __init__(self, where: str, token: str | None, timeout: float = 10.0) -> None:
        self.where = where
        self.token = token
        self.timeout = timeout

    def _connection(self) -> http.client.HTTPConnection:
        if self.where.startswith("unix:"):
            return _UnixConnection(self.where[len("unix:") :], self.timeout)
        host, _, port = self.where.rpartition(":")
        if not host or not port.isdigit():
            raise AdminError(f"bad admin address {self.where!r}: give host:port or unix:/path")
        return http.client.HTTPConnection(host.strip("[]"), int(port), timeout=self.timeout)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Accept": "application/json"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if method == "POST" and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        conn = self._connection()
        try:
            conn.request(method, path, payload, headers)
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise AdminError(
                f"cannot reach the admin API at {self.where}: {reason.lower()} "
                "(is tuilb running with [admin] listen set to this address?)"
            ) from None
        finally:
            conn.close()
        try:
            decoded = json.loads(data) if data else {}
        except ValueError:
            raise AdminError(f"the admin API answered {response.status} with non-JSON") from None
        if response.status >= 400:
            message = decoded.get("error") if isinstance(decoded, dict) else None
            raise AdminError(message or f"the admin API answered {response.status}")
        return decoded


def run(args: argparse.Namespace) -> int:
    admin = Admin(args.admin, args.token)
    try:
        return _dispatch(admin, args)
    except AdminError as exc:
        print(f"tuilb ctl: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(admin: Admin, args: argparse.Namespace) -> int:
    command = args.ctl_command
    if command == "status":
        data = admin.call("GET", f"{API}/status")
        if args.json:
            print(json.dumps(data, indent=1))
        else:
            _print_status(data)
        return 0
    if command == "events":
        return _events(admin, args.follow)
    if command == "reload":
        print(admin.call("POST", f"{API}/reload")["result"])
        return 0
    words = [args.target] + ([args.weight] if command == "weight" else [])
    try:
        control.build(command, words)  # the same checks as every other entry point
    except CommandError as exc:
        print(f"tuilb ctl: {exc}", file=sys.stderr)
        return 2
    pool, sep, name = args.target.partition("/")
    if not sep:
        print("tuilb ctl: targets are written POOL/BACKEND", file=sys.stderr)
        return 2
    path = f"{API}/backends/{quote(pool, safe='')}/{quote(name, safe='')}/{command}"
    body = {"weight": args.weight} if command == "weight" else None
    print(admin.call("POST", path, body)["result"])
    if command == "drain" and args.wait:
        return _wait_drained(admin, pool, name, args.timeout)
    return 0


def _wait_drained(admin: Admin, pool: str, name: str, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        backend = _find(admin.call("GET", f"{API}/status"), pool, name)
        left = backend["active_connections"]
        if left == 0:
            print(f"{pool}/{name}: drained")
            return 0
        if time.monotonic() >= deadline:
            print(
                f"tuilb ctl: {pool}/{name} still has {left} connection(s) after {timeout:g}s",
                file=sys.stderr,
            )
            return 1
        time.sleep(0.2)


def _find(status: dict[str, Any], pool: str, name: str) -> dict[str, Any]:
    for p in status["pools"]:
        if p["name"] == pool:
            for b in p["backends"]:
                if b["name"] == name:
                    return dict(b)
    raise AdminError(f"no backend {pool}/{name}")


def _events(admin: Admin, follow: bool) -> int:
    last = 0
    while True:
        for event in admin.call("GET", f"{API}/events?since={last}")["events"]:
            last = event["id"]
            stamp = time.strftime("%H:%M:%S", time.localtime(event["ts"]))
            line = f"{stamp} {event['target']} {event['kind']}: {event['old']} -> {event['new']}"
            print(_printable(f"{line}  ({event['cause']})"), flush=True)
        if not follow:
            return 0
        time.sleep(0.5)


def _printable(text: str) -> str:
    """Names and causes may come from configs and the network: no raw control characters."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def _print_status(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("Backend", "Address", "State", "Health", "Weight", "Active", "Total",
                   "Failed", "Req", "p99 ms"):  # fmt: skip
        table.add_column(column, no_wrap=True)
    for pool in data["pools"]:
        for b in pool["backends"]:
            weight = str(b["weight"])
            if b["weight"] != b["config_weight"]:
                weight += f" (config {b['config_weight']})"
            if b["slow_start"] < 1:
                weight += f" eff {b['effective_weight']:.1f}"
            health = f"{b['health']} {b['health_progress']}".strip()
            if b["ejected"]:
                health = f"ejected {b['eject_left']:.0f}s"
            latency = b.get("latency_seconds") or {}
            cells = (
                f"{pool['name']}/{b['name']}",
                b["address"],
                b["state"],
                health,
                weight,
                str(b["active_connections"]),
                str(b["total_connections"]),
                str(b["failed_connects"]),
                str(b["requests"]) if b["requests"] else "-",
                f"{latency['p99'] * 1000:.1f}" if latency else "-",
            )
            table.add_row(*(Text(_printable(str(c))) for c in cells))
    listeners = "  ".join(
        f"{x['name']} {x['protocol']} {x['bind']} -> {x['pool'] or '-'}" for x in data["listeners"]
    )
    # Piped or captured: as wide as the rows need, never cut to a default 80 columns.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 250)
    console.print(Text(_printable(f"listeners: {listeners}")))
    console.print(table)
