"""Synthetic AMD GPU nodes (sysfs with ROCm's KFD topology) shaped like published machines.

- MI300X platform: 2 sockets, 8 OAM GPUs each behind its own PCIe switch, GPUs 0-3 on socket
  0 and 4-7 on socket 1, one XGMI hive linking every GPU to every other (weight 15).
- MI250X node as LUMI-G/Frontier: one socket in NPS4 (4 NUMA nodes), 4 packages of 2 GCDs
  (8 KFD GPU nodes), one hive; GCDs of one package are 1 hop apart (weight 15), others 2 (30);
  the NUMA node of each GCD pair as LUMI's documentation prints it (3, 1, 0, 2).
- MI100 server: 2 sockets, 8 GPUs in two 4-GPU hives (Infinity Fabric Link bridges); each
  hive spans both sockets (GPUs 0,1 and 4,5 on socket 0), so NUMA alone cannot find a hive.
Every GPU has a ConnectX NIC under its switch in the MI300X box.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.discovery.sysfs_builder import SysfsBuilder

AMD = 0x1002
MELLANOX = 0x15B3
KFD = "sys/devices/virtual/kfd/kfd/topology/nodes"
IOLINK_PCIE = 2
IOLINK_XGMI = 11


@dataclass(frozen=True)
class AmdBox:
    root: Path
    gpu_addresses: tuple[str, ...]
    nic_addresses: tuple[str, ...]


def _cpus(b: SysfsBuilder, numa_cpus: Sequence[Sequence[int]], sockets: Sequence[int]) -> None:
    n = len(numa_cpus)
    for node, cpus in enumerate(numa_cpus):
        for cpu in cpus:
            b.cpu(cpu, core=cpu, package=sockets[node])
        b.node(
            node,
            cpus,
            1 << 30,
            [10 if i == node else (12 if sockets[i] == sockets[node] else 32) for i in range(n)],
        )
    b.cpus_online(c for cpus in numa_cpus for c in cpus)
    b.nodes_online(range(n))


def _kfd_cpu_node(b: SysfsBuilder, node: int) -> None:
    base = f"{KFD}/{node}"
    b.write(f"{base}/gpu_id", "0")
    b.write(f"{base}/name", "")
    b.write(
        f"{base}/properties", "cpu_cores_count 16\nsimd_count 0\nio_links_count 0\nlocation_id 0\ndomain 0"
    )


def _kfd_gpu_node(
    b: SysfsBuilder,
    node: int,
    address: str,
    *,
    name: str,
    gfx: int,
    device_id: int,
    render: int,
    hive: int,
    cpu_node: int,
    peers: Sequence[tuple[int, int]],
) -> None:
    """One KFD GPU node: properties as the kernel's node_show prints them, io_links to CPU and peers."""
    domain, bus, rest = address.split(":")
    slot, function = rest.split(".")
    location = int(bus, 16) << 8 | int(slot, 16) << 3 | int(function)
    base = f"{KFD}/{node}"
    b.write(f"{base}/gpu_id", str(40000 + node * 1111))
    b.write(f"{base}/name", name)
    lines = [
        "cpu_cores_count 0",
        "simd_count 440",
        "mem_banks_count 1",
        "caches_count 0",
        f"io_links_count {1 + len(peers)}",
        f"p2p_links_count {len(peers)}",
        "cpu_core_id_base 0",
        "simd_id_base 2147487744",
        "max_waves_per_simd 8",
        "lds_size_in_kb 64",
        "gds_size_in_kb 0",
        "num_gws 64",
        "wave_front_size 64",
        "array_count 8",
        "simd_arrays_per_engine 1",
        "cu_per_simd_array 14",
        "simd_per_cu 4",
        "max_slots_scratch_cu 32",
        f"gfx_target_version {gfx}",
        f"vendor_id {AMD}",
        f"device_id {device_id}",
        f"location_id {location}",
        f"domain {int(domain, 16)}",
        f"drm_render_minor {render}",
        f"hive_id {hive}",
        "num_sdma_engines 2",
        "num_sdma_xgmi_engines 6",
        "num_sdma_queues_per_engine 8",
        "num_cp_queues 24",
        "max_engine_clk_fcompute 1700",
        "local_mem_size 0",
        "fw_version 78",
        "capability 746079360",
        "debug_prop 1495",
        "sdma_fw_version 8",
        f"unique_id {0x5A7E1D0000000000 + node}",
        "num_xcc 1",
        "max_engine_clk_ccompute 2100",
    ]
    b.write(f"{base}/properties", "\n".join(lines))
    links = [(IOLINK_PCIE, cpu_node, 20), *((IOLINK_XGMI, peer, weight) for peer, weight in peers)]
    for i, (kind, to, weight) in enumerate(links):
        b.write(
            f"{base}/io_links/{i}/properties",
            "\n".join(
                [
                    f"type {kind}",
                    "version_major 0",
                    "version_minor 0",
                    f"node_from {node}",
                    f"node_to {to}",
                    f"weight {weight}",
                    "min_latency 0",
                    "max_latency 0",
                    "min_bandwidth 50000" if kind == IOLINK_XGMI else "min_bandwidth 312",
                    "max_bandwidth 50000" if kind == IOLINK_XGMI else "max_bandwidth 31000",
                    "recommended_transfer_size 0",
                    "recommended_sdma_engine_id_mask 0",
                    "flags 1",
                ]
            ),
        )


