"""The agent's cross-check of a pod against its grant: scheduler, QoS, CPU and device counts."""

from __future__ import annotations

from kubernetes import client as k8s

from agent.podwatch import PodWatcher
from agent.podwatch.decide import Apply, Reject, decide
from agent.podwatch.pods import pod_view
from gedge_model import Allocation, DeviceGrant
from tests.podwatch.conftest import NODE, allocation, pod

GPU = "gedge.io/gpu"
VF = "gedge.io/sriov-vf"


def gpu_grant(uid: str, gpus: int = 2, cpus: tuple[int, ...] = ()) -> Allocation:
    devices = tuple(DeviceGrant(GPU, f"GPU-{i}") for i in range(gpus))
    return Allocation(pod_uid=uid, namespace="ml", name="trainer", node=NODE, devices=devices, cpus=cpus)


def only_action(view) -> object:
    actions = decide("MODIFIED", view, NODE, {})
    assert len(actions) == 1
    return actions[0]


def test_a_grant_that_fits_its_pod_is_applied():
    grant = gpu_grant("u1", gpus=2, cpus=(2, 3))
    view = pod_view(pod("u1", alloc=grant, started=1))

    assert view.qos_class == "Guaranteed"
    assert only_action(view) == Apply("ml/trainer", grant, view.container_ids)


def test_a_hand_written_grant_on_a_best_effort_pod_of_the_default_scheduler_is_refused():
    # The hole found on a real node: CPU 1 exclusively for a BestEffort pod the default scheduler placed.
    grant = allocation("u1", cpus=(1,))
    view = pod_view(pod("u1", alloc=grant, started=1, scheduler="default-scheduler", qos="BestEffort"))

    action = only_action(view)

    assert isinstance(action, Reject) and action.reason == "GrantMismatch"
    assert action.message.startswith("pod ml/trainer: gedge.io/allocation on a pod scheduled by")
    assert "'default-scheduler'" in action.message and "gedge-scheduler" in action.message


def test_exclusive_cpus_need_a_guaranteed_pod_with_as_many_cpus():
    grant = allocation("u1", cpus=(1, 2))
    burstable = pod_view(pod("u1", alloc=grant, started=1, qos="BestEffort", requests={}))
    wrong_count = pod_view(pod("u1", alloc=grant, started=1, requests={"cpu": "3"}))
    fractional = pod_view(pod("u1", alloc=grant, started=1, requests={"cpu": "1500m"}))

    burstable_action, count_action, fraction_action = map(only_action, (burstable, wrong_count, fractional))

    assert isinstance(burstable_action, Reject)
    assert "to a BestEffort pod; exclusive CPUs need a Guaranteed pod" in burstable_action.message
    assert isinstance(count_action, Reject)
    assert "grants 2 exclusive CPU(s) but the pod requests cpu 3" in count_action.message
    assert isinstance(fraction_action, Reject)
    assert "requests cpu 1.5" in fraction_action.message


def test_device_counts_must_equal_the_requests_per_resource():
    grant = gpu_grant("u1", gpus=2)
    more = pod_view(pod("u1", alloc=grant, started=1, requests={GPU: "1"}))
    other = pod_view(pod("u1", alloc=grant, started=1, requests={GPU: "2", VF: "1"}))
    none = pod_view(pod("u1", alloc=grant, started=1, requests={}))

    messages = [only_action(v).message for v in (more, other, none)]

    assert "grants 2 gedge.io/gpu but the pod requests 1" in messages[0]
    assert "grants 0 gedge.io/sriov-vf but the pod requests 1" in messages[1]
    assert "grants 2 gedge.io/gpu but the pod requests 0" in messages[2]


def test_counts_are_taken_as_kube_scheduler_takes_them_sidecars_and_init_peaks():
    grant = gpu_grant("u1", gpus=3)
    base = pod("u1", alloc=grant, started=1, requests={GPU: "1"})
    two = k8s.V1ResourceRequirements(requests={GPU: "2"}, limits={GPU: "2"})
    one = k8s.V1ResourceRequirements(limits={GPU: "1"})
    # One app GPU plus a two-GPU sidecar: 3. A plain init container after the sidecar: 1 + 2, a peak of 3.
    base.spec.init_containers = [
        k8s.V1Container(name="sidecar", restart_policy="Always", resources=two),
        k8s.V1Container(name="warmup", resources=one),
    ]

    view = pod_view(base)

    assert dict(view.requests)[GPU] == 3
    assert isinstance(only_action(view), Apply)
    base.spec.init_containers[1].resources = k8s.V1ResourceRequirements(limits={GPU: "4"})
    assert "the pod requests 6" in only_action(pod_view(base)).message


def test_the_schedulers_that_grant_are_configurable():
    grant = gpu_grant("u1", gpus=1)
    view = pod_view(pod("u1", alloc=grant, started=1, scheduler="default-scheduler"))

    assert isinstance(only_action(view), Reject)
    assert isinstance(decide("MODIFIED", view, NODE, {}, ("default-scheduler",))[0], Apply)


def test_the_watcher_reports_a_mismatch_once_as_grant_mismatch_and_applies_nothing(applier):
    reports: list[tuple[str, str, str]] = []
    watcher = PodWatcher(
        None, NODE, applier, report=lambda p, reason, message: reports.append((p.ref, reason, message))
    )
    forged = pod("u1", alloc=allocation("u1", cpus=(1,)), started=1, qos="BestEffort", requests={})

    for _ in range(3):
        watcher.handle_event({"type": "MODIFIED", "object": forged})

    assert applier.calls == []
    assert [(ref, reason) for ref, reason, _ in reports] == [("ml/trainer", "GrantMismatch")]
