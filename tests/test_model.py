"""Tests for the backend model (tuilb.model): transitions, events, counters, snapshots."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable

import pytest

from tuilb.config import Address, BackendConfig, PoolConfig
from tuilb.model import AdminState, Backend, Event, Health, Model

READY, DRAINING, DISABLED = AdminState.READY, AdminState.DRAINING, AdminState.DISABLED


class Clock:
    """A clock that moves one second per reading, starting at a fixed instant."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start
        self.readings: list[float] = []

    def __call__(self) -> float:
        self.now += 1.0
        self.readings.append(self.now)
        return self.now


def make_model(
    *, clock: Clock | None = None, event_capacity: int = 1000, max_connections: int = 0
) -> Model:
    pools = [
        PoolConfig(
            "app",
            "round_robin",
            (
                BackendConfig("a", Address("127.0.0.1", 9001), 2, max_connections),
                BackendConfig("b", Address("::1", 9002), 1, 0),
            ),
        ),
        PoolConfig(
            "api",
            "least_connections",
            (BackendConfig("x", Address("backend.example", 80), 5, 10),),
        ),
    ]
    return Model(pools, clock=clock or Clock(), event_capacity=event_capacity)


def new_events(model: Model, since: int) -> list[tuple[str, str, str, str, str]]:
    return [(e.target, e.kind, e.old, e.new, e.cause) for e in model.events_since(since)]


def last_id(model: Model) -> int:
    return model.events[-1].id if model.events else 0


# ---------------------------------------------------------------------------------------
# Initial state


def test_initial_state() -> None:
    model = make_model()
    a = model.backend("app/a")
    assert (a.admin, a.health, a.weight, a.active, a.total) == (READY, Health.UNKNOWN, 2, 0, 0)
    assert a.target == "app/a"
    assert a.eligible and a.usable
    assert list(model.events) == []
    assert [b.name for b in model.pools["app"].backends] == ["a", "b"]
    assert model.pools["api"].algorithm == "least_connections"


# ---------------------------------------------------------------------------------------
# Admin state transitions


@pytest.mark.parametrize(
    ("start", "to"), list(itertools.product([READY, DRAINING, DISABLED], repeat=2))
)
def test_admin_transition(start: AdminState, to: AdminState) -> None:
    model = make_model()
    a = model.backend("app/a")
    model.connection_started(a)  # one connection open, so draining is not yet drained
    model.set_admin(a, start, "setup")
    mark = last_id(model)
    changed = model.set_admin(a, to, "operator: test")
    assert a.admin is to
    if start is to:
        assert changed is False
        assert new_events(model, mark) == []
    else:
        assert changed is True
        assert new_events(model, mark) == [
            ("app/a", "state", str(start), str(to), "operator: test")
        ]


def test_state_event_fields_are_plain_strings() -> None:
    model = make_model()
    model.set_admin(model.backend("app/b"), DISABLED, "operator: disable")
    (event,) = model.events
    assert (event.old, event.new) == ("ready", "disabled")
    assert event.id == 1


@pytest.mark.parametrize(
    ("change", "kind", "old", "new"),
    [
        (lambda m, b: m.set_weight(b, 7, "why"), "weight", "2", "7"),
        (lambda m, b: m.set_weight(b, 0, "why"), "weight", "2", "0"),
        (lambda m, b: m.set_health(b, Health.DOWN, "why"), "health", "unknown", "down"),
        (lambda m, b: m.set_health(b, Health.UP, "why"), "health", "unknown", "up"),
        (lambda m, b: m.set_admin(b, DISABLED, "why"), "state", "ready", "disabled"),
    ],
    ids=["weight", "weight 0", "health down", "health up", "disable"],
)
def test_change_records_one_event(
    change: Callable[[Model, Backend], bool], kind: str, old: str, new: str
) -> None:
    model = make_model()
    a = model.backend("app/a")
    assert change(model, a) is True
    assert new_events(model, 0) == [("app/a", kind, old, new, "why")]
    # the same change again is no change: no event, False
    assert change(model, a) is False
    assert len(model.events) == 1


