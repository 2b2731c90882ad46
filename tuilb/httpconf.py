"""The HTTP parts of the configuration: a listener's routes, TLS and trusted proxies,
and the `[limits]` table. Walked by config.py's checker with the same problem reporting."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tuilb.config import _Checker
    from tuilb.tomlpos import Path as KeyPath

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 token (methods, names)
_HOST_PATTERN = re.compile(r"^(\*\.)?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?$")
_SERVER_NAME = re.compile(r"^(\*\.)?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


@dataclass(frozen=True, slots=True)
class RouteConfig:
    pool: str
    host: str | None = None  # lower case; exact, or "*.example.com" (any subdomain)
    path_prefix: str | None = None
    methods: tuple[str, ...] = ()  # upper case; empty: any
    headers: tuple[tuple[str, str], ...] = ()  # (lower-case name, exact value); all must match
    max_body: int | None = None  # overrides [limits] max_body for this route


@dataclass(frozen=True, slots=True)
class Certificate:
    cert: str
    key: str
    server_names: tuple[str, ...] = ()  # SNI names it serves; the first certificate is the default


@dataclass(frozen=True, slots=True)
class Limits:
    max_request_line: int = 8192  # else 414
    max_header_bytes: int = 32768  # else 431
    max_headers: int = 100  # else 431
    max_body: int = 0  # 0: unlimited (streamed); else 413


@dataclass(frozen=True, slots=True)
class HttpListener:
    """What an `http` listener has beyond a tcp one."""

    routes: tuple[RouteConfig, ...] = ()
    tls: tuple[Certificate, ...] = ()  # empty: plain HTTP
    trusted_proxies: tuple[Network, ...] = ()
    access_log: bool = True  # a line per request in headless mode (off: nginx's `access_log off`)


def check_limits(checker: _Checker, value: object) -> Limits:
    path: KeyPath = ("limits",)
    table = checker.table(value, path, tuple(Limits.__dataclass_fields__))
    d = Limits()
    ranges = {
        "max_request_line": (64, 1 << 20),
        "max_header_bytes": (256, 1 << 24),
        "max_headers": (1, 10000),
        "max_body": (0, None),
    }
    values = {
        key: checker.int_range(table, key, path, getattr(d, key), low, high)
        for key, (low, high) in ranges.items()
    }
    return Limits(**values)


def check_http_listener(
    checker: _Checker, table: dict[str, Any], path: KeyPath, pools: dict[str, Any], source_dir: Path
) -> HttpListener:
    routes: list[RouteConfig] = []
    entries = checker.get(table, "routes", path, list, [])
    for i, entry in enumerate(entries):
        route = _route(checker, entry, (*path, "routes", i), pools)
        if route is not None:
            routes.append(route)
    tls = _tls(checker, table.get("tls"), (*path, "tls"), source_dir) if "tls" in table else ()
    trusted: list[Network] = []
    for i, text in enumerate(checker.get(table, "trusted_proxies", path, list, [])):
        try:
            trusted.append(ipaddress.ip_network(text, strict=False))
        except (ValueError, TypeError):
            checker.problem(
                (*path, "trusted_proxies", i), f"{text!r} is not an address or network (CIDR)"
            )
    access_log = checker.get(table, "access_log", path, bool, True)
    return HttpListener(tuple(routes), tls, tuple(trusted), access_log)


def _route(
    checker: _Checker, entry: object, path: KeyPath, pools: dict[str, Any]
) -> RouteConfig | None:
    keys = ("pool", "host", "path_prefix", "methods", "headers", "max_body")
    table = checker.table(entry, path, keys)
    if not table:
        return None
    pool = checker.get(table, "pool", path, str, required=True)
    if pool is not None and pool not in pools:
        known = ", ".join(pools) or "none defined"
        checker.problem((*path, "pool"), f"no pool named {pool!r}; pools: {known}")
    host = checker.get(table, "host", path, str, None)
    if host is not None:
        host = host.lower().rstrip(".")
        if not _HOST_PATTERN.match(host):
            checker.problem((*path, "host"), f"{host!r} is not a host name or *.domain pattern")
    prefix = checker.get(table, "path_prefix", path, str, None)
    if prefix is not None and not prefix.startswith("/"):
        checker.problem((*path, "path_prefix"), f"{prefix!r} must start with '/'")
    methods: list[str] = []
    for i, method in enumerate(checker.get(table, "methods", path, list, [])):
        if not isinstance(method, str) or not _TOKEN.match(method):
            checker.problem((*path, "methods", i), f"{method!r} is not an HTTP method")
        else:
            methods.append(method.upper())
    headers: list[tuple[str, str]] = []
    for name, want in checker.get(table, "headers", path, dict, {}).items():
        if not _TOKEN.match(name):
            checker.problem((*path, "headers", name), f"{name!r} is not a header name")
        elif not isinstance(want, str):
            checker.problem((*path, "headers", name), "header values are strings")
        else:
            headers.append((name.lower(), want))
    max_body = None
    if "max_body" in table:
        max_body = checker.int_range(table, "max_body", path, 0, 0, None)
    if pool is None:
        return None
    return RouteConfig(pool, host, prefix, tuple(methods), tuple(headers), max_body)


def _tls(
    checker: _Checker, value: object, path: KeyPath, source_dir: Path
) -> tuple[Certificate, ...]:
    entries = value if isinstance(value, list) else [value]
    if not entries:
        checker.problem(path, "an empty list: give at least one certificate, or no tls key")
    out: list[Certificate] = []
    seen: set[str] = set()  # server names across this listener's certificates
    for i, entry in enumerate(entries):
        where = (*path, i) if isinstance(value, list) else path
        table = checker.table(entry, where, ("cert", "key", "server_names"))
        if not table:
            continue
        files: dict[str, str] = {}
        for key in ("cert", "key"):
            name = checker.get(table, key, where, str, required=True)
            if name is None:
                continue
            file = Path(name) if Path(name).is_absolute() else source_dir / name
            if not file.is_file():
                checker.problem((*where, key), f"cannot read {str(file)!r}: no such file")
                continue
            files[key] = str(file)
        names: list[str] = []
        for j, server_name in enumerate(checker.get(table, "server_names", where, list, [])):
            if not isinstance(server_name, str) or not _SERVER_NAME.match(server_name):
                checker.problem(
                    (*where, "server_names", j), f"{server_name!r} is not a server name"
                )
            elif server_name.lower() in seen:
                checker.problem(
                    (*where, "server_names", j), f"{server_name!r} is served by another certificate"
                )
            else:
                seen.add(server_name.lower())
                names.append(server_name.lower())
        if len(entries) > 1 and i > 0 and not names:
            checker.problem(
                where, "with several certificates, each after the first needs server_names"
            )
        if len(files) == 2:
            # Load the pair now (a few ms), so `tuilb check` finds a bad file, a key that
            # does not match or an encrypted key, and not only the start-up.
            from tuilb.l7.tls import certificate_problem

            problem = certificate_problem(files["cert"], files["key"])
            if problem is not None:
                checker.problem((*where, problem[0]), problem[1])
            out.append(Certificate(files["cert"], files["key"], tuple(names)))
    return tuple(out)
