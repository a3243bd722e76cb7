"""Agent addresses from Kubernetes Node objects: list, then watch, re-list when the watch expires."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import structlog

from gedge_common.backoff import Backoff
from gedge_common.listwatch import ListWatch
from scheduler_extender.cache.targets import DEFAULT_AGENT_PORT, AgentTarget, target_for_node

if TYPE_CHECKING:
    from kubernetes.client import CoreV1Api

log = structlog.get_logger("gedge.extender.cache.kube")


def load_core_v1() -> CoreV1Api:
    """CoreV1Api from the in-cluster service account, else from the kubeconfig."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CoreV1Api()


def _watch_failed(exc: Exception, delay_s: float) -> None:
    status = getattr(exc, "status", None)
    if status is not None:
        log.error("node watch failed", status=status, error=getattr(exc, "reason", str(exc)))
    else:
        log.error("node watch failed", error=f"{type(exc).__name__}: {exc}")


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
        self._loop: ListWatch | None = None
        self.targets: dict[str, AgentTarget] = {}

    def start(self) -> None:
        if self._core_v1 is None:
            self._core_v1 = load_core_v1()
        api: Any = self._core_v1
        self._loop = ListWatch(
            relist=self._relist,
            watch_call=api.list_node,
            watch_args={"timeout_seconds": self._watch_timeout_s},
            handle=self._event,
            backoff=Backoff(self._retry_s, self._retry_s),
            on_error=_watch_failed,
        )
        self._loop.start("gedge-cache-nodes")

    def stop(self, timeout: float = 5.0) -> None:
        if self._loop is not None:
            self._loop.stop(timeout)

    def _relist(self) -> str:
        api: Any = self._core_v1
        listed = api.list_node()
        self.targets = {}
        for node in listed.items:
            self._remember(node)
        self._publish(tuple(self.targets.values()))
        return listed.metadata.resource_version

    def _event(self, event: Mapping[str, Any]) -> None:
        node = event["object"]
        if event["type"] == "DELETED":
            self.targets.pop(node.metadata.name, None)
        elif event["type"] not in ("ADDED", "MODIFIED") or not self._remember(node):
            return
        self._publish(tuple(self.targets.values()))

    def _remember(self, node: object) -> bool:
        """Record the node's target; returns whether it changed."""
        target = target_for_node(node, self._default_port)
        if target.problem:
            log.warning("node has no usable agent address", node=target.node, problem=target.problem)
        changed = self.targets.get(target.node) != target
        self.targets[target.node] = target
        return changed
