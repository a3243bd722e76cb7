"""Model topologies of typical machines, built from the shared model: benchmarks and dry runs use them.

`dgx_like` follows the DGX layout: two sockets, a PCIe switch per GPU pair with
an RDMA NIC (and its SR-IOV VFs) beside them, NVLink between GPUs. `edge_box`
is a one-socket box with a GPU and a NIC on separate root ports.
`pcie_workstation` has GPUs on both sockets and a NIC on one only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gedge_model import (
    Cpu,
    Gpu,
    MigInstance,
    MigProfile,
    NetInterface,
    NodeTopology,
    NumaNode,
    NvLink,
    PciDevice,
    RdmaDevice,
    VirtualFunction,
)

NVIDIA = 0x10DE
MELLANOX = 0x15B3
CLASS_3D = 0x030200
CLASS_ETHERNET = 0x020000
A100_MIG_PROFILES = (
    ("1g.10gb", 19, 1, 9728, 7),
    ("1g.10gb+me", 20, 1, 9728, 1),
    ("2g.20gb", 14, 2, 19968, 3),
    ("3g.40gb", 9, 3, 40192, 2),
)


def cpus_and_numa(
    sockets: int, cores_per_socket: int, threads: int = 2
) -> tuple[tuple[Cpu, ...], tuple[NumaNode, ...]]:
    """Linux numbering: first threads of every core, socket by socket, then the second threads."""
    cpus: list[Cpu] = []
    per_thread = sockets * cores_per_socket
    for socket in range(sockets):
        for core in range(cores_per_socket):
            ids = tuple(t * per_thread + socket * cores_per_socket + core for t in range(threads))
            for cpu_id in ids:
                cpus.append(Cpu(cpu_id, True, core, socket, socket, ids))
    cpus.sort(key=lambda c: c.id)
    numa = tuple(
        NumaNode(
            socket,
            tuple(c.id for c in cpus if c.numa_node == socket),
            64 << 30,
            tuple((other, 10 if other == socket else 21) for other in range(sockets)),
        )
        for socket in range(sockets)
    )
    return tuple(cpus), numa


def _vf_address(bus: int, index: int) -> str:
    slot, function = divmod(index + 1, 8)
    return f"0000:{bus:02x}:{slot:02x}.{function}"


def _mig(
    node: str, gpu: int, profiles: Sequence[str]
) -> tuple[tuple[MigProfile, ...], tuple[MigInstance, ...]]:
    known = {name: (pid, slices, mem, total) for name, pid, slices, mem, total in A100_MIG_PROFILES}
    instances = []
    start = 0
    for n, profile in enumerate(profiles):
        _, slices, _, _ = known[profile]
        instances.append(
            MigInstance(
                f"MIG-{node}-{gpu}-{n}", profile, n + 1, 0, placement_start=start, placement_size=slices
            )
        )
        start += slices
    used = {p: sum(1 for q in profiles if q == p) for p in known}
    return (
        tuple(
            MigProfile(name, pid, s, mem, total, max(0, total - used[name]))
            for name, (pid, s, mem, total) in known.items()
        ),
        tuple(instances),
    )


def dgx_like(
    node: str = "dgx",
    *,
    gpus: int = 8,
    nvlink: str = "nvswitch",
    sockets: int = 2,
    cores_per_socket: int = 16,
    vfs_per_nic: int = 8,
    rdma: bool = True,
    timeslice_replicas: int = 1,
    mig: Mapping[int, Sequence[str]] | None = None,
) -> NodeTopology:
    """GPUs in pairs under PCIe switches (one switch per host bridge), a NIC per switch.

    nvlink: "nvswitch" (every pair NV12), "pairs" (NV4 within a switch pair) or "none".
    mig: GPU index -> the MIG instance profiles it has (the GPU is in MIG mode).
    """
    cpus, numa_nodes = cpus_and_numa(sockets, cores_per_socket)
    switches = max(1, gpus // 2)
    pci: list[PciDevice] = []
    gpu_entries: list[tuple[int, str, int]] = []
    interfaces: list[NetInterface] = []
    rdmas: list[RdmaDevice] = []
    for s in range(switches):
        base = 0x10 + 0x20 * s
        numa = s * sockets // switches
        host = f"pci0000:{base:02x}"
        root = f"0000:{base:02x}:01.0"
        up = f"0000:{base + 1:02x}:00.0"
        for k in range(2):
            index = 2 * s + k
            if index >= gpus:
                break
            address = f"0000:{base + 3 + k:02x}:00.0"
            bridges = (root, up, f"0000:{base + 2:02x}:{k:02x}.0")
            pci.append(PciDevice(address, CLASS_3D, NVIDIA, 0x20B0, host, bridges, "nvidia", numa))
            gpu_entries.append((index, address, numa))
        nic_bus = base + 5
        nic_address = f"0000:{nic_bus:02x}:00.0"
        nic_bridges = (root, up, f"0000:{base + 2:02x}:02.0")
        pci.append(
            PciDevice(nic_address, CLASS_ETHERNET, MELLANOX, 0x101B, host, nic_bridges, "mlx5_core", numa)
        )
        name = f"ens{s}f0"
        vfs = []
        for v in range(vfs_per_nic):
            vf_address = _vf_address(nic_bus, v)
            pci.append(
                PciDevice(
                    vf_address,
                    CLASS_ETHERNET,
                    MELLANOX,
                    0x101C,
                    host,
                    nic_bridges,
                    "mlx5_core",
                    numa,
                    physfn=nic_address,
                )
            )
            vfs.append(VirtualFunction(v, vf_address, f"{name}v{v}"))
        interfaces.append(
            NetInterface(
                name, nic_address, f"02:00:00:00:{s:02x}:00", 100_000, "up", 16, vfs_per_nic, tuple(vfs)
            )
        )
        if rdma:
            rdmas.append(RdmaDevice(f"mlx5_{s}", nic_address, (name,)))

    mig = mig or {}
    gpu_list = []
    for index, address, _ in gpu_entries:
        if nvlink == "nvswitch":
            links = tuple(NvLink(other, 12) for i, other, _ in gpu_entries if i != index)
        elif nvlink == "pairs":
            links = tuple(
                NvLink(other, 4) for i, other, _ in gpu_entries if i != index and i // 2 == index // 2
            )
        else:
            links = ()
        profiles, instances = _mig(node, index, mig[index]) if index in mig else ((), ())
        gpu_list.append(
            Gpu(
                index=index,
                uuid=f"GPU-{node}-{index:02d}",
                name="NVIDIA A100-SXM4-80GB",
                pci_address=address,
                memory_bytes=80 << 30,
                driver_version="535.104.05",
                cuda_driver_version="12.2",
                compute_capability="8.0",
                mig_current=index in mig,
                mig_profiles=profiles,
                mig_instances=instances,
                nvlinks=links,
                timeslice_replicas=timeslice_replicas if index not in mig else 1,
            )
        )
    return NodeTopology(
        node_name=node,
        cpus=cpus,
        numa_nodes=numa_nodes,
        pci_devices=tuple(pci),
        interfaces=tuple(interfaces),
        rdma_devices=tuple(rdmas),
        gpus=tuple(gpu_list),
    )


def edge_box(
    node: str = "edge",
    *,
    gpus: int = 1,
    cores: int = 4,
    vfs: int = 4,
    timeslice_replicas: int = 4,
) -> NodeTopology:
    """One socket; GPUs on their own root ports, a NIC with VFs on another (GPU<->NIC is PHB)."""
    cpus, numa_nodes = cpus_and_numa(1, cores)
    host = "pci0000:00"
    pci = []
    gpu_list = []
    for g in range(gpus):
        address = f"0000:{0x01 + g:02x}:00.0"
        pci.append(
            PciDevice(address, CLASS_3D, NVIDIA, 0x2560, host, (f"0000:00:{0x01 + g:02x}.0",), "nvidia", 0)
        )
        gpu_list.append(
            Gpu(
                g,
                f"GPU-{node}-{g:02d}",
                "NVIDIA RTX A2000",
                address,
                12 << 30,
                "535.104.05",
                "12.2",
                "8.6",
                timeslice_replicas=timeslice_replicas,
            )
        )
    nic_address = "0000:05:00.0"
    nic_bridges = ("0000:00:1c.0",)
    pci.append(PciDevice(nic_address, CLASS_ETHERNET, 0x8086, 0x1572, host, nic_bridges, "i40e", 0))
    vf_list = []
    for v in range(vfs):
        address = _vf_address(0x05, v)
        pci.append(
            PciDevice(
                address, CLASS_ETHERNET, 0x8086, 0x154C, host, nic_bridges, "iavf", 0, physfn=nic_address
            )
        )
        vf_list.append(VirtualFunction(v, address, f"enp5s0v{v}"))
    interfaces = (
        NetInterface("enp5s0", nic_address, "02:00:00:00:05:00", 10_000, "up", 8, vfs, tuple(vf_list)),
    )
    return NodeTopology(
        node_name=node,
        cpus=cpus,
        numa_nodes=numa_nodes,
        pci_devices=tuple(pci),
        interfaces=interfaces,
        gpus=tuple(gpu_list),
    )


def pcie_workstation(
    node: str = "ws", *, gpus_per_socket: int = 2, cores_per_socket: int = 8, vfs: int = 4
) -> NodeTopology:
    """Two sockets with GPUs on root ports of each; one NIC (VFs, RDMA) on socket 0 only."""
    cpus, numa_nodes = cpus_and_numa(2, cores_per_socket)
    pci = []
    gpu_list = []
    for socket in range(2):
        host = f"pci0000:{0x40 * socket:02x}"
        for k in range(gpus_per_socket):
            index = socket * gpus_per_socket + k
            bus = 0x40 * socket + 0x01 + k
            address = f"0000:{bus:02x}:00.0"
            bridges = (f"0000:{0x40 * socket:02x}:{0x01 + k:02x}.0",)
            pci.append(PciDevice(address, CLASS_3D, NVIDIA, 0x2204, host, bridges, "nvidia", socket))
            gpu_list.append(
                Gpu(
                    index,
                    f"GPU-{node}-{index:02d}",
                    "NVIDIA RTX A6000",
                    address,
                    48 << 30,
                    "535.104.05",
                    "12.2",
                    "8.6",
                    timeslice_replicas=2,
                )
            )
    nic_address = "0000:30:00.0"
    nic_bridges = ("0000:00:1d.0",)
    pci.append(
        PciDevice(nic_address, CLASS_ETHERNET, MELLANOX, 0x1017, "pci0000:00", nic_bridges, "mlx5_core", 0)
    )
    vf_list = []
    for v in range(vfs):
        address = _vf_address(0x30, v)
        pci.append(
            PciDevice(
                address,
                CLASS_ETHERNET,
                MELLANOX,
                0x1018,
                "pci0000:00",
                nic_bridges,
                "mlx5_core",
                0,
                physfn=nic_address,
            )
        )
        vf_list.append(VirtualFunction(v, address, f"enp48s0v{v}"))
    interfaces = (
        NetInterface("enp48s0", nic_address, "02:00:00:00:30:00", 25_000, "up", 8, vfs, tuple(vf_list)),
    )
    return NodeTopology(
        node_name=node,
        cpus=cpus,
        numa_nodes=numa_nodes,
        pci_devices=tuple(pci),
        interfaces=interfaces,
        rdma_devices=(RdmaDevice("mlx5_0", nic_address, ("enp48s0",)),),
        gpus=tuple(gpu_list),
    )
