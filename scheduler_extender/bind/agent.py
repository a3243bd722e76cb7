"""Bind without Kubernetes: the node's agent applies the allocation over gRPC."""

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
