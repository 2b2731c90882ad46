"""Table tests for configuration parsing and validation (tuilb.config, tuilb.tomlpos).

Expected line numbers are never typed in by hand: each interesting line of a test text
carries a marker comment (`#@tag`) and `line()` finds it, counting lines the way TOML
does (by "\\n").
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tuilb.config import (
    Address,
    Config,
    Timeouts,
    UiConfig,
    load,
    parse,
    parse_address,
)
from tuilb.errors import ConfigError, Problem
from tuilb.tomlpos import key_lines, line_of

REPO = Path(__file__).resolve().parent.parent

KNOWN_ALGORITHMS = (
    "round_robin",
    "weighted_round_robin",
    "least_connections",
    "weighted_least_connections",
    "source_ip_hash",
)

# A valid configuration with slots ({TOP}, {L}, {P}, {B0}, {B1}, {END}) where test cases
# add lines, and a marker on every line a problem may point at.
BASE = """\
{TOP}
[[listeners]]  #@listener
name = "web"  #@listener.name
bind = "127.0.0.1:8080"  #@listener.bind
pool = "app"  #@listener.pool
{L}
[pools.app]  #@pool
algorithm = "round_robin"  #@pool.algorithm
{P}
[[pools.app.backends]]  #@b0
name = "a1"  #@b0.name
address = "127.0.0.1:9001"  #@b0.address
{B0}
[[pools.app.backends]]  #@b1
name = "a2"  #@b1.name
address = "127.0.0.1:9002"  #@b1.address
{B1}
{END}
"""


def conf(sub: dict[str, str] | None = None, **slots: str) -> str:
    """BASE with lines added in its slots and exact one-time replacements in `sub`."""
    text = BASE
    for slot in ("TOP", "L", "P", "B0", "B1", "END"):
        text = text.replace("{" + slot + "}", slots.pop(slot, ""))
    assert not slots, f"unknown slots {slots}"
    for old, new in (sub or {}).items():
        assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times"
        text = text.replace(old, new)
    return text


def line(text: str, tag: str) -> int:
    """1-based line (counted by "\\n", as TOML counts) of the line marked `#@tag`."""
    matches = list(re.finditer(rf"#@{re.escape(tag)}(?=\s|$)", text))
    assert len(matches) == 1, f"marker {tag!r} found {len(matches)} times"
    return text.count("\n", 0, matches[0].start()) + 1


def problems_of(text: str) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        parse(text, "test.conf")
    assert info.value.source == "test.conf"
    return info.value.problems


Expected = tuple[str, str, str | None]  # (where, message fragment, marker tag or None)


def assert_problems(text: str, expected: list[Expected]) -> None:
    problems = problems_of(text)
    rendered = "\n".join(str(p) for p in problems)
    assert len(problems) == len(expected), f"got:\n{rendered}"
    remaining = list(problems)
    for where, fragment, tag in expected:
        want_line = None if tag is None else line(text, tag)
        found = [
            p
            for p in remaining
            if p.where == where and p.line == want_line and fragment in p.message
        ]
        assert found, f"no problem at {where} line {want_line} with {fragment!r}; got:\n{rendered}"
        remaining.remove(found[0])


# ---------------------------------------------------------------------------------------
# Good configurations


def dig(obj: Any, path: tuple[str | int, ...]) -> Any:
    for part in path:
        obj = obj[part] if isinstance(obj, dict | tuple) else getattr(obj, part)
    return obj


GOOD: list[tuple[str, str, list[tuple[tuple[str | int, ...], Any]]]] = [
    (
        "defaults",
        conf(),
        [
            (("listeners", 0, "name"), "web"),
            (("listeners", 0, "bind"), Address("127.0.0.1", 8080)),
            (("listeners", 0, "protocol"), "tcp"),
            (("listeners", 0, "pump"), "default"),
            (("listeners", 0, "pool"), "app"),
            (("pools", "app", "algorithm"), "round_robin"),
            (("pools", "app", "backends", 0, "name"), "a1"),
            (("pools", "app", "backends", 0, "address"), Address("127.0.0.1", 9001)),
            (("pools", "app", "backends", 0, "weight"), 1),
            (("pools", "app", "backends", 0, "max_connections"), 0),
            (("pools", "app", "backends", 1, "name"), "a2"),
            (("timeouts",), Timeouts(connect=5.0, idle=3600.0, shutdown_grace=30.0)),
            (("ui",), UiConfig(theme="tuilb-dark", refresh=2.0)),
        ],
    ),
    (
        "ui settings",
        conf(END='[ui]\ntheme = "tuilb-light"\nrefresh = 4\n'),
        [(("ui",), UiConfig(theme="tuilb-light", refresh=4.0))],
    ),
    (
        "algorithm omitted defaults to round_robin",
        conf(sub={'algorithm = "round_robin"  #@pool.algorithm\n': ""}),
        [(("pools", "app", "algorithm"), "round_robin")],
    ),
    (
        "every optional key set",
        conf(
            L='protocol = "tcp"\npump = "splice"\n',
            B0="weight = 256\nmax_connections = 100\n",
            B1="weight = 0\nmax_connections = 0\n",
            END="[timeouts]\nconnect = 2\nidle = 60.5\nshutdown_grace = 0.25\n",
        ),
        [
            (("listeners", 0, "pump"), "splice"),
            (("pools", "app", "backends", 0, "weight"), 256),
            (("pools", "app", "backends", 0, "max_connections"), 100),
            (("pools", "app", "backends", 1, "weight"), 0),
            (("timeouts",), Timeouts(connect=2.0, idle=60.5, shutdown_grace=0.25)),
        ],
    ),
    (
        "integer timeouts become floats",
        conf(END="[timeouts]\nconnect = 3\n"),
        [(("timeouts", "connect"), 3.0), (("timeouts", "idle"), 3600.0)],
    ),
    (
        "IPv6 and host names",
        conf(
            sub={
                '"127.0.0.1:8080"': '"[::1]:8443"',
                '"127.0.0.1:9001"': '"[2001:db8::1]:9001"',
                '"127.0.0.1:9002"': '"backend-2.example.com:80"',
            }
        ),
        [
            (("listeners", 0, "bind"), Address("::1", 8443)),
            (("pools", "app", "backends", 0, "address"), Address("2001:db8::1", 9001)),
            (("pools", "app", "backends", 1, "address"), Address("backend-2.example.com", 80)),
        ],
    ),
    (
        "bind port 0 lets the kernel pick, twice on the same host is fine",
        conf(
            sub={'"127.0.0.1:8080"': '"127.0.0.1:0"'},
            END='[[listeners]]\nname = "web2"\nbind = "127.0.0.1:0"\npool = "app"\n',
        ),
        [
            (("listeners", 0, "bind"), Address("127.0.0.1", 0)),
            (("listeners", 1, "bind"), Address("127.0.0.1", 0)),
            (("listeners", 1, "name"), "web2"),
        ],
    ),
    (
        "two pools, two listeners, quoted pool name with dot and dash",
        conf(
            END=(
                '[[listeners]]\nname = "api.v2"\nbind = "0.0.0.0:9090"\npool = "api-v2.1"\n'
                '[pools."api-v2.1"]\nalgorithm = "least_connections"\n'
                '[[pools."api-v2.1".backends]]\nname = "x_1"\naddress = "10.0.0.1:80"\n'
            )
        ),
        [
            (("listeners", 1, "pool"), "api-v2.1"),
            (("pools", "api-v2.1", "algorithm"), "least_connections"),
            (("pools", "api-v2.1", "backends", 0, "name"), "x_1"),
            (("pools", "app", "algorithm"), "round_robin"),
        ],
    ),
    (
        "a udp listener: max_flows and udp_idle, defaults and set",
        conf(
            L='protocol = "udp"\nmax_flows = 50\n',
            END=(
                '[[listeners]]\nname = "dns"\nbind = "127.0.0.1:5353"\nprotocol = "udp"\n'
                'pool = "app"\n[timeouts]\nudp_idle = 2.5\n'
            ),
        ),
        [
            (("listeners", 0, "protocol"), "udp"),
            (("listeners", 0, "max_flows"), 50),
            (("listeners", 1, "max_flows"), 10000),
            (("timeouts", "udp_idle"), 2.5),
        ],
    ),
    (
        "a tcp and a udp listener on the same address",
        conf(
            END=(
                '[[listeners]]\nname = "web-udp"\nbind = "127.0.0.1:8080"\n'
                'protocol = "udp"\npool = "app"\n'
            )
        ),
        [(("listeners", 1, "bind"), Address("127.0.0.1", 8080)), (("timeouts", "udp_idle"), 60.0)],
    ),
    (
        "same backend name in two different pools",
        conf(END='[pools.other]\n[[pools.other.backends]]\nname = "a1"\naddress = "10.0.0.9:1"\n'),
        [(("pools", "other", "backends", 0, "name"), "a1")],
    ),
    (
        "inline backends array",
        conf(
            sub={
                "[[pools.app.backends]]  #@b0\n": "",
                'name = "a1"  #@b0.name\n': "",
                'address = "127.0.0.1:9001"  #@b0.address\n': "",
                "[[pools.app.backends]]  #@b1\n": "",
                'name = "a2"  #@b1.name\n': "",
                'address = "127.0.0.1:9002"  #@b1.address\n': "",
            },
            P='backends = [\n  { name = "i1", address = "127.0.0.1:1", weight = 3 },\n]\n',
        ),
        [
            (("pools", "app", "backends", 0, "name"), "i1"),
            (("pools", "app", "backends", 0, "weight"), 3),
        ],
    ),
] + [
    (
        f"algorithm {name}",
        conf(sub={'"round_robin"': f'"{name}"'}),
        [(("pools", "app", "algorithm"), name)],
    )
    for name in KNOWN_ALGORITHMS
]


@pytest.mark.parametrize(("text", "checks"), [c[1:] for c in GOOD], ids=[c[0] for c in GOOD])
def test_good_config(text: str, checks: list[tuple[tuple[str | int, ...], Any]]) -> None:
    config = parse(text, "good.conf")
    assert isinstance(config, Config)
    assert config.source == "good.conf"
    for path, want in checks:
        assert dig(config, path) == want, path


def test_summary_counts() -> None:
    config = parse(conf(END='[pools.b]\n[[pools.b.backends]]\nname = "x"\naddress = "h:1"\n'))
    assert config.summary() == "<config>: OK: 1 listener(s), 2 pool(s), 3 backend(s)"


def test_sample_conf_parses() -> None:
    config = load(REPO / "sample.conf")
    assert config.source == str(REPO / "sample.conf")
    assert [listener.name for listener in config.listeners] == ["web"]
    assert config.listeners[0].protocol == "tcp"
    assert list(config.pools) == ["app"]
    assert [b.name for b in config.pools["app"].backends] == ["app1", "app2", "app3"]
    assert config.pools["app"].algorithm in KNOWN_ALGORITHMS


# ---------------------------------------------------------------------------------------
# Bad configurations: one mistake each (except where noted), every problem checked


ALLOWED_TOP = "allowed: listeners, pools, timeouts"
ALLOWED_LISTENER = "allowed: name, bind, protocol, pool, pump"
ALLOWED_POOL = "allowed: algorithm, backends"
ALLOWED_BACKEND = "allowed: name, address, weight, max_connections"
ALLOWED_TIMEOUTS = "allowed: connect, idle, shutdown_grace"

B0 = "pools.app.backends[0]"
B1 = "pools.app.backends[1]"

BAD: list[tuple[str, str, list[Expected]]] = [
    # -- unknown keys, with what is allowed
    (
        "unknown top-level key",
        conf(TOP='colour = "blue"  #@x'),
        [("colour", f"unknown key 'colour'; {ALLOWED_TOP}", "x")],
    ),
    (
        "unknown top-level table",
        conf(END="[logging]  #@x\nlevel = 1\n"),
        [("logging", f"unknown key 'logging'; {ALLOWED_TOP}", "x")],
    ),
    (
        "unknown listener key",
        conf(L="port = 80  #@x\n"),
        [("listeners[0].port", f"unknown key 'port'; {ALLOWED_LISTENER}", "x")],
    ),
    (
        "unknown pool key",
        conf(P='balance = "rr"  #@x\n'),
        [("pools.app.balance", f"unknown key 'balance'; {ALLOWED_POOL}", "x")],
    ),
    (
        "unknown backend key in the second backend",
        conf(B1="wieght = 2  #@x\n"),
        [(f"{B1}.wieght", f"unknown key 'wieght'; {ALLOWED_BACKEND}", "x")],
    ),
    (
        "unknown timeouts key",
        conf(END="[timeouts]\nread = 3  #@x\n"),
        [("timeouts.read", f"unknown key 'read'; {ALLOWED_TIMEOUTS}", "x")],
    ),
    # -- wrong types
    (
        "weight is a string",
        conf(B0='weight = "heavy"  #@x\n'),
        [(f"{B0}.weight", "expected an integer, got a string", "x")],
    ),
    (
        "weight is a boolean",
        conf(B0="weight = true  #@x\n"),
        [(f"{B0}.weight", "expected an integer, got a boolean", "x")],
    ),
    (
        "weight is a float",
        conf(B1="weight = 1.5  #@x\n"),
        [(f"{B1}.weight", "expected an integer, got a number", "x")],
    ),
    (
        "max_connections is a string",
        conf(B0='max_connections = "10"  #@x\n'),
        [(f"{B0}.max_connections", "expected an integer, got a string", "x")],
    ),
    (
        "listener name is an integer",
        conf(sub={'name = "web"': "name = 7"}),
        [("listeners[0].name", "expected a string, got an integer", "listener.name")],
    ),
    (
        "address is an array",
        conf(sub={'address = "127.0.0.1:9002"': 'address = ["127.0.0.1", 9002]'}),
        [(f"{B1}.address", "expected a string, got an array", "b1.address")],
    ),
    (
        "algorithm is a boolean",
        conf(sub={'algorithm = "round_robin"': "algorithm = false"}),
        [("pools.app.algorithm", "expected a string, got a boolean", "pool.algorithm")],
    ),
    (
        "protocol is an integer",
        conf(L="protocol = 6  #@x\n"),
        [("listeners[0].protocol", "expected a string, got an integer", "x")],
    ),
    (
        "timeout is a string",
        conf(END='[timeouts]\nconnect = "5s"  #@x\n'),
        [("timeouts.connect", "expected an integer or a number, got a string", "x")],
    ),
    (
        "timeout is a boolean",
        conf(END="[timeouts]\nidle = true  #@x\n"),
        [("timeouts.idle", "got a boolean", "x")],
    ),
    (
        "timeouts is not a table",
        conf(TOP="timeouts = 5  #@x"),
        [("timeouts", "expected a table, got an integer", "x")],
    ),
    (
        "backends is a string",
        """\
