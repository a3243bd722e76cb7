"""The agent's pod watch under Kubernetes: pods with spec.nodeName == this node, applied and released.

Each round lists the node's pods, reconciles, then watches from the list's
resourceVersion until the server ends the watch (or it expires, 410) and the
next round lists again; a round every `resync_s` at the latest retries what
failed. Every event goes through `handle_event`, the one code path tests feed.
"""

from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from agent.apply.contract import AllocationApplier, ApplyError
from agent.kube_events import node_ref, post_event
from agent.podwatch.decide import Action, Applied, Apply, Reject, Release, decide, reconcile
from agent.podwatch.grant import DEFAULT_GRANTING_SCHEDULERS
from agent.podwatch.pods import PodView, pod_view
from gedge_common.backoff import Backoff
from gedge_common.listwatch import ListWatch
from gedge_model import Allocation

log = logging.getLogger(__name__)

EventReporter = Callable[[PodView, str, str], None]
"""(pod, reason, message): how a refusal reaches the pod's owner."""
AppliedListener = Callable[[tuple[Allocation, ...]], object]
"""Told what is applied after every apply or release (the agent's reported state)."""


class PodObserver(Protocol):
    """Keeps the latest view of each pod (the applier's PodResolver reads it)."""

    def observe(self, pod: PodView) -> None: ...

    def forget(self, pod_uid: str) -> None: ...


