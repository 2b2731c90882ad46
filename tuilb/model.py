"""The one source of truth for pools and backends.

Everything that changes a backend's state goes through the synchronous methods here:
proxy tasks (connection start/end, bytes, failed connects), operator commands, and later
health checks. In trio a synchronous call is never interleaved with another task, so no
locks are needed. Readers (dashboard, admin API, tests) take an immutable `snapshot()`.

Invariants:
- operator intent (`AdminState`) is kept apart from observed health (`Health`);
  eligibility is derived from both plus the weight, never stored;
- every change of state or weight is recorded in the bounded event ring with its cause;
- `active` never goes below zero, and a draining backend that reaches zero active
  connections records that once ("drained").
"""

from __future__ import annotations

import socket
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from tuilb import health as hc
from tuilb.config import Address, BackendConfig, PoolConfig
from tuilb.health import CheckResult, Health, Hysteresis, Outlier, Verdict
from tuilb.latency import LatencyWindow

__all__ = ["AdminState", "Backend", "CheckResult", "Event", "Health", "Model", "Snapshot"]

CHECK_HISTORY = 20  # check results kept per backend for the detail view
# Upper bounds (seconds) of the cumulative latency histogram /metrics exposes.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class AdminState(StrEnum):
    READY = "ready"
    DRAINING = "draining"
    DISABLED = "disabled"


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    ts: float  # wall clock, seconds since the epoch
    target: str  # "pool/backend" or "pool"
    kind: str  # "state", "weight", "health", "drained", ...
    old: str
    new: str
    cause: str


class Backend:
    """A backend's live state. Mutated only by `Model` methods (and the pump's byte counters)."""

    __slots__ = (
        "active",
        "address",
        "admin",
        "bytes_in",
        "bytes_out",
        "checks",
        "checks_failed",
        "checks_ok",
        "config",
        "ejected",
        "ejections",
        "failed_connects",
        "health",
        "hysteresis",
        "last_error",
        "latency",
        "latency_buckets",
        "latency_sum",
        "max_connections",
        "name",
        "outlier",
        "pool",
        "ramp",
        "ramp_since",
        "requests",
        "resets",
        "responses",
        "retired",
        "sockaddr",
        "target",
        "total",
        "weight",
    )

    def __init__(self, pool: str, config: BackendConfig, rise: int = 2, fall: int = 3) -> None:
        self.pool = pool
        self.name = config.name
        self.target = f"{pool}/{config.name}"
        self.config = config
        self.address: Address = config.address
        self.sockaddr = _sockaddr(config.address)  # None: a host name, resolved per connect
        self.weight = config.weight
        self.max_connections = config.max_connections
        self.admin = AdminState.READY
        self.health = Health.UNKNOWN
        self.active = 0
        self.total = 0
        self.failed_connects = 0
        self.bytes_in = 0  # from clients toward this backend
        self.bytes_out = 0  # from this backend back to clients
        self.last_error = ""
        self.resets = 0  # connections the backend reset (or closed under a write)
        self.requests = 0  # HTTP: responses received, by class below (1xx..5xx)
        self.responses = [0, 0, 0, 0, 0]
        self.latency = LatencyWindow()  # HTTP: request sent -> response head received
        # ...and cumulative, for Prometheus: counts per LATENCY_BUCKETS bound (+Inf last).
        self.latency_buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.checks_ok = 0
        self.checks_failed = 0
        # Health checks: the hysteresis counters and the recent results.
        self.hysteresis = Hysteresis(rise, fall)
        self.checks: deque[CheckResult] = deque(maxlen=CHECK_HISTORY)
        # Passive health: `ejected` mirrors `outlier.ejected` for the hot path.
        self.outlier = Outlier()
        self.ejected = False
        self.ejections = 0
        self.retired = False  # removed by a reload: draining, dropped once idle
        # Slow start: share of the weight in use (1.0 when not ramping) and since when.
        self.ramp = 1.0
        self.ramp_since = 0.0

    @property
    def effective_weight(self) -> float:
        """The weight the balancer uses: lower than `weight` during slow start."""
        return self.weight if self.ramp >= 1.0 else self.weight * self.ramp

    @property
    def eligible(self) -> bool:
        """May receive new traffic (capacity aside)."""
        return (
            self.admin is AdminState.READY
            and self.health is not Health.DOWN
            and self.weight > 0
            and not self.ejected
        )

    @property
    def has_capacity(self) -> bool:
        return self.max_connections == 0 or self.active < self.max_connections

    @property
    def usable(self) -> bool:
        return self.eligible and self.has_capacity

    def __repr__(self) -> str:
        return f"<Backend {self.target} {self.admin}/{self.health} w={self.weight} a={self.active}>"


