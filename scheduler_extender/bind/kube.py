"""Bind under Kubernetes: one Binding that sets the pod's node and its allocation annotation.

Also the two other places the extender talks to the API server: reading a pod
that bind was not told about, and rebuilding held allocations after a restart
from the pods that carry the annotation (list, then watch).
"""

from __future__ import annotations

import datetime
import json
import threading
from collections.abc import Callable, Mapping
from typing import Any, cast

import structlog
import urllib3
from kubernetes.client import (
    CoreV1Api,
    CoreV1Event,
    V1Binding,
    V1EventSource,
    V1ObjectMeta,
    V1ObjectReference,
)
from kubernetes.client.exceptions import ApiException

from gedge_common.backoff import Backoff
from gedge_common.listwatch import ListWatch
from gedge_model import ANNOTATION, Allocation, ModelDecodeError
from scheduler_extender.bind.assume import AssumeCache
from scheduler_extender.bind.binder import BindError

log = structlog.get_logger("gedge.extender.kube")

COMPONENT = "gedge-extender"
API_TIMEOUT = (2.0, 4.0)
"""Connect and read timeouts; kube-scheduler gives a bind 5 s in all."""


def _consume(response: Any) -> bytes:
    """Read the whole body before the connection goes back to the pool.

    A body left unread is what the next request on that pooled connection would
    read as its status line: that request then fails although the server did its work.
    """
    try:
        return response.data
    finally:
        response.release_conn()


