"""HTTPS termination for `http` listeners: certificates loaded once at start-up, SNI
picking among them, and a `TlsStream` the proxy reads and writes like a `SocketStream`.

One `TlsServer` per listener holds an `ssl.SSLContext` per certificate (OpenSSL keeps
one certificate per context, so SNI works by switching the connection's context in
`sni_callback`): an exact server name first, then a `*.domain` wildcard (one label, as
certificates match), else the first certificate, the default.

The streams are HTTPS-compatible (RFC 2818, trio's `https_compatible=True`): an EOF
without close_notify is an ordinary end of stream, and none is sent on close, as most
HTTPS servers and clients do. trio's Broken/ClosedResourceError become
`ConnectionResetError`, so the proxy's `except OSError` (the client went away) covers TLS
exactly as it covers plain sockets.
"""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import trio
from trio.lowlevel import wait_readable

from tuilb.errors import StartupError
from tuilb.l7.stream import CHUNK

if TYPE_CHECKING:
    from tuilb.httpconf import Certificate
    from tuilb.model import Backend

ErrorHook = Callable[[str, "Backend | None", str], None]

_HANDSHAKE_RECORD = 0x16  # the first byte of every TLS ClientHello
_HTTP_REQUEST = re.compile(rb"^[A-Z]{3,10} ")
_PLAIN_BODY = b"This port speaks HTTPS: use an https:// address.\n"
_PLAIN_ANSWER = (
    b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_PLAIN_BODY), _PLAIN_BODY)
)


class _Encrypted(Exception):
    """Raised from the password callback: tuilb never prompts for a key's passphrase."""


def _no_password() -> bytes:
    raise _Encrypted


# -- loading certificates -------------------------------------------------------------------
def _base_context() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)  # server side
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_NONE  # no client certificates
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(["http/1.1"])  # a client offering h2 learns to speak 1.1
    return context


def certificate_problem(cert: str, key: str) -> tuple[str, str] | None:
    """Why `cert` and `key` cannot serve, as (which key: "cert" or "key", message), or
    None when they load. The same check the start-up runs; `tuilb check` uses it too."""
    try:
        _load(_base_context(), cert, key)
    except _LoadError as exc:
        return exc.which, exc.message
    return None


class _LoadError(Exception):
    def __init__(self, which: str, message: str) -> None:
        super().__init__(message)
        self.which = which
        self.message = message


def _load(context: ssl.SSLContext, cert: str, key: str) -> None:
    for which, path in (("cert", cert), ("key", key)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise _LoadError(which, f"cannot read {path!r}: {_strerror(exc)}") from None
    try:
        # A separate parse of the certificate alone tells "not a certificate" apart from
        # "not a key" and "not the key of this certificate", which load_cert_chain mixes.
        ssl.create_default_context().load_verify_locations(cafile=cert)
    except (ssl.SSLError, ValueError) as exc:
        raise _LoadError("cert", f"{cert!r} holds no PEM certificate ({_reason(exc)})") from None
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except _Encrypted:
        raise _LoadError(
            "key", f"{key!r} is encrypted; tuilb needs an unencrypted private key"
        ) from None
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise _LoadError("key", f"{key!r} is not the private key of {cert!r}") from None
        raise _LoadError(
            "key", f"{key!r} holds no usable PEM private key ({_reason(exc)})"
        ) from None
    except OSError as exc:
        raise _LoadError("key", f"cannot load {cert!r} / {key!r}: {_strerror(exc)}") from None


def _reason(exc: Exception) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason).lower().replace("_", " ") if reason else str(exc)


