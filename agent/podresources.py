"""What kubelet really assigned, from its PodResources v1 API (unix socket, gRPC), held against ours.

kubelet names pods by namespace/name and lists, per container, the device ids
each device plugin handed out. Three uses:
- the device plugins consider only pending pods kubelet already knows (the one it
  is admitting) and count ids kubelet already gave a pod as served (an Allocate
  whose mark on the pod was lost to a restart is not handed out twice);
- after a restart the agent compares every recorded allocation with kubelet's
  assignment and reports each pod where they differ (an Event on the pod);
- kubelet's own exclusive CPUs (its static CPU manager) overlapping pinned CPUs
  are reported the same way: gedge nodes need `cpuManagerPolicy: none`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc
import structlog

from agent.deviceplugin.pods import PendingPod, PendingPodSource, allocated_annotation
from gedge_model import ANNOTATION, Allocation
from protos.k8s.podresources.v1 import api_pb2, api_pb2_grpc

log = structlog.get_logger(__name__)

DEFAULT_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
GEDGE_PREFIX = "gedge.io/"


class PodResourcesError(RuntimeError):
    """kubelet's PodResources API could not be asked; the message names the socket and the cause."""


@dataclass(frozen=True)
class Assigned:
    """One pod as kubelet sees it: per container, resource -> device ids; and its exclusive CPUs."""

    namespace: str
    name: str
    devices: Mapping[str, Mapping[str, frozenset[str]]] = field(default_factory=dict)
    cpus: frozenset[int] = frozenset()

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def ids(self, resource: str) -> frozenset[str]:
        """Every id of `resource` kubelet gave any container of the pod."""
        return frozenset(i for by_resource in self.devices.values() for i in by_resource.get(resource, ()))

    def resources(self) -> frozenset[str]:
        return frozenset(r for by_resource in self.devices.values() for r in by_resource)


def assigned_from(pod: api_pb2.PodResources) -> Assigned:
    devices: dict[str, dict[str, frozenset[str]]] = {}
    cpus: set[int] = set(pod.cpu_ids)
    for container in pod.containers:
        by_resource: dict[str, set[str]] = {}
        for group in container.devices:
            by_resource.setdefault(group.resource_name, set()).update(group.device_ids)
        devices[container.name] = {r: frozenset(ids) for r, ids in by_resource.items()}
        cpus.update(container.cpu_ids)
    return Assigned(pod.namespace, pod.name, devices, frozenset(cpus))


