"""The Node condition `GedgeTopologyReported`: True while an extender holds this node's state.

Why: a pod the extender refused (say, because this node's first report had not reached it yet)
waits in kube-scheduler's unschedulable queue until a cluster event; kube-scheduler tries pods an
extender refused again on any Node change of conditions, labels or annotations. The flip of this
condition is that event, so such a pod is tried again as soon as the extender can place it, not
when the queue is flushed 5 min later. Each change is one nodes/status patch, written off the
event loop; only the latest wanted status is written, and a failed write is tried again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

TOPOLOGY_REPORTED = "GedgeTopologyReported"
WATCHED = "WatchedByExtender"
NOT_WATCHED = "NoExtenderWatch"


class TopologyReportedCondition:
    """Follows `ServedWatches` (as its listener) and writes the condition through `write`
    ((status, reason, message) -> written, e.g. `node_condition_writer`). `retry_after`: seconds
    between tries of a failed write."""

    def __init__(self, write: Callable[[bool, str, str], bool], *, retry_after: float = 5.0) -> None:
        self._write = write
        self.retry_after = retry_after
        self._lock = threading.Lock()
        self._wanted: bool | None = None
        self._written: bool | None = None
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="topology-reported")

    def follow(self, held: bool) -> None:
        """Want the condition `held`; returns at once (the write runs on this object's thread)."""
        with self._lock:
            self._wanted = held
            if not self._stop.is_set():
                self._pool.submit(self._flush)

    def stop(self, *, last: bool | None = None) -> None:
        """Stop following; `last`: one more try to write that status first (an agent going away
        says so). Waits for the write in flight, which `write`'s own timeout bounds."""
        with self._lock:
            if last is not None:
                self._wanted = last
            self._stop.set()
            self._pool.submit(self._flush)
        self._pool.shutdown(wait=True)

    def _flush(self) -> None:
        while True:
            with self._lock:
                wanted = self._wanted
            if wanted is None or wanted == self._written:
                return
            if wanted:
                written = self._write(True, WATCHED, "an extender's node-state watch has this node's state")
            else:
                written = self._write(
                    False,
                    NOT_WATCHED,
                    "no extender holds this node's state: pods it refuses are tried again when one does",
                )
            if written:
                self._written = wanted
            elif self._stop.wait(self.retry_after):
                return
