"""Builds small sysfs trees in a temporary folder, shaped like the kernel's (relative symlinks included)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from gedge_model.cpulist import format_cpulist


class SysfsBuilder:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def write(self, rel: str, text: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
        return path

    def link(self, rel: str, target_rel: str) -> None:
        """A relative symlink at `rel` pointing to `target_rel` (both relative to the root)."""
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(os.path.relpath(self.root / target_rel, path.parent))

    def cpu(
        self,
        cpu_id: int,
        *,
        online: bool = True,
        core: int | None = None,
        package: int = 0,
        siblings: Sequence[int] | None = None,
        online_file: bool = True,
    ) -> None:
        base = f"sys/devices/system/cpu/cpu{cpu_id}"
        (self.root / base).mkdir(parents=True, exist_ok=True)
        if online_file:
            self.write(f"{base}/online", "1" if online else "0")
        if online:
            self.write(f"{base}/topology/core_id", str(cpu_id if core is None else core))
            self.write(f"{base}/topology/physical_package_id", str(package))
            self.write(f"{base}/topology/thread_siblings_list", format_cpulist(list(siblings or [cpu_id])))

    def cpus_online(self, cpus: Iterable[int]) -> None:
        self.write("sys/devices/system/cpu/online", format_cpulist(list(cpus)))

    def node(self, node_id: int, cpus: Sequence[int], mem_kb: int, distances: Sequence[int]) -> None:
        base = f"sys/devices/system/node/node{node_id}"
        self.write(f"{base}/cpulist", format_cpulist(list(cpus)))
        self.write(
            f"{base}/meminfo", f"Node {node_id} MemTotal:       {mem_kb} kB\nNode {node_id} MemFree: 1 kB"
        )
        self.write(f"{base}/distance", " ".join(map(str, distances)))

    def nodes_online(self, ids: Iterable[int]) -> None:
        self.write("sys/devices/system/node/online", format_cpulist(list(ids)))

    def pci(
        self,
        chain: Sequence[str],
        class_id: int,
        vendor: int = 0x8086,
        device: int = 0x1234,
        *,
        numa: int | None = -1,
        local_cpulist: Sequence[int] | None = None,
        driver: str | None = None,
        link: tuple[str, int] | None = None,
    ) -> str:
        """A PCI function at sys/devices/<chain...>; chain[0] is the host bridge, chain[-1] the address."""
        rel = "sys/devices/" + "/".join(chain)
        address = chain[-1]
        self.write(f"{rel}/class", f"0x{class_id:06x}")
        self.write(f"{rel}/vendor", f"0x{vendor:04x}")
        self.write(f"{rel}/device", f"0x{device:04x}")
        if numa is not None:
            self.write(f"{rel}/numa_node", str(numa))
        if local_cpulist is not None:
            self.write(f"{rel}/local_cpulist", format_cpulist(list(local_cpulist)))
        if driver:
            self.link(f"{rel}/driver", f"sys/bus/pci/drivers/{driver}")
            (self.root / f"sys/bus/pci/drivers/{driver}").mkdir(parents=True, exist_ok=True)
        if link:
            self.write(f"{rel}/current_link_speed", link[0])
            self.write(f"{rel}/current_link_width", str(link[1]))
        self.link(f"sys/bus/pci/devices/{address}", rel)
        return rel

    def netdev(self, device_rel: str, name: str, mac: str, *, speed: int = 100000, state: str = "up") -> None:
        rel = f"{device_rel}/net/{name}"
        self.write(f"{rel}/address", mac)
        self.write(f"{rel}/speed", str(speed))
        self.write(f"{rel}/operstate", state)
        self.link(f"{rel}/device", device_rel)
        self.link(f"sys/class/net/{name}", rel)

    def sriov(self, pf_rel: str, vf_rels: Sequence[str], total: int) -> None:
        self.write(f"{pf_rel}/sriov_totalvfs", str(total))
        self.write(f"{pf_rel}/sriov_numvfs", str(len(vf_rels)))
        for index, vf_rel in enumerate(vf_rels):
            self.link(f"{pf_rel}/virtfn{index}", vf_rel)
            self.link(f"{vf_rel}/physfn", pf_rel)

    def infiniband(self, device_rel: str, name: str, guid: str) -> None:
        rel = f"{device_rel}/infiniband/{name}"
        self.write(f"{rel}/node_guid", guid)
        self.link(f"sys/class/infiniband/{name}", rel)

    def nvme(self, device_rel: str, name: str, model: str) -> None:
        rel = f"{device_rel}/nvme/{name}"
        self.write(f"{rel}/model", model)
        self.link(f"sys/class/nvme/{name}", rel)

    def virtual_netdev(self, name: str) -> None:
        rel = f"sys/devices/virtual/net/{name}"
        self.write(f"{rel}/address", "00:00:00:00:00:00")
        self.link(f"sys/class/net/{name}", rel)
