"""Table and property tests for the balancing algorithms (tuilb.balance).

Backends are built through tuilb.model.Model from config dataclasses, and their state is
changed only through Model methods, as the engine and operators do.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuilb.balance import (
    ALGORITHMS,
    LeastConnections,
    RoundRobin,
    SourceIPHash,
    WeightedLeastConnections,
    WeightedRoundRobin,
    make,
)
from tuilb.config import Address, BackendConfig, PoolConfig
from tuilb.model import AdminState, Backend, Health, Model

ALL = sorted(ALGORITHMS)
WEIGHT_AWARE = {"weighted_round_robin", "weighted_least_connections", "source_ip_hash"}
NAMES = "abcdefghij"


def build(
    weights: Sequence[int],
    algorithm: str = "round_robin",
    max_connections: Sequence[int] | None = None,
) -> tuple[Model, list[Backend]]:
    limits = max_connections or [0] * len(weights)
    configs = tuple(
        BackendConfig(NAMES[i], Address("127.0.0.1", 9000 + i), w, m)
        for i, (w, m) in enumerate(zip(weights, limits, strict=True))
    )
    model = Model([PoolConfig("p", algorithm, configs)])
    return model, model.pools["p"].backends


def client(i: int) -> str:
    """A distinct IPv4 client address for every i < 2**24."""
    return f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"


def names(picks: Sequence[Backend | None]) -> str:
    return "".join("-" if b is None else b.name for b in picks)


def run(
    algorithm: str, backends: Sequence[Backend], n: int, exclude: frozenset[Backend] = frozenset()
) -> list[Backend | None]:
    """n picks by a fresh balancer, each from a different client, no connection opened."""
    balancer = make(algorithm)
    return [balancer.pick(backends, client(i), exclude) for i in range(n)]


def test_registry_has_the_five_algorithms() -> None:
    assert dict(ALGORITHMS) == {
        "round_robin": RoundRobin,
        "weighted_round_robin": WeightedRoundRobin,
        "least_connections": LeastConnections,
        "weighted_least_connections": WeightedLeastConnections,
        "source_ip_hash": SourceIPHash,
    }
    for name, cls in ALGORITHMS.items():
        first, second = make(name), make(name)
        assert type(first) is cls
        assert first is not second  # each pool gets its own memory


# ---------------------------------------------------------------------------------------
# Every algorithm: distribution, weights, eligibility, exclude, nothing usable


@pytest.mark.parametrize("algorithm", ALL)
def test_equal_weights_spread_evenly(algorithm: str) -> None:
    _, backends = build([1, 1, 1, 1])
    n = 8000
    counts = Counter(b.name for b in run(algorithm, backends, n) if b is not None)
    assert set(counts) == set("abcd")
    if algorithm == "source_ip_hash":
        for name in "abcd":
            assert abs(counts[name] / n - 0.25) < 0.03, counts
    else:
        assert counts == {name: n // 4 for name in "abcd"}


@pytest.mark.parametrize("algorithm", ALL)
def test_distribution_with_connections_coming_and_going(algorithm: str) -> None:
    """A steady state: each pick opens a connection, the oldest of 6 open ones closes."""
    model, backends = build([1, 1, 1])
    balancer = make(algorithm)
    open_: list[Backend] = []
    counts: Counter[str] = Counter()
    n = 6000
    for i in range(n):
        b = balancer.pick(backends, client(i))
        assert b is not None
        counts[b.name] += 1
        model.connection_started(b)
        open_.append(b)
        if len(open_) > 6:
            model.connection_ended(open_.pop(0))
    for name in "abc":
        assert abs(counts[name] / n - 1 / 3) < 0.03, counts
    assert sum(b.active for b in backends) == 6


@pytest.mark.parametrize("algorithm", [a for a in ALL if a != "weighted_least_connections"])
def test_weights_per_pick(algorithm: str) -> None:
    """Picks with no connection ever opened (weighted least connections then always sees
    every backend idle and picks the heaviest: see test_wlc_* below)."""
    weights = [3, 1, 2]
    _, backends = build(weights)
    n = 12000
    counts = Counter(b.name for b in run(algorithm, backends, n) if b is not None)
    if algorithm in WEIGHT_AWARE:
        expected = {name: w / sum(weights) for name, w in zip("abc", weights, strict=True)}
    else:  # round robin and least connections ignore weights other than 0
        expected = {name: 1 / 3 for name in "abc"}
    tolerance = 0.02 if algorithm == "source_ip_hash" else 0.001
    for name, share in expected.items():
        assert abs(counts[name] / n - share) < tolerance, counts


@pytest.mark.parametrize("algorithm", ALL)
def test_weights_with_held_connections(algorithm: str) -> None:
    """Connections stay open: load-aware algorithms share them out by weight too."""
    weights = [3, 1, 2]
    model, backends = build(weights)
    balancer = make(algorithm)
    n = 6000
    for i in range(n):
        b = balancer.pick(backends, client(i))
        assert b is not None
        model.connection_started(b)
    active = {b.name: b.active for b in backends}
    if algorithm in WEIGHT_AWARE:
        for name, w in zip("abc", weights, strict=True):
            assert abs(active[name] / n - w / 6) < 0.02, active
    else:
        for name in "abc":
            assert abs(active[name] / n - 1 / 3) < 0.001, active


def _drain(model: Model, b: Backend) -> None:
    model.set_admin(b, AdminState.DRAINING, "test")


def _disable(model: Model, b: Backend) -> None:
    model.set_admin(b, AdminState.DISABLED, "test")


def _weight0(model: Model, b: Backend) -> None:
    model.set_weight(b, 0, "test")


def _down(model: Model, b: Backend) -> None:
    model.set_health(b, Health.DOWN, "test")


def _full(model: Model, b: Backend) -> None:
    for _ in range(b.max_connections):
        model.connection_started(b)


UNUSABLE: dict[str, Callable[[Model, Backend], None]] = {
    "draining": _drain,
    "disabled": _disable,
    "weight 0": _weight0,
    "health down": _down,
    "max_connections full": _full,
}


@pytest.mark.parametrize("condition", list(UNUSABLE))
@pytest.mark.parametrize("algorithm", ALL)
def test_unusable_backend_gets_nothing(algorithm: str, condition: str) -> None:
    model, backends = build([1, 4, 1], max_connections=[0, 2, 0])
    b = backends[1]
    UNUSABLE[condition](model, b)
    assert not b.usable
    picks = run(algorithm, backends, 3000)
    counts = Counter(names(picks))
    assert counts["b"] == 0
    assert counts["-"] == 0
    assert counts["a"] > 0 and counts["c"] > 0


@pytest.mark.parametrize("algorithm", ALL)
def test_backend_with_room_again_gets_traffic(algorithm: str) -> None:
    model, backends = build([1, 1], max_connections=[1, 0])
    balancer = make(algorithm)
    model.connection_started(backends[0])
    assert {names([balancer.pick(backends, client(i))]) for i in range(200)} == {"b"}
    model.connection_ended(backends[0])
    assert "a" in {names([balancer.pick(backends, client(i))]) for i in range(200)}


@pytest.mark.parametrize("algorithm", ALL)
def test_re_enabled_backend_gets_traffic_again(algorithm: str) -> None:
    model, backends = build([1, 1, 1])
    balancer = make(algorithm)
    model.set_admin(backends[0], AdminState.DISABLED, "test")
    assert "a" not in names([balancer.pick(backends, client(i)) for i in range(300)])
    model.set_admin(backends[0], AdminState.READY, "test")
    assert "a" in names([balancer.pick(backends, client(i)) for i in range(300)])


@pytest.mark.parametrize("health", [Health.UNKNOWN, Health.UP])
@pytest.mark.parametrize("algorithm", ALL)
def test_unknown_and_up_health_are_usable(algorithm: str, health: Health) -> None:
    model, backends = build([1, 1])
    for b in backends:
        model.set_health(b, health, "test")
    assert set(names(run(algorithm, backends, 400))) == {"a", "b"}


@pytest.mark.parametrize("algorithm", ALL)
def test_exclude(algorithm: str) -> None:
    _, backends = build([1, 1, 1])
    a, _, c = backends
    assert set(names(run(algorithm, backends, 600, frozenset({a})))) == {"b", "c"}
    assert set(names(run(algorithm, backends, 600, frozenset({a, c})))) == {"b"}
    assert set(names(run(algorithm, backends, 10, frozenset(backends)))) == {"-"}


@pytest.mark.parametrize("algorithm", ALL)
def test_exclude_is_a_retry_after_a_failed_connect(algorithm: str) -> None:
    """The engine's retry loop: keep excluding what was tried until None."""
    _, backends = build([1, 2, 3])
    balancer = make(algorithm)
    for i in range(50):
        tried: set[Backend] = set()
        while (b := balancer.pick(backends, client(i), tried)) is not None:
            assert b not in tried
            tried.add(b)
        assert tried == set(backends)


