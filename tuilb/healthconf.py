"""The health parts of a pool's configuration: `[pools.X.health]`, `[pools.X.passive]`
and `slow_start`. Kept apart from config.py so each stays readable; the checker walks
these tables with the same problem reporting as the rest of the file."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tuilb.config import _Checker
    from tuilb.tomlpos import Path as KeyPath

CHECK_TYPES = ("tcp", "http", "udp", "none")
StatusRanges = tuple[tuple[int, int], ...]
_STATUS = re.compile(r"^\s*([1-5]\d\d)\s*(?:-\s*([1-5]\d\d)\s*)?$")
_HOST_HEADER = re.compile(r"^[A-Za-z0-9_.-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")


@dataclass(frozen=True, slots=True)
class HealthConfig:
    type: str = "none"
    path: str = "/"
    host: str | None = None  # Host header of HTTP checks; the backend's address by default
    expect_status: StatusRanges = ((200, 399),)
    expect_body: str | None = None
    interval: float = 2.0  # while stable
    fast_interval: float = 2.0  # while changing state (defaults to interval)
    down_interval: float = 2.0  # while down (defaults to interval)
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3
    port: int | None = None  # check this port instead of the backend's own
    send: str = "ping"  # udp: the datagram sent
    expect: str | None = None  # udp: text the reply must contain (any reply when unset)

    @property
    def active(self) -> bool:
        return self.type != "none"


@dataclass(frozen=True, slots=True)
class PassiveConfig:
    consecutive_failures: int = 5
    eject_time: float = 30.0
    max_eject_time: float = 300.0


def parse_status(value: object) -> StatusRanges:
    """200, "200", "200-399" or a list of them -> ranges; ValueError saying what is wrong."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError("the list is empty")
    out: list[tuple[int, int]] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int | str):
            raise ValueError(f"{item!r} is not a status code or range")
        text = str(item)
        match = _STATUS.match(text)
        if match is None:
            raise ValueError(f"{text!r} is not a status code (100-599) or a range like 200-399")
        low = int(match.group(1))
        high = int(match.group(2) or low)
        if high < low:
            raise ValueError(f"range {text!r} ends before it starts")
        out.append((low, high))
    return tuple(out)


def status_matches(ranges: StatusRanges, status: int) -> bool:
    return any(low <= status <= high for low, high in ranges)


def format_status(ranges: StatusRanges) -> str:
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def check_health(checker: _Checker, value: object, path: KeyPath) -> HealthConfig:
    keys = tuple(f.name for f in fields(HealthConfig))
    table = checker.table(value, path, keys)
    d = HealthConfig()
    kind = checker.get(table, "type", path, str, "tcp")  # a [health] table means checks on
    if kind not in CHECK_TYPES:
        checker.problem((*path, "type"), f"{kind!r} is not one of: {', '.join(CHECK_TYPES)}")
        kind = "tcp"
    http_only = [k for k in ("path", "host", "expect_status", "expect_body") if k in table]
    if kind != "http" and http_only:
        checker.problem(
            (*path, http_only[0]), f'{http_only[0]!r} applies to type = "http" checks only'
        )
    udp_only = [k for k in ("send", "expect") if k in table]
    if kind != "udp" and udp_only:
        checker.problem(
            (*path, udp_only[0]), f'{udp_only[0]!r} applies to type = "udp" checks only'
        )
    send = checker.get(table, "send", path, str, d.send)
    if not send or len(send.encode()) > 1024:
        checker.problem((*path, "send"), "send 1 to 1024 bytes")
        send = d.send
    expect = checker.get(table, "expect", path, str, None) or None
    check_path = checker.get(table, "path", path, str, d.path)
    if not check_path.startswith("/") or not all("!" <= c <= "~" for c in check_path):
        checker.problem(
            (*path, "path"),
            f"{check_path!r} must start with '/' and hold no spaces, controls or non-ASCII"
            " characters (percent-encode them)",
        )
        check_path = d.path
    host = checker.get(table, "host", path, str, None)
    if host is not None and not _HOST_HEADER.match(host):
        checker.problem((*path, "host"), f"{host!r} is not a host name (optionally with :port)")
        host = None
    status = d.expect_status
    if "expect_status" in table:
        try:
            status = parse_status(table["expect_status"])
        except ValueError as exc:
            checker.problem((*path, "expect_status"), str(exc))
    body = checker.get(table, "expect_body", path, str, None)
    if body == "":
        checker.problem((*path, "expect_body"), "an empty string matches every body; leave it out")
        body = None
    seconds: dict[str, float] = {}
    for key in ("interval", "fast_interval", "down_interval", "timeout"):
        number = checker.get(table, key, path, (int, float), None)
        if number is not None and not 0.01 <= number <= 3600:  # also catches nan
            checker.problem((*path, key), f"{number} is out of range 0.01..3600 seconds")
            number = None
        if number is not None:
            seconds[key] = float(number)
    interval = seconds.get("interval", d.interval)
    rise = checker.int_range(table, "rise", path, d.rise, 1, 100)
    fall = checker.int_range(table, "fall", path, d.fall, 1, 100)
    port: int | None = None
    if "port" in table:
        port = checker.int_range(table, "port", path, 0, 1, 65535) or None
    return HealthConfig(
        type=kind,
        path=check_path,
        host=host,
        expect_status=status,
        expect_body=body,
        interval=interval,
        fast_interval=seconds.get("fast_interval", interval),
        down_interval=seconds.get("down_interval", interval),
        timeout=seconds.get("timeout", min(d.timeout, interval)),
        rise=rise,
        fall=fall,
        port=port,
        send=send,
        expect=expect,
    )


def check_passive(checker: _Checker, value: object, path: KeyPath) -> PassiveConfig:
    table = checker.table(value, path, ("consecutive_failures", "eject_time", "max_eject_time"))
    d = PassiveConfig()
    failures = checker.int_range(
        table, "consecutive_failures", path, d.consecutive_failures, 1, 1000
    )
    seconds: dict[str, float] = {}
    for key in ("eject_time", "max_eject_time"):
        number: Any = checker.get(table, key, path, (int, float), getattr(d, key))
        if not 0.01 <= number <= 86400:
            checker.problem((*path, key), f"{number} is out of range 0.01..86400 seconds")
            number = getattr(d, key)
        seconds[key] = float(number)
    eject, cap = seconds["eject_time"], seconds["max_eject_time"]
    if "max_eject_time" not in table:
        cap = max(cap, eject)
    elif cap < eject:
        checker.problem(
            (*path, "max_eject_time"), f"{cap:g} is shorter than eject_time ({eject:g})"
        )
        cap = eject
    return PassiveConfig(failures, eject, cap)
