"""`gedge-agent serve` on a synthetic 8-GPU server: the real agent, with NVML answered by a stand-in.

This machine has no GPU, so the one boundary it cannot offer (NVML) comes from
tests/discovery's stand-in; the sysfs tree it discovers is the matching
synthetic server written under --root. Everything else is the agent's own
serve command, flags and all:

    python -m tests.e2e.gpu_agent --model H100 --root DIR -- --node-name n1 --listen 127.0.0.1:0 ...
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from agent.commands import serve as serve_command
from agent.config import AgentConfig
from agent.discovery import discover
from agent.discovery.nvml import NvmlGpuSource
from gedge_model import NodeTopology
from tests.discovery.gpu_box import Box
from tests.e2e.boxes import MODELS, gpu_box


def box_discover(box: Box) -> Callable[[AgentConfig], Callable[[], NodeTopology]]:
    def for_config(config: AgentConfig) -> Callable[[], NodeTopology]:
        def run() -> NodeTopology:
            return discover(
                config.root,
                node_name=config.node_name,
                gpu_source=NvmlGpuSource(box.nvml),
                timeslice_replicas=config.timeslice_replicas,
            )

        return run

    return for_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="H100")
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--driver", help="NVIDIA driver version NVML reports (default: the stand-in's)")
    parser.add_argument("serve_args", nargs=argparse.REMAINDER, help="after --: gedge-agent serve flags")
    args = parser.parse_args(argv)
    box = gpu_box(args.root, args.model, args.driver)
    if not hasattr(serve_command, "default_discover"):
        raise SystemExit("agent.commands.serve no longer takes its discovery from default_discover")
    serve_command.default_discover = box_discover(box)
    from agent.cli import main as agent_main

    rest = [a for a in args.serve_args if a != "--"]
    return agent_main(["serve", "--root", str(args.root), *rest])


if __name__ == "__main__":
    sys.exit(main())
