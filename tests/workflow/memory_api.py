"""WorkflowApi kept in memory, for controller tests without an API server.

It stands only at the API boundary and keeps what the controller relies on
from a real server: names unique per namespace (409 on a second create),
resourceVersions that grow, a watch that replays changes after a
resourceVersion (and can be made to expire with 410), label selectors,
owner-reference cascade on Workflow deletion. `MemoryKubelet` moves pod
phases the way tests/e2e/kubelet.py does on a real server.
"""

from __future__ import annotations

import copy
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from scheduler_extender.workflow.kube import AlreadyExists, ApiError, NotFound, WatchExpired


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _matches(obj: dict[str, Any], selector: str) -> bool:
    labels = obj["metadata"].get("labels") or {}
    for term in filter(None, selector.split(",")):
        key, equals, value = term.partition("=")
        if (equals and labels.get(key) != value) or (not equals and key not in labels):
            return False
    return True


class InMemoryApi:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._rv = 0
        self._oldest_watchable = 0
        self.workflows: dict[tuple[str, str], dict[str, Any]] = {}
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.config_maps: dict[tuple[str, str], dict[str, Any]] = {}
        self.events: list[tuple[int, str, str, dict[str, Any]]] = []
        self.pod_creations: list[str] = []
        self.refuse_pod: Callable[[dict[str, Any]], str | None] = lambda pod: None
        self.logs: dict[str, str] = {}
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        """Deployments, Services and PersistentVolumeClaims by (kind, namespace, name)."""
        self.replaced: list[tuple[str, str]] = []
        self.collect_garbage = True
        """Delete what a deleted Workflow owns, as Kubernetes' garbage collector does (off: none runs)."""

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _record(self, namespace: str, kind: str, pod: dict[str, Any]) -> None:
        self.events.append((int(pod["metadata"]["resourceVersion"]), namespace, kind, copy.deepcopy(pod)))
        self._cond.notify_all()

    # workflows
    def create_workflow(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._cond:
            name = body["metadata"]["name"]
            if (namespace, name) in self.workflows:
                raise AlreadyExists(f"workflows {name} already exists")
            obj = copy.deepcopy(body)
            obj["metadata"].update(
                namespace=namespace, uid=str(uuid.uuid4()), resourceVersion=self._next_rv()
            )
            obj.pop("status", None)
            self.workflows[(namespace, name)] = obj
            return copy.deepcopy(obj)

    def get_workflow(self, namespace: str, name: str) -> dict[str, Any]:
        with self._cond:
            if (namespace, name) not in self.workflows:
                raise NotFound(f"workflows {name} not found")
            return copy.deepcopy(self.workflows[(namespace, name)])

    def list_workflows(self, namespace: str) -> list[dict[str, Any]]:
        with self._cond:
            return [copy.deepcopy(w) for (ns, _), w in self.workflows.items() if ns == namespace]

    def delete_workflow(self, namespace: str, name: str) -> None:
        with self._cond:
            workflow = self.workflows.pop((namespace, name), None)
            if workflow is None:
                raise NotFound(f"workflows {name} not found")
            uid = workflow["metadata"]["uid"]
            if not self.collect_garbage:
                return
            for key, obj in list(self.objects.items()):
                if any(r.get("uid") == uid for r in obj["metadata"].get("ownerReferences") or []):
                    del self.objects[key]
            for key, pod in list(self.pods.items()):
                if any(r.get("uid") == uid for r in pod["metadata"].get("ownerReferences") or []):
                    del self.pods[key]
                    pod["metadata"]["resourceVersion"] = self._next_rv()
                    self._record(key[0], "DELETED", pod)

    def patch_workflow_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        with self._cond:
            if (namespace, name) not in self.workflows:
                raise NotFound(f"workflows {name} not found")
            obj = self.workflows[(namespace, name)]
            obj["status"] = copy.deepcopy(status)
            obj["metadata"]["resourceVersion"] = self._next_rv()
            self._cond.notify_all()
            return copy.deepcopy(obj)

    # pods
    def create_pod(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._cond:
            name = body["metadata"]["name"]
            if (namespace, name) in self.pods:
                raise AlreadyExists(f'pods "{name}" already exists')
            refused = self.refuse_pod(body)
            if refused:
                raise ApiError(403, refused)
            pod = copy.deepcopy(body)
            pod["metadata"].update(
                namespace=namespace,
                uid=str(uuid.uuid4()),
                resourceVersion=self._next_rv(),
                creationTimestamp=_now(),
            )
            pod["status"] = {"phase": "Pending"}
            self.pods[(namespace, name)] = pod
            self.pod_creations.append(name)
            self._record(namespace, "ADDED", pod)
            return copy.deepcopy(pod)

    def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        with self._cond:
            if (namespace, name) not in self.pods:
                raise NotFound(f'pods "{name}" not found')
            return copy.deepcopy(self.pods[(namespace, name)])

    def list_pods(self, namespace: str, selector: str) -> tuple[list[dict[str, Any]], str]:
        with self._cond:
            items = [
                copy.deepcopy(p)
                for (ns, _), p in self.pods.items()
                if ns == namespace and _matches(p, selector)
            ]
            return items, str(self._rv)

    def delete_pod(self, namespace: str, name: str) -> None:
        with self._cond:
            pod = self.pods.pop((namespace, name), None)
            if pod is not None:
                pod["metadata"]["resourceVersion"] = self._next_rv()
                self._record(namespace, "DELETED", pod)

    def update_pod_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        with self._cond:
            pod = self.pods.get((namespace, name))
            if pod is None:
                return
            pod["status"] = {**pod["status"], **copy.deepcopy(status)}
            pod["metadata"]["resourceVersion"] = self._next_rv()
            self._record(namespace, "MODIFIED", pod)

    def expire_watches(self) -> None:
        """Every watch from before now gets 410 Gone, as after etcd compaction."""
        with self._cond:
            self._oldest_watchable = self._rv
            self._cond.notify_all()

    def watch_pods(
        self, namespace: str, selector: str, resource_version: str, timeout_seconds: int
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        since = int(resource_version or 0)
        deadline = time.monotonic() + timeout_seconds
        while True:
            with self._cond:
                if since < self._oldest_watchable:
                    raise WatchExpired(f"too old resource version: {since} ({self._oldest_watchable})")
                pending = [
                    (kind, pod)
                    for rv, ns, kind, pod in self.events
                    if rv > since and ns == namespace and _matches(pod, selector)
                ]
                if not pending:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return
                    self._cond.wait(timeout=min(remaining, 0.2))
                    continue
            for kind, pod in pending:
                since = int(pod["metadata"]["resourceVersion"])
                yield kind, copy.deepcopy(pod)

    def read_pod_log(self, namespace: str, name: str, container: str | None = None) -> str:
        with self._cond:
            if (namespace, name) not in self.pods:
                raise NotFound(f'pods "{name}" not found')
            return self.logs.get(name, "")

    def get_config_map(self, namespace: str, name: str) -> dict[str, Any]:
        with self._cond:
            if (namespace, name) not in self.config_maps:
                raise NotFound(f'configmaps "{name}" not found')
            return copy.deepcopy(self.config_maps[(namespace, name)])

    # deployments, services, claims: what the server does with them that the controller relies on
    def _create(self, kind: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._cond:
            name = body["metadata"]["name"]
            if (kind, namespace, name) in self.objects:
                raise AlreadyExists(f'{kind.lower()}s "{name}" already exists')
            obj = copy.deepcopy(body)
            obj["metadata"].update(
                namespace=namespace,
                uid=str(uuid.uuid4()),
                resourceVersion=self._next_rv(),
                creationTimestamp=_now(),
                generation=1,
            )
            obj["status"] = {}
            if kind == "Service":
                obj["spec"]["clusterIP"] = f"10.96.0.{len(self.objects) + 10}"
            self.objects[(kind, namespace, name)] = obj
            self._cond.notify_all()
            return copy.deepcopy(obj)

    def _get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        with self._cond:
            if (kind, namespace, name) not in self.objects:
                raise NotFound(f'{kind.lower()}s "{name}" not found')
            return copy.deepcopy(self.objects[(kind, namespace, name)])

    def _replace(self, kind: str, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._cond:
            current = self.objects.get((kind, namespace, name))
            if current is None:
                raise NotFound(f'{kind.lower()}s "{name}" not found')
            if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
                raise AlreadyExists(f"{kind} {name}: the object has been modified")
            if kind == "Service" and body["spec"].get("clusterIP") != current["spec"]["clusterIP"]:
                raise ApiError(422, f"Service {name}: spec.clusterIP: Invalid value: field is immutable")
            obj = copy.deepcopy(body)
            obj["metadata"].update(
                uid=current["metadata"]["uid"],
                creationTimestamp=current["metadata"]["creationTimestamp"],
                resourceVersion=self._next_rv(),
                generation=current["metadata"]["generation"] + (obj["spec"] != current["spec"]),
            )
            obj["status"] = current.get("status") or {}
            self.objects[(kind, namespace, name)] = obj
            self.replaced.append((kind, name))
            self._cond.notify_all()
            return copy.deepcopy(obj)

    def _delete(self, kind: str, namespace: str, name: str) -> None:
        with self._cond:
            self.objects.pop((kind, namespace, name), None)

    def create_deployment(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._create("Deployment", namespace, body)

    def get_deployment(self, namespace: str, name: str) -> dict[str, Any]:
        return self._get("Deployment", namespace, name)

    def list_deployments(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        with self._cond:
            return [
                copy.deepcopy(o)
                for (kind, ns, _), o in self.objects.items()
                if kind == "Deployment" and ns == namespace and _matches(o, selector)
            ]

    def replace_deployment(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._replace("Deployment", namespace, name, body)

    def annotate(self, kind: str, namespace: str, name: str, annotations: dict[str, str | None]) -> None:
        with self._cond:
            obj = self.objects.get((kind, namespace, name))
            if obj is None:
                raise NotFound(f'{kind.lower()}s "{name}" not found')
            current = obj["metadata"].setdefault("annotations", {})
            for key, value in annotations.items():
                if value is None:
                    current.pop(key, None)
                else:
                    current[key] = value
            obj["metadata"]["resourceVersion"] = self._next_rv()

    def delete_deployment(self, namespace: str, name: str) -> None:
        self._delete("Deployment", namespace, name)

    def create_service(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._create("Service", namespace, body)

    def get_service(self, namespace: str, name: str) -> dict[str, Any]:
        return self._get("Service", namespace, name)

    def replace_service(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._replace("Service", namespace, name, body)

    def delete_service(self, namespace: str, name: str) -> None:
        self._delete("Service", namespace, name)

    def create_claim(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._create("PersistentVolumeClaim", namespace, body)

    def get_claim(self, namespace: str, name: str) -> dict[str, Any]:
        return self._get("PersistentVolumeClaim", namespace, name)

    def delete_claim(self, namespace: str, name: str) -> None:
        self._delete("PersistentVolumeClaim", namespace, name)

    def rollout(self, namespace: str, name: str, ready: int | None = None) -> None:
        """What the Deployment controller and kubelet together report once `ready` replicas
        (default: all) of the current template are Ready."""
        with self._cond:
            obj = self.objects[("Deployment", namespace, name)]
            wanted = obj["spec"]["replicas"]
            count = wanted if ready is None else ready
            obj["status"] = {
                "observedGeneration": obj["metadata"]["generation"],
                "replicas": wanted,
                "updatedReplicas": count,
                "readyReplicas": count,
                "availableReplicas": count,
            }
            obj["metadata"]["resourceVersion"] = self._next_rv()
            self._cond.notify_all()


class MemoryKubelet:
    """Runs each new pod for `run_seconds`, then ends it with the exit code `outcome(pod)` gives.

    Like a kubelet it keeps going whether or not the controller is up, so a
    pod can finish while nobody watches.
    """

    def __init__(
        self,
        api: InMemoryApi,
        outcome: Callable[[dict[str, Any]], int | None] = lambda pod: 0,
        run_seconds: float = 0.05,
        outputs: Callable[[dict[str, Any]], str | None] = lambda pod: None,
        serve_ready: bool = True,
    ) -> None:
        self.api = api
        self.outcome = outcome
        self.run_seconds = run_seconds
        self.outputs = outputs
        """The termination message the pod's main container leaves (what the wrapper would write)."""
        self.serve_ready = serve_ready
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="memory-kubelet")
        self._started: dict[str, float] = {}

    def __enter__(self) -> MemoryKubelet:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(0.01):
            with self.api._cond:
                pods = [(ns, p) for (ns, _), p in self.api.pods.items()]
                behind = [
                    (ns, name)
                    for (kind, ns, name), o in self.api.objects.items()
                    if kind == "Deployment"
                    and (o.get("status") or {}).get("observedGeneration") != o["metadata"]["generation"]
                ]
            if self.serve_ready:
                for ns, name in behind:
                    self.api.rollout(ns, name)
            for ns, pod in pods:
                name = pod["metadata"]["name"]
                phase = pod["status"].get("phase")
                if phase == "Pending":
                    self._started[name] = time.monotonic()
                    self.api.update_pod_status(
                        ns,
                        name,
                        {
                            "phase": "Running",
                            "startTime": _now(),
                            "containerStatuses": [
                                {"name": "main", "state": {"running": {"startedAt": _now()}}}
                            ],
                        },
                    )
                elif phase == "Running" and time.monotonic() - self._started.get(name, 0) >= self.run_seconds:
                    code = self.outcome(pod)
                    if code is None:
                        continue
                    self.api.update_pod_status(
                        ns,
                        name,
                        {
                            "phase": "Succeeded" if code == 0 else "Failed",
                            "containerStatuses": [
                                {
                                    "name": "main",
                                    "state": {
                                        "terminated": {
                                            "exitCode": code,
                                            "reason": "Completed" if code == 0 else "Error",
                                            "finishedAt": _now(),
                                            **(
                                                {"message": message}
                                                if (message := self.outputs(pod)) is not None
                                                else {}
                                            ),
                                        }
                                    },
                                }
                            ],
                        },
                    )
