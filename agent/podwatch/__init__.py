"""The Kubernetes trigger of the apply path: a watch on the pods bound to this node."""

from agent.podwatch.cluster import core_api
from agent.podwatch.decide import Applied, Apply, Reject, Release, decide, reconcile
from agent.podwatch.pods import PodView, pod_view
from agent.podwatch.resolver import PodStatusResolver
from agent.podwatch.watch import (
    NODE_CONDITION,
    PodWatcher,
    kubernetes_event_reporter,
    node_condition_writer,
    node_event_reporter,
)

__all__ = [
    "NODE_CONDITION",
    "Applied",
    "Apply",
    "PodStatusResolver",
    "PodView",
    "PodWatcher",
    "Reject",
    "Release",
    "core_api",
    "decide",
    "kubernetes_event_reporter",
    "node_condition_writer",
    "node_event_reporter",
    "pod_view",
    "reconcile",
]
