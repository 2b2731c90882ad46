"""HTTPS termination end to end: trustme certificates, real TLS clients on loopback, the
real engine in front of plain-HTTP h11 backends; certificate problems through the
configuration check, the engine's start-up and the command line."""

from __future__ import annotations

import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trustme
from cryptography.hazmat.primitives import serialization

from tests.conftest import RecordingLog, poll, start_engine
from tests.l7util import Client, http_config, raw_exchange, start_backends
from tuilb.config import load, parse
from tuilb.engine import Engine
from tuilb.errors import ConfigError, StartupError
from tuilb.httpconf import Certificate
from tuilb.l7.tls import TlsServer

ROOT = Path(__file__).resolve().parent.parent


# -- certificates ---------------------------------------------------------------------------
@dataclass
class Pki:
    ca: trustme.CA
    folder: Path

    def issue(self, stem: str, *names: str) -> tuple[str, str]:
        """PEM files for a certificate of `names`: (cert path, key path)."""
        cert = self.ca.issue_cert(*names)
        cert_path, key_path = self.folder / f"{stem}.pem", self.folder / f"{stem}.key"
        cert.cert_chain_pems[0].write_to_path(str(cert_path))
        cert.private_key_pem.write_to_path(str(key_path))
        return str(cert_path), str(key_path)

    def client_context(self, check_hostname: bool = True) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        context.check_hostname = check_hostname  # off: to see which certificate came
        return context


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(trustme.CA(), tmp_path)


def tls_table(*certs: tuple[str, str, tuple[str, ...]]) -> str:
    entries = []
    for cert, key, names in certs:
        listed = ", ".join(f'"{n}"' for n in names)
        entries.append(f'{{ cert = "{cert}", key = "{key}", server_names = [{listed}] }}')
    return f"tls = [{', '.join(entries)}]\n"


def tls_config(ports: list[int], tls: str, timeouts: str = ""):
    extra = f"[timeouts]\n{timeouts}\n" if timeouts else ""
    return http_config({"app": ports}, listener_extra=tls, extra=extra)


async def tls_client(
    port: int, context: ssl.SSLContext, server_name: str | None = "example.test"
) -> tuple[Client, trio.SSLStream[trio.SocketStream]]:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, context, server_hostname=server_name, https_compatible=True)
    with trio.fail_after(5):
        await stream.do_handshake()
    return Client(stream), stream  # type: ignore[arg-type]


