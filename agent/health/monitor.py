"""Device health: which advertised PCI functions are unhealthy now, and telling everyone once.

Three causes, as NVIDIA's and the SR-IOV device plugins know them:
- a critical Xid from NVML (`XidWatcher` calls `mark`); sticky until the agent restarts, as in
  NVIDIA's device plugin, because the GPU needs a reset;
- a PCI function gone from sysfs (surprise removal, a PF whose VFs were torn down);
- a physical NIC whose link is down: its VFs and its RDMA device go with it.
The last two are polled every `interval_s` (one stat and one small read per device) and recover
by themselves. Every change goes into the node state (`NodeStateStore.set_unhealthy`): device
plugins report it to kubelet through ListAndWatch, the extender stops granting the device, and
`on_change` turns it into a metric and a Node event.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import structlog
from kubernetes.client.rest import ApiException

from agent.kube_events import node_ref, post_event
from agent.service.store import NodeStateStore
from gedge_model import DeviceHealth, NodeTopology

log = structlog.get_logger("gedge.agent.health")

LINK_DOWN_STATES = frozenset({"down", "lowerlayerdown", "notpresent"})
"""operstate values that mean no traffic passes (`unknown` and `dormant` do not say so)."""
VANISHED = "vanished from sysfs"

Transition = Callable[[Mapping[str, str], Mapping[str, str]], None]
"""(newly unhealthy PCI address -> reason, recovered PCI address -> former reason)."""


def watched(topology: NodeTopology) -> dict[str, str]:
    """PCI address -> what it is, for every device the agent advertises or grants."""
    found = {gpu.pci_address: f"GPU {gpu.uuid}" for gpu in topology.gpus}
    for interface in topology.interfaces:
        if interface.physfn is None:
            found[interface.pci_address] = f"NIC {interface.name}"
        for vf in interface.vfs:
            if vf.pool is not None:
                found[vf.pci_address] = f"VF {vf.pci_address} of {interface.name}"
    for rdma in topology.rdma_devices:
        found.setdefault(rdma.pci_address, f"RDMA {rdma.name}")
    return found


def kubernetes_node_events(core_api: Any, node_name: str) -> Transition:
    """Each change as an Event on the Node (Warning DeviceUnhealthy, Normal DeviceHealthy), as
    `kubectl describe node` shows them."""

    def post(reason: str, kind: str, message: str) -> None:
        try:
            post_event(core_api, node_name, node_ref(node_name), reason, message, kind)
        except ApiException as exc:
            log.warning("could not record a node event", reason=reason, error=str(exc))

    def report(added: Mapping[str, str], recovered: Mapping[str, str]) -> None:
        for address, why in sorted(added.items()):
            post(
                "DeviceUnhealthy", "Warning", f"device {address} is unhealthy: {why}; it is no longer granted"
            )
        for address, was in sorted(recovered.items()):
            post("DeviceHealthy", "Normal", f"device {address} is healthy again (was: {was})")

    return report


def _operstate(root: Path, name: str) -> str | None:
    try:
        return (root / "sys/class/net" / name / "operstate").read_text().strip()
    except OSError:
        return None


def sysfs_problems(root: Path, topology: NodeTopology) -> dict[str, str]:
    """PCI address -> reason for devices gone from sysfs and for NICs (with their VFs and RDMA
    devices) whose link is down, read under `root` now."""
    problems: dict[str, str] = {}
    devices = root / "sys/bus/pci/devices"
    for address in watched(topology):
        if not (devices / address).exists():
            problems[address] = VANISHED
    for interface in topology.interfaces:
        if interface.physfn is not None or interface.pci_address in problems:
            continue
        state = _operstate(root, interface.name)
        if state not in LINK_DOWN_STATES:
            continue
        reason = f"link {state} on {interface.name}"
        problems[interface.pci_address] = reason
        for vf in interface.vfs:
            problems.setdefault(vf.pci_address, reason)
        for rdma in topology.rdma_devices:
            if rdma.pci_address == interface.pci_address or interface.name in rdma.netdevs:
                problems.setdefault(rdma.pci_address, reason)
    return problems


class HealthMonitor:
    """Keeps the store's unhealthy set current; `check()` is one poll, `start()` polls in a thread
    every `interval_s` (0: only on `mark`). `sysfs` off: only Xid marks count."""

    def __init__(
        self,
        root: Path,
        store: NodeStateStore,
        *,
        interval_s: float = 1.0,
        sysfs: bool = True,
        on_change: Transition | None = None,
    ) -> None:
        self.root = Path(root)
        self.sysfs = sysfs
        self.store = store
        self.interval_s = interval_s
        self.on_change = on_change
        self._xid: dict[str, str] = {}
        self._current = {d.pci_address: d.reason for d in store.current().state.topology.unhealthy}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def unhealthy(self) -> dict[str, str]:
        """PCI address -> reason, as last published."""
        with self._lock:
            return dict(self._current)

    def mark(self, pci_address: str, reason: str) -> None:
        """A GPU hit a critical Xid: unhealthy until the agent restarts. Published at once."""
        with self._lock:
            self._xid.setdefault(pci_address, reason)
        self.check()

    def check(self) -> bool:
        """Judge every advertised device now and publish a change; whether anything changed."""
        with self._lock:
            topology = self.store.current().state.topology
            problems = sysfs_problems(self.root, topology) if self.sysfs else {}
            for address, reason in self._xid.items():
                problems[address] = reason
            if problems == self._current:
                return False
            names = watched(topology)
            added = {a: r for a, r in problems.items() if self._current.get(a) != r}
            # a device re-discovery dropped is no longer advertised at all: not a recovery
            recovered = {a: r for a, r in self._current.items() if a not in problems and a in names}
            self._current = problems
            self.store.set_unhealthy(tuple(DeviceHealth(a, r) for a, r in sorted(problems.items())))
        for address, reason in sorted(added.items()):
            log.warning("device unhealthy", device=names.get(address, address), pci=address, reason=reason)
        for address, reason in sorted(recovered.items()):
            log.info("device healthy again", device=names.get(address, address), pci=address, was=reason)
        if self.on_change is not None:
            try:
                self.on_change(added, recovered)
            except Exception:
                log.exception("reporting a device health change failed")
        return True

    def start(self) -> None:
        self.check()
        if self.interval_s <= 0:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="device-health", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:
                log.exception("device health check failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
