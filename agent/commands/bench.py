"""`gedge-agent bench datapath|pinning`: measure what the data path and CPU pinning gain on this node."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import structlog

from agent.bench.common import Interrupted, Progress, sigterm_raises

EXAMPLES = """examples:
  gedge-agent bench datapath              # overlay (VXLAN) vs. the agent's macvlan data path
  gedge-agent bench pinning --short       # quick: shared CPUs vs. an exclusive cpuset under noise
  gedge-agent bench datapath --json       # figures for machines
  gedge-agent bench datapath --sriov-pf ens1f0 --vf 0000:3b:02.0 --vf 0000:3b:02.1   # VFs instead of macvlan
Needs root (network namespaces, cgroups). Everything made is removed at the end, also on Ctrl-C or SIGTERM.
"""


def register(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLES
    parser.add_argument(
        "tool", metavar="{datapath,pinning}", choices=("datapath", "pinning"), help="what to measure"
    )
    parser.add_argument(
        "--short", action="store_true", help="a quick, small run (seconds) to check the setup"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument(
        "--prefix",
        default=None,
        help="name prefix of the namespaces / cgroups the tool makes (default: gbench<pid>)",
    )
    parser.add_argument(
        "--cpus",
        type=int,
        default=None,
        metavar="N",
        help="pinning: exclusive CPUs given to the workload (default 1)",
    )
    parser.add_argument(
        "--sriov-pf",
        metavar="PF",
        help="datapath: use two VFs of this PF instead of macvlan (needs --vf twice)",
    )
    parser.add_argument(
        "--vf", action="append", default=[], metavar="PCI", help="datapath: a VF's PCI address (give two)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    if os.geteuid() != 0:
        print("gedge-agent bench: needs root (network namespaces and cgroups)", file=sys.stderr)
        return 2
    prefix = args.prefix or f"gbench{os.getpid()}"
    if not prefix.isascii() or not prefix.replace("-", "").isalnum() or len(prefix) > 32:
        print(
            f"gedge-agent bench: --prefix {prefix!r} must be letters, digits and dashes (32 at most)",
            file=sys.stderr,
        )
        return 2
    problem = _flag_problem(args)
    if problem:
        print(f"gedge-agent bench {args.tool}: {problem}", file=sys.stderr)
        return 2
    vfs = None
    if args.sriov_pf:
        from agent.bench.datapath import VfChoice

        vfs = VfChoice(pf=args.sriov_pf, vf_pcis=(args.vf[0], args.vf[1]))
    progress = Progress(args.tool, quiet=args.quiet)
    try:
        with sigterm_raises():
            if args.tool == "datapath":
                from agent.bench.datapath import format_datapath, run_datapath

                report = run_datapath(short=args.short, prefix=prefix, progress=progress, vfs=vfs)
                text = format_datapath(report)
            else:
                from agent.bench.pinning import format_pinning, run_pinning

                report = run_pinning(
                    short=args.short,
                    prefix=prefix,
                    progress=progress,
                    exclusive_cpus=1 if args.cpus is None else args.cpus,
                )
                text = format_pinning(report)
    except (KeyboardInterrupt, Interrupted):
        print(f"gedge-agent bench {args.tool}: interrupted; everything it made is removed", file=sys.stderr)
        return 130
    except (RuntimeError, OSError, ValueError) as exc:
        print(f"gedge-agent bench {args.tool}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2) if args.json else text)
    return 0


def _flag_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the flags, before anything is built: a flag of the other tool, a VF choice
    without its PF or not two VFs, a PF or VF this node does not have."""
    if args.tool == "pinning" and (args.sriov_pf or args.vf):
        return "--sriov-pf and --vf are for datapath"
    if args.tool == "datapath" and args.cpus is not None:
        return "--cpus is for pinning"
    if args.vf and not args.sriov_pf:
        return "--vf needs --sriov-pf PF, the physical function the two VFs belong to"
    if not args.sriov_pf:
        return None
    if len(args.vf) != 2:
        return "--sriov-pf needs exactly two --vf PCI addresses"
    if not Path("/sys/class/net", args.sriov_pf).exists():
        return f"--sriov-pf {args.sriov_pf}: no such network interface on this node"
    for vf in args.vf:
        if not Path("/sys/bus/pci/devices", vf).exists():
            return f"--vf {vf}: no such PCI function on this node (give a VF's address, e.g. 0000:3b:02.0)"
    return None
