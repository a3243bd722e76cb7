"""What the NRI plugin asks of the runtime: pinned containers on their CPUs at creation, the rest off them.

A container of a pod whose `gedge.io/allocation` names CPUs is created with
exactly those CPUs (and the allocation's NUMA nodes as memory nodes) and with
NVIDIA_VISIBLE_DEVICES naming its GPUs; every other container gets the shared
pool: the node's online CPUs less every pinned CPU (reserved CPUs stay in it).
Containers that already run are moved with container updates when a pinned pod
arrives, and widened again when it goes.

Pods are known from the runtime (Synchronize, RunPodSandbox, CreateContainer);
CPUs recorded by the agent's applier (the pod-watch path) count as pinned too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import structlog

from gedge_model import ANNOTATION, Allocation, ModelDecodeError
from gedge_model.allocation import RESOURCE_GPU, RESOURCE_GPU_SHARED, RESOURCE_MIG_PREFIX
from gedge_model.cpulist import CpulistError, format_cpulist, parse_cpulist
from protos.nri.v1alpha1 import api_pb2

log = structlog.get_logger(__name__)

NVIDIA_VISIBLE_DEVICES = "NVIDIA_VISIBLE_DEVICES"
SUBSCRIBED = (
    api_pb2.RUN_POD_SANDBOX,
    api_pb2.REMOVE_POD_SANDBOX,
    api_pb2.CREATE_CONTAINER,
    api_pb2.REMOVE_CONTAINER,
)


class NriRefusal(RuntimeError):
    """A container this node must not create as asked; the message names the pod and the fault."""


def event_mask(events: Iterable[int]) -> int:
    """NRI's subscription bits: event e is bit e-1."""
    mask = 0
    for event in events:
        mask |= 1 << (event - 1)
    return mask


@dataclass(frozen=True)
class PodInfo:
    sandbox_id: str
    uid: str
    namespace: str
    name: str
    allocation: Allocation | None
    fault: str | None = None
    """Why the pod's allocation cannot be honoured (bad annotation, another node, another pod's uid)."""
    accepted: bool = False
    """Its CPUs passed the checks (a container was created on them, or it ran at synchronization):
    only accepted pods hold CPUs."""

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def cpus(self) -> frozenset[int]:
        """The CPUs the allocation names (held only once accepted)."""
        return frozenset(self.allocation.cpus) if self.allocation is not None else frozenset()

    @property
    def held(self) -> frozenset[int]:
        return self.cpus if self.accepted else frozenset()


def gpu_visible(allocation: Allocation, container: str) -> str | None:
    """NVIDIA_VISIBLE_DEVICES for one container: its GPU, MIG and time-slice grants' GPUs, in order."""
    ids: list[str] = []
    for grant in allocation.devices:
        if grant.container not in (None, container):
            continue
        if grant.resource == RESOURCE_GPU or grant.resource.startswith(RESOURCE_MIG_PREFIX):
            ids.append(grant.id)
        elif grant.resource == RESOURCE_GPU_SHARED:
            ids.append(grant.id.split("::", 1)[0])
    return ",".join(dict.fromkeys(ids)) if ids else None


