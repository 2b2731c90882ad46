"""Command line: the only place that exits, and where errors become text for humans."""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tuilb import __version__
from tuilb.config import Config, load
from tuilb.errors import ConfigError, StartupError, TuilbError
from tuilb.log import FORMATS, StreamLog

if TYPE_CHECKING:
    from tuilb.demo import Demo
    from tuilb.engine import Engine
    from tuilb.host import Companion, ExtraHandler, GuestBridge
    from tuilb.ui.bridge import Extra


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuilb", description="A load balancer with its operations console in the terminal."
    )
    parser.add_argument("--version", action="version", version=f"tuilb {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = sub.add_parser("check", help="validate a configuration file and exit")
    check.add_argument("config", metavar="CONFIG")

    run = sub.add_parser("run", help="run the balancer (with the dashboard unless --headless)")
    run.add_argument("config", metavar="CONFIG")
    _run_options(run)

    demo = sub.add_parser("demo", help="try tuilb: built-in backends, traffic and the dashboard")
    demo.add_argument(
        "--rate", type=float, default=20.0, help="demo requests per second (0: no traffic)"
    )
    _run_options(demo)

    from tuilb import ctl  # stdlib and rich only: `ctl` loads neither trio nor Textual

    ctl.add_parser(sub)
    return parser


def _run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--headless", action="store_true", help="no dashboard: log to stderr")
    parser.add_argument(
        "--log-format",
        choices=FORMATS,
        default="text",
        help="headless log lines as text (default) or one JSON object each",
    )
    parser.add_argument("--theme", help="dashboard colour theme (default: [ui] theme)")


def _load(path: str) -> Config | None:
    try:
        return load(path)
    except ConfigError as exc:
        print(f"{exc.source}: {len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "ctl":
        from tuilb import ctl

        return ctl.run(args)
    companions: list[Companion] = []
    extras: list[tuple[Extra, ExtraHandler]] = []
    if args.command == "demo":
        if args.rate < 0:
            print("tuilb: --rate must be 0 or more", file=sys.stderr)
            return 2
        from tuilb.demo import Demo

        demo = Demo(rate=args.rate)
        config = demo.config
        companions.append(_demo_companion(demo))
        extras.append(_demo_extra(demo))
    else:
        loaded = _load(args.config)
        if loaded is None:
            return 1
        config = loaded
        if args.command == "check":
            print(config.summary())
            return 0
    if args.headless:
        return _headless(config, args.log_format, companions)
    if not sys.stdout.isatty() or not sys.stdin.isatty():
        print(
            "tuilb: the dashboard needs a terminal (stdout and stdin are not one); "
            "run with --headless to log to stderr instead",
            file=sys.stderr,
        )
        return 2
    from tuilb.host import GuestBridge

    return _dashboard(GuestBridge(config, companions, extras), args.theme)


def _headless(config: Config, log_format: str, companions: list[Companion]) -> int:
    from tuilb.host import run_headless  # imported late: `check` needs no trio

    log = StreamLog(log_format)
    try:
        run_headless(config, log, companions)
    except StartupError as exc:
        log("startup_failed", "error", cause=str(exc))
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _dashboard(bridge: GuestBridge, theme: str | None) -> int:
    from tuilb.host import run_dashboard

    try:
        result = run_dashboard(bridge, theme)
    except TuilbError as exc:  # e.g. an unknown theme, found before the screen is touched
        print(f"tuilb: {exc}", file=sys.stderr)
        return 2
    error = getattr(result, "error", None)
    if error is None:
        return 0
    if isinstance(error, StartupError):
        print(f"tuilb: {error}", file=sys.stderr)
        return 1
    print("tuilb: the engine failed:", file=sys.stderr)
    traceback.print_exception(error)
    return 1


def _demo_companion(demo: Demo) -> Companion:
    async def run(engine: Engine) -> None:
        engine.before_shutdown.append(demo.stop_traffic)  # its own load must not hold it up
        await demo.run(engine)

    return run


def _demo_extra(demo: Demo) -> tuple[Extra, ExtraHandler]:
    from tuilb.ui.bridge import Extra

    return Extra("f", "fail", "Demo: make the selected backend fail, or recover."), demo.toggle


def entry() -> None:
    sys.exit(main())
