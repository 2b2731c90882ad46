"""Table tests for the pure health decisions (tuilb.health) and how the model applies
them (check results, ejections, slow start), with a hand-driven clock."""

from __future__ import annotations

import pytest
import trio

from tuilb import health as hc
from tuilb.config import parse
from tuilb.health import CheckResult, Health, Hysteresis, Outlier, Verdict
from tuilb.healthconf import HealthConfig, PassiveConfig
from tuilb.model import AdminState, Model

U, D, N = Health.UP, Health.DOWN, Health.UNKNOWN

# (rise, fall, results as a string of + and -, health after each result)
HYSTERESIS: list[tuple[str, int, int, str, list[Health]]] = [
    ("unknown takes the first success", 2, 3, "+", [U]),
    ("unknown takes the first failure", 2, 3, "-", [D]),
    ("up needs fall failures in a row", 2, 3, "+---", [U, U, U, D]),
    ("a success in between restores up fully", 2, 3, "+--+--", [U, U, U, U, U, U]),
    ("down needs rise successes in a row", 2, 3, "-++", [D, D, U]),
    ("a failure in between restarts the rise", 3, 3, "-++-+++", [D, D, D, D, D, D, U]),
    ("fall 1 and rise 1 follow every result", 1, 1, "+-+-", [U, D, U, D]),
    ("a flapper with rise 2 fall 2 on +-+- stays put", 2, 2, "++-+-+-+", [U] * 8),
    ("flapping in pairs does move", 2, 2, "+--++--", [U, U, D, D, U, U, D]),
]


@pytest.mark.parametrize(
    ("label", "rise", "fall", "results", "expected"), HYSTERESIS, ids=[h[0] for h in HYSTERESIS]
)
def test_hysteresis(label: str, rise: int, fall: int, results: str, expected: list[Health]) -> None:
    tracker = Hysteresis(rise, fall)
    seen = []
    for mark in results:
        before = tracker.health
        changed = tracker.observe(mark == "+")
        seen.append(tracker.health)
        assert changed == (tracker.health if tracker.health is not before else None)
    assert seen == expected


PROGRESS: list[tuple[str, str, str, bool]] = [
    # results, progress text, changing
    ("", "", False),
    ("+", "3/3", False),
    ("+-", "2/3", True),
    ("+--", "1/3", True),
    ("+---", "0/2", False),
    ("+---+", "1/2", True),
    ("+---++", "3/3", False),
]


@pytest.mark.parametrize(("results", "text", "changing"), PROGRESS)
def test_progress_text(results: str, text: str, changing: bool) -> None:
    tracker = Hysteresis(rise=2, fall=3)
    for mark in results:
        tracker.observe(mark == "+")
    assert tracker.progress() == text
    assert tracker.changing is changing


INTERVALS = HealthConfig(type="tcp", interval=2.0, fast_interval=0.5, down_interval=5.0)


@pytest.mark.parametrize(
    ("results", "interval"),
    [
        ("", 0.5),  # unknown: find out fast
        ("+", 2.0),  # stable up
        ("+-", 0.5),  # going down
        ("-", 5.0),  # stable down
        ("-+", 0.5),  # coming up
        ("-++", 2.0),  # up again
    ],
)
def test_next_interval(results: str, interval: float) -> None:
    tracker = Hysteresis(rise=2, fall=3)
    for mark in results:
        tracker.observe(mark == "+")
    assert hc.next_interval(INTERVALS, tracker) == interval


def test_first_checks_spread_over_one_interval() -> None:
    delays = [hc.first_delay(i, 4, 2.0, 0.0) for i in range(4)]
    assert delays == [0.0, 0.5, 1.0, 1.5]
    # jitter moves each by at most a tenth of its slot
    assert hc.first_delay(1, 4, 2.0, 0.999) == pytest.approx(0.5 + 0.05, abs=1e-3)


@pytest.mark.parametrize(("jitter", "value"), [(0.0, 1.9), (0.5, 2.0), (0.9999, 2.1)])
def test_jitter_stays_within_five_percent(jitter: float, value: float) -> None:
    assert hc.jittered(2.0, jitter) == pytest.approx(value, abs=1e-3)


def test_causes_say_what_happened() -> None:
    assert hc.down_cause(U, 3, "connect refused") == (
        "health: down after 3 failed checks (last: connect refused)"
    )
    assert hc.down_cause(N, 3, "timeout") == "health: down after the first check failed (timeout)"
    assert hc.up_cause(D, 1, "HTTP 200") == "health: up after 1 successful check (last: HTTP 200)"
    assert hc.up_cause(N, 2, "connected") == "health: up after the first check passed (connected)"


# -- passive ------------------------------------------------------------------------------

