"""Cpusets, and the safe order of writes in a cgroup hierarchy.

cgroup v1 refuses a parent narrower than any child (EBUSY) and a child wider
than its parent, so a change is made in two passes: top-down each touched
cgroup (and any ancestor in the way) is widened to old | new, then bottom-up
each is narrowed to its target. Every intermediate state is legal.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gedge_model.cpulist import format_cpulist


@dataclass(frozen=True)
class Cpuset:
    cpus: frozenset[int]
    mems: frozenset[int]

    def union(self, other: Cpuset) -> Cpuset:
        return Cpuset(self.cpus | other.cpus, self.mems | other.mems)

    def covers(self, other: Cpuset) -> bool:
        return other.cpus <= self.cpus and other.mems <= self.mems

    def __str__(self) -> str:
        return f"cpus={format_cpulist(self.cpus) or '-'} mems={format_cpulist(self.mems) or '-'}"


def _ancestors(path: Path, root: Path) -> list[Path]:
    """Ancestors of `path` strictly below `root`, nearest the root first."""
    chain: list[Path] = []
    parent = path.parent
    while parent != root and root in parent.parents:
        chain.append(parent)
        parent = parent.parent
    return list(reversed(chain))


def plan_cpuset_writes(
    root: Path, current: Mapping[Path, Cpuset], targets: Mapping[Path, Cpuset]
) -> list[tuple[Path, Cpuset]]:
    """The ordered writes that take every target cgroup to its cpuset without an illegal step.

    `current` must hold every target and each of its ancestors below `root`. An
    ancestor with an empty cpuset (cgroup v2: inherit) constrains nothing and is left alone.
    """
    widen: dict[Path, Cpuset] = {}
    for path, target in targets.items():
        for ancestor in _ancestors(path, root):
            have = widen.get(ancestor, current[ancestor])
            if ancestor in targets:
                continue
            if have.cpus and not have.covers(target):
                widen[ancestor] = have.union(target)
        have = current[path]
        if have != target and not have.covers(target):
            widen[path] = have.union(target)
    writes: list[tuple[Path, Cpuset]] = [
        (path, widen[path]) for path in sorted(widen, key=lambda p: (len(p.parts), str(p)))
    ]
    last = {path: widen.get(path, current[path]) for path in targets}
    for path in sorted(targets, key=lambda p: (-len(p.parts), str(p))):
        if last[path] != targets[path]:
            writes.append((path, targets[path]))
    return writes
