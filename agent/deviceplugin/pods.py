"""Which pod a kubelet device request is for, decided from the pods' `gedge.io/allocation`.

kubelet's GetPreferredAllocation and Allocate do not name the pod. The pods
bound to this node that kubelet has not admitted yet carry the extender's
choice; a request is served only when its device ids are exactly one
container's grant of one such pod. Everything here is pure except the
PendingPodSource the plugins are given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from gedge_model import ANNOTATION, Allocation, ModelDecodeError

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
    """One container's grant of one resource in one pod's allocation."""

    pod: PendingPod
    allocation: Allocation
    container: str | None
    device_ids: frozenset[str]


@dataclass(frozen=True)
class Candidates:
    claims: tuple[Claim, ...]
    invalid: tuple[tuple[PendingPod, str], ...]
    """Pods whose annotation cannot be used, with why."""

    def describe(self, resource: str) -> str:
        parts = [
            f"{c.pod.ref}{'/' + c.container if c.container else ''} has {sorted(c.device_ids)}"
            for c in self.claims
        ]
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
    if pod.annotation is None:
        raise ModelDecodeError(f"pod {pod.ref} has no {ANNOTATION} annotation")
    allocation = Allocation.from_annotation(pod.annotation)
    if allocation.node != node_name:
        raise ModelDecodeError(
            f"{ANNOTATION} of {pod.ref} is for node {allocation.node!r}, not {node_name!r}"
        )
    if allocation.pod_uid != pod.uid:
        raise ModelDecodeError(
            f"{ANNOTATION} of {pod.ref} is for pod uid {allocation.pod_uid}, not {pod.uid}"
        )
    return allocation


def candidates(pods: Sequence[PendingPod], resource: str, node_name: str) -> Candidates:
    """Every container grant of `resource` among the pods, plus the pods whose annotation is unusable."""
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
        claims += [Claim(pod, allocation, name, frozenset(ids)) for name, ids in groups.items()]
    return Candidates(tuple(claims), tuple(invalid))


def preferred(
    found: Candidates,
    resource: str,
    available: Sequence[str],
    must_include: Sequence[str],
    size: int,
) -> Claim:
    """The grant kubelet should pick for a container asking `size` devices out of `available`.

    Only grants not yet served, of exactly `size` ids, all available and covering
    `must_include` qualify. When pods that kubelet has not admitted yet tie, the
    oldest wins: kubelet admits pods in creation order.
    """
    free = frozenset(available)
    must = frozenset(must_include)
    fitting = [
        c
        for c in found.claims
        if len(c.device_ids) == size
        and c.device_ids <= free
        and must <= c.device_ids
        and not c.device_ids & c.pod.served_ids(resource)
    ]
    if not fitting:
        raise ResolveError(
            f"no pending pod's {ANNOTATION} fits a request for {size} {resource} device(s) "
            f"out of {sorted(free)} (must include {sorted(must)}): {found.describe(resource)}"
        )
    return fitting[0]


def owner(found: Candidates, resource: str, requested: Sequence[str]) -> Claim:
    """The one grant whose ids are exactly `requested`; ResolveError if none or several."""
    wanted = frozenset(requested)
    if len(wanted) != len(requested):
        raise ResolveError(f"Allocate for {resource} names a device twice: {list(requested)}")
    exact = [c for c in found.claims if c.device_ids == wanted]
    if len(exact) == 1:
        return exact[0]
    if len(exact) > 1:
        raise ResolveError(
            f"{resource} devices {sorted(wanted)} are granted to several pods: "
            + ", ".join(c.pod.ref for c in exact)
        )
    raise ResolveError(
        f"no pending pod's {ANNOTATION} grants exactly {sorted(wanted)} of {resource}: "
        f"{found.describe(resource)}"
    )
