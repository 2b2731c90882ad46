"""PROXY protocol v1 (text) and v2 (binary): parse a header at the start of a buffer and
build one. Pure code, no I/O; written from haproxy's `doc/proxy-protocol.txt`.

`parse(data)` looks only at the start of `data` and returns one of:

- `NEED_MORE` (an `Incomplete`): every byte of `data` belongs to a header that has not
  ended yet, so a reader may consume them all and wait for more;
- a `Header`, whose `length` says how many bytes of `data` it took;
- an `Invalid` with a reason: the connection must be closed, nothing passed on.

It is strict: a v1 line must end with CRLF within 107 bytes, use single spaces, literal
addresses of the announced family and decimal ports 0..65535 without leading zeros; a v2
header must carry version 2, a known command, family and transport, an address block
that fits its length field, well-formed TLVs (skipped), and at most `MAX_V2_LENGTH`
bytes after the 16 fixed ones.

`LOCAL` (v2) and `UNKNOWN` (v1) headers, and v2 `PROXY` headers whose addresses are not
IP (`AF_UNSPEC`, `AF_UNIX`), are valid: the receiver keeps the connection's own addresses
(`Header.source` is None), as the specification says.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Final

V1_PREFIX: Final = b"PROXY "
V1_MAX: Final = 107  # the longest v1 line, CRLF included (the specification's bound)
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED: Final = 16  # signature, version/command, family/transport, length
MAX_V2_LENGTH: Final = 4096  # bytes after the fixed 16 we accept (addresses and TLVs)
MAX_HEADER: Final = V2_FIXED + MAX_V2_LENGTH  # nothing longer is ever waited for

# v2 byte 13: version (high nibble) and command (low nibble)
_V2_VERSION = 0x2
_CMD_LOCAL = 0x0
_CMD_PROXY = 0x1
# v2 byte 14: address family (high nibble) and transport (low nibble)
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0x0, 0x1, 0x2, 0x3
_T_UNSPEC, _T_STREAM, _T_DGRAM = 0x0, 0x1, 0x2
_ADDRESS_SIZE = {_AF_UNSPEC: 0, _AF_INET: 12, _AF_INET6: 36, _AF_UNIX: 216}

TCP4: Final = "tcp4"
TCP6: Final = "tcp6"
UNKNOWN: Final = "unknown"  # addresses not given (v1 UNKNOWN, v2 LOCAL / UNSPEC / UNIX)


@dataclass(frozen=True, slots=True)
class Header:
    version: int  # 1 or 2
    family: str  # TCP4, TCP6 or UNKNOWN
    source: tuple[str, int] | None  # (ip, port) of the real client; None: use the socket's
    destination: tuple[str, int] | None
    length: int  # bytes the header took at the start of the buffer
    local: bool = False  # v2 LOCAL: the proxy's own connection (a health check)


@dataclass(frozen=True, slots=True)
class Invalid:
    reason: str


class Incomplete:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_MORE"


NEED_MORE: Final = Incomplete()

Result = Header | Incomplete | Invalid


def parse(data: bytes | bytearray | memoryview) -> Result:
    """The PROXY header at the start of `data` (see the module's docstring)."""
    data = bytes(data[:MAX_HEADER])
    if data.startswith(V2_SIGNATURE):
        return _parse_v2(data)
    if data.startswith(V1_PREFIX):
        return _parse_v1(data)
    if V2_SIGNATURE.startswith(data) or V1_PREFIX.startswith(data):
        return NEED_MORE  # empty, or a prefix of a signature
    return Invalid("no PROXY protocol header")


# -- v1 ----------------------------------------------------------------------------------------
def _parse_v1(data: bytes) -> Result:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        head = data[:V1_MAX]
        if b"\n" in head or b"\r" in head[:-1]:
            return Invalid("v1: a line ending other than CRLF")
        if len(data) >= V1_MAX:
            return Invalid(f"v1: no CRLF within {V1_MAX} bytes")
        if not head.isascii() or head.rstrip(b"\r").translate(None, _V1_CHARS):
            return Invalid("v1: characters outside the header's alphabet")
        return NEED_MORE
    line = data[:end]
    length = end + 2
    if not line.isascii() or line.translate(None, _V1_CHARS):
        return Invalid("v1: characters outside the header's alphabet")
    fields = line.split(b" ")
    proto = fields[1] if len(fields) > 1 else b""
    if proto == b"UNKNOWN":
        # "the receiver must ignore anything presented before the CRLF is found"
        return Header(1, UNKNOWN, None, None, length)
    if proto not in (b"TCP4", b"TCP6"):
        return Invalid(f"v1: unknown protocol {proto.decode()!r}")
    if len(fields) != 6:
        return Invalid("v1: expected PROXY TCPn SRC DST SPORT DPORT with single spaces")
    family = TCP4 if proto == b"TCP4" else TCP6
    try:
        src = _v1_address(fields[2], family)
        dst = _v1_address(fields[3], family)
        sport = _v1_port(fields[4])
        dport = _v1_port(fields[5])
    except ValueError as exc:
        return Invalid(f"v1: {exc}")
    return Header(1, family, (src, sport), (dst, dport), length)


# Bytes a v1 line may hold: letters, digits, '.', ':', space (hex digits are letters).
_V1_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.: "


def _v1_address(text: bytes, family: str) -> str:
    value = text.decode("ascii")
    try:
        if family == TCP4:
            return str(ipaddress.IPv4Address(value))
        return str(ipaddress.IPv6Address(value))
    except ValueError:
        kind = "IPv4" if family == TCP4 else "IPv6"
        raise ValueError(f"{value!r} is not an {kind} address") from None


def _v1_port(text: bytes) -> int:
    value = text.decode("ascii")
    if not value.isdigit() or len(value) > 5 or (len(value) > 1 and value[0] == "0"):
        raise ValueError(f"port {value!r} is not a number 0..65535 without leading zeros")
    port = int(value)
    if port > 65535:
        raise ValueError(f"port {port} is out of range 0..65535")
    return port


# -- v2 ----------------------------------------------------------------------------------------
def _parse_v2(data: bytes) -> Result:
    if len(data) >= 13 and data[12] >> 4 != _V2_VERSION:
        return Invalid(f"v2: version {data[12] >> 4} (expected 2)")
    if len(data) >= 13 and data[12] & 0xF not in (_CMD_LOCAL, _CMD_PROXY):
        return Invalid(f"v2: unknown command {data[12] & 0xF}")
    if len(data) >= 14:
        family, transport = data[13] >> 4, data[13] & 0xF
        if family not in _ADDRESS_SIZE:
            return Invalid(f"v2: unknown address family {family}")
        if transport not in (_T_UNSPEC, _T_STREAM, _T_DGRAM):
            return Invalid(f"v2: unknown transport {transport}")
    if len(data) < V2_FIXED:
        return NEED_MORE
    (size,) = struct.unpack_from("!H", data, 14)
    if size > MAX_V2_LENGTH:
        return Invalid(f"v2: length {size} over the limit of {MAX_V2_LENGTH}")
    length = V2_FIXED + size
    command = data[12] & 0xF
    family, transport = data[13] >> 4, data[13] & 0xF
    need = _ADDRESS_SIZE[family]
    if command == _CMD_PROXY and size < need:
        return Invalid(f"v2: length {size} too short for the address block ({need})")
    if len(data) < length:
        return NEED_MORE
    if command == _CMD_LOCAL:
        # The proxy's own connection: ignore the whole block, keep the real addresses.
        return Header(2, UNKNOWN, None, None, length, local=True)
    problem = _check_tlvs(data[V2_FIXED + need : length])
    if problem:
        return Invalid(f"v2: {problem}")
    if family in (_AF_INET, _AF_INET6):
        if transport != _T_STREAM:
            return Invalid("v2: an IP header for a transport other than TCP")
        block = data[V2_FIXED : V2_FIXED + need]
        if family == _AF_INET:
            src = str(ipaddress.IPv4Address(block[0:4]))
            dst = str(ipaddress.IPv4Address(block[4:8]))
            sport, dport = struct.unpack_from("!HH", block, 8)
            return Header(2, TCP4, (src, sport), (dst, dport), length)
        src = str(ipaddress.IPv6Address(block[0:16]))
        dst = str(ipaddress.IPv6Address(block[16:32]))
        sport, dport = struct.unpack_from("!HH", block, 32)
        return Header(2, TCP6, (src, sport), (dst, dport), length)
    if transport == _T_DGRAM:
        return Invalid("v2: a datagram transport on a stream connection")
    # AF_UNSPEC or AF_UNIX: valid, but nothing we can use as a client address.
    return Header(2, UNKNOWN, None, None, length)


def _check_tlvs(tlvs: bytes) -> str:
    """'' when `tlvs` is a clean sequence of type-length-value entries, else why not."""
    at = 0
    while at < len(tlvs):
        if len(tlvs) - at < 3:
            return "a truncated TLV"
        kind = tlvs[at]
        (size,) = struct.unpack_from("!H", tlvs, at + 1)
        at += 3 + size
        if at > len(tlvs):
            return f"a TLV of type 0x{kind:02x} runs past the header"
    return ""


# -- building ----------------------------------------------------------------------------------
def _family_of(source: tuple[str, int], destination: tuple[str, int]) -> tuple[int, bytes, bytes]:
    src = ipaddress.ip_address(source[0])
    dst = ipaddress.ip_address(destination[0])
    if src.version != dst.version:
        # A v4 client seen on a v6 socket or the reverse: express both as IPv6.
        src = src if src.version == 6 else ipaddress.IPv6Address(f"::ffff:{src}")
        dst = dst if dst.version == 6 else ipaddress.IPv6Address(f"::ffff:{dst}")
    for port in (source[1], destination[1]):
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} is out of range 0..65535")
    return src.version, src.packed, dst.packed