def test_no_event_when_nothing_changes() -> None:
    model = make_model()
    a = model.backend("app/a")
    assert model.set_admin(a, READY, "noop") is False
    assert model.set_weight(a, 2, "noop") is False
    assert model.set_health(a, Health.UNKNOWN, "noop") is False
    assert list(model.events) == []


def test_traffic_records_no_event() -> None:
    model = make_model()
    a = model.backend("app/a")
    model.connection_started(a)
    model.connection_ended(a)
    model.connect_failed(a, "connection refused")
    model.refused(model.pools["app"])
    assert list(model.events) == []


# ---------------------------------------------------------------------------------------
# Draining and "drained"


def drained_events(model: Model, since: int = 0) -> list[tuple[str, str, str, str, str]]:
    return [e for e in new_events(model, since) if e[1] == "drained"]


def test_drained_once_when_last_connection_ends() -> None:
    model = make_model()
    a = model.backend("app/a")
    for _ in range(3):
        model.connection_started(a)
    model.set_admin(a, DRAINING, "operator: drain")
    assert drained_events(model) == []
    assert model.snapshot().backend("app/a").drained is False
    model.connection_ended(a)
    model.connection_ended(a)
    assert drained_events(model) == []
    model.connection_ended(a)
    assert drained_events(model) == [
        ("app/a", "drained", "draining", "drained", "last connection closed")
    ]
    assert model.events[-1].kind == "drained"
    snap = model.snapshot().backend("app/a")
    assert snap.drained is True
    assert snap.active_connections == 0


def test_drain_with_no_active_connection_is_drained_at_once() -> None:
    model = make_model()
    a = model.backend("app/a")
    model.set_admin(a, DRAINING, "operator: drain")
    assert new_events(model, 0) == [
        ("app/a", "state", "ready", "draining", "operator: drain"),
        ("app/a", "drained", "draining", "drained", "no active connections"),
    ]
    assert model.snapshot().backend("app/a").drained is True


def test_drained_again_after_a_new_drain() -> None:
    model = make_model()
    a = model.backend("app/a")
    model.set_admin(a, DRAINING, "first")
    model.set_admin(a, READY, "back")
    model.set_admin(a, DRAINING, "second")
    assert len(drained_events(model)) == 2


@pytest.mark.parametrize("state", [READY, DISABLED])
def test_no_drained_event_unless_draining(state: AdminState) -> None:
    model = make_model()
    a = model.backend("app/a")
    model.connection_started(a)
    model.set_admin(a, state, "x")
    model.connection_ended(a)
    assert drained_events(model) == []
    assert model.snapshot().backend("app/a").drained is False


def test_no_drained_event_when_drain_is_cancelled_first() -> None:
    model = make_model()
    a = model.backend("app/a")
    model.connection_started(a)
    model.set_admin(a, DRAINING, "drain")
    model.set_admin(a, READY, "enable")
    model.connection_ended(a)
    assert drained_events(model) == []


def test_draining_other_backend_connections_do_not_count() -> None:
    model = make_model()
    a, b = model.backend("app/a"), model.backend("app/b")
    model.connection_started(a)
    model.connection_started(b)
    model.set_admin(a, DRAINING, "drain")
    model.connection_ended(b)
    assert drained_events(model) == []
    model.connection_ended(a)
    assert [e[0] for e in drained_events(model)] == ["app/a"]


def test_active_never_goes_below_zero() -> None:
    """The module promises it; an extra end (e.g. double cleanup) must not make it -1."""
    model = make_model()
    a = model.backend("app/a")
    model.connection_started(a)
    model.connection_ended(a)
    model.connection_ended(a)
    assert a.active == 0
    assert model.snapshot().backend("app/a").active_connections == 0


# ---------------------------------------------------------------------------------------
# Eligibility


