"""What the host offers a container for a device: device nodes and their driver-side numbers.

Reads the driver's view under a root (default `/`): NVIDIA's /proc/driver files
for a GPU's device minor and MIG capability minors, the infiniband sysfs
classes for an RDMA device's uverbs/umad nodes, and /dev for what exists.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path


class HostDeviceError(RuntimeError):
    """A device node the container needs cannot be found; the message names it."""


_DEVICE_MINOR = re.compile(r"^Device Minor:\s*(\d+)\s*$", re.MULTILINE)
_MIG_MINOR_LINE = re.compile(r"^(\S+)\s+(\d+)$")


@dataclass(frozen=True)
class HostDevices:
    root: Path = Path("/")

    def dev(self, relative: str) -> Path:
        return self.root / "dev" / relative

    def exists(self, dev_path: str) -> bool:
        """Whether /dev/... (an absolute container-side path) exists on the host under root."""
        return (self.root / dev_path.lstrip("/")).exists()

    def nvidia_minor(self, pci_address: str) -> int:
        """The GPU's /dev/nvidiaN number, from /proc/driver/nvidia/gpus/<pci>/information."""
        info = self.root / "proc/driver/nvidia/gpus" / pci_address.lower() / "information"
        try:
            text = info.read_text()
        except OSError as exc:
            raise HostDeviceError(f"cannot read the device minor of GPU {pci_address}: {exc}") from None
        match = _DEVICE_MINOR.search(text)
        if match is None:
            raise HostDeviceError(f"{info} has no 'Device Minor:' line")
        return int(match.group(1))

    def mig_capability_minors(self) -> dict[str, int]:
        """`gpu<minor>/gi<id>/access` and `gpu<minor>/gi<id>/ci<id>/access` -> nvidia-cap minor."""
        path = self.root / "proc/driver/nvidia-caps/mig-minors"
        try:
            text = path.read_text()
        except OSError as exc:
            raise HostDeviceError(f"cannot read MIG capability minors: {exc}") from None
        minors: dict[str, int] = {}
        for line in text.splitlines():
            match = _MIG_MINOR_LINE.match(line.strip())
            if match:
                minors[match.group(1)] = int(match.group(2))
        return minors

    def iommu_group(self, pci_address: str) -> str:
        """The IOMMU group number of a PCI function (its /dev/vfio/<group> node), from sysfs."""
        link = self.root / "sys/bus/pci/devices" / pci_address / "iommu_group"
        try:
            return Path(os.readlink(link)).name
        except OSError as exc:
            raise HostDeviceError(
                f"PCI function {pci_address} has no IOMMU group ({link}: {exc.strerror or exc})"
            ) from None

    def rdma_char_devices(self, rdma_name: str) -> tuple[str, ...]:
        """uverbsN, umadN and issmN names that belong to one RDMA device (by their ibdev file)."""
        found: list[str] = []
        for klass in ("infiniband_verbs", "infiniband_mad"):
            base = self.root / "sys/class" / klass
            if not base.is_dir():
                continue
            for entry in sorted(base.iterdir()):
                try:
                    owner = (entry / "ibdev").read_text().strip()
                except OSError:
                    continue
                if owner == rdma_name:
                    found.append(entry.name)
        return tuple(found)
