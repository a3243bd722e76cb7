"""Agent addresses from Kubernetes Node objects: list, then watch, re-list when the watch expires."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import structlog

from scheduler_extender.cache.targets import DEFAULT_AGENT_PORT, AgentTarget, target_for_node

if TYPE_CHECKING:
    from kubernetes.client import CoreV1Api
    from kubernetes.watch import Watch

log = structlog.get_logger("gedge.extender.cache.kube")


def load_core_v1() -> CoreV1Api:
    """CoreV1Api from the in-cluster service account, else from the kubeconfig."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CoreV1Api()


class KubeNodeTargets:
    """Feeds `publish` the full set of agent targets whenever a Node is added, changed or deleted."""

    def __init__(
        self,
        publish: Callable[[Iterable[AgentTarget]], None],
        *,
        core_v1: CoreV1Api | None = None,
        default_port: int | None = None,
        watch_timeout_s: int = 300,
        retry_s: float = 2.0,
    ) -> None:
        self._publish = publish
        self._core_v1 = core_v1
        self._default_port = default_port or DEFAULT_AGENT_PORT
        self._watch_timeout_s = watch_timeout_s
        self._retry_s = retry_s
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch: Watch | None = None
        self.targets: dict[str, AgentTarget] = {}

    def start(self) -> None:
        if self._core_v1 is None:
            self._core_v1 = load_core_v1()
        self._thread = threading.Thread(target=self._run, name="gedge-cache-nodes", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self._watch is not None:
            self._watch.stop()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        api = self._core_v1
        assert api is not None, "start() loads the API client before the thread runs"
        while not self._stopping.is_set():
            try:
                listed = api.list_node()
                self.targets = {}
                for node in listed.items:
                    self._remember(node)
                self._publish(tuple(self.targets.values()))
                self._watch = watch.Watch()
                for event in self._watch.stream(
                    api.list_node,
                    resource_version=listed.metadata.resource_version if listed.metadata else None,
                    timeout_seconds=self._watch_timeout_s,
                ):
                    if self._stopping.is_set():
                        return
                    node = event["object"]
                    if event["type"] == "DELETED":
                        self.targets.pop(node.metadata.name, None)
                    elif event["type"] in ("ADDED", "MODIFIED"):
                        if not self._remember(node):
                            continue
                    else:
                        continue
                    self._publish(tuple(self.targets.values()))
            except ApiException as exc:
                if exc.status != 410:
                    log.error("node watch failed", status=exc.status, error=exc.reason)
                    self._stopping.wait(self._retry_s)
            except Exception as exc:
                log.error("node watch failed", error=f"{type(exc).__name__}: {exc}")
                self._stopping.wait(self._retry_s)

    def _remember(self, node: object) -> bool:
        """Record the node's target; returns whether it changed."""
        target = target_for_node(node, self._default_port)
        if target.problem:
            log.warning("node has no usable agent address", node=target.node, problem=target.problem)
        changed = self.targets.get(target.node) != target
        self.targets[target.node] = target
        return changed