class PodResourcesClient:
    """kubelet's PodResourcesLister over its unix socket; every call bounded by `timeout_s`."""

    def __init__(self, socket_path: str | Path = DEFAULT_SOCKET, timeout_s: float = 5.0) -> None:
        self.socket_path = str(socket_path)
        self.timeout_s = timeout_s
        self._channel = grpc.insecure_channel(f"unix://{self.socket_path}")
        self._stub = api_pb2_grpc.PodResourcesListerStub(self._channel)

    def available(self) -> bool:
        return Path(self.socket_path).exists()

    def list(self) -> dict[tuple[str, str], Assigned]:
        """(namespace, name) -> Assigned for every pod kubelet runs."""
        try:
            reply = self._stub.List(api_pb2.ListPodResourcesRequest(), timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise PodResourcesError(
                f"kubelet PodResources {self.socket_path}: List: {exc.details()}"
            ) from None
        return {(p.namespace, p.name): assigned_from(p) for p in reply.pod_resources}

    def get(self, namespace: str, name: str) -> Assigned | None:
        """One pod, None when kubelet does not run it."""
        request = api_pb2.GetPodResourcesRequest(pod_name=name, pod_namespace=namespace)
        try:
            reply = self._stub.Get(request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise PodResourcesError(
                f"kubelet PodResources {self.socket_path}: Get {namespace}/{name}: {exc.details()}"
            ) from None
        return assigned_from(reply.pod_resources)

    def close(self) -> None:
        self._channel.close()


@dataclass(frozen=True)
class Mismatch:
    """A pod whose kubelet assignment differs from its recorded allocation; `message` says how."""

    namespace: str
    name: str
    uid: str | None
    message: str


def compare(
    allocations: Iterable[Allocation], assigned: Mapping[tuple[str, str], Assigned]
) -> list[Mismatch]:
    """Every pod where kubelet's gedge.io devices are not the recorded allocation's, or where kubelet
    holds exclusive CPUs that a recorded allocation pins. Pods kubelet does not run are skipped (not
    admitted yet, or gone: the pod list decides)."""
    found: list[Mismatch] = []
    recorded = {(a.namespace, a.name): a for a in allocations}
    pinned_by: dict[int, str] = {c: f"{a.namespace}/{a.name}" for a in recorded.values() for c in a.cpus}
    for key, pod in sorted(assigned.items()):
        allocation = recorded.get(key)
        ours = sorted(r for r in pod.resources() if r.startswith(GEDGE_PREFIX))
        if allocation is None:
            if ours:
                found.append(
                    Mismatch(
                        pod.namespace,
                        pod.name,
                        None,
                        f"kubelet assigned {ours}, the agent knows no {ANNOTATION} for it",
                    )
                )
        else:
            for resource in sorted(set(ours) | {d.resource for d in allocation.devices}):
                theirs = pod.ids(resource)
                granted = frozenset(allocation.device_ids(resource))
                if theirs and not theirs <= granted:
                    found.append(
                        Mismatch(
                            pod.namespace,
                            pod.name,
                            allocation.pod_uid,
                            f"kubelet assigned {resource} {sorted(theirs)}, "
                            f"the allocation grants {sorted(granted)}",
                        )
                    )
        clash = sorted(c for c in pod.cpus if c in pinned_by and pinned_by[c] != pod.ref)
        if clash:
            owners = sorted({pinned_by[c] for c in clash})
            found.append(
                Mismatch(
                    pod.namespace,
                    pod.name,
                    allocation.pod_uid if allocation else None,
                    f"kubelet's CPU manager gave it CPUs {clash} pinned for {owners}: "
                    "set cpuManagerPolicy none",
                )
            )
    return found


class KubeletServedSource:
    """A PendingPodSource narrowed by what kubelet knows.

    kubelet adds a pod to its pod manager (what PodResources lists) before admitting it, and admits
    pods one at a time: a pending pod kubelet does not know yet cannot be the one a device request
    is for. So when kubelet knows any of the pending pods, only those are candidates, and ids kubelet
    already gave a pod count as served. When it knows none (or does not answer), the annotations
    alone decide, as without PodResources."""

    def __init__(self, source: PendingPodSource, client: PodResourcesClient) -> None:
        self.source = source
        self.client = client

    def pending_pods(self) -> Sequence[PendingPod]:
        pods = self.source.pending_pods()
        if not pods or not self.client.available():
            return pods
        known = []
        for pod in pods:
            try:
                assigned = self.client.get(pod.namespace, pod.name)
            except PodResourcesError as exc:
                log.warning("kubelet assignment unknown, annotations decide", pod=pod.ref, error=str(exc))
                return pods
            if assigned is not None:
                known.append(with_served(pod, assigned))
        return known or pods

    def mark_allocated(self, pod: PendingPod, resource: str, device_ids: Sequence[str]) -> None:
        self.source.mark_allocated(pod, resource, device_ids)


def with_served(pod: PendingPod, assigned: Assigned) -> PendingPod:
    """The pod with kubelet's assigned ids merged into its served marks."""
    marks = dict(pod.marks)
    for resource in assigned.resources():
        if not resource.startswith(GEDGE_PREFIX):
            continue
        key = allocated_annotation(resource)
        served = pod.served_ids(resource) | assigned.ids(resource)
        marks[key] = ",".join(sorted(served))
    return replace(pod, marks=marks)


class KubeletReconciler:
    """After the applier's reconcile (every pod-list round), hold what it records against kubelet's
    assignment; each difference is logged and reported once on its pod."""

    def __init__(
        self,
        client: PodResourcesClient,
        recorded: Callable[[], Iterable[Allocation]],
        report: Callable[[Mismatch], object],
    ) -> None:
        self.client = client
        self.recorded = recorded
        self.report = report
        self._reported: set[tuple[str, str, str]] = set()

    def check(self) -> list[Mismatch]:
        """The new mismatches (reported now); none when kubelet's socket is absent or unanswering."""
        if not self.client.available():
            return []
        try:
            assigned = self.client.list()
        except PodResourcesError as exc:
            log.warning("kubelet assignment not checked", error=str(exc))
            return []
        found = compare(self.recorded(), assigned)
        fresh = [m for m in found if (m.namespace, m.name, m.message) not in self._reported]
        for mismatch in fresh:
            self._reported.add((mismatch.namespace, mismatch.name, mismatch.message))
            log.error(
                "kubelet assignment differs",
                pod=f"{mismatch.namespace}/{mismatch.name}",
                error=mismatch.message,
            )
            self.report(mismatch)
        return fresh