@pytest.mark.parametrize(
    "condition", ["all draining", "all disabled", "all weight 0", "mixed", "all full", "empty"]
)
@pytest.mark.parametrize("algorithm", ALL)
def test_none_when_nothing_usable(algorithm: str, condition: str) -> None:
    model, backends = build([1, 2, 3], max_connections=[1, 1, 1])
    change = {
        "all draining": [_drain] * 3,
        "all disabled": [_disable] * 3,
        "all weight 0": [_weight0] * 3,
        "mixed": [_drain, _down, _full],
        "all full": [_full] * 3,
        "empty": [],
    }[condition]
    for b, fn in zip(backends, change, strict=False):
        fn(model, b)
    pool: list[Backend] = [] if condition == "empty" else backends
    assert set(names(run(algorithm, pool, 20))) == {"-"}


# ---------------------------------------------------------------------------------------
# Property: a pick is always a usable backend not excluded; None only when there is none

backend_state = st.tuples(
    st.integers(0, 5),  # weight
    st.integers(0, 3),  # max_connections
    st.integers(0, 4),  # active connections
    st.sampled_from(list(AdminState)),
    st.sampled_from(list(Health)),
    st.booleans(),  # excluded
)


@settings(max_examples=150, deadline=None)
@given(
    algorithm=st.sampled_from(ALL),
    states=st.lists(backend_state, min_size=0, max_size=6),
    keys=st.lists(st.ip_addresses(v=4).map(str), min_size=1, max_size=8),
)
def test_property_pick_is_usable_and_not_excluded(
    algorithm: str,
    states: list[tuple[int, int, int, AdminState, Health, bool]],
    keys: list[str],
) -> None:
    model, backends = build([s[0] for s in states], max_connections=[s[1] for s in states])
    exclude: set[Backend] = set()
    for b, (_, _, active, admin, health, excluded) in zip(backends, states, strict=True):
        for _ in range(active):
            model.connection_started(b)
        model.set_admin(b, admin, "test")
        model.set_health(b, health, "test")
        if excluded:
            exclude.add(b)
    balancer = make(algorithm)
    for key in keys:
        candidates = [b for b in backends if b.usable and b not in exclude]
        picked = balancer.pick(backends, key, exclude)
        if not candidates:
            assert picked is None
        else:
            assert picked in candidates
            model.connection_started(picked)  # state moves on between picks


