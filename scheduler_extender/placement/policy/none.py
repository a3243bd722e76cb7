"""kubelet's `none`, for a pod opting out of topology awareness: first free devices and CPUs in id order.

The search itself is topology-unaware for such a pod (`Search.aware` false);
refusals word it as best-effort, which is what the pod gets.
"""

from __future__ import annotations

from scheduler_extender.placement.policy.best_effort import BestEffort


class NoAlignment(BestEffort):
    name = "best-effort"
