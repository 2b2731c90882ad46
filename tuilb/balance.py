"""Balancing algorithms: pure code behind one small protocol.

A balancer picks one backend from its pool's list for a new connection, or None when no
backend is usable (eligible and below its connection limit). `exclude` holds backends
already tried for this connection (connect retries). `key` is the client's address,
used only by source_ip_hash. Balancers keep their own small memory (rotation index,
smooth-WRR current weights) and nothing else; backend state lives in the model.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from tuilb.model import Backend

_NOTHING: frozenset[Backend] = frozenset()


class Balancer(Protocol):
    def pick(
        self, backends: Sequence[Backend], key: str = "", exclude: Collection[Backend] = _NOTHING
    ) -> Backend | None: ...


class RoundRobin:
    """Each usable backend in turn."""

    def __init__(self) -> None:
        self._next = 0

    def pick(
        self, backends: Sequence[Backend], key: str = "", exclude: Collection[Backend] = _NOTHING
    ) -> Backend | None:
        n = len(backends)
        for step in range(n):
            i = (self._next + step) % n
            b = backends[i]
            if b.usable and b not in exclude:
                self._next = i + 1
                return b
        return None


class WeightedRoundRobin:
    """Smooth weighted round robin as nginx does it: 5,1,1 gives a,a,b,a,c,a,a."""

    def __init__(self) -> None:
        self._current: dict[str, float] = {}

    def pick(
        self, backends: Sequence[Backend], key: str = "", exclude: Collection[Backend] = _NOTHING
    ) -> Backend | None:
        best: Backend | None = None
        best_current = 0.0
        total = 0.0
        current = self._current
        for b in backends:
            if not b.usable or b in exclude:
                continue
            weight = b.effective_weight
            value = current.get(b.target, 0) + weight
            current[b.target] = value
            total += weight
            if best is None or value > best_current:
                best, best_current = b, value
        if best is not None:
            current[best.target] = best_current - total
        return best


class LeastConnections:
    """Fewest active connections; ties go round in turn so a cold start spreads out."""

    weighted = False

    def __init__(self) -> None:
        self._start = 0

    def pick(
        self, backends: Sequence[Backend], key: str = "", exclude: Collection[Backend] = _NOTHING
    ) -> Backend | None:
        n = len(backends)
        best: Backend | None = None
        best_index = 0
        # Compare (active+1)/weight as cross products (no division).
        best_load, best_weight = 0, 1.0
        for step in range(n):
            i = (self._start + step) % n
            b = backends[i]
            if not b.usable or b in exclude:
                continue
            load, weight = b.active + 1, (b.effective_weight if self.weighted else 1.0)
            if best is None or load * best_weight < best_load * weight:
                best, best_index, best_load, best_weight = b, i, load, weight
        if best is not None:
            self._start = best_index + 1
        return best


class WeightedLeastConnections(LeastConnections):
    """Fewest (active+1)/weight. The +1 makes a heavier idle backend win over a lighter one."""

    weighted = True


class SourceIPHash:
    """Weighted rendezvous hashing on the client's IP address.

    Each backend scores -weight/ln(h) with h a uniform hash of (client, backend); the
    highest usable score wins. Removing, draining or filling one backend moves only the
    clients that were on it, and a backend's share is proportional to its weight.
    """

    def pick(
        self, backends: Sequence[Backend], key: str = "", exclude: Collection[Backend] = _NOTHING
    ) -> Backend | None:
        best: Backend | None = None
        best_score = -math.inf
        client = key.encode()
        for b in backends:
            if not b.usable or b in exclude:
                continue
            score = _score(client, b.target.encode(), b.effective_weight)
            if score > best_score:
                best, best_score = b, score
        return best


def _score(client: bytes, target: bytes, weight: float) -> float:
    digest = hashlib.blake2b(client + b"\0" + target, digest_size=8).digest()
    # Map to (0, 1) exclusive so the logarithm is finite and negative.
    unit = (int.from_bytes(digest, "big") + 1) / (2**64 + 2)
    return -weight / math.log(unit)


ALGORITHMS: dict[str, type[Balancer]] = {
    "round_robin": RoundRobin,
    "weighted_round_robin": WeightedRoundRobin,
    "least_connections": LeastConnections,
    "weighted_least_connections": WeightedLeastConnections,
    "source_ip_hash": SourceIPHash,
}


def make(algorithm: str) -> Balancer:
    return ALGORITHMS[algorithm]()