def _api_error(exc: ApiException) -> str:
    try:
        message = json.loads(exc.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return f"{exc.status} {message or exc.reason}"


class KubeBinder:
    """One Binding that carries the allocation: the pod is bound and annotated in one write.

    kube-apiserver copies a Binding's annotations onto the pod in the same update
    that sets spec.nodeName (pkg/registry/core/pod/storage BindingREST), so a bound
    pod always carries its allocation and a failed bind leaves nothing behind. The
    Binding names the pod UID, so a pod deleted and re-created under the same name
    is never bound with the old pod's devices (409, UID precondition).
    """

    def __init__(self, api: CoreV1Api) -> None:
        self._api = api

    def bind(self, allocation: Allocation) -> None:
        pod = f"{allocation.namespace}/{allocation.name}"
        binding = V1Binding(
            metadata=V1ObjectMeta(
                name=allocation.name,
                namespace=allocation.namespace,
                uid=allocation.pod_uid,
                annotations={ANNOTATION: allocation.to_annotation()},
            ),
            target=V1ObjectReference(api_version="v1", kind="Node", name=allocation.node),
        )
        try:
            # pods/NAME/binding, as kube-scheduler's own binder: this subresource keeps the Binding's
            # UID as a precondition (the legacy namespaces/NS/bindings wipes it). The client cannot
            # deserialize the Status the server returns; read it raw.
            _consume(
                self._api.create_namespaced_pod_binding(
                    allocation.name,
                    allocation.namespace,
                    binding,
                    _preload_content=False,
                    _request_timeout=API_TIMEOUT,
                )
            )
        except ApiException as exc:
            if exc.status == 409 and self._already_bound(allocation):
                return
            raise BindError(
                f"pod {pod}: binding to node {allocation.node} failed: {_api_error(exc)}"
            ) from None
        except urllib3.exceptions.HTTPError as exc:
            # The POST may have gone through before the connection failed: ask the server.
            if self._already_bound(allocation):
                log.warning("binding_answer_lost_but_bound", pod=pod, error=str(exc))
                return
            raise BindError(f"pod {pod}: binding to node {allocation.node} failed: {exc}") from None

    def _already_bound(self, allocation: Allocation) -> bool:
        """A retried bind whose first attempt went through: same pod, same node, same allocation."""
        try:
            pod = read_pod(self._api, allocation.namespace, allocation.name)
        except (ApiException, urllib3.exceptions.HTTPError):
            return False
        meta = pod.get("metadata") or {}
        return (
            meta.get("uid") == allocation.pod_uid
            and (pod.get("spec") or {}).get("nodeName") == allocation.node
            and (meta.get("annotations") or {}).get(ANNOTATION) == allocation.to_annotation()
        )


def read_pod(api: CoreV1Api, namespace: str, name: str) -> dict[str, Any]:
    """The pod as the API server serializes it (raw JSON, as kube-scheduler would send it)."""
    response = api.read_namespaced_pod(name, namespace, _preload_content=False, _request_timeout=API_TIMEOUT)
    return json.loads(_consume(response))


class KubeEvents:
    """Warning Events on pods, so `kubectl describe pod` shows why the extender refused it."""

    def __init__(self, api: CoreV1Api, instance: str) -> None:
        self._api = api
        self._instance = instance
        self._sent: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def warn(self, pod: dict[str, Any], reason: str, message: str) -> None:
        meta = pod.get("metadata") or {}
        name, namespace, uid = meta.get("name"), meta.get("namespace") or "default", meta.get("uid")
        if not name:
            return
        with self._lock:
            key = (str(uid or name), message)
            if key in self._sent:
                return
            if len(self._sent) > 10_000:
                self._sent.clear()
            self._sent.add(key)
        now = datetime.datetime.now(datetime.UTC)
        event = CoreV1Event(
            metadata=V1ObjectMeta(generate_name=f"{name}.", namespace=namespace),
            involved_object=V1ObjectReference(
                api_version="v1", kind="Pod", name=name, namespace=namespace, uid=uid
            ),
            reason=reason,
            message=message[:1024],
            type="Warning",
            source=V1EventSource(component=COMPONENT),
            reporting_component=COMPONENT,
            reporting_instance=self._instance,
            first_timestamp=now,
            last_timestamp=now,
            count=1,
        )
        try:
            _consume(
                self._api.create_namespaced_event(
                    namespace, event, _preload_content=False, _request_timeout=API_TIMEOUT
                )
            )
        except ApiException as exc:
            log.warning("event_not_created", pod=f"{namespace}/{name}", error=_api_error(exc))


def allocation_of(pod: dict[str, Any]) -> Allocation | None:
    """The allocation a live, bound pod holds; None when it holds none (or no longer)."""
    meta = pod.get("metadata") or {}
    text = (meta.get("annotations") or {}).get(ANNOTATION)
    node = (pod.get("spec") or {}).get("nodeName")
    phase = (pod.get("status") or {}).get("phase")
    if not text or not node or phase in ("Succeeded", "Failed"):
        return None
    allocation = Allocation.from_annotation(text)
    if allocation.pod_uid != meta.get("uid") or allocation.node != node:
        raise ModelDecodeError(
            f"{ANNOTATION}: names pod {allocation.pod_uid} on {allocation.node}, "
            f"but the pod is {meta.get('uid')} on {node}"
        )
    return allocation


def _watch_failed(exc: Exception, delay_s: float) -> None:
    """A dropped connection must not end the watch for good: logged, then the backoff."""
    error = _api_error(exc) if isinstance(exc, ApiException) else str(exc)
    log.warning("pod_watch_failed", error=error, retry_s=delay_s)


class PodAllocationWatch:
    """Keeps the assume cache holding every allocation recorded on a bound pod (list + watch)."""

    def __init__(
        self,
        api: CoreV1Api,
        cache: AssumeCache,
        *,
        watch_timeout_s: int = 300,
        on_bad_annotation: Callable[[dict[str, Any], str], None] | None = None,
    ) -> None:
        self._api = api
        self._cache = cache
        self._on_bad = on_bad_annotation
        self._synced = threading.Event()
        self._loop = ListWatch(
            relist=self.relist,
            watch_call=api.list_pod_for_all_namespaces,
            watch_args={
                "field_selector": "spec.nodeName!=",
                "allow_watch_bookmarks": True,
                "timeout_seconds": watch_timeout_s,
                "deserialize": False,
            },
            handle=self._event,
            backoff=Backoff(1.0, 30.0),
            on_error=_watch_failed,
            resume=True,
        )

    def start(self) -> None:
        self._loop.start("pod-allocation-watch")

    def wait_synced(self, timeout: float) -> bool:
        return self._synced.wait(timeout)

    def stop(self) -> None:
        self._loop.stop(timeout=5)

    def relist(self) -> str:
        """Hold what every bound pod records and drop what no pod records any more; returns the RV."""
        # _preload_content=False hands back the raw urllib3 response, not the annotated V1PodList
        response = cast(
            "urllib3.BaseHTTPResponse",
            self._api.list_pod_for_all_namespaces(
                field_selector="spec.nodeName!=", _preload_content=False, _request_timeout=(2.0, 30.0)
            ),
        )
        try:
            body = json.loads(response.data)
        finally:
            response.release_conn()
        seen = []
        for pod in body.get("items") or []:
            allocation = self._apply(pod)
            if allocation is not None:
                seen.append(allocation.pod_uid)
        self._cache.retain(seen)
        self._synced.set()
        return str((body.get("metadata") or {}).get("resourceVersion") or "")

    def _apply(self, pod: dict[str, Any], deleted: bool = False) -> Allocation | None:
        uid = (pod.get("metadata") or {}).get("uid")
        try:
            allocation = None if deleted else allocation_of(pod)
        except ModelDecodeError as exc:
            log.warning("bad_allocation_annotation", pod=uid, error=str(exc))
            if self._on_bad is not None:
                self._on_bad(pod, str(exc))
            allocation = None
        if allocation is not None:
            self._cache.observe(allocation)
        elif uid and self._cache.held_by(uid) is not None and (pod.get("spec") or {}).get("nodeName"):
            self._cache.release(uid)
        return allocation

    def _event(self, event: Mapping[str, Any]) -> None:
        if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
            self._apply(event.get("object") or {}, deleted=event["type"] == "DELETED")
