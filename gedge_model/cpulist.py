"""The Linux cpulist format, one grammar for every reader and writer of CPU and NUMA node lists.

Grammar (as the kernel's `bitmap_parselist` reads and `%*pbl` prints it):
    LIST  := '' | ITEM (',' ITEM)*
    ITEM  := N | N '-' N | N '-' N ':' USED '/' GROUP
with decimal ids 0..MAX_CPU_ID, each range low to high, and in the stride form 0 < USED <= GROUP
(`0-31:2/8` is the first two of every eight). White space around the whole list is
allowed (sysfs files end in a newline), not inside it; the empty string is the empty set.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MAX_CPU_ID = 65535
_ITEM = re.compile(r"([0-9]+)(?:-([0-9]+)(?::([0-9]+)/([0-9]+))?)?")


class CpulistError(ValueError):
    """A cpulist is malformed; the message names the list, the bad item and what was read before it."""


def parse_cpulist(text: str, *, what: str = "cpu list") -> frozenset[int]:
    """`0-3,8,10-11` -> {0, 1, 2, 3, 8, 10, 11}; '' (or only white space) -> the empty set.

    Raises CpulistError naming `what`, the item at fault and the ids parsed before it: for an item
    that is not a number or range (`a`, `-1`, `1-`, `1,,2`), a reversed range (`3-1`), an id above
    MAX_CPU_ID, or a bad stride (`0-7:0/4`, `0-7:5/4`)."""
    body = text.strip()
    if not body:
        return frozenset()
    ids: set[int] = set()
    for item in body.split(","):
        m = _ITEM.fullmatch(item)

        def bad(why: str, item: str = item) -> CpulistError:
            read = format_cpulist(ids) or "nothing"
            return CpulistError(
                f"{what}: {body[:80]!r} is not a Linux cpu list: {why} {item!r} (read {read} before it)"
            )

        if m is None:
            raise bad("bad item")
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) is not None else first
        if last < first:
            raise bad("reversed range")
        if last > MAX_CPU_ID:
            raise bad(f"id above {MAX_CPU_ID}")
        if m.group(3) is None:
            ids.update(range(first, last + 1))
            continue
        used, group = int(m.group(3)), int(m.group(4))
        if not 0 < used <= group:
            raise bad("bad stride")
        ids.update(c for c in range(first, last + 1) if (c - first) % group < used)
    return frozenset(ids)


def format_cpulist(ids: Iterable[int]) -> str:
    """{0, 1, 2, 3, 8} -> `0-3,8`: sorted, runs folded, as the kernel prints it; no ids -> ''."""
    ordered = sorted(set(ids))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)
