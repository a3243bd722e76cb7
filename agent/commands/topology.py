"""`gedge-agent topology`: the node's topology and distance matrix in the `nvidia-smi topo -m` layout."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Collection, Mapping
from pathlib import Path

from agent.discovery import discover
from gedge_common.files import FileLoadError, load_yaml, sysfs_root_problem
from gedge_model import DEFAULT_WEIGHTS, DeviceKind, Endpoint, Level, NodeTopology, distance_matrix, to_json
from gedge_model.cpulist import format_cpulist
from gedge_model.distance import LEGEND, XGMI_LABEL, XGMI_LEGEND, parse_weights

_LEGEND_ORDER = (Level.X, Level.SYS, Level.NODE, Level.PHB, Level.PXB, Level.PIX, Level.NV)


class UsageError(Exception):
    """Bad command-line input; the message names the option at fault."""


def register(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "examples:\n"
        "  gedge-agent topology                         # this machine: nvidia-smi layout with a legend\n"
        "  gedge-agent topology --json                  # the full model as JSON\n"
        "  gedge-agent topology --root /tmp/snapshot    # an unpacked sysfs snapshot instead of /\n"
        "  gedge-agent topology --timeslice-replicas 4 --weights weights.yaml"
    )
    parser.add_argument(
        "--root", default="/", help="sysfs root to read: / or an unpacked snapshot (default /)"
    )
    parser.add_argument("--json", action="store_true", help="print the full model as JSON instead")
    parser.add_argument("--node-name", help="node name (default: the hostname under the root)")
    parser.add_argument(
        "--timeslice-replicas", type=int, metavar="N", help="time-slice replicas for every GPU (default 1)"
    )
    parser.add_argument(
        "--weights",
        type=Path,
        metavar="FILE",
        help="YAML/JSON mapping of level to weight, e.g. {PIX: 2, SYS: 6}",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        weights = _load_weights(args.weights) if args.weights else dict(DEFAULT_WEIGHTS)
        problem = sysfs_root_problem(Path(args.root))
        if problem:
            raise UsageError(f"--root {args.root}: {problem}")
        if args.timeslice_replicas is not None and args.timeslice_replicas < 1:
            raise UsageError(f"--timeslice-replicas {args.timeslice_replicas}: must be 1 or more")
    except UsageError as exc:
        print(f"gedge-agent topology: {exc}", file=sys.stderr)
        return 2
    topology = discover(Path(args.root), node_name=args.node_name, timeslice_replicas=args.timeslice_replicas)
    if args.json:
        print(to_json(topology, indent=2))
    else:
        print(render(topology, weights))
    return 0


def _load_weights(path: Path) -> dict[Level, float]:
    try:
        raw = load_yaml(path, what="--weights")
    except FileLoadError as exc:
        raise UsageError(str(exc)) from None
    if not isinstance(raw, Mapping):
        raise UsageError(f"--weights {path}: expected a mapping of level to weight")
    try:
        return parse_weights(raw)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--weights {path}: {exc}") from None


def render(topology: NodeTopology, weights: Mapping[Level, float] = DEFAULT_WEIGHTS) -> str:
    """Matrix, legend, the devices behind each label, and a short summary."""
    return "\n".join(
        [
            *render_matrix(topology),
            "",
            *_legend(weights, xgmi=any(g.xgmi_links for g in topology.amd_gpus)),
            "",
            *_device_legend(topology),
            *_summary(topology),
        ]
    )


def render_matrix(topology: NodeTopology, kinds: Collection[DeviceKind] | None = None) -> list[str]:
    """Rows and columns GPU0.., NIC0.., then CPU and NUMA affinity, like `nvidia-smi topo -m`.

    `kinds` narrows the devices shown (all but the CPU endpoints by default).
    """
    points, rows = distance_matrix(topology)
    keep = [
        i for i, p in enumerate(points) if p.kind is not DeviceKind.CPU and (kinds is None or p.kind in kinds)
    ]
    if not keep:
        return ["(no GPU, NIC, RDMA, NVMe or accelerator devices: nothing to put in a matrix)"]
    labels = [points[i].label for i in keep]
    width = max(6, *(len(label) + 2 for label in labels))
    affinity = {i: _affinity(topology, points[i]) for i in keep}
    cpu_width = max(len("CPU Affinity"), *(len(a[0]) for a in affinity.values())) + 2
    header = " " * width + "".join(f"{label:<{width}}" for label in labels)
    lines = [f"{header}{'CPU Affinity':<{cpu_width}}NUMA Affinity"]
    for i in keep:
        cells = "".join(f"{rows[i][j].label:<{width}}" for j in keep)
        cpus, numa = affinity[i]
        lines.append(f"{points[i].label:<{width}}{cells}{cpus:<{cpu_width}}{numa}".rstrip())
    return lines


def _affinity(topology: NodeTopology, point: Endpoint) -> tuple[str, str]:
    online = set(topology.online_cpus)
    if point.numa_node is not None:
        node = topology.numa(point.numa_node)
        cpus = node.cpus if node is not None else ()
        return format_cpulist(cpus) or "N/A", str(point.numa_node)
    dev = topology.pci(point.pci_address) if point.pci_address else None
    local = [c for c in dev.local_cpus if c in online] if dev is not None else []
    return format_cpulist(local) or "N/A", "N/A"


def _legend(weights: Mapping[Level, float], xgmi: bool = False) -> list[str]:
    lines = ["Legend:", ""]
    for level in _LEGEND_ORDER:
        name = "NV#" if level is Level.NV else level.value
        lines.append(f"  {name:<4} = {LEGEND[level]} (weight {weights[level]:g})")
    if xgmi:
        lines.append(f"  {XGMI_LABEL} = {XGMI_LEGEND} (weight {weights[Level.NV]:g}, as NV#)")
    return lines


def _device_legend(topology: NodeTopology) -> list[str]:
    points = [p for p in distance_matrix(topology)[0] if p.kind is not DeviceKind.CPU]
    if not points:
        return []
    lines = ["Devices:", ""]
    cards = {a.pci_address: a for a in topology.accelerators}
    amd_by_id = {g.device_id: g for g in topology.amd_gpus}
    for p in points:
        gpu = topology.gpu_by_pci(p.pci_address) if p.kind is DeviceKind.GPU and p.pci_address else None
        amd = amd_by_id.get(p.name) if p.kind is DeviceKind.GPU else None
        card = cards.get(p.pci_address or "")
        what = f"{gpu.name} {gpu.uuid}" if gpu is not None else p.name
        if gpu is not None and gpu.mig_current:
            what += f" MIG ({len(gpu.mig_instances)} instances)"
        if amd is not None:
            what = f"AMD {amd.name or 'GPU'} (KFD node {amd.kfd_node}"
            what += f", partition {amd.partition}" if amd.partition is not None else ""
            what += f", hive {amd.hive_id})" if amd.hive_id else ")"
            what += " gedge.io/amd-gpu " + " ".join(amd.device_nodes)
            if not amd.allocatable:
                what += f" (not allocatable: missing {' '.join(amd.missing_nodes) or 'render node'})"
        elif card is not None and card.kind in (DeviceKind.FPGA, DeviceKind.ASIC):
            what = f"{card.vendor_id:04x}:{card.device_id:04x} driver {card.driver or 'none'}"
            if card.stack is not None:
                what += f" {card.stack} gedge.io/{card.kind.value.lower()} {' '.join(card.device_nodes)}"
            if card.missing_nodes:
                what += f" (not allocatable: missing {' '.join(card.missing_nodes)})"
            elif card.stack is None:
                what += " (no known device nodes: not allocatable)"
        elif card is not None and card.kind is DeviceKind.DISPLAY:
            what = f"{card.vendor_id:04x}:{card.device_id:04x} display controller (not a GPU)"
        lines.append(f"  {p.label}: {what} ({p.pci_address})")
    lines.append("")
    return lines


def _summary(topology: NodeTopology) -> list[str]:
    online = [c.id for c in topology.cpus if c.online]
    offline = [c.id for c in topology.cpus if not c.online]
    nodes = sorted(n.id for n in topology.numa_nodes)
    lines = [
        f"Node {topology.node_name}:",
        f"  CPUs: {len(online)} online ({format_cpulist(online) or '-'}), "
        f"{len(offline)} offline ({format_cpulist(offline) or '-'})",
        f"  NUMA nodes: {len(nodes)} ({format_cpulist(nodes) or '-'})",
        f"  PCI devices: {len(topology.pci_devices)}; GPUs: {len(topology.gpus)}"
        + (f" NVIDIA, {len(topology.amd_gpus)} AMD" if topology.amd_gpus else "")
        + (f"; FPGA/ASIC cards: {len(topology.cards)}" if topology.cards else "")
        + "; "
        f"network interfaces: {len(topology.interfaces)}; RDMA: {len(topology.rdma_devices)}; "
        f"NVMe: {len(topology.nvme_devices)}",
        f"  Warnings: {len(topology.warnings)}",
    ]
    lines.extend(f"    {w}" for w in topology.warnings)
    return lines
