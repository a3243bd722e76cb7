"""`gedge-agent uninstall`: give the node back after the agent is gone for good.

Releases everything the checkpoint records (exclusive cpusets: every container back on all CPUs
but none pinned; data-path NICs back to the host), then removes the checkpoint and the agent's
device plugin sockets. Run it on each node once the agent's DaemonSet is deleted
(deploy/uninstall/); running it again finds nothing to do.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import structlog

from agent.apply import ApplyError, ApplyManager, CgroupDriver, StaticPodResolver
from agent.apply.cgroups import CgroupError, detect_cgroup_layout
from agent.apply.nic import NicApplier
from agent.commands.common import add_node_options, read_settings

log = structlog.get_logger("gedge.agent.uninstall")

_FLAG_KEYS = ("root", "checkpoint", "cgroup_root", "device_plugin_dir", "log_level")
PLUGIN_SOCKETS = "gedge-*.sock"


def register(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Settings as `gedge-agent serve` reads them (same --config file, GEDGE_AGENT_* variables).\n\n"
        "examples:\n"
        "  gedge-agent uninstall --config /etc/gedge/agent.yaml\n"
        "  gedge-agent uninstall --checkpoint /var/lib/gedge-agent/checkpoint.json --cgroup-driver cgroupfs"
    )
    add_node_options(
        parser, cgroup_driver_default="cgroup_driver of --config, else as the kubepods tree shows"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = read_settings(args, "uninstall", _FLAG_KEYS, serving=False)
    if config is None:
        return 2
    checkpoint = Path(config.checkpoint)
    released: tuple[str, ...] = ()
    if checkpoint.exists():
        try:
            root, version, detected = detect_cgroup_layout(Path(config.cgroup_root))
        except CgroupError as exc:
            print(f"gedge-agent uninstall: {exc}; the checkpoint {checkpoint} is kept", file=sys.stderr)
            return 1
        chosen = args.cgroup_driver or config.cgroup_driver
        driver = CgroupDriver(chosen) if chosen else detected
        manager = ApplyManager(
            cgroup_root=root,
            cgroup_driver=driver,
            cgroup_version=version,
            checkpoint_path=checkpoint,
            resolver=StaticPodResolver(),
            nic=NicApplier(sysfs_root=Path(config.root), host_netns=config.netns),
        )
        try:
            report = manager.reconcile(())
        except ApplyError as exc:
            print(f"gedge-agent uninstall: {exc}; the checkpoint {checkpoint} is kept", file=sys.stderr)
            return 1
        if manager.applied():
            kept = f"some pods could not be released; {checkpoint} is kept"
            print(f"gedge-agent uninstall: {kept}", file=sys.stderr)
            return 1
        released = report.released + report.finished + report.undone
        checkpoint.unlink(missing_ok=True)
    sockets = sorted(Path(config.device_plugin_dir).glob(PLUGIN_SOCKETS))
    for socket in sockets:
        socket.unlink(missing_ok=True)
    log.info(
        "uninstalled", released=list(released), checkpoint=str(checkpoint), sockets=[s.name for s in sockets]
    )
    return 0
