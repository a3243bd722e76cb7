"""The one rule for how many CPUs pods may pin on a node: the extender's filter and the agent both apply it.

The agent keeps the shared pool (every pod CPU no pod has pinned, CPUs reserved
for the system included) non-empty: containers without pinning run there. So
pinning may take every unpinned CPU except the reserved ones and, when none is
reserved, one CPU more.
"""

from __future__ import annotations

SHARED_POOL_MIN_CPUS = 1
"""CPUs the shared pool always keeps."""


def pinnable_cpus(unpinned: int, reserved: int = 0) -> int:
    """How many of a node's `unpinned` CPUs pods may still pin.

    unpinned: pod CPUs no pod has pinned (reserved ones included); reserved: how
    many of those are reserved for the system (never pinned, always shared). ValueError for a
    negative count.
    """
    if unpinned < 0 or reserved < 0:
        raise ValueError(f"CPU counts must not be negative (unpinned {unpinned}, reserved {reserved})")
    reserved = min(reserved, unpinned)
    return max(0, unpinned - max(reserved, SHARED_POOL_MIN_CPUS))
