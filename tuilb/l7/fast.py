"""The HTTP proxy's fast path: strict parsing and serializing of ordinary message heads.

h11 is the reference parser of the proxy, and it costs most of a keep-alive request's CPU
(its event machinery runs ~400 Python calls per exchange). Nearly all traffic is a few
shapes: an HTTP/1.1 request with a Host, no body or a Content-Length one, answered by an
HTTP/1.1 response with a Content-Length. For those, the heads are matched here against
regular expressions built from h11's own grammar (`h11._abnf`, restated), so every head
accepted here is one h11 accepts with the same meaning: same method, target, header names
and values, same end of head. Anything else (an incomplete head, a bare LF, obs-fold,
HTTP/1.0, an odd method, chunked framing, 1xx/204/304 answers, Expect, Upgrade, a
Connection header naming other headers) returns None and the caller hands the bytes to
h11. The rules (rules.py) then apply to either parser's output alike.

Pure code: bytes in, values out.
"""

from __future__ import annotations

import re

Headers = list[tuple[bytes, bytes]]

# h11's grammar (h11/_abnf.py), restated: token; field values are runs of "not NUL and not
# whitespace" separated by SP/HTAB, with optional whitespace around the value.
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_VCHAR = rb"[^\x00\s]"
_VALUE = _VCHAR + rb"+(?:[ \t]+" + _VCHAR + rb"+)*"
_FIELD = _TOKEN + rb":[ \t]*(?:" + _VALUE + rb")?[ \t]*\r\n"
# The whole field block in one C-level match (possessive: no backtracking across lines).
_FIELDS = re.compile(rb"(?:" + _FIELD + rb")*+")
# Only the common methods; others (and CONNECT, which is refused) go through h11. The
# target is origin-form, VCHAR without '#' (a fragment is refused by the rules).
_REQUEST_LINE = re.compile(
    rb"(GET|HEAD|POST|PUT|DELETE|OPTIONS|PATCH) (/[\x21\x22\x24-\x7e]*) HTTP/1\.1\r\n"
)
# Final statuses 200-599 with a reason phrase (h11 allows it to be absent: that goes to h11).
_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([2-5][0-9][0-9]) ((?:[ \t]|[^\x00\s])*)\r\n")
_END = b"\r\n\r\n"
# Where h11 sees a head end (h11/_receivebuffer.py): the first LF, optional CR, LF.
_BLANK_LINE = re.compile(rb"\n\r?\n")
_NO_BODY_STATUS = frozenset({204, 304})  # h11 handles these (framing headers kept as sent)
# Request headers the fast path does not take on: each asks for handling that lives in the
# h11 path (100-continue, upgrades, hop-by-hop names, framing other than Content-Length).
_REQUEST_SLOW = frozenset(
    {b"expect", b"upgrade", b"transfer-encoding", b"te", b"trailer", b"http2-settings"}
)
_MAX_LENGTH_DIGITS = 18


