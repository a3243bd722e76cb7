"""Watch events, as kubernetes.watch.Watch.stream yields them, through the watcher into an applier."""

from __future__ import annotations

import pytest

from agent.podwatch import PodWatcher
from tests.podwatch.conftest import NODE, allocation, pod


def event(kind: str, obj) -> dict:
    return {"type": kind, "object": obj, "raw_object": {}}


@pytest.fixture
def reports() -> list[tuple[str, str, str]]:
    return []


@pytest.fixture
def watcher(applier, reports) -> PodWatcher:
    return PodWatcher(
        core_api=None,
        node_name=NODE,
        applier=applier,
        report=lambda pod, reason, message: reports.append((pod.ref, reason, message)),
    )


def test_pod_lifecycle_applies_once_and_releases_on_completion(watcher, applier):
    watcher.start_from([])
    watcher.handle_event(event("ADDED", pod("u1")))
    watcher.handle_event(event("MODIFIED", pod("u1", started=1)))
    watcher.handle_event(event("MODIFIED", pod("u1", started=1, phase="Running")))
    watcher.handle_event(event("MODIFIED", pod("u1", started=1, phase="Succeeded")))
    watcher.handle_event(event("DELETED", pod("u1", started=1, phase="Succeeded")))

    assert applier.calls == [("apply", "u1"), ("release", "u1")]
    assert applier.held == {}


def test_deleted_running_pod_is_released(watcher, applier):
    watcher.handle_event(event("MODIFIED", pod("u1", started=1, phase="Running")))
    watcher.handle_event(event("MODIFIED", pod("u1", started=1, phase="Running", deleting=True)))
    assert applier.held.keys() == {"u1"}

    watcher.handle_event(event("DELETED", pod("u1", started=1, phase="Running", deleting=True)))

    assert applier.held == {}


def test_restart_reconciles_with_the_pod_list(applier, reports):
    applier.held = {
        "u1": allocation("u1"),
        "gone": allocation("gone", "gone"),
    }
    restarted = PodWatcher(None, NODE, applier, report=lambda *a: reports.append(a))

    restarted.start_from([pod("u1", started=1, phase="Running"), pod("u2", "new", started=1)])

    assert sorted(applier.calls) == [("apply", "u1"), ("apply", "u2"), ("release", "gone")]
    assert applier.held.keys() == {"u1", "u2"}
    # The same list again changes nothing: the watch is idempotent.
    applier.calls.clear()
    restarted.start_from([pod("u1", started=1, phase="Running"), pod("u2", "new", started=1)])
    assert applier.calls == []


def test_failed_apply_is_reported_and_retried_on_the_next_event(watcher, applier, reports):
    applier.failing = {"u1"}
    watcher.handle_event(event("MODIFIED", pod("u1", started=1)))
    assert reports == [("ml/trainer", "ApplyFailed", "pod ml/trainer: cpuset.cpus refused")]
    assert "u1" not in watcher.applied

    applier.failing = set()
    watcher.handle_event(event("MODIFIED", pod("u1", started=1, phase="Running")))

    assert applier.calls == [("apply", "u1"), ("apply", "u1")]
    assert applier.held.keys() == {"u1"}


def test_invalid_annotation_is_reported_once_and_nothing_is_applied(watcher, applier, reports):
    for _ in range(3):
        watcher.handle_event(event("MODIFIED", pod("u1", annotation='{"pod_uid": "u1"}', started=1)))

    assert applier.calls == []
    assert len(reports) == 1
    ref, reason, message = reports[0]
    assert (ref, reason) == ("ml/trainer", "InvalidAllocation")
    assert "gedge.io/allocation" in message and "missing field" in message


def test_bookmarks_and_errors_do_not_reach_the_applier(watcher, applier):
    watcher.handle_event({"type": "BOOKMARK", "object": pod("u1", started=1)})

    assert applier.calls == []


def test_field_selector_names_this_node(watcher):
    assert watcher.field_selector == "spec.nodeName=edge-1"


def test_what_is_applied_is_published_after_each_change(applier):
    published: list[tuple[str, ...]] = []

    def publish(held) -> None:
        published.append(tuple(a.name for a in held))

    watcher = PodWatcher(None, NODE, applier, on_change=publish)

    watcher.handle_event(event("MODIFIED", pod("u1", started=1)))
    watcher.handle_event(event("MODIFIED", pod("u1", started=1, phase="Running")))
    watcher.handle_event(event("MODIFIED", pod("u2", "second", started=1)))
    watcher.handle_event(event("DELETED", pod("u1", started=1)))

    assert published == [("trainer",), ("trainer", "second"), ("second",)]


def test_without_kubernetes_there_is_no_api(monkeypatch):
    from agent.podwatch import core_api

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)

    assert core_api(None) is None


def test_new_containers_of_any_pod_trigger_a_shared_pool_refresh(applier):
    refreshes: list[str] = []
    watcher = PodWatcher(None, NODE, applier, on_new_containers=lambda: refreshes.append("refresh"))

    watcher.handle_event(event("ADDED", pod("u1", annotation="", containers=2)))
    watcher.handle_event(event("MODIFIED", pod("u1", annotation="", containers=2, started=1)))
    watcher.handle_event(
        event("MODIFIED", pod("u1", annotation="", containers=2, started=1, phase="Running"))
    )
    watcher.handle_event(
        event("MODIFIED", pod("u1", annotation="", containers=2, started=2, phase="Running"))
    )
    watcher.handle_event(event("DELETED", pod("u1", annotation="", containers=2, started=2)))

    assert refreshes == ["refresh", "refresh"]


class PodList:
    """The one API call `resync` makes, over a fixed list of real V1Pod objects."""

    def __init__(self, pods) -> None:
        self.pods = pods
        self.selectors: list[str] = []

    def list_pod_for_all_namespaces(self, field_selector: str):
        from kubernetes import client as k8s

        self.selectors.append(field_selector)
        return k8s.V1PodList(items=list(self.pods), metadata=k8s.V1ListMeta(resource_version="7"))


def test_blocked_node_touches_nothing_tells_each_pod_once_then_applies_when_ready(applier, reports):
    applier.held = {"gone": allocation("gone", "gone")}
    blocked = ["kubelet's cgroup driver is unknown: no kubepods cgroup"]
    reconciled: list[set[str]] = []
    pods = [pod("u1", started=1, phase="Running"), pod("bad", "bad", annotation="{not json")]
    api = PodList(pods)
    watcher = PodWatcher(
        api,
        NODE,
        applier,
        report=lambda p, reason, message: reports.append((p.ref, reason, message)),
        reconcile_applier=reconciled.append,
        blocked=lambda: blocked[0],
    )
    watcher.start_from(pods)
    watcher.handle_event(event("MODIFIED", pod("u1", started=1, phase="Running")))
    watcher.handle_event(event("ADDED", pod("u2", "second", started=1)))
    watcher.start_from(pods)  # the next round lists again: still one Event per pod and reason

    assert applier.calls == [] and reconciled == []
    not_applied = [(ref, message) for ref, reason, message in reports if reason == "AllocationNotApplied"]
    assert not_applied == [
        ("ml/trainer", f"node cannot apply: {blocked[0]}"),
        ("ml/second", f"node cannot apply: {blocked[0]}"),
    ]
    assert [reason for _, reason, _ in reports].count("InvalidAllocation") == 1

    blocked[0] = None
    watcher.resync()
    assert api.selectors == [f"spec.nodeName={NODE}"]
    assert reconciled == [{"u1", "bad"}]
    assert sorted(applier.calls) == [("apply", "u1"), ("release", "gone")]
