"""A stand-in for kubelet: moves the phases of pods bound to the e2e nodes, since nothing runs them.

It watches pods through the real API server and, for each pod bound to one of
its nodes, writes what a kubelet would: Running with a started container, then
(for restartPolicy Never/OnFailure) Succeeded or Failed with the container's
exit code. What a pod "does" is decided by an `outcome` function; the default
reads the first container's environment:

- `GEDGE_E2E_EXIT_CODE` (default 0): the exit code; non-zero makes the pod Failed
  (restartPolicy OnFailure is honoured as a kubelet would: restart count + 1, run again).
- `GEDGE_E2E_RUN_SECONDS` (default 0.5): how long the pod stays Running first.

Pods deleted gracefully are removed for good (grace period 0), as kubelet does
once containers are gone, so owners and caches see the deletion.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from kubernetes import client as k8s
from kubernetes import watch
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

EXIT_CODE_ENV = "GEDGE_E2E_EXIT_CODE"
RUN_SECONDS_ENV = "GEDGE_E2E_RUN_SECONDS"


@dataclass(frozen=True)
class Outcome:
    exit_code: int = 0
    run_seconds: float = 0.5


def outcome_from_env(pod: k8s.V1Pod) -> Outcome:
    env = {e.name: e.value for e in (pod.spec.containers[0].env or []) if e.value is not None}
    return Outcome(
        exit_code=int(env.get(EXIT_CODE_ENV, "0")),
        run_seconds=float(env.get(RUN_SECONDS_ENV, "0.5")),
    )


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class KubeletStandIn:
    """Drives pods bound to `nodes` through their phases from one watch thread and a timer per pod."""

    def __init__(
        self,
        api_client: k8s.ApiClient,
        nodes: Iterable[str],
        outcome: Callable[[k8s.V1Pod], Outcome] = outcome_from_env,
    ) -> None:
        self._core = k8s.CoreV1Api(api_client)
        self.nodes = set(nodes)
        self._outcome = outcome
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kubelet-stand-in", daemon=True)
        self._timers: list[threading.Timer] = []

    def start(self) -> KubeletStandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        for timer in self._timers:
            timer.cancel()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stopping.is_set():
            stream = watch.Watch()
            try:
                for event in stream.stream(self._core.list_pod_for_all_namespaces, timeout_seconds=5):
                    if self._stopping.is_set():
                        break
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._on_pod(event["object"])
            except Exception:
                if not self._stopping.is_set():
                    time.sleep(0.5)
            finally:
                stream.stop()

    def _on_pod(self, pod: k8s.V1Pod) -> None:
        if pod.spec.node_name not in self.nodes:
            return
        if pod.metadata.deletion_timestamp is not None:
            self._finish_deletion(pod)
            return
        with self._lock:
            if pod.metadata.uid in self._seen or pod.status.phase in ("Succeeded", "Failed"):
                return
            self._seen.add(pod.metadata.uid)
        self._start_pod(pod, restarts=0)

    def _finish_deletion(self, pod: k8s.V1Pod) -> None:
        with contextlib.suppress(ApiException):
            self._core.delete_namespaced_pod(
                pod.metadata.name,
                pod.metadata.namespace,
                grace_period_seconds=0,
                body=k8s.V1DeleteOptions(preconditions=k8s.V1Preconditions(uid=pod.metadata.uid)),
            )

    def _start_pod(self, pod: k8s.V1Pod, restarts: int) -> None:
        outcome = self._outcome(pod)
        started = _now()
        start_time = pod.status.start_time
        self._patch_status(
            pod,
            {
                "phase": "Running",
                "hostIP": "127.0.0.1",
                "podIP": "127.0.0.1",
                "startTime": start_time.strftime("%Y-%m-%dT%H:%M:%SZ") if start_time else started,
                "conditions": self._conditions(ready=True),
                "containerStatuses": [
                    self._container(c, {"running": {"startedAt": started}}, restarts, ready=True)
                    for c in pod.spec.containers
                ],
            },
        )
        if pod.spec.restart_policy not in ("Never", "OnFailure"):
            return
        timer = threading.Timer(outcome.run_seconds, self._finish_pod, (pod, outcome, started, restarts))
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def _finish_pod(self, pod: k8s.V1Pod, outcome: Outcome, started: str, restarts: int) -> None:
        if self._stopping.is_set():
            return
        if outcome.exit_code != 0 and pod.spec.restart_policy == "OnFailure":
            self._start_pod(pod, restarts + 1)
            return
        terminated = {
            "terminated": {
                "exitCode": outcome.exit_code,
                "reason": "Completed" if outcome.exit_code == 0 else "Error",
                "startedAt": started,
                "finishedAt": _now(),
            }
        }
        self._patch_status(
            pod,
            {
                "phase": "Succeeded" if outcome.exit_code == 0 else "Failed",
                "conditions": self._conditions(ready=False),
                "containerStatuses": [
                    self._container(c, terminated, restarts, ready=False) for c in pod.spec.containers
                ],
            },
        )

    @staticmethod
    def _conditions(ready: bool) -> list[dict[str, str]]:
        status = "True" if ready else "False"
        now = _now()
        return [
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": status, "lastTransitionTime": now},
            {"type": "Ready", "status": status, "lastTransitionTime": now},
        ]

    @staticmethod
    def _container(container: k8s.V1Container, state: dict, restarts: int, ready: bool) -> dict:
        return {
            "name": container.name,
            "image": container.image or "",
            "imageID": "",
            "ready": ready,
            "restartCount": restarts,
            "started": ready,
            "state": state,
        }

    def _patch_status(self, pod: k8s.V1Pod, status: dict) -> None:
        try:
            self._core.patch_namespaced_pod_status(
                pod.metadata.name, pod.metadata.namespace, {"status": status}
            )
        except ApiException as exc:
            if exc.status != 404:
                log.warning(
                    "kubelet stand-in: status of %s/%s not written: %s %s",
                    pod.metadata.namespace,
                    pod.metadata.name,
                    exc.status,
                    exc.body,
                )
