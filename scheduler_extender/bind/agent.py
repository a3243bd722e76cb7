"""Bind without Kubernetes: the node's agent takes the allocation over gRPC.

kube-scheduler's bind names only the pod and the node, so the Apply carries no pod runtime: the agent
reserves the allocation (checkpointed, CPUs out of the shared pool, devices taken) and attaches it when
whoever starts the pod applies it again with the runtime, or releases it.
"""

from __future__ import annotations

from gedge_model import Allocation
from scheduler_extender.bind.binder import BindError
from scheduler_extender.node_source import AgentApplier


class AgentBinder:
    def __init__(self, applier: AgentApplier) -> None:
        self._applier = applier

    def bind(self, allocation: Allocation) -> None:
        try:
            self._applier.apply(allocation.node, allocation)
        except Exception as exc:  # any transport or apply failure is the bind's failure
            raise BindError(
                f"pod {allocation.namespace}/{allocation.name}: agent on {allocation.node} "
                f"did not apply the allocation: {exc}"
            ) from None