def _gpu_function(
    b: SysfsBuilder, chain: list[str], device_id: int, numa: int, render: int, card: int
) -> str:
    rel = b.pci(chain, 0x038000, AMD, device_id, numa=numa, driver="amdgpu", link=("32.0 GT/s PCIe", 16))
    b.write(f"{rel}/drm/renderD{render}/dev", f"226:{render}")
    b.write(f"{rel}/drm/card{card}/dev", f"226:{card}")
    return rel


def _finish(b: SysfsBuilder, hostname: str, gpus: int) -> None:
    """The class link, the hostname, and the /dev nodes amdgpu and amdkfd create."""
    b.link("sys/class/kfd/kfd", "sys/devices/virtual/kfd/kfd")
    b.write("dev/kfd", "")
    for i in range(gpus):
        b.write(f"dev/dri/renderD{128 + i}", "")
        b.write(f"dev/dri/card{i}", "")
    b.write("proc/sys/kernel/hostname", hostname)
    b.virtual_netdev("lo")


def build_mi300x(root: Path, partitions: int = 1) -> AmdBox:
    """With partitions > 1, each OAM shows as that many KFD nodes (DPX: 2, CPX: 8), one render node each."""
    b = SysfsBuilder(root)
    _cpus(b, [range(0, 8), range(8, 16)], [0, 1])
    for node in (0, 1):
        _kfd_cpu_node(b, node)
    gpus, nics = [], []
    buses = (0x05, 0x15, 0x65, 0x75, 0x85, 0x95, 0xE5, 0xF5)
    for i, bus in enumerate(buses):
        socket = i // 4
        host = f"pci0000:{bus - 5:02x}"
        port = f"0000:{bus - 5:02x}:01.1"
        up = f"0000:{bus - 4:02x}:00.0"
        down_gpu, down_nic = f"0000:{bus - 3:02x}:00.0", f"0000:{bus - 3:02x}:01.0"
        b.pci([host, port], 0x060400, numa=socket, driver="pcieport")
        b.pci([host, port, up], 0x060400, 0x1000, 0xC030, numa=socket, driver="pcieport")
        for down in (down_gpu, down_nic):
            b.pci([host, port, up, down], 0x060400, 0x1000, 0xC030, numa=socket, driver="pcieport")
        address = f"0000:{bus:02x}:00.0"
        _gpu_function(b, [host, port, up, down_gpu, address], 0x74A1, socket, 128 + i, i)
        gpus.append(address)
        nic = f"0000:{bus + 1:02x}:00.0"
        rel = b.pci(
            [host, port, up, down_nic, nic], 0x020000, MELLANOX, 0x1021, numa=socket, driver="mlx5_core"
        )
        b.netdev(rel, f"ens{i}np0", f"b8:3f:d2:10:00:0{i}")
        nics.append(nic)
    hive = 0x1D2E3F4A5B6C7D8E
    nodes = 8 * partitions
    for n in range(nodes):
        i = n // partitions
        peers = [(2 + m, 15) for m in range(nodes) if m != n]
        _kfd_gpu_node(
            b,
            2 + n,
            gpus[i],
            name="ip discovery",
            gfx=90402,
            device_id=0x74A1,
            render=128 + n,
            hive=hive,
            cpu_node=i // 4,
            peers=peers,
        )
    _finish(b, "mi300x-box", nodes)
    return AmdBox(root, tuple(gpus), tuple(nics))


