"""Configuration: TOML text -> frozen dataclasses, with every problem reported at once.

Nothing here opens a socket or resolves a name. `load(path)` and `parse(text, source)`
either return a `Config` or raise `ConfigError` listing each problem with its key path
and, where the text shows it, its line.
"""

from __future__ import annotations

import importlib.resources
import ipaddress
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuilb.balance import ALGORITHMS
from tuilb.errors import ConfigError, Problem
from tuilb.healthconf import HealthConfig, PassiveConfig, check_health, check_passive
from tuilb.httpconf import HttpListener, Limits, Network, check_http_listener, check_limits
from tuilb.sni import SniRoute
from tuilb.tomlpos import Path as KeyPath
from tuilb.tomlpos import key_lines, line_of

PROTOCOLS = ("tcp", "http", "udp")
LATER_PROTOCOLS: tuple[str, ...] = ()  # in the schema, not yet served
MAX_FLOWS = 10000  # udp listeners: flows at once, by default
HTTP_ONLY = ("routes", "tls", "trusted_proxies", "access_log")
# An SNI host_name (RFC 6066: a DNS name, no trailing dot) or "*." and one
_SNI_NAME = re.compile(r"^(\*\.)?[a-z0-9_-]{1,63}(\.[a-z0-9_-]{1,63})*$")
PUMPS = ("default", "splice")
SEND_PROXY = ("v1", "v2")  # PROXY protocol versions a pool can send its backends
UNWEIGHTED = ("round_robin", "least_connections")
MAX_WEIGHT = 256
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_HOST = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?$")


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_literal(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


@dataclass(frozen=True, slots=True)
class BackendConfig:
    name: str
    address: Address
    weight: int = 1
    max_connections: int = 0


@dataclass(frozen=True, slots=True)
class PoolConfig:
    name: str
    algorithm: str
    backends: tuple[BackendConfig, ...]
    health: HealthConfig = HealthConfig()  # noqa: RUF009 (frozen: one shared default is fine)
    passive: PassiveConfig | None = None  # outlier ejection; None: off
    slow_start: float = 0.0  # seconds to ramp a returning backend to full weight; 0: off
    send_proxy: str | None = None  # "v1" / "v2": a PROXY header first on each backend connection


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    name: str
    bind: Address
    pool: str | None  # tcp: required; http: the default when no route matches (or none: 404)
    protocol: str = "tcp"
    pump: str = "default"
    http: HttpListener = HttpListener()  # noqa: RUF009 (frozen: one shared default is fine)
    # Sources that must open with a PROXY protocol header; with any, nobody else may connect.
    accept_proxy: tuple[Network, ...] = ()
    # tcp: TLS passthrough by the ClientHello's server name; `pool` is then the fallback
    sni_routes: tuple[SniRoute, ...] = ()
    max_flows: int = MAX_FLOWS  # udp: flows (client addresses) at once; more are refused


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 5.0
    idle: float = 3600.0
    shutdown_grace: float = 30.0
    # HTTP listeners
    request_headers: float = 10.0  # the whole request head must arrive (else 408)
    keepalive: float = 15.0  # an idle client connection between requests is closed
    response: float = 30.0  # the backend's first response byte (else 504)
    body: float = 30.0  # no body bytes either way for this long: close
    tls_handshake: float = 10.0
    proxy_header: float = 5.0  # accept_proxy listeners: the PROXY header must arrive within this
    client_hello: float = 5.0  # sni_routes listeners: the whole TLS ClientHello must arrive
    udp_idle: float = 60.0  # udp listeners: a flow with no datagram either way ends


@dataclass(frozen=True, slots=True)
class UiConfig:
    theme: str = "tuilb-dark"
    refresh: float = 2.0  # dashboard snapshots per second


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """`[admin]`: the admin API (and `tuilb ctl`'s address)."""

    address: Address | None = None  # TCP
    path: str | None = None  # unix socket
    token: str | None = None

    @property
    def listen(self) -> str:
        return f"unix:{self.path}" if self.path is not None else str(self.address)


@dataclass(frozen=True, slots=True)
class Config:
    listeners: tuple[ListenerConfig, ...]
    pools: dict[str, PoolConfig]
    timeouts: Timeouts
    source: str = "<config>"
    ui: UiConfig = UiConfig()
    limits: Limits = Limits()  # noqa: RUF009 (frozen: one shared default is fine)
    admin: AdminConfig | None = None  # no [admin] table: no admin listener
    state_file: str | None = None  # [state] file, resolved against the config's folder

    def summary(self) -> str:
        n_backends = sum(len(p.backends) for p in self.pools.values())
        return (
            f"{self.source}: OK: {len(self.listeners)} listener(s), "
            f"{len(self.pools)} pool(s), {n_backends} backend(s)"
        )


def installed_themes() -> list[str]:
    """Names of the shipped themes (file names), without loading the UI stack."""
    try:
        folder = importlib.resources.files("tuilb.themes")
        return sorted(f.name[: -len(".toml")] for f in folder.iterdir() if f.name.endswith(".toml"))
    except (ModuleNotFoundError, OSError):
        return []


def parse_address(text: str, allow_zero: bool = False) -> Address:
    """`host:port` or `[v6]:port` -> Address; ValueError with a readable reason.

    `allow_zero` lets a bind address use port 0: the kernel picks a free port (tests).
    """
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError("IPv6 addresses are written [addr]:port")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError("expected host:port")
        if ":" in host:
            raise ValueError("write IPv6 addresses in brackets, e.g. [::1]:8080")
    if not host:
        raise ValueError("the host part is empty (use 0.0.0.0 or [::] for all addresses)")
    if not (port.isascii() and port.isdigit()):
        raise ValueError(f"port {port!r} is not a number")
    number = int(port)
    if not (0 if allow_zero else 1) <= number <= 65535:
        raise ValueError(f"port {number} is out of range {0 if allow_zero else 1}..65535")
    if text.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    elif not _HOST.match(host):
        raise ValueError(f"{host!r} is not a host name or IP address")
    return Address(host, number)


def load(path: str | Path) -> Config:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [Problem("", f"cannot read file: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), [Problem("", "the file is not UTF-8 text")]) from None
    return parse(text, str(path))


def parse(text: str, source: str = "<config>") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [Problem("", f"not valid TOML: {exc}")]) from None
    checker = _Checker(key_lines(text))
    config = checker.config(data, source)
    if checker.problems or config is None:
        raise ConfigError(source, checker.problems)
    return config


def _raw_name(entry: object) -> str | None:
    """An entry's name before validation, so duplicates show even beside other problems."""
    name = entry.get("name") if isinstance(entry, dict) else None
    return name if isinstance(name, str) else None


def _where(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _type_name(value: object) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


class _Checker:
    """Walks the parsed TOML, collecting problems instead of stopping at the first."""

    def __init__(self, lines: dict[KeyPath, int]) -> None:
        self.lines = lines
        self.problems: list[Problem] = []

    def problem(self, path: KeyPath, message: str) -> None:
        self.problems.append(Problem(_where(path), message, line_of(self.lines, path)))

    def table(self, value: object, path: KeyPath, allowed: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.problem(path, f"expected a table, got {_type_name(value)}")
            return {}
        for key in value:
            if key not in allowed:
                self.problem((*path, key), f"unknown key {key!r}; allowed: {', '.join(allowed)}")
        return value

    def get(
        self,
        table: dict[str, Any],
        key: str,
        path: KeyPath,
        kind: type | tuple[type, ...],
        default: Any = None,
        required: bool = False,
    ) -> Any:
        if key not in table:
            if required:
                self.problem(path, f"missing required key {key!r}")
            return default
        value = table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if not ok:
            want = " or ".join(_type_name(k()) for k in kinds)
            self.problem((*path, key), f"expected {want}, got {_type_name(value)}")
            return default
        return value

    def name(self, value: str | None, path: KeyPath) -> str | None:
        if value is not None and not _NAME.match(value):
            self.problem(path, f"name {value!r} may use only letters, digits, '_', '-' and '.'")
            return None
        return value

    def address(self, value: str | None, path: KeyPath, bind: bool = False) -> Address | None:
        if value is None:
            return None
        try:
            return parse_address(value, allow_zero=bind)
        except ValueError as exc:
            self.problem(path, f"bad address {value!r}: {exc}")
            return None

    def int_range(
        self,
        table: dict[str, Any],
        key: str,
        path: KeyPath,
        default: int,
        low: int,
        high: int | None,
    ) -> int:
        value: int = self.get(table, key, path, int, default)
        if value < low or (high is not None and value > high):
            bound = f"{low}..{high}" if high is not None else f">= {low}"
            self.problem((*path, key), f"{value} is out of range {bound}")
            return default
        return value

    def config(self, data: dict[str, Any], source: str) -> Config | None:
        self.table(data, (), ("listeners", "pools", "timeouts", "limits", "ui", "admin", "state"))
        self.source_dir = Path(source).parent if not source.startswith("<") else Path.cwd()
        pools = self.pools(data.get("pools"))
        listeners = self.listeners(data.get("listeners"), pools)
        timeouts = self.timeouts(data.get("timeouts", {}))
        limits = check_limits(self, data.get("limits", {}))
        ui = self.ui(data.get("ui", {}))
        admin = self.admin(data["admin"]) if "admin" in data else None
        state_file = self.state(data["state"]) if "state" in data else None
        if self.problems:
            return None
        return Config(
            listeners=listeners,
            pools=pools,
            timeouts=timeouts,
            source=source,
            ui=ui,
            limits=limits,
            admin=admin,
            state_file=state_file,
        )

    def state(self, value: object) -> str | None:
        path: KeyPath = ("state",)
        table = self.table(value, path, ("file",))
        name = self.get(table, "file", path, str, required=True)
        if name is None:
            return None
        file = Path(name) if Path(name).is_absolute() else self.source_dir / name
        if not file.parent.is_dir():
            self.problem((*path, "file"), f"the folder {str(file.parent)!r} does not exist")
        return str(file)

    def admin(self, value: object) -> AdminConfig | None:
        path: KeyPath = ("admin",)
        table = self.table(value, path, ("listen", "token"))
        listen = self.get(table, "listen", path, str, required=True)
        token = self.get(table, "token", path, str, None)
        if token is not None and (len(token) < 8 or not token.isprintable() or " " in token):
            self.problem(
                (*path, "token"), "a token needs 8 or more printable characters, no spaces"
            )
            token = None
        if listen is None:
            return None
        if listen.startswith("unix:"):
            socket_path = listen[len("unix:") :]
            if not socket_path.startswith("/"):
                self.problem((*path, "listen"), "write a unix socket as unix:/absolute/path")
                return None
            return AdminConfig(path=socket_path, token=token)
        address = self.address(listen, (*path, "listen"), bind=True)
        if address is None:
            return None
        loopback = address.host == "localhost"
        if address.is_literal:
            loopback = ipaddress.ip_address(address.host).is_loopback
        if not loopback and token is None:
            self.problem(
                (*path, "listen"),
                f"{address} is reachable from other machines: set [admin] token, "
                "or listen on 127.0.0.1 or a unix socket",
            )
        return AdminConfig(address=address, token=token)

    def ui(self, value: object) -> UiConfig:
        path: KeyPath = ("ui",)
        table = self.table(value, path, ("theme", "refresh"))
        defaults = UiConfig()
        theme = self.get(table, "theme", path, str, defaults.theme)
        refresh = self.get(table, "refresh", path, (int, float), defaults.refresh)
        if not 0.2 <= refresh <= 30:
            self.problem((*path, "refresh"), f"{refresh} is out of range 0.2..30 per second")
            refresh = defaults.refresh
        themes = installed_themes()
        if themes and theme not in themes:
            self.problem((*path, "theme"), f"unknown theme {theme!r}; themes: {', '.join(themes)}")
        return UiConfig(theme, float(refresh))

    def timeouts(self, value: object) -> Timeouts:
        path: KeyPath = ("timeouts",)
        fields = tuple(Timeouts.__dataclass_fields__)
        table = self.table(value, path, fields)
        defaults = Timeouts()
        out: dict[str, float] = {}
        for key in fields:
            number = self.get(table, key, path, (int, float), getattr(defaults, key))
            if not number > 0:  # also catches nan
                self.problem((*path, key), f"{number} must be a positive number of seconds")
                number = getattr(defaults, key)
            out[key] = float(number)
        return Timeouts(**out)

    def pools(self, value: object) -> dict[str, PoolConfig]:
        if not value:
            self.problem(("pools",), "no pools defined; add a [pools.NAME] table")
            return {}
        pools: dict[str, PoolConfig] = {}
        names = tuple(value) if isinstance(value, dict) else ()
        for name, body in self.table(value, ("pools",), names).items():
            pool = self.pool(name, body)
            if pool is not None:
                pools[name] = pool
        return pools

    def pool(self, name: str, body: object) -> PoolConfig | None:
        path: KeyPath = ("pools", name)
        self.name(name, path)
        table = self.table(
            body, path, ("algorithm", "backends", "health", "passive", "slow_start", "send_proxy")
        )
        algorithm = self.get(table, "algorithm", path, str, "round_robin")
        if algorithm not in ALGORITHMS:
            self.problem(
                (*path, "algorithm"),
                f"unknown algorithm {algorithm!r}; known: {', '.join(ALGORITHMS)}",
            )
        health = HealthConfig()
        if "health" in table:
            health = check_health(self, table["health"], (*path, "health"))
        passive = None
        if "passive" in table:
            passive = check_passive(self, table["passive"], (*path, "passive"))
        slow_start = self.get(table, "slow_start", path, (int, float), 0.0)
        if not 0 <= slow_start <= 3600:
            self.problem((*path, "slow_start"), f"{slow_start} is out of range 0..3600 seconds")
            slow_start = 0.0
        elif slow_start and algorithm in UNWEIGHTED:
            self.problem(
                (*path, "slow_start"),
                f"slow start ramps weights, which {algorithm!r} ignores; use a weighted "
                f"algorithm ({', '.join(a for a in ALGORITHMS if a not in UNWEIGHTED)})",
            )
        entries = self.get(table, "backends", path, list, [], required=True)
        if isinstance(table.get("backends"), list) and not entries:
            self.problem((*path, "backends"), "a pool needs at least one backend")
        backends: list[BackendConfig] = []
        seen: set[str] = set()
        for i, entry in enumerate(entries):
            entry_name = _raw_name(entry)
            if entry_name in seen:
                self.problem(
                    (*path, "backends", i, "name"),
                    f"duplicate backend name {entry_name!r} in pool {name!r}",
                )
            if entry_name is not None:
                seen.add(entry_name)
            backend = self.backend(entry, (*path, "backends", i))
            if backend is not None:
                backends.append(backend)
        send_proxy = None
        if "send_proxy" in table:
            send_proxy = self.choice(table, "send_proxy", path, SEND_PROXY, "v1")
        return PoolConfig(
            name, algorithm, tuple(backends), health, passive, float(slow_start), send_proxy
        )

    def backend(self, entry: object, path: KeyPath) -> BackendConfig | None:
        if not isinstance(entry, dict):
            self.table(entry, path, ())  # one problem: "expected a table", not one per key
            return None
        table = self.table(entry, path, ("name", "address", "weight", "max_connections"))
        name = self.name(self.get(table, "name", path, str, required=True), (*path, "name"))
        address = self.address(
            self.get(table, "address", path, str, required=True), (*path, "address")
        )
        weight = self.int_range(table, "weight", path, 1, 0, MAX_WEIGHT)
        max_conn = self.int_range(table, "max_connections", path, 0, 0, None)
        if name is None or address is None:
            return None
        return BackendConfig(name, address, weight, max_conn)

    def listeners(self, value: object, pools: dict[str, PoolConfig]) -> tuple[ListenerConfig, ...]:
        if value is None or value == []:
            self.problem(("listeners",), "no listeners defined; add a [[listeners]] table")
            return ()
        if not isinstance(value, list):
            self.problem(("listeners",), "expected an array of tables: write [[listeners]]")
            return ()
        out: list[ListenerConfig] = []
        names: set[str] = set()
        binds: dict[tuple[bool, Address], str] = {}
        for i, entry in enumerate(value):
            path: KeyPath = ("listeners", i)
            entry_name = _raw_name(entry)
            if entry_name in names:
                self.problem((*path, "name"), f"duplicate listener name {entry_name!r}")
            if entry_name is not None:
                names.add(entry_name)
            listener = self.listener(entry, path, pools)
            if listener is None:
                continue
            # tcp and udp ports are apart: one address may serve both
            where = (listener.protocol == "udp", listener.bind)
            if where in binds and listener.bind.port != 0:
                other = binds[where]
                self.problem((*path, "bind"), f"{listener.bind} is already bound by {other!r}")
            binds[where] = listener.name
            out.append(listener)
        return tuple(out)

    def listener(
        self, entry: object, path: KeyPath, pools: dict[str, PoolConfig]
    ) -> ListenerConfig | None:
        if not isinstance(entry, dict):
            self.table(entry, path, ())
            return None
        keys: tuple[str, ...] = ("name", "bind", "protocol", "pool", "pump", "accept_proxy")
        keys += ("sni_routes", "max_flows", *HTTP_ONLY)
        table = self.table(entry, path, keys)
        name = self.name(self.get(table, "name", path, str, required=True), (*path, "name"))
        bind = self.address(
            self.get(table, "bind", path, str, required=True), (*path, "bind"), bind=True
        )
        protocol = self.choice(table, "protocol", path, PROTOCOLS, "tcp")
        pump = self.choice(table, "pump", path, PUMPS, "default")
        http = HttpListener()
        if protocol == "http":
            http = check_http_listener(self, table, path, pools, self.source_dir)
        else:
            for key in HTTP_ONLY:
                if key in table:
                    self.problem((*path, key), f'{key!r} applies to protocol = "http" only')
        sni_routes: tuple[SniRoute, ...] = ()
        if "sni_routes" in table and protocol != "tcp":
            self.problem((*path, "sni_routes"), 'sni_routes applies to protocol = "tcp" only')
        elif "sni_routes" in table:
            sni_routes = self.sni_routes(table, path, pools)
        # With sni_routes, `pool` is where hellos no route matches go (none: closed).
        required = protocol != "http" and "sni_routes" not in table
        pool = self.get(table, "pool", path, str, required=required)
        if pool is not None and pool not in pools:
            known = ", ".join(pools) or "none defined"
            self.problem((*path, "pool"), f"no pool named {pool!r}; pools: {known}")
        accept_proxy = self.networks(table, "accept_proxy", path)
        max_flows = MAX_FLOWS
        if protocol == "udp":
            max_flows = self.udp_listener(table, path, pools.get(pool or ""))
        elif "max_flows" in table:
            self.problem((*path, "max_flows"), 'max_flows applies to protocol = "udp" only')
        if name is None or bind is None or (pool is None and required):
            return None
        return ListenerConfig(
            name, bind, pool, protocol, pump, http, accept_proxy, sni_routes, max_flows
        )

    def udp_listener(self, table: dict[str, Any], path: KeyPath, pool: PoolConfig | None) -> int:
        """What a udp listener may not have (stream things), and its `max_flows`."""
        for key, why in (
            ("pump", "datagrams are not pumped as a stream"),
            ("accept_proxy", "PROXY protocol headers come on tcp connections"),
        ):
            if key in table:
                self.problem((*path, key), f'{key!r} applies to protocol = "tcp" only: {why}')
        if pool is not None and pool.send_proxy is not None:
            self.problem(
                (*path, "pool"),
                f"pool {pool.name!r} sends PROXY headers (send_proxy), which a udp "
                "listener cannot: use a pool without send_proxy",
            )
        return self.int_range(table, "max_flows", path, MAX_FLOWS, 1, 10_000_000)

    def sni_routes(
        self, table: dict[str, Any], path: KeyPath, pools: dict[str, PoolConfig]
    ) -> tuple[SniRoute, ...]:
        """`[[listeners.sni_routes]]`: server_name (exact or `*.domain`) -> pool."""
        entries = self.get(table, "sni_routes", path, list, [])
        if "sni_routes" in table and isinstance(table["sni_routes"], list) and not entries:
            self.problem((*path, "sni_routes"), "an empty list: add routes, or remove the key")
        out: list[SniRoute] = []
        seen: set[str] = set()
        for i, entry in enumerate(entries):
            where = (*path, "sni_routes", i)
            route = self.table(entry, where, ("server_name", "pool"))
            if not route:
                continue
            server_name = self.get(route, "server_name", where, str, required=True)
            pool = self.get(route, "pool", where, str, required=True)
            if server_name is not None:
                server_name = server_name.lower()
                if not _SNI_NAME.match(server_name):
                    self.problem(
                        (*where, "server_name"),
                        f"{server_name!r} is not a server name or *.domain pattern",
                    )
                    server_name = None
                elif server_name in seen:
                    self.problem(
                        (*where, "server_name"), f"{server_name!r} has an earlier route already"
                    )
                    server_name = None
                else:
                    seen.add(server_name)
            if pool is not None and pool not in pools:
                known = ", ".join(pools) or "none defined"
                self.problem((*where, "pool"), f"no pool named {pool!r}; pools: {known}")
                pool = None
            if server_name is not None and pool is not None:
                out.append(SniRoute(server_name, pool))
        return tuple(out)

    def networks(self, table: dict[str, Any], key: str, path: KeyPath) -> tuple[Network, ...]:
        """An array of addresses or networks (`"10.0.0.0/8"`, `"::1"`)."""
        entries = self.get(table, key, path, list, [])
        if key in table and isinstance(table[key], list) and not entries:
            self.problem((*path, key), "an empty list: list sources, or remove the key")
        out: list[Network] = []
        for i, text in enumerate(entries):
            try:
                if not isinstance(text, str):
                    raise TypeError
                out.append(ipaddress.ip_network(text, strict=False))
            except (ValueError, TypeError):
                self.problem((*path, key, i), f"{text!r} is not an address or network (CIDR)")
        return tuple(out)

    def choice(
        self, table: dict[str, Any], key: str, path: KeyPath, allowed: tuple[str, ...], default: str
    ) -> str:
        value: str = self.get(table, key, path, str, default)
        if value in LATER_PROTOCOLS and key == "protocol":
            self.problem(
                (*path, key), f"protocol {value!r} is not supported yet; use 'tcp' or 'http'"
            )
        elif value not in allowed:
            self.problem((*path, key), f"{value!r} is not one of: {', '.join(allowed)}")
        return value
