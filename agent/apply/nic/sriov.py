"""SR-IOV: the VF count through sysfs, the VF <-> PF/netdev mapping, and the VF's settings on its PF.

The settings go through `VfControl`, a narrow interface: `NetlinkVfControl`
is the real one (IFLA_VFINFO_LIST on the PF through pyroute2); everything
around it is plain sysfs and netlink that any netdev supports.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pyroute2.netlink.exceptions import NetlinkError

if TYPE_CHECKING:
    from pyroute2 import IPRoute

from agent.apply.checkpoint import VfSettings
from agent.apply.nic.netns import netlink
from gedge_model.allocation import valid_ifname, valid_pci_address

LINK_STATE_AUTO = 0
LINK_STATE_ENABLE = 1
LINK_STATE_DISABLE = 2


class SriovError(RuntimeError):
    """A PF/VF is missing or refused a setting; the message names the device."""


def _net_dir(sysfs_root: Path, pf: str) -> Path:
    if not valid_ifname(pf):
        raise SriovError(f"bad PF interface name {pf!r}")
    return sysfs_root / "sys/class/net" / pf / "device"


def _check_count(sysfs_root: Path, pf: str, count: int) -> tuple[Path, int]:
    """The PF's device folder and its current VF count, once `count` is known to fit."""
    device = _net_dir(sysfs_root, pf)
    try:
        total = int((device / "sriov_totalvfs").read_text())
        current = int((device / "sriov_numvfs").read_text())
    except (OSError, ValueError) as exc:
        raise SriovError(f"{pf} is not an SR-IOV PF ({device}): {exc}") from None
    if not 0 <= count <= total:
        raise SriovError(f"{pf}: {count} VFs requested, the device supports 0..{total}")
    return device, current


def set_num_vfs(sysfs_root: Path, pf: str, count: int) -> bool:
    """Make the PF expose `count` VFs; returns whether anything changed.

    The kernel only accepts a new non-zero count from zero, so a change goes through 0.
    """
    device, current = _check_count(sysfs_root, pf, count)
    if current == count:
        return False
    try:
        if current != 0:
            (device / "sriov_numvfs").write_text("0\n")
        if count != 0:
            (device / "sriov_numvfs").write_text(f"{count}\n")
    except OSError as exc:
        raise SriovError(f"{pf}: cannot set sriov_numvfs to {count}: {exc.strerror}") from None
    return True


def set_vf_counts(sysfs_root: Path, counts: Mapping[str, int]) -> dict[str, bool]:
    """Give each PF its VF count; PF -> whether it changed.

    Every PF is checked before any is changed, so one bad PF leaves them all as they were."""
    for pf, count in sorted(counts.items()):
        _check_count(sysfs_root, pf, count)
    return {pf: set_num_vfs(sysfs_root, pf, count) for pf, count in sorted(counts.items())}


def vf_index(sysfs_root: Path, pf: str, vf_pci: str) -> int:
    """The VF number of `vf_pci` on `pf`, from the PF's virtfn<N> links."""
    if not valid_pci_address(vf_pci):
        raise SriovError(f"bad VF PCI address {vf_pci!r}")
    device = _net_dir(sysfs_root, pf)
    try:
        links = [p for p in device.iterdir() if p.name.startswith("virtfn")]
    except OSError as exc:
        raise SriovError(f"{pf}: cannot list VFs in {device}: {exc.strerror}") from None
    for link in links:
        if os.path.basename(os.readlink(link)) == vf_pci:
            return int(link.name.removeprefix("virtfn"))
    raise SriovError(f"VF {vf_pci} is not a VF of {pf}")


def vf_netdev(sysfs_root: Path, vf_pci: str) -> str | None:
    """The VF's kernel netdev name in the host namespace, or None when it has none there."""
    if not valid_pci_address(vf_pci):
        raise SriovError(f"bad VF PCI address {vf_pci!r}")
    net = sysfs_root / "sys/bus/pci/devices" / vf_pci / "net"
    try:
        names = sorted(p.name for p in net.iterdir())
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SriovError(f"cannot read {net}: {exc.strerror}") from None
    return names[0] if names else None


def vf_driver(sysfs_root: Path, vf_pci: str) -> str | None:
    """The driver the VF is bound to (its sysfs `driver` link), or None when unbound."""
    try:
        return os.path.basename(os.readlink(sysfs_root / "sys/bus/pci/devices" / vf_pci / "driver"))
    except OSError:
        return None


class VfControl(Protocol):
    """The VF-only netlink calls, the one part that needs SR-IOV hardware."""

    def get(self, pf: str, vf: int) -> VfSettings: ...

    def set(self, pf: str, vf: int, settings: VfSettings) -> None: ...


class NetlinkVfControl:
    """VF settings through IFLA_VFINFO_LIST on the PF (what `ip link set PF vf N ...` does)."""

    def __init__(self, host_netns: str | None = None) -> None:
        self.host_netns = host_netns

    def _pf_index(self, ipr: IPRoute, pf: str) -> int:
        found = ipr.link_lookup(ifname=pf)
        if not found:
            raise SriovError(f"PF {pf} not found")
        return found[0]

    def get(self, pf: str, vf: int) -> VfSettings:
        with netlink(self.host_netns) as ipr:
            index = self._pf_index(ipr, pf)
            try:
                (msg,) = ipr.link("get", index=index, ext_mask=1)
            except NetlinkError as exc:
                raise SriovError(f"PF {pf}: cannot read VF settings: {exc}") from None
            vflist = msg.get_attr("IFLA_VFINFO_LIST")
            infos = vflist.get_attrs("IFLA_VF_INFO") if vflist is not None else []
            for info in infos:
                mac = info.get_attr("IFLA_VF_MAC")
                if mac is None or mac["vf"] != vf:
                    continue
                vlan = info.get_attr("IFLA_VF_VLAN")
                rate = info.get_attr("IFLA_VF_RATE")
                spoof = info.get_attr("IFLA_VF_SPOOFCHK")
                trust = info.get_attr("IFLA_VF_TRUST")
                state = info.get_attr("IFLA_VF_LINK_STATE")
                return VfSettings(
                    mac=mac["mac"],
                    vlan=vlan["vlan"] if vlan else 0,
                    spoofchk=bool(spoof["spoofchk"]) if spoof else True,
                    trust=bool(trust["trust"]) if trust else False,
                    min_tx_rate=rate["min_tx_rate"] if rate else 0,
                    max_tx_rate=rate["max_tx_rate"] if rate else 0,
                    link_state=state["link_state"] if state else LINK_STATE_AUTO,
                )
        raise SriovError(f"PF {pf} reports no VF {vf}")

    def set(self, pf: str, vf: int, settings: VfSettings) -> None:
        spec: dict[str, Any] = {
            "vf": vf,
            "vlan": settings.vlan,
            "spoofchk": int(settings.spoofchk),
            "trust": int(settings.trust),
            "rate": {"min_tx_rate": settings.min_tx_rate, "max_tx_rate": settings.max_tx_rate},
            "link_state": settings.link_state,
        }
        if settings.mac is not None:
            spec["mac"] = settings.mac
        with netlink(self.host_netns) as ipr:
            index = self._pf_index(ipr, pf)
            try:
                ipr.link("set", index=index, vf=spec)
            except NetlinkError as exc:
                raise SriovError(f"PF {pf} refused settings for VF {vf}: {exc}") from None
