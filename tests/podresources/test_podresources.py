"""kubelet's PodResources v1 API over a real unix-socket gRPC server: listing, comparing, served ids."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from agent.deviceplugin.pods import PendingPod, allocated_annotation, candidates, preferred
from agent.podresources import (
    KubeletReconciler,
    KubeletServedSource,
    PodResourcesClient,
    PodResourcesError,
    assigned_from,
    compare,
)
from gedge_model import Allocation, DeviceGrant
from protos.k8s.podresources.v1 import api_pb2, api_pb2_grpc

NODE = "edge-1"
GPU = "gedge.io/gpu"


class Kubelet(api_pb2_grpc.PodResourcesListerServicer):
    """kubelet's side of the socket, serving a fixed table of pods."""

    def __init__(self) -> None:
        self.pods: list[api_pb2.PodResources] = []
        self.fail = False

    def List(self, request, context):
        if self.fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, "kubelet is restarting")
        return api_pb2.ListPodResourcesResponse(pod_resources=self.pods)

    def Get(self, request, context):
        for pod in self.pods:
            if (pod.namespace, pod.name) == (request.pod_namespace, request.pod_name):
                return api_pb2.GetPodResourcesResponse(pod_resources=pod)
        context.abort(grpc.StatusCode.NOT_FOUND, f"pod {request.pod_namespace}/{request.pod_name} not found")


def pod_resources(name: str, devices: dict[str, dict[str, list[str]]], cpus=()) -> api_pb2.PodResources:
    containers = [
        api_pb2.ContainerResources(
            name=container,
            devices=[
                api_pb2.ContainerDevices(resource_name=r, device_ids=ids) for r, ids in by_resource.items()
            ],
        )
        for container, by_resource in devices.items()
    ]
    return api_pb2.PodResources(name=name, namespace="ml", containers=containers, cpu_ids=list(cpus))


@pytest.fixture
def kubelet(tmp_path: Path) -> Iterator[tuple[Kubelet, PodResourcesClient]]:
    service = Kubelet()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    api_pb2_grpc.add_PodResourcesListerServicer_to_server(service, server)
    socket_path = tmp_path / "pod-resources" / "kubelet.sock"
    socket_path.parent.mkdir()
    server.add_insecure_port(f"unix://{socket_path}")
    server.start()
    client = PodResourcesClient(socket_path, timeout_s=10)
    yield service, client
    client.close()
    server.stop(None)


def allocation(uid: str, name: str, gpus: list[str], cpus=()) -> Allocation:
    return Allocation(
        uid, "ml", name, NODE, devices=tuple(DeviceGrant(GPU, g) for g in gpus), cpus=tuple(cpus)
    )


def test_list_and_get_read_what_kubelet_assigned(kubelet) -> None:
    service, client = kubelet
    service.pods = [
        pod_resources("train", {"init": {GPU: ["GPU-a"]}, "main": {GPU: ["GPU-a", "GPU-b"]}}, cpus=[3])
    ]
    listed = client.list()
    assert list(listed) == [("ml", "train")]
    assert listed["ml", "train"].ids(GPU) == {"GPU-a", "GPU-b"}
    assert listed["ml", "train"].cpus == {3}
    assert client.get("ml", "train") == listed["ml", "train"]
    assert client.get("ml", "absent") is None
    service.fail = True
    with pytest.raises(PodResourcesError, match=r"List: kubelet is restarting"):
        client.list()


