"""The lazy subcommand dispatcher behind gedge-agent, gedge-extender and gedge-flow.

Each subcommand is a module with `register(parser)` that sets `run` as the
parser default; only the chosen one is imported, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

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
            module = importlib.import_module(f"{package}.{name.replace('-', '_')}")
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


def lazy_main(
    *, prog: str, description: str, epilog: str, package: str, commands: Mapping[str, str]
) -> Callable[..., int]:
    """A console script's `main(argv=None)`: run_lazy_cli over `package`'s command modules.
    A reader that closes stdout early (`| head`) ends the command quietly with 141 (128 + SIGPIPE)."""

    def main(argv: list[str] | None = None) -> int:
        try:
            code = run_lazy_cli(
                prog=prog,
                description=description,
                epilog=epilog,
                package=package,
                commands=commands,
                argv=argv,
            )
            sys.stdout.flush()
        except BrokenPipeError:
            _stdout_to_devnull()
            return 141
        return code

    return main


def _stdout_to_devnull() -> None:
    """Point stdout's descriptor at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


class _Stderr:
    """Whatever sys.stderr is when a line is written (tests and daemons swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(level: str, *, cache: bool = True) -> None:
    """One pipeline for every log line: structlog events and stdlib records (gRPC, aiohttp, the
    kubernetes client, our own `logging` users) both go through structlog's ProcessorFormatter to
    one stderr handler, so each line is one JSON object with `level`, `timestamp` and `logger`,
    written in one write under the handler's lock (lines of concurrent threads never tear)."""
    numeric = logging.getLevelName(level.upper())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.PositionalArgumentsFormatter()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(default=str),
        ],
    )
    handler = logging.StreamHandler(_Stderr())
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=cache,
    )


@contextlib.contextmanager
def logging_for_run(level: str) -> Iterator[None]:
    """configure_logging(level) for one command run in a caller's process (a test, a script), uncached,
    and the caller's structlog configuration and root handlers put back afterwards: a logger cached
    by the run would otherwise bypass the caller's later configuration."""
    previous = structlog.get_config()
    root = logging.getLogger()
    handlers, root_level = list(root.handlers), root.level
    configure_logging(level, cache=False)
    try:
        yield
    finally:
        structlog.configure(**previous)
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(root_level)
