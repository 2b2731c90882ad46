"""The sliding-window latency histogram (tuilb.latency)."""

from __future__ import annotations

import pytest

from tuilb.latency import BUCKETS, FLOOR, GROWTH, WINDOW, LatencyWindow, bucket_of, bucket_top


@pytest.mark.parametrize(
    "seconds", [0.0, FLOOR, FLOOR * 1.05, 0.001, 0.0123, 0.25, 1.0, 30.0, 69.0]
)
def test_a_value_lies_within_its_bucket(seconds: float) -> None:
    index = bucket_of(seconds)
    assert seconds <= bucket_top(index) * 1.000001
    if index > 0:
        assert seconds > bucket_top(index - 1) * 0.999999
        assert bucket_top(index) / bucket_top(index - 1) == pytest.approx(GROWTH)


def test_huge_values_share_the_last_bucket() -> None:
    assert bucket_of(10_000.0) == BUCKETS - 1


def test_percentiles_are_within_ten_percent() -> None:
    window = LatencyWindow()
    values = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    for v in values:
        window.record(v, now=50.0)
    p50, p90, p99 = window.percentiles(now=50.5)
    for got, want in ((p50, 0.050), (p90, 0.090), (p99, 0.099)):
        assert want <= got <= want * GROWTH


def test_nothing_recorded_gives_no_percentiles() -> None:
    assert LatencyWindow().percentiles(now=3.0) == ()


def test_the_window_forgets_old_seconds() -> None:
    window = LatencyWindow()
    window.record(1.0, now=100.0)  # a slow request long ago
    for second in range(101, 101 + WINDOW):
        window.record(0.001, now=float(second))
    _, _, p99 = window.percentiles(now=100.0 + WINDOW)
    assert p99 < 0.0012  # the slow one has left the window
    # and a slot reused for a new second starts from zero
    assert sum(window.merged(now=100.0 + WINDOW)) == WINDOW
