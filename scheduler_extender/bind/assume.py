"""Allocations the extender holds beyond what the agents have reported yet.

A bind reserves its devices here before any I/O, so a second bind running at
the same time sees them taken; on failure the reservation is released, and one
that is never settled expires. A successful bind stays held until the source of
truth (the pod watch under Kubernetes, the agent's report without it) has it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

from gedge_model import Allocation


class AssumeConflict(RuntimeError):
    """A reservation would hand a device or CPU already held to a second pod."""


@dataclass
class _Entry:
    allocation: Allocation
    expires_at: float | None
    bound: bool = False


class AssumeCache:
    """Thread-safe; `lock` is held by callers that must choose and reserve as one step."""

    CHANGE_LOG = 4096
    """Node changes remembered for `changes_since`."""

    def __init__(
        self,
        *,
        reserve_ttl: float = 30.0,
        bound_ttl: float | None = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reserve_ttl = reserve_ttl
        self.bound_ttl = bound_ttl
        self._clock = clock
        self.lock = threading.RLock()
        self._entries: dict[str, _Entry] = {}
        self._by_node: dict[str, set[str]] = {}
        self._versions: dict[str, int] = {}
        self._next_expiry = float("inf")
        self._sequence = 0
        self._changes: deque[tuple[int, str]] = deque(maxlen=self.CHANGE_LOG)

    def reserve(self, allocation: Allocation) -> None:
        """Hold the allocation for `reserve_ttl` seconds; raises AssumeConflict on any overlap."""
        with self.lock:
            self._expire()
            held = self._entries.get(allocation.pod_uid)
            if held is not None and held.allocation != allocation:
                raise AssumeConflict(
                    f"pod {allocation.namespace}/{allocation.name} already holds an allocation "
                    f"on {held.allocation.node}"
                )
            self._check_overlap(allocation)
            self._put(allocation, self._clock() + self.reserve_ttl)

    def commit(self, pod_uid: str) -> None:
        """The bind went through: hold until observed, or `bound_ttl` as a safety net."""
        with self.lock:
            entry = self._entries.get(pod_uid)
            if entry is not None:
                entry.bound = True
                entry.expires_at = None if self.bound_ttl is None else self._clock() + self.bound_ttl
                if entry.expires_at is not None:
                    self._next_expiry = min(self._next_expiry, entry.expires_at)

    def observe(self, allocation: Allocation) -> None:
        """An allocation read from its source of truth (a pod annotation): held until forgotten."""
        with self.lock:
            self._put(allocation, None)

    def settle(self, node: str, reported: Collection[str]) -> None:
        """Stop holding bound pods the node's own report now includes: from then on the report accounts
        for them, so a release on the node frees their devices at once instead of after `bound_ttl`."""
        with self.lock:
            held = self._by_node.get(node)
            if not held:
                return
            for uid in [u for u in held if u in reported and self._entries[u].bound]:
                self.release(uid)

    def release(self, pod_uid: str) -> Allocation | None:
        with self.lock:
            entry = self._entries.pop(pod_uid, None)
            if entry is None:
                return None
            node = entry.allocation.node
            self._by_node[node].discard(pod_uid)
            self._bump(node)
            return entry.allocation

    def held(self, node: str) -> tuple[Allocation, ...]:
        with self.lock:
            self._expire()
            return tuple(self._entries[uid].allocation for uid in sorted(self._by_node.get(node, ())))

    def held_by(self, pod_uid: str) -> Allocation | None:
        with self.lock:
            self._expire()
            entry = self._entries.get(pod_uid)
            return entry.allocation if entry else None

    def version(self, node: str) -> int:
        """Grows with every change on the node, so callers can key memoized results on it."""
        with self.lock:
            self._expire()
            return self._versions.get(node, 0)

    def versions(self) -> dict[str, int]:
        """Every node's version at once, for a caller looking at thousands of nodes per request."""
        with self.lock:
            self._expire()
            return dict(self._versions)

    def sequence(self) -> int:
        """Grows with every change on any node."""
        with self.lock:
            self._expire()
            return self._sequence

    def changes_since(self, sequence: int) -> tuple[list[str], int] | None:
        """Nodes changed after `sequence` (from `sequence()`), and the sequence now.

        None when more changes happened since than the log keeps: the caller must recheck every node.
        """
        with self.lock:
            self._expire()
            now = self._sequence
            if sequence == now:
                return [], now
            if sequence > now or now - sequence > len(self._changes):
                return None
            changed = []
            for seq, node in reversed(self._changes):
                if seq <= sequence:
                    break
                changed.append(node)
            return changed, now

    def pod_uids(self) -> frozenset[str]:
        with self.lock:
            return frozenset(self._entries)

    def retain(self, pod_uids: Iterable[str]) -> None:
        """Forget every observed pod not in `pod_uids` (after a relist); reservations are kept."""
        keep = set(pod_uids)
        with self.lock:
            for uid, entry in list(self._entries.items()):
                if entry.expires_at is None and uid not in keep:
                    self.release(uid)

    def _put(self, allocation: Allocation, expires_at: float | None) -> None:
        old = self._entries.get(allocation.pod_uid)
        if old is not None and old.allocation.node != allocation.node:
            self._by_node[old.allocation.node].discard(allocation.pod_uid)
            self._bump(old.allocation.node)
        self._entries[allocation.pod_uid] = _Entry(allocation, expires_at)
        if expires_at is not None:
            self._next_expiry = min(self._next_expiry, expires_at)
        self._by_node.setdefault(allocation.node, set()).add(allocation.pod_uid)
        self._bump(allocation.node)

    def _check_overlap(self, allocation: Allocation) -> None:
        devices = {(d.resource, d.id) for d in allocation.devices}
        cpus = set(allocation.cpus)
        for uid in self._by_node.get(allocation.node, ()):
            if uid == allocation.pod_uid:
                continue
            other = self._entries[uid].allocation
            taken = devices & {(d.resource, d.id) for d in other.devices}
            shared_cpus = cpus & set(other.cpus)
            if taken or shared_cpus:
                what = ", ".join(sorted(f"{r} {i}" for r, i in taken))
                if shared_cpus:
                    what = ", ".join(filter(None, [what, f"cpus {sorted(shared_cpus)}"]))
                raise AssumeConflict(
                    f"{what} on {allocation.node} already held by pod {other.namespace}/{other.name}"
                )

    def _expire(self) -> None:
        now = self._clock()
        if now < self._next_expiry:
            return
        self._next_expiry = float("inf")
        for uid, entry in list(self._entries.items()):
            if entry.expires_at is None:
                continue
            if entry.expires_at <= now:
                self.release(uid)
            else:
                self._next_expiry = min(self._next_expiry, entry.expires_at)

    def _bump(self, node: str) -> None:
        self._versions[node] = self._versions.get(node, 0) + 1
        self._sequence += 1
        self._changes.append((self._sequence, node))