PASSIVE = PassiveConfig(consecutive_failures=3, eject_time=10.0, max_eject_time=35.0)


@pytest.mark.parametrize(("level", "seconds"), [(1, 10.0), (2, 20.0), (3, 35.0), (9, 35.0)])
def test_eject_time_doubles_up_to_the_cap(level: int, seconds: float) -> None:
    assert hc.eject_time(PASSIVE, level) == seconds


def test_ejection_after_consecutive_failures_only() -> None:
    state = Outlier()
    assert hc.on_failure(state, PASSIVE, 0.0, True) == (Verdict.NONE, 0.0)
    assert hc.on_failure(state, PASSIVE, 0.0, True) == (Verdict.NONE, 0.0)
    hc.on_success(state)  # a success breaks the run
    assert hc.on_failure(state, PASSIVE, 0.0, True) == (Verdict.NONE, 0.0)
    assert hc.on_failure(state, PASSIVE, 0.0, True) == (Verdict.NONE, 0.0)
    assert hc.on_failure(state, PASSIVE, 1.0, True) == (Verdict.EJECT, 10.0)
    assert state.ejected and state.ejected_until == 11.0
    # failures of connections begun before the ejection do not extend it
    assert hc.on_failure(state, PASSIVE, 2.0, True) == (Verdict.NONE, 0.0)
    assert not hc.ejection_over(state, 10.9)
    assert hc.ejection_over(state, 11.0)
    assert not state.ejected


def test_repeated_ejections_double_and_a_clean_spell_resets() -> None:
    state = Outlier()
    times = []
    now = 0.0
    for _ in range(3):
        for _ in range(3):
            verdict, seconds = hc.on_failure(state, PASSIVE, now, True)
        assert verdict is Verdict.EJECT
        times.append(seconds)
        now = state.ejected_until
        assert hc.ejection_over(state, now)
    assert times == [10.0, 20.0, 35.0]
    # clean for a whole cap: the next ejection is short again
    now += PASSIVE.max_eject_time
    for _ in range(3):
        verdict, seconds = hc.on_failure(state, PASSIVE, now, True)
    assert (verdict, seconds) == (Verdict.EJECT, 10.0)


def test_the_last_eligible_backend_is_spared() -> None:
    state = Outlier()
    verdicts = [hc.on_failure(state, PASSIVE, 0.0, False)[0] for _ in range(6)]
    assert verdicts == [Verdict.NONE, Verdict.NONE, Verdict.SPARE] * 2
    assert not state.ejected


@pytest.mark.parametrize(
    ("elapsed", "share"),
    [(-1.0, 0.1), (0.0, 0.1), (5.0, 0.55), (9.99, 0.9991), (10.0, 1.0), (50.0, 1.0)],
)
def test_slow_start_ramp(elapsed: float, share: float) -> None:
    assert hc.ramp(elapsed, 10.0) == pytest.approx(share, abs=1e-3)


def test_no_slow_start_means_full_weight() -> None:
    assert hc.ramp(0.0, 0.0) == 1.0


# -- the model applies them ------------------------------------------------------------------

TEXT = """
[[listeners]]
name = "front"
bind = "127.0.0.1:0"
pool = "app"

[pools.app]
algorithm = "weighted_round_robin"
slow_start = 10

[pools.app.health]
rise = 2
fall = 2

[pools.app.passive]
consecutive_failures = 2
eject_time = 5

[[pools.app.backends]]
name = "a"
address = "127.0.0.1:9001"
weight = 4

[[pools.app.backends]]
name = "b"
address = "127.0.0.1:9002"
"""


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def model() -> tuple[Model, Clock]:
    clock = Clock()
    config = parse(TEXT, "<test>")
    return Model(config.pools.values(), clock=lambda: 1.7e9, monotonic=clock), clock


def ok(reason: str = "connected") -> CheckResult:
    return CheckResult(True, reason, 0.001)


def fail(reason: str = "connect refused") -> CheckResult:
    return CheckResult(False, reason, 0.002)


def test_check_results_drive_health_with_causes(model: tuple[Model, Clock]) -> None:
    m, _ = model
    a = m.backend("app/a")
    m.check_result(a, ok())
    assert a.health is Health.UP
    m.check_result(a, fail())
    assert a.health is Health.UP and m.snapshot().backend("app/a").health_progress == "1/2"
    m.check_result(a, fail("timeout"))
    assert a.health is Health.DOWN and not a.eligible
    health_events = [(e.old, e.new, e.cause) for e in m.events if e.kind == "health"]
    assert health_events == [
        ("unknown", "up", "health: up after the first check passed (connected)"),
        ("up", "down", "health: down after 2 failed checks (last: timeout)"),
    ]
    snap = m.snapshot().backend("app/a")
    assert [c.reason for c in snap.checks] == ["connected", "connect refused", "timeout"]
    assert snap.last_check is not None and snap.last_check.ts == 1.7e9
    assert snap.check == "tcp"


