"""A pod as the agent's pod watch needs it, read from a kubernetes.client.V1Pod."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
    )