@pytest.mark.parametrize(
    ("admin", "health", "weight"),
    list(itertools.product(list(AdminState), list(Health), [0, 1, 256])),
)
def test_eligible_derived_from_admin_health_weight(
    admin: AdminState, health: Health, weight: int
) -> None:
    model = make_model()
    a = model.backend("app/a")
    model.set_admin(a, admin, "t")
    model.set_health(a, health, "t")
    model.set_weight(a, weight, "t")
    expected = admin == "ready" and health != "down" and weight > 0
    assert a.eligible is expected
    assert a.usable is expected
    assert model.snapshot().backend("app/a").eligible is expected


def test_eligibility_comes_back() -> None:
    model = make_model()
    a = model.backend("app/a")
    model.set_health(a, Health.DOWN, "t")
    model.set_weight(a, 0, "t")
    assert not a.eligible
    model.set_health(a, Health.UP, "t")
    assert not a.eligible
    model.set_weight(a, 3, "t")
    assert a.eligible


def test_capacity() -> None:
    model = make_model(max_connections=2)
    a = model.backend("app/a")
    model.connection_started(a)
    assert a.has_capacity and a.usable
    model.connection_started(a)
    assert not a.has_capacity
    assert a.eligible and not a.usable  # full is not ineligible, just no room now
    model.connection_ended(a)
    assert a.usable
    b = model.backend("app/b")  # max_connections 0: unlimited
    for _ in range(1000):
        model.connection_started(b)
    assert b.has_capacity


# ---------------------------------------------------------------------------------------
# The event ring


def test_event_ring_is_bounded() -> None:
    model = make_model(event_capacity=3)
    a = model.backend("app/a")
    for w in range(10, 15):  # five changes
        model.set_weight(a, w, f"set {w}")
    assert len(model.events) == 3
    assert [e.id for e in model.events] == [3, 4, 5]
    assert [e.new for e in model.events] == ["12", "13", "14"]
    assert [e.id for e in model.events_since(0)] == [3, 4, 5]
    assert [e.id for e in model.events_since(4)] == [5]
    assert model.events_since(5) == []


def test_events_since() -> None:
    model = make_model()
    a, b = model.backend("app/a"), model.backend("app/b")
    model.set_admin(a, DISABLED, "1")
    model.set_health(b, Health.DOWN, "2")
    model.set_weight(a, 9, "3")
    assert [e.cause for e in model.events_since()] == ["1", "2", "3"]
    assert [e.cause for e in model.events_since(1)] == ["2", "3"]
    assert [e.cause for e in model.events_since(3)] == []
    ids = [e.id for e in model.events]
    assert ids == sorted(set(ids))


def test_default_capacity_is_bounded() -> None:
    model = Model([], clock=Clock())
    assert model.events.maxlen is not None
    assert model.events.maxlen >= 100


def test_subscribers_see_every_event() -> None:
    model = make_model()
    seen: list[Event] = []
    model.subscribe(seen.append)
    a = model.backend("app/a")
    model.set_admin(a, DRAINING, "drain")
    model.set_weight(a, 5, "w")
    assert seen == list(model.events)
    assert [e.kind for e in seen] == ["state", "drained", "weight"]


def test_injected_clock_times_events_and_snapshots() -> None:
    clock = Clock(start=1000.0)
    model = make_model(clock=clock)
    a = model.backend("app/a")
    model.set_admin(a, DISABLED, "x")
    model.set_weight(a, 4, "y")
    snap = model.snapshot()
    assert [e.ts for e in model.events] == [1001.0, 1002.0]
    assert snap.ts == 1003.0
    assert clock.readings == [1001.0, 1002.0, 1003.0]


