"""Bind without Kubernetes: the node's agent takes the allocation over gRPC.

kube-scheduler's bind names only the pod and the node, so the Apply carries no pod runtime: the agent
reserves the allocation (checkpointed, CPUs out of the shared pool, devices taken) and attaches it when
whoever starts the pod applies it again with the runtime, or releases it.
"""

from __future__ import annotations

import structlog

from gedge_model import Allocation
from scheduler_extender.bind.binder import BindError
from scheduler_extender.node_source import AgentApplier

log = structlog.get_logger("gedge.extender.bind")


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

    def unbind(self, allocation: Allocation) -> None:
        """Release the pod's reservation on the node it was bound to before; a failure is logged, and
        the agent releases it after its reservation TTL anyway."""
        try:
            self._applier.release(allocation.node, allocation.pod_uid)
        except Exception as exc:
            log.warning(
                "unbind_failed",
                pod=f"{allocation.namespace}/{allocation.name}",
                node=allocation.node,
                error=str(exc),
            )