def build_v1(source: tuple[str, int] | None, destination: tuple[str, int] | None) -> bytes:
    """`PROXY TCP4|TCP6 src dst sport dport\\r\\n`, or `PROXY UNKNOWN\\r\\n` when either
    address is unknown. ValueError for addresses that are not IP or ports out of range."""
    if source is None or destination is None:
        return b"PROXY UNKNOWN\r\n"
    version, src, dst = _family_of(source, destination)
    if version == 4:
        words = ("TCP4", str(ipaddress.IPv4Address(src)), str(ipaddress.IPv4Address(dst)))
    else:
        words = ("TCP6", str(ipaddress.IPv6Address(src)), str(ipaddress.IPv6Address(dst)))
    return f"PROXY {' '.join(words)} {source[1]} {destination[1]}\r\n".encode("ascii")


def build_v2(source: tuple[str, int] | None, destination: tuple[str, int] | None) -> bytes:
    """A v2 PROXY header for TCP over IPv4 or IPv6; a LOCAL header (no addresses) when
    either address is unknown. No TLVs."""
    if source is None or destination is None:
        return V2_SIGNATURE + bytes((_V2_VERSION << 4 | _CMD_LOCAL, 0)) + b"\x00\x00"
    version, src, dst = _family_of(source, destination)
    family = _AF_INET if version == 4 else _AF_INET6
    block = src + dst + struct.pack("!HH", source[1], destination[1])
    return (
        V2_SIGNATURE
        + bytes((_V2_VERSION << 4 | _CMD_PROXY, family << 4 | _T_STREAM))
        + struct.pack("!H", len(block))
        + block
    )


def build(
    version: str, source: tuple[str, int] | None, destination: tuple[str, int] | None
) -> bytes:
    """`version` is the pool's `send_proxy`: "v1" or "v2"."""
    if version == "v1":
        return build_v1(source, destination)
    if version == "v2":
        return build_v2(source, destination)
    raise ValueError(f"unknown PROXY protocol version {version!r}")
