"""Kubernetes Events the agent posts (on its Node, or on a pod), as `kubectl describe` shows them."""

from __future__ import annotations

import datetime
from typing import Any

from kubernetes import client as k8s


def node_ref(node_name: str) -> k8s.V1ObjectReference:
    """This node's Node object as an Event's involvedObject (uid: the name, as kubelet does)."""
    return k8s.V1ObjectReference(kind="Node", api_version="v1", name=node_name, uid=node_name)


def post_event(
    core_api: Any, node_name: str, involved: k8s.V1ObjectReference, reason: str, message: str, kind: str
) -> None:
    """One Event (`kind` Warning or Normal) on `involved`, from gedge-agent on `node_name`, in the
    object's namespace (default for a Node); the message is cut to 1024 characters.
    Raises kubernetes ApiException when the API server refuses it."""
    namespace = involved.namespace or "default"
    now = datetime.datetime.now(datetime.UTC)
    event = k8s.CoreV1Event(
        metadata=k8s.V1ObjectMeta(generate_name=f"{involved.name}.", namespace=namespace),
        involved_object=involved,
        reason=reason,
        message=message[:1024],
        type=kind,
        source=k8s.V1EventSource(component="gedge-agent", host=node_name),
        first_timestamp=now,
        last_timestamp=now,
        count=1,
    )
    core_api.create_namespaced_event(namespace, event)