LUMI_GCD_NUMA = (3, 3, 1, 1, 0, 0, 2, 2)


def build_mi250x(root: Path) -> AmdBox:
    b = SysfsBuilder(root)
    _cpus(b, [range(n * 16, n * 16 + 16) for n in range(4)], [0, 0, 0, 0])
    for node in range(4):
        _kfd_cpu_node(b, node)
    gpus = []
    for package in range(4):
        numa = LUMI_GCD_NUMA[package * 2]
        bus = 0xC1 + package * 0x10
        host = f"pci0000:{bus - 1:02x}"
        port = f"0000:{bus - 1:02x}:01.1"
        up = f"0000:{bus:02x}:00.0"
        b.pci([host, port], 0x060400, numa=numa, driver="pcieport")
        b.pci([host, port, up], 0x060400, AMD, 0x14A0, numa=numa, driver="pcieport")
        for gcd in (0, 1):
            down = f"0000:{bus + 1:02x}:{gcd:02x}.0"
            b.pci([host, port, up, down], 0x060400, AMD, 0x14A1, numa=numa, driver="pcieport")
            address = f"0000:{bus + 2 + gcd:02x}:00.0"
            i = package * 2 + gcd
            _gpu_function(b, [host, port, up, down, address], 0x7408, numa, 128 + i, i)
            gpus.append(address)
    hive = 0x2B3C4D5E6F708192
    for i, address in enumerate(gpus):
        peers = [(4 + j, 15 if j // 2 == i // 2 else 30) for j in range(8) if j != i]
        _kfd_gpu_node(
            b,
            4 + i,
            address,
            name="aldebaran",
            gfx=90010,
            device_id=0x7408,
            render=128 + i,
            hive=hive,
            cpu_node=LUMI_GCD_NUMA[i],
            peers=peers,
        )
    _finish(b, "mi250x-box", 8)
    return AmdBox(root, tuple(gpus), ())


def build_mi100_two_hives(root: Path) -> AmdBox:
    b = SysfsBuilder(root)
    _cpus(b, [range(0, 8), range(8, 16)], [0, 1])
    for node in (0, 1):
        _kfd_cpu_node(b, node)
    gpus = []
    hive_of = (0, 0, 0, 0, 1, 1, 1, 1)
    socket_of = (0, 0, 1, 1, 0, 0, 1, 1)
    for i in range(8):
        socket = socket_of[i]
        bus = 0x10 + i * 0x10
        host = f"pci0000:{bus - 0x10 + 0x08:02x}"
        port = f"0000:{bus - 0x10 + 0x08:02x}:01.1"
        b.pci([host, port], 0x060400, numa=socket, driver="pcieport")
        address = f"0000:{bus:02x}:00.0"
        _gpu_function(b, [host, port, address], 0x738C, socket, 128 + i, i)
        gpus.append(address)
    hives = (0x1111000011110000, 0x2222000022220000)
    for i, address in enumerate(gpus):
        peers = [(2 + j, 15) for j in range(8) if j != i and hive_of[j] == hive_of[i]]
        _kfd_gpu_node(
            b,
            2 + i,
            address,
            name="arcturus",
            gfx=90008,
            device_id=0x738C,
            render=128 + i,
            hive=hives[hive_of[i]],
            cpu_node=socket_of[i],
            peers=peers,
        )
    _finish(b, "mi100-box", 8)
    return AmdBox(root, tuple(gpus), ())
