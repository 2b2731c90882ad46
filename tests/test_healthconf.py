"""Table tests for the health parts of the configuration (tuilb.healthconf)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.test_config import Expected, assert_problems, conf
from tuilb.config import parse
from tuilb.healthconf import (
    HealthConfig,
    PassiveConfig,
    format_status,
    parse_status,
    status_matches,
)

P = "pools.app"

STATUS_GOOD: list[tuple[object, tuple[tuple[int, int], ...]]] = [
    (200, ((200, 200),)),
    ("204", ((204, 204),)),
    ("200-399", ((200, 399),)),
    (" 200 - 299 ", ((200, 299),)),
    ([200, "301-302", "404"], ((200, 200), (301, 302), (404, 404))),
]


@pytest.mark.parametrize(("value", "ranges"), STATUS_GOOD)
def test_status_forms(value: object, ranges: tuple[tuple[int, int], ...]) -> None:
    assert parse_status(value) == ranges


STATUS_BAD: list[tuple[object, str]] = [
    (99, "not a status code"),
    (600, "not a status code"),
    ("2xx", "not a status code"),
    ("399-200", "ends before it starts"),
    ([], "empty"),
    ([200, True], "not a status code or range"),
    (2.5, "not a status code or range"),
]


@pytest.mark.parametrize(("value", "fragment"), STATUS_BAD)
def test_bad_status_forms(value: object, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_status(value)


@pytest.mark.parametrize(
    ("ranges", "status", "expected"),
    [
        (((200, 399),), 200, True),
        (((200, 399),), 399, True),
        (((200, 399),), 400, False),
        (((200, 200), (404, 404)), 404, True),
        (((200, 200), (404, 404)), 300, False),
    ],
)
def test_status_matching(ranges: tuple[tuple[int, int], ...], status: int, expected: bool) -> None:
    assert status_matches(ranges, status) is expected


def test_status_formatting() -> None:
    assert format_status(((200, 399), (404, 404))) == "200-399, 404"


def pool_of(text: str) -> Any:
    return parse(text, "test.conf").pools["app"]


GOOD: list[tuple[str, str, dict[str, Any]]] = [
    ("no health table: no checks", "", {"health": HealthConfig(), "passive": None}),
    (
        "a bare table means tcp checks with the defaults",
        "[pools.app.health]\n",
        {"health": HealthConfig(type="tcp")},
    ),
    (
        "http with everything",
        "[pools.app.health]\n"
        'type = "http"\npath = "/healthz"\nhost = "app.internal"\n'
        'expect_status = ["200-299", 301]\nexpect_body = "ok"\n'
        "interval = 2.0\nfast_interval = 0.5\ndown_interval = 5\ntimeout = 1\n"
        "rise = 2\nfall = 3\nport = 8081\n",
        {
            "health": HealthConfig(
                type="http",
                path="/healthz",
                host="app.internal",
                expect_status=((200, 299), (301, 301)),
                expect_body="ok",
                interval=2.0,
                fast_interval=0.5,
                down_interval=5.0,
                timeout=1.0,
                rise=2,
                fall=3,
                port=8081,
            )
        },
    ),
    (
        "fast and down intervals follow interval; timeout stays within it",
        "[pools.app.health]\ninterval = 0.5\n",
        {
            "health": HealthConfig(
                type="tcp", interval=0.5, fast_interval=0.5, down_interval=0.5, timeout=0.5
            )
        },
    ),
    ("type none", '[pools.app.health]\ntype = "none"\n', {"health": HealthConfig(type="none")}),
    (
        "passive with defaults",
        "[pools.app.passive]\n",
        {"passive": PassiveConfig(5, 30.0, 300.0)},
    ),
    (
        "passive: a long eject time lifts the default cap with it",
        "[pools.app.passive]\nconsecutive_failures = 2\neject_time = 600\n",
        {"passive": PassiveConfig(2, 600.0, 600.0)},
    ),
    (
        "slow start with a weighted algorithm",
        "slow_start = 30\n",
        {"slow_start": 30.0},
    ),
]


@pytest.mark.parametrize(("label", "lines", "expected"), GOOD, ids=[g[0] for g in GOOD])
def test_good_health_configs(label: str, lines: str, expected: dict[str, Any]) -> None:
    algorithm = "weighted_round_robin" if "slow_start" in lines else "round_robin"
    text = conf(
        {'algorithm = "round_robin"': f'algorithm = "{algorithm}"'},
        P=lines if lines.startswith("slow_start") else "",
        END="" if lines.startswith("slow_start") else lines,
    )
    pool = pool_of(text)
    for key, value in expected.items():
        assert getattr(pool, key) == value


BAD: list[tuple[str, str, list[Expected]]] = [
    (
        "unknown check type",
        '[pools.app.health]\ntype = "icmp"  #@t\n',
        [(f"{P}.health.type", "'icmp' is not one of: tcp, http, udp, none", "t")],
    ),
    (
        "http-only keys on a tcp check",
        '[pools.app.health]\ntype = "tcp"\npath = "/x"  #@p\n',
        [(f"{P}.health.path", 'applies to type = "http" checks only', "p")],
    ),
    (
        "a path must start with a slash",
        '[pools.app.health]\ntype = "http"\npath = "healthz"  #@p\n',
        [(f"{P}.health.path", "must start with '/'", "p")],
    ),
    (
        "a path with a non-ASCII character (the request line is ASCII)",
        '[pools.app.health]\ntype = "http"\npath = "/sant\u00e9"  #@p\n',
        [(f"{P}.health.path", "non-ASCII characters (percent-encode them)", "p")],
    ),
    (
        "bad expect_status",
        '[pools.app.health]\ntype = "http"\nexpect_status = "2xx"  #@s\n',
        [(f"{P}.health.expect_status", "not a status code", "s")],
    ),
    (
        "empty expect_body",
        '[pools.app.health]\ntype = "http"\nexpect_body = ""  #@b\n',
        [(f"{P}.health.expect_body", "matches every body", "b")],
    ),
    (
        "a bad host",
        '[pools.app.health]\ntype = "http"\nhost = "a b"  #@h\n',
        [(f"{P}.health.host", "is not a host name", "h")],
    ),
    (
        "intervals out of range and of the wrong type",
        '[pools.app.health]\ninterval = 0  #@i\ntimeout = -1  #@t\nfast_interval = "1"  #@f\n',
        [
            (f"{P}.health.interval", "out of range 0.01..3600", "i"),
            (f"{P}.health.timeout", "out of range 0.01..3600", "t"),
            (f"{P}.health.fast_interval", "expected an integer or a number, got a string", "f"),
        ],
    ),
    (
        "nan interval",
        "[pools.app.health]\ninterval = nan  #@i\n",
        [(f"{P}.health.interval", "out of range", "i")],
    ),
    (
        "rise, fall and port out of range",
        "[pools.app.health]\nrise = 0  #@r\nfall = 101  #@f\nport = 70000  #@p\n",
        [
            (f"{P}.health.rise", "out of range 1..100", "r"),
            (f"{P}.health.fall", "out of range 1..100", "f"),
            (f"{P}.health.port", "out of range 1..65535", "p"),
        ],
    ),
    (
        "unknown key",
        "[pools.app.health]\ninterval_ms = 5  #@k\n",
        [(f"{P}.health.interval_ms", "unknown key 'interval_ms'", "k")],
    ),
    (
        "passive: bad values",
        "[pools.app.passive]\nconsecutive_failures = 0  #@c\neject_time = 0  #@e\n",
        [
            (f"{P}.passive.consecutive_failures", "out of range 1..1000", "c"),
            (f"{P}.passive.eject_time", "out of range 0.01..86400", "e"),
        ],
    ),
    (
        "passive: a cap below the eject time",
        "[pools.app.passive]\neject_time = 60\nmax_eject_time = 30  #@m\n",
        [(f"{P}.passive.max_eject_time", "shorter than eject_time (60)", "m")],
    ),
]


@pytest.mark.parametrize(("label", "lines", "expected"), BAD, ids=[b[0] for b in BAD])
def test_bad_health_configs(label: str, lines: str, expected: list[Expected]) -> None:
    assert_problems(conf(END=lines), expected)


def test_slow_start_needs_a_weighted_algorithm() -> None:
    text = conf(P="slow_start = 10  #@s\n")
    assert_problems(text, [(f"{P}.slow_start", "'round_robin' ignores", "s")])


def test_slow_start_out_of_range() -> None:
    text = conf(
        {'algorithm = "round_robin"': 'algorithm = "weighted_round_robin"'},
        P="slow_start = -1  #@s\n",
    )
    assert_problems(text, [(f"{P}.slow_start", "out of range 0..3600", "s")])
