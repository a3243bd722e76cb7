"""Synthetic 8-GPU servers (sysfs tree + NVML stand-in) after the published A100 and H100 matrices.

Each pair of GPUs sits behind one PCIe switch with a ConnectX NIC (RDMA, two SR-IOV VFs);
pairs 0-1 hang off socket 0, pairs 2-3 off socket 1; every GPU has all its NVLinks on NVSwitch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.discovery.fake_nvml import (
    A100_80GB_PROFILES,
    H100_80GB_PROFILES,
    NVSWITCH,
    FakeGpu,
    FakeMigDevice,
    FakeNvml,
    FakeProfile,
)
from tests.discovery.sysfs_builder import SysfsBuilder

HOST_BUSES = (0x10, 0x30, 0x90, 0xB0)
NVIDIA = 0x10DE
MELLANOX = 0x15B3


@dataclass(frozen=True)
class Box:
    root: Path
    nvml: FakeNvml
    gpu_addresses: tuple[str, ...]
    nic_addresses: tuple[str, ...]
    node_cpus: tuple[tuple[int, ...], tuple[int, ...]]


def build_box(root: Path, model: str = "H100", *, mig_gpu0: bool = False) -> Box:
    b = SysfsBuilder(root)
    if model == "H100":
        threads, name, device_id, memory, links, cc = 104, "NVIDIA H100 80GB HBM3", 0x2330, 81559, 18, (9, 0)
        profiles, named = H100_80GB_PROFILES, False
    else:
        threads, name, device_id, memory, links, cc = 48, "NVIDIA A100-SXM4-80GB", 0x20B2, 81920, 12, (8, 0)
        profiles, named = A100_80GB_PROFILES, True
    smt = model == "H100"
    half = threads // 2
    node_cpus: list[tuple[int, ...]] = []
    for socket in (0, 1):
        cores = range(socket * half, (socket + 1) * half)
        cpus = tuple(cores) + (tuple(c + threads for c in cores) if smt else ())
        node_cpus.append(tuple(sorted(cpus)))
        for c in cores:
            siblings = (c, c + threads) if smt else (c,)
            for cpu in siblings:
                b.cpu(cpu, core=c % half, package=socket, siblings=siblings)
        b.node(socket, cpus, 1 << 30, (10, 21) if socket == 0 else (21, 10))
    b.cpus_online(c for cpus in node_cpus for c in cpus)
    b.nodes_online((0, 1))
    b.write("proc/sys/kernel/hostname", f"{model.lower()}-box")

    gpus: list[str] = []
    nics: list[str] = []
    for pair, hb in enumerate(HOST_BUSES):
        socket = pair // 2
        host = f"pci0000:{hb:02x}"
        root_port = f"0000:{hb:02x}:01.0"
        upstream = f"0000:{hb + 1:02x}:00.0"
        chain = [host, root_port, upstream]
        b.pci(chain[:2], 0x060400, numa=socket, driver="pcieport")
        b.pci(chain, 0x060400, 0x1000, 0xC030, numa=socket, driver="pcieport")
        for port, slot in enumerate(("00", "01", "02")):
            b.pci([*chain, f"0000:{hb + 2:02x}:{slot}.0"], 0x060400, 0x1000, 0xC030, numa=socket)
            below = [*chain, f"0000:{hb + 2:02x}:{slot}.0"]
            if port < 2:
                address = f"0000:{hb + 3 + port:02x}:00.0"
                b.pci(
                    [*below, address],
                    0x030200,
                    NVIDIA,
                    device_id,
                    numa=socket,
                    driver="nvidia",
                    link=("32.0 GT/s PCIe", 16),
                )
                gpus.append(address)
            else:
                bus = hb + 5
                pf = b.pci(
                    [*below, f"0000:{bus:02x}:00.0"],
                    0x020000,
                    MELLANOX,
                    0x1021,
                    numa=socket,
                    driver="mlx5_core",
                )
                vfs = [
                    b.pci(
                        [*below, f"0000:{bus:02x}:00.{f}"],
                        0x020000,
                        MELLANOX,
                        0x101E,
                        numa=socket,
                        driver="mlx5_core",
                    )
                    for f in (2, 3)
                ]
                b.sriov(pf, vfs, total=8)
                b.netdev(pf, f"ens{pair}np0", f"b8:3f:d2:00:0{pair}:00")
                for i, vf in enumerate(vfs):
                    b.netdev(vf, f"ens{pair}v{i}", f"b8:3f:d2:00:0{pair}:1{i}")
                b.infiniband(pf, f"mlx5_{pair}", f"b83f:d203:00{pair}0:0000")
                nics.append(f"0000:{bus:02x}:00.0")
    nvme_port = f"0000:{HOST_BUSES[0]:02x}:02.0"
    b.pci([f"pci0000:{HOST_BUSES[0]:02x}", nvme_port], 0x060400, numa=0, driver="pcieport")
    nvme = b.pci(
        [f"pci0000:{HOST_BUSES[0]:02x}", nvme_port, "0000:1a:00.0"],
        0x010802,
        0x144D,
        0xA80A,
        numa=0,
        driver="nvme",
    )
    b.nvme(nvme, "nvme0", "SAMSUNG MZ1L21T9HCLS-00A07")
    b.virtual_netdev("lo")

    fakes = [
        FakeGpu(
            uuid=f"GPU-{model.lower()}-0000-0000-0000-00000000000{i}",
            name=name,
            bus_id=f"00000000:{address[5:].upper()}",
            memory_bytes=memory << 20,
            capability=cc,
            links=[NVSWITCH] * links,
            profiles=list(profiles),
            profile_names=named,
        )
        for i, address in enumerate(gpus)
    ]
    if mig_gpu0:
        fakes[0].mig_mode = (1, 1)
        fakes[0].profiles = [_remaining(p) for p in profiles]
        fakes[0].mig_devices = [
            FakeMigDevice(f"MIG-{model.lower()}-3g-0001", 2, 0, 9, 0, 4),
            FakeMigDevice(f"MIG-{model.lower()}-1g-0009", 9, 0, 19, 4, 1),
            FakeMigDevice(f"MIG-{model.lower()}-1g-0010", 10, 0, 19, 5, 1),
        ]
    fakes[1].mig_mode = (0, 1)
    return Box(root, FakeNvml(fakes), tuple(gpus), tuple(nics), (node_cpus[0], node_cpus[1]))


def _remaining(profile: FakeProfile) -> FakeProfile:
    """What is left once a 3g and two 1g instances exist: one more 1g (with or without media engines)."""
    left = {19: 1, 20: 1}.get(profile.profile_id, 0)
    return FakeProfile(
        profile.index,
        profile.profile_id,
        profile.name,
        profile.slices,
        profile.instances,
        profile.memory_mib,
        left,
    )
