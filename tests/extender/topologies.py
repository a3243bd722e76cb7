"""Synthetic GPU nodes from the model: what this machine lacks (GPUs, VFs, RDMA), laid out as real boxes are.

`dgx_like`: 2 sockets, 8 GPUs in pairs behind 4 PCIe switches, each switch with a
ConnectX NIC (SR-IOV VFs, RDMA); NVLink between GPUs of a socket.
`edge_box`: one socket, one GPU and one NIC with VFs on the same switch.
"""

from __future__ import annotations

import dataclasses

from gedge_model import (
    Cpu,
    Gpu,
    NetInterface,
    NodeTopology,
    NumaNode,
    NvLink,
    PciDevice,
    RdmaDevice,
    VirtualFunction,
)
from gedge_model.topology import MigProfile

NVIDIA = 0x10DE
MELLANOX = 0x15B3
CLASS_3D = 0x030200
CLASS_ETHERNET = 0x020000
CLASS_BRIDGE = 0x060400


def _cpus(
    sockets: int, cores_per_socket: int, threads: int = 2
) -> tuple[tuple[Cpu, ...], tuple[NumaNode, ...]]:
    """Linux numbering: first threads of every core, then their siblings."""
    total_cores = sockets * cores_per_socket
    cpus = []
    for thread in range(threads):
        for core in range(total_cores):
            cpu_id = thread * total_cores + core
            siblings = tuple(t * total_cores + core for t in range(threads))
            socket = core // cores_per_socket
            cpus.append(Cpu(cpu_id, True, core % cores_per_socket, socket, socket, siblings))
    numa = tuple(
        NumaNode(
            s,
            tuple(sorted(c.id for c in cpus if c.numa_node == s)),
            64 << 30,
            tuple((o, 10 if o == s else 21) for o in range(sockets)),
        )
        for s in range(sockets)
    )
    return tuple(sorted(cpus, key=lambda c: c.id)), numa


