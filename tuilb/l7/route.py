"""Route matching for HTTP listeners: which pool serves a request.

Pure functions over what h11 hands us (lower-case `bytes` header names, values with the
surrounding whitespace stripped). No I/O. The proxy calls `pick_route` once per request with
the host from `normalize_host` (the absolute-form authority when there is one, else Host).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from functools import lru_cache

from tuilb.httpconf import RouteConfig

_HOST_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-_.")
_MAX_HOST = 255


@lru_cache(maxsize=1024)  # twice per request, over a handful of distinct hosts
def normalize_host(value: bytes | str | None) -> str | None:
    """A Host header value or absolute-form authority -> the host to route on.

    Lower case, without the port and without one trailing dot; an IPv6 literal keeps its
    brackets (`[::1]:8080` -> `[::1]`). None when there is nothing usable: None or empty,
    spaces, userinfo (`a@b`), characters outside a DNS name or IP literal, an empty label,
    or a port that is not 0..65535 written in digits (an empty port, `host:`, is allowed
    by RFC 3986 and ignored).
    """
    if value is None:
        return None
    if isinstance(value, str):
        try:
            raw = value.encode("ascii")
        except UnicodeEncodeError:
            return None
    else:
        raw = value
    if not raw:
        return None
    raw = raw.lower()
    if raw.startswith(b"["):
        end = raw.find(b"]")
        if end < 0:
            return None
        literal, rest = raw[1:end], raw[end + 1 :]
        if b"%" in literal:  # a zone id names an interface of the sender: never a route
            return None
        if rest and not (rest.startswith(b":") and _port_ok(rest[1:])):
            return None
        try:
            ipaddress.IPv6Address(literal.decode("ascii"))
        except ValueError:
            return None
        return "[" + literal.decode("ascii") + "]"
    host, sep, port = raw.partition(b":")
    if sep and not _port_ok(port):  # a second ':' lands in port and fails there
        return None
    if host.endswith(b"."):
        host = host[:-1]
    if not host or len(host) > _MAX_HOST or not _HOST_CHARS.issuperset(host):
        return None
    if host.startswith(b".") or host.endswith(b".") or b".." in host:
        return None
    return host.decode("ascii")


def _port_ok(port: bytes) -> bool:
    if not port:
        return True
    return port.isdigit() and len(port) <= 5 and int(port) <= 65535


def header_map(headers: Sequence[tuple[bytes, bytes]]) -> dict[bytes, list[bytes]]:
    """h11 headers -> {lower-case name: [values in order]}; repeated headers keep each value."""
    out: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        values = out.get(name)
        if values is None:
            out[name] = [value]
        else:
            values.append(value)
    return out


@lru_cache(maxsize=1024)
def _wanted_headers(route: RouteConfig) -> tuple[tuple[bytes, bytes], ...]:
    # The config holds str; h11 hands bytes. TOML text is Unicode, so a configured value
    # outside ASCII matches its UTF-8 bytes.
    return tuple((name.encode("utf-8"), value.encode("utf-8")) for name, value in route.headers)


def route_matches(
    route: RouteConfig,
    method: str,
    host: str | None,
    path: str,
    headers: Mapping[bytes, list[bytes]],
) -> bool:
    """True when every condition the route sets holds for this request.

    - host: exact, or `*.example.com` for any subdomain at any depth (`a.example.com`,
      `a.b.example.com`) but not `example.com` itself; a request without a usable host
      never matches a route that names one. `host` is expected from `normalize_host`
      and the route's host as the config checker stores it (lower case, no trailing dot).
    - path_prefix: a plain string prefix of the path without its query string. It is not
      decoded or normalized (`/api/../admin` starts with `/api/`): a routing aid, not an
      access control.
    - methods: the method as sent (methods are case-sensitive, RFC 9110 section 9.1).
    - headers: each configured (lower-case name, value) is present with exactly that value
      on at least one of the header's lines; a comma-joined line is compared whole.
    """
    want_host = route.host
    if want_host is not None:
        if host is None:
            return False
        if want_host.startswith("*."):
            suffix = want_host[1:]  # ".example.com"
            if not (host.endswith(suffix) and len(host) > len(suffix)):
                return False
        elif host != want_host:
            return False
    prefix = route.path_prefix
    if prefix is not None:
        query = path.find("?")
        if query >= 0:
            path = path[:query]
        if not path.startswith(prefix):
            return False
    if route.methods and method not in route.methods:
        return False
    if route.headers:
        for name, value in _wanted_headers(route):
            values = headers.get(name)
            if values is None or value not in values:
                return False
    return True


def pick_route(
    routes: Sequence[RouteConfig],
    default_pool: str | None,
    method: str,
    host: str | None,
    path: str,
    headers: Mapping[bytes, list[bytes]],
) -> tuple[str | None, int | None]:
    """The first matching route's (pool, index); else (default_pool, None).

    (None, None) means no route and no default pool: tuilb answers 404.
    """
    for index, route in enumerate(routes):
        if route_matches(route, method, host, path, headers):
            return route.pool, index
    return default_pool, None