[[listeners]]
name = "web"
bind = "127.0.0.1:8080"
pool = "app"

[pools.app]
backends = "a1"  #@x
""",
        [("pools.app.backends", "expected an array, got a string", "x")],
    ),
    (
        "listeners written as a table",
        """\
[listeners]  #@x
name = "web"
bind = "127.0.0.1:8080"
pool = "app"

[pools.app]
backends = [{ name = "a1", address = "127.0.0.1:9001" }]
""",
        [("listeners", "expected an array of tables", "x")],
    ),
    # -- names
    (
        "duplicate listener names",
        conf(END='[[listeners]]\nname = "web"  #@x\nbind = "127.0.0.1:8081"\npool = "app"\n'),
        [("listeners[1].name", "duplicate listener name 'web'", "x")],
    ),
    (
        "duplicate backend names in a pool",
        conf(sub={'name = "a2"': 'name = "a1"'}),
        [(f"{B1}.name", "duplicate backend name 'a1' in pool 'app'", "b1.name")],
    ),
    (
        "backend name with a slash",
        conf(sub={'name = "a1"': 'name = "a/1"'}),
        [(f"{B0}.name", "may use only letters, digits", "b0.name")],
    ),
    (
        "listener name with a space",
        conf(sub={'name = "web"': 'name = "web one"'}),
        [("listeners[0].name", "may use only letters, digits", "listener.name")],
    ),
    (
        "listener names a missing pool",
        conf(sub={'pool = "app"': 'pool = "api"'}),
        [("listeners[0].pool", "no pool named 'api'; pools: app", "listener.pool")],
    ),
    (
        "two listeners on the same address",
        conf(END='[[listeners]]\nname = "w2"\nbind = "127.0.0.1:8080"  #@x\npool = "app"\n'),
        [("listeners[1].bind", "127.0.0.1:8080 is already bound by 'web'", "x")],
    ),
    # -- addresses
    (
        "bind port above 65535",
        conf(sub={'"127.0.0.1:8080"': '"127.0.0.1:70000"'}),
        [("listeners[0].bind", "port 70000 is out of range 0..65535", "listener.bind")],
    ),
    (
        "backend port 0",
        conf(sub={'"127.0.0.1:9001"': '"127.0.0.1:0"'}),
        [(f"{B0}.address", "port 0 is out of range 1..65535", "b0.address")],
    ),
    (
        "backend port 65536",
        conf(sub={'"127.0.0.1:9002"': '"127.0.0.1:65536"'}),
        [(f"{B1}.address", "port 65536 is out of range 1..65535", "b1.address")],
    ),
    (
        "port is not a number",
        conf(sub={'"127.0.0.1:9001"': '"127.0.0.1:http"'}),
        [(f"{B0}.address", "port 'http' is not a number", "b0.address")],
    ),
    (
        "no port",
        conf(sub={'"127.0.0.1:9001"': '"127.0.0.1"'}),
        [(f"{B0}.address", "expected host:port", "b0.address")],
    ),
    (
        "IPv6 without brackets",
        conf(sub={'"127.0.0.1:9001"': '"::1:9001"'}),
        [(f"{B0}.address", "write IPv6 addresses in brackets", "b0.address")],
    ),
    (
        "IPv6 bind without a port",
        conf(sub={'"127.0.0.1:8080"': '"[::1]"'}),
        [("listeners[0].bind", "IPv6 addresses are written [addr]:port", "listener.bind")],
    ),
    (
        "brackets around something that is not IPv6",
        conf(sub={'"127.0.0.1:9002"': '"[10.0.0.1]:9002"'}),
        [(f"{B1}.address", "'10.0.0.1' is not an IPv6 address", "b1.address")],
    ),
    (
        "empty host",
        conf(sub={'"127.0.0.1:8080"': '":8080"'}),
        [("listeners[0].bind", "the host part is empty", "listener.bind")],
    ),
    # -- ranges
    (
        "weight -1",
        conf(B0="weight = -1  #@x\n"),
        [(f"{B0}.weight", "-1 is out of range 0..256", "x")],
    ),
    (
        "weight 257",
        conf(B1="weight = 257  #@x\n"),
        [(f"{B1}.weight", "257 is out of range 0..256", "x")],
    ),
    (
        "negative max_connections",
        conf(B0="max_connections = -1  #@x\n"),
        [(f"{B0}.max_connections", "-1 is out of range >= 0", "x")],
    ),
    (
        "unknown algorithm lists the known ones",
        conf(sub={'"round_robin"': '"fastest"'}),
        [
            (
                "pools.app.algorithm",
                f"unknown algorithm 'fastest'; known: {', '.join(KNOWN_ALGORITHMS)}",
                "pool.algorithm",
            )
        ],
    ),
    # -- timeouts
    (
        "zero connect timeout",
        conf(END="[timeouts]\nconnect = 0  #@x\n"),
        [("timeouts.connect", "must be a positive number of seconds", "x")],
    ),
    (
        "negative idle timeout",
        conf(END="[timeouts]\nidle = -1.5  #@x\n"),
        [("timeouts.idle", "must be a positive number of seconds", "x")],
    ),
    (
        "zero shutdown_grace",
        conf(END="[timeouts]\nshutdown_grace = 0.0  #@x\n"),
        [("timeouts.shutdown_grace", "must be a positive number of seconds", "x")],
    ),
    (
        "NaN timeout is not a positive number",
        conf(END="[timeouts]\nconnect = nan  #@x\n"),
        [("timeouts.connect", "positive", "x")],
    ),
    # -- the dashboard's [ui] table
    (
        "unknown theme lists the shipped ones",
        conf(END='[ui]\ntheme = "neon"  #@x\n'),
        [("ui.theme", "unknown theme 'neon'; themes: tuilb-dark", "x")],
    ),
    (
        "refresh out of range",
        conf(END="[ui]\nrefresh = 100  #@x\n"),
        [("ui.refresh", "out of range 0.2..30", "x")],
    ),
    (
        "unknown ui key",
        conf(END='[ui]\ncolour = "red"  #@x\n'),
        [("ui.colour", "unknown key 'colour'; allowed: theme, refresh", "x")],
    ),
    # -- protocols and pumps
    (
        "routes on a tcp listener",
        conf(L='[[listeners.routes]]  #@x\npool = "app"\n'),
        [("listeners[0].routes", "'routes' applies to protocol = \"http\" only", "x")],
    ),
    (
        "max_flows on a tcp listener",
        conf(L="max_flows = 5  #@x\n"),
        [("listeners[0].max_flows", 'max_flows applies to protocol = "udp" only', "x")],
    ),
    (
        "max_flows out of range",
        conf(L='protocol = "udp"\nmax_flows = 0  #@x\n'),
        [("listeners[0].max_flows", "0 is out of range 1..10000000", "x")],
    ),
    (
        "pump on a udp listener",
        conf(L='protocol = "udp"\npump = "splice"  #@x\n'),
        [("listeners[0].pump", "'pump' applies to protocol = \"tcp\" only", "x")],
    ),
    (
        "accept_proxy on a udp listener",
        conf(L='protocol = "udp"\naccept_proxy = ["10.0.0.0/8"]  #@x\n'),
        [("listeners[0].accept_proxy", "'accept_proxy' applies to protocol = \"tcp\"", "x")],
    ),
    (
        "http keys on a udp listener",
        conf(L='protocol = "udp"\ntrusted_proxies = ["10.0.0.0/8"]  #@x\n'),
        [("listeners[0].trusted_proxies", 'applies to protocol = "http" only', "x")],
    ),
    (
        "sni_routes on a udp listener",
        conf(
            L='protocol = "udp"\n[[listeners.sni_routes]]  #@x\nserver_name = "a"\npool = "app"\n'
        ),
        [("listeners[0].sni_routes", 'sni_routes applies to protocol = "tcp" only', "x")],
    ),
    (
        "a udp listener over a pool that sends PROXY headers",
        conf(L='protocol = "udp"\n', P='send_proxy = "v1"\n'),
        [("listeners[0].pool", "sends PROXY headers (send_proxy)", "listener.pool")],
    ),
    (
        "unknown protocol",
        conf(L='protocol = "sctp"  #@x\n'),
        [("listeners[0].protocol", "'sctp' is not one of: tcp", "x")],
    ),
    (
        "unknown pump",
        conf(L='pump = "zerocopy"  #@x\n'),
        [("listeners[0].pump", "'zerocopy' is not one of: default, splice", "x")],
    ),
    # -- missing keys: reported on the table, at its header line
    (
        "listener without a name",
        conf(sub={'name = "web"  #@listener.name\n': ""}),
        [("listeners[0]", "missing required key 'name'", "listener")],
    ),
    (
        "listener without bind",
        conf(sub={'bind = "127.0.0.1:8080"  #@listener.bind\n': ""}),
        [("listeners[0]", "missing required key 'bind'", "listener")],
    ),
    (
        "listener without pool",
        conf(sub={'pool = "app"  #@listener.pool\n': ""}),
        [("listeners[0]", "missing required key 'pool'", "listener")],
    ),
    (
        "second backend without an address",
        conf(sub={'address = "127.0.0.1:9002"  #@b1.address\n': ""}),
        [(B1, "missing required key 'address'", "b1")],
    ),
    (
        "first backend without a name",
        conf(sub={'name = "a1"  #@b0.name\n': ""}),
        [(B0, "missing required key 'name'", "b0")],
    ),
    (
        "pool without backends",
        """\
