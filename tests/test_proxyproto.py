"""PROXY protocol v1/v2 parsing and building (tuilb.proxyproto), against the examples and
rules of haproxy's doc/proxy-protocol.txt."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tuilb.proxyproto import (
    MAX_V2_LENGTH,
    NEED_MORE,
    TCP4,
    TCP6,
    UNKNOWN,
    V1_MAX,
    V2_SIGNATURE,
    Header,
    Invalid,
    build,
    build_v1,
    build_v2,
    parse,
)

SIG = b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"  # the 12 bytes, as the spec lists them
V6MAX = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"


def v2(ver_cmd: int, fam: int, block: bytes, length: int | None = None) -> bytes:
    size = len(block) if length is None else length
    return SIG + bytes((ver_cmd, fam)) + struct.pack("!H", size) + block


V4_BLOCK = bytes((192, 168, 0, 1, 10, 0, 0, 2)) + struct.pack("!HH", 56324, 443)
V6_BLOCK = (
    bytes.fromhex("20010db8000000000000000000000001")
    + bytes.fromhex("20010db8000000000000000000000002")
    + struct.pack("!HH", 1024, 80)
)


def test_signature_is_the_specified_one() -> None:
    assert V2_SIGNATURE == SIG


# -- valid headers --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "family", "source", "destination"),
    [
        (b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n", TCP4,
         ("192.168.0.1", 56324), ("192.168.0.11", 443)),
        (b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n", TCP4,
         ("255.255.255.255", 65535), ("255.255.255.255", 65535)),
        (b"PROXY TCP4 0.0.0.0 0.0.0.0 0 0\r\n", TCP4, ("0.0.0.0", 0), ("0.0.0.0", 0)),
        (f"PROXY TCP6 {V6MAX} {V6MAX} 65535 65535\r\n".encode(), TCP6,
         (V6MAX, 65535), (V6MAX, 65535)),
        (b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n", TCP6, ("2001:db8::1", 1), ("::1", 2)),
        (b"PROXY UNKNOWN\r\n", UNKNOWN, None, None),
        # UNKNOWN: whatever follows up to the CRLF is ignored; this is the 107-byte worst case
        (f"PROXY UNKNOWN {V6MAX} {V6MAX} 65535 65535\r\n".encode(), UNKNOWN, None, None),
    ],
)  # fmt: skip
def test_v1_valid(
    data: bytes,
    family: str,
    source: tuple[str, int] | None,
    destination: tuple[str, int] | None,
) -> None:
    tail = b"GET / HTTP/1.1\r\n"
    result = parse(data + tail)
    assert result == Header(1, family, source, destination, len(data))
    assert len(data) <= V1_MAX


def test_v1_worst_case_is_107_bytes() -> None:
    assert len(f"PROXY UNKNOWN {V6MAX} {V6MAX} 65535 65535\r\n") == V1_MAX


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (v2(0x21, 0x11, V4_BLOCK), Header(2, TCP4, ("192.168.0.1", 56324), ("10.0.0.2", 443), 28)),
        (v2(0x21, 0x21, V6_BLOCK),
         Header(2, TCP6, ("2001:db8::1", 1024), ("2001:db8::2", 80), 52)),
        # LOCAL: addresses (if any) are ignored, the connection's own are used
        (v2(0x20, 0x00, b""), Header(2, UNKNOWN, None, None, 16, local=True)),
        (v2(0x20, 0x11, V4_BLOCK), Header(2, UNKNOWN, None, None, 28, local=True)),
        # PROXY with AF_UNSPEC or AF_UNIX: valid, no usable address
        (v2(0x21, 0x00, b""), Header(2, UNKNOWN, None, None, 16)),
        (v2(0x21, 0x31, bytes(216)), Header(2, UNKNOWN, None, None, 232)),
        # TLVs after the addresses are skipped (ALPN "h2", then a NOOP of 3 bytes)
        (v2(0x21, 0x11, V4_BLOCK + b"\x01\x00\x02h2" + b"\x04\x00\x03abc"),
         Header(2, TCP4, ("192.168.0.1", 56324), ("10.0.0.2", 443), 28 + 5 + 6)),
    ],
)  # fmt: skip
def test_v2_valid(data: bytes, expected: Header) -> None:
    assert parse(data) == expected
    assert parse(data + b"\x16\x03\x01 payload") == expected


# -- incomplete ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"P",
        b"PROXY",
        b"PROXY ",
        b"PROXY TCP4 1.2.3.4",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r",
        SIG[:1],
        SIG[:11],
        SIG,
        SIG + b"\x21",
        SIG + b"\x21\x11\x00",
        v2(0x21, 0x11, V4_BLOCK)[:-1],
        v2(0x21, 0x11, V4_BLOCK + b"\x01\x00\x02h2")[:-1],
    ],
)
def test_incomplete(data: bytes) -> None:
    assert parse(data) is NEED_MORE


def test_every_prefix_of_a_valid_header_needs_more() -> None:
    for header in (
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
        b"PROXY UNKNOWN\r\n",
        v2(0x21, 0x21, V6_BLOCK + b"\x02\x00\x01x"),
    ):
        for n in range(len(header)):
            assert parse(header[:n]) is NEED_MORE, header[:n]
        assert isinstance(parse(header), Header)


# -- malformed ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"GET / HTTP/1.1\r\n", "no PROXY"),
        (b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "no PROXY"),
        (b"\r\n\r\n\x00\r\nQUIX\n" + bytes(4), "no PROXY"),  # bad signature
        (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
        (b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
        (b"PROXY UNKNOWNX\r\n", "unknown protocol"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "single spaces"),
        (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "single spaces"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "single spaces"),
        (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "IPv4"),
        (b"PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n", "IPv4"),
        (b"PROXY TCP4 256.2.3.4 5.6.7.8 1 2\r\n", "IPv4"),
        (b"PROXY TCP4 example.com 5.6.7.8 1 2\r\n", "IPv4"),
        (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "IPv6"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "out of range"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n", "out of range"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 0080 2\r\n", "leading zeros"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1e3 2\r\n", "leading zeros"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 123456 2\r\n", "leading zeros"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "CRLF"),
        (b"PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n", "alphabet"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\x00\r\n", "alphabet"),
        (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "alphabet"),
        (b"PROXY TCP4 1.2.3.4 \xff", "alphabet"),
        (b"PROXY " + b"A" * (V1_MAX - 6), "no CRLF within 107"),
        (f"PROXY UNKNOWN {V6MAX} {V6MAX} 65535 655350\r\n".encode(), "no CRLF within 107"),
        (v2(0x11, 0x11, V4_BLOCK), "version 1"),
        (v2(0x31, 0x11, V4_BLOCK), "version 3"),
        (v2(0x22, 0x11, V4_BLOCK), "unknown command 2"),
        (v2(0x21, 0x41, V4_BLOCK), "unknown address family 4"),
        (v2(0x21, 0x13, V4_BLOCK), "unknown transport 3"),
        (v2(0x21, 0x12, V4_BLOCK), "transport other than TCP"),
        (v2(0x21, 0x02, b""), "datagram"),
        (v2(0x21, 0x11, V4_BLOCK[:8]), "too short for the address block"),
        (v2(0x21, 0x21, V4_BLOCK), "too short for the address block"),
        (v2(0x21, 0x11, b"", length=MAX_V2_LENGTH + 1), "over the limit"),
        (v2(0x21, 0x11, b"", length=0xFFFF), "over the limit"),
        (v2(0x21, 0x11, V4_BLOCK + b"\x01\x00"), "truncated TLV"),
        (v2(0x21, 0x11, V4_BLOCK + b"\x01\x00\x05h2"), "runs past"),
    ],
)
def test_malformed(data: bytes, why: str) -> None:
    result = parse(data)
    assert isinstance(result, Invalid), result
    assert why in result.reason


def test_malformed_v2_is_refused_before_its_length_arrives() -> None:
    # A bad version or family is known from the 13th/14th byte: no waiting on the rest.
    assert isinstance(parse(SIG + b"\x31"), Invalid)
    assert isinstance(parse(SIG + b"\x21\x51"), Invalid)
    assert isinstance(parse(SIG + b"\x21\x11\xff\xff"), Invalid)


def test_v1_without_crlf_is_refused_at_107_bytes_not_later() -> None:
    line = b"PROXY UNKNOWN " + b"a" * 200
    assert parse(line[: V1_MAX - 1]) is NEED_MORE
    assert isinstance(parse(line[:V1_MAX]), Invalid)


# -- building -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("source", "destination", "v1", "v2_family"),
    [
        (("192.168.0.1", 56324), ("192.168.0.11", 443),
         b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n", 0x11),
        (("2001:db8::1", 1024), ("::1", 80), b"PROXY TCP6 2001:db8::1 ::1 1024 80\r\n", 0x21),
        # mixed families (a v4 client of a v6 listener): both as IPv6
        (("10.0.0.1", 5), ("::1", 6), b"PROXY TCP6 ::ffff:a00:1 ::1 5 6\r\n", 0x21),
    ],
)  # fmt: skip
def test_build(
    source: tuple[str, int], destination: tuple[str, int], v1: bytes, v2_family: int
) -> None:
    assert build_v1(source, destination) == v1
    assert build("v1", source, destination) == v1
    header = build_v2(source, destination)
    assert header.startswith(SIG + bytes((0x21, v2_family)))
    assert build("v2", source, destination) == header
    for data in (v1, header):
        parsed = parse(data)
        assert isinstance(parsed, Header) and parsed.length == len(data)
        assert parsed.source is not None and parsed.source[1] == source[1]


def test_build_unknown_addresses() -> None:
    assert build_v1(None, None) == b"PROXY UNKNOWN\r\n"
    local = build_v2(("1.2.3.4", 1), None)
    assert local == SIG + b"\x20\x00\x00\x00"
    assert parse(local) == Header(2, UNKNOWN, None, None, 16, local=True)


def test_build_refuses_bad_input() -> None:
    with pytest.raises(ValueError):
        build_v1(("1.2.3.4", 70000), ("5.6.7.8", 1))
    with pytest.raises(ValueError):
        build_v2(("not-an-ip", 1), ("5.6.7.8", 1))
    with pytest.raises(ValueError):
        build("v3", None, None)


@given(
    st.ip_addresses(),
    st.ip_addresses(),
    st.integers(0, 65535),
    st.integers(0, 65535),
    st.sampled_from(["v1", "v2"]),
)
def test_build_then_parse_round_trips(
    src: object, dst: object, sport: int, dport: int, version: str
) -> None:
    header = build(version, (str(src), sport), (str(dst), dport))
    parsed = parse(header + b"rest")
    assert isinstance(parsed, Header)
    assert parsed.length == len(header)
    assert parsed.source is not None and parsed.destination is not None
    assert (parsed.source[1], parsed.destination[1]) == (sport, dport)
    if getattr(src, "version", 0) == getattr(dst, "version", 0):
        assert parsed.source[0] == str(src) and parsed.destination[0] == str(dst)


@given(st.binary(max_size=200))
def test_parse_never_raises(data: bytes) -> None:
    result = parse(data)
    assert result is NEED_MORE or isinstance(result, (Header, Invalid))
    if isinstance(result, Header):
        assert 0 < result.length <= len(data)


@given(st.binary(max_size=60))
def test_parse_never_raises_after_a_signature(data: bytes) -> None:
    for prefix in (SIG, b"PROXY "):
        result = parse(prefix + data)
        assert result is NEED_MORE or isinstance(result, (Header, Invalid))


# -- configuration ---------------------------------------------------------------------------
_CONF = """[[listeners]]
name = "f"
bind = "127.0.0.1:0"
pool = "app"
{listener}
[pools.app]
{pool}
[[pools.app.backends]]
name = "a"
address = "127.0.0.1:1"
"""


def test_config_keys() -> None:
    from tuilb.config import parse as parse_config

    config = parse_config(
        _CONF.format(listener='accept_proxy = ["10.0.0.0/8", "::1"]', pool='send_proxy = "v2"')
    )
    assert [str(n) for n in config.listeners[0].accept_proxy] == ["10.0.0.0/8", "::1/128"]
    assert config.pools["app"].send_proxy == "v2"
    assert config.timeouts.proxy_header == 5.0
    plain = parse_config(_CONF.format(listener="", pool=""))
    assert plain.listeners[0].accept_proxy == () and plain.pools["app"].send_proxy is None


@pytest.mark.parametrize(
    ("listener", "pool", "where", "message"),
    [
        ('accept_proxy = ["10.0.0.0/33"]', "", "listeners[0].accept_proxy[0]", "not an address"),
        ("accept_proxy = [5]", "", "listeners[0].accept_proxy[0]", "not an address"),
        ("accept_proxy = []", "", "listeners[0].accept_proxy", "empty"),
        ('accept_proxy = "10.0.0.0/8"', "", "listeners[0].accept_proxy", "expected an array"),
        ("", 'send_proxy = "v3"', "pools.app.send_proxy", "not one of: v1, v2"),
        ("", "send_proxy = 2", "pools.app.send_proxy", "expected a string"),
    ],
)
def test_config_problems(listener: str, pool: str, where: str, message: str) -> None:
    from tuilb.config import parse as parse_config
    from tuilb.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        parse_config(_CONF.format(listener=listener, pool=pool))
    problems = caught.value.problems
    assert any(p.where == where and message in p.message and p.line for p in problems), problems