class RequestHead:
    __slots__ = ("close", "headers", "length", "method", "size", "target")

    def __init__(
        self,
        method: bytes,
        target: bytes,
        headers: Headers,
        size: int,
        length: int | None,
        close: bool,
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers  # names lower case, values stripped, in order
        self.size = size  # bytes of the head, final CRLF CRLF included
        self.length = length  # Content-Length of the body (None: no such header)
        self.close = close  # the client said `Connection: close`


class ResponseHead:
    __slots__ = ("close", "headers", "length", "reason", "size", "status")

    def __init__(
        self, status: int, reason: bytes, headers: Headers, size: int, length: int, close: bool
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.size = size
        self.length = length  # body bytes that follow the head
        self.close = close  # the backend said `Connection: close`


def _fields(buf: bytes, start: int, end: int) -> Headers | None:
    """The header fields in buf[start:end] (each line ending CRLF), or None when any line
    is outside h11's grammar or folded."""
    if _FIELDS.fullmatch(buf, start, end) is None:
        return None
    out: Headers = []
    if start == end:
        return out
    for line in buf[start : end - 2].split(b"\r\n"):
        name, _, value = line.partition(b":")
        out.append((name.lower(), value.strip(b" \t")))
    return out


def _connection_close(values: list[bytes]) -> bool | None:
    """`Connection` header lines -> close asked (True), keep-alive (False); None when they
    name anything else (headers to drop: the h11 path's business)."""
    close = False
    for value in values:
        for item in value.split(b","):
            item = item.strip(b" \t").lower()
            if item == b"close":
                close = True
            elif item and item != b"keep-alive":
                return None
    return close


def _length(values: list[bytes]) -> int | None:
    """One Content-Length line of plain digits -> its value; anything else None."""
    if len(values) != 1:
        return None
    value = values[0]
    if not value.isdigit() or len(value) > _MAX_LENGTH_DIGITS:
        return None
    return int(value)


def parse_request(buf: bytes) -> RequestHead | None:
    """The request head at the start of `buf` if it is complete and ordinary, else None."""
    end = buf.find(_END)
    if end < 0:
        return None
    line = _REQUEST_LINE.match(buf)
    if line is None:
        return None
    size = end + 4
    headers = _fields(buf, line.end(), end + 2)
    if headers is None:
        return None
    connection: list[bytes] = []
    lengths: list[bytes] = []
    hosts = 0
    for name, value in headers:
        if name in _REQUEST_SLOW:
            return None
        if name == b"connection":
            connection.append(value)
        elif name == b"content-length":
            lengths.append(value)
        elif name == b"host":
            hosts += 1
    if hosts != 1:
        return None  # h11 refuses HTTP/1.1 without exactly one Host (and so do the rules)
    close = _connection_close(connection)
    if close is None:
        return None
    length = None
    if lengths:
        length = _length(lengths)
        if length is None:
            return None
    return RequestHead(line[1], line[2], headers, size, length, close)


NEED_MORE = None  # parse_response: no complete head yet (distinct from SLOW below)


class _Slow:
    """parse_response: a complete head the fast path does not take: use h11."""


SLOW = _Slow()


def parse_response(buf: bytes, head_request: bool) -> ResponseHead | _Slow | None:
    """The response head at the start of `buf`: a ResponseHead when it is complete and
    ordinary (HTTP/1.1, a final status other than 204/304, Content-Length framing; to HEAD
    the length is not sent), SLOW when it is complete but not, None (NEED_MORE) when it is
    not complete. Complete means what h11 takes for complete, bare LFs included: waiting
    for a CRLF CRLF that never comes would turn a sloppy backend's answer into a 504."""
    blank = _BLANK_LINE.search(buf)
    if blank is None:
        return NEED_MORE
    end = blank.start() - 1  # where CRLF CRLF begins, if that is how the head ended
    if end < 0 or blank.end() - end != 4 or buf[end] != 13:  # 13: CR
        return SLOW
    line = _STATUS_LINE.match(buf)
    if line is None:
        return SLOW
    status = int(line[1])
    if status in _NO_BODY_STATUS:
        return SLOW
    headers = _fields(buf, line.end(), end + 2)
    if headers is None:
        return SLOW
    connection: list[bytes] = []
    lengths: list[bytes] = []
    for name, value in headers:
        if name == b"connection":
            connection.append(value)
        elif name == b"content-length":
            lengths.append(value)
        elif name == b"transfer-encoding":
            return SLOW
    close = _connection_close(connection)
    if close is None or not lengths:
        return SLOW  # other Connection options, or a body delimited by the close
    length = _length(lengths)
    if length is None:
        return SLOW
    return ResponseHead(status, line[2], headers, end + 4, 0 if head_request else length, close)


def request_head(method: bytes, target: bytes, headers: Headers) -> bytes:
    """An HTTP/1.1 request head. The caller vouches for the fields: parsed by this module
    or by h11, or tuilb's own."""
    fields = b"".join([name + b": " + value + b"\r\n" for name, value in headers])
    return b"%s %s HTTP/1.1\r\n%s\r\n" % (method, target, fields)


def response_head(status: int, reason: bytes, headers: Headers) -> bytes:
    """An HTTP/1.1 response head (fields vouched for as in `request_head`)."""
    fields = b"".join([name + b": " + value + b"\r\n" for name, value in headers])
    return b"HTTP/1.1 %d %s\r\n%s\r\n" % (status, reason, fields)


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (never empty: that is the end)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