def served_names(stream: trio.SSLStream[trio.SocketStream]) -> list[str]:
    """The DNS names of the certificate the server presented."""
    cert = stream.getpeercert()
    assert cert is not None
    return [value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"]


# -- proxying over TLS ----------------------------------------------------------------------
async def test_https_request_reaches_a_plain_backend_marked_https(nursery, pki):
    (a,) = await start_backends(nursery, "a")
    cert, key = pki.issue("site", "example.test")
    run = await start_engine(nursery, tls_config([a.port], tls_table((cert, key, ()))))
    client, stream = await tls_client(run.port, pki.client_context())
    answer = await client.request("GET", "/secure?x=1", headers=[("x-forwarded-proto", "http")])
    assert (answer.status, answer.body) == (200, b"a GET /secure?x=1\n")
    got = a.requests[0]
    assert got.header(b"x-forwarded-proto") == [b"https"]  # the client's own value replaced
    assert got.header(b"x-forwarded-for") == [b"127.0.0.1"]
    assert got.header(b"host") == [b"example.test"]
    assert stream.version() in ("TLSv1.2", "TLSv1.3")
    assert stream.selected_alpn_protocol() in (None, "http/1.1")
    await client.aclose()


async def test_keep_alive_over_tls_uses_one_handshake(nursery, pki):
    (a,) = await start_backends(nursery, "a")
    cert, key = pki.issue("site", "example.test")
    run = await start_engine(nursery, tls_config([a.port], tls_table((cert, key, ()))))
    client, _ = await tls_client(run.port, pki.client_context())
    for i in range(5):
        answer = await client.request("POST", f"/{i}", body=b"x" * (70000 * i))
        assert answer.status == 200 and answer.body == f"a POST /{i}\n".encode()
    assert [len(r.body) for r in a.requests] == [70000 * i for i in range(5)]
    assert a.connections == 1
    (proxy,) = run.engine._http
    assert proxy.tls is not None and proxy.tls.handshakes == 1
    await client.aclose()


async def test_a_large_download_streams_over_tls(nursery, pki):
    payload = bytes(range(256)) * 8192  # 2 MiB: many TLS records

    async def big(backend, got):
        return 200, [], payload

    (a,) = await start_backends(nursery, "a")
    a.reply = big
    cert, key = pki.issue("site", "example.test")
    run = await start_engine(nursery, tls_config([a.port], tls_table((cert, key, ()))))
    client, _ = await tls_client(run.port, pki.client_context())
    answer = await client.request("GET", "/big")
    assert answer.complete and answer.body == payload
    await client.aclose()


# -- SNI --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("asked", "served"),
    [
        ("example.test", "example.test"),
        ("api.example.test", "api.example.test"),
        ("API.Example.Test", "api.example.test"),  # names are case-insensitive
        ("shop.wild.test", "*.wild.test"),  # a wildcard covers one label
        ("a.shop.wild.test", "example.test"),  # ... not two: the default
        ("wild.test", "example.test"),  # nor the bare domain
        ("unknown.test", "example.test"),  # an unknown name: the default certificate
        (None, "example.test"),  # no SNI at all: the default
    ],
)
async def test_sni_picks_the_certificate(nursery, pki, asked, served):
    (a,) = await start_backends(nursery, "a")
    default = pki.issue("default", "example.test")
    api = pki.issue("api", "api.example.test")
    wild = pki.issue("wild", "*.wild.test")
    tls = tls_table(
        (*default, ()), (*api, ("api.example.test",)), (*wild, ("*.wild.test", "wild.other"))
    )
    run = await start_engine(nursery, tls_config([a.port], tls))
    client, stream = await tls_client(run.port, pki.client_context(False), asked)
    assert served_names(stream) == [served]
    answer = await client.request("GET", "/", host=asked or "example.test")
    assert answer.status == 200
    await client.aclose()


def test_select_prefers_exact_names_then_wildcards(pki):
    default = pki.issue("default", "example.test")
    exact = pki.issue("exact", "a.wild.test")
    wild = pki.issue("wild", "*.wild.test")
    server = TlsServer(
        "web",
        [
            Certificate(*default),
            Certificate(*wild, ("*.wild.test",)),
            Certificate(*exact, ("a.wild.test",)),
        ],
    )
    assert server.select("a.wild.test") is server.exact["a.wild.test"]
    assert server.select("a.wild.test.") is server.exact["a.wild.test"]  # trailing dot
    assert server.select("b.wild.test") is server.wildcard["wild.test"]
    assert server.select("b.wild.test") is not server.default
    for name in (None, "", "wild.test", "x.b.wild.test", "localhost"):
        assert server.select(name) is server.default


# -- handshakes that do not happen ------------------------------------------------------------
@pytest.mark.parametrize(
    "sent",
    [b"", b"\x16\x03\x01\x02\x00\x01"],  # nothing at all; a ClientHello that stops
    ids=["silent", "partial-hello"],
)
async def test_a_stalled_handshake_is_closed_after_tls_handshake(nursery, pki, sent):
    (a,) = await start_backends(nursery, "a")
    cert, key = pki.issue("site", "example.test")
    log = RecordingLog()
    config = tls_config([a.port], tls_table((cert, key, ())), "tls_handshake = 0.4")
    run = await start_engine(nursery, config, log)
    stream = await trio.open_tcp_stream("127.0.0.1", run.port)
    started = trio.current_time()
    await stream.send_all(sent)
    with trio.fail_after(5):
        data = await _read_to_eof(stream)
    waited = trio.current_time() - started
    assert data == b""
    assert 0.35 <= waited < 3, waited
    await log.wait("tls_handshake_timeout")
    record = next(r for r in log.records if r[0] == "tls_handshake_timeout")
    assert record[2]["listener"] == "web" and "0.4s" in record[2]["cause"]
    with trio.fail_after(5):
        await poll(lambda: run.engine.active_connections == 0)
    await stream.aclose()
    assert a.requests == []


