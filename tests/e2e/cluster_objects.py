"""Kubernetes objects the e2e tests make (nodes as an agent's kubelet would register them, pods) and waits."""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

from kubernetes import client as k8s

AGENT_PORT_ANNOTATION = "gedge.io/agent-port"
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"

T = TypeVar("T")


def node_object(
    name: str,
    *,
    cpu: str = "8",
    memory: str = "32Gi",
    pods: str = "110",
    extended: Mapping[str, int] | None = None,
    agent_port: int | None = None,
    labels: Mapping[str, str] | None = None,
) -> k8s.V1Node:
    """A Ready node at 127.0.0.1 with `extended` resources as the agent's device plugins advertise them."""
    resources = {"cpu": cpu, "memory": memory, "pods": pods}
    resources.update({resource: str(count) for resource, count in (extended or {}).items()})
    now = datetime.datetime.now(datetime.UTC)
    annotations = {AGENT_PORT_ANNOTATION: str(agent_port)} if agent_port is not None else None
    return k8s.V1Node(
        metadata=k8s.V1ObjectMeta(
            name=name,
            annotations=annotations,
            labels={"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", **(labels or {})},
        ),
        status=k8s.V1NodeStatus(
            capacity=resources,
            allocatable=resources,
            addresses=[
                k8s.V1NodeAddress(type="InternalIP", address="127.0.0.1"),
                k8s.V1NodeAddress(type="Hostname", address=name),
            ],
            conditions=[
                k8s.V1NodeCondition(
                    type="Ready",
                    status="True",
                    reason="KubeletReady",
                    message="gedge e2e node",
                    last_heartbeat_time=now,
                    last_transition_time=now,
                )
            ],
        ),
    )


def register_node(core: k8s.CoreV1Api, node: k8s.V1Node) -> k8s.V1Node:
    """Create the Node, then write its status through the status subresource as kubelet does.

    The status goes as a strategic merge patch (conditions merge by type), not as a replace of the
    created object: the node's agent may already run and write its own condition in between, and a
    replace would then conflict on the resourceVersion."""
    core.create_node(node)
    status = core.api_client.sanitize_for_serialization(node.status)
    patched: k8s.V1Node = core.patch_node_status(
        node.metadata.name, {"status": status}, _content_type="application/strategic-merge-patch+json"
    )
    return patched


def pause_pod(
    name: str,
    *,
    scheduler: str = "default-scheduler",
    requests: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> k8s.V1Pod:
    """A one-container pod; extended resources go to limits as well, as Kubernetes requires."""
    requests = dict(requests or {})
    limits = {k: v for k, v in requests.items() if "/" in k}
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name=name, annotations=dict(annotations or {}) or None),
        spec=k8s.V1PodSpec(
            scheduler_name=scheduler,
            containers=[
                k8s.V1Container(
                    name="main",
                    image=PAUSE_IMAGE,
                    resources=k8s.V1ResourceRequirements(requests=requests or None, limits=limits or None),
                )
            ],
        ),
    )


def wait_for(
    read: Callable[[], T],
    done: Callable[[T], object],
    timeout: float = 60.0,
    interval: float = 0.25,
    describe: Callable[[T], object] = str,
    hopeless: Callable[[T], object] = lambda value: False,
) -> T:
    """Call `read` until `done(value)` is truthy; fail with `describe(last value)` on timeout,
    or at once when `hopeless(value)` says waiting cannot help."""
    deadline = time.monotonic() + timeout
    value = read()
    while not done(value):
        if hopeless(value):
            raise AssertionError(f"condition cannot be met:\n{describe(value)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout:.0f}s; last value:\n{describe(value)}")
        time.sleep(interval)
        value = read()
    return value


def scheduling_state(pod: k8s.V1Pod) -> str:
    """A pod in one line: where it is bound and what the scheduler last said about it."""
    condition = next((c for c in pod.status.conditions or () if c.type == "PodScheduled"), None)
    said = f"{condition.reason}: {condition.message}" if condition else "not looked at yet"
    return f"pod {pod.metadata.namespace}/{pod.metadata.name} node={pod.spec.node_name} ({said})"


def denied_by_rbac(pod: k8s.V1Pod) -> bool:
    """The scheduler's last attempt failed on a permission: no retry will change that."""
    condition = next((c for c in pod.status.conditions or () if c.type == "PodScheduled"), None)
    return (
        condition is not None
        and condition.reason == "SchedulerError"
        and "forbidden" in (condition.message or "")
    )
