"""What the pod watch does for each pod event: pure decisions over what is applied now.

The watch loop turns every Kubernetes event into `decide(...)` and runs the
actions it returns against the AllocationApplier; the same function serves the
start-up reconcile over the full pod list.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from agent.podwatch.grant import DEFAULT_GRANTING_SCHEDULERS, grant_mismatch
from agent.podwatch.pods import PodView
from gedge_model import ANNOTATION, Allocation, ModelDecodeError
from gedge_model.allocation import pod_allocation

ADDED = "ADDED"
MODIFIED = "MODIFIED"
DELETED = "DELETED"


@dataclass(frozen=True)
class Applied:
    """What the watch last applied for a pod, and for which containers."""

    allocation: Allocation
    container_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Apply:
    pod: str
    allocation: Allocation
    container_ids: tuple[str, ...]


@dataclass(frozen=True)
class Release:
    pod: str
    pod_uid: str
    reason: str


@dataclass(frozen=True)
class Reject:
    """The pod's allocation cannot be used; the message names the pod and the fault."""

    pod: PodView
    message: str
    reason: str = "InvalidAllocation"
    """The Event reason: InvalidAllocation (unreadable, other pod or node) or GrantMismatch."""


Action = Apply | Release | Reject


def allocation_of(pod: PodView, node_name: str) -> Allocation:
    """The pod's allocation, validated to be for this pod on this node; ModelDecodeError otherwise."""
    return pod_allocation(pod.annotation, pod=pod.ref, pod_uid=pod.uid, node=node_name)


def decide(
    event: str,
    pod: PodView,
    node_name: str,
    applied: Mapping[str, Applied],
    schedulers: Iterable[str] = DEFAULT_GRANTING_SCHEDULERS,
) -> list[Action]:
    """Actions for one watch event on one pod, given what is applied now.

    A grant that does not fit the pod (`grant_mismatch`: scheduler, QoS, CPU and
    device counts) is rejected and nothing of it is applied."""
    held = applied.get(pod.uid)
    if event == DELETED or pod.node_name != node_name:
        reason = "pod deleted" if event == DELETED else "pod is not on this node"
        return [Release(pod.ref, pod.uid, reason)] if held else []
    if pod.finished:
        return [Release(pod.ref, pod.uid, f"pod {pod.phase}")] if held else []
    if pod.annotation is None:
        return [Release(pod.ref, pod.uid, f"{ANNOTATION} removed")] if held else []
    if pod.deleting:
        return []
    try:
        allocation = allocation_of(pod, node_name)
    except ModelDecodeError as exc:
        return [Reject(pod, str(exc))]
    mismatch = grant_mismatch(pod, allocation, schedulers)
    if mismatch is not None:
        return [Reject(pod, mismatch, "GrantMismatch")]
    if not pod.containers_exist:
        return []
    if held == Applied(allocation, pod.container_ids):
        return []
    return [Apply(pod.ref, allocation, pod.container_ids)]


def reconcile(
    pods: Sequence[PodView],
    node_name: str,
    applied: Mapping[str, Applied],
    schedulers: Iterable[str] = DEFAULT_GRANTING_SCHEDULERS,
) -> list[Action]:
    """Actions that bring what is applied in line with a full list of this node's pods."""
    actions: list[Action] = []
    for pod in pods:
        actions += decide(MODIFIED, pod, node_name, applied, schedulers)
    present = {p.uid for p in pods if p.node_name == node_name}
    for uid, held in applied.items():
        if uid not in present:
            actions.append(Release(f"{held.allocation.namespace}/{held.allocation.name}", uid, "pod gone"))
    return actions