def test_event_is_frozen() -> None:
    model = make_model()
    model.set_weight(model.backend("app/a"), 3, "x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.events[0].cause = "rewritten"  # type: ignore[misc]


# ---------------------------------------------------------------------------------------
# Snapshots


def test_snapshot_reflects_counters_and_state() -> None:
    model = make_model()
    a = model.backend("app/a")
    for _ in range(3):
        model.connection_started(a)
    model.connection_ended(a)
    model.connect_failed(a, "connection refused")
    model.connect_failed(a, "timed out")
    a.bytes_in += 1234  # the pump updates byte counters directly
    a.bytes_out += 99
    model.refused(model.pools["app"])
    model.refused(model.pools["app"])
    model.set_weight(a, 7, "w")
    model.set_health(a, Health.UP, "h")
    model.set_admin(model.backend("app/b"), DISABLED, "d")

    snap = model.snapshot()
    assert [p.name for p in snap.pools] == ["app", "api"]
    app = snap.pools[0]
    assert (app.algorithm, app.refused) == ("round_robin", 2)
    assert snap.pools[1].refused == 0
    sa = snap.backend("app/a")
    assert sa.pool == "app" and sa.name == "a"
    assert sa.address == "127.0.0.1:9001"
    assert sa.state == "ready" and sa.health == "up"
    assert (sa.weight, sa.effective_weight, sa.config_weight) == (7, 7, 2)
    assert sa.max_connections == 0
    assert (sa.active_connections, sa.total_connections) == (2, 3)
    assert sa.failed_connects == 2
    assert sa.last_error == "timed out"
    assert (sa.bytes_in, sa.bytes_out) == (1234, 99)
    assert sa.eligible is True and sa.drained is False
    sb = snap.backend("app/b")
    assert sb.address == "[::1]:9002"
    assert sb.state == "disabled" and sb.eligible is False
    assert sb.total_connections == 0
    sx = snap.backend("api/x")
    assert (sx.address, sx.max_connections, sx.weight) == ("backend.example:80", 10, 5)


def test_snapshot_is_a_copy() -> None:
    model = make_model()
    a = model.backend("app/a")
    before = model.snapshot()
    model.connection_started(a)
    model.set_admin(a, DRAINING, "d")
    model.refused(model.pools["app"])
    assert before.backend("app/a").active_connections == 0
    assert before.backend("app/a").state == "ready"
    assert before.pools[0].refused == 0
    after = model.snapshot()
    assert after.backend("app/a").active_connections == 1
    assert after.backend("app/a").state == "draining"


def test_snapshot_is_immutable() -> None:
    model = make_model()
    snap = model.snapshot()
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.ts = 0.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.pools[0].refused = 5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.backend("app/a").weight = 100  # type: ignore[misc]
    assert isinstance(snap.pools, tuple)
    assert isinstance(snap.pools[0].backends, tuple)
    assert hash(snap.backend("app/a")) == hash(model.snapshot().backend("app/a"))


@pytest.mark.parametrize("target", ["app/zz", "nope/a", "app", "", "api/a", "app/a/b"])
def test_snapshot_backend_lookup_missing(target: str) -> None:
    snap = make_model().snapshot()
    with pytest.raises(KeyError):
        snap.backend(target)


def test_snapshot_backend_lookup_finds_the_right_pool() -> None:
    snap = make_model().snapshot()
    assert snap.backend("api/x").pool == "api"
    assert snap.backend("app/b").name == "b"


# ---------------------------------------------------------------------------------------
# model.backend()


def test_backend_lookup() -> None:
    model = make_model()
    a = model.backend("app/a")
    assert isinstance(a, Backend)
    assert a is model.pools["app"].by_name["a"]
    assert model.backend("api/x").pool == "api"


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("nope/a", "no pool named 'nope'"),
        ("app/zz", "no backend named 'zz' in pool 'app'"),
        ("api/a", "no backend named 'a' in pool 'api'"),
        ("app", "in pool 'app'"),
        ("", "no pool named ''"),
    ],
)
def test_backend_lookup_errors(target: str, message: str) -> None:
    model = make_model()
    with pytest.raises(KeyError) as info:
        model.backend(target)
    assert message in info.value.args[0]
