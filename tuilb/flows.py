"""UDP flows, decided as pure code: which backend a datagram goes to, and when a flow ends.

A flow is keyed by the client's (ip, port). Its first datagram picks a backend through a
callback (the pool's balancer); later datagrams go to the same backend. A flow ends when
nothing moved either way for `idle` seconds (`expire()`); the table holds at most
`max_flows`, and a new flow beyond that is refused and counted. A flow whose backend is
disabled, down or ejected moves to another backend on its next datagram (counted); a
draining backend keeps its flows until they expire, since drain means "no new traffic".

No sockets and no trio here: time comes from the injected `clock`, and the I/O shell
(`proxy/udp.py`) acts on what `route()` and `expire()` return.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from tuilb.health import Health
from tuilb.model import AdminState

if TYPE_CHECKING:
    from tuilb.model import Backend

Key = tuple[str, int]  # the client's (ip, port)
# The balancer's pick for a new or moving flow: key (the client's ip), backends to avoid.
Pick = Callable[[str, Collection["Backend"]], "Backend | None"]


def stays(backend: Backend) -> bool:
    """May a flow already on `backend` stay there? Drain and weight 0 keep flows (no new
    traffic, the old finishes); disabled, down or ejected does not."""
    return (
        backend.admin is not AdminState.DISABLED
        and backend.health is not Health.DOWN
        and not backend.ejected
    )


class Flow:
    """One client's flow. `upstream` belongs to the I/O shell (its socket and task)."""

    __slots__ = ("backend", "datagrams", "key", "last", "upstream")

    def __init__(self, key: Key, backend: Backend, now: float) -> None:
        self.key = key
        self.backend = backend
        self.last = now  # last datagram either way
        self.datagrams = 0  # from the client
        self.upstream: object = None

    def __repr__(self) -> str:
        return f"<Flow {self.key[0]}:{self.key[1]} -> {self.backend.target}>"


class Outcome(StrEnum):
    NEW = "new"  # a new flow on `flow.backend`
    SAME = "same"  # an existing flow, same backend
    MOVED = "moved"  # the flow's backend may not keep it: now on `flow.backend`
    FULL = "full"  # no room for a new flow: refused (the datagram is dropped)
    NO_BACKEND = "no_backend"  # nothing usable; a flow that had to move is removed


@dataclass(frozen=True, slots=True)
class Routed:
    outcome: Outcome
    flow: Flow | None  # None for FULL, and for NO_BACKEND without a flow before
    previous: Backend | None = None  # MOVED and NO_BACKEND (of a removed flow): where it was


class FlowTable:
    def __init__(
        self, pick: Pick, *, idle: float, max_flows: int, clock: Callable[[], float]
    ) -> None:
        self.pick = pick  # replaceable: a reload renews the balancer
        self.idle = idle
        self.max_flows = max_flows
        self.clock = clock
        self._flows: OrderedDict[Key, Flow] = OrderedDict()  # least recently active first
        self.refused = 0  # new flows refused for max_flows
        self.moved = 0  # flows moved off a backend that may not keep them
        self.unrouted = 0  # datagrams dropped for want of a usable backend

    def __len__(self) -> int:
        return len(self._flows)

    def flows(self) -> list[Flow]:
        return list(self._flows.values())

    def get(self, key: Key) -> Flow | None:
        return self._flows.get(key)

    @property
    def full(self) -> bool:
        return len(self._flows) >= self.max_flows

    def route(self, key: Key) -> Routed:
        """A datagram from `key` arrived: where does it go?"""
        now = self.clock()
        flow = self._flows.get(key)
        if flow is not None:
            if stays(flow.backend):
                self._touch(flow, now)
                flow.datagrams += 1
                return Routed(Outcome.SAME, flow)
            previous = flow.backend
            backend = self.pick(key[0], (previous,))
            if backend is None:
                del self._flows[key]
                self.unrouted += 1
                return Routed(Outcome.NO_BACKEND, flow, previous)
            flow.backend = backend
            self.moved += 1
            self._touch(flow, now)
            flow.datagrams += 1
            return Routed(Outcome.MOVED, flow, previous)
        if self.full:
            self.refused += 1
            return Routed(Outcome.FULL, None)
        backend = self.pick(key[0], ())
        if backend is None:
            self.unrouted += 1
            return Routed(Outcome.NO_BACKEND, None)
        flow = self._flows[key] = Flow(key, backend, now)
        flow.datagrams = 1
        return Routed(Outcome.NEW, flow)

    def reply(self, flow: Flow) -> None:
        """A datagram came back for `flow`: it is active (if still in the table)."""
        if self._flows.get(flow.key) is flow:
            self._touch(flow, self.clock())

    def _touch(self, flow: Flow, now: float) -> None:
        flow.last = now
        self._flows.move_to_end(flow.key)

    def expire(self) -> list[Flow]:
        """Remove and return the flows idle for `idle` seconds or more."""
        now = self.clock()
        out: list[Flow] = []
        flows = self._flows
        while flows:
            key, flow = next(iter(flows.items()))
            if now - flow.last < self.idle:
                break
            del flows[key]
            out.append(flow)
        return out

    def next_expiry(self) -> float | None:
        """When the least recently active flow will expire (clock time), if any."""
        if not self._flows:
            return None
        return next(iter(self._flows.values())).last + self.idle

    def remove(self, flow: Flow) -> bool:
        """Take `flow` out (its socket failed, the listener stops); False if already out."""
        if self._flows.get(flow.key) is flow:
            del self._flows[flow.key]
            return True
        return False

    def clear(self) -> list[Flow]:
        out = list(self._flows.values())
        self._flows.clear()
        return out
