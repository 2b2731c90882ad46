"""The HTTP proxy's fast path: an ordinary request and its response without h11.

`HttpProxy` hands a request here when its whole head arrived and `fast.parse_request`
took it (HTTP/1.1, a common method, origin-form target, no Expect/Upgrade/chunked). The
same rules as on the h11 path decide (rules.check_request, routing, the forwarded headers);
whatever the fast path would have to refuse (a check failing, no route, a body over the
limit) is DECLINED before anything is sent or counted, and the h11 path takes the same
bytes and answers as it always does. So refusals have one implementation, and the fast
path only ever forwards.

Toward the backend the request head is written by hand (fast.request_head), the body
copied by count. The response head is matched by `fast.parse_response`; an ordinary one
(a final status with Content-Length) is relayed by count, head and the first body bytes in
one send. Any other response (chunked, close-delimited, 1xx, 204/304, odd syntax) is parsed
by an h11 client connection primed with the request, and relayed with framing written here
(chunked toward the client when the length is unknown).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import h11
import trio
from trio.lowlevel import checkpoint

from tuilb.l7 import client, fast, rules
from tuilb.l7.client import MAX_RESPONSE_HEAD
from tuilb.l7.shared import (
    IDEMPOTENT,
    ClientGone,
    Fail,
    Req,
    Retry,
    receive_until,
    send_client,
)
from tuilb.l7.stream import SocketStream, Stream
from tuilb.l7.timers import Watch
from tuilb.l7.upstream import Upstream
from tuilb.model import AdminState, Backend, Pool

if TYPE_CHECKING:
    from tuilb.l7.proxy import HttpProxy


class _Declined:
    """exchange(): not for the fast path after all; the h11 path takes the same bytes."""


DECLINED = _Declined()


class _Plan:
    """Where an accepted request goes and what is sent there."""

    __slots__ = ("head", "pool", "route")

    def __init__(self, pool: Pool, route: int | None, head: bytes) -> None:
        self.pool = pool
        self.route = route
        self.head = head  # the request head toward the backend


def _plan(proxy: HttpProxy, head: fast.RequestHead, client_ip: str) -> _Plan | None:
    """The request checked, routed and rewritten; None when the h11 path must answer it."""
    headers = head.headers
    if rules.check_request(head.method, head.target, headers, proxy.limits, http_version=b"1.1"):
        return None
    host_header = next(value for name, value in headers if name == b"host")  # exactly one
    pool_name, index, max_body = proxy.route(head.method, head.target, host_header, headers)
    if pool_name is None:
        return None  # 404 (with the body read past): the h11 path's job
    if max_body and head.length is not None and head.length > max_body:
        return None  # 413
    forward = rules.forward_request_headers(
        headers,
        client_ip=client_ip,
        proto="https" if proxy.tls is not None else "http",
        host=host_header,
        trusted=proxy._trusted(client_ip),
        upgrade=False,
        body=None if head.length is None else "length",
        length=head.length,
    )
    out = fast.request_head(head.method, head.target, forward)
    return _Plan(proxy.model.pools[pool_name], index, out)


async def exchange(
    proxy: HttpProxy,
    stream: Stream,
    head: fast.RequestHead,
    data: bytes,
    client_ip: str,
    watch: Watch,
) -> bytes | _Declined | None:
    """Serve the request `data` begins with. Returns the bytes received past it (the next
    request's beginning) when the connection stays open, None when it must close, DECLINED
    (nothing sent, nothing counted) when the h11 path must take it."""
    plan = _plan(proxy, head, client_ip)
    if plan is None:
        return DECLINED
    proxy.model.route_hit(proxy.listener.name, plan.route)
    req = Req(head.method, head.target, trio.current_time())
    try:
        return await _forward(proxy, stream, head, plan, data, client_ip, req, watch)
    except Fail as fail:
        await _refuse(proxy, stream, fail.status, fail.detail, req)
        return None
    finally:
        if proxy.access is not None:
            proxy._access_line(client_ip, req)


async def _forward(
    proxy: HttpProxy,
    stream: Stream,
    head: fast.RequestHead,
    plan: _Plan,
    data: bytes,
    client_ip: str,
    req: Req,
    watch: Watch,
) -> bytes | None:
    model = proxy.model
    length = head.length or 0
    body = data[head.size : head.size + length]
    after = data[head.size + length :]  # pipelined: the next request's bytes
    may_retry = head.method in IDEMPOTENT and not length
    is_head = head.method == b"HEAD"
    tried: set[Backend] = set()
    fresh = False  # the retry: not another pooled connection
    while True:
        upstream = await proxy._upstream(plan.pool, client_ip, tried, fresh)
        backend = upstream.backend
        try:
            sent_at = waiting_from = trio.current_time()
            await proxy._to_backend(upstream, [plan.head, body], first=True)
            if len(body) < length:
                after = await _pass_body(proxy, stream, upstream, length - len(body), watch)
                waiting_from = trio.current_time()  # `response` counts from the body's end
            parsed, received = await _response_head(proxy, upstream, waiting_from, is_head, watch)
            if parsed is fast.SLOW:
                response = await _h11_response(proxy, upstream, head, received, waiting_from)
                status = response.status_code
            else:
                assert isinstance(parsed, fast.ResponseHead)
                status = parsed.status
        except Retry:
            model.connection_ended(backend)
            upstream.close()
            if may_retry:
                may_retry, fresh = False, True
                continue
            raise Fail(502, "the backend closed the connection") from None
        except BaseException:
            model.connection_ended(backend)
            upstream.close()
            raise
        break
    try:
        model.response(backend, status, trio.current_time() - sent_at)
        req.backend = backend.target
        close = head.close or proxy.closing or backend.admin is not AdminState.READY
        if isinstance(parsed, fast.ResponseHead):
            clean = await _relay(proxy, stream, upstream, parsed, received, close, req, watch)
        else:
            clean = await _relay_h11(proxy, stream, upstream, response, is_head, close, req, watch)
    except BaseException:
        model.connection_ended(backend)
        upstream.close()
        raise
    model.connection_ok(backend)
    model.connection_ended(backend)
    if plan.pool.config.send_proxy:
        upstream.close()  # its PROXY header spoke for this client: never for another
    else:
        proxy.upstreams.give(upstream, trio.current_time(), clean)
    return None if close else after


async def _receive(
    proxy: HttpProxy, stream: Stream, watch: Watch, deadline: float, wait_first: bool = False
) -> bytes | None:
    """`stream`'s next bytes by `deadline` (None: it passed); timed by the engine's swept
    timers on a plain socket, by a cancel scope otherwise (TLS)."""
    timers = proxy.timers
    if timers is not None and type(stream) is SocketStream:
        return await timers.receive(stream, watch, deadline, wait_first)
    return await receive_until(stream, deadline)


async def _pass_body(
    proxy: HttpProxy, stream: Stream, upstream: Upstream, left: int, watch: Watch
) -> bytes:
    """Copy the rest of a Content-Length body to the backend; the bytes past it."""
    timeout = proxy.timeouts.body
    data = part = b""
    while left:
        received = await _receive(proxy, stream, watch, trio.current_time() + timeout)
        if received is None:
            raise Fail(408, "request body too slow")
        if not received:
            raise ClientGone
        data = received
        part = data[:left]
        left -= len(part)
        await proxy._to_backend(upstream, [part], first=False)
        await checkpoint()  # a body in full flow must not starve other connections
    return data[len(part) :]


async def _response_head(
    proxy: HttpProxy, upstream: Upstream, since: float, head_request: bool, watch: Watch
) -> tuple[fast.ResponseHead | fast._Slow, bytes]:
    """The backend's first bytes (within `timeouts.response` of `since`, the request's end)
    and what fast.parse_response makes of them. A head that did not come whole in that one
    read is SLOW: h11 reads the rest, resuming its search where it stopped (rescanning
    here would cost a trickling backend's every byte)."""
    backend = upstream.backend
    try:
        data = await _receive(
            proxy, upstream.stream, watch, since + proxy.timeouts.response, wait_first=True
        )
    except OSError:
        if upstream.reused:
            raise Retry from None
        proxy.model.backend_reset(backend)
        raise Fail(502, "the backend reset the connection") from None
    if data is None:
        proxy._error("response_timeout", backend, "no response in time")
        raise Fail(504, "the backend did not answer in time")
    if not data:
        if upstream.reused:
            raise Retry
        proxy.model.backend_reset(backend)
        raise Fail(502, "the backend closed the connection before its response")
    backend.bytes_out += len(data)
    parsed = fast.parse_response(data, head_request)
    if parsed is fast.NEED_MORE:
        return fast.SLOW, data
    if isinstance(parsed, fast.ResponseHead) and parsed.size > MAX_RESPONSE_HEAD:
        raise Fail(502, f"the backend's response head is over {MAX_RESPONSE_HEAD}")
    return parsed, data


async def _relay(
    proxy: HttpProxy,
    stream: Stream,
    upstream: Upstream,
    response: fast.ResponseHead,
    received: bytes,
    close: bool,
    req: Req,
    watch: Watch,
) -> bool:
    """Pass an ordinary response on; True when the backend connection ended clean."""
    req.status = status = response.status
    proxy.model.listener_response(proxy.listener.name, status, ours=False)
    headers = rules.forward_response_headers(response.headers, close=close, upgrade=False)
    end = response.size + response.length
    body = received[response.size : end]
    clean = not response.close and len(received) <= end  # nothing unasked-for behind it
    req.bytes += len(body)
    await send_client(stream, fast.response_head(status, response.reason, headers) + body)
    left = end - len(received)
    if left <= 0:
        return clean
    backend = upstream.backend
    timeout = proxy.timeouts.body
    while left > 0:
        try:
            data = await _receive(proxy, upstream.stream, watch, trio.current_time() + timeout)
        except OSError:
            data = None
        if not data:  # stalled, reset or closed mid-body: the client must see a truncation
            proxy.model.backend_reset(backend)
            raise ClientGone
        backend.bytes_out += len(data)
        if len(data) > left:
            clean = False
            data = data[:left]
        left -= len(data)
        req.bytes += len(data)
        await checkpoint()  # a body in full flow must not starve other connections
        await send_client(stream, data)
    return clean


async def _h11_response(
    proxy: HttpProxy, upstream: Upstream, head: fast.RequestHead, received: bytes, since: float
) -> h11.Response:
    """A response the fast path does not parse: through an h11 client connection that is
    told the request (method and target are what h11 needs to frame the answer)."""
    upstream.conn = client.response_parser(head.method, head.target, received)
    deadline = since + proxy.timeouts.response  # one response timeout in all, 1xx included
    response = await proxy._response_head(upstream, got_bytes=True, deadline=deadline)
    if isinstance(response, h11.InformationalResponse):  # a 101 nobody asked for
        raise Fail(502, "the backend switched protocols unasked")
    return response


async def _relay_h11(
    proxy: HttpProxy,
    stream: Stream,
    upstream: Upstream,
    response: h11.Response,
    is_head: bool,
    close: bool,
    req: Req,
    watch: Watch,
) -> bool:
    """Pass on a response h11 parsed: chunked toward the client when its length is not
    known. True when the backend connection ended clean."""
    req.status = status = response.status_code
    proxy.model.listener_response(proxy.listener.name, status, ours=False)
    headers = rules.forward_response_headers(list(response.headers), close=close, upgrade=False)
    # Framing as h11 would write it: chunked without a length, also on the answer to HEAD
    # (which says what a GET would get, but sends no body).
    framed = status not in (204, 304) and all(name != b"content-length" for name, _ in headers)
    if framed:
        headers.append((b"transfer-encoding", b"chunked"))
    chunked = framed and not is_head
    pending = [fast.response_head(status, response.reason, headers)]
    conn = upstream.conn
    backend = upstream.backend
    timeout = proxy.timeouts.body
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            event = None
        if event is h11.NEED_DATA:
            await send_client(stream, b"".join(pending))
            pending = []
            try:
                data = await _receive(proxy, upstream.stream, watch, trio.current_time() + timeout)
            except OSError:
                data = None
            if data is None:
                proxy.model.backend_reset(backend)
                raise ClientGone
            backend.bytes_out += len(data)
            conn.receive_data(data)
            await checkpoint()  # a body in full flow must not starve other connections
        elif isinstance(event, h11.Data):
            req.bytes += len(event.data)
            if event.data:
                pending.append(fast.chunk(event.data) if chunked else event.data)
        elif isinstance(event, h11.EndOfMessage):
            if chunked:
                pending.append(fast.LAST_CHUNK)
            await send_client(stream, b"".join(pending))
            return (
                conn.our_state is h11.DONE
                and conn.their_state is h11.DONE
                and not conn.trailing_data[0]
            )
        else:  # broken off mid-body: close the client too, so the truncation shows
            proxy.model.backend_reset(backend)
            await send_client(stream, b"".join(pending))
            raise ClientGone


async def _refuse(proxy: HttpProxy, stream: Stream, status: int, detail: str, req: Req) -> None:
    """tuilb's own error answer before any response byte went out; the connection closes."""
    headers, body = rules.error_response(status, detail)
    if (b"connection", b"close") not in headers:
        headers.append((b"connection", b"close"))
    proxy.model.listener_response(proxy.listener.name, status, ours=True)
    if req.method == b"HEAD":
        body = b""  # the length, but no body
    req.status, req.bytes = status, len(body)
    try:
        await stream.send(
            fast.response_head(status, rules.reason_phrase(status).encode(), headers) + body
        )
    except OSError:
        pass
