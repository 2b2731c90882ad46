"""The client side of HTTP/1.1 toward backends, shared by the proxy and the HTTP health
checks, so that a check sees a backend the way the proxy does.

Requests are written by `fast.request_head`. Responses are accepted by the same parser in
both: h11, within the same head limit; the proxy's fast path (fast.parse_response) only
takes a strict subset of what h11 accepts, and hands everything else to `response_parser`.
"""

from __future__ import annotations

import h11

from tuilb.l7 import fast

MAX_RESPONSE_HEAD = 65536  # bytes of a backend's response head (status line and headers)

request_head = fast.request_head


def response_parser(method: bytes, target: bytes, received: bytes = b"") -> h11.Connection:
    """An h11 client connection that has sent `method target` (its bytes went out by
    other means) and been fed `received`: ready to parse the response. h11 needs the
    method to frame the answer (no body for HEAD); the request's headers do not matter
    to it, as long as they do not ask to close."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD)
    conn.send(h11.Request(method=method, target=target, headers=[(b"host", b"backend")]))
    conn.send(h11.EndOfMessage())
    if received:
        conn.receive_data(received)
    return conn