# ---------------------------------------------------------------------------------------
# Round robin


def test_round_robin_order_and_skipping() -> None:
    model, backends = build([1, 1, 1, 1])
    rr = RoundRobin()
    assert names([rr.pick(backends) for _ in range(8)]) == "abcdabcd"
    model.set_admin(backends[1], AdminState.DRAINING, "test")
    assert names([rr.pick(backends) for _ in range(6)]) == "acdacd"
    model.set_admin(backends[1], AdminState.READY, "test")
    assert names([rr.pick(backends) for _ in range(4)]) == "abcd"


def test_round_robin_ignores_weights_other_than_zero() -> None:
    _, backends = build([10, 1, 256])
    rr = RoundRobin()
    assert names([rr.pick(backends) for _ in range(6)]) == "abcabc"


# ---------------------------------------------------------------------------------------
# Smooth weighted round robin


@pytest.mark.parametrize(
    ("weights", "cycle"),
    [
        ([5, 1, 1], "aabacaa"),  # nginx's own example
        ([2, 1], "aba"),
        ([1, 1, 1], "abc"),
        ([1, 2], "bab"),
        ([3, 0, 1], "aaca"),
        ([4, 2, 1], "abacaba"),
    ],
)
def test_smooth_wrr_sequence(weights: list[int], cycle: str) -> None:
    _, backends = build(weights)
    wrr = WeightedRoundRobin()
    picks = names([wrr.pick(backends) for _ in range(len(cycle) * 4)])
    assert picks == cycle * 4


def test_smooth_wrr_follows_a_weight_change() -> None:
    model, backends = build([1, 1])
    wrr = WeightedRoundRobin()
    assert names([wrr.pick(backends) for _ in range(4)]) == "abab"
    model.set_weight(backends[0], 3, "test")
    counts = Counter(names([wrr.pick(backends) for _ in range(400)]))
    assert abs(counts["a"] - 300) <= 3 and abs(counts["b"] - 100) <= 3


