"""ClientHello parsing (tuilb.sni): real hellos written by Python's ssl module into a memory
BIO, the same re-split over several records, hellos built by hand with broken lengths."""

from __future__ import annotations

import ssl
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tuilb.config import Timeouts
from tuilb.config import parse as config_parse
from tuilb.errors import ConfigError
from tuilb.sni import MAX_BYTES, MAX_RECORD, Hello, Incomplete, Invalid, SniRoute, parse, route


def real_hello(server_hostname: str | None, maximum: ssl.TLSVersion | None = None) -> bytes:
    """The first flight of a real TLS client: its ClientHello records."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if maximum is not None:
        ctx.maximum_version = maximum
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def records(message: bytes, size: int, kind: int = 22) -> bytes:
    """`message` split into records of at most `size` bytes."""
    out = b""
    for i in range(0, len(message), size):
        part = message[i : i + size]
        out += bytes((kind, 3, 1)) + struct.pack("!H", len(part)) + part
    return out


def message_of(hello: bytes) -> bytes:
    """The handshake message inside a single-record hello."""
    assert hello[0] == 22 and struct.unpack("!H", hello[3:5])[0] == len(hello) - 5
    return hello[5:]


def vec(size: int, body: bytes) -> bytes:
    return len(body).to_bytes(size, "big") + body


def sni_ext(*names: tuple[int, bytes]) -> bytes:
    entries = b"".join(bytes((kind,)) + vec(2, name) for kind, name in names)
    return struct.pack("!H", 0) + vec(2, vec(2, entries))


def build(
    extensions: bytes | None = b"",
    *,
    version: bytes = b"\x03\x03",
    session: bytes = b"\x01" * 32,
    suites: bytes = b"\x13\x01\x13\x02",
    compression: bytes = b"\x00",
) -> bytes:
    """A ClientHello record from its parts; `extensions` None: no extensions block."""
    body = version + b"\x00" * 32 + vec(1, session) + vec(2, suites) + vec(1, compression)
    if extensions is not None:
        body += vec(2, extensions)
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    return records(message, MAX_RECORD)


# -- real hellos ----------------------------------------------------------------------------
@pytest.mark.parametrize("maximum", [None, ssl.TLSVersion.TLSv1_2])
@pytest.mark.parametrize(
    ("given_name", "expected"),
    [
        ("a.example.test", "a.example.test"),
        ("B.Example.TEST", "b.example.test"),
        ("x" * 63 + ".example.test", "x" * 63 + ".example.test"),
        (None, None),
        ("127.0.0.1", None),  # an IP address is never sent as SNI (RFC 6066 3)
    ],
)
def test_real_hello(given_name: str | None, expected: str | None, maximum: ssl.TLSVersion) -> None:
    hello = real_hello(given_name, maximum)
    assert parse(hello) == Hello(expected, len(hello))
    # What a client may send after its hello does not change the answer.
    assert parse(hello + b"\x17\x03\x03\x00\x05hello") == Hello(expected, len(hello))


def test_truncated_at_every_length() -> None:
    hello = real_hello("a.example.test")
    for n in range(len(hello)):
        result = parse(hello[:n])
        assert isinstance(result, Incomplete), n
        assert n < result.needed <= len(hello), (n, result)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 64, 100, 511])
def test_split_over_records(size: int) -> None:
    message = message_of(real_hello("b.example.test"))
    data = records(message, size)
    if len(data) > MAX_BYTES:
        assert isinstance(parse(data), Invalid)
        return
    assert parse(data) == Hello("b.example.test", len(data))
    for n in range(len(data)):
        result = parse(data[:n])
        assert isinstance(result, Incomplete), n
        assert n < result.needed <= len(data)


def test_hello_ending_inside_a_record_is_complete() -> None:
    """The last record also holds the start of something else, not all of it here yet."""
    message = message_of(real_hello("a.example.test"))
    tail = b"\x00" * 100
    data = bytes((22, 3, 1)) + struct.pack("!H", len(message) + len(tail)) + message
    assert parse(data) == Hello("a.example.test", len(data) + len(tail))


def test_built_hello_is_accepted() -> None:
    """The builder below is right: so the broken variants are broken in one way only."""
    assert parse(build(sni_ext((0, b"Host.Example")))).server_name == "host.example"  # type: ignore[union-attr]
    assert parse(build(None)) == Hello(None, len(build(None)))
    assert parse(build(b"")).server_name is None  # type: ignore[union-attr]
    assert parse(build(sni_ext((0, b"a" * 255)))).server_name == "a" * 255  # type: ignore[union-attr]
    assert parse(build(sni_ext((0, b"a.test")), session=b"")).server_name == "a.test"  # type: ignore[union-attr]
    # unknown name types are skipped; other extensions are skipped
    other = struct.pack("!H", 43) + vec(2, b"\x02\x03\x04")
    assert parse(build(other + sni_ext((7, b"zz"), (0, b"b.test")))).server_name == "b.test"  # type: ignore[union-attr]


# -- refusals -------------------------------------------------------------------------------
def _with_body_length(data: bytes, delta: int) -> bytes:
    """`data` (one record) with the handshake length off by `delta`, record length kept."""
    length = int.from_bytes(data[6:9], "big") + delta
    return data[:6] + length.to_bytes(3, "big") + data[9:]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "record type 71"),
        (b"\x16\x02", "record version 2.x"),
        (b"\x17\x03\x03\x00\x10", "record type 23"),
        (b"\x80\x2e\x01\x03\x01", "SSL 2.0"),
        (b"\x16\x03\x01\x00\x00", "empty handshake record"),
        (b"\x16\x03\x01\x40\x01", "over 2^14"),
        (b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", "not a ClientHello"),
        (b"\x16\x03\x01\x00\x01\x02", "not a ClientHello"),
        (b"\x16\x03\x01\x00\x04\x01\x00\x50\x00", "over the limit"),
        (records(b"\x01\x00\x00\x10", 4) + b"\x15\x03\x01\x00\x02", "record type 21"),
        (build(sni_ext((0, b"a.test")), version=b"\x02\x00"), "version 2.x"),
        (build(b"", session=b"\x00" * 33), "session id of 33"),
        (build(b"", suites=b""), "cipher suites length 0"),
        (build(b"", suites=b"\x13\x01\x13"), "cipher suites length 3"),
        (build(b"", compression=b""), "no compression method"),
        (build(sni_ext((0, b""))), "host_name of 0 bytes"),
        (build(sni_ext((0, b"a" * 256))), "host_name of 256 bytes"),
        (build(sni_ext((0, b"a b"))), "not printable ASCII"),
        (build(sni_ext((0, b"a\x00b"))), "not printable ASCII"),
        (build(sni_ext((0, "é.test".encode()))), "not printable ASCII"),
        (build(sni_ext((0, b"a.test"), (0, b"b.test"))), "more than one host_name"),
        (build(sni_ext((0, b"a.test")) + sni_ext((0, b"b.test"))), "extension 0 appears twice"),
        (build(struct.pack("!H", 0) + vec(2, vec(2, b""))), "empty server name list"),
        (build(struct.pack("!H", 0) + vec(2, vec(2, b"\x00\x00\x05abc"))), "server name: 5"),
        (build(struct.pack("!H", 0) + vec(2, vec(2, b"\x00\x00"))), "server name length"),
        (build(struct.pack("!H", 0) + vec(2, b"\x00\x0a\x00\x00\x06a.test")), "server name list:"),
        (build(struct.pack("!H", 0) + vec(2, vec(2, b"\x00\x00\x01a") + b"x")), "1 bytes after"),
        (build(struct.pack("!HH", 0, 50) + b"\x00"), "extension 0: 50 bytes announced"),
        (build(b"\x00"), "extension type"),
    ],
)
def test_invalid(data: bytes, reason: str) -> None:
    result = parse(data)
    assert isinstance(result, Invalid), result
    assert reason in result.reason


def test_broken_hello_lengths() -> None:
    hello = build(sni_ext((0, b"a.test")))
    # the hello says it is shorter than its parts: they run past its end
    short = _with_body_length(hello, -1)
    assert isinstance(parse(short), Invalid)
    # ... or longer: a byte is missing after the extensions' end, so more is awaited,
    # and a byte that is not an extension is refused
    long = _with_body_length(hello, +1)
    assert parse(long) == Incomplete(len(long) + 5)
    record = bytes((22, 3, 1)) + struct.pack("!H", len(hello) - 4) + long[5:] + b"\x00"
    result = parse(record)
    assert isinstance(result, Invalid) and "after the extensions" in result.reason


def test_extensions_length_beyond_the_hello() -> None:
    body = b"\x03\x03" + b"\x00" * 32 + b"\x00" + vec(2, b"\x13\x01") + b"\x01\x00"
    body += b"\x00\x20" + b"\x00\x00\x00\x00"  # 32 announced, 4 present
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    result = parse(records(message, MAX_RECORD))
    assert isinstance(result, Invalid) and "extensions: 32 bytes announced, 4 left" in result.reason


def test_every_length_field_of_a_real_hello_is_checked() -> None:
    """Each single byte raised or lowered in a real hello is either still a hello, or
    refused, or waited for: never an exception."""
    hello = real_hello("a.example.test")
    for i in range(len(hello)):
        for delta in (1, -1, 0x80):
            changed = bytearray(hello)
            changed[i] = (changed[i] + delta) % 256
            assert isinstance(parse(changed), Hello | Invalid | Incomplete)


def test_limit_on_what_is_awaited() -> None:
    # A hello announcing 17 KiB is refused at once, not waited for; 16 KiB is awaited.
    assert isinstance(parse(b"\x16\x03\x01\x40\x00\x01\x00\x44\x00"), Invalid)
    assert parse(b"\x16\x03\x01\x40\x00\x01\x00\x40\x00") == Incomplete(16389)
    # Tiny records: the headers push it over the limit before it ends.
    message = message_of(real_hello("a.example.test"))
    message = message[:1] + (8000).to_bytes(3, "big") + message[4:] + b"\x00" * 8000
    result = parse(records(message, 1))
    assert isinstance(result, Invalid) and "no complete ClientHello" in result.reason


@given(st.binary(max_size=300))
def test_never_raises(data: bytes) -> None:
    result = parse(data)
    if isinstance(result, Incomplete):
        assert result.needed > len(data)


@given(st.binary(max_size=200))
def test_never_raises_after_a_valid_start(data: bytes) -> None:
    parse(b"\x16\x03\x01" + data)
    parse(b"\x16\x03\x01\x01\x00\x01\x00\x00\xfc\x03\x03" + data)


# -- routes ---------------------------------------------------------------------------------
ROUTES = (
    SniRoute("*.example.test", "wild"),
    SniRoute("a.example.test", "a"),
    SniRoute("*.b.example.test", "deep"),
    SniRoute("b.example.test", "b"),
)


@pytest.mark.parametrize(
    ("name", "pool"),
    [
        ("a.example.test", "a"),  # exact beats an earlier wildcard
        ("b.example.test", "b"),
        ("c.example.test", "wild"),
        ("x.b.example.test", "wild"),  # the first wildcard in written order
        ("example.test", None),  # *.domain is not the domain itself
        ("aexample.test", None),
        ("other.test", None),
        (None, None),
    ],
)
def test_route(name: str | None, pool: str | None) -> None:
    assert route(ROUTES, name) == pool


# -- configuration --------------------------------------------------------------------------
CONF = """\
[[listeners]]
name = "tls"
bind = "127.0.0.1:8443"
{listener}
[pools.a]
algorithm = "round_robin"
[[pools.a.backends]]
name = "a1"
address = "127.0.0.1:9001"

