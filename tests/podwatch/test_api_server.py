"""The Kubernetes side for real: the pod watch loop and the device plugins' pod source on a live API server.

Uses the e2e harness (etcd + kube-apiserver on loopback); no kubelet runs, so
pod status is written through the status subresource as kubelet would.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest
from kubernetes import client as k8s

from agent.deviceplugin import DevicePluginManager, KubernetesPendingPodSource
from agent.podwatch import PodWatcher, core_api, kubernetes_event_reporter
from gedge_model import ANNOTATION, Allocation, DeviceGrant
from protos.k8s.deviceplugin.v1beta1 import api_pb2
from tests.deviceplugin.conftest import VF1, KubeletStandIn, host_root, make_topology, plugin_dir  # noqa: F401
from tests.e2e.conftest import control_plane, e2e_bin_dir, kube_api, namespace  # noqa: F401
from tests.podwatch.conftest import RecordingApplier

pytestmark = pytest.mark.e2e
MERGE = "application/merge-patch+json"


@pytest.fixture
def core(control_plane) -> Iterator[k8s.CoreV1Api]:  # noqa: F811
    api = core_api(str(control_plane.kubeconfig))
    assert api is not None
    yield api
    api.api_client.close()


@pytest.fixture
def node_name() -> str:
    return f"edge-{uuid.uuid4().hex[:6]}"


def eventually(check: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("not reached in time")
        time.sleep(0.1)


def make_pod(core, ns: str, name: str, node: str | None, grants=(), annotate: bool = True) -> k8s.V1Pod:
    """A pod as gedge-scheduler places it: its device requests are what its grant holds."""
    counts: dict[str, str] = {}
    for grant in grants:
        counts[grant.resource] = str(int(counts.get(grant.resource, "0")) + 1)
    resources = k8s.V1ResourceRequirements(requests=counts or None, limits=counts or None)
    created = core.create_namespaced_pod(
        ns,
        k8s.V1Pod(
            metadata=k8s.V1ObjectMeta(name=name),
            spec=k8s.V1PodSpec(
                node_name=node,
                scheduler_name="gedge-scheduler",
                containers=[k8s.V1Container(name="main", image="pause", resources=resources)],
            ),
        ),
    )
    if annotate:
        allocation = Allocation(
            pod_uid=created.metadata.uid, namespace=ns, name=name, node=node or "", devices=tuple(grants)
        )
        body = {"metadata": {"annotations": {ANNOTATION: allocation.to_annotation()}}}
        created = core.patch_namespaced_pod(name, ns, body, _content_type=MERGE)
    return created


def run_containers(core, pod: k8s.V1Pod) -> None:
    status = {
        "phase": "Running",
        "containerStatuses": [
            {
                "name": "main",
                "image": "pause",
                "imageID": "",
                "ready": True,
                "restartCount": 0,
                "containerID": f"containerd://{pod.metadata.uid}",
                "state": {"running": {}},
            }
        ],
    }
    core.patch_namespaced_pod_status(
        pod.metadata.name, pod.metadata.namespace, {"status": status}, _content_type=MERGE
    )


@pytest.fixture
def watcher(core, node_name) -> Iterator[tuple[PodWatcher, RecordingApplier]]:
    applier = RecordingApplier()
    applier.held["gone"] = Allocation(pod_uid="gone", namespace="ml", name="gone", node=node_name)
    running = PodWatcher(
        core, node_name, applier, report=kubernetes_event_reporter(core, node_name), resync_s=30
    )
    running.start()
    yield running, applier
    running.stop()


def test_pod_watch_applies_running_pods_and_releases_deleted_ones(core, namespace, node_name, watcher):  # noqa: F811
    _, applier = watcher
    eventually(lambda: ("release", "gone") in applier.calls)

    pod = make_pod(core, namespace, "trainer", node_name)
    elsewhere = make_pod(core, namespace, "elsewhere", "edge-other")
    run_containers(core, pod)
    run_containers(core, elsewhere)
    eventually(lambda: ("apply", pod.metadata.uid) in applier.calls)
    assert applier.held[pod.metadata.uid].name == "trainer"

    core.delete_namespaced_pod("trainer", namespace, grace_period_seconds=0)
    eventually(lambda: ("release", pod.metadata.uid) in applier.calls)
    assert ("apply", elsewhere.metadata.uid) not in applier.calls


def test_pod_watch_posts_an_event_for_an_invalid_allocation(core, namespace, node_name, watcher):  # noqa: F811
    _, applier = watcher
    core.create_namespaced_pod(
        namespace,
        k8s.V1Pod(
            metadata=k8s.V1ObjectMeta(name="bad", annotations={ANNOTATION: '{"pod_uid": "x"'}),
            spec=k8s.V1PodSpec(node_name=node_name, containers=[k8s.V1Container(name="main", image="pause")]),
        ),
    )

    def invalid_events():
        return [e for e in core.list_namespaced_event(namespace).items if e.reason == "InvalidAllocation"]

    eventually(invalid_events)
    event = invalid_events()[0]
    assert (event.involved_object.name, event.type) == ("bad", "Warning")
    assert "pod " + namespace + "/bad: gedge.io/allocation" in event.message
    assert all(kind != "apply" for kind, _ in applier.calls)


def test_pending_pod_source_lists_this_nodes_pending_pods_and_marks_them(core, namespace, node_name):  # noqa: F811
    grant = DeviceGrant(resource="gedge.io/sriov-vf", id=VF1, pci_address=VF1)
    wanted = make_pod(core, namespace, "wanted", node_name, [grant])
    make_pod(core, namespace, "plain", node_name, annotate=False)
    make_pod(core, namespace, "other-node", "edge-other", [grant])
    running = make_pod(core, namespace, "running", node_name, [grant])
    run_containers(core, running)
    source = KubernetesPendingPodSource(core, node_name)

    pods = source.pending_pods()
    assert [p.name for p in pods] == ["wanted"]

    source.mark_allocated(pods[0], "gedge.io/sriov-vf", [VF1])
    annotations = core.read_namespaced_pod("wanted", namespace).metadata.annotations
    assert annotations["gedge.io/allocated-sriov-vf"] == VF1
    assert ANNOTATION in annotations
    assert wanted.metadata.uid == pods[0].uid


def test_allocate_through_kubelet_marks_the_pod_on_the_api_server(
    core,
    namespace,  # noqa: F811
    node_name,
    host_root,  # noqa: F811
    plugin_dir,  # noqa: F811
):
    topology = replace(make_topology(), node_name=node_name)
    grant = DeviceGrant(resource="gedge.io/sriov-vf", id=VF1, pci_address=VF1)
    make_pod(core, namespace, "trainer", topology.node_name, [grant])
    kubelet = KubeletStandIn(plugin_dir).start()
    manager = DevicePluginManager(
        lambda: topology,
        KubernetesPendingPodSource(core, topology.node_name),
        plugin_dir,
        host_root=host_root,
    )
    manager.start()
    try:
        endpoint = kubelet.wait_registrations(6)["gedge.io/sriov-vf"].endpoint
        request = api_pb2.AllocateRequest(
            container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=[VF1])]
        )
        response = kubelet.plugin(endpoint).Allocate(request, timeout=10)
    finally:
        manager.stop()
        kubelet.stop()

    assert dict(response.container_responses[0].envs) == {"PCIDEVICE_GEDGE_IO_SRIOV_VF": VF1}
    marked = core.read_namespaced_pod("trainer", namespace).metadata.annotations
    assert marked["gedge.io/allocated-sriov-vf"] == VF1
