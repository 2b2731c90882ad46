"""The admin API's decisions, pure: a request (method, path, query, headers, body) in, a
reply (status, JSON) out. The I/O shell is admin.py; `tuilb ctl` is its client.

Mutations build the same command objects as the keyboard (control.REGISTRY) and are
recorded with the source "admin API". Rules: mutations are POST only (GET on them: 405),
an unknown pool or backend is 404, a bad weight 400, a missing or wrong token 401 (when a
token is configured), and a Host header that is not the admin's own address is refused
(403), so a web page in a browser cannot reach the API through DNS rebinding.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import parse_qs, unquote

from tuilb import control
from tuilb.config import Config
from tuilb.errors import CommandError
from tuilb.model import BackendSnapshot, Event, Snapshot
from tuilb.stats import Rates

API = "/api/v1"
ACTIONS = ("drain", "enable", "disable", "weight", "reset")
MAX_BODY = 65536


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: Any  # JSON-able, or str for text (metrics)
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()

    def payload(self) -> bytes:
        if isinstance(self.body, str):
            return self.body.encode()
        return (json.dumps(self.body, indent=1) + "\n").encode()


@dataclass
class Context:
    """What the API may read and do; the shell provides it (tests provide fakes)."""

    config: Config
    snapshot: Callable[[], Snapshot]
    events_since: Callable[[int], list[Event]]
    apply: Callable[[control.Command], str]  # raises CommandError
    allowed_hosts: frozenset[str]  # lower-case Host values accepted; empty: any (unix socket)
    token: str | None = None
    metrics: Callable[[], str] | None = None
    rates: Callable[[], dict[str, Rates]] | None = None  # per backend, over the last second
    reload: Callable[[], str] | None = None  # raises CommandError
    current_config: Callable[[], Config] | None = None  # the config in force after reloads


def error(status: int, message: str, *headers: tuple[str, str]) -> Reply:
    return Reply(status, {"error": message}, headers=headers)


def handle(
    ctx: Context, method: str, target: str, headers: Mapping[str, str], body: bytes
) -> Reply:
    path, _, query = target.partition("?")
    host = headers.get("host", "").lower()
    if ctx.allowed_hosts and host not in ctx.allowed_hosts:
        return error(403, f"Host {host!r} is not this admin address")
    if path == "/metrics":
        if method != "GET":
            return error(405, "use GET", ("Allow", "GET"))
        if ctx.metrics is None:
            return error(404, "no metrics")
        return Reply(200, ctx.metrics(), "text/plain; version=0.0.4; charset=utf-8")
    if path == f"{API}/status":
        if method != "GET":
            return error(405, "use GET", ("Allow", "GET"))
        config = ctx.current_config() if ctx.current_config else ctx.config
        return Reply(200, status(config, ctx.snapshot(), ctx.rates() if ctx.rates else {}))
    if path == f"{API}/events":
        if method != "GET":
            return error(405, "use GET", ("Allow", "GET"))
        try:
            since = int(parse_qs(query).get("since", ["0"])[0])
        except ValueError:
            return error(400, "since must be an event id (an integer)")
        return Reply(200, {"events": [event_json(e) for e in ctx.events_since(since)]})
    if path == f"{API}/reload" or path.startswith(f"{API}/backends/"):
        if method != "POST":
            return error(405, "changes are POST only", ("Allow", "POST"))
        denied = _check_token(ctx, headers)
        if denied is not None:
            return denied
        if path == f"{API}/reload":
            if ctx.reload is None:
                return error(501, "this tuilb cannot reload")
            try:
                return Reply(200, {"result": ctx.reload()})
            except CommandError as exc:
                return error(400, str(exc))
        return _backend_action(ctx, path, body)
    return error(404, f"no such endpoint: {path}")


def _check_token(ctx: Context, headers: Mapping[str, str]) -> Reply | None:
    if ctx.token is None:
        return None
    given = headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        value.strip().encode(), ctx.token.encode()
    ):
        return error(401, "a valid token is needed", ("WWW-Authenticate", 'Bearer realm="tuilb"'))
    return None


def _backend_action(ctx: Context, path: str, body: bytes) -> Reply:
    parts = path[len(f"{API}/backends/") :].split("/")
    if len(parts) != 3 or parts[2] not in ACTIONS:
        return error(404, f"expected {API}/backends/POOL/BACKEND/({'|'.join(ACTIONS)})")
    pool, name, action = unquote(parts[0]), unquote(parts[1]), parts[2]
    target = f"{pool}/{name}"
    try:
        ctx.snapshot().backend(target)
    except KeyError:
        return error(404, f"no backend {target!r}")
    try:
        if action == "weight":
            command: control.Command = control.build("weight", [target, _weight_of(body)])
        else:
            command = control.build(action, [target])
        message = ctx.apply(command)
    except CommandError as exc:
        return error(400, str(exc))
    return Reply(200, {"result": message, "backend": backend_json(ctx.snapshot().backend(target))})


def _weight_of(body: bytes) -> str:
    try:
        data = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise CommandError(
            'the body must be JSON, e.g. {"weight": 5} or {"weight": "+10"}'
        ) from None
    weight = data.get("weight") if isinstance(data, dict) else None
    if isinstance(weight, bool) or not isinstance(weight, int | str):
        raise CommandError('give {"weight": N}, {"weight": "+N"} or {"weight": "-N"}')
    return str(weight)


# -- JSON shapes ----------------------------------------------------------------------------


def status(config: Config, snap: Snapshot, rates: dict[str, Rates] | None = None) -> dict[str, Any]:
    return {
        "listeners": [
            {
                "name": listener.name,
                "bind": str(listener.bind),
                "protocol": listener.protocol,
                "pool": listener.pool,
            }
            for listener in config.listeners
        ],
        "pools": [
            {
                "name": pool.name,
                "algorithm": pool.algorithm,
                "refused": pool.refused,
                "backends": [
                    backend_json(b, (rates or {}).get(f"{pool.name}/{b.name}"))
                    for b in pool.backends
                ],
            }
            for pool in snap.pools
        ],
        "http": [asdict(listener) for listener in snap.listeners],
    }


def backend_json(b: BackendSnapshot, rates: Rates | None = None) -> dict[str, Any]:
    last = b.last_check
    latency = dict(zip(("p50", "p90", "p99"), b.latency, strict=False)) if b.latency else None
    return {
        "name": b.name,
        "address": b.address,
        "state": str(b.state),
        "health": str(b.health),
        "health_progress": b.health_progress,
        "check": b.check,
        "last_check": None if last is None else asdict(last),
        "ejected": b.ejected,
        "eject_left": round(b.eject_left, 3),
        "ejections": b.ejections,
        "weight": b.weight,
        "effective_weight": round(b.effective_weight, 3),
        "config_weight": b.config_weight,
        "slow_start": round(b.slow_start, 3),
        "max_connections": b.max_connections,
        "active_connections": b.active_connections,
        "total_connections": b.total_connections,
        "failed_connects": b.failed_connects,
        "resets": b.resets,
        "bytes_in": b.bytes_in,
        "bytes_out": b.bytes_out,
        "requests": b.requests,
        "responses": dict(zip(("1xx", "2xx", "3xx", "4xx", "5xx"), b.responses, strict=True)),
        "latency_seconds": latency,
        "rates": None
        if rates is None
        else {
            "connections_per_second": round(rates.connections, 3),
            "requests_per_second": round(rates.requests, 3),
            "failures_per_second": round(rates.failures, 3),
            "bytes_in_per_second": round(rates.bytes_in, 1),
            "bytes_out_per_second": round(rates.bytes_out, 1),
        },
        "eligible": b.eligible,
        "drained": b.drained,
        "last_error": b.last_error,
    }


def event_json(e: Event) -> dict[str, Any]:
    return {
        "id": e.id,
        "ts": e.ts,
        "target": e.target,
        "kind": e.kind,
        "old": str(e.old),
        "new": str(e.new),
        "cause": e.cause,
    }
