"""Whether this node can hand out VFs as data-path NICs, found once per PF and said once.

A PF whose VF settings cannot be read (no VF control configured, no
CAP_NET_ADMIN, a driver without VF netlink support) would fail every pod
granted one of its VFs; `SriovGate` takes such a PF's kernel-netdev VFs out of
the reported topology instead, so neither kubelet nor the extender offers
them. VFs on vfio-pci/DPDK drivers need no VF control and stay.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import structlog

from agent.apply.nic.sriov import SriovError, VfControl
from gedge_model import NetInterface, NodeTopology, VfPool

log = structlog.get_logger("gedge.agent.sriov")

CAP_NET_ADMIN = 12


def has_capability(bit: int, status: Path = Path("/proc/self/status")) -> bool:
    """Whether this process holds the capability `bit` (CapEff in /proc/self/status)."""
    try:
        for line in status.read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> bit & 1)
    except (OSError, ValueError, IndexError):
        return False
    return False


class SriovGate:
    """Drops the kernel-netdev VFs of PFs that cannot configure them; the verdict per PF is cached.

    `unavailable`: a node-wide reason (VF control off, apply off, no CAP_NET_ADMIN), or None to probe
    each PF through `vf_control.get` on its first VF."""

    def __init__(self, vf_control: VfControl | None, unavailable: str | None = None) -> None:
        if vf_control is None and unavailable is None:
            unavailable = "no VF control configured"
        self._vf_control = vf_control
        self._unavailable = unavailable
        self._verdicts: dict[str, str | None] = {}
        self._said_none = False
        self._lock = threading.Lock()

    def verdicts(self) -> dict[str, str | None]:
        """PF -> why its VFs are not offered, or None when they are; PFs seen so far."""
        with self._lock:
            return dict(self._verdicts)

    def _verdict(self, interface: NetInterface) -> str | None:
        with self._lock:
            if interface.name in self._verdicts:
                return self._verdicts[interface.name]
        reason = self._unavailable
        if reason is None:
            assert self._vf_control is not None
            first = min(v.index for v in interface.vfs)
            try:
                self._vf_control.get(interface.name, first)
            except SriovError as exc:
                reason = str(exc)
        with self._lock:
            self._verdicts[interface.name] = reason
        if reason is None:
            log.info("sriov available", pf=interface.name, vfs=len(interface.vfs))
        else:
            log.warning(
                "sriov unavailable: its kernel-netdev VFs are not offered as gedge.io/sriov-vf",
                pf=interface.name,
                reason=reason,
            )
        return reason

    def __call__(self, topology: NodeTopology) -> NodeTopology:
        pfs = [i for i in topology.interfaces if any(v.pool is VfPool.NETDEV for v in i.vfs)]
        if not pfs:
            with self._lock:
                said, self._said_none = self._said_none, True
            if not said:
                log.info("sriov unavailable: no PF with kernel-netdev VFs on this node")
            return topology
        names = {i.name for i in pfs}
        out = []
        changed = False
        for interface in topology.interfaces:
            if interface.name in names and self._verdict(interface) is not None:
                kept = tuple(v for v in interface.vfs if v.pool is not VfPool.NETDEV)
                interface = dataclasses.replace(interface, vfs=kept)
                changed = True
            out.append(interface)
        return dataclasses.replace(topology, interfaces=tuple(out)) if changed else topology
