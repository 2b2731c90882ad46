"""Latency percentiles over a sliding window, from an in-process histogram.

Buckets grow by 10% from 50 µs up to about a minute, so a percentile is within 10% of the
truth whatever the scale; the window is a ring of one-second slots, so a percentile
covers the last `WINDOW` seconds and old slots are dropped whole. Recording is an index
computation and one increment: cheap enough for every request. No clock of its own: the
caller passes `now` (trio's clock in the proxy, numbers in tests).
"""

from __future__ import annotations

import math

FLOOR = 50e-6  # seconds: everything faster shares the first bucket
GROWTH = 1.1
BUCKETS = 150  # FLOOR * 1.1**149 is about 70 s
WINDOW = 10  # seconds of history a percentile covers
_LOG_GROWTH = math.log(GROWTH)


def bucket_of(seconds: float) -> int:
    if seconds <= FLOOR:
        return 0
    return min(BUCKETS - 1, int(math.log(seconds / FLOOR) / _LOG_GROWTH) + 1)


def bucket_top(index: int) -> float:
    """The upper bound of bucket `index`: what a percentile in it reports."""
    return FLOOR * GROWTH**index


class LatencyWindow:
    __slots__ = ("_counts", "_slot", "_stamps")

    def __init__(self) -> None:
        self._counts = [[0] * BUCKETS for _ in range(WINDOW)]
        self._stamps = [-1] * WINDOW  # which second each slot holds
        self._slot = 0

    def record(self, seconds: float, now: float) -> None:
        second = int(now)
        slot = second % WINDOW
        if self._stamps[slot] != second:
            counts = self._counts[slot]
            for i in range(BUCKETS):
                counts[i] = 0
            self._stamps[slot] = second
        self._counts[slot][bucket_of(seconds)] += 1

    def merged(self, now: float) -> list[int]:
        """Counts per bucket over the window ending at `now`."""
        second = int(now)
        total = [0] * BUCKETS
        for slot, stamp in enumerate(self._stamps):
            if second - WINDOW < stamp <= second:
                for i, n in enumerate(self._counts[slot]):
                    if n:
                        total[i] += n
        return total

    def percentiles(
        self, now: float, wanted: tuple[float, ...] = (50, 90, 99)
    ) -> tuple[float, ...]:
        """The requested percentiles in seconds; empty when nothing was recorded."""
        counts = self.merged(now)
        total = sum(counts)
        if not total:
            return ()
        out: list[float] = []
        for p in wanted:
            rank = math.ceil(total * p / 100)
            seen = 0
            for i, n in enumerate(counts):
                seen += n
                if seen >= rank:
                    out.append(bucket_top(i))
                    break
        return tuple(out)
