"""Bind: reserve the chosen devices, make the choice durable, then bind the pod to its node."""

from scheduler_extender.bind.assume import AssumeCache, AssumeConflict
from scheduler_extender.bind.binder import Binder, BindError

__all__ = ["AssumeCache", "AssumeConflict", "BindError", "Binder"]