class PodWatcher:
    """Applies and releases allocations of this node's pods through an AllocationApplier."""

    def __init__(
        self,
        core_api: Any,
        node_name: str,
        applier: AllocationApplier,
        *,
        report: EventReporter | None = None,
        on_change: AppliedListener | None = None,
        observer: PodObserver | None = None,
        reconcile_applier: Callable[[set[str]], object] | None = None,
        on_new_containers: Callable[[], object] | None = None,
        blocked: Callable[[], str | None] | None = None,
        resync_s: int = 300,
        retry_s: float = 5.0,
        schedulers: tuple[str, ...] = DEFAULT_GRANTING_SCHEDULERS,
    ) -> None:
        self._core = core_api
        self.schedulers = frozenset(schedulers)
        self.node_name = node_name
        self._applier = applier
        self._report = report or (lambda pod, reason, message: None)
        self._on_change = on_change
        self._observer = observer
        self._reconcile_applier = reconcile_applier
        self._seen: set[str] = set()
        self._on_new_containers = on_new_containers
        self._blocked = blocked or (lambda: None)
        self._blocked_reported: dict[str, str] = {}
        self._round_lock = threading.RLock()
        self._containers: dict[str, tuple[str, ...]] = {}
        self._applied: dict[str, Applied] = {}
        self._rejected: dict[str, str] = {}
        self._lock = threading.Lock()
        self._resync_s = resync_s
        self._retry_s = retry_s
        self._loop: ListWatch | None = None

    @property
    def field_selector(self) -> str:
        return f"spec.nodeName={self.node_name}"

    @property
    def applied(self) -> dict[str, Applied]:
        with self._lock:
            return dict(self._applied)

    # -- the one path every event takes -----------------------------------------------------------

    def start_from(self, pods: Iterable[Any]) -> None:
        """Reconcile with a full pod list: what the applier holds for pods that are gone is released.

        `reconcile_applier` (ApplyManager.reconcile) first finishes or undoes an
        operation a crash cut short, given the pods that still live here.
        """
        views = [pod_view(p) for p in pods]
        live = {v.uid for v in views if v.node_name == self.node_name and not v.finished}
        with self._round_lock:
            self._observe_all(views)
            blocked = self._blocked()
            if blocked is not None:
                # the applier cannot touch the node: nothing is reconciled, every pod waiting is told
                self._run_blocked(reconcile(views, self.node_name, {}, self.schedulers), blocked)
            else:
                self._blocked_reported.clear()
                if self._reconcile_applier is not None:
                    self._reconcile_applier(live)
                with self._lock:
                    known = {
                        a.pod_uid: self._applied.get(a.pod_uid, Applied(a)) for a in self._applier.applied()
                    }
                    self._applied = known
                    actions = reconcile(views, self.node_name, known, self.schedulers)
                self._run(actions)
            self._containers = {v.uid: v.container_ids for v in views if v.container_ids and not v.finished}

    def resync(self) -> None:
        """List this node's pods and reconcile now (the node became ready to apply)."""
        listed = self._core.list_pod_for_all_namespaces(field_selector=self.field_selector)
        self.start_from(listed.items)

    def _observe_all(self, views: list[PodView]) -> None:
        if self._observer is None:
            return
        present = {v.uid for v in views}
        for view in views:
            self._observer.observe(view)
        for uid in self._seen - present:
            self._observer.forget(uid)
        self._seen = present

    def handle_event(self, event: Mapping[str, Any]) -> None:
        """One event as kubernetes.watch.Watch.stream yields it: {"type": ..., "object": V1Pod}."""
        kind = event.get("type")
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            return
        pod = pod_view(event["object"])
        with self._round_lock:
            if self._observer is not None and kind != "DELETED":
                self._observer.observe(pod)
                self._seen.add(pod.uid)
            with self._lock:
                actions = decide(kind, pod, self.node_name, self._applied, self.schedulers)
            blocked = self._blocked()
            if blocked is None:
                self._run(actions)
            else:
                self._run_blocked(actions, blocked)
            if self._observer is not None and kind == "DELETED":
                self._observer.forget(pod.uid)
                self._seen.discard(pod.uid)
            if blocked is None:
                self._track_containers(kind, pod)

    def _run_blocked(self, actions: list[Action], reason: str) -> None:
        """While the node cannot be driven: each pod waiting for its allocation gets one Event per
        reason; releases wait for the resync that follows readiness (the checkpoint keeps them)."""
        for action in actions:
            if isinstance(action, Reject):
                self._reject(action)
            elif isinstance(action, Apply):
                uid = action.allocation.pod_uid
                if self._blocked_reported.get(uid) == reason:
                    continue
                self._blocked_reported[uid] = reason
                log.warning("allocation of %s not applied: %s", action.pod, reason)
                self._report(_view_of(action), "AllocationNotApplied", f"node cannot apply: {reason}")

    def _track_containers(self, kind: str, pod: PodView) -> None:
        """New containers of any pod start on every CPU; tell the applier so pinned CPUs stay exclusive."""
        if kind == "DELETED" or pod.finished:
            self._containers.pop(pod.uid, None)
            return
        before = self._containers.get(pod.uid, ())
        if pod.container_ids == before:
            return
        self._containers[pod.uid] = pod.container_ids
        if self._on_new_containers is not None and set(pod.container_ids) - set(before):
            self._on_new_containers()

    def _run(self, actions: list[Action]) -> None:
        changed = False
        for action in actions:
            if isinstance(action, Apply):
                changed |= self._apply(action)
            elif isinstance(action, Release):
                self._release(action)
                changed = True
            elif isinstance(action, Reject):
                self._reject(action)
        if changed and self._on_change is not None:
            self._on_change(tuple(self._applier.applied()))

    def _apply(self, action: Apply) -> bool:
        uid = action.allocation.pod_uid
        try:
            self._applier.apply(action.allocation)
        except ApplyError as exc:
            log.error("apply for %s failed: %s", action.pod, exc)
            pod = _view_of(action)
            self._report(pod, "ApplyFailed", str(exc))
            return False
        with self._lock:
            self._applied[uid] = Applied(action.allocation, action.container_ids)
            self._rejected.pop(uid, None)
        log.info("applied allocation of %s", action.pod)
        return True

    def _release(self, action: Release) -> None:
        self._applier.release(action.pod_uid)
        with self._lock:
            self._applied.pop(action.pod_uid, None)
            self._rejected.pop(action.pod_uid, None)
        log.info("released %s (%s)", action.pod, action.reason)

    def _reject(self, action: Reject) -> None:
        with self._lock:
            if self._rejected.get(action.pod.uid) == action.pod.annotation:
                return
            self._rejected[action.pod.uid] = action.pod.annotation or ""
        log.error("%s", action.message)
        self._report(action.pod, action.reason, action.message)

    # -- the Kubernetes loop ----------------------------------------------------------------------

    def _list_watch(self) -> ListWatch:
        if self._loop is None:
            self._loop = ListWatch(
                relist=self._relist,
                watch_call=self._core.list_pod_for_all_namespaces,
                watch_args={
                    "field_selector": self.field_selector,
                    "timeout_seconds": self._resync_s,
                    "_request_timeout": self._resync_s + 60,
                },
                handle=self.handle_event,
                backoff=Backoff(self._retry_s, self._retry_s),
                on_error=self._watch_failed,
                on_expired=lambda: log.info("pod watch on %s expired; listing again", self.node_name),
            )
        return self._loop

    def start(self) -> None:
        self._list_watch().start("pod-watch")

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None:
            self._loop.stop(timeout)

    def run(self) -> None:
        """List, then watch this node's pods until stop() (gedge_common.listwatch)."""
        self._list_watch().run()

    def _relist(self) -> str:
        listed = self._core.list_pod_for_all_namespaces(field_selector=self.field_selector)
        self.start_from(listed.items)
        return listed.metadata.resource_version

    def _watch_failed(self, exc: Exception, delay_s: float) -> None:
        log.warning(
            "pod watch on %s: %s; listing again soon",
            self.node_name,
            exc,
            exc_info=not isinstance(exc, ApplyError),
        )


