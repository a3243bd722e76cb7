"""Making an allocation real on the node: cpusets, the data-path NIC, a kill -9 safe checkpoint."""

from agent.apply.cgroups import CgroupDriver, CgroupVersion, QosClass
from agent.apply.contract import AllocationApplier, ApplyError
from agent.apply.manager import ApplyManager, PodResolver, PodRuntime, ReconcileReport, StaticPodResolver

__all__ = [
    "AllocationApplier",
    "ApplyError",
    "ApplyManager",
    "CgroupDriver",
    "CgroupVersion",
    "PodResolver",
    "PodRuntime",
    "QosClass",
    "ReconcileReport",
    "StaticPodResolver",
]
