"""A pod as the agent's pod watch needs it, read from a kubernetes.client.V1Pod."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from kubernetes.utils import parse_quantity

from gedge_model import ANNOTATION

FINISHED_PHASES = ("Succeeded", "Failed")


@dataclass(frozen=True)
class PodView:
    uid: str
    namespace: str
    name: str
    node_name: str | None
    phase: str | None
    deleting: bool
    """metadata.deletionTimestamp is set: the pod is shutting down."""
    annotation: str | None
    containers: int
    """How many app containers the spec has."""
    container_ids: tuple[str, ...] = ()
    """Runtime ids of the app containers that exist now, in spec order."""
    qos_class: str | None = None
    """status.qosClass: Guaranteed, Burstable or BestEffort (it places the pod's cgroup)."""
    scheduler_name: str | None = None
    """spec.schedulerName; the API server defaults it to default-scheduler."""
    requests: tuple[tuple[str, Decimal], ...] = ()
    """cpu and gedge.io/* totals as kube-scheduler counts them (apps + sidecars, init peak), sorted."""

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def finished(self) -> bool:
        return self.phase in FINISHED_PHASES

    @property
    def containers_exist(self) -> bool:
        return self.containers > 0 and len(self.container_ids) == self.containers


def pod_view(pod: Any) -> PodView:
    meta = pod.metadata
    spec = pod.spec
    status = pod.status
    ids: list[str] = []
    if status is not None:
        for container in status.container_statuses or ():
            if container.container_id:
                ids.append(container.container_id)
    return PodView(
        uid=meta.uid or "",
        namespace=meta.namespace or "",
        name=meta.name or "",
        node_name=spec.node_name if spec is not None else None,
        phase=status.phase if status is not None else None,
        deleting=meta.deletion_timestamp is not None,
        annotation=(meta.annotations or {}).get(ANNOTATION),
        containers=len(spec.containers or ()) if spec is not None else 0,
        container_ids=tuple(ids),
        qos_class=status.qos_class if status is not None else None,
        scheduler_name=spec.scheduler_name if spec is not None else None,
        requests=pod_requests(spec) if spec is not None else (),
    )


def _container_requests(container: Any) -> dict[str, Decimal]:
    """cpu and gedge.io/* requests, limits standing in where a request is absent; bad quantities count 0."""
    resources = container.resources
    out: dict[str, Decimal] = {}
    for source in (resources.limits if resources else None, resources.requests if resources else None):
        for name, value in (source or {}).items():
            if name != "cpu" and not name.startswith("gedge.io/"):
                continue
            try:
                out[name] = parse_quantity(value)
            except (ValueError, TypeError, ArithmeticError):
                out[name] = Decimal(0)
    return out


def pod_requests(spec: Any) -> tuple[tuple[str, Decimal], ...]:
    """max(app containers + restartable init containers, each init container's peak), per resource."""
    totals: dict[str, Decimal] = {}
    sidecars: dict[str, Decimal] = {}
    init_peak: dict[str, Decimal] = {}
    for container in spec.containers or ():
        for name, amount in _container_requests(container).items():
            totals[name] = totals.get(name, Decimal(0)) + amount
    for container in spec.init_containers or ():
        requests = _container_requests(container)
        if container.restart_policy == "Always":
            for name, amount in requests.items():
                totals[name] = totals.get(name, Decimal(0)) + amount
                sidecars[name] = sidecars.get(name, Decimal(0)) + amount
            peak = sidecars
        else:
            peak = dict(requests)
            for name, amount in sidecars.items():
                peak[name] = peak.get(name, Decimal(0)) + amount
        for name, amount in peak.items():
            init_peak[name] = max(init_peak.get(name, Decimal(0)), amount)
    for name, amount in init_peak.items():
        totals[name] = max(totals.get(name, Decimal(0)), amount)
    return tuple(sorted(totals.items()))
