"""The one interface through which the agent makes an allocation real on its node.

The gRPC Apply/Release calls (nodes without Kubernetes) and the pod watch
(under Kubernetes) both go through it, so both paths apply the same way.
"""

from __future__ import annotations

from typing import Protocol

from gedge_model import Allocation


class ApplyError(RuntimeError):
    """An allocation could not be applied; the message names the pod and the part at fault."""


class AllocationApplier(Protocol):
    def apply(self, allocation: Allocation) -> None:
        """Apply idempotently; on failure undo what this call did and raise ApplyError."""

    def release(self, pod_uid: str) -> None:
        """Undo everything applied for the pod; releasing an unknown pod is a no-op."""

    def applied(self) -> tuple[Allocation, ...]:
        """What is applied now, as recorded in the checkpoint."""
