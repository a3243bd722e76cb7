"""Pod watch test bed: real kubernetes.client pod objects and a recording AllocationApplier."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from kubernetes import client as k8s

from agent.apply.contract import ApplyError
from gedge_model import ANNOTATION, Allocation

NODE = "edge-1"


def allocation(uid: str, name: str = "trainer", cpus: Sequence[int] = (2, 3), node: str = NODE) -> Allocation:
    return Allocation(pod_uid=uid, namespace="ml", name=name, node=node, cpus=tuple(cpus))


def pod(
    uid: str,
    name: str = "trainer",
    *,
    annotation: str | None = None,
    alloc: Allocation | None = None,
    phase: str = "Pending",
    containers: int = 1,
    started: int = 0,
    node: str | None = NODE,
    deleting: bool = False,
    qos: str | None = None,
    container_ids: Sequence[str] = (),
    scheduler: str = "gedge-scheduler",
    requests: dict[str, str] | None = None,
) -> k8s.V1Pod:
    """A pod as the API server returns it; `started` of its `containers` have runtime ids.

    By default it matches its grant as the extender made it (gedge-scheduler, Guaranteed with as
    many CPUs as granted, in its first container); `qos`, `scheduler`, `requests` say otherwise."""
    ids = list(container_ids) or [f"containerd://{uid}-{i}" for i in range(started)]
    grant = alloc or allocation(uid, name)
    text = annotation if annotation is not None else grant.to_annotation()
    if requests is None:
        requests = {"cpu": str(len(grant.cpus))} if grant.cpus else {}
        for device in grant.devices:
            requests[device.resource] = str(int(requests.get(device.resource, "0")) + 1)
    if qos is None:
        qos = "Guaranteed" if grant.cpus else "Burstable"
    resources = [k8s.V1ResourceRequirements(requests=requests, limits=requests)] + [
        k8s.V1ResourceRequirements()
    ] * (containers - 1)
    statuses = [
        k8s.V1ContainerStatus(
            name=f"c{i}",
            image="registry.k8s.io/pause:3.10",
            image_id="",
            ready=True,
            restart_count=0,
            container_id=ids[i] if i < len(ids) else None,
        )
        for i in range(containers)
    ]
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(
            name=name,
            namespace="ml",
            uid=uid,
            annotations={ANNOTATION: text} if text else {},
            deletion_timestamp=datetime.datetime.now(datetime.UTC) if deleting else None,
        ),
        spec=k8s.V1PodSpec(
            node_name=node,
            scheduler_name=scheduler,
            containers=[k8s.V1Container(name=f"c{i}", resources=resources[i]) for i in range(containers)],
        ),
        status=k8s.V1PodStatus(phase=phase, container_statuses=statuses, qos_class=qos),
    )


@dataclass
class RecordingApplier:
    """An AllocationApplier that keeps what it was asked in memory (the real one writes cgroups and links)."""

    held: dict[str, Allocation] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    failing: set[str] = field(default_factory=set)

    def apply(self, allocation: Allocation) -> None:
        self.calls.append(("apply", allocation.pod_uid))
        if allocation.pod_uid in self.failing:
            raise ApplyError(f"pod {allocation.namespace}/{allocation.name}: cpuset.cpus refused")
        self.held[allocation.pod_uid] = allocation

    def release(self, pod_uid: str) -> None:
        self.calls.append(("release", pod_uid))
        self.held.pop(pod_uid, None)

    def applied(self) -> tuple[Allocation, ...]:
        return tuple(self.held.values())


@pytest.fixture
def applier() -> RecordingApplier:
    return RecordingApplier()
