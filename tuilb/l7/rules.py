"""Request checks and header rewriting for the HTTP proxy: the decisions, none of the I/O.

Everything here works on what h11 hands over: methods, targets and headers as `bytes`,
header names lower case, values without surrounding whitespace. h11 already refuses some
of what is checked here (differing Content-Length values, a Transfer-Encoding other than
`chunked`, a missing Host on HTTP/1.1); the checks are repeated so that the rules hold
whatever the parser lets through, and so that each refusal carries tuilb's own status.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from http import HTTPStatus
from typing import Literal

from tuilb.httpconf import Limits
from tuilb.l7.route import normalize_host

Headers = Sequence[tuple[bytes, bytes]]
BodyKind = Literal["length", "chunked"]


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a request is refused: the status tuilb answers with, and a short reason for the
    log and the error body (header names in it are escaped, see `_show`)."""

    status: int
    reason: str


# Hop-by-hop: RFC 9110 section 7.6.1, plus Proxy-Connection and Keep-Alive from practice.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
FRAMING = frozenset({b"content-length", b"transfer-encoding"})
FORWARDING = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})
# A name with '_' that becomes one of these when '_' is read as '-' is refused (400). Many
# backends fold the two together (CGI, WSGI, PHP and Rack turn both into HTTP_CONTENT_LENGTH,
# HTTP_X_FORWARDED_FOR, ...), so `content_length` would be framing to the backend but not
# to tuilb, and `x_forwarded_for` would slip a forged client address past the rewrite below.
UNDERSCORE_LOOKALIKES = HOP_BY_HOP | FRAMING | FORWARDING

