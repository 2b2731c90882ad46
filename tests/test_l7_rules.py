"""Table tests for the HTTP proxy's pure decisions: routing (tuilb.l7.route) and request
checks and header rewriting (tuilb.l7.rules). Headers are written as h11 hands them:
lower-case bytes names, values without surrounding whitespace."""

from __future__ import annotations

import h11
import pytest

from tuilb.httpconf import Limits, RouteConfig
from tuilb.l7.route import header_map, normalize_host, pick_route, route_matches
from tuilb.l7.rules import (
    CLOSING,
    Problem,
    check_request,
    error_response,
    forward_request_headers,
    forward_response_headers,
    hop_by_hop,
    is_upgrade,
    reason_phrase,
    request_framing,
    split_target,
)

H = list[tuple[bytes, bytes]]

# -- normalize_host ------------------------------------------------------------------------

HOSTS: list[tuple[bytes | str | None, str | None]] = [
    (b"example.com", "example.com"),
    (b"Example.COM", "example.com"),
    ("API.Example.com", "api.example.com"),
    (b"example.com:8080", "example.com"),
    (b"example.com.", "example.com"),
    (b"example.com.:443", "example.com"),
    (b"example.com:", "example.com"),  # RFC 3986: the port may be empty
    (b"localhost", "localhost"),
    (b"127.0.0.1:80", "127.0.0.1"),
    (b"[::1]:8080", "[::1]"),
    (b"[::1]", "[::1]"),
    (b"[2001:DB8::1]:443", "[2001:db8::1]"),
    (b"my_host.internal", "my_host.internal"),
    (None, None),
    (b"", None),
    ("", None),
    (b"exa mple.com", None),
    (b" example.com", None),
    (b"user@example.com", None),
    (b"user:pw@example.com:80", None),
    (b"example.com:http", None),
    (b"example.com:65536", None),
    (b"example.com:-1", None),
    (b"example.com:8080:1", None),
    (b"example.com:123456", None),
    (b":8080", None),
    (b"::1", None),  # IPv6 needs brackets
    (b"[::1", None),
    (b"[::1]x", None),
    (b"[::1]:http", None),
    (b"[not-v6]:80", None),
    (b"[fe80::1%25eth0]", None),
    (b"a..b", None),
    (b".example.com", None),
    (b"example.com..", None),
    (b".", None),
    (b"exam/ple.com", None),
    (b"example.com/path", None),
    (b"ex\x00ample.com", None),
    ("exämple.com", None),
    (b"ex\xc3\xa4mple.com", None),
    (b"a" * 256, None),
]


@pytest.mark.parametrize(("value", "want"), HOSTS)
def test_normalize_host(value: bytes | str | None, want: str | None) -> None:
    assert normalize_host(value) == want


# -- routing -------------------------------------------------------------------------------


def test_header_map_keeps_repeats_in_order() -> None:
    headers = [(b"a", b"1"), (b"b", b"2"), (b"a", b"3")]
    assert header_map(headers) == {b"a": [b"1", b"3"], b"b": [b"2"]}
    assert header_map([]) == {}


ANY: dict[bytes, list[bytes]] = {}
R = RouteConfig
EXACT = R("p", host="api.example.com")
WILD = R("p", host="*.example.com")
API = R("p", path_prefix="/api/")
CANARY = R("p", headers=(("x-canary", "1"),))
UPPER = R("p", headers=(("x-canary", "A"),))
UTF8 = "é".encode()
ACCENT = R("p", headers=(("x-canary", "é"),))
BOTH = R("p", headers=(("x-canary", "1"), ("b", "2")))
ALL = R("p", "api.example.com", "/api/", ("GET",), (("x-canary", "1"),))


def canary(*values: bytes) -> dict[bytes, list[bytes]]:
    return {b"x-canary": list(values)}


