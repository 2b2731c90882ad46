"""Tests for headless logging (tuilb.log): StreamLog formats and RateLimit."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuilb import log
from tuilb.config import Address
from tuilb.log import FORMATS, RateLimit, StreamLog, null_log

T0 = 1_700_000_000.25  # 2023-11-14T22:13:20.250Z


def fixed(ts: float = T0) -> Callable[[], float]:
    return lambda: ts


def lines(buf: io.StringIO) -> list[str]:
    text = buf.getvalue()
    assert text.endswith("\n")
    return text[:-1].split("\n")


# ---------------------------------------------------------------------------------------
# JSON


def test_json_line_has_ts_level_event_and_fields() -> None:
    buf = io.StringIO()
    log = StreamLog("json", buf, clock=fixed())
    log(
        "state",
        target="app/a",
        from_="ready",
        to="draining",
        cause="operator: drain",
    )
    (line,) = lines(buf)
    record = json.loads(line)
    assert record == {
        "ts": record["ts"],
        "level": "info",
        "event": "state",
        "target": "app/a",
        "from": "ready",
        "to": "draining",
        "cause": "operator: drain",
    }
    assert "from_" not in record
    ts = datetime.fromisoformat(record["ts"])
    assert ts.utcoffset() == timedelta(0)
    assert ts == datetime(2023, 11, 14, 22, 13, 20, 250000, tzinfo=UTC)


def test_json_ts_is_iso_8601_utc() -> None:
    buf = io.StringIO()
    StreamLog("json", buf, clock=fixed(0.0))("start")
    assert json.loads(buf.getvalue())["ts"] in (
        "1970-01-01T00:00:00.000Z",
        "1970-01-01T00:00:00.000+00:00",
    )


def test_json_one_object_per_line() -> None:
    buf = io.StringIO()
    log = StreamLog("json", buf, clock=fixed())
    log("listening", listener="web", address="127.0.0.1:8080")
    log("connect_failed", level="warning", target="app/b", error="refused\nagain")
    log("stop")
    records = [json.loads(x) for x in lines(buf)]
    assert [r["event"] for r in records] == ["listening", "connect_failed", "stop"]
    assert [r["level"] for r in records] == ["info", "warning", "info"]
    assert records[0]["listener"] == "web"
    assert records[1]["error"] == "refused\nagain"


def test_json_drops_none_and_stringifies_other_values() -> None:
    buf = io.StringIO()
    StreamLog("json", buf, clock=fixed())(
        "listening", listener="web", target=None, address=Address("::1", 80), count=3
    )
    record = json.loads(buf.getvalue())
    assert "target" not in record
    assert record["address"] == "[::1]:80"
    assert record["count"] == 3


# ---------------------------------------------------------------------------------------
# Text


def test_text_line() -> None:
    buf = io.StringIO()
    log = StreamLog("text", buf, clock=fixed())
    log("state", target="app/a", from_="ready", to="draining", cause="operator: drain")
    (line,) = lines(buf)
    ts, level, event, *fields = line.split(None, 3)
    assert datetime.fromisoformat(ts) == datetime(2023, 11, 14, 22, 13, 20, 250000, tzinfo=UTC)
    assert level == "INFO"
    assert event == "state"
    assert fields == ['target=app/a from=ready to=draining cause="operator: drain"']


def test_text_levels_line_up() -> None:
    buf = io.StringIO()
    log = StreamLog("text", buf, clock=fixed())
    log("a", level="info")
    log("b", level="error")
    log("c", level="warn")
    first, second, third = lines(buf)
    # the event starts at the same column whatever the level
    assert first.index(" a") == second.index(" b") == third.index(" c")
    assert "ERROR" in second and "WARN" in third


@pytest.mark.parametrize(
    ("value", "rendered"),
    [
        ("plain", "k=plain"),
        ("two words", 'k="two words"'),
        ("", 'k=""'),
        ('say "hi"', 'k="say \\"hi\\""'),
        ("a=b", 'k="a=b"'),
        ("line\nbreak", 'k="line\\nbreak"'),
        (42, "k=42"),
        (1.5, "k=1.5"),
    ],
)
def test_text_values_are_quoted_when_needed(value: object, rendered: str) -> None:
    buf = io.StringIO()
    StreamLog("text", buf, clock=fixed())("e", k=value)
    (line,) = lines(buf)
    assert line.endswith(" e " + rendered)


def test_text_drops_none_fields() -> None:
    buf = io.StringIO()
    StreamLog("text", buf, clock=fixed())("e", a=None, b="x")
    assert lines(buf)[0].endswith(" e b=x")


# ---------------------------------------------------------------------------------------
# StreamLog edges


def test_unknown_format_is_refused() -> None:
    assert FORMATS == ("text", "json")
    with pytest.raises(ValueError):
        StreamLog("xml", io.StringIO())


def test_default_stream_is_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    log = StreamLog("json", clock=fixed())
    assert log.stream is sys.stderr
    log("start")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert json.loads(captured.err)["event"] == "start"


def test_closed_stream_never_raises() -> None:
    buf = io.StringIO()
    log = StreamLog("text", buf, clock=fixed())
    buf.close()
    log("after close", level="error", detail="ignored")  # must not raise


def test_clock_is_read_per_line() -> None:
    ticks = iter([0.0, 1.5])
    buf = io.StringIO()
    log = StreamLog("json", buf, clock=lambda: next(ticks))
    log("one")
    log("two")
    first, second = (datetime.fromisoformat(json.loads(x)["ts"]) for x in lines(buf))
    assert (second - first).total_seconds() == 1.5


def test_null_log_accepts_anything() -> None:
    assert null_log("state", "info", target="x", from_="a") is None


# ---------------------------------------------------------------------------------------
# RateLimit


def test_rate_limit_one_per_interval_with_suppressed_count() -> None:
    rl = RateLimit(interval=1.0)
    assert rl.allow("emfile", 10.0) == 0
    assert rl.allow("emfile", 10.1) is None
    assert rl.allow("emfile", 10.5) is None
    assert rl.allow("emfile", 10.99) is None
    assert rl.allow("emfile", 11.0) == 3  # one interval after the last allowed: 3 held back
    assert rl.allow("emfile", 11.2) is None
    assert rl.allow("emfile", 12.5) == 1
    assert rl.allow("emfile", 20.0) == 0  # nothing held since


def test_rate_limit_keys_are_independent() -> None:
    rl = RateLimit(interval=2.0)
    assert rl.allow("a", 0.0) == 0
    assert rl.allow("b", 0.5) == 0
    assert rl.allow("a", 1.0) is None
    assert rl.allow("b", 1.0) is None
    assert rl.allow("b", 1.5) is None
    assert rl.allow("a", 2.0) == 1
    assert rl.allow("b", 2.4) is None
    assert rl.allow("b", 2.5) == 3


def test_rate_limit_storm() -> None:
    """10 000 messages over 10 s: about one line a second, and every message accounted for."""
    rl = RateLimit(interval=1.0)
    n = 10_000
    allowed = 0
    reported = 0
    for i in range(n):
        result = rl.allow("connect_failed", i / 1000)
        if result is not None:
            allowed += 1
            reported += result
    assert 10 <= allowed <= 11
    final = rl.allow("connect_failed", 100.0)
    assert final is not None
    assert reported + final == n - allowed


def test_batch_log_writes_lines_in_batches_in_order() -> None:
    import io

    from tuilb.log import BatchLog, StreamLog

    class Counting(io.StringIO):
        writes = 0

        def write(self, text: str) -> int:
            Counting.writes += 1
            return super().write(text)

    out = Counting()
    batch = BatchLog(StreamLog("text", out, clock=lambda: 0.0), limit=3)
    batch("request", path="/a")
    batch("request", path="/b")
    assert out.getvalue() == ""  # nothing written yet
    batch("request", path="/c")  # the third fills the batch
    assert Counting.writes == 1
    batch("request", path="/d")
    batch.flush()
    lines = out.getvalue().splitlines()
    assert [line.rsplit("path=", 1)[1] for line in lines] == ["/a", "/b", "/c", "/d"]
    assert Counting.writes == 2
    batch.flush()  # nothing pending: no write
    assert Counting.writes == 2


@settings(max_examples=500, deadline=None)
@given(st.floats(min_value=0, max_value=4e9, allow_nan=False, allow_infinity=False))
def test_cached_timestamps_match_datetime(ts: float) -> None:
    """`_iso` caches the date and time of the current second (a line per request in the
    access log); it must still round like datetime, at second and millisecond edges too."""
    want = datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")
    assert log._iso(ts) == want.replace("+00:00", "Z")


@pytest.mark.parametrize(
    "ts", [0.0, 0.0005, 0.9995, 0.9999995, 1.0, 59.9999999, 1700000000.4995, 1700000000.9999996]
)
def test_cached_timestamps_at_the_edges(ts: float) -> None:
    want = datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")
    log._iso(ts - 1)  # a different second is cached first
    assert log._iso(ts) == want.replace("+00:00", "Z")
