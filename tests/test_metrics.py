"""/metrics: the model's numbers in the Prometheus text format, read back with the
prometheus-client parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tuilb import metrics
from tuilb.config import parse
from tuilb.health import CheckResult
from tuilb.model import AdminState, Health, Model

TEXT = """
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
pool = "app"

[pools.app]
[[pools.app.backends]]
name = "a"
address = "127.0.0.1:9"

[pools.app.health]
rise = 1
fall = 1
"""


def samples(model: Model) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.exposition(model)()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_counters_gauges_and_the_latency_histogram() -> None:
    model = Model(parse(TEXT, "<t>").pools.values())
    a = model.backend("app/a")
    for seconds, status in ((0.0004, 200), (0.003, 200), (0.2, 503)):
        model.connection_started(a)
        model.response(a, status, seconds)
        model.connection_ended(a)
    model.check_result(a, CheckResult(False, "connect refused", 0.001))
    model.set_admin(a, AdminState.DRAINING, "test")
    model.listener_response("web", 503, ours=False)
    got = samples(model)
    ab = (("backend", "a"), ("pool", "app"))
    assert got[("tuilb_backend_connections_total", ab)] == 3
    assert got[("tuilb_backend_http_responses_total", (*ab[:1], ("class", "2xx"), ab[1]))] == 2
    assert got[("tuilb_backend_http_responses_total", (*ab[:1], ("class", "5xx"), ab[1]))] == 1
    assert got[("tuilb_backend_state", (*ab, ("state", "draining")))] == 1
    assert (
        got[("tuilb_backend_health", (("backend", "a"), ("health", "down"), ("pool", "app")))] == 1
    )
    assert a.health is Health.DOWN
    assert got[("tuilb_backend_checks_total", (*ab, ("result", "failed")))] == 1
    bucket = "tuilb_backend_http_response_seconds_bucket"
    assert got[(bucket, (*ab[:1], ("le", "0.001"), ab[1]))] == 1
    assert got[(bucket, (*ab[:1], ("le", "0.005"), ab[1]))] == 2
    assert got[(bucket, (*ab[:1], ("le", "0.25"), ab[1]))] == 3
    assert got[(bucket, (*ab[:1], ("le", "+Inf"), ab[1]))] == 3
    assert got[("tuilb_backend_http_response_seconds_count", ab)] == 3
    assert abs(got[("tuilb_backend_http_response_seconds_sum", ab)] - 0.2034) < 1e-9
    assert got[("tuilb_listener_http_errors_total", (("listener", "web"),))] == 1
    model.proxy_rejected("web")
    model.sni_rejected("web")
    got = samples(model)
    assert got[("tuilb_listener_proxy_rejected_total", (("listener", "web"),))] == 1
    assert got[("tuilb_listener_sni_rejected_total", (("listener", "web"),))] == 1
