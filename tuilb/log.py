"""Headless logging: one line per event on stderr, as text or as JSON.

The engine calls a `Log` with an event name and fields; this module decides how a line
looks. Noisy events (connect failures, descriptor exhaustion) go through `RateLimit`
so a storm becomes one line a second with a count of what was suppressed.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TextIO

FORMATS = ("text", "json")


class Log(Protocol):
    def __call__(self, event: str, level: str = "info", **fields: Any) -> None: ...


def null_log(event: str, level: str = "info", **fields: Any) -> None:
    """A Log that drops everything (tests, embedding)."""


_second: tuple[int, str] = (-1, "")  # the last whole second formatted, and its text


def _iso(ts: float) -> str:
    # An access log formats a line per request: the date and time change once a second.
    # Rounded to the microsecond first, as datetime.fromtimestamp does, then cut to ms.
    global _second
    fraction, integral = math.modf(ts)
    whole, micros = int(integral), round(fraction * 1_000_000)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    if whole != _second[0]:
        _second = (whole, datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{_second[1]}.{micros // 1000:03d}Z"


def _text_value(value: Any) -> str:
    if type(value) is int:  # counts, statuses, ports: nothing to quote
        return str(value)
    text = str(value)
    if not text or " " in text or '"' in text or "=" in text or not text.isprintable():
        return json.dumps(text)
    return text


class StreamLog:
    def __init__(
        self, fmt: str = "text", stream: TextIO | None = None, clock: Any = time.time
    ) -> None:
        if fmt not in FORMATS:
            raise ValueError(fmt)
        self.fmt = fmt
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock

    def __call__(self, event: str, level: str = "info", **fields: Any) -> None:
        self.write(self.format(event, level, **fields) + "\n")

    def format(self, event: str, level: str = "info", **fields: Any) -> str:
        # "from" is a keyword in Python; callers pass from_.
        record = {k.rstrip("_"): v for k, v in fields.items() if v is not None}
        ts = _iso(self.clock())
        if self.fmt == "json":
            return json.dumps({"ts": ts, "level": level, "event": event, **record}, default=str)
        parts = [ts, level.upper().ljust(5), event]
        parts += [f"{k}={_text_value(v)}" for k, v in record.items()]
        return " ".join(parts)

    def write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # stderr closed or full: logging must never take the engine down


class BatchLog:
    """Lines formatted at once but written in batches (`flush()`): the access log, where
    one write per request measured about a seventh of a proxied request's CPU."""

    def __init__(self, log: StreamLog, limit: int = 256) -> None:
        self.log = log
        self.limit = limit
        self._lines: list[str] = []

    def __call__(self, event: str, level: str = "info", **fields: Any) -> None:
        self._lines.append(self.log.format(event, level, **fields))
        if len(self._lines) >= self.limit:
            self.flush()

    def flush(self) -> None:
        if self._lines:
            text = "\n".join(self._lines) + "\n"
            self._lines.clear()
            self.log.write(text)


@dataclass(frozen=True, slots=True)
class Record:
    id: int
    ts: float
    level: str
    event: str
    fields: dict[str, Any]


class MemoryLog:
    """A Log that keeps the last `capacity` records for the dashboard to pull."""

    def __init__(self, capacity: int = 500, clock: Any = time.time) -> None:
        self.records: deque[Record] = deque(maxlen=capacity)
        self.clock = clock
        self._next = 1

    def __call__(self, event: str, level: str = "info", **fields: Any) -> None:
        record = {k.rstrip("_"): v for k, v in fields.items() if v is not None}
        self.records.append(Record(self._next, self.clock(), level, event, record))
        self._next += 1

    def since(self, last_id: int) -> list[Record]:
        return [r for r in self.records if r.id > last_id]


class RateLimit:
    """At most one message per key per `interval` seconds; counts what it held back."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, key: str, now: float) -> int | None:
        """None: suppress. Otherwise the number suppressed since the last allowed one."""
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)