def _view_of(action: Apply) -> PodView:
    a = action.allocation
    return PodView(a.pod_uid, a.namespace, a.name, a.node, None, False, None, 0, action.container_ids)


def node_event_reporter(core_api: Any, node_name: str) -> Callable[[str, str, bool], None]:
    """(reason, message, warning): an Event on this node's Node object (namespace default)."""

    def report(reason: str, message: str, warning: bool) -> None:
        kind = "Warning" if warning else "Normal"
        try:
            post_event(core_api, node_name, node_ref(node_name), reason, message, kind)
        except ApiException as exc:
            log.warning("could not record event %s on node %s: %s", reason, node_name, exc)

    return report


NODE_CONDITION = "GedgeAgentReady"
"""The Node condition the agent keeps: True while it can apply allocations, else False with why."""
STRATEGIC_MERGE = "application/strategic-merge-patch+json"
WRITE_TIMEOUT_S = 10.0
"""Bound of one condition write, so an API server that is away cannot hold the writer."""


def node_condition_writer(
    core_api: Any, node_name: str, condition_type: str = NODE_CONDITION
) -> Callable[[bool, str, str], bool]:
    """(status, reason, message) -> written: set this node's condition `condition_type` (a strategic
    merge of nodes/status, by condition type: kubelet's own conditions are kept). A refused or failed
    write is logged and answered False, never raised."""

    def write(ready: bool, reason: str, message: str) -> bool:
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        condition = {
            "type": condition_type,
            "status": "True" if ready else "False",
            "reason": reason,
            "message": message[:1024],
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }
        try:
            core_api.patch_node_status(
                node_name,
                {"status": {"conditions": [condition]}},
                _content_type=STRATEGIC_MERGE,
                _request_timeout=WRITE_TIMEOUT_S,
            )
        except (ApiException, OSError, urllib3.exceptions.HTTPError) as exc:
            log.warning("could not set condition %s on node %s: %s", condition_type, node_name, exc)
            return False
        return True

    return write


def kubernetes_event_reporter(core_api: Any, node_name: str) -> EventReporter:
    """Post a Warning Event on the pod, as kubectl describe shows it."""

    def report(pod: PodView, reason: str, message: str) -> None:
        involved = k8s.V1ObjectReference(
            kind="Pod", api_version="v1", name=pod.name, namespace=pod.namespace, uid=pod.uid
        )
        try:
            post_event(core_api, node_name, involved, reason, message, "Warning")
        except ApiException as exc:
            log.warning("could not record event %s on %s: %s", reason, pod.ref, exc)

    return report