def test_compare_names_every_difference_and_nothing_else() -> None:
    ours = [allocation("u1", "ok", ["GPU-a"]), allocation("u2", "moved", ["GPU-b"], cpus=[2])]
    assigned = {
        ("ml", "ok"): assigned_from(pod_resources("ok", {"main": {GPU: ["GPU-a"]}})),
        ("ml", "moved"): assigned_from(pod_resources("moved", {"main": {GPU: ["GPU-c"]}})),
        ("ml", "stray"): assigned_from(pod_resources("stray", {"main": {GPU: ["GPU-d"]}})),
        ("ml", "static"): assigned_from(pod_resources("static", {}, cpus=[2])),
        ("ml", "plain"): assigned_from(pod_resources("plain", {"main": {"example.com/foo": ["x"]}})),
    }
    found = {(m.name, m.message) for m in compare(ours, assigned)}
    assert found == {
        ("moved", "kubelet assigned gedge.io/gpu ['GPU-c'], the allocation grants ['GPU-b']"),
        ("stray", "kubelet assigned ['gedge.io/gpu'], the agent knows no gedge.io/allocation for it"),
        (
            "static",
            "kubelet's CPU manager gave it CPUs [2] pinned for ['ml/moved']: set cpuManagerPolicy none",
        ),
    }


def test_reconciler_reports_each_mismatch_once(kubelet) -> None:
    service, client = kubelet
    service.pods = [pod_resources("moved", {"main": {GPU: ["GPU-c"]}})]
    reported = []
    checker = KubeletReconciler(client, lambda: [allocation("u2", "moved", ["GPU-b"])], reported.append)
    assert [m.uid for m in checker.check()] == ["u2"]
    assert checker.check() == []
    assert len(reported) == 1 and "GPU-c" in reported[0].message
    gone = KubeletReconciler(PodResourcesClient("/nonexistent/kubelet.sock"), list, reported.append)
    assert gone.check() == []


class Pending:
    def __init__(self, pods) -> None:
        self.pods = pods
        self.marked = []

    def pending_pods(self):
        return self.pods

    def mark_allocated(self, pod, resource, ids):
        self.marked.append((pod.ref, resource, list(ids)))


def test_ids_kubelet_already_gave_a_pod_are_not_handed_out_again(kubelet) -> None:
    """An init container's GPU was allocated but its mark on the pod was lost (agent restart): the
    next container of the pod gets the other granted GPU, not the same one twice."""
    service, client = kubelet
    grant = allocation("u1", "train", ["GPU-a", "GPU-b"])
    pod = PendingPod("u1", "ml", "train", grant.to_annotation(), requests={GPU: (1, 1)})
    service.pods = [pod_resources("train", {"init": {GPU: ["GPU-a"]}})]
    source = KubeletServedSource(Pending([pod]), client)
    (seen,) = source.pending_pods()
    assert seen.marks == {allocated_annotation(GPU): "GPU-a"}
    claim, ids = preferred(candidates([seen], GPU, NODE), GPU, ["GPU-a", "GPU-b", "GPU-c"], [], 1)
    assert ids == ("GPU-b",) and claim.pod.uid == "u1"
    source.mark_allocated(seen, GPU, ids)
    assert source.source.marked == [("ml/train", GPU, ["GPU-b"])]


def test_of_two_racing_pods_only_the_one_kubelet_admits_is_a_candidate(kubelet) -> None:
    """Both pods wait for a GPU of the same kind; kubelet knows only the newer one (it is admitting
    it): GetPreferredAllocation steers to the newer pod's grant, not the older pod's by creation order."""
    service, client = kubelet
    older = PendingPod("u1", "ml", "older", allocation("u1", "older", ["GPU-a"]).to_annotation(), created=1.0)
    newer = PendingPod("u2", "ml", "newer", allocation("u2", "newer", ["GPU-b"]).to_annotation(), created=2.0)
    plain = KubeletServedSource(Pending([older, newer]), PodResourcesClient("/nonexistent/kubelet.sock"))
    claim, ids = preferred(candidates(plain.pending_pods(), GPU, NODE), GPU, ["GPU-a", "GPU-b"], [], 1)
    assert (claim.pod.name, ids) == ("older", ("GPU-a",))  # without kubelet's word: creation order
    service.pods = [pod_resources("newer", {})]
    source = KubeletServedSource(Pending([older, newer]), client)
    claim, ids = preferred(candidates(source.pending_pods(), GPU, NODE), GPU, ["GPU-a", "GPU-b"], [], 1)
    assert (claim.pod.name, ids) == ("newer", ("GPU-b",))
