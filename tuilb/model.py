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
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum

from tuilb.config import Address, BackendConfig, PoolConfig


class AdminState(StrEnum):
    READY = "ready"
    DRAINING = "draining"
    DISABLED = "disabled"


class Health(StrEnum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


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
        "config",
        "failed_connects",
        "health",
        "last_error",
        "max_connections",
        "name",
        "pool",
        "sockaddr",
        "target",
        "total",
        "weight",
    )

    def __init__(self, pool: str, config: BackendConfig) -> None:
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

    @property
    def effective_weight(self) -> int:
        return self.weight

    @property
    def eligible(self) -> bool:
        """May receive new traffic (capacity aside)."""
        return self.admin is AdminState.READY and self.health is not Health.DOWN and self.weight > 0

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
    __slots__ = ("algorithm", "backends", "by_name", "name", "refused")

    def __init__(self, config: PoolConfig) -> None:
        self.name = config.name
        self.algorithm = config.algorithm
        self.backends = [Backend(config.name, b) for b in config.backends]
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
    effective_weight: int
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
        event_capacity: int = 1000,
    ) -> None:
        self.clock = clock
        self.pools: dict[str, Pool] = {p.name: Pool(p) for p in pools}
        self.events: deque[Event] = deque(maxlen=event_capacity)
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
        self.record(backend.target, "health", old, health, cause)
        return True

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

    def refused(self, pool: Pool) -> None:
        pool.refused += 1

    # -- readers --------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        return Snapshot(
            self.clock(),
            tuple(
                PoolSnapshot(
                    p.name, p.algorithm, p.refused, tuple(_backend_snapshot(b) for b in p.backends)
                )
                for p in self.pools.values()
            ),
        )


def _backend_snapshot(b: Backend) -> BackendSnapshot:
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
    )