def _sockaddr(address: Address) -> tuple[int, tuple[str, int]] | None:
    if not address.is_literal:
        return None
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    return family, (address.host, address.port)


class Pool:
    __slots__ = ("algorithm", "backends", "by_name", "config", "name", "refused")

    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        self.name = config.name
        self.algorithm = config.algorithm
        rise, fall = config.health.rise, config.health.fall
        self.backends = [Backend(config.name, b, rise, fall) for b in config.backends]
        self.by_name = {b.name: b for b in self.backends}
        self.refused = 0  # connections refused because no backend was usable


@dataclass(frozen=True, slots=True)
class BackendSnapshot:
    pool: str
    name: str
    address: str
    state: AdminState
    health: Health
    weight: int
    effective_weight: float
    config_weight: int
    max_connections: int
    active_connections: int
    total_connections: int
    failed_connects: int
    bytes_in: int
    bytes_out: int
    eligible: bool
    drained: bool  # draining and no active connection left
    last_error: str
    resets: int = 0
    check: str = "none"  # the pool's check type: tcp | http | none
    health_progress: str = ""  # "3/3": up and 3 failures from down; "1/2": down, 1 of 2 rises
    checks: tuple[CheckResult, ...] = ()  # recent results, oldest first
    ejected: bool = False
    eject_left: float = 0.0  # seconds of ejection left
    ejections: int = 0
    slow_start: float = 1.0  # share of the weight in use; below 1 while ramping
    requests: int = 0  # HTTP responses received
    responses: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)  # 1xx, 2xx, 3xx, 4xx, 5xx
    latency: tuple[float, ...] = ()  # HTTP: p50, p90, p99 seconds over the last 10 s

    @property
    def last_check(self) -> CheckResult | None:
        return self.checks[-1] if self.checks else None


@dataclass(slots=True)
class ListenerStats:
    name: str
    requests: int = 0  # responses sent to clients
    errors: int = 0  # 5xx sent, and 4xx tuilb made up (bad requests)
    route_hits: dict[int, int] = field(default_factory=dict)  # route index -> requests
    default_hits: int = 0  # requests no route matched (the listener's pool, or a 404)
    proxy_rejected: int = 0  # accept_proxy: connections closed for their PROXY header
    flows: int = 0  # UDP: flows now
    flows_refused: int = 0  # UDP: new flows refused for max_flows
    flows_moved: int = 0  # UDP: flows moved off a backend that could not keep them
    unrouted: int = 0  # UDP: datagrams dropped for want of a usable backend
    sni_rejected: int = 0  # sni_routes: closed for their ClientHello (late, bad, no route)


@dataclass(frozen=True, slots=True)
class ListenerSnapshot:
    name: str
    requests: int
    errors: int
    route_hits: tuple[tuple[int, int], ...] = ()  # (route index, requests), by index
    default_hits: int = 0
    proxy_rejected: int = 0
    sni_rejected: int = 0
    flows: int = 0
    flows_refused: int = 0
    flows_moved: int = 0
    unrouted: int = 0


@dataclass(frozen=True, slots=True)
class PoolSnapshot:
    name: str
    algorithm: str
    refused: int
    backends: tuple[BackendSnapshot, ...]


@dataclass(frozen=True, slots=True)
class Snapshot:
    ts: float
    pools: tuple[PoolSnapshot, ...]
    listeners: tuple[ListenerSnapshot, ...] = ()

    def backend(self, target: str) -> BackendSnapshot:
        pool, _, name = target.partition("/")
        for p in self.pools:
            for b in p.backends:
                if p.name == pool and b.name == name:
                    return b
        raise KeyError(target)


