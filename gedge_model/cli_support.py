"""The lazy subcommand dispatcher behind gedge-agent, gedge-extender and gedge-flow.

Each subcommand is a module with `register(parser)` that sets `run` as the
parser default; only the chosen one is imported, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
import sys
from collections.abc import Mapping

import structlog


def project_version() -> str:
    """The installed distribution's version (pyproject.toml `version`), or "unknown" when run uninstalled."""
    try:
        return importlib.metadata.version("gedge-accel")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def run_lazy_cli(
    *,
    prog: str,
    description: str,
    epilog: str,
    package: str,
    commands: Mapping[str, str],
    argv: list[str] | None = None,
) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in args_in if a in commands), None)
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {project_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, summary in commands.items():
        if name == chosen:
            module = importlib.import_module(f"{package}.{name}")
            module.register(
                sub.add_parser(
                    name,
                    help=summary,
                    description=summary,
                    formatter_class=argparse.RawDescriptionHelpFormatter,
                )
            )
        else:
            sub.add_parser(name, help=summary, add_help=False)
    args = parser.parse_args(args_in)
    return int(args.run(args) or 0)


class _Stderr:
    """Whatever sys.stderr is when a line is written (tests and daemons swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(level: str, *, cache: bool = True) -> None:
    """structlog JSON lines on stderr, one object per event."""
    logging.basicConfig(format="%(message)s", stream=sys.stderr, level=level.upper())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(_Stderr()),
        cache_logger_on_first_use=cache,
    )