def dgx_like(
    name: str, *, vfs_per_nic: int = 4, mig: bool = False, timeslice_replicas: int = 1
) -> NodeTopology:
    cpus, numa = _cpus(2, 16)
    pci: list[PciDevice] = []
    gpus: list[Gpu] = []
    interfaces: list[NetInterface] = []
    rdma: list[RdmaDevice] = []
    gpu_index = 0
    for switch in range(4):
        socket = switch // 2
        host_bridge = f"pci0000:{0x10 + switch * 0x10:02x}"
        bus = 0x10 + switch * 0x10
        upstream = f"0000:{bus:02x}:00.0"
        ports = [f"0000:{bus + 1:02x}:{p:02x}.0" for p in range(3)]
        local = numa[socket].cpus
        pci.append(PciDevice(upstream, CLASS_BRIDGE, 0x1000, 0xC010, host_bridge, (), numa_node=socket))
        for p in ports:
            pci.append(PciDevice(p, CLASS_BRIDGE, 0x1000, 0xC010, host_bridge, (upstream,), numa_node=socket))
        for slot in range(2):
            address = f"0000:{bus + 2 + slot:02x}:00.0"
            pci.append(
                PciDevice(
                    address,
                    CLASS_3D,
                    NVIDIA,
                    0x20B0,
                    host_bridge,
                    (upstream, ports[slot]),
                    driver="nvidia",
                    numa_node=socket,
                    local_cpus=local,
                )
            )
            profiles = (
                (
                    MigProfile("1g.10gb", 19, 1, 9856, 7, 7),
                    MigProfile("3g.40gb", 9, 3, 40192, 2, 2),
                    MigProfile("7g.80gb", 0, 7, 80896, 1, 1),
                )
                if mig
                else ()
            )
            gpus.append(
                Gpu(
                    gpu_index,
                    f"GPU-{name}-{gpu_index:02d}",
                    "NVIDIA A100-SXM4-80GB",
                    address,
                    80 << 30,
                    driver_version="550.54.15",
                    cuda_driver_version="12.4",
                    compute_capability="8.0",
                    mig_current=mig,
                    mig_profiles=profiles,
                    timeslice_replicas=timeslice_replicas,
                )
            )
            gpu_index += 1
        nic_bus = bus + 4
        nic_address = f"0000:{nic_bus:02x}:00.0"
        pci.append(
            PciDevice(
                nic_address,
                CLASS_ETHERNET,
                MELLANOX,
                0x101D,
                host_bridge,
                (upstream, ports[2]),
                driver="mlx5_core",
                numa_node=socket,
                local_cpus=local,
            )
        )
        vfs = []
        for v in range(vfs_per_nic):
            vf_address = f"0000:{nic_bus:02x}:00.{v + 1}" if v < 7 else f"0000:{nic_bus:02x}:01.{v - 7}"
            pci.append(
                PciDevice(
                    vf_address,
                    CLASS_ETHERNET,
                    MELLANOX,
                    0x101E,
                    host_bridge,
                    (upstream, ports[2]),
                    driver="mlx5_core",
                    numa_node=socket,
                    local_cpus=local,
                    physfn=nic_address,
                )
            )
            vfs.append(VirtualFunction(v, vf_address, f"ens{switch}f0v{v}"))
        interfaces.append(
            NetInterface(
                f"ens{switch}f0",
                nic_address,
                f"0c:42:a1:00:0{switch}:00",
                100_000,
                "up",
                sriov_totalvfs=16,
                sriov_numvfs=vfs_per_nic,
                vfs=tuple(vfs),
            )
        )
        rdma.append(RdmaDevice(f"mlx5_{switch}", nic_address, (f"ens{switch}f0",)))
    by_socket: dict[int, list[Gpu]] = {}
    for gpu in gpus:
        by_socket.setdefault(gpu.index // 4, []).append(gpu)
    linked = []
    for gpu in gpus:
        peers = [p for p in by_socket[gpu.index // 4] if p.index != gpu.index]
        linked.append(dataclasses.replace(gpu, nvlinks=tuple(NvLink(p.pci_address, 12) for p in peers)))
    return NodeTopology(
        node_name=name,
        cpus=cpus,
        numa_nodes=numa,
        pci_devices=tuple(pci),
        interfaces=tuple(interfaces),
        rdma_devices=tuple(rdma),
        gpus=tuple(linked),
    )


def edge_box(name: str, *, vfs: int = 4, timeslice_replicas: int = 1) -> NodeTopology:
    cpus, numa = _cpus(1, 4)
    host_bridge = "pci0000:00"
    port = "0000:00:01.0"
    gpu_address = "0000:01:00.0"
    nic_address = "0000:02:00.0"
    pci = [
        PciDevice(port, CLASS_BRIDGE, 0x8086, 0x1901, host_bridge, (), numa_node=0),
        PciDevice(gpu_address, CLASS_3D, NVIDIA, 0x1EB8, host_bridge, (port,), driver="nvidia", numa_node=0),
        PciDevice(nic_address, CLASS_ETHERNET, 0x8086, 0x1572, host_bridge, (), driver="i40e", numa_node=0),
    ]
    vf_list = []
    for v in range(vfs):
        address = f"0000:02:02.{v}"
        pci.append(
            PciDevice(
                address,
                CLASS_ETHERNET,
                0x8086,
                0x154C,
                host_bridge,
                (),
                driver="iavf",
                numa_node=0,
                physfn=nic_address,
            )
        )
        vf_list.append(VirtualFunction(v, address, f"enp2s0f0v{v}"))
    return NodeTopology(
        node_name=name,
        cpus=cpus,
        numa_nodes=numa,
        pci_devices=tuple(pci),
        interfaces=(
            NetInterface("enp2s0f0", nic_address, "3c:fd:fe:00:00:01", 10_000, "up", 64, vfs, tuple(vf_list)),
        ),
        gpus=(
            Gpu(
                0,
                f"GPU-{name}-00",
                "Tesla T4",
                gpu_address,
                16 << 30,
                driver_version="535.104.05",
                cuda_driver_version="12.2",
                compute_capability="7.5",
                timeslice_replicas=timeslice_replicas,
            ),
        ),
    )
