"""Health decisions as pure code: check hysteresis, check intervals, passive ejection and
the slow-start ramp. No I/O and no clock of their own: callers pass `now` (trio's clock
in the engine, plain numbers in the tests). The model applies the decisions; the probes
that produce check results live in checks.py."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from tuilb.healthconf import HealthConfig, PassiveConfig

SLOW_START_FLOOR = 0.1  # a returning backend starts at a tenth of its weight


class Health(StrEnum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class CheckResult:
    ok: bool
    reason: str  # "HTTP 200", "connect refused", "timeout", "body mismatch", ...
    duration: float  # seconds the check took
    ts: float = 0.0  # wall clock, set by the model when it records the result


@dataclass(slots=True)
class Hysteresis:
    """Rise/fall counting as HAProxy does it.

    An up backend goes down after `fall` consecutive failures (a success in between
    restores it fully); a down backend comes up after `rise` consecutive successes. An
    unknown backend (no result yet) takes its state from the first result.
    """

    rise: int
    fall: int
    health: Health = Health.UNKNOWN
    failures: int = 0  # consecutive, while up
    successes: int = 0  # consecutive, while down

    def observe(self, ok: bool) -> Health | None:
        """Count one result; return the new health when it changes."""
        if self.health is Health.UNKNOWN:
            self.health = Health.UP if ok else Health.DOWN
            self.failures = self.successes = 0
            return self.health
        if self.health is Health.UP:
            self.failures = 0 if ok else self.failures + 1
            if self.failures >= self.fall:
                self.health, self.failures = Health.DOWN, 0
                return Health.DOWN
            return None
        self.successes = self.successes + 1 if ok else 0
        if self.successes >= self.rise:
            self.health, self.successes = Health.UP, 0
            return Health.UP
        return None

    @property
    def changing(self) -> bool:
        """Between states: some results point the other way."""
        return self.failures > 0 or self.successes > 0

    def progress(self) -> str:
        """What an operator reads next to the state: "up 3/3" (3 failures from down),
        "up 2/3" after one failure, "down 1/2" one success toward up."""
        if self.health is Health.UP:
            return f"{self.fall - self.failures}/{self.fall}"
        if self.health is Health.DOWN:
            return f"{self.successes}/{self.rise}"
        return ""


def next_interval(config: HealthConfig, state: Hysteresis) -> float:
    """Seconds until the next check: fast while changing or unknown, slow while down."""
    if state.health is Health.UNKNOWN or state.changing:
        return config.fast_interval
    if state.health is Health.DOWN:
        return config.down_interval
    return config.interval


def first_delay(index: int, count: int, interval: float, jitter: float) -> float:
    """Spread the first checks of a pool's backends over one interval so they do not
    all fire together; `jitter` in [0, 1) moves each by up to a tenth of a slot."""
    slot = interval / max(count, 1)
    return index * slot + jitter * slot * 0.1


def jittered(interval: float, jitter: float) -> float:
    """An interval moved by up to ±5% (`jitter` in [0, 1)), so checks drift apart."""
    return interval * (0.95 + 0.1 * jitter)


def down_cause(state_before: Health, fall: int, reason: str) -> str:
    if state_before is Health.UNKNOWN:
        return f"health: down after the first check failed ({reason})"
    checks = "check" if fall == 1 else "checks"
    return f"health: down after {fall} failed {checks} (last: {reason})"


def up_cause(state_before: Health, rise: int, reason: str) -> str:
    if state_before is Health.UNKNOWN:
        return f"health: up after the first check passed ({reason})"
    checks = "check" if rise == 1 else "checks"
    return f"health: up after {rise} successful {checks} (last: {reason})"


# -- passive health (outlier ejection) ---------------------------------------------------------


@dataclass(slots=True)
class Outlier:
    """Consecutive traffic failures of one backend and its ejection record."""

    failures: int = 0  # consecutive connect failures or resets
    ejected_until: float = 0.0  # trio time; 0: not ejected
    level: int = 0  # ejections in a row; each doubles the time, up to the cap
    clean_since: float = 0.0  # when the last ejection ended

    @property
    def ejected(self) -> bool:
        return self.ejected_until > 0


class Verdict(StrEnum):
    NONE = "none"  # below the threshold
    EJECT = "eject"
    SPARE = "spare"  # would eject, but it is the last eligible backend of its pool


def eject_time(config: PassiveConfig, level: int) -> float:
    """The ejection time at `level` (1 = first): doubling, capped."""
    return min(config.eject_time * 2.0 ** (level - 1), config.max_eject_time)


def on_failure(
    state: Outlier, config: PassiveConfig, now: float, others_eligible: bool
) -> tuple[Verdict, float]:
    """Count one traffic failure; returns the verdict and, for EJECT, the time ejected."""
    if state.ejected:
        return Verdict.NONE, 0.0  # failures of connections started before the ejection
    state.failures += 1
    if state.failures < config.consecutive_failures:
        return Verdict.NONE, 0.0
    if not others_eligible:
        state.failures = 0  # count the next run afresh rather than re-sparing on each failure
        return Verdict.SPARE, 0.0
    # A backend that stayed clean for a full cap since its last ejection starts over.
    if state.level and now - state.clean_since >= config.max_eject_time:
        state.level = 0
    state.level += 1
    duration = eject_time(config, state.level)
    state.ejected_until = now + duration
    state.failures = 0
    return Verdict.EJECT, duration


def on_success(state: Outlier) -> None:
    state.failures = 0


def ejection_over(state: Outlier, now: float) -> bool:
    """End the ejection if its time has come; True when it just ended."""
    if state.ejected and now >= state.ejected_until:
        state.ejected_until = 0.0
        state.clean_since = now
        state.failures = 0
        return True
    return False


# -- slow start ---------------------------------------------------------------------------------


def ramp(elapsed: float, duration: float) -> float:
    """Share of the full weight `elapsed` seconds into a slow start of `duration` seconds:
    linear from SLOW_START_FLOOR to 1."""
    if duration <= 0 or elapsed >= duration:
        return 1.0
    if elapsed <= 0:
        return SLOW_START_FLOOR
    return SLOW_START_FLOOR + (1.0 - SLOW_START_FLOOR) * elapsed / duration