def test_smooth_wrr_with_exclude_spreads_over_the_rest() -> None:
    _, backends = build([5, 1, 1])
    wrr = WeightedRoundRobin()
    picks = names([wrr.pick(backends, exclude={backends[0]}) for _ in range(10)])
    assert Counter(picks) == {"b": 5, "c": 5}


# ---------------------------------------------------------------------------------------
# Least connections


def test_least_connections_picks_fewest_active() -> None:
    model, backends = build([1, 1, 1])
    a, b, c = backends
    for backend, n in ((a, 3), (b, 1), (c, 2)):
        for _ in range(n):
            model.connection_started(backend)
    lc = LeastConnections()
    assert lc.pick(backends) is b
    model.connection_started(b)
    model.connection_started(b)  # b: 3, c: 2
    assert lc.pick(backends) is c
    for _ in range(3):
        model.connection_ended(a)  # a: 0
    assert lc.pick(backends) is a


@pytest.mark.parametrize("algorithm", ["least_connections", "weighted_least_connections"])
@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_least_connections_cold_start_spreads(algorithm: str, n: int) -> None:
    """All at 0 active, no connection recorded yet (they are still connecting)."""
    _, backends = build([1] * n)
    balancer = make(algorithm)
    picks = [balancer.pick(backends) for _ in range(n)]
    assert len({id(b) for b in picks}) == n


@pytest.mark.parametrize("algorithm", ["least_connections", "weighted_least_connections"])
def test_least_connections_cold_start_with_connections_held(algorithm: str) -> None:
    model, backends = build([1] * 4)
    balancer = make(algorithm)
    picks = []
    for _ in range(8):
        b = balancer.pick(backends)
        assert b is not None
        model.connection_started(b)
        picks.append(b)
    assert [b.active for b in backends] == [2, 2, 2, 2]
    assert len({id(b) for b in picks[:4]}) == 4


def test_least_connections_ties_rotate_among_the_least_loaded() -> None:
    model, backends = build([1, 1, 1])
    model.connection_started(backends[0])
    lc = LeastConnections()
    assert names([lc.pick(backends) for _ in range(6)]) == "bcbcbc"


def test_least_connections_ignores_weights() -> None:
    model, backends = build([10, 1])
    lc = LeastConnections()
    model.connection_started(backends[0])
    assert lc.pick(backends) is backends[1]


# ---------------------------------------------------------------------------------------
# Weighted least connections


def test_wlc_idle_heavy_backend_wins() -> None:
    _, backends = build([1, 10])
    for _ in range(5):
        assert WeightedLeastConnections().pick(backends) is backends[1]


@pytest.mark.parametrize(
    ("weights", "n"),
    [([3, 1], 400), ([1, 2, 5], 800), ([10, 10, 1], 210), ([256, 1], 257)],
)
def test_wlc_held_connections_follow_weights(weights: list[int], n: int) -> None:
    model, backends = build(weights)
    wlc = WeightedLeastConnections()
    for _ in range(n):
        b = wlc.pick(backends)
        assert b is not None
        model.connection_started(b)
    total = sum(weights)
    for b, w in zip(backends, weights, strict=True):
        assert abs(b.active - n * w / total) <= 1, [x.active for x in backends]


def test_wlc_compares_load_per_weight() -> None:
    model, backends = build([4, 1])
    heavy, light = backends
    for _ in range(3):
        model.connection_started(heavy)  # (3+1)/4 = 1.0
    model.connection_started(light)  # (1+1)/1 = 2.0
    assert WeightedLeastConnections().pick(backends) is heavy
    model.connection_started(heavy)  # (4+1)/4 = 1.25 < 2.0
    assert WeightedLeastConnections().pick(backends) is heavy
    for _ in range(4):
        model.connection_started(heavy)  # (8+1)/4 = 2.25 > 2.0
    assert WeightedLeastConnections().pick(backends) is light


# ---------------------------------------------------------------------------------------
# Source IP hash

N_CLIENTS = 20000  # for shares of the whole population
N_MOVES = 10000  # for who-moves-where; about 2000 clients move when one of five leaves


def assignment(
    backends: Sequence[Backend], n: int = N_CLIENTS, balancer: SourceIPHash | None = None
) -> list[str]:
    h = balancer or SourceIPHash()
    return [names([h.pick(backends, client(i))]) for i in range(n)]


