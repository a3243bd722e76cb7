"""The pod watch's decisions, one event at a time and over a full pod list."""

from __future__ import annotations

from agent.podwatch.decide import Applied, Apply, Reject, Release, decide, reconcile
from agent.podwatch.pods import pod_view
from tests.podwatch.conftest import NODE, allocation, pod


def test_bound_pod_is_applied_once_all_its_containers_exist():
    waiting = pod_view(pod("u1", containers=2, started=1))
    ready = pod_view(pod("u1", containers=2, started=2))

    assert decide("MODIFIED", waiting, NODE, {}) == []
    assert decide("MODIFIED", ready, NODE, {}) == [
        Apply("ml/trainer", allocation("u1"), ("containerd://u1-0", "containerd://u1-1"))
    ]


def test_applying_again_happens_only_when_containers_or_allocation_change():
    ready = pod_view(pod("u1", started=1))
    held = {"u1": Applied(allocation("u1"), ready.container_ids)}

    assert decide("MODIFIED", ready, NODE, held) == []
    # A container restarted under a new runtime id: its cgroup is new, so apply again.
    assert decide("MODIFIED", ready, NODE, {"u1": Applied(allocation("u1"), ("containerd://old",))}) == [
        Apply("ml/trainer", allocation("u1"), ready.container_ids)
    ]
    changed = pod_view(pod("u1", started=1, alloc=allocation("u1", cpus=(4, 5))))
    assert [type(a) for a in decide("MODIFIED", changed, NODE, held)] == [Apply]


def test_finished_or_deleted_pods_are_released_if_held():
    held = {"u1": Applied(allocation("u1"))}

    for phase in ("Succeeded", "Failed"):
        assert decide("MODIFIED", pod_view(pod("u1", phase=phase, started=1)), NODE, held) == [
            Release("ml/trainer", "u1", f"pod {phase}")
        ]
    assert decide("DELETED", pod_view(pod("u1", started=1)), NODE, held) == [
        Release("ml/trainer", "u1", "pod deleted")
    ]
    assert decide("DELETED", pod_view(pod("u1")), NODE, {}) == []


def test_a_pod_shutting_down_keeps_its_allocation_until_it_is_gone():
    held = {"u1": Applied(allocation("u1"))}

    assert decide("MODIFIED", pod_view(pod("u1", started=1, deleting=True)), NODE, held) == []


def test_pods_without_the_annotation_are_left_alone():
    plain = pod_view(pod("u1", annotation="", started=1))

    assert decide("ADDED", plain, NODE, {}) == []


def test_invalid_annotations_are_rejected_with_the_pod_named_before_containers_start():
    cases = {
        "not json": "{broken",
        "wrong node": allocation("u1", node="edge-9").to_annotation(),
        "wrong pod": allocation("u-other").to_annotation(),
        "bad cpus": '{"pod_uid": "u1", "namespace": "ml", "name": "t", "node": "edge-1", "cpus": [1, 1]}',
    }
    expected = {
        "not json": "not JSON",
        "wrong node": "for node 'edge-9', not 'edge-1'",
        "wrong pod": "for pod uid u-other, not u1",
        "bad cpus": "cpus must be distinct",
    }
    for case, text in cases.items():
        actions = decide("ADDED", pod_view(pod("u1", annotation=text)), NODE, {})
        assert len(actions) == 1 and isinstance(actions[0], Reject), case
        assert actions[0].message.startswith("pod ml/trainer"), case
        assert expected[case] in actions[0].message, case


def test_reconcile_applies_live_pods_and_releases_what_belongs_to_gone_ones():
    live = pod_view(pod("u1", started=1))
    done = pod_view(pod("u2", "done", phase="Succeeded", started=1))
    held = {
        "u1": Applied(allocation("u1")),
        "u2": Applied(allocation("u2", "done")),
        "u3": Applied(allocation("u3", "vanished")),
    }

    actions = reconcile([live, done], NODE, held)

    assert actions == [
        Apply("ml/trainer", allocation("u1"), live.container_ids),
        Release("ml/done", "u2", "pod Succeeded"),
        Release("ml/vanished", "u3", "pod gone"),
    ]
