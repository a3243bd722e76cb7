"""Synthetic GPU servers for e2e nodes: a sysfs tree to discover plus the NVML stand-in that matches it.

`H100`/`A100` are tests/discovery's 8-GPU servers (GPU pairs sharing a PCIe
switch with a ConnectX NIC). `split` is a small, badly laid out server: two
GPUs on socket 0, its only RDMA NIC on socket 1, so a GPU+RDMA pod placed
there crosses the inter-socket link (SYS) where an H100 box offers PIX.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from agent.discovery import discover
from agent.discovery.nvml import NvmlGpuSource
from gedge_model import NodeTopology
from tests.discovery.fake_nvml import FakeGpu, FakeNvml
from tests.discovery.gpu_box import MELLANOX, NVIDIA, Box, build_box
from tests.discovery.sysfs_builder import SysfsBuilder

MODELS = ("H100", "A100", "split")
_BUILT = ".gedge-e2e-box"


def build_split_box(root: Path) -> Box:
    b = SysfsBuilder(root)
    node_cpus = ((0, 1, 2, 3), (4, 5, 6, 7))
    for socket, cpus in enumerate(node_cpus):
        for cpu in cpus:
            b.cpu(cpu, core=cpu, package=socket)
        b.node(socket, cpus, 64 << 20, (10, 21) if socket == 0 else (21, 10))
    b.cpus_online(range(8))
    b.nodes_online((0, 1))
    b.write("proc/sys/kernel/hostname", "split-box")
    gpus = []
    for port, bus in ((1, 0x11), (2, 0x12)):
        chain = ["pci0000:10", f"0000:10:0{port}.0"]
        b.pci(chain, 0x060400, numa=0, driver="pcieport")
        address = f"0000:{bus:02x}:00.0"
        b.pci([*chain, address], 0x030200, NVIDIA, 0x2330, numa=0, driver="nvidia")
        gpus.append(address)
    chain = ["pci0000:90", "0000:90:01.0"]
    b.pci(chain, 0x060400, numa=1, driver="pcieport")
    nic = b.pci([*chain, "0000:91:00.0"], 0x020000, MELLANOX, 0x1021, numa=1, driver="mlx5_core")
    b.netdev(nic, "ens9np0", "b8:3f:d2:00:09:00")
    b.infiniband(nic, "mlx5_9", "b83f:d203:0090:0000")
    b.virtual_netdev("lo")
    fakes = [
        FakeGpu(
            uuid=f"GPU-split-0000-0000-0000-00000000000{i}",
            name="NVIDIA H100 PCIe",
            bus_id=f"00000000:{address[5:].upper()}",
            memory_bytes=81559 << 20,
            capability=(9, 0),
        )
        for i, address in enumerate(gpus)
    ]
    return Box(root, FakeNvml(fakes), tuple(gpus), ("0000:91:00.0",), node_cpus)


def _build(root: Path, model: str) -> Box:
    if model not in MODELS:
        raise ValueError(f"unknown box model {model!r}; expected one of {MODELS}")
    return build_split_box(root) if model == "split" else build_box(root, model)


def gpu_box(root: Path, model: str, driver: str | None = None) -> Box:
    """The box at `root`, writing its tree on first use; later calls rebuild only the NVML stand-in.

    `driver` is the NVIDIA driver version its NVML reports (the stand-in's default otherwise).
    """
    if not (root / _BUILT).exists():
        box = _build(root, model)
        (root / _BUILT).write_text(model)
    else:
        with tempfile.TemporaryDirectory(prefix="gedge-e2e-box-") as scratch:
            box = dataclasses.replace(_build(Path(scratch) / "box", model), root=root)
    if driver is not None:
        box.nvml.driver = driver
    return box


def box_topology(box: Box, node_name: str) -> NodeTopology:
    """What the agent on this box discovers (same reader, same NVML stand-in)."""
    return discover(box.root, node_name=node_name, gpu_source=NvmlGpuSource(box.nvml))


def write_driver_view(box: Box) -> dict[str, int]:
    """What NVIDIA's driver shows of the box under its root: /proc/driver/nvidia/gpus/<pci>/information
    (Device Minor i for the i-th GPU) and dev/nvidiactl, dev/nvidia<i>. Returns GPU PCI address -> minor."""
    minors = {address: i for i, address in enumerate(box.gpu_addresses)}
    dev = box.root / "dev"
    dev.mkdir(parents=True, exist_ok=True)
    (dev / "nvidiactl").touch()
    for address, minor in minors.items():
        info = box.root / "proc/driver/nvidia/gpus" / address.lower() / "information"
        info.parent.mkdir(parents=True, exist_ok=True)
        info.write_text(f"Model: NVIDIA stand-in\nDevice Minor: {minor}\n")
        (dev / f"nvidia{minor}").touch()
    return minors