[[listeners]]
name = "web"
bind = "127.0.0.1:8080"
pool = "app"

[pools.app]  #@x
algorithm = "round_robin"
""",
        [("pools.app", "missing required key 'backends'", "x")],
    ),
    (
        "pool with an empty backends array",
        """\
[[listeners]]
name = "web"
bind = "127.0.0.1:8080"
pool = "app"

[pools.app]
backends = []  #@x
""",
        [("pools.app.backends", "a pool needs at least one backend", "x")],
    ),
    (
        "no pools at all (and so the listener's pool is missing too)",
        """\
[[listeners]]
name = "web"
bind = "127.0.0.1:8080"
pool = "app"  #@x
""",
        [
            ("pools", "no pools defined", None),
            ("listeners[0].pool", "no pool named 'app'; pools: none defined", "x"),
        ],
    ),
    (
        "no listeners",
        """\
[pools.app]
backends = [{ name = "a1", address = "127.0.0.1:9001" }]
""",
        [("listeners", "no listeners defined", None)],
    ),
    (
        "empty file",
        "",
        [("pools", "no pools defined", None), ("listeners", "no listeners defined", None)],
    ),
    (
        "an empty listeners array is no listener either",
        """\
listeners = []  #@x

[pools.app]
backends = [{ name = "a1", address = "127.0.0.1:9001" }]
""",
        [("listeners", "no listeners", "x")],
    ),
    (
        "an empty pools table is no pool either",
        """\