[pools.b]
algorithm = "round_robin"
[[pools.b.backends]]
name = "b1"
address = "127.0.0.1:9002"
{end}
"""


def sni_conf(listener: str, end: str = "") -> str:
    return CONF.format(listener=listener, end=end)


def config_problems(text: str) -> list[str]:
    try:
        config_parse(text, "<test>")
    except ConfigError as exc:
        return [str(p) for p in exc.problems]
    return []


def test_config_routes_and_timeout() -> None:
    text = sni_conf(
        'pool = "b"\n'
        '[[listeners.sni_routes]]\nserver_name = "A.Example.COM"\npool = "a"\n'
        '[[listeners.sni_routes]]\nserver_name = "*.example.com"\npool = "b"\n',
        "[timeouts]\nclient_hello = 2\n",
    )
    config = config_parse(text, "<test>")
    listener = config.listeners[0]
    assert listener.pool == "b"
    assert listener.sni_routes == (SniRoute("a.example.com", "a"), SniRoute("*.example.com", "b"))
    assert config.timeouts.client_hello == 2.0
    assert Timeouts().client_hello == 5.0


def test_config_pool_optional_with_routes() -> None:
    text = sni_conf('[[listeners.sni_routes]]\nserver_name = "a.example.com"\npool = "a"\n')
    listener = config_parse(text, "<test>").listeners[0]
    assert listener.pool is None and listener.sni_routes == (SniRoute("a.example.com", "a"),)
    assert config_parse(sni_conf('pool = "a"\n'), "<test>").listeners[0].sni_routes == ()


@pytest.mark.parametrize(
    ("listener", "fragments"),
    [
        ("", ["listeners[0]: missing required key 'pool'"]),
        (
            '[[listeners.sni_routes]]\nserver_name = "a.example.com"\npool = "c"\n',
            ["line 6: listeners[0].sni_routes[0].pool: no pool named 'c'; pools: a, b"],
        ),
        (
            '[[listeners.sni_routes]]\nserver_name = "a..example.com"\npool = "a"\n',
            ["line 5: listeners[0].sni_routes[0].server_name: 'a..example.com' is not a server"],
        ),
        (
            '[[listeners.sni_routes]]\nserver_name = "a.example.com."\npool = "a"\n',
            ["sni_routes[0].server_name: 'a.example.com.' is not a server name"],
        ),
        (
            '[[listeners.sni_routes]]\nserver_name = "a.*.com"\npool = "a"\n',
            ["is not a server name or *.domain pattern"],
        ),
        (
            '[[listeners.sni_routes]]\nserver_name = "a.example.com"\npool = "a"\n'
            '[[listeners.sni_routes]]\nserver_name = "A.example.com"\npool = "b"\n',
            ["line 8: listeners[0].sni_routes[1].server_name: 'a.example.com' has an earlier"],
        ),
        (
            '[[listeners.sni_routes]]\npool = "a"\n',
            ["listeners[0].sni_routes[0]: missing required key 'server_name'"],
        ),
        (
            '[[listeners.sni_routes]]\nserver_name = "a.example.com"\npool = "a"\nport = 1\n',
            ["listeners[0].sni_routes[0].port: unknown key 'port'"],
        ),
        ('pool = "a"\nsni_routes = []\n', ["listeners[0].sni_routes: an empty list"]),
        (
            'pool = "a"\nsni_routes = "a"\n',
            ["listeners[0].sni_routes: expected an array, got a string"],
        ),
        (
            'protocol = "http"\npool = "a"\n'
            '[[listeners.sni_routes]]\nserver_name = "a.example.com"\npool = "a"\n',
            ['listeners[0].sni_routes: sni_routes applies to protocol = "tcp" only'],
        ),
    ],
)
def test_config_problems(listener: str, fragments: list[str]) -> None:
    problems = config_problems(sni_conf(listener))
    assert len(problems) == len(fragments), problems
    for problem, fragment in zip(problems, fragments, strict=True):
        assert fragment in problem, problems


def test_config_client_hello_timeout_positive() -> None:
    problems = config_problems(sni_conf('pool = "a"\n', "[timeouts]\nclient_hello = 0\n"))
    assert len(problems) == 1 and "timeouts.client_hello" in problems[0]