@pytest.fixture(scope="module")
def five_equal() -> list[str]:
    """Where N_MOVES clients go over five ready backends a..e of weight 1 in pool p."""
    _, backends = build([1, 1, 1, 1, 1])
    return assignment(backends, N_MOVES)


def test_hash_same_client_same_backend(five_equal: list[str]) -> None:
    _, backends = build([1, 1, 1, 1, 1])
    # a fresh balancer (a restart) sends every client where it went before
    assert assignment(backends, 500, SourceIPHash()) == five_equal[:500]
    h = SourceIPHash()
    for i in range(50):
        assert len({h.pick(backends, client(i)) for _ in range(20)}) == 1


def test_hash_does_not_depend_on_list_order(five_equal: list[str]) -> None:
    _, backends = build([1, 1, 1, 1, 1])
    assert assignment(list(reversed(backends)), 2000) == five_equal[:2000]


def test_hash_ipv6_clients() -> None:
    _, backends = build([1, 1, 1])
    h = SourceIPHash()
    picks = Counter(names([h.pick(backends, f"2001:db8::{i:x}")]) for i in range(3000))
    assert set(picks) == {"a", "b", "c"}
    assert all(abs(n / 3000 - 1 / 3) < 0.05 for n in picks.values()), picks


def test_hash_equal_weights_spread_evenly(five_equal: list[str]) -> None:
    counts = Counter(five_equal)
    for name in "abcde":
        assert abs(counts[name] / N_MOVES - 0.2) < 0.02, counts


@pytest.mark.parametrize("weights", [[1, 2, 3, 4], [256, 128, 64, 1]])
def test_hash_distribution_follows_weights(weights: list[int]) -> None:
    _, backends = build(weights)
    counts = Counter(assignment(backends))
    total = sum(weights)
    for name, w in zip(NAMES, weights, strict=False):
        assert abs(counts[name] / N_CLIENTS - w / total) < 0.02, counts


@pytest.mark.parametrize("condition", [*UNUSABLE, "removed from the list"])
def test_hash_consistency_when_one_of_five_leaves(condition: str, five_equal: list[str]) -> None:
    model, backends = build([1, 1, 1, 1, 1], max_connections=[0, 0, 1, 0, 0])
    leaving = backends[2]
    before = five_equal
    if condition == "removed from the list":
        after = assignment([b for b in backends if b is not leaving], N_MOVES)
    else:
        UNUSABLE[condition](model, leaving)
        after = assignment(backends, N_MOVES)
    moved = [(old, new) for old, new in zip(before, after, strict=True) if old != new]
    # exactly the clients that were on the leaving backend move, and nobody else
    assert [old for old, _ in moved if old != "c"] == []
    assert len(moved) == before.count("c")
    assert "c" not in after
    # ...and they spread roughly evenly over the four that remain
    destinations = Counter(new for _, new in moved)
    assert set(destinations) == {"a", "b", "d", "e"}
    for name in "abde":
        assert abs(destinations[name] / len(moved) - 0.25) < 0.05, destinations


def test_hash_clients_come_back_when_the_backend_returns(five_equal: list[str]) -> None:
    model, backends = build([1, 1, 1, 1, 1])
    model.set_admin(backends[3], AdminState.DRAINING, "test")
    assert assignment(backends, 3000) != five_equal[:3000]
    model.set_admin(backends[3], AdminState.READY, "test")
    assert assignment(backends, 3000) == five_equal[:3000]


def test_hash_adding_a_backend_moves_clients_only_to_it(five_equal: list[str]) -> None:
    _, six = build([1, 1, 1, 1, 1, 1])
    after = assignment(six, N_MOVES)
    moved = [(old, new) for old, new in zip(five_equal, after, strict=True) if old != new]
    assert [new for _, new in moved if new != "f"] == []
    assert abs(len(moved) / N_MOVES - 1 / 6) < 0.02


def test_hash_raising_a_weight_moves_clients_only_to_that_backend() -> None:
    model, backends = build([1, 1, 1, 1])
    before = assignment(backends, N_MOVES)
    model.set_weight(backends[0], 3, "test")
    after = assignment(backends, N_MOVES)
    moved = [(old, new) for old, new in zip(before, after, strict=True) if old != new]
    assert moved
    assert [new for _, new in moved if new != "a"] == []
    assert abs(after.count("a") / N_MOVES - 3 / 6) < 0.02