MATCHES: list[tuple[str, RouteConfig, str, str | None, str, dict[bytes, list[bytes]], bool]] = [
    ("empty route matches all", R("p"), "GET", None, "/", ANY, True),
    ("exact host", EXACT, "GET", "api.example.com", "/", ANY, True),
    ("other host", EXACT, "GET", "www.example.com", "/", ANY, False),
    ("no host given", EXACT, "GET", None, "/", ANY, False),
    ("exact is not suffix", R("p", host="example.com"), "GET", "a.example.com", "/", ANY, False),
    ("wildcard one level", WILD, "GET", "a.example.com", "/", ANY, True),
    ("wildcard two levels", WILD, "GET", "a.b.example.com", "/", ANY, True),
    ("wildcard not apex", WILD, "GET", "example.com", "/", ANY, False),
    ("wildcard label boundary", WILD, "GET", "badexample.com", "/", ANY, False),
    ("wildcard other domain", WILD, "GET", "a.example.org", "/", ANY, False),
    ("wildcard suffix trick", WILD, "GET", "a.example.com.evil.org", "/", ANY, False),
    ("wildcard no host", WILD, "GET", None, "/", ANY, False),
    ("prefix", API, "GET", None, "/api/users", ANY, True),
    ("prefix exact", API, "GET", None, "/api/", ANY, True),
    ("prefix without slash", API, "GET", None, "/api", ANY, False),
    ("prefix plain string", R("p", path_prefix="/api"), "GET", None, "/apiary", ANY, True),
    ("prefix case", API, "GET", None, "/API/x", ANY, False),
    ("prefix not in query", API, "GET", None, "/x?next=/api/", ANY, False),
    ("prefix before query", API, "GET", None, "/api/?x=1", ANY, True),
    ("prefix cut by query", R("p", path_prefix="/api/x"), "GET", None, "/api/?x", ANY, False),
    ("method listed", R("p", methods=("GET", "POST")), "POST", None, "/", ANY, True),
    ("method not listed", R("p", methods=("GET", "POST")), "DELETE", None, "/", ANY, False),
    ("method case-sensitive", R("p", methods=("GET",)), "get", None, "/", ANY, False),
    ("header", CANARY, "GET", None, "/", canary(b"1"), True),
    ("header value differs", CANARY, "GET", None, "/", canary(b"0"), False),
    ("header missing", CANARY, "GET", None, "/", {b"x-other": [b"1"]}, False),
    ("header repeated, any", CANARY, "GET", None, "/", canary(b"0", b"1"), True),
    ("header comma line whole", CANARY, "GET", None, "/", canary(b"0, 1"), False),
    ("header value case", UPPER, "GET", None, "/", canary(b"a"), False),
    ("header utf-8 value", ACCENT, "GET", None, "/", canary(UTF8), True),
    ("all headers needed", BOTH, "GET", None, "/", canary(b"1"), False),
    ("all conditions", ALL, "GET", "api.example.com", "/api/v1", canary(b"1"), True),
    ("all but the method", ALL, "PUT", "api.example.com", "/api/v1", canary(b"1"), False),
    ("all but the header", ALL, "GET", "api.example.com", "/api/v1", ANY, False),
]  # fmt: skip


@pytest.mark.parametrize(
    ("route", "method", "host", "path", "headers", "want"),
    [case[1:] for case in MATCHES],
    ids=[case[0] for case in MATCHES],
)
def test_route_matches(
    route: RouteConfig,
    method: str,
    host: str | None,
    path: str,
    headers: dict[bytes, list[bytes]],
    want: bool,
) -> None:
    assert route_matches(route, method, host, path, headers) is want