_TOKEN_CHARS = frozenset(
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_BAD_VALUE_CHARS = frozenset(b"\x00\r\n")
_TARGET_CHARS = frozenset(range(0x21, 0x7F))  # VCHAR, as h11 accepts
_MAX_LENGTH_DIGITS = 18  # below 2**63; more is refused rather than parsed


def _show(raw: bytes, limit: int = 64) -> str:
    """Bytes from a client, printable and bounded, for a reason string or a log line."""
    text = "".join(chr(b) if 0x20 < b < 0x7F and b != 0x5C else f"\\x{b:02x}" for b in raw[:limit])
    return text + ("..." if len(raw) > limit else "")


def _is_token(raw: bytes) -> bool:
    return bool(raw) and _TOKEN_CHARS.issuperset(raw)


def _comma_list(values: list[bytes]) -> list[bytes]:
    """Header lines -> the elements of the comma-separated list they carry (lower case,
    stripped, empty elements dropped as RFC 9110 section 5.6.1 asks of recipients)."""
    out: list[bytes] = []
    for value in values:
        for item in value.split(b","):
            item = item.strip(b" \t").lower()
            if item:
                out.append(item)
    return out


def check_request(
    method: bytes,
    target: bytes,
    headers: Headers,
    limits: Limits,
    *,
    http_version: bytes | None = None,
) -> Problem | None:
    """The refusal for a request head, or None when it may be routed and forwarded.

    In order: 414 request line over `max_request_line` (counted as `METHOD SP target SP
    HTTP/x.y`, without CRLF); 431 more than `max_headers` headers, or more than
    `max_header_bytes` counted as `name: value CRLF` per header (after h11 stripped the
    whitespace, so at most the wire size); 405 CONNECT (tuilb is never a tunnel); 400 a
    target that is not origin-form, absolute-form (http/https) or `*` for OPTIONS; 400 a
    header name that is not a token or a value with CR, LF or NUL; 400 a `_` lookalike of
    a framing, hop-by-hop or forwarding name; 400 no Host on HTTP/1.1, several Host lines,
    or a Host (or absolute-form authority) that `normalize_host` refuses; then framing:
    400 Content-Length and Transfer-Encoding together, 400 Transfer-Encoding on HTTP/1.0,
    400/501 a Transfer-Encoding other than `chunked` (see below), 400 a Content-Length
    that is not digits or whose values differ.

    `http_version` is h11's `Request.http_version` (b"1.0" or b"1.1"); the two rules that
    depend on it (Host required on 1.1, no Transfer-Encoding on 1.0) are skipped without it.
    """
    if len(method) + len(target) + 10 > limits.max_request_line:
        return Problem(414, "request line too long")
    if len(headers) > limits.max_headers:
        return Problem(431, f"more than {limits.max_headers} header fields")
    size = 0
    for name, value in headers:
        size += len(name) + len(value) + 4
    if size > limits.max_header_bytes:
        return Problem(431, f"header fields over {limits.max_header_bytes} bytes")
    if method == b"CONNECT":
        return Problem(405, "CONNECT is not supported")
    if not _is_token(method):
        return Problem(400, f"bad method {_show(method)}")
    problem = _check_target(method, target)
    if problem is not None:
        return problem

    hosts: list[bytes] = []
    lengths: list[bytes] = []
    codings: list[bytes] = []
    for name, value in headers:
        if not _is_token(name):
            return Problem(400, f"bad header name {_show(name)}")
        if not _BAD_VALUE_CHARS.isdisjoint(value):
            return Problem(400, f"bad value in header {_show(name)}")
        if b"_" in name and name.replace(b"_", b"-") in UNDERSCORE_LOOKALIKES:
            return Problem(400, f"header name {_show(name)} with '_' looks like a reserved name")
        if name == b"host":
            hosts.append(value)
        elif name == b"content-length":
            lengths.append(value)
        elif name == b"transfer-encoding":
            codings.append(value)

    if len(hosts) > 1:
        return Problem(400, "several Host header fields")
    if not hosts and http_version is not None and http_version != b"1.0":
        return Problem(400, "no Host header field")
    # An empty Host is legal (RFC 9112 section 3.2: no authority); anything else must parse.
    if hosts and hosts[0] and normalize_host(hosts[0]) is None:
        return Problem(400, f"bad Host {_show(hosts[0])}")
    authority, _ = split_target(target)
    if authority is not None and normalize_host(authority) is None:
        return Problem(400, f"bad authority {_show(authority)}")

    if codings:
        if lengths:
            # RFC 9112 section 6.3 lets a server ignore Content-Length here; a proxy that
            # does so disagrees with any backend that does not: the classic CL.TE smuggle.
            return Problem(400, "both Content-Length and Transfer-Encoding")
        if http_version == b"1.0":
            # RFC 9112 section 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty
            # framing; HTTP/1.0 has no chunked coding to agree on.
            return Problem(400, "Transfer-Encoding in an HTTP/1.0 request")
        problem = _check_codings(codings)
        if problem is not None:
            return problem
    if lengths:
        seen = {item.strip(b" \t") for value in lengths for item in value.split(b",")}
        for item in seen:
            if not item.isdigit() or len(item) > _MAX_LENGTH_DIGITS:
                return Problem(400, f"bad Content-Length {_show(item)}")
        if len(seen) != 1:
            return Problem(400, "differing Content-Length values")
    return None


def _check_target(method: bytes, target: bytes) -> Problem | None:
    if not target or not _TARGET_CHARS.issuperset(target):
        return Problem(400, f"bad request target {_show(target)}")
    if b"#" in target:  # a fragment is never part of a request target (RFC 9112 3.2)
        return Problem(400, "fragment in the request target")
    if target.startswith(b"/"):
        return None
    if target == b"*":
        if method == b"OPTIONS":
            return None
        return Problem(400, "'*' target is only for OPTIONS")
    authority, _ = split_target(target)
    if authority is None:
        return Problem(400, f"bad request target {_show(target)}")
    return None


def _check_codings(values: list[bytes]) -> Problem | None:
    """Transfer-Encoding other than exactly `chunked` (one line, one coding; case-insensitive
    as RFC 9112 section 7 makes coding names):

    - 400 when chunked is missing, not the final coding, or applied twice (`identity`,
      `chunked, identity`, `chunked, chunked`, an empty or non-token element): RFC 9112
      section 6.3 says the length then "cannot be determined reliably" and the server MUST
      answer 400 and close. HAProxy answers these with 400 too.
    - 501 when chunked is final and once but preceded by another coding (`gzip, chunked`):
      the framing is sound, tuilb just does not implement that coding, and RFC 9112
      section 6.1 says a server SHOULD answer 501 for a coding it does not understand, as
      nginx does for any Transfer-Encoding other than `chunked`.

    Either way tuilb closes the connection after the answer (see `error_response`): the body
    cannot be skipped without knowing its framing.
    """
    items: list[bytes] = []
    for value in values:
        for item in value.split(b","):
            items.append(item.strip(b" \t").lower())
    if items == [b"chunked"]:
        return None
    shown = _show(b", ".join(values))
    if not all(_is_token(item) for item in items):
        return Problem(400, f"malformed Transfer-Encoding {shown}")
    if items[-1] != b"chunked" or items.count(b"chunked") != 1:
        return Problem(400, f"Transfer-Encoding without final chunked: {shown}")
    return Problem(501, f"unsupported Transfer-Encoding {shown}")


def split_target(target: bytes) -> tuple[bytes | None, bytes]:
    """A request target -> (authority, origin-form).

    Absolute-form `http://host:port/p?q` (scheme case-insensitive, `http` or `https`) ->
    (b"host:port", b"/p?q"), with `/` for an empty path (`http://h?q` -> b"/?q"). RFC 9112
    section 3.2.2: the authority then replaces Host, and the backend gets origin-form.
    Anything else -> (None, target) unchanged; `check_request` decides whether it is valid.
    """
    if target.startswith(b"/"):
        return None, target
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        return None, target
    end = len(rest)
    for stop in (b"/", b"?"):
        at = rest.find(stop)
        if 0 <= at < end:
            end = at
    authority, path = rest[:end], rest[end:]
    if not path.startswith(b"/"):
        path = b"/" + path
    return authority, path


def request_framing(headers: Headers) -> tuple[BodyKind | None, int | None]:
    """The request body's framing once `check_request` passed: ("chunked", None),
    ("length", n) (n may be 0: forwarded as `content-length: 0`), or (None, None)."""
    for name, _ in headers:
        if name == b"transfer-encoding":
            return "chunked", None
    for name, value in headers:
        if name == b"content-length":
            return "length", int(value.split(b",")[0].strip(b" \t"))
    return None, None


def hop_by_hop(headers: Headers) -> frozenset[bytes]:
    """The fixed hop-by-hop names plus every name listed in Connection header lines."""
    listed = [value for name, value in headers if name == b"connection"]
    if not listed:
        return HOP_BY_HOP
    return HOP_BY_HOP.union(_comma_list(listed))


def is_upgrade(headers: Headers) -> bool:
    """A request (or 101 response) asks to switch protocols: Connection lists `upgrade`
    and an Upgrade header is present."""
    connection = _comma_list([value for name, value in headers if name == b"connection"])
    return b"upgrade" in connection and any(name == b"upgrade" for name, _ in headers)


def _forwarded_value(value: str) -> str:
    """An RFC 7239 value: a token as is, else a quoted-string."""
    raw = value.encode("utf-8", "backslashreplace")
    if _is_token(raw):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@lru_cache(maxsize=4096)  # per request, over the clients' addresses (ipaddress is slow)
def _forwarded_node(client_ip: str) -> str:
    # RFC 7239 section 6: an IPv6 node is bracketed, and so always quoted.
    try:
        address = ipaddress.ip_address(client_ip.partition("%")[0])
    except ValueError:
        return _forwarded_value(client_ip)
    if address.version == 6:
        return f'"[{client_ip}]"'
    return client_ip


@lru_cache(maxsize=4096)  # per request, over a few clients, schemes and hosts
def _forwarded_element(client_ip: str, proto: str, host: bytes | None) -> bytes:
    """This hop's element of the Forwarded header (RFC 7239)."""
    element = f"for={_forwarded_node(client_ip)};proto={_forwarded_value(proto)}"
    if host is not None:
        element += ";host=" + _forwarded_value(host.decode("ascii", "backslashreplace"))
    return element.encode("utf-8", "backslashreplace")


_REQUEST_DROP_MORE = FRAMING | FORWARDING | {b"forwarded", b"host"}
_REQUEST_DROP = HOP_BY_HOP | _REQUEST_DROP_MORE  # with no Connection header (the usual)


def forward_request_headers(
    headers: Headers,
    *,
    client_ip: str,
    proto: str,
    host: bytes | None,
    trusted: bool,
    upgrade: bool,
    body: BodyKind | None,
    length: int | None,
) -> list[tuple[bytes, bytes]]:
    """The header list to send to the backend.

    - `host: <host>` first (the Host, or the absolute-form authority, as the client sent
      it); the client's Host lines are dropped. With host None (an HTTP/1.0 request without
      Host) none is written: h11 will insist on one for an HTTP/1.1 request, so the caller
      supplies the backend's address then.
    - Hop-by-hop headers (fixed names and those Connection lists) dropped; with `upgrade`,
      the Upgrade lines kept and `connection: upgrade` sent.
    - Content-Length and Transfer-Encoding dropped and set from `body`: "length" ->
      `content-length: <length>`, "chunked" -> `transfer-encoding: chunked`, None -> none.
    - The other headers in their order, repeated ones kept.
    - Then the forwarding headers. Untrusted client: X-Forwarded-For = client_ip,
      X-Forwarded-Proto = proto, X-Forwarded-Host = host, `Forwarded: for=..;proto=..;
      host=..`, replacing whatever the client sent. Trusted client: the received
      X-Forwarded-For and Forwarded lines joined with ", " and our element appended;
      X-Forwarded-Proto and X-Forwarded-Host kept when present, else set.
    """
    drop = hop_by_hop(headers)
    if upgrade:
        drop = drop - {b"upgrade"}
    drop = _REQUEST_DROP if drop is HOP_BY_HOP else drop | _REQUEST_DROP_MORE

    out: list[tuple[bytes, bytes]] = []
    if host is not None:
        out.append((b"host", host))
    xff: list[bytes] = []
    xfp: list[bytes] = []
    xfh: list[bytes] = []
    fwd: list[bytes] = []
    for name, value in headers:
        if name not in drop:
            out.append((name, value))
        elif name == b"x-forwarded-for":
            xff.append(value)
        elif name == b"x-forwarded-proto":
            xfp.append(value)
        elif name == b"x-forwarded-host":
            xfh.append(value)
        elif name == b"forwarded":
            fwd.append(value)
    if upgrade:
        out.append((b"connection", b"upgrade"))
    if body == "length":
        if length is None or length < 0:
            raise ValueError(f"body='length' needs a length >= 0, not {length!r}")
        out.append((b"content-length", str(length).encode("ascii")))
    elif body == "chunked":
        out.append((b"transfer-encoding", b"chunked"))

    ip = client_ip.encode("ascii", "backslashreplace")
    if trusted and xff:
        out.append((b"x-forwarded-for", b", ".join([*xff, ip])))
    else:
        out.append((b"x-forwarded-for", ip))
    if trusted and xfp:
        out.extend((b"x-forwarded-proto", value) for value in xfp)
    else:
        out.append((b"x-forwarded-proto", proto.encode("ascii")))
    if trusted and xfh:
        out.extend((b"x-forwarded-host", value) for value in xfh)
    elif host is not None:
        out.append((b"x-forwarded-host", host))

    mine = _forwarded_element(client_ip, proto, host)
    if trusted and fwd:
        out.append((b"forwarded", b", ".join([*fwd, mine])))
    else:
        out.append((b"forwarded", mine))
    return out


def forward_response_headers(
    headers: Headers, *, close: bool, upgrade: bool
) -> list[tuple[bytes, bytes]]:
    """The backend's response headers as tuilb sends them on to the client.

    - Hop-by-hop headers (fixed names and those the backend's Connection lists) dropped.
      With `upgrade` (a 101 being relayed) the Upgrade lines are kept and `connection:
      upgrade` sent; `close` is then moot (the spliced connection ends when either side
      closes), so no `connection: close` is added.
    - Transfer-Encoding dropped: h11 frames the response itself, chunked toward an
      HTTP/1.1 client and close-delimited toward HTTP/1.0.
    - Content-Length kept (one line) unless the backend also sent Transfer-Encoding (h11
      then read the body as chunked, and the length is not to be trusted). h11 needs it to
      send a body of known length as such, and it is the only framing information of a
      response to HEAD and of a 304, which have no body to count.
    - `connection: close` added when `close` (drain, or the client connection is ending).
    """
    drop = hop_by_hop(headers)
    if upgrade:
        drop = drop - {b"upgrade"}
    chunked = any(name == b"transfer-encoding" for name, _ in headers)
    out: list[tuple[bytes, bytes]] = []
    have_length = False
    for name, value in headers:
        if name in drop:
            continue
        if name == b"content-length":
            if chunked or have_length:
                continue
            have_length = True
        out.append((name, value))
    if upgrade:
        out.append((b"connection", b"upgrade"))
    elif close:
        out.append((b"connection", b"close"))
    return out


REASONS: dict[int, str] = {
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}
# After these the request's own framing (or the request itself) cannot be trusted, so the
# connection ends. The list (400 408 413 414 431 505) plus 405 and 501: tuilb sends
# 405 only for CONNECT, whose client may already be sending tunnel bytes, and 501 only for
# a Transfer-Encoding it cannot decode, so the body cannot be skipped.
CLOSING = frozenset({400, 405, 408, 413, 414, 431, 501, 505})


def reason_phrase(status: int) -> str:
    """The reason phrase tuilb writes for a status (the table above, else Python's)."""
    phrase = REASONS.get(status)
    if phrase is not None:
        return phrase
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def error_response(status: int, detail: str = "") -> tuple[list[tuple[bytes, bytes]], bytes]:
    """tuilb's own error answer: (headers, body), to send as h11.Response + h11.Data.

    The body is `503 Service Unavailable\\n`, plus the detail on a second line when given
    (escaped: only printable ASCII reaches the client). text/plain, with content-length,
    `cache-control: no-store`, and `connection: close` for the statuses in CLOSING.
    """
    body = f"{status} {reason_phrase(status)}\n"
    if detail:
        body += "".join(c if " " <= c <= "~" else f"\\u{ord(c):04x}" for c in detail[:200])
        body += "\n"
    data = body.encode("ascii", "backslashreplace")
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(data)).encode("ascii")),
        (b"cache-control", b"no-store"),
    ]
    if status in CLOSING:
        headers.append((b"connection", b"close"))
    return headers, data
