"""Which pod a kubelet device request is for, decided from the pods' `gedge.io/allocation`.

kubelet's GetPreferredAllocation and Allocate do not name the pod, and kubelet
calls them once per container. The pods bound to this node that kubelet has
not started carry the extender's choice; a request is served only when its
device ids lie in exactly one pod's grant and its size is what one of that
pod's containers asks for (for grants naming a container: exactly that
container's ids). Everything here is pure except the PendingPodSource.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from gedge_model import ANNOTATION, Allocation, ModelDecodeError
from gedge_model.allocation import pod_allocation

ALLOCATED_PREFIX = "gedge.io/allocated-"


def allocated_annotation(resource: str) -> str:
    """The annotation a plugin sets on a pod once kubelet's Allocate for `resource` was served."""
    return ALLOCATED_PREFIX + resource.removeprefix("gedge.io/").replace("+", "_")


@dataclass(frozen=True)
class PendingPod:
    """A pod bound to this node that kubelet has not started, as the device plugins need it."""

    uid: str
    namespace: str
    name: str
    annotation: str | None
    created: float = 0.0
    """Creation time (epoch seconds): kubelet admits pods in this order."""
    marks: Mapping[str, str] = field(default_factory=dict)
    """allocated_annotation(resource) -> device ids already served, comma-separated."""
    requests: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    """resource -> how many devices each (init or app) container asks for; empty when unknown."""

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def served_ids(self, resource: str) -> frozenset[str]:
        text = self.marks.get(allocated_annotation(resource), "")
        return frozenset(i for i in text.split(",") if i)


class PendingPodSource(Protocol):
    def pending_pods(self) -> Sequence[PendingPod]:
        """Pods bound to this node, not yet running, carrying gedge.io/allocation."""

    def mark_allocated(self, pod: PendingPod, resource: str, device_ids: Sequence[str]) -> None:
        """Record on the pod that Allocate for `resource` handed out `device_ids`."""


class ResolveError(RuntimeError):
    """No single pod owns the requested devices; the message says what was asked and what exists."""


@dataclass(frozen=True)
class Claim:
    """One pod's grant of one resource: a named container's ids, or the pod's ids for all its containers."""

    pod: PendingPod
    allocation: Allocation
    container: str | None
    device_ids: frozenset[str]
    sizes: frozenset[int]
    """How many of these ids one kubelet request may name."""

    def fits(self, ids: frozenset[str]) -> bool:
        return bool(ids) and ids <= self.device_ids and len(ids) in self.sizes

    @property
    def ref(self) -> str:
        return f"{self.pod.ref}/{self.container}" if self.container else self.pod.ref


@dataclass(frozen=True)
class Candidates:
    claims: tuple[Claim, ...]
    invalid: tuple[tuple[PendingPod, str], ...]
    """Pods whose annotation cannot be used, with why."""

    def describe(self, resource: str) -> str:
        parts = [f"{c.ref} has {sorted(c.device_ids)}" for c in self.claims]
        text = "; ".join(parts) if parts else f"no pending pod on this node holds {resource} devices"
        if self.invalid:
            text += (
                "; pods with an unusable "
                + ANNOTATION
                + ": "
                + "; ".join(f"{pod.ref}: {why}" for pod, why in self.invalid)
            )
        return text


def validated(pod: PendingPod, node_name: str) -> Allocation:
    """The pod's allocation, checked to be for this pod on this node; ModelDecodeError otherwise."""
    return pod_allocation(pod.annotation, pod=pod.ref, pod_uid=pod.uid, node=node_name)


def candidates(pods: Sequence[PendingPod], resource: str, node_name: str) -> Candidates:
    """Every grant of `resource` in the pods (oldest first), plus the pods whose annotation is unusable."""
    claims: list[Claim] = []
    invalid: list[tuple[PendingPod, str]] = []
    for pod in sorted(pods, key=lambda p: (p.created, p.ref)):
        try:
            allocation = validated(pod, node_name)
        except ModelDecodeError as exc:
            invalid.append((pod, str(exc)))
            continue
        groups: dict[str | None, set[str]] = {}
        for grant in allocation.devices:
            if grant.resource == resource:
                groups.setdefault(grant.container, set()).add(grant.id)
        for container, ids in groups.items():
            asked = pod.requests.get(resource, ())
            sizes = {len(ids)} if container is not None or not asked else set(asked)
            claims.append(Claim(pod, allocation, container, frozenset(ids), frozenset(sizes)))
    return Candidates(tuple(claims), tuple(invalid))


def preferred(
    found: Candidates,
    resource: str,
    available: Sequence[str],
    must_include: Sequence[str],
    size: int,
) -> tuple[Claim, tuple[str, ...]]:
    """The grant kubelet should pick from for a container asking `size` devices, and the ids to pick.

    Only ids of the grant that are not yet served and still available to kubelet,
    plus `must_include`, qualify. When pods that kubelet has not admitted yet tie, the
    oldest wins: kubelet admits pods in creation order.
    """
    free = frozenset(available)
    must = frozenset(must_include)
    for claim in found.claims:
        if size not in claim.sizes or not must <= claim.device_ids:
            continue
        # Ids kubelet says must be included (an init container's, reused) count even when served.
        pickable = ((claim.device_ids - claim.pod.served_ids(resource)) & free) | must
        if len(pickable) < size:
            continue
        ids = tuple(sorted(must)) + tuple(sorted(pickable - must))[: size - len(must)]
        return claim, ids
    raise ResolveError(
        f"no pending pod's {ANNOTATION} fits a request for {size} {resource} device(s) "
        f"out of {sorted(free)} (must include {sorted(must)}): {found.describe(resource)}"
    )


def owner(found: Candidates, resource: str, requested: Sequence[str]) -> Claim:
    """The one grant that `requested` fits; ResolveError if none or several."""
    wanted = frozenset(requested)
    if len(wanted) != len(requested):
        raise ResolveError(f"Allocate for {resource} names a device twice: {list(requested)}")
    fitting = [c for c in found.claims if c.fits(wanted)]
    if len(fitting) == 1:
        return fitting[0]
    if len(fitting) > 1:
        raise ResolveError(
            f"{resource} devices {sorted(wanted)} are granted to several pods: "
            + ", ".join(c.ref for c in fitting)
        )
    raise ResolveError(
        f"no pending pod's {ANNOTATION} grants {sorted(wanted)} of {resource} to one container: "
        f"{found.describe(resource)}"
    )
