"""`gedge-agent serve` on the synthetic H100 server with GPU 0 in MIG mode (NVML answered by a stand-in).

The dashboard test scrapes it: MIG instances, time-slice replicas, VFs and RDMA
devices are what this machine lacks. Everything but NVML is the agent's own
serve command:

    python -m tests.ops.gpu_agent --root DIR -- --node-name n1 --listen 127.0.0.1:0 ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.commands import serve as serve_command
from tests.discovery.gpu_box import build_box
from tests.e2e.gpu_agent import box_discover


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("serve_args", nargs=argparse.REMAINDER, help="after --: gedge-agent serve flags")
    args = parser.parse_args(argv)
    box = build_box(args.root, "H100", mig_gpu0=True)
    serve_command.default_discover = box_discover(box)
    from agent.cli import main as agent_main

    rest = [a for a in args.serve_args if a != "--"]
    return agent_main(["serve", "--root", str(args.root), *rest])


if __name__ == "__main__":
    sys.exit(main())