async def _read_to_eof(stream: trio.SocketStream) -> bytes:
    out = bytearray()
    try:
        while chunk := await stream.receive_some(65536):
            out += chunk
    except trio.BrokenResourceError:
        pass
    return bytes(out)


async def test_plain_http_on_the_tls_port_is_answered_and_closed(nursery, pki):
    (a,) = await start_backends(nursery, "a")
    cert, key = pki.issue("site", "example.test")
    log = RecordingLog()
    run = await start_engine(nursery, tls_config([a.port], tls_table((cert, key, ()))), log)
    reply = await raw_exchange(run.port, b"GET / HTTP/1.1\r\nhost: example.test\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert b"https://" in reply
    await log.wait("tls_handshake_failed")
    failed = [r[2] for r in log.records if r[0] == "tls_handshake_failed"]
    assert failed[0]["cause"] == "plain HTTP sent to an HTTPS listener"
    garbage = await raw_exchange(run.port, b"\x00\x01\x02 hello")
    assert garbage == b""  # not HTTP either: just closed
    assert a.requests == []
    # Nothing broke: HTTPS still works on the same listener.
    client, _ = await tls_client(run.port, pki.client_context())
    assert (await client.request("GET", "/")).status == 200
    await client.aclose()


async def test_a_failed_handshake_is_logged_and_a_silent_probe_is_not(nursery, pki):
    (a,) = await start_backends(nursery, "a")
    cert, key = pki.issue("site", "example.test")
    log = RecordingLog()
    run = await start_engine(nursery, tls_config([a.port], tls_table((cert, key, ()))), log)
    # A TCP probe: connect and close. Quietly closed, no log line.
    probe = await trio.open_tcp_stream("127.0.0.1", run.port)
    await probe.aclose()
    with trio.fail_after(5):
        await poll(lambda: run.engine.active_connections == 0)
    assert "tls_handshake_failed" not in log.events()
    # A client offering only a cipher the server refuses: the server breaks it off.
    weak = pki.client_context()
    weak.maximum_version = ssl.TLSVersion.TLSv1_2
    weak.set_ciphers("NULL-SHA256:@SECLEVEL=0")
    tcp = await trio.open_tcp_stream("127.0.0.1", run.port)
    stream = trio.SSLStream(tcp, weak, server_hostname="example.test")
    with trio.fail_after(5), pytest.raises(trio.BrokenResourceError):
        await stream.do_handshake()
    await tcp.aclose()
    with trio.fail_after(5):
        await log.wait("tls_handshake_failed")
    cause = next(r[2]["cause"] for r in log.records if r[0] == "tls_handshake_failed")
    assert cause == "TLS: no shared cipher"
    (proxy,) = run.engine._http
    assert proxy.tls is not None and proxy.tls.failures == 1 and proxy.tls.handshakes == 0
    assert a.requests == []


# -- configuration and start-up -------------------------------------------------------------
def _http_conf(tls: str) -> str:
    return (
        '[[listeners]]\nname = "web"\nbind = "127.0.0.1:0"\nprotocol = "http"\npool = "app"\n'
        f'{tls}\n[pools.app]\n[[pools.app.backends]]\nname = "a"\naddress = "127.0.0.1:9"\n'
    )


def _problems(text: str, source: str = "<test>") -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(text, source)
    return [str(p) for p in caught.value.problems]


def test_relative_paths_are_found_next_to_the_config_file(pki, tmp_path):
    pki.issue("site", "example.test")
    path = tmp_path / "web.conf"
    path.write_text(_http_conf('tls = { cert = "site.pem", key = "site.key" }'))
    (listener,) = load(str(path)).listeners
    (certificate,) = listener.http.tls
    assert certificate.cert == str(tmp_path / "site.pem")
    assert certificate.key == str(tmp_path / "site.key")


def _bad_files(pki: Pki, tmp_path: Path) -> dict[str, tuple[str, str, str, str]]:
    """case: (cert, key, key path of the problem, words of the message)"""
    cert, key = pki.issue("site", "example.test")
    _, other_key = pki.issue("other", "other.test")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    encrypted = tmp_path / "locked.key"
    private = serialization.load_pem_private_key(Path(key).read_bytes(), password=None)
    encrypted.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    missing = str(tmp_path / "missing.pem")
    return {
        "missing": (missing, key, "tls.cert", "no such file"),
        "not-a-cert": (str(junk), key, "tls.cert", "no PEM certificate"),
        "not-a-key": (cert, str(junk), "tls.key", "no usable PEM private key"),
        "mismatch": (cert, other_key, "tls.key", "is not the private key of"),
        "encrypted": (cert, str(encrypted), "tls.key", "is encrypted"),
    }


BAD_CASES = ["missing", "not-a-cert", "not-a-key", "mismatch", "encrypted"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_certificate_files_are_config_problems(pki, tmp_path, case):
    cert, key, where, words = _bad_files(pki, tmp_path)[case]
    problems = _problems(_http_conf(f'tls = {{ cert = "{cert}", key = "{key}" }}'))
    assert len(problems) == 1, problems
    assert f"listeners[0].{where}:" in problems[0] and words in problems[0]


def test_several_certificates_need_names_and_no_name_twice(pki):
    one, two, three = pki.issue("a", "a.test"), pki.issue("b", "b.test"), pki.issue("c", "c.test")
    text = _http_conf(tls_table((*one, ()), (*two, ()), (*three, ("a.test", "A.test"))))
    problems = _problems(text)
    assert len(problems) == 2, problems
    assert "listeners[0].tls[1]: with several certificates" in problems[0]
    assert "tls[2].server_names[1]" in problems[1] and "another certificate" in problems[1]


async def test_a_certificate_broken_after_the_check_fails_the_start(pki, tmp_path):
    cert, key = pki.issue("site", "example.test")
    config = tls_config([9], tls_table((cert, key, ())))
    Path(cert).write_text("gone bad\n")  # between the check and the start
    engine = Engine(config)
    with pytest.raises(StartupError) as caught:
        await engine.bind()
    message = str(caught.value)
    assert message.startswith("listener 'web': tls: ") and "no PEM certificate" in message
    assert engine.bound == []  # nothing was bound


# -- the command line -----------------------------------------------------------------------
def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tuilb", *args],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=ROOT,
        check=False,
    )


def test_check_accepts_a_good_tls_listener(pki, tmp_path):
    pki.issue("site", "example.test")
    path = tmp_path / "web.conf"
    path.write_text(_http_conf('tls = { cert = "site.pem", key = "site.key" }'))
    result = cli("check", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{path}: OK")


@pytest.mark.parametrize("command", ["check", "run"])
@pytest.mark.parametrize("case", ["missing", "mismatch", "encrypted"])
def test_cli_bad_certificate_is_one_clear_line_and_exit_1(pki, tmp_path, command, case):
    cert, key, where, words = _bad_files(pki, tmp_path)[case]
    path = tmp_path / "web.conf"
    path.write_text(_http_conf(f'tls = {{ cert = "{cert}", key = "{key}" }}'))
    args = ("check", str(path)) if command == "check" else ("run", str(path), "--headless")
    result = cli(*args)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == f"{path}: 1 problem(s):"
    assert len(lines) == 2, result.stderr
    assert lines[1].strip().startswith("line 6: ")  # the line of the tls key
    assert f"listeners[0].{where}:" in lines[1] and words in lines[1]
    assert result.stdout == ""