class Model:
    def __init__(
        self,
        pools: Iterable[PoolConfig],
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        event_capacity: int = 1000,
    ) -> None:
        self.clock = clock  # wall clock, for event times
        self.monotonic = monotonic  # for ejections and slow start (the engine: trio's clock)
        self.pools: dict[str, Pool] = {p.name: Pool(p) for p in pools}
        self.events: deque[Event] = deque(maxlen=event_capacity)
        self.listeners: dict[str, ListenerStats] = {}  # HTTP listeners, as they serve
        self._retired_pools: set[str] = set()  # removed by a reload, dropped once empty
        self._next_event = 1
        self._subscribers: list[Callable[[Event], None]] = []

    # -- lookup -------------------------------------------------------------------------
    def backend(self, target: str) -> Backend:
        """`"pool/backend"` -> Backend; KeyError naming what is missing."""
        pool_name, sep, name = target.partition("/")
        pool = self.pools.get(pool_name)
        if pool is None:
            raise KeyError(f"no pool named {pool_name!r}")
        if not sep or name not in pool.by_name:
            raise KeyError(f"no backend named {name!r} in pool {pool_name!r}")
        return pool.by_name[name]

    def subscribe(self, callback: Callable[[Event], None]) -> None:
        """Call `callback` synchronously with every new event (logging, wake-ups)."""
        self._subscribers.append(callback)

    def record(self, target: str, kind: str, old: str, new: str, cause: str) -> Event:
        event = Event(self._next_event, self.clock(), target, kind, old, new, cause)
        self._next_event += 1
        self.events.append(event)
        for callback in self._subscribers:
            callback(event)
        return event

    def events_since(self, last_id: int = 0) -> list[Event]:
        return [e for e in self.events if e.id > last_id]

    # -- operator intent ------------------------------------------------------------------
    def set_admin(self, backend: Backend, state: AdminState, cause: str) -> bool:
        """Returns False when the backend already was in `state` (nothing recorded)."""
        if backend.admin is state:
            return False
        old = backend.admin
        backend.admin = state
        self.record(backend.target, "state", old, state, cause)
        if state is AdminState.DRAINING and backend.active == 0:
            self.record(backend.target, "drained", "draining", "drained", "no active connections")
        if old is AdminState.DISABLED and state is AdminState.READY:
            self._slow_start(backend, "back from disabled")
        return True

    def set_weight(self, backend: Backend, weight: int, cause: str) -> bool:
        if backend.weight == weight:
            return False
        old = backend.weight
        backend.weight = weight
        self.record(backend.target, "weight", str(old), str(weight), cause)
        return True

    def set_health(self, backend: Backend, health: Health, cause: str) -> bool:
        if backend.health is health:
            return False
        old = backend.health
        backend.health = health
        tracker = backend.hysteresis
        if tracker.health is not health:  # set from outside the checks: count afresh
            tracker.health, tracker.failures, tracker.successes = health, 0, 0
        self.record(backend.target, "health", old, health, cause)
        if old is Health.DOWN and health is Health.UP:
            self._slow_start(backend, "back up")
        return True

    # -- health checks, passive health, slow start ------------------------------------------
    def check_result(self, backend: Backend, result: CheckResult) -> None:
        """Record one active check's result and apply rise/fall."""
        backend.checks.append(CheckResult(result.ok, result.reason, result.duration, self.clock()))
        if result.ok:
            backend.checks_ok += 1
        else:
            backend.checks_failed += 1
        before = backend.hysteresis.health
        new = backend.hysteresis.observe(result.ok)
        if new is None:
            return
        config = self.pools[backend.pool].config.health
        if new is Health.DOWN:
            cause = hc.down_cause(before, config.fall, result.reason)
        else:
            cause = hc.up_cause(before, config.rise, result.reason)
        self.set_health(backend, new, cause)

    def connection_ok(self, backend: Backend) -> None:
        """A connection to `backend` ended without a fault of the backend's: its run of
        traffic failures is over. Counted when a connection ends, not when it connects,
        so a backend that accepts and then resets every connection still adds up."""
        if backend.outlier.failures:
            hc.on_success(backend.outlier)

    def response(self, backend: Backend, status: int, seconds: float) -> None:
        """HTTP: `backend` answered a request with `status` after `seconds`."""
        backend.requests += 1
        if 100 <= status < 600:
            backend.responses[status // 100 - 1] += 1
        backend.latency.record(seconds, self.monotonic())
        backend.latency_sum += seconds
        backend.latency_buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1

    def _listener(self, name: str) -> ListenerStats:
        stats = self.listeners.get(name)
        if stats is None:
            stats = self.listeners[name] = ListenerStats(name)
        return stats

    def proxy_rejected(self, listener: str) -> None:
        """A connection to `listener` was closed for its PROXY header (or its source)."""
        self._listener(listener).proxy_rejected += 1

    def udp_flows(self, listener: str, flows: int, refused: int, moved: int, unrouted: int) -> None:
        """UDP: the listener's flow table counters, mirrored when they change."""
        stats = self._listener(listener)
        stats.flows, stats.flows_refused = flows, refused
        stats.flows_moved, stats.unrouted = moved, unrouted

    def sni_rejected(self, listener: str) -> None:
        """A connection to `listener` was closed for its TLS ClientHello (or no route)."""
        self._listener(listener).sni_rejected += 1

    def route_hit(self, listener: str, route: int | None) -> None:
        """HTTP: a request of `listener` matched route number `route` (None: no route)."""
        stats = self._listener(listener)
        if route is None:
            stats.default_hits += 1
        else:
            stats.route_hits[route] = stats.route_hits.get(route, 0) + 1

    def listener_response(self, listener: str, status: int, ours: bool) -> None:
        """HTTP: a response went to a client of `listener`; `ours` when tuilb made it up
        (an error of its own) rather than passing on a backend's."""
        stats = self._listener(listener)
        stats.requests += 1
        if status >= 500 or (ours and status >= 400):
            stats.errors += 1

    def backend_reset(self, backend: Backend) -> None:
        backend.resets += 1
        self._traffic_failure(backend, "reset by backend")

    def _traffic_failure(self, backend: Backend, reason: str) -> None:
        pool = self.pools[backend.pool]
        passive = pool.config.passive
        if passive is None:
            return
        others = any(b is not backend and b.eligible for b in pool.backends)
        now = self.monotonic()
        verdict, duration = hc.on_failure(backend.outlier, passive, now, others)
        n = passive.consecutive_failures
        if verdict is Verdict.EJECT:
            backend.ejected = True
            backend.ejections += 1
            cause = f"passive: {n} failures in a row (last: {reason}); out for {duration:g}s"
            self.record(backend.target, "eject", "in", "ejected", cause)
        elif verdict is Verdict.SPARE:
            cause = (
                f"passive: {n} failures in a row (last: {reason}), but it is the last "
                f"eligible backend of pool {pool.name!r}: not ejected"
            )
            self.record(backend.target, "eject", "in", "in", cause)

    def tick(self, now: float | None = None) -> None:
        """Time-driven changes: ejections that end, slow-start ramps that move."""
        now = self.monotonic() if now is None else now
        for pool in self.pools.values():
            for b in pool.backends:
                if b.ejected and hc.ejection_over(b.outlier, now):
                    b.ejected = False
                    self.record(b.target, "eject", "ejected", "in", "passive: ejection time over")
                    self._slow_start(b, "back from ejection", now)
                if b.ramp < 1.0:
                    b.ramp = hc.ramp(now - b.ramp_since, pool.config.slow_start)
                    if b.ramp >= 1.0:
                        self.record(b.target, "slow_start", "ramping", "full", "slow start over")

    def _slow_start(self, backend: Backend, why: str, now: float | None = None) -> None:
        duration = self.pools[backend.pool].config.slow_start
        if duration <= 0 or backend.health is Health.DOWN:
            return  # a down backend ramps when it comes back up, not before
        backend.ramp = hc.SLOW_START_FLOOR
        backend.ramp_since = self.monotonic() if now is None else now
        cause = f"slow start ({why}): ramping to full weight over {duration:g}s"
        self.record(backend.target, "slow_start", "full", "ramping", cause)

    # -- traffic (hot path: keep these tiny) ----------------------------------------------
    def connection_started(self, backend: Backend) -> None:
        """A connection was assigned to `backend`: called before the connect, so that
        the slot counts against `max_connections` at once and a drain waits for it."""
        backend.active += 1
        backend.total += 1

    def connection_ended(self, backend: Backend) -> None:
        if backend.active > 0:
            backend.active -= 1
        if backend.active == 0 and backend.admin is AdminState.DRAINING:
            self.record(backend.target, "drained", "draining", "drained", "last connection closed")
            if backend.retired:
                self._drop(backend)

    # -- reload ---------------------------------------------------------------------------
    def reconfigure(self, pools: Iterable[PoolConfig]) -> None:
        """Take a reloaded configuration's pools: pools and backends added, changed in place,
        or retired (draining; dropped once idle). A weight an operator changed is kept."""
        new = {p.name: p for p in pools}
        for name, pool in list(self.pools.items()):
            if name not in new:
                self._retired_pools.add(name)
                for backend in list(pool.backends):
                    self._retire(backend)
        for name, config in new.items():
            existing = self.pools.get(name)
            if existing is None:
                added = self.pools[name] = Pool(config)
                for backend in added.backends:
                    self.record(backend.target, "state", "-", "ready", "reload: added")
                continue
            self._retired_pools.discard(name)
            self._reconfigure_pool(existing, config)

    def _reconfigure_pool(self, pool: Pool, config: PoolConfig) -> None:
        pool.config, pool.algorithm = config, config.algorithm
        rise, fall = config.health.rise, config.health.fall
        wanted = {b.name: b for b in config.backends}
        kept: list[Backend] = []
        for b_config in config.backends:
            backend = pool.by_name.get(b_config.name)
            if backend is None or backend.retired:
                backend = Backend(pool.name, b_config, rise, fall)
                self.record(backend.target, "state", "-", "ready", "reload: added")
            else:
                self._update_backend(backend, b_config)
            backend.hysteresis.rise, backend.hysteresis.fall = rise, fall
            kept.append(backend)
        leaving = [b for b in pool.backends if b.name not in wanted or b.retired]
        pool.backends = kept + [b for b in leaving if b not in kept]
        pool.by_name = {b.name: b for b in kept}
        for backend in leaving:
            self._retire(backend)

    def _update_backend(self, backend: Backend, config: BackendConfig) -> None:
        old = backend.config
        backend.config = config
        backend.address = config.address
        backend.sockaddr = _sockaddr(config.address)
        backend.max_connections = config.max_connections
        if backend.weight == old.weight:  # not an operator's choice: follow the file
            self.set_weight(backend, config.weight, "reload: weight")

    def _retire(self, backend: Backend) -> None:
        if backend.retired:
            return
        backend.retired = True
        self.set_admin(backend, AdminState.DRAINING, "reload: removed from the configuration")
        if backend.active == 0:
            self._drop(backend)

    def _drop(self, backend: Backend) -> None:
        pool = self.pools.get(backend.pool)
        if pool is None or backend not in pool.backends:
            return
        pool.backends.remove(backend)
        if pool.by_name.get(backend.name) is backend:
            del pool.by_name[backend.name]
        self.record(backend.target, "state", "draining", "removed", "reload: gone once idle")
        if not pool.backends and pool.name in self._retired_pools:
            del self.pools[pool.name]
            self._retired_pools.discard(pool.name)

    def connection_aborted(self, backend: Backend, reason: str | None = None) -> None:
        """A started connection never got connected: undo the start. With a `reason` the
        backend failed the connect, and that is counted on it; without one the cause was
        ours (cancelled, out of descriptors)."""
        backend.total -= 1
        if reason is not None:
            self.connect_failed(backend, reason)
        self.connection_ended(backend)

    def connect_failed(self, backend: Backend, reason: str) -> None:
        backend.failed_connects += 1
        backend.last_error = reason
        self._traffic_failure(backend, reason)

    def refused(self, pool: Pool) -> None:
        pool.refused += 1

    # -- readers --------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        now = self.monotonic()
        return Snapshot(
            self.clock(),
            tuple(
                PoolSnapshot(
                    p.name,
                    p.algorithm,
                    p.refused,
                    tuple(_backend_snapshot(b, p.config.health.type, now) for b in p.backends),
                )
                for p in self.pools.values()
            ),
            tuple(
                ListenerSnapshot(
                    x.name,
                    x.requests,
                    x.errors,
                    tuple(sorted(x.route_hits.items())),
                    x.default_hits,
                    x.proxy_rejected,
                    x.sni_rejected,
                    x.flows,
                    x.flows_refused,
                    x.flows_moved,
                    x.unrouted,
                )
                for x in self.listeners.values()
            ),
        )


def _backend_snapshot(b: Backend, check: str, now: float) -> BackendSnapshot:
    return BackendSnapshot(
        pool=b.pool,
        name=b.name,
        address=str(b.address),
        state=b.admin,
        health=b.health,
        weight=b.weight,
        effective_weight=b.effective_weight,
        config_weight=b.config.weight,
        max_connections=b.max_connections,
        active_connections=b.active,
        total_connections=b.total,
        failed_connects=b.failed_connects,
        bytes_in=b.bytes_in,
        bytes_out=b.bytes_out,
        eligible=b.eligible,
        drained=b.admin is AdminState.DRAINING and b.active == 0,
        last_error=b.last_error,
        resets=b.resets,
        check=check,
        health_progress=b.hysteresis.progress() if check != "none" else "",
        checks=tuple(b.checks),
        ejected=b.ejected,
        eject_left=max(0.0, b.outlier.ejected_until - now) if b.ejected else 0.0,
        ejections=b.ejections,
        slow_start=b.ramp,
        requests=b.requests,
        responses=(b.responses[0], b.responses[1], b.responses[2], b.responses[3], b.responses[4]),
        latency=b.latency.percentiles(now) if b.requests else (),
    )