ROUTES = (
    RouteConfig("canary", host="api.example.com", headers=(("x-canary", "1"),)),
    RouteConfig("api", host="api.example.com", path_prefix="/api/"),
    RouteConfig("wild", host="*.example.com"),
    RouteConfig("writes", methods=("POST", "PUT")),
)
CANARY_ON: H = [(b"x-canary", b"1")]
PICKS: list[tuple[str, str | None, str, str | None, str, H, tuple[str | None, int | None]]] = [
    ("first match wins", "app", "GET", "api.example.com", "/api/", CANARY_ON, ("canary", 0)),
    ("second", "app", "GET", "api.example.com", "/api/", [], ("api", 1)),
    ("wildcard after exact", "app", "GET", "api.example.com", "/other", [], ("wild", 2)),
    ("wildcard", "app", "POST", "www.example.com", "/", [], ("wild", 2)),
    ("method route", "app", "POST", "example.com", "/", [], ("writes", 3)),
    ("default pool", "app", "GET", "example.com", "/", [], ("app", None)),
    ("no host: default", "app", "GET", None, "/api/", [], ("app", None)),
    ("no default: 404", None, "GET", "example.com", "/", [], (None, None)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("default", "method", "host", "path", "headers", "want"),
    [case[1:] for case in PICKS],
    ids=[case[0] for case in PICKS],
)
def test_pick_route(
    default: str | None,
    method: str,
    host: str | None,
    path: str,
    headers: H,
    want: tuple[str | None, int | None],
) -> None:
    assert pick_route(ROUTES, default, method, host, path, header_map(headers)) == want


def test_pick_route_without_routes() -> None:
    assert pick_route((), "app", "GET", None, "/", {}) == ("app", None)
    assert pick_route([], None, "GET", None, "/", {}) == (None, None)


# -- check_request -------------------------------------------------------------------------

HOST: H = [(b"host", b"example.com")]
CL = b"content-length"
TE = b"transfer-encoding"


def with_host(*pairs: tuple[bytes, bytes]) -> H:
    return [*HOST, *pairs]


def te(*values: bytes) -> H:
    return with_host(*[(TE, value) for value in values])


def cl(*values: bytes) -> H:
    return with_host(*[(CL, value) for value in values])


def wire(*lines: bytes, start: bytes = b"POST / HTTP/1.1") -> bytes:
    return b"\r\n".join([start, b"Host: a", *lines]) + b"\r\n\r\n"


LIMITS = Limits(max_request_line=100, max_header_bytes=400, max_headers=8)

GOOD_REQUESTS: list[tuple[str, bytes, bytes, H]] = [
    ("simple", b"GET", b"/", HOST),
    ("query", b"GET", b"/a/b?c=d&e", HOST),
    ("double slash path", b"GET", b"//x", HOST),
    ("absolute http", b"GET", b"http://example.com/p", HOST),
    ("absolute https upper", b"GET", b"HTTPS://example.com:443", HOST),
    ("absolute form, HTTP/1.0 without Host", b"GET", b"http://example.com/", []),
    ("options star", b"OPTIONS", b"*", HOST),
    ("content-length", b"POST", b"/", cl(b"5")),
    ("content-length zero", b"POST", b"/", cl(b"0")),
    ("same content-length twice", b"POST", b"/", cl(b"5", b"5")),
    ("same content-length in one line", b"POST", b"/", cl(b"5, 5")),
    ("chunked", b"POST", b"/", te(b"chunked")),
    ("chunked any case", b"POST", b"/", te(b"Chunked")),
    ("empty host", b"GET", b"/", [(b"host", b"")]),
    ("other underscore names", b"GET", b"/", with_host((b"x_custom", b"1"), (b"a_b", b"c"))),
    ("custom method", b"PURGE", b"/", HOST),
    ("exactly the header count", b"GET", b"/", [*HOST, *[(b"x-n", b"1")] * 7]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [case[1:] for case in GOOD_REQUESTS],
    ids=[case[0] for case in GOOD_REQUESTS],
)
def test_check_request_accepts(method: bytes, target: bytes, headers: H) -> None:
    version = b"1.0" if not headers else b"1.1"
    assert check_request(method, target, headers, LIMITS, http_version=version) is None


BAD_REQUESTS: list[tuple[str, bytes, bytes, H, int]] = [
    ("connect", b"CONNECT", b"example.com:443", HOST, 405),
    ("connect origin-form", b"CONNECT", b"/", HOST, 405),
    ("request line too long", b"GET", b"/" + b"a" * 90, HOST, 414),
    ("too many headers", b"GET", b"/", [*HOST, *[(b"x-n", b"1")] * 8], 431),
    ("header bytes", b"GET", b"/", [*HOST, (b"x-big", b"v" * 400)], 431),
    ("relative target", b"GET", b"index.html", HOST, 400),
    ("star for GET", b"GET", b"*", HOST, 400),
    ("authority-form", b"GET", b"example.com:80", HOST, 400),
    ("other scheme", b"GET", b"ftp://example.com/", HOST, 400),
    ("scheme without slashes", b"GET", b"http:example.com/", HOST, 400),
    ("empty authority", b"GET", b"http:///p", HOST, 400),
    ("userinfo authority", b"GET", b"http://user@example.com/", HOST, 400),
    ("bad port authority", b"GET", b"http://example.com:99999/", HOST, 400),
    ("fragment", b"GET", b"/a#b", HOST, 400),
    ("space in target", b"GET", b"/a b", HOST, 400),
    ("control in target", b"GET", b"/a\x01", HOST, 400),
    ("non-ascii target", b"GET", b"/\xc3\xa4", HOST, 400),
    ("empty target", b"GET", b"", HOST, 400),
    ("bad method", b"G(T", b"/", HOST, 400),
    ("no host on 1.1", b"GET", b"/", [], 400),
    ("two hosts", b"GET", b"/", [*HOST, (b"host", b"example.com")], 400),
    ("bad host", b"GET", b"/", [(b"host", b"a b")], 400),
    ("host with userinfo", b"GET", b"/", [(b"host", b"evil@example.com")], 400),
    ("cl and te", b"POST", b"/", with_host((CL, b"5"), (TE, b"chunked")), 400),
    ("te and cl", b"POST", b"/", with_host((TE, b"chunked"), (CL, b"0")), 400),
    ("te chunked, identity", b"POST", b"/", te(b"chunked, identity"), 400),
    ("te identity", b"POST", b"/", te(b"identity"), 400),
    ("te gzip", b"POST", b"/", te(b"gzip"), 400),
    ("te chunked twice", b"POST", b"/", te(b"chunked, chunked"), 400),
    ("te chunked on two lines", b"POST", b"/", te(b"chunked", b"chunked"), 400),
    ("te vertical tab", b"POST", b"/", te(b"\x0bchunked"), 400),
    ("te quoted", b"POST", b"/", te(b'"chunked"'), 400),
    ("te chunked with params", b"POST", b"/", te(b"chunked;x=1"), 400),
    ("te empty", b"POST", b"/", te(b""), 400),
    ("te gzip, chunked", b"POST", b"/", te(b"gzip, chunked"), 501),
    ("te gzip line then chunked line", b"POST", b"/", te(b"gzip", b"chunked"), 501),
    ("differing content-length", b"POST", b"/", cl(b"5", b"6"), 400),
    ("differing content-length one line", b"POST", b"/", cl(b"5, 6"), 400),
    ("signed content-length", b"POST", b"/", cl(b"+5"), 400),
    ("negative content-length", b"POST", b"/", cl(b"-1"), 400),
    ("hex content-length", b"POST", b"/", cl(b"0x5"), 400),
    ("empty content-length", b"POST", b"/", cl(b""), 400),
    ("huge content-length", b"POST", b"/", cl(b"9" * 19), 400),
    ("content_length", b"POST", b"/", [*HOST, (b"content_length", b"5")], 400),
    ("transfer_encoding", b"POST", b"/", [*HOST, (b"transfer_encoding", b"chunked")], 400),
    ("connection underscore", b"GET", b"/", [*HOST, (b"connection_", b"x")], 200),
    ("keep_alive", b"GET", b"/", [*HOST, (b"keep_alive", b"1")], 400),
    ("proxy_connection", b"GET", b"/", [*HOST, (b"proxy_connection", b"close")], 400),
    ("x_forwarded_for", b"GET", b"/", [*HOST, (b"x_forwarded_for", b"1.2.3.4")], 400),
    ("x-forwarded_for", b"GET", b"/", [*HOST, (b"x-forwarded_for", b"1.2.3.4")], 400),
    ("x_forwarded_host", b"GET", b"/", [*HOST, (b"x_forwarded_host", b"evil")], 400),
    ("name with space (h11 refuses too)", b"POST", b"/", with_host((TE + b" ", b"chunked")), 400),
    ("name with colon", b"GET", b"/", [*HOST, (b"a:b", b"1")], 400),
    ("empty name", b"GET", b"/", [*HOST, (b"", b"1")], 400),
    ("value with LF", b"GET", b"/", [*HOST, (b"x-a", b"1\nx-b: 2")], 400),
    ("value with NUL", b"GET", b"/", [*HOST, (b"x-a", b"1\x00")], 400),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "target", "headers", "status"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_check_request_refuses(method: bytes, target: bytes, headers: H, status: int) -> None:
    problem = check_request(method, target, headers, LIMITS, http_version=b"1.1")
    if status == 200:  # a control row: not a lookalike of any reserved name
        assert problem is None
        return
    assert problem is not None
    assert problem.status == status
    assert problem.reason


def test_check_request_http10() -> None:
    assert check_request(b"GET", b"/", [], LIMITS, http_version=b"1.0") is None
    assert check_request(b"GET", b"/", [], LIMITS) is None  # version unknown: h11's rule
    assert check_request(b"GET", b"/", [], LIMITS, http_version=b"1.1") == Problem(
        400, "no Host header field"
    )
    te = [(b"transfer-encoding", b"chunked")]
    assert check_request(b"POST", b"/", te, LIMITS, http_version=b"1.0") == Problem(
        400, "Transfer-Encoding in an HTTP/1.0 request"
    )


def test_problem_reasons_escape_hostile_bytes() -> None:
    problem = check_request(b"GET", b"/", [*HOST, (b"x_forwarded_for", b"1")], LIMITS)
    assert problem is not None and "x_forwarded_for" in problem.reason
    problem = check_request(b"GET", b"/", [(b"host", b"a\x1b[31mb")], LIMITS)
    assert problem is not None and problem.status == 400
    assert "\x1b" not in problem.reason and "\\x1b" in problem.reason
    problem = check_request(b"GET", b"/" + b"\x07" * 10, HOST, LIMITS)
    assert problem is not None and "\x07" not in problem.reason


def _h11_request(raw: bytes) -> h11.Request:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    event = conn.next_event()
    assert isinstance(event, h11.Request)
    return event


# Requests as h11 parses them off the wire: what passes h11 must still be caught here.
H11_SMUGGLING: list[tuple[str, bytes, int | None]] = [
    ("cl.te", wire(b"Content-Length: 4", b"Transfer-Encoding: chunked"), 400),
    ("te.cl", wire(b"Transfer-Encoding: chunked", b"Content-Length: 4"), 400),
    ("content_length", wire(b"Content_Length: 4"), 400),
    ("Transfer_Encoding", wire(b"Transfer_Encoding: chunked"), 400),
    ("duplicate equal cl", wire(b"Content-Length: 4", b"Content-Length: 4"), None),
    ("absolute form", wire(start=b"GET http://b.example/x HTTP/1.1"), None),
    # h11 unfolds an obs-fold line: the folded Transfer-Encoding still meets Content-Length.
    ("folded te with cl", wire(b"Content-Length: 4", b"Transfer-Encoding:", b" chunked"), 400),
    ("connect", wire(start=b"CONNECT a:443 HTTP/1.1"), 405),
    ("x_forwarded_for", wire(b"X_Forwarded_For: 1.2.3.4", start=b"GET / HTTP/1.1"), 400),
]


@pytest.mark.parametrize(
    ("raw", "status"), [case[1:] for case in H11_SMUGGLING], ids=[c[0] for c in H11_SMUGGLING]
)
def test_check_request_after_h11(raw: bytes, status: int | None) -> None:
    request = _h11_request(raw)
    problem = check_request(
        request.method, request.target, list(request.headers), Limits(), http_version=b"1.1"
    )
    assert (problem.status if problem else None) == status


# What h11 refuses by itself, before check_request ever sees it.
H11_REFUSES: list[tuple[str, bytes]] = [
    ("space before colon", wire(b"Transfer-Encoding : chunked")),
    ("te chunked, identity", wire(b"Transfer-Encoding: chunked, identity")),
    ("te twice", wire(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked")),
    ("differing cl", wire(b"Content-Length: 4", b"Content-Length: 5")),
    ("cl with a sign", wire(b"Content-Length: +4")),
]


@pytest.mark.parametrize("raw", [c[1] for c in H11_REFUSES], ids=[c[0] for c in H11_REFUSES])
def test_h11_refuses_before_us(raw: bytes) -> None:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    with pytest.raises(h11.RemoteProtocolError):
        conn.next_event()


# -- split_target and framing --------------------------------------------------------------

TARGETS: list[tuple[bytes, tuple[bytes | None, bytes]]] = [
    (b"/", (None, b"/")),
    (b"/a?b", (None, b"/a?b")),
    (b"*", (None, b"*")),
    (b"http://example.com/a?b", (b"example.com", b"/a?b")),
    (b"http://example.com", (b"example.com", b"/")),
    (b"http://example.com?q=1", (b"example.com", b"/?q=1")),
    (b"https://example.com:8443/x", (b"example.com:8443", b"/x")),
    (b"HTTP://Example.com/x", (b"Example.com", b"/x")),
    (b"http://[::1]:8080/x", (b"[::1]:8080", b"/x")),
    (b"http://a/b?c=http://d/e", (b"a", b"/b?c=http://d/e")),
    (b"http://user@a/", (b"user@a", b"/")),  # check_request refuses it
    (b"ftp://a/b", (None, b"ftp://a/b")),
    (b"example.com:443", (None, b"example.com:443")),
    (b"/http://a/b", (None, b"/http://a/b")),
]


@pytest.mark.parametrize(("target", "want"), TARGETS)
def test_split_target(target: bytes, want: tuple[bytes | None, bytes]) -> None:
    assert split_target(target) == want


FRAMINGS: list[tuple[H, tuple[str | None, int | None]]] = [
    ([], (None, None)),
    ([(b"content-length", b"12")], ("length", 12)),
    ([(b"content-length", b"0")], ("length", 0)),
    ([(b"content-length", b"7, 7")], ("length", 7)),
    ([(b"transfer-encoding", b"chunked")], ("chunked", None)),
]


@pytest.mark.parametrize(("headers", "want"), FRAMINGS)
def test_request_framing(headers: H, want: tuple[str | None, int | None]) -> None:
    assert request_framing(headers) == want


# -- hop-by-hop ----------------------------------------------------------------------------

FIXED = {
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
}
HOPS: list[tuple[H, set[bytes]]] = [
    ([], FIXED),
    ([(b"connection", b"close")], FIXED | {b"close"}),
    ([(b"connection", b"X-Secret, keep-alive")], FIXED | {b"x-secret"}),
    ([(b"connection", b"a,,b ,\tc"), (b"connection", b"d")], FIXED | {b"a", b"b", b"c", b"d"}),
    ([(b"x-a", b"connection")], FIXED),
]


@pytest.mark.parametrize(("headers", "want"), HOPS)
def test_hop_by_hop(headers: H, want: set[bytes]) -> None:
    assert hop_by_hop(headers) == want


UPGRADES: list[tuple[H, bool]] = [
    ([(b"connection", b"Upgrade"), (b"upgrade", b"websocket")], True),
    ([(b"connection", b"keep-alive, upgrade"), (b"upgrade", b"websocket")], True),
    ([(b"upgrade", b"websocket")], False),
    ([(b"connection", b"upgrade")], False),
    ([], False),
]


@pytest.mark.parametrize(("headers", "want"), UPGRADES)
def test_is_upgrade(headers: H, want: bool) -> None:
    assert is_upgrade(headers) is want


# -- forward_request_headers ---------------------------------------------------------------


def _fwd(
    headers: H,
    *,
    client_ip: str = "192.0.2.7",
    proto: str = "http",
    host: bytes | None = b"example.com",
    trusted: bool = False,
    upgrade: bool = False,
    body: str | None = None,
    length: int | None = None,
) -> H:
    assert body in (None, "length", "chunked")
    return forward_request_headers(
        headers,
        client_ip=client_ip,
        proto=proto,
        host=host,
        trusted=trusted,
        upgrade=upgrade,
        body=body,  # type: ignore[arg-type]
        length=length,
    )


def _names(headers: H) -> list[bytes]:
    return [name for name, _ in headers]


def _get(headers: H, name: bytes) -> list[bytes]:
    return [value for n, value in headers if n == name]


def test_forward_request_plain() -> None:
    got = _fwd([(b"host", b"example.com"), (b"accept", b"*/*"), (b"user-agent", b"t")])
    assert got == [
        (b"host", b"example.com"),
        (b"accept", b"*/*"),
        (b"user-agent", b"t"),
        (b"x-forwarded-for", b"192.0.2.7"),
        (b"x-forwarded-proto", b"http"),
        (b"x-forwarded-host", b"example.com"),
        (b"forwarded", b"for=192.0.2.7;proto=http;host=example.com"),
    ]


def test_forward_request_keeps_order_and_repeats() -> None:
    headers = [
        (b"host", b"example.com"),
        (b"cookie", b"a=1"),
        (b"accept", b"text/html"),
        (b"cookie", b"b=2"),
        (b"x-trace", b"1"),
    ]
    got = _fwd(headers)
    assert got[:5] == headers


def test_forward_request_drops_hop_by_hop_and_named() -> None:
    headers = [
        (b"host", b"example.com"),
        (b"connection", b"keep-alive, X-Secret, x-other"),
        (b"keep-alive", b"timeout=5"),
        (b"proxy-connection", b"keep-alive"),
        (b"te", b"trailers"),
        (b"trailer", b"x-checksum"),
        (b"upgrade", b"websocket"),
        (b"x-secret", b"token"),
        (b"x-other", b"1"),
        (b"x-other", b"2"),
        (b"x-kept", b"yes"),
    ]
    got = _fwd(headers)
    assert _names(got) == [
        b"host",
        b"x-kept",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"forwarded",
    ]


def test_forward_request_connection_cannot_remove_our_headers() -> None:
    # Naming X-Forwarded-For or Host in Connection must not strip what tuilb sets.
    headers = [(b"host", b"example.com"), (b"connection", b"x-forwarded-for, host, forwarded")]
    got = _fwd(headers, trusted=True)
    assert _get(got, b"host") == [b"example.com"]
    assert _get(got, b"x-forwarded-for") == [b"192.0.2.7"]
    assert _get(got, b"forwarded") == [b"for=192.0.2.7;proto=http;host=example.com"]


def test_forward_request_upgrade() -> None:
    headers = [
        (b"host", b"example.com"),
        (b"connection", b"Upgrade"),
        (b"upgrade", b"websocket"),
        (b"sec-websocket-key", b"k"),
    ]
    got = _fwd(headers, upgrade=True)
    assert _get(got, b"upgrade") == [b"websocket"]
    assert _get(got, b"connection") == [b"upgrade"]
    assert _get(got, b"sec-websocket-key") == [b"k"]
    assert _get(_fwd(headers), b"upgrade") == []
    assert _get(_fwd(headers), b"connection") == []


FRAMING_OUT: list[tuple[str, H, str | None, int | None, H]] = [
    ("length replaces client cl", [(CL, b"99")], "length", 5, [(CL, b"5")]),
    ("length zero", [], "length", 0, [(CL, b"0")]),
    ("chunked replaces te", [(TE, b"chunked")], "chunked", None, [(TE, b"chunked")]),
    ("chunked drops cl", [(CL, b"5")], "chunked", None, [(TE, b"chunked")]),
    ("none drops both", [(CL, b"5"), (TE, b"chunked")], None, None, []),
]


@pytest.mark.parametrize(
    ("headers", "body", "length", "want"),
    [case[1:] for case in FRAMING_OUT],
    ids=[case[0] for case in FRAMING_OUT],
)
def test_forward_request_framing(headers: H, body: str | None, length: int | None, want: H) -> None:
    got = _fwd([(b"host", b"h"), *headers], body=body, length=length)
    framing = [(n, v) for n, v in got if n in (b"content-length", b"transfer-encoding")]
    assert framing == want


def test_forward_request_length_needs_a_length() -> None:
    with pytest.raises(ValueError):
        _fwd([], body="length", length=None)


CLIENT_CHAIN: H = [
    (b"host", b"example.com"),
    (b"x-forwarded-for", b"203.0.113.1, 10.0.0.1"),
    (b"x-forwarded-for", b"10.0.0.2"),
    (b"x-forwarded-proto", b"https"),
    (b"x-forwarded-host", b"public.example.com"),
    (b"forwarded", b"for=203.0.113.1;proto=https"),
    (b"forwarded", b"for=10.0.0.1"),
]

CHAINS: list[tuple[str, H, bool, dict[bytes, list[bytes]]]] = [
    (
        "untrusted replaces",
        CLIENT_CHAIN,
        False,
        {
            b"x-forwarded-for": [b"192.0.2.7"],
            b"x-forwarded-proto": [b"http"],
            b"x-forwarded-host": [b"example.com"],
            b"forwarded": [b"for=192.0.2.7;proto=http;host=example.com"],
        },
    ),
    (
        "trusted appends",
        CLIENT_CHAIN,
        True,
        {
            b"x-forwarded-for": [b"203.0.113.1, 10.0.0.1, 10.0.0.2, 192.0.2.7"],
            b"x-forwarded-proto": [b"https"],
            b"x-forwarded-host": [b"public.example.com"],
            b"forwarded": [
                b"for=203.0.113.1;proto=https, for=10.0.0.1, "
                b"for=192.0.2.7;proto=http;host=example.com"
            ],
        },
    ),
    (
        "trusted without a chain sets",
        [(b"host", b"example.com")],
        True,
        {
            b"x-forwarded-for": [b"192.0.2.7"],
            b"x-forwarded-proto": [b"http"],
            b"x-forwarded-host": [b"example.com"],
            b"forwarded": [b"for=192.0.2.7;proto=http;host=example.com"],
        },
    ),
]


@pytest.mark.parametrize(
    ("headers", "trusted", "want"),
    [case[1:] for case in CHAINS],
    ids=[case[0] for case in CHAINS],
)
def test_forward_request_trust(headers: H, trusted: bool, want: dict[bytes, list[bytes]]) -> None:
    got = _fwd(headers, trusted=trusted)
    for name, values in want.items():
        assert _get(got, name) == values, name


FORWARDED: list[tuple[str, str, bytes | None, bytes]] = [
    ("192.0.2.7", "http", b"example.com", b"for=192.0.2.7;proto=http;host=example.com"),
    ("2001:db8::1", "https", b"example.com", b'for="[2001:db8::1]";proto=https;host=example.com'),
    ("::1", "http", None, b'for="[::1]";proto=http'),
    ("fe80::1%eth0", "http", None, b'for="[fe80::1%eth0]";proto=http'),
    ("192.0.2.7", "http", b"example.com:8080", b'for=192.0.2.7;proto=http;host="example.com:8080"'),
    ("192.0.2.7", "http", b"[::1]:8080", b'for=192.0.2.7;proto=http;host="[::1]:8080"'),
    ("unknown", "http", None, b"for=unknown;proto=http"),
    ("", "http", None, b'for="";proto=http'),
]


@pytest.mark.parametrize(("client_ip", "proto", "host", "want"), FORWARDED)
def test_forwarded_element(client_ip: str, proto: str, host: bytes | None, want: bytes) -> None:
    got = _fwd([], client_ip=client_ip, proto=proto, host=host)
    assert _get(got, b"forwarded") == [want]


def test_forward_request_ipv6_xff_is_bare() -> None:
    got = _fwd([], client_ip="2001:db8::1")
    assert _get(got, b"x-forwarded-for") == [b"2001:db8::1"]


def test_forward_request_host_replaced_and_first() -> None:
    # Absolute-form: the authority replaces the client's Host (RFC 9112 section 3.2.2).
    headers = [(b"accept", b"*/*"), (b"host", b"a.example.com")]
    got = _fwd(headers, host=b"b.example.com:8080")
    assert got[0] == (b"host", b"b.example.com:8080")
    assert _get(got, b"host") == [b"b.example.com:8080"]
    assert _get(got, b"x-forwarded-host") == [b"b.example.com:8080"]


def test_forward_request_without_host() -> None:
    got = _fwd([(b"accept", b"*/*")], host=None)
    assert _get(got, b"host") == []
    assert _get(got, b"x-forwarded-host") == []


def test_forward_request_feeds_h11_client() -> None:
    got = _fwd(
        [(b"host", b"example.com"), (b"transfer-encoding", b"chunked"), (b"te", b"trailers")],
        body="chunked",
    )
    client = h11.Connection(h11.CLIENT)
    wire = client.send(h11.Request(method=b"POST", target=b"/", headers=got))
    assert wire is not None
    assert b"transfer-encoding: chunked\r\n" in wire
    assert b"te:" not in wire


# -- forward_response_headers --------------------------------------------------------------

RESPONSES: list[tuple[str, H, bool, bool, H]] = [
    (
        "plain",
        [(b"content-type", b"text/html"), (b"content-length", b"5"), (b"server", b"b")],
        False, False,
        [(b"content-type", b"text/html"), (b"content-length", b"5"), (b"server", b"b")],
    ),
    (
        "close added",
        [(b"content-length", b"5")],
        True, False,
        [(b"content-length", b"5"), (b"connection", b"close")],
    ),
    (
        "hop-by-hop dropped",
        [(b"connection", b"keep-alive, x-internal"), (b"keep-alive", b"timeout=5"),
         (b"x-internal", b"1"), (b"trailer", b"x-sum"), (b"upgrade", b"h2c"),
         (b"proxy-connection", b"x"), (b"date", b"d")],
        False, False,
        [(b"date", b"d")],
    ),
    (
        "te dropped, h11 frames",
        [(b"transfer-encoding", b"chunked"), (b"x-a", b"1")],
        False, False,
        [(b"x-a", b"1")],
    ),
    (
        "cl with te dropped too",
        [(b"content-length", b"100"), (b"transfer-encoding", b"chunked")],
        False, False,
        [],
    ),
    (
        "duplicate cl once",
        [(b"content-length", b"5"), (b"content-length", b"5")],
        False, False,
        [(b"content-length", b"5")],
    ),
    (
        "repeats kept in order",
        [(b"set-cookie", b"a=1"), (b"vary", b"x"), (b"set-cookie", b"b=2")],
        False, False,
        [(b"set-cookie", b"a=1"), (b"vary", b"x"), (b"set-cookie", b"b=2")],
    ),
    (
        "101 upgrade kept",
        [(b"connection", b"Upgrade"), (b"upgrade", b"websocket"), (b"sec-websocket-accept", b"x")],
        False, True,
        [(b"upgrade", b"websocket"), (b"sec-websocket-accept", b"x"), (b"connection", b"upgrade")],
    ),
    (
        "101 upgrade ignores close",
        [(b"connection", b"upgrade"), (b"upgrade", b"websocket")],
        True, True,
        [(b"upgrade", b"websocket"), (b"connection", b"upgrade")],
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("headers", "close", "upgrade", "want"),
    [case[1:] for case in RESPONSES],
    ids=[case[0] for case in RESPONSES],
)
def test_forward_response_headers(headers: H, close: bool, upgrade: bool, want: H) -> None:
    assert forward_response_headers(headers, close=close, upgrade=upgrade) == want


def test_forward_response_feeds_h11_server() -> None:
    server = h11.Connection(h11.SERVER)
    server.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert isinstance(server.next_event(), h11.Request)
    headers = forward_response_headers(
        [(b"transfer-encoding", b"chunked"), (b"connection", b"keep-alive")],
        close=True,
        upgrade=False,
    )
    wire = server.send(h11.Response(status_code=200, headers=headers))
    assert wire is not None
    assert b"connection: close\r\n" in wire.lower()
    assert b"transfer-encoding: chunked\r\n" in wire.lower()  # h11 frames it itself


# -- error_response ------------------------------------------------------------------------

STATUSES = [400, 404, 405, 408, 413, 414, 431, 501, 502, 503, 504, 505]


@pytest.mark.parametrize("status", STATUSES)
def test_error_response(status: int) -> None:
    headers, body = error_response(status)
    phrase = reason_phrase(status)
    assert phrase and phrase != "Error"
    assert body == f"{status} {phrase}\n".encode()
    assert (b"content-type", b"text/plain; charset=utf-8") in headers
    assert (b"content-length", str(len(body)).encode()) in headers
    closes = (b"connection", b"close") in headers
    assert closes is (status in CLOSING)
    # h11 accepts it as a response.
    server = h11.Connection(h11.SERVER)
    server.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    server.next_event()
    wire = server.send(h11.Response(status_code=status, headers=headers, reason=phrase))
    assert wire is not None and wire.startswith(f"HTTP/1.1 {status} {phrase}\r\n".encode())


CLOSES = {400: True, 408: True, 413: True, 414: True, 431: True, 505: True, 405: True, 501: True}
KEEPS = {404: False, 502: False, 503: False, 504: False}


@pytest.mark.parametrize(("status", "closes"), sorted({**CLOSES, **KEEPS}.items()))
def test_error_response_close(status: int, closes: bool) -> None:
    headers, _ = error_response(status)
    assert ((b"connection", b"close") in headers) is closes


ERROR_BODIES: list[tuple[int, str, bytes]] = [
    (503, "", b"503 Service Unavailable\n"),
    (503, "no backend in pool 'app'", b"503 Service Unavailable\nno backend in pool 'app'\n"),
    (502, "bad\r\nheader\x1b[31m", b"502 Bad Gateway\nbad\\u000d\\u000aheader\\u001b[31m\n"),
    (400, "caf\u00e9", b"400 Bad Request\ncaf\\u00e9\n"),
    (413, "x" * 300, b"413 Content Too Large\n" + b"x" * 200 + b"\n"),
    (418, "", b"418 I'm a Teapot\n"),
    (599, "", b"599 Error\n"),
]


@pytest.mark.parametrize(("status", "detail", "want"), ERROR_BODIES)
def test_error_body(status: int, detail: str, want: bytes) -> None:
    headers, body = error_response(status, detail)
    assert body == want
    assert (b"content-length", str(len(want)).encode()) in headers
