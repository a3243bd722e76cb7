"""The placement engine: which node, and which GPUs, MIG or time-slices, VFs, RDMA devices and CPUs on it.

Pure functions over the shared model; the HTTP verbs and the binder call them.
"""

from scheduler_extender.placement.engine import (
    Placement,
    PlacementConfig,
    PlanMemo,
    Refusal,
    free_capacity,
    place,
    score_nodes,
)
from scheduler_extender.placement.request import PodRequest, RequestError, parse_pod_request

__all__ = [
    "Placement",
    "PlacementConfig",
    "PlanMemo",
    "PodRequest",
    "Refusal",
    "RequestError",
    "free_capacity",
    "parse_pod_request",
    "place",
    "score_nodes",
]
