"""Prometheus metrics, read from the model at each scrape (no counters of our own to keep
in sync) and written in the exposition format by the prometheus-client library."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from tuilb.model import LATENCY_BUCKETS, AdminState, Health, Model

_LABELS = ["pool", "backend"]
_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


class ModelCollector:
    def __init__(self, model: Model) -> None:
        self.model = model

    def collect(self) -> Iterator[Metric]:
        f = _families()
        for pool in self.model.pools.values():
            f["refused"].add_metric([pool.name], pool.refused)
            for b in pool.backends:
                labels = [pool.name, b.name]
                for key, value in (
                    ("active", b.active),
                    ("total", b.total),
                    ("failed", b.failed_connects),
                    ("resets", b.resets),
                    ("bytes_in", b.bytes_in),
                    ("bytes_out", b.bytes_out),
                    ("weight", b.weight),
                    ("effective", b.effective_weight),
                    ("eligible", 1.0 if b.eligible else 0.0),
                    ("ejected", 1.0 if b.ejected else 0.0),
                    ("ejections", b.ejections),
                ):
                    f[key].add_metric(labels, value)
                for s in AdminState:
                    f["state"].add_metric([*labels, str(s)], 1.0 if b.admin is s else 0.0)
                for h in Health:
                    f["health"].add_metric([*labels, str(h)], 1.0 if b.health is h else 0.0)
                f["checks"].add_metric([*labels, "ok"], b.checks_ok)
                f["checks"].add_metric([*labels, "failed"], b.checks_failed)
                for name, count in zip(_CLASSES, b.responses, strict=True):
                    f["responses"].add_metric([*labels, name], count)
                running = 0
                buckets: list[tuple[str, float]] = []
                bounds = (*(repr(x) for x in LATENCY_BUCKETS), "+Inf")
                for bound, count in zip(bounds, b.latency_buckets, strict=True):
                    running += count
                    buckets.append((bound, running))
                f["latency"].add_metric(labels, buckets, b.latency_sum)
        for stats in self.model.listeners.values():
            f["listener_responses"].add_metric([stats.name], stats.requests)
            f["listener_errors"].add_metric([stats.name], stats.errors)
            f["listener_proxy_rejected"].add_metric([stats.name], stats.proxy_rejected)
            f["listener_sni_rejected"].add_metric([stats.name], stats.sni_rejected)
            f["udp_flows"].add_metric([stats.name], stats.flows)
            f["udp_flows_refused"].add_metric([stats.name], stats.flows_refused)
            f["udp_flows_moved"].add_metric([stats.name], stats.flows_moved)
            f["udp_unrouted"].add_metric([stats.name], stats.unrouted)
        yield from f.values()


_BACKEND = ["pool", "backend"]
# key: (kind, name, help, labels)
_SPECS: dict[str, tuple[str, str, str, list[str]]] = {
    "active": (
        "gauge",
        "backend_active_connections",
        "Connections (HTTP: requests) in flight.",
        _BACKEND,
    ),
    "total": ("counter", "backend_connections", "Connections (HTTP: requests) sent.", _BACKEND),
    "failed": ("counter", "backend_failed_connects", "Failed connects.", _BACKEND),
    "resets": ("counter", "backend_resets", "Connections the backend reset.", _BACKEND),
    "bytes_in": ("counter", "backend_bytes_in", "Bytes toward the backend.", _BACKEND),
    "bytes_out": ("counter", "backend_bytes_out", "Bytes from the backend.", _BACKEND),
    "weight": ("gauge", "backend_weight", "Weight set (config or operator).", _BACKEND),
    "effective": ("gauge", "backend_effective_weight", "Weight in use (slow start).", _BACKEND),
    "eligible": ("gauge", "backend_eligible", "1 when it may take new traffic.", _BACKEND),
    "ejected": ("gauge", "backend_ejected", "1 while passive health has it out.", _BACKEND),
    "ejections": ("counter", "backend_ejections", "Passive-health ejections.", _BACKEND),
    "state": (
        "gauge",
        "backend_state",
        "Operator state: 1 for the current one.",
        [*_BACKEND, "state"],
    ),
    "health": ("gauge", "backend_health", "Health: 1 for the current one.", [*_BACKEND, "health"]),
    "checks": ("counter", "backend_checks", "Active checks by result.", [*_BACKEND, "result"]),
    "responses": (
        "counter",
        "backend_http_responses",
        "HTTP responses by class.",
        [*_BACKEND, "class"],
    ),
    "latency": (
        "histogram",
        "backend_http_response_seconds",
        "Request sent to response head.",
        _BACKEND,
    ),
    "refused": ("counter", "pool_refused", "Connections refused: no usable backend.", ["pool"]),
    "listener_responses": (
        "counter",
        "listener_http_responses",
        "HTTP responses sent.",
        ["listener"],
    ),
    "listener_errors": (
        "counter",
        "listener_http_errors",
        "5xx, and 4xx tuilb made up.",
        ["listener"],
    ),
    "listener_proxy_rejected": (
        "counter",
        "listener_proxy_rejected",
        "Connections closed for their PROXY header.",
        ["listener"],
    ),
    "listener_sni_rejected": (
        "counter",
        "listener_sni_rejected",
        "Connections closed for their TLS ClientHello.",
        ["listener"],
    ),
    "udp_flows": ("gauge", "listener_udp_flows", "UDP flows now.", ["listener"]),
    "udp_flows_refused": (
        "counter",
        "listener_udp_flows_refused",
        "UDP flows refused for max_flows.",
        ["listener"],
    ),
    "udp_flows_moved": (
        "counter",
        "listener_udp_flows_moved",
        "UDP flows moved off a backend that could not keep them.",
        ["listener"],
    ),
    "udp_unrouted": (
        "counter",
        "listener_udp_unrouted_datagrams",
        "UDP datagrams dropped for want of a usable backend.",
        ["listener"],
    ),
}
_KINDS = {
    "gauge": GaugeMetricFamily,
    "counter": CounterMetricFamily,
    "histogram": HistogramMetricFamily,
}


def _families() -> dict[str, Any]:
    return {
        key: _KINDS[kind](f"tuilb_{name}", text, labels=labels)
        for key, (kind, name, text, labels) in _SPECS.items()
    }


def exposition(model: Model) -> Callable[[], str]:
    """A function that renders the model's metrics in the text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ModelCollector(model))

    def render() -> str:
        return generate_latest(registry).decode()

    return render
