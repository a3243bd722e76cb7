"""PendingPodSource on the Kubernetes API: this node's Pending pods and their allocation marks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agent.deviceplugin.pods import ALLOCATED_PREFIX, PendingPod, allocated_annotation
from gedge_model import ANNOTATION

MERGE_PATCH = "application/merge-patch+json"


def container_requests(pod: Any) -> dict[str, tuple[int, ...]]:
    """gedge.io resource -> the count each init and app container asks for (limits, as kubelet reads them)."""
    spec = pod.spec
    counts: dict[str, list[int]] = {}
    if spec is None:
        return {}
    for container in (*(spec.init_containers or ()), *(spec.containers or ())):
        resources = container.resources
        wanted = dict((resources.limits or resources.requests or {}) if resources is not None else {})
        for resource, quantity in wanted.items():
            if not resource.startswith("gedge.io/"):
                continue
            try:
                count = int(str(quantity))
            except ValueError:
                continue
            if count > 0:
                counts.setdefault(resource, []).append(count)
    return {resource: tuple(values) for resource, values in counts.items()}


def pending_pod_from_k8s(pod: Any) -> PendingPod:
    """A kubernetes.client.V1Pod as the device plugins see it."""
    meta = pod.metadata
    annotations = dict(meta.annotations or {})
    created = meta.creation_timestamp.timestamp() if meta.creation_timestamp is not None else 0.0
    return PendingPod(
        uid=meta.uid or "",
        namespace=meta.namespace or "",
        name=meta.name or "",
        annotation=annotations.get(ANNOTATION),
        created=created,
        marks={k: v for k, v in annotations.items() if k.startswith(ALLOCATED_PREFIX)},
        requests=container_requests(pod),
    )


class KubernetesPendingPodSource:
    """Lists Pending pods with spec.nodeName == node through the API; marks them by merge patch."""

    def __init__(self, core_api: Any, node_name: str, request_timeout_s: float = 5.0) -> None:
        self._core = core_api
        self._node_name = node_name
        self._timeout = request_timeout_s

    def pending_pods(self) -> Sequence[PendingPod]:
        listed = self._core.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={self._node_name},status.phase=Pending",
            _request_timeout=self._timeout,
        )
        pods = [pending_pod_from_k8s(p) for p in listed.items]
        return [p for p in pods if p.annotation is not None]

    def mark_allocated(self, pod: PendingPod, resource: str, device_ids: Sequence[str]) -> None:
        body = {"metadata": {"annotations": {allocated_annotation(resource): ",".join(device_ids)}}}
        self._core.patch_namespaced_pod(
            pod.name, pod.namespace, body, _content_type=MERGE_PATCH, _request_timeout=self._timeout
        )