class NriCpusets:
    """The plugin's decisions; one instance per agent, fed by every NRI session in turn."""

    def __init__(
        self,
        node_name: str,
        online_cpus: Callable[[], frozenset[int]],
        *,
        reserved_cpus: frozenset[int] = frozenset(),
        recorded: Callable[[], Iterable[Allocation]] = tuple,
    ) -> None:
        self.node_name = node_name
        self.online_cpus = online_cpus
        self.reserved_cpus = reserved_cpus
        self.recorded = recorded
        self._lock = threading.Lock()
        self._pods: dict[str, PodInfo] = {}
        self._containers: dict[str, tuple[str, str, str]] = {}
        """container id -> (sandbox id, name, cpuset it was last given or reported with)."""
        self._sync_pods: list[api_pb2.PodSandbox] = []
        self._sync_containers: list[api_pb2.Container] = []
        self._resend: list[api_pb2.ContainerUpdate] = []

    # -- what the runtime tells ------------------------------------------------------------------

    def configure(self, request: api_pb2.ConfigureRequest) -> api_pb2.ConfigureResponse:
        log.info("nri configured", runtime=request.runtime_name, version=request.runtime_version)
        return api_pb2.ConfigureResponse(events=event_mask(SUBSCRIBED))

    def synchronize(self, request: api_pb2.SynchronizeRequest) -> api_pb2.SynchronizeResponse:
        """Learn every pod and container; the last part of a split request gets the updates."""
        with self._lock:
            self._sync_pods += request.pods
            self._sync_containers += request.containers
            if request.more:
                return api_pb2.SynchronizeResponse(more=True)
            pods, containers = self._sync_pods, self._sync_containers
            self._sync_pods, self._sync_containers = [], []
            self._pods = {}
            for sandbox in pods:
                info = self._pod_info(sandbox)
                if info.cpus and info.fault is None:
                    try:
                        self._check_pinned(info)
                        info = replace(info, accepted=True)
                    except NriRefusal as exc:
                        log.warning("nri running pod not pinned", reason=str(exc))
                self._pods[sandbox.id] = info
            self._containers = {
                c.id: (c.pod_sandbox_id, c.name, c.linux.resources.cpu.cpus)
                for c in containers
                if c.state in (api_pb2.CONTAINER_CREATED, api_pb2.CONTAINER_RUNNING, api_pb2.CONTAINER_PAUSED)
            }
            updates = self._updates(exclude=None)
            # containerd 2.4 records updates answered to Synchronize in the spec but leaves running
            # containers' cgroups as they were: they are sent again, unsolicited, right after
            self._resend = list(updates)
        log.info("nri synchronized", pods=len(pods), containers=len(containers), updates=len(updates))
        return api_pb2.SynchronizeResponse(update=updates)

    def run_pod_sandbox(self, request: api_pb2.RunPodSandboxRequest) -> api_pb2.RunPodSandboxResponse:
        with self._lock:
            self._pods[request.pod.id] = self._pod_info(request.pod)
        return api_pb2.RunPodSandboxResponse()

    def create_container(self, request: api_pb2.CreateContainerRequest) -> api_pb2.CreateContainerResponse:
        """Pinned pod: its CPUs (NriRefusal when they cannot be its own). Others: the shared pool."""
        pod, container = request.pod, request.container
        with self._lock:
            info = self._pods.get(pod.id) or self._pod_info(pod)
            adjust = api_pb2.ContainerAdjustment()
            if info.fault is not None:
                raise NriRefusal(f"pod {info.ref}: {info.fault}")
            if info.cpus:
                if not info.accepted:
                    self._check_pinned(info)
                    info = replace(info, accepted=True)
                cpus = format_cpulist(info.cpus)
                adjust.linux.resources.cpu.cpus = cpus
                assert info.allocation is not None
                if info.allocation.numa_nodes:
                    adjust.linux.resources.cpu.mems = format_cpulist(info.allocation.numa_nodes)
            else:
                cpus = format_cpulist(self._shared())
                adjust.linux.resources.cpu.cpus = cpus
            self._pods[pod.id] = info
            if info.allocation is not None:
                visible = gpu_visible(info.allocation, container.name)
                if visible is not None:
                    adjust.env.append(api_pb2.KeyValue(key=NVIDIA_VISIBLE_DEVICES, value=visible))
            self._containers[container.id] = (pod.id, container.name, cpus)
            updates = self._updates(exclude=container.id) if info.cpus else []
        if info.cpus:
            log.info(
                "nri pinned container", pod=info.ref, container=container.name, cpus=cpus, moved=len(updates)
            )
        return api_pb2.CreateContainerResponse(adjust=adjust, update=updates)

    def remove_container(self, request: api_pb2.RemoveContainerRequest) -> api_pb2.RemoveContainerResponse:
        with self._lock:
            self._containers.pop(request.container.id, None)
        return api_pb2.RemoveContainerResponse()

    def remove_pod_sandbox(
        self, request: api_pb2.RemovePodSandboxRequest
    ) -> api_pb2.RemovePodSandboxResponse:
        with self._lock:
            self._pods.pop(request.pod.id, None)
            for cid in [c for c, (sandbox, _, _) in self._containers.items() if sandbox == request.pod.id]:
                del self._containers[cid]
        return api_pb2.RemovePodSandboxResponse()

    def pinned_pods(self) -> dict[str, frozenset[int]]:
        """Pod uid -> CPUs of every pinned pod the runtime runs (what the cgroup applier must keep)."""
        with self._lock:
            return {p.uid: p.held for p in self._pods.values() if p.held}

    def pending_updates(self) -> list[api_pb2.ContainerUpdate]:
        """Updates that bring running containers to their cpuset now (after a pinned pod went); the
        caller sends them unsolicited, outside any request the runtime waits on."""
        with self._lock:
            resend, self._resend = self._resend, []
            fresh = self._updates(exclude=None)
        again = {u.container_id for u in fresh}
        return [u for u in resend if u.container_id not in again] + fresh

    # -- decisions --------------------------------------------------------------------------------

    def _pod_info(self, pod: api_pb2.PodSandbox) -> PodInfo:
        text = pod.annotations.get(ANNOTATION)
        if not text:
            return PodInfo(pod.id, pod.uid, pod.namespace, pod.name, None)
        try:
            allocation = Allocation.from_annotation(text)
        except (ModelDecodeError, ValueError) as exc:
            return PodInfo(pod.id, pod.uid, pod.namespace, pod.name, None, f"bad {ANNOTATION}: {exc}")
        fault = None
        if allocation.node != self.node_name:
            fault = f"{ANNOTATION} is for node {allocation.node!r}, this is {self.node_name!r}"
        elif allocation.pod_uid != pod.uid:
            fault = f"{ANNOTATION} names pod uid {allocation.pod_uid}, the pod is {pod.uid}"
        if fault is not None:
            return PodInfo(pod.id, pod.uid, pod.namespace, pod.name, None, fault)
        return PodInfo(pod.id, pod.uid, pod.namespace, pod.name, allocation)

    def _check_pinned(self, info: PodInfo) -> None:
        online = self.online_cpus()
        cpus = info.cpus
        offline = cpus - online
        if offline:
            raise NriRefusal(f"pod {info.ref}: cpus {format_cpulist(offline)} are not online on this node")
        reserved = cpus & self.reserved_cpus
        if reserved:
            raise NriRefusal(f"pod {info.ref}: cpus {format_cpulist(reserved)} are reserved for the system")
        taken = cpus & self._exclusive(skip_uid=info.uid)
        if taken:
            raise NriRefusal(f"pod {info.ref}: cpus {format_cpulist(taken)} are exclusive to another pod")

    def _exclusive(self, skip_uid: str | None = None) -> frozenset[int]:
        held: set[int] = set()
        for pod in self._pods.values():
            if pod.uid != skip_uid:
                held |= pod.held
        for allocation in self.recorded():
            if allocation.pod_uid != skip_uid and allocation.node == self.node_name:
                held.update(allocation.cpus)
        return frozenset(held)

    def _shared(self) -> frozenset[int]:
        return self.online_cpus() - self._exclusive()

    def _updates(self, exclude: str | None) -> list[api_pb2.ContainerUpdate]:
        """Every known container whose cpuset is not its target: pinned ones their CPUs, others the pool."""
        shared = self._shared()
        online = self.online_cpus()
        updates = []
        for cid, (sandbox, name, have) in sorted(self._containers.items()):
            if cid == exclude:
                continue
            pod = self._pods.get(sandbox)
            target = pod.held if pod is not None and pod.held else shared
            try:
                current = parse_cpulist(have) if have else online
            except CpulistError:
                current = None
            if current == target:
                continue
            text = format_cpulist(target)
            update = api_pb2.ContainerUpdate(container_id=cid, ignore_failure=True)
            update.linux.resources.cpu.cpus = text
            updates.append(update)
            self._containers[cid] = (sandbox, name, text)
        return updates
