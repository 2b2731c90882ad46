"""The UDP flow table with a fake clock: stickiness, expiry, the limit, moves and drain."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection

from tuilb import balance
from tuilb.config import Address, BackendConfig, PoolConfig
from tuilb.flows import FlowTable, Outcome, stays
from tuilb.health import Health
from tuilb.model import AdminState, Backend, Model


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def setup(
    n: int = 3, idle: float = 60.0, max_flows: int = 100, algorithm: str = "round_robin"
) -> tuple[FlowTable, Model, Clock]:
    backends = tuple(BackendConfig(f"b{i}", Address("127.0.0.1", 9000 + i)) for i in range(n))
    model = Model([PoolConfig("app", algorithm, backends)])
    pool = model.pools["app"]
    balancer = balance.make(algorithm)

    def pick(key: str, exclude: Collection[Backend]) -> Backend | None:
        return balancer.pick(pool.backends, key, exclude)

    clock = Clock()
    return FlowTable(pick, idle=idle, max_flows=max_flows, clock=clock), model, clock


def test_a_flow_sticks_to_its_backend():
    table, _, _ = setup()
    first = table.route(("10.0.0.1", 5000))
    assert first.outcome is Outcome.NEW and first.flow is not None
    for _ in range(10):
        again = table.route(("10.0.0.1", 5000))
        assert again.outcome is Outcome.SAME and again.flow is first.flow
    assert first.flow.datagrams == 11 and len(table) == 1


def test_new_flows_spread_with_the_balancer():
    table, _, _ = setup()
    names = Counter()
    for port in range(30):
        routed = table.route(("10.0.0.1", 5000 + port))
        assert routed.flow is not None
        names[routed.flow.backend.name] += 1
    assert names == {"b0": 10, "b1": 10, "b2": 10}


def test_same_ip_other_port_is_another_flow():
    table, _, _ = setup()
    a = table.route(("10.0.0.1", 1)).flow
    b = table.route(("10.0.0.1", 2)).flow
    assert a is not None and b is not None and a is not b and a.backend is not b.backend


def test_idle_flows_expire_and_activity_either_way_keeps_them():
    table, _, clock = setup(idle=10)
    quiet = table.route(("10.0.0.1", 1)).flow
    busy = table.route(("10.0.0.2", 1)).flow
    answered = table.route(("10.0.0.3", 1)).flow
    assert quiet is not None and busy is not None and answered is not None
    assert table.next_expiry() == 110
    clock.now += 6
    table.route(("10.0.0.2", 1))
    table.reply(answered)
    clock.now += 4  # quiet: 10 s idle; the others 4 s
    assert table.expire() == [quiet]
    assert table.next_expiry() == 116
    assert table.expire() == []
    clock.now += 5.9
    assert table.expire() == []
    clock.now += 0.1
    assert table.expire() == [busy, answered]
    assert len(table) == 0 and table.next_expiry() is None
    # an expired key starts a new flow
    assert table.route(("10.0.0.1", 1)).outcome is Outcome.NEW


def test_a_reply_for_a_flow_no_longer_in_the_table_changes_nothing():
    table, _, clock = setup(idle=10)
    flow = table.route(("10.0.0.1", 1)).flow
    assert flow is not None
    clock.now += 10
    assert table.expire() == [flow]
    table.reply(flow)
    assert len(table) == 0


def test_flows_beyond_the_limit_are_refused_and_counted():
    table, _, clock = setup(max_flows=2, idle=10)
    assert table.route(("10.0.0.1", 1)).outcome is Outcome.NEW
    assert table.route(("10.0.0.2", 1)).outcome is Outcome.NEW
    refused = table.route(("10.0.0.3", 1))
    assert refused.outcome is Outcome.FULL and refused.flow is None
    assert table.refused == 1 and len(table) == 2
    # existing flows still pass
    assert table.route(("10.0.0.1", 1)).outcome is Outcome.SAME
    clock.now += 10
    assert len(table.expire()) == 2
    assert table.route(("10.0.0.3", 1)).outcome is Outcome.NEW
    assert table.refused == 1


def test_draining_keeps_existing_flows_new_ones_go_elsewhere():
    table, model, _ = setup(n=2)
    flow = table.route(("10.0.0.1", 1)).flow
    assert flow is not None
    drained = flow.backend
    model.set_admin(drained, AdminState.DRAINING, "test")
    for _ in range(3):
        assert table.route(("10.0.0.1", 1)).outcome is Outcome.SAME
    assert flow.backend is drained
    for port in range(2, 8):
        new = table.route(("10.0.0.1", port)).flow
        assert new is not None and new.backend is not drained
    assert table.moved == 0


def test_disabled_backend_moves_its_flow_on_the_next_datagram():
    table, model, _ = setup(n=2)
    flow = table.route(("10.0.0.1", 1)).flow
    assert flow is not None
    old = flow.backend
    model.set_admin(old, AdminState.DISABLED, "test")
    moved = table.route(("10.0.0.1", 1))
    assert moved.outcome is Outcome.MOVED and moved.flow is flow and moved.previous is old
    assert flow.backend is not old and table.moved == 1
    assert table.route(("10.0.0.1", 1)).outcome is Outcome.SAME


def test_down_or_ejected_backend_moves_its_flow():
    table, model, _ = setup(n=3)
    a = table.route(("10.0.0.1", 1)).flow
    b = table.route(("10.0.0.2", 1)).flow
    assert a is not None and b is not None
    model.set_health(a.backend, Health.DOWN, "test")
    b.backend.ejected = True
    assert table.route(("10.0.0.1", 1)).outcome is Outcome.MOVED
    assert table.route(("10.0.0.2", 1)).outcome is Outcome.MOVED
    assert table.moved == 2
    assert a.backend.name == b.backend.name == "b2"


def test_a_flow_with_nowhere_to_go_is_removed():
    table, model, _ = setup(n=1)
    flow = table.route(("10.0.0.1", 1)).flow
    assert flow is not None
    backend = flow.backend
    model.set_admin(backend, AdminState.DISABLED, "test")
    gone = table.route(("10.0.0.1", 1))
    assert gone.outcome is Outcome.NO_BACKEND and gone.flow is flow and gone.previous is backend
    assert len(table) == 0 and table.unrouted == 1
    fresh = table.route(("10.0.0.1", 1))
    assert fresh.outcome is Outcome.NO_BACKEND and fresh.flow is None
    assert table.unrouted == 2


def test_source_ip_hash_keeps_a_clients_ports_together():
    table, _, _ = setup(n=4, algorithm="source_ip_hash")
    flows = [table.route(("10.9.8.7", port)).flow for port in range(20)]
    assert len({f.backend.name for f in flows if f is not None}) == 1


def test_stays():
    _, model, _ = setup(n=1)
    backend = model.pools["app"].backends[0]
    assert stays(backend)
    model.set_admin(backend, AdminState.DRAINING, "t")
    assert stays(backend)
    model.set_weight(backend, 0, "t")
    assert stays(backend)
    model.set_admin(backend, AdminState.DISABLED, "t")
    assert not stays(backend)


def test_remove_and_clear():
    table, _, _ = setup()
    a = table.route(("10.0.0.1", 1)).flow
    b = table.route(("10.0.0.2", 1)).flow
    assert a is not None and b is not None
    assert table.remove(a) and not table.remove(a)
    assert table.get(("10.0.0.2", 1)) is b
    assert table.clear() == [b] and len(table) == 0
