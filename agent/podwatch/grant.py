"""Does a pod's `gedge.io/allocation` fit the pod it is on? The agent's check before it applies a grant.

Admission lets only the extender write the annotation; this is the second
line: a grant is applied only to a pod that the extender could have granted it
to. The pod must have been placed by one of the granting schedulers, exclusive
CPUs need a Guaranteed pod whose CPU count equals the granted count, and the
devices granted per resource must equal what the pod requests.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from decimal import Decimal

from agent.podwatch.pods import PodView
from gedge_model import ANNOTATION, Allocation

DEFAULT_GRANTING_SCHEDULERS = ("gedge-scheduler",)
"""kube-scheduler profiles that call the extender (deploy/scheduler/gedge-scheduler-config.yaml)."""


def grant_mismatch(pod: PodView, allocation: Allocation, schedulers: Iterable[str]) -> str | None:
    """Why `allocation` cannot be this pod's grant, naming the pod and the field; None when it fits."""
    allowed = sorted(set(schedulers))
    where = f"pod {pod.ref}: {ANNOTATION}"
    scheduler = pod.scheduler_name or "default-scheduler"
    if scheduler not in allowed:
        return (
            f"{where} on a pod scheduled by {scheduler!r}, not by a scheduler that calls the extender "
            f"({', '.join(allowed)}); nothing applied"
        )
    requests = dict(pod.requests)
    if allocation.cpus:
        if pod.qos_class != "Guaranteed":
            return (
                f"{where} grants exclusive CPUs {list(allocation.cpus)} to a {pod.qos_class or 'unknown'} "
                "pod; exclusive CPUs need a Guaranteed pod; nothing applied"
            )
        cpu = requests.get("cpu", Decimal(0))
        if cpu != len(allocation.cpus):
            return (
                f"{where} grants {len(allocation.cpus)} exclusive CPU(s) but the pod requests cpu {cpu}; "
                "nothing applied"
            )
    granted = Counter(d.resource for d in allocation.devices)
    asked = {r: n for r, n in requests.items() if r.startswith("gedge.io/") and n}
    for resource in sorted(set(granted) | set(asked)):
        if granted.get(resource, 0) != asked.get(resource, Decimal(0)):
            return (
                f"{where} grants {granted.get(resource, 0)} {resource} but the pod requests "
                f"{asked.get(resource, 0)}; nothing applied"
            )
    return None