def test_coming_back_up_ramps_the_weight(model: tuple[Model, Clock]) -> None:
    m, clock = model
    a = m.backend("app/a")
    m.check_result(a, fail())
    assert a.health is Health.DOWN
    m.check_result(a, ok())
    m.check_result(a, ok())
    assert a.health is Health.UP
    assert a.effective_weight == pytest.approx(0.4)  # a tenth of 4
    clock.now += 5
    m.tick()
    assert a.effective_weight == pytest.approx(4 * 0.55)
    assert m.snapshot().backend("app/a").slow_start == pytest.approx(0.55)
    clock.now += 5
    m.tick()
    assert a.effective_weight == 4
    kinds = [(e.kind, e.new) for e in m.events if e.kind == "slow_start"]
    assert kinds == [("slow_start", "ramping"), ("slow_start", "full")]


def test_first_up_at_start_does_not_ramp(model: tuple[Model, Clock]) -> None:
    m, _ = model
    a = m.backend("app/a")
    m.check_result(a, ok())
    assert a.effective_weight == 4


def test_enable_after_disable_ramps(model: tuple[Model, Clock]) -> None:
    m, _ = model
    a = m.backend("app/a")
    m.set_admin(a, AdminState.DISABLED, "test")
    m.set_admin(a, AdminState.READY, "test")
    assert a.ramp == hc.SLOW_START_FLOOR


def test_passive_ejection_through_the_model(model: tuple[Model, Clock]) -> None:
    m, clock = model
    a, b = m.backend("app/a"), m.backend("app/b")
    m.connect_failed(a, "connect refused")
    m.connection_ok(a)  # a connection that ended well breaks the run
    m.connect_failed(a, "connect refused")
    assert not a.ejected
    m.backend_reset(a)
    assert a.ejected and not a.eligible and a.resets == 1
    snap = m.snapshot().backend("app/a")
    assert snap.ejected and snap.eject_left == pytest.approx(5.0) and snap.ejections == 1
    # b is now the last eligible backend: it is spared, and that is said
    m.connect_failed(b, "connect refused")
    m.connect_failed(b, "connect refused")
    assert not b.ejected
    clock.now += 5
    m.tick()
    assert not a.ejected and a.eligible
    assert a.ramp == hc.SLOW_START_FLOOR  # back from ejection: slow start
    causes = [(e.target, e.new, e.cause) for e in m.events if e.kind == "eject"]
    assert causes == [
        (
            "app/a",
            "ejected",
            "passive: 2 failures in a row (last: reset by backend); out for 5s",
        ),
        (
            "app/b",
            "in",
            "passive: 2 failures in a row (last: connect refused), but it is the last "
            "eligible backend of pool 'app': not ejected",
        ),
        ("app/a", "in", "passive: ejection time over"),
    ]


def test_no_passive_table_means_no_ejection() -> None:
    passive = "[pools.app.passive]\nconsecutive_failures = 2\neject_time = 5\n"
    assert passive in TEXT
    config = parse(TEXT.replace(passive, ""), "<test>")
    m = Model(config.pools.values())
    a = m.backend("app/a")
    for _ in range(10):
        m.connect_failed(a, "connect refused")
    assert not a.ejected and a.failed_connects == 10


def test_snapshots_still_work_once_the_engine_has_stopped() -> None:
    """The dashboard may read after the run: the model's clock must not need trio then."""
    from tests.conftest import make_config
    from tuilb.engine import Engine

    engine = Engine(make_config([9]))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            engine.request_shutdown()

    trio.run(main)
    snap = engine.model.snapshot()
    assert snap.backend("app/b1").eject_left == 0.0
    assert engine.model.monotonic() == engine.model.monotonic()


def test_an_ejection_ending_while_down_does_not_ramp_until_up(model: tuple[Model, Clock]) -> None:
    m, clock = model
    a = m.backend("app/a")
    m.connect_failed(a, "connect refused")
    m.connect_failed(a, "connect refused")
    assert a.ejected
    m.check_result(a, fail())  # checks see it down meanwhile
    clock.now += 5
    m.tick()
    assert not a.ejected and a.health is Health.DOWN
    assert [e for e in m.events if e.kind == "slow_start"] == []
    m.check_result(a, ok())
    m.check_result(a, ok())
    assert a.health is Health.UP and a.ramp == hc.SLOW_START_FLOOR
    assert [e.cause for e in m.events if e.kind == "slow_start"] == [
        "slow start (back up): ramping to full weight over 10s"
    ]