[[listeners]]
name = "web"
bind = "127.0.0.1:8080"
pool = "app"  #@pool

[pools]  #@x
""",
        [
            ("pools", "no pools", "x"),
            ("listeners[0].pool", "no pool named 'app'; pools: none defined", "pool"),
        ],
    ),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_config(text: str, expected: list[Expected]) -> None:
    assert_problems(text, expected)


def test_backend_entry_not_a_table() -> None:
    text = """\
[[listeners]]
name = "web"
bind = "127.0.0.1:8080"
pool = "app"

[pools.app]
backends = [{ name = "a1", address = "127.0.0.1:9001" }, 5]  #@x
"""
    problems = problems_of(text)
    wheres = {p.where for p in problems}
    assert "pools.app.backends[1]" in wheres
    first = next(p for p in problems if p.where == "pools.app.backends[1]")
    assert first.message == "expected a table, got an integer"
    assert first.line == line(text, "x")
    assert all(p.where.startswith("pools.app.backends[1]") for p in problems)


# ---------------------------------------------------------------------------------------
# Every problem at once


def test_three_mistakes_three_problems() -> None:
    text = conf(
        sub={'"round_robin"': '"fastest"'},
        B0='weight = "heavy"  #@w\n',
        L="colour = 1  #@c\n",
    )
    assert_problems(
        text,
        [
            ("pools.app.algorithm", "unknown algorithm 'fastest'", "pool.algorithm"),
            (f"{B0}.weight", "expected an integer, got a string", "w"),
            ("listeners[0].colour", "unknown key 'colour'", "c"),
        ],
    )
    with pytest.raises(ConfigError, match=r"^test\.conf: 3 problem\(s\)$"):
        parse(text, "test.conf")


def test_mistakes_in_every_section_all_reported() -> None:
    text = conf(
        TOP="extra = 1  #@top",
        sub={
            'pool = "app"': 'pool = "nope"',
            '"127.0.0.1:8080"': '"127.0.0.1:99999"',
            'name = "a2"': 'name = "a1"',
        },
        L='protocol = "quic"  #@proto\n',
        P="backend = []  #@pkey\n",
        B1="weight = 300  #@w\nmax_connections = true  #@mc\n",
        END="[timeouts]\nconnect = -1  #@conn\nidle = 0  #@idle\nread = 1  #@read\n",
    )
    assert_problems(
        text,
        [
            ("extra", "unknown key 'extra'", "top"),
            ("listeners[0].pool", "no pool named 'nope'; pools: app", "listener.pool"),
            ("listeners[0].protocol", "'quic' is not one of: tcp, http, udp", "proto"),
            ("pools.app.backend", "unknown key 'backend'", "pkey"),
            ("listeners[0].bind", "port 99999 is out of range", "listener.bind"),
            (f"{B1}.weight", "300 is out of range 0..256", "w"),
            (f"{B1}.max_connections", "expected an integer, got a boolean", "mc"),
            (f"{B1}.name", "duplicate backend name 'a1'", "b1.name"),
            ("timeouts.connect", "positive", "conn"),
            ("timeouts.idle", "positive", "idle"),
            ("timeouts.read", "unknown key 'read'", "read"),
        ],
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            conf(sub={'"127.0.0.1:9001"': '"127.0.0.1:0"', 'name = "a2"': 'name = "a1"'}),
            [
                (f"{B0}.address", "port 0 is out of range", "b0.address"),
                (f"{B1}.name", "duplicate backend name 'a1'", "b1.name"),
            ],
        ),
        (
            conf(
                sub={'"127.0.0.1:8080"': '"127.0.0.1:http"'},
                END='[[listeners]]\nname = "web"  #@x\nbind = "127.0.0.1:81"\npool = "app"\n',
            ),
            [
                ("listeners[0].bind", "port 'http' is not a number", "listener.bind"),
                ("listeners[1].name", "duplicate listener name 'web'", "x"),
            ],
        ),
    ],
    ids=["backend", "listener"],
)
def test_duplicate_name_still_reported_when_the_first_entry_has_another_problem(
    text: str, expected: list[Expected]
) -> None:
    assert_problems(text, expected)


def test_problem_str_has_line_and_path() -> None:
    text = conf(B1="weight = 300  #@w\n")
    (problem,) = problems_of(text)
    assert str(problem) == f"line {line(text, 'w')}: {B1}.weight: 300 is out of range 0..256"
    assert str(Problem("", "the file is not UTF-8 text")) == (
        "(top level): the file is not UTF-8 text"
    )


def test_crlf_line_endings_keep_line_numbers() -> None:
    text = conf(B0="weight = 999  #@w\n")
    (problem,) = problems_of(text.replace("\n", "\r\n"))
    assert problem.line == line(text, "w")


def test_unicode_line_separator_in_a_comment_does_not_shift_lines() -> None:
    # TOML counts lines by "\n" only; U+2028 is allowed inside a comment.
    text = conf(TOP="# pasted note:\u2028 see the wiki", B1="weight = 999  #@w\n")
    (problem,) = problems_of(text)
    assert problem.line == line(text, "w")


# ---------------------------------------------------------------------------------------
# Invalid TOML


@pytest.mark.parametrize(
    ("text", "bad_line"),
    [
        ('[[listeners]]\nname = "web\n', 2),
        ("[pools.app]\nalgorithm = 1\nalgorithm = 2\n", 3),
        ("\n\n[pools.app\n", 3),
        ("weight = \n", 1),
    ],
    ids=["unterminated string", "duplicate key", "unclosed header", "missing value"],
)
def test_invalid_toml_is_one_problem(text: str, bad_line: int) -> None:
    (problem,) = problems_of(text)
    assert problem.where == ""
    assert problem.message.startswith("not valid TOML")
    assert f"line {bad_line}" in problem.message


# ---------------------------------------------------------------------------------------
# load()


def test_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.conf"
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.source == str(path)
    (problem,) = info.value.problems
    assert "cannot read file" in problem.message
    assert "No such file" in problem.message


def test_load_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path)
    (problem,) = info.value.problems
    assert "cannot read file" in problem.message


def test_load_non_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.conf"
    path.write_bytes(conf(TOP="# caf\u00e9").encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load(str(path))
    assert info.value.source == str(path)
    (problem,) = info.value.problems
    assert problem.message == "the file is not UTF-8 text"


def test_load_good_file_and_its_problems_name_the_file(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(conf(), encoding="utf-8")
    assert load(good).source == str(good)
    bad = tmp_path / "bad.toml"
    bad.write_text(conf(B0="weight = -5\n"), encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(f"{bad}: 1 problem(s)")):
        load(bad)


# ---------------------------------------------------------------------------------------
# parse_address()


@pytest.mark.parametrize(
    ("text", "host", "port", "literal"),
    [
        ("127.0.0.1:80", "127.0.0.1", 80, True),
        ("0.0.0.0:65535", "0.0.0.0", 65535, True),
        ("10.1.2.3:1", "10.1.2.3", 1, True),
        ("[::1]:80", "::1", 80, True),
        ("[::]:8080", "::", 8080, True),
        ("[2001:db8::42]:443", "2001:db8::42", 443, True),
        ("localhost:8080", "localhost", 8080, False),
        ("backend-1.example.com:443", "backend-1.example.com", 443, False),
        ("db_primary:5432", "db_primary", 5432, False),
    ],
)
def test_parse_address_good(text: str, host: str, port: int, literal: bool) -> None:
    address = parse_address(text)
    assert address == Address(host, port)
    assert address.is_literal is literal
    assert str(address) == text


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("127.0.0.1", "expected host:port"),
        ("", "expected host:port"),
        ("127.0.0.1:", "is not a number"),
        ("127.0.0.1:80a", "is not a number"),
        ("127.0.0.1:-1", "is not a number"),
        ("127.0.0.1:+80", "is not a number"),
        ("127.0.0.1: 80", "is not a number"),
        ("host:\u00b2", "is not a number"),  # '²' passes str.isdigit() but not int()
        (":80", "host part is empty"),
        ("[]:80", "host part is empty"),
        ("::1:80", "brackets"),
        ("fe80::1:443", "brackets"),
        ("[::1]", "[addr]:port"),
        ("[::1]80", "[addr]:port"),
        ("[::1:80", "[addr]:port"),
        ("[10.0.0.1]:80", "not an IPv6 address"),
        ("[example.com]:80", "not an IPv6 address"),
        ("host:0", "out of range 1..65535"),
        ("[::1]:0", "out of range 1..65535"),
        ("host:65536", "out of range 1..65535"),
        ("host:99999999999999999999", "out of range"),
    ],
)
def test_parse_address_bad(text: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_address(text)
    assert fragment in str(info.value)


@pytest.mark.parametrize("text", ["bad host:80", "two words.example.com:443", "a/b:80"])
def test_parse_address_rejects_malformed_host_names(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("127.0.0.1:0", Address("127.0.0.1", 0)),
        ("[::]:0", Address("::", 0)),
        ("localhost:0", Address("localhost", 0)),
        ("localhost:65535", Address("localhost", 65535)),
    ],
)
def test_parse_address_allow_zero(text: str, want: Address) -> None:
    assert parse_address(text, allow_zero=True) == want


def test_parse_address_allow_zero_still_bounds_the_port() -> None:
    with pytest.raises(ValueError, match=r"out of range 0\.\.65535"):
        parse_address("host:65536", allow_zero=True)
    with pytest.raises(ValueError, match="not a number"):
        parse_address("host:-1", allow_zero=True)


# ---------------------------------------------------------------------------------------
# tomlpos.key_lines / line_of

KEY_LINES_TEXT = """\
# a comment  #@c
[[listeners]]  #@l0
name = "web"  #@l0.name
bind = "127.0.0.1:8080"  #@l0.bind

