"""Rates and short histories derived from successive snapshots; pure, clock passed in.

The dashboard feeds every snapshot it pulls into a `RateTracker`; the tracker keeps, per
backend, the rates over the last interval and a bounded history for sparklines. Nothing
here touches the engine: it only reads snapshots.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from tuilb.model import Snapshot


@dataclass(frozen=True, slots=True)
class Rates:
    connections: float = 0.0  # new connections per second
    bytes_in: float = 0.0  # client -> backend, bytes per second
    bytes_out: float = 0.0  # backend -> client, bytes per second
    failures: float = 0.0  # failed connects per second
    requests: float = 0.0  # HTTP requests answered per second


@dataclass(frozen=True, slots=True)
class _Sample:
    total: int
    bytes_in: int
    bytes_out: int
    failed: int
    requests: int


class RateTracker:
    def __init__(self, history: int = 60) -> None:
        self.history = history
        self._last: dict[str, _Sample] = {}
        self._last_ts: float | None = None
        self.rates: dict[str, Rates] = {}
        self.traffic: dict[str, deque[float]] = {}  # bytes/s both ways, oldest first
        self.connection_rate: dict[str, deque[float]] = {}
        self.latency: dict[str, deque[float]] = {}  # HTTP: p99 in ms, oldest first
        self.listener_rates: dict[str, tuple[float, float]] = {}  # HTTP: (req/s, errors/s)
        self._last_listeners: dict[str, tuple[int, int]] = {}
        self.refused_total = 0
        self.totals = Rates()

    def feed(self, snapshot: Snapshot) -> None:
        """Take a new snapshot; rates cover the time since the previous one."""
        elapsed = None if self._last_ts is None else snapshot.ts - self._last_ts
        totals = [0.0, 0.0, 0.0, 0.0, 0.0]
        for pool in snapshot.pools:
            for b in pool.backends:
                target = f"{pool.name}/{b.name}"
                now = _Sample(
                    b.total_connections, b.bytes_in, b.bytes_out, b.failed_connects, b.requests
                )
                before = self._last.get(target)
                self._last[target] = now
                if before is None or not elapsed or elapsed <= 0:
                    continue
                rates = Rates(
                    max(0, now.total - before.total) / elapsed,
                    max(0, now.bytes_in - before.bytes_in) / elapsed,
                    max(0, now.bytes_out - before.bytes_out) / elapsed,
                    max(0, now.failed - before.failed) / elapsed,
                    max(0, now.requests - before.requests) / elapsed,
                )
                self.rates[target] = rates
                if b.latency:
                    self._push(self.latency, target, b.latency[2] * 1000)
                self._push(self.traffic, target, rates.bytes_in + rates.bytes_out)
                self._push(self.connection_rate, target, rates.connections)
                totals[0] += rates.connections
                totals[1] += rates.bytes_in
                totals[2] += rates.bytes_out
                totals[3] += rates.failures
                totals[4] += rates.requests
        for listener in snapshot.listeners:
            counts = (listener.requests, listener.errors)
            seen = self._last_listeners.get(listener.name)
            self._last_listeners[listener.name] = counts
            if seen is not None and elapsed and elapsed > 0:
                self.listener_rates[listener.name] = (
                    max(0, counts[0] - seen[0]) / elapsed,
                    max(0, counts[1] - seen[1]) / elapsed,
                )
        if elapsed and elapsed > 0:
            self.totals = Rates(*totals)
        self._last_ts = snapshot.ts

    def _push(self, series: dict[str, deque[float]], target: str, value: float) -> None:
        line = series.get(target)
        if line is None:
            line = series[target] = deque(maxlen=self.history)
        line.append(value)


def human_bytes(n: float) -> str:
    """1536 -> '1.5K'; binary units, short enough for a table cell."""
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}P"  # unreachable; keeps type checkers content
