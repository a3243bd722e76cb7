"""The lazy subcommand dispatcher behind gedge-agent, gedge-extender and gedge-flow.

Each subcommand is a module with `register(parser)` that sets `run` as the
parser default; only the chosen one is imported, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Mapping


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
