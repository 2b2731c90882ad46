"""TLS ClientHello: find the server name (SNI) at the start of a client's byte stream.
Pure code, no I/O; written from RFC 8446 (sections 4, 4.1.2, 5.1) and RFC 6066 (section 3).

`parse(data)` looks only at the start of `data`, which must be the first bytes a client
sent, and returns one of:

- an `Incomplete` whose `needed` is how many bytes (from the start) must at least be there
  before anything more can be said;
- a `Hello`: the ClientHello is complete; `server_name` is its host_name in lower case, or
  None when the hello carries no server_name extension;
- an `Invalid` with a reason: not a ClientHello, or a malformed one.

Nothing is ever consumed or changed: a caller peeks, decides, and passes the bytes on.

The hello may be split over several handshake records (RFC 8446 5.1 allows it); their
fragments are joined. It is strict: every length must fit the one that contains it, records
hold at most 2^14 bytes and are never empty, the record and hello versions must be 3.x, the
cipher suite list is even and not empty, extensions fill the rest of the hello exactly and
none appears twice, the server name list holds at most one host_name, which is 1 to 255
printable ASCII bytes. Nothing longer than `MAX_BYTES` (records, headers included) is ever
waited for. SSL 2.0 compatible hellos are refused (they carry no extensions anyway).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

MAX_BYTES: Final = 16384 + 1024  # the records of a hello, their headers included
MAX_RECORD: Final = 16384  # 2^14, RFC 8446 5.1
MAX_NAME: Final = 255

_RECORD_HEADER = 5  # type, legacy_record_version (2), length (2)
_HANDSHAKE_HEADER = 4  # msg_type, length (3)
_CONTENT_HANDSHAKE = 22
_CLIENT_HELLO = 1
_EXT_SERVER_NAME = 0
_NAME_HOST = 0


@dataclass(frozen=True, slots=True)
class Hello:
    server_name: str | None  # lower case; None: no server_name extension
    length: int  # end of the last record holding part of the hello (it may go on past data)


@dataclass(frozen=True, slots=True)
class Invalid:
    reason: str


@dataclass(frozen=True, slots=True)
class Incomplete:
    needed: int  # at least this many bytes from the start of the stream


Result = Hello | Incomplete | Invalid


class _Malformed(Exception):
    pass


def parse(data: bytes | bytearray | memoryview) -> Result:
    """The ClientHello at the start of `data` (see the module's docstring)."""
    data = bytes(data[:MAX_BYTES])
    message = bytearray()  # the handshake message, joined from record fragments
    total: int | None = None  # its full length, header included, once known
    at = 0
    while True:
        if at + _RECORD_HEADER > len(data):
            # Refuse what can be refused from the bytes already there.
            if at < len(data) and data[at] != _CONTENT_HANDSHAKE:
                return _not_handshake(data[at], at)
            if at + 1 < len(data) and data[at + 1] != 3:
                return Invalid(f"record version {data[at + 1]}.x is not TLS")
            return _incomplete(at + _RECORD_HEADER)
        kind, major = data[at], data[at + 1]
        size = int.from_bytes(data[at + 3 : at + 5], "big")
        if kind != _CONTENT_HANDSHAKE:
            return _not_handshake(kind, at)
        if major != 3:
            return Invalid(f"record version {major}.x is not TLS")
        if size == 0:
            return Invalid("empty handshake record")
        if size > MAX_RECORD:
            return Invalid(f"record length {size} is over 2^14")
        end = at + _RECORD_HEADER + size
        message += data[at + _RECORD_HEADER : min(end, len(data))]
        if total is None and message and message[0] != _CLIENT_HELLO:
            return Invalid(f"handshake message type {message[0]} is not a ClientHello")
        if total is None and len(message) >= _HANDSHAKE_HEADER:
            total = _HANDSHAKE_HEADER + int.from_bytes(message[1:4], "big")
            if total + _RECORD_HEADER > MAX_BYTES:
                return Invalid(f"a ClientHello of {total} bytes is over the limit")
        if total is not None and len(message) >= total:
            break  # what follows the hello in its last record does not matter
        if end > len(data):
            return _incomplete(end)
        at = end
    try:
        name = _server_name(bytes(message[_HANDSHAKE_HEADER:total]))
    except _Malformed as exc:
        return Invalid(str(exc))
    return Hello(name, end)


def _incomplete(needed: int) -> Result:
    if needed > MAX_BYTES:
        return Invalid(f"no complete ClientHello within {MAX_BYTES} bytes")
    return Incomplete(needed)


def _not_handshake(kind: int, at: int) -> Invalid:
    if at == 0 and kind & 0x80:
        return Invalid("an SSL 2.0 hello or not TLS at all")
    return Invalid(f"record type {kind} where a handshake record was expected")


class _Reader:
    __slots__ = ("at", "data", "end")

    def __init__(self, data: bytes, start: int = 0, end: int | None = None) -> None:
        self.data = data
        self.at = start
        self.end = len(data) if end is None else end

    def take(self, n: int, what: str) -> bytes:
        if self.at + n > self.end:
            raise _Malformed(f"{what}: {n} bytes announced, {self.end - self.at} left")
        chunk = self.data[self.at : self.at + n]
        self.at += n
        return chunk

    def number(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "big")

    def vector(self, size: int, what: str) -> _Reader:
        """The body of a vector with a `size`-byte length prefix, as a reader of its own."""
        n = self.number(size, f"{what} length")
        start = self.at
        self.take(n, what)
        return _Reader(self.data, start, start + n)

    @property
    def left(self) -> int:
        return self.end - self.at


def _server_name(body: bytes) -> str | None:
    r = _Reader(body)
    major = r.number(1, "version")
    r.take(1, "version")
    if major != 3:
        raise _Malformed(f"ClientHello version {major}.x is not TLS")
    r.take(32, "random")
    session = r.vector(1, "session id")
    if session.left > 32:
        raise _Malformed(f"session id of {session.left} bytes is over 32")
    suites = r.vector(2, "cipher suites")
    if suites.left == 0 or suites.left % 2:
        raise _Malformed(f"cipher suites length {suites.left} is not a positive even number")
    compression = r.vector(1, "compression methods")
    if compression.left == 0:
        raise _Malformed("no compression method")
    if r.left == 0:
        return None  # no extensions at all (allowed before TLS 1.3)
    extensions = r.vector(2, "extensions")
    if r.left:
        raise _Malformed(f"{r.left} bytes after the extensions")
    seen: set[int] = set()
    name: str | None = None
    while extensions.left:
        kind = extensions.number(2, "extension type")
        data = extensions.vector(2, f"extension {kind}")
        if kind in seen:
            raise _Malformed(f"extension {kind} appears twice")
        seen.add(kind)
        if kind == _EXT_SERVER_NAME:
            name = _host_name(data)
    return name


def _host_name(ext: _Reader) -> str | None:
    names = ext.vector(2, "server name list")
    if ext.left:
        raise _Malformed(f"{ext.left} bytes after the server name list")
    if names.left == 0:
        # A server's reply carries an empty extension; a client's must name a host.
        raise _Malformed("empty server name list")
    host: str | None = None
    while names.left:
        kind = names.number(1, "server name type")
        value = names.vector(2, "server name")
        raw = value.take(value.left, "server name")
        if kind != _NAME_HOST:
            continue  # unknown name types are skipped (none other is defined)
        if host is not None:
            raise _Malformed("more than one host_name")
        if not 0 < len(raw) <= MAX_NAME:
            raise _Malformed(f"host_name of {len(raw)} bytes (1 to {MAX_NAME} allowed)")
        if any(b <= 0x20 or b >= 0x7F for b in raw):
            raise _Malformed("host_name is not printable ASCII")
        host = raw.decode("ascii").lower()
    return host


@dataclass(frozen=True, slots=True)
class SniRoute:
    """`[[listeners.sni_routes]]`: clients naming `server_name` go to `pool`."""

    server_name: str  # lower case, no trailing dot; exact, or "*.example.com"
    pool: str


def route(routes: tuple[SniRoute, ...], name: str | None) -> str | None:
    """The pool for a hello naming `name` (lower case): the entry with exactly that name,
    else the first wildcard entry, in written order, whose `*.domain` covers it (any
    subdomain at any depth, not the domain itself). None: no entry matches."""
    if name is None:
        return None
    for entry in routes:
        if entry.server_name == name:
            return entry.pool
    for entry in routes:
        suffix = entry.server_name[1:]  # ".example.com" for "*.example.com"
        if entry.server_name.startswith("*.") and name.endswith(suffix) and len(name) > len(suffix):
            return entry.pool
    return None
