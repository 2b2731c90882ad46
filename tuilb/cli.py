"""Command line: the only place that exits, and where errors become text for humans."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tuilb import __version__
from tuilb.config import Config, load
from tuilb.errors import ConfigError, StartupError
from tuilb.log import FORMATS, StreamLog


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuilb", description="A load balancer with its operations console in the terminal."
    )
    parser.add_argument("--version", action="version", version=f"tuilb {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = sub.add_parser("check", help="validate a configuration file and exit")
    check.add_argument("config", metavar="CONFIG")

    run = sub.add_parser("run", help="run the balancer")
    run.add_argument("config", metavar="CONFIG")
    run.add_argument("--headless", action="store_true", help="no dashboard: log events to stderr")
    run.add_argument(
        "--log-format",
        choices=FORMATS,
        default="text",
        help="headless log lines as text (default) or one JSON object each",
    )
    return parser


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
    config = _load(args.config)
    if config is None:
        return 1
    if args.command == "check":
        print(config.summary())
        return 0
    if not args.headless:
        print(
            "tuilb: the dashboard is not available in this version yet; run with --headless",
            file=sys.stderr,
        )
        return 2
    from tuilb.host import run_headless  # imported late: `check` needs no trio

    log = StreamLog(args.log_format)
    try:
        run_headless(config, log)
    except StartupError as exc:
        log("startup_failed", "error", cause=str(exc))
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def entry() -> None:
    sys.exit(main())
