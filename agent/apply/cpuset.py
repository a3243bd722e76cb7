"""Cpusets: the Linux list format, and the safe order of writes in a cgroup hierarchy.

cgroup v1 refuses a parent narrower than any child (EBUSY) and a child wider
than its parent, so a change is made in two passes: top-down each touched
cgroup (and any ancestor in the way) is widened to old | new, then bottom-up
each is narrowed to its target. Every intermediate state is legal.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

_LIST = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")
MAX_CPU_ID = 65535


class CpusetError(ValueError):
    """A cpuset value or file is malformed; the message names it."""


def parse_cpu_list(text: str, *, what: str = "cpu list") -> frozenset[int]:
    """`0-3,8,10-11` -> {0,1,2,3,8,10,11}; the empty string is the empty set."""
    text = text.strip()
    if not text:
        return frozenset()
    if not _LIST.match(text):
        raise CpusetError(f"{what}: {text!r} is not a Linux cpu list")
    ids: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        first, last = int(low), int(high or low)
        if first > last or last > MAX_CPU_ID:
            raise CpusetError(f"{what}: bad range {part!r} in {text!r}")
        ids.update(range(first, last + 1))
    return frozenset(ids)


def format_cpu_list(ids: Iterable[int]) -> str:
    """{0,1,2,3,8} -> `0-3,8` (the form the kernel prints)."""
    ordered = sorted(set(ids))
    parts: list[str] = []
    start: int | None = None
    prev = -1
    for i in ordered:
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = i
    if start is not None:
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ",".join(parts)


@dataclass(frozen=True)
class Cpuset:
    cpus: frozenset[int]
    mems: frozenset[int]

    def union(self, other: Cpuset) -> Cpuset:
        return Cpuset(self.cpus | other.cpus, self.mems | other.mems)

    def covers(self, other: Cpuset) -> bool:
        return other.cpus <= self.cpus and other.mems <= self.mems

    def __str__(self) -> str:
        return f"cpus={format_cpu_list(self.cpus) or '-'} mems={format_cpu_list(self.mems) or '-'}"


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
