"""The one interface through which a chosen allocation is made durable and the pod bound."""

from __future__ import annotations

from typing import Protocol

from gedge_model import Allocation


class BindError(RuntimeError):
    """A bind did not happen; the message names the pod and the step that failed."""


class Binder(Protocol):
    def bind(self, allocation: Allocation) -> None:
        """Record the allocation and bind the pod; raise BindError leaving nothing half-bound."""


class Unbinder(Protocol):
    """A binder whose binds can be taken back (an agent's reservation); Kubernetes bindings cannot."""

    def unbind(self, allocation: Allocation) -> None:
        """Free what `allocation` holds on its node; best effort (the node also expires it)."""