[pools.app]  # trailing comment  #@pool
algorithm = "round_robin"  #@pool.algorithm
notes = \"\"\"
[pools.fake]
name = "not a key"
\"\"\"
"quoted key" = 1  #@quoted
dotted.key = 2  #@dotted

[[pools.app.backends]]  #@b0
name = "a1"  #@b0.name
address = "127.0.0.1:9001"  #@b0.address

[[pools.app.backends]]  #@b1
name = "a2"  #@b1.name
weight = 3  #@b1.weight

[[listeners]]  #@l1
name = "api"  #@l1.name

[ pools . "other pool" ]  #@other
"""


def test_key_lines_nested_arrays_of_tables() -> None:
    text = KEY_LINES_TEXT
    lines = key_lines(text)
    expected = {
        ("listeners", 0): "l0",
        ("listeners", 0, "name"): "l0.name",
        ("listeners", 0, "bind"): "l0.bind",
        ("pools", "app"): "pool",
        ("pools", "app", "algorithm"): "pool.algorithm",
        ("pools", "app", "quoted key"): "quoted",
        ("pools", "app", "dotted", "key"): "dotted",
        ("pools", "app", "backends", 0): "b0",
        ("pools", "app", "backends", 0, "name"): "b0.name",
        ("pools", "app", "backends", 0, "address"): "b0.address",
        ("pools", "app", "backends", 1): "b1",
        ("pools", "app", "backends", 1, "name"): "b1.name",
        ("pools", "app", "backends", 1, "weight"): "b1.weight",
        ("listeners", 1): "l1",
        ("listeners", 1, "name"): "l1.name",
        ("pools", "other pool"): "other",
    }
    for path, tag in expected.items():
        assert lines.get(path) == line(text, tag), path
    # the inside of the multi-line string is a value, not keys or headers
    assert ("pools", "fake") not in lines
    assert ("pools", "app", "name") not in lines
    assert ("pools", "app", "notes") in lines


def test_line_of_falls_back_to_the_enclosing_table() -> None:
    text = KEY_LINES_TEXT
    lines = key_lines(text)
    assert line_of(lines, ("pools", "app", "backends", 1, "max_connections")) == line(text, "b1")
    assert line_of(lines, ("pools", "app", "backends", 1, "weight")) == line(text, "b1.weight")
    assert line_of(lines, ("listeners", 1, "bind")) == line(text, "l1")
    assert line_of(lines, ("timeouts", "connect")) is None
    assert line_of(lines, ()) is None


def test_key_lines_agrees_with_tomllib_on_the_structure() -> None:
    data = tomllib.loads(KEY_LINES_TEXT)
    lines = key_lines(KEY_LINES_TEXT)
    assert len(data["listeners"]) == 2
    assert len(data["pools"]["app"]["backends"]) == 2
    # every array index key_lines found exists in the parsed data
    for path in lines:
        node: Any = data
        for part in path:
            node = node[part]
        assert node is not None
    assert len(lines) >= 16