def _strerror(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()


# -- one listener's TLS side ----------------------------------------------------------------
class TlsServer:
    """The contexts of one listener, built at start-up (StartupError if one cannot load),
    SNI selection, and the handshake of each new connection."""

    def __init__(self, listener: str, certificates: Sequence[Certificate]) -> None:
        if not certificates:
            raise StartupError(f"listener {listener!r}: tls needs at least one certificate")
        self.exact: dict[str, ssl.SSLContext] = {}
        self.wildcard: dict[str, ssl.SSLContext] = {}  # "example.com" for "*.example.com"
        contexts: list[ssl.SSLContext] = []
        for certificate in certificates:
            context = _base_context()
            try:
                _load(context, certificate.cert, certificate.key)
            except _LoadError as exc:
                raise StartupError(f"listener {listener!r}: tls: {exc.message}") from None
            contexts.append(context)
            for name in certificate.server_names:
                name = name.lower()
                table = self.wildcard if name.startswith("*.") else self.exact
                table.setdefault(name.removeprefix("*."), context)
        self.default = contexts[0]
        self.context = contexts[0]  # what new connections start with
        if len(contexts) > 1 or self.exact or self.wildcard:
            self.context.sni_callback = self._sni
        self.handshakes = 0  # completed
        self.failures = 0  # broken off, not TLS, or timed out
        self.timeouts = 0

    def select(self, server_name: str | None) -> ssl.SSLContext:
        """The context for a ClientHello's server name."""
        if not server_name:
            return self.default
        name = server_name.lower().rstrip(".")
        found = self.exact.get(name)
        if found is not None:
            return found
        _, dot, parent = name.partition(".")
        if dot:
            found = self.wildcard.get(parent)
            if found is not None:
                return found
        return self.default

    def _sni(
        self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        chosen = self.select(server_name)
        if chosen is not connection.context:
            connection.context = chosen

    async def accept(
        self, sock: socket.socket, timeout: float, on_error: ErrorHook
    ) -> TlsStream | None:
        """The handshake of a new connection within `timeout` seconds: a `TlsStream`, or
        None when the caller should just close `sock` (failures are reported through
        `on_error`; a client that leaves before sending a byte is not a failure)."""
        with trio.move_on_after(timeout):
            first = await _peek(sock)
            if not first:
                return None  # closed or reset before a byte: a port probe, say
            if first[0] != _HANDSHAKE_RECORD:
                self.failures += 1
                if _HTTP_REQUEST.match(first):
                    _answer_plain_http(sock)
                    on_error("tls_handshake_failed", None, "plain HTTP sent to an HTTPS listener")
                else:
                    on_error("tls_handshake_failed", None, "the client does not speak TLS")
                return None
            try:
                stream = TlsStream(sock, self.context)
                await stream.ssl.do_handshake()
            except (trio.BrokenResourceError, OSError) as exc:
                self.failures += 1
                cause = exc.__cause__ if exc.__cause__ is not None else exc
                on_error("tls_handshake_failed", None, _describe(cause))
                return None
            self.handshakes += 1
            return stream
        self.failures += 1
        self.timeouts += 1
        on_error("tls_handshake_timeout", None, f"no TLS handshake within {timeout:g}s")
        return None


async def _peek(sock: socket.socket) -> bytes:
    """The first bytes the client sent, left in the socket; b"" on EOF or a reset."""
    while True:
        try:
            return sock.recv(16, socket.MSG_PEEK)
        except BlockingIOError:
            await wait_readable(sock)
        except OSError:
            return b""


def _answer_plain_http(sock: socket.socket) -> None:
    """Best effort, as nginx does: read what came (so the close is no reset that could
    destroy the answer) and say in plain HTTP what is wrong. Never waits."""
    try:
        for _ in range(16):
            if not sock.recv(CHUNK):
                break
    except OSError:
        pass
    try:
        sock.send(_PLAIN_ANSWER)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or exc.strerror or str(exc)
        return f"TLS: {str(reason).lower().replace('_', ' ')}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


# -- the stream -----------------------------------------------------------------------------
class TlsStream:
    """`SocketStream`'s three methods over `trio.SSLStream` (server side)."""

    __slots__ = ("raw", "ssl")

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        self.raw = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        self.ssl = trio.SSLStream(self.raw, context, server_side=True, https_compatible=True)

    async def receive(self) -> bytes:
        try:
            data = await self.ssl.receive_some(CHUNK)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ConnectionResetError(f"TLS stream: {exc}") from exc
        return data if isinstance(data, bytes) else bytes(data)

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self.ssl.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ConnectionResetError(f"TLS stream: {exc}") from exc

    def close(self) -> None:
        self.raw.socket.close()  # through trio: wakes anything still waiting on it
