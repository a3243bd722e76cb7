"""The Node labels that let kube-scheduler match pods to this node's NVIDIA driver.

The workflow composer gives a step pod a required node affinity
`gedge.io/nvidia-driver-code Gt <minimum - 1>`; these labels are what that
affinity reads. A node without GPUs (or whose GPUs report no driver) carries
none of them, so a pod that needs a driver never lands there. Only the labels
listed in MANAGED_LABELS are ever written or removed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from gedge_model import NodeTopology
from gedge_model.driver import (
    LABEL_DRIVER,
    LABEL_DRIVER_CODE,
    LABEL_GPU_COUNT,
    DriverVersionError,
    parse_driver_version,
)

MANAGED_LABELS = (LABEL_DRIVER, LABEL_DRIVER_CODE, LABEL_GPU_COUNT)
MERGE_PATCH = "application/merge-patch+json"
log = structlog.get_logger("gedge.agent.node_labels")


def node_labels(topology: NodeTopology) -> dict[str, str]:
    """The managed labels this topology calls for; absent keys are labels the node must not carry."""
    if not topology.gpus:
        return {}
    labels = {LABEL_GPU_COUNT: str(len(topology.gpus))}
    driver = topology.driver_version
    if driver is not None:
        try:
            version = parse_driver_version(driver)
        except DriverVersionError:
            return labels
        labels[LABEL_DRIVER] = driver.strip()
        labels[LABEL_DRIVER_CODE] = str(version.code)
    return labels


def label_patch(current: Mapping[str, str] | None, wanted: Mapping[str, str]) -> dict[str, str | None]:
    """metadata.labels of a merge patch taking `current` to `wanted` on the managed keys (None removes)."""
    current = current or {}
    patch: dict[str, str | None] = {}
    for key in MANAGED_LABELS:
        if key in wanted:
            if current.get(key) != wanted[key]:
                patch[key] = wanted[key]
        elif key in current:
            patch[key] = None
    return patch


class NodeLabeler:
    """Keeps the managed labels of one Node in step with the agent's topology.

    `sync` is cheap when nothing changed (a comparison with the labels last
    written), so it can run on every store generation. Each API call is bounded
    by `timeout` seconds; after a failed read or patch (logged, never raised into
    the caller) the next attempt waits `retry_after` seconds, so a listener on a
    busy store does not hammer an API server that is away. `start` also syncs on a
    timer, so a Node that registers after the agent started (or an API server that
    was away) gets its labels without waiting for a topology change.
    """

    def __init__(
        self,
        core_api: Any,
        node_name: str,
        *,
        timeout: float = 10.0,
        retry_after: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.core = core_api
        self.node_name = node_name
        self.timeout = timeout
        self.retry_after = retry_after
        self._clock = clock
        self._written: dict[str, str] | None = None
        self._next_try = float("-inf")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, topology: Callable[[], NodeTopology], interval_s: float = 5.0) -> None:
        """Sync now and then every `interval_s` seconds until `stop`."""

        def loop() -> None:
            while True:
                self.sync(topology())
                if self._stop.wait(interval_s):
                    return

        self._stop.clear()
        self._thread = threading.Thread(target=loop, name=f"node-labels-{self.node_name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 1)
            self._thread = None

    def sync(self, topology: NodeTopology) -> bool:
        """Patch the Node if its managed labels differ from what `topology` calls for; True if patched."""
        wanted = node_labels(topology)
        if wanted == self._written or self._clock() < self._next_try:
            return False
        try:
            node = self.core.read_node(self.node_name, _request_timeout=self.timeout)
            patch = label_patch(node.metadata.labels, wanted)
            if patch:
                self.core.patch_node(
                    self.node_name,
                    {"metadata": {"labels": patch}},
                    _content_type=MERGE_PATCH,
                    _request_timeout=self.timeout,
                )
        except Exception as exc:  # the API server may be away; a later generation retries
            self._next_try = self._clock() + self.retry_after
            log.warning("node label update failed", node=self.node_name, error=str(exc))
            return False
        self._written = wanted
        if patch:
            log.info("node labels updated", node=self.node_name, labels=patch)
        return bool(patch)

    def on_snapshot(self, snapshot: Any) -> None:
        """A store listener: `snapshot.state.topology` is the node's current topology."""
        self.sync(snapshot.state.topology)
