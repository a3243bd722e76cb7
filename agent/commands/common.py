"""What `gedge-agent serve` and `gedge-agent uninstall` share: the node's settings and reading them."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable

from agent.config import AgentConfig, ConfigError, load_config
from gedge_common.cli import configure_logging


def add_node_options(parser: argparse.ArgumentParser, *, cgroup_driver_default: str) -> None:
    """--config, --root and where the agent keeps node state: checkpoint, cgroups, plugin sockets."""
    parser.add_argument("--config", metavar="FILE", help="the agent's YAML file with any of these settings")
    parser.add_argument("--root", metavar="PATH", help="sysfs/procfs root (default /)")
    parser.add_argument("--checkpoint", metavar="FILE", help="where the applier records what it applied")
    parser.add_argument("--cgroup-root", metavar="PATH", help="cgroup mount (default /sys/fs/cgroup)")
    parser.add_argument(
        "--cgroup-driver",
        choices=("systemd", "cgroupfs"),
        help=f"kubelet's cgroup driver (default: {cgroup_driver_default})",
    )
    parser.add_argument("--device-plugin-dir", metavar="PATH", help="kubelet's device plugin folder")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"))


def read_settings(
    args: argparse.Namespace, command: str, flag_keys: Iterable[str], *, serving: bool = True
) -> AgentConfig | None:
    """Defaults < --config < GEDGE_AGENT_* < the flags in `flag_keys`, with logging set up;
    None once the ConfigError is on stderr as `gedge-agent COMMAND: ...` (the command exits 2)."""
    flags = {key: getattr(args, key, None) for key in flag_keys}
    try:
        config = load_config(config_file=args.config, flags=flags, serving=serving)
    except ConfigError as exc:
        print(f"gedge-agent {command}: {exc}", file=sys.stderr)
        return None
    configure_logging(config.log_level)
    return config
