"""The ApplyManager's PodResolver under Kubernetes: what the pod watch last saw of each pod.

QoS tier and container ids come from the pod status; the network namespace is
found through a container's cgroup: its first process's /proc/<pid>/ns/net,
given as the CNI entry under /var/run/netns with the same inode when there is
one (stable across container restarts), else as the /proc path itself.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from agent.apply.cgroups import CgroupDriver, CgroupError, QosClass, container_cgroup
from agent.apply.manager import PodRuntime
from agent.podwatch.pods import PodView
from gedge_model import Allocation, ModelDecodeError

log = logging.getLogger(__name__)

NETNS_RUN_DIR = Path("/var/run/netns")


class PodStatusResolver:
    """pod uid -> PodRuntime from the latest PodView; the PodWatcher feeds it before every apply."""

    def __init__(
        self,
        cgroup_root: Path,
        driver: CgroupDriver,
        *,
        proc_root: Path = Path("/proc"),
        netns_dir: Path = NETNS_RUN_DIR,
    ) -> None:
        self.cgroup_root = Path(cgroup_root)
        self.driver = driver
        self.proc_root = Path(proc_root)
        self.netns_dir = Path(netns_dir)
        self._pods: dict[str, PodView] = {}
        self._lock = threading.Lock()

    def observe(self, pod: PodView) -> None:
        with self._lock:
            self._pods[pod.uid] = pod

    def forget(self, pod_uid: str) -> None:
        with self._lock:
            self._pods.pop(pod_uid, None)

    def allocations(self) -> tuple[Allocation, ...]:
        """The valid `gedge.io/allocation` of every pod seen on this node (malformed ones left out)."""
        with self._lock:
            pods = list(self._pods.values())
        found = []
        for pod in pods:
            if not pod.annotation or pod.finished:
                continue
            try:
                found.append(Allocation.from_annotation(pod.annotation))
            except (ModelDecodeError, ValueError):
                continue
        return tuple(found)

    def resolve(self, pod_uid: str) -> PodRuntime | None:
        with self._lock:
            pod = self._pods.get(pod_uid)
        if pod is None or pod.finished or pod.qos_class not in {q.value for q in QosClass}:
            return None
        qos = QosClass(pod.qos_class)
        return PodRuntime(qos=qos, container_ids=pod.container_ids, netns=self.netns_of(pod, qos))

    def netns_of(self, pod: PodView, qos: QosClass) -> str | None:
        for container_id in pod.container_ids:
            try:
                procs = (
                    container_cgroup(self.cgroup_root, self.driver, qos, pod.uid, container_id)
                    / "cgroup.procs"
                )
                pids = procs.read_text().split()
            except (CgroupError, OSError, ValueError) as exc:
                log.debug("no netns from container %s of %s: %s", container_id, pod.ref, exc)
                continue
            for pid in pids:
                path = self.proc_root / pid / "ns" / "net"
                try:
                    st = path.stat()
                except OSError:
                    continue
                return self._named(st) or str(path)
        return None

    def _named(self, st: os.stat_result) -> str | None:
        try:
            entries = sorted(self.netns_dir.iterdir())
        except OSError:
            return None
        for entry in entries:
            try:
                other = entry.stat()
            except OSError:
                continue
            if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
                return str(entry)
        return None
