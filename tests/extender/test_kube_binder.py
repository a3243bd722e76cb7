"""KubeBinder, pod reads, Events and the allocation rebuild, through the official client against a
loopback API server (tests/extender/fake_apiserver.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from kubernetes.client import ApiClient, Configuration, CoreV1Api

from gedge_model import ANNOTATION, Allocation, DeviceGrant
from scheduler_extender.bind.assume import AssumeCache
from scheduler_extender.bind.binder import BindError
from scheduler_extender.bind.kube import KubeBinder, KubeEvents, PodAllocationWatch, read_pod
from tests.extender.fake_apiserver import FakeApiServer
from tests.extender.servers import ServerThread


@pytest.fixture
def api_server() -> Iterator[tuple[FakeApiServer, CoreV1Api]]:
    fake = FakeApiServer()
    with ServerThread(fake.app()) as server:
        config = Configuration(host=server.url)
        with ApiClient(config) as client:
            yield fake, CoreV1Api(client)


def allocation(uid: str, name: str, node: str = "gpu-1", gpu: str = "GPU-aaa") -> Allocation:
    return Allocation(
        pod_uid=uid,
        namespace="ml",
        name=name,
        node=node,
        devices=(DeviceGrant("gedge.io/gpu", gpu, "0000:3b:00.0", 0),),
        cpus=(2, 3),
        numa_nodes=(0,),
        cost=3.5,
        worst_level="PHB",
    )


def test_bind_is_one_binding_that_carries_the_allocation(api_server: tuple[FakeApiServer, CoreV1Api]) -> None:
    fake, api = api_server
    fake.add_pod("ml", "train", "uid-1")
    chosen = allocation("uid-1", "train")
    KubeBinder(api).bind(chosen)
    pod = fake.pods[("ml", "train")]
    assert pod["spec"]["nodeName"] == "gpu-1"
    assert Allocation.from_annotation(pod["metadata"]["annotations"][ANNOTATION]) == chosen
    assert [c[0] for c in fake.calls] == ["POST"]
    binding = json.loads(fake.calls[0][2])
    assert binding["target"] == {"apiVersion": "v1", "kind": "Node", "name": "gpu-1"}
    assert binding["metadata"]["uid"] == "uid-1"
    assert binding["metadata"]["annotations"] == {ANNOTATION: chosen.to_annotation()}


def test_binds_in_a_row_over_one_pooled_connection_all_go_through(
    api_server: tuple[FakeApiServer, CoreV1Api],
) -> None:
    """Every response body is read before its connection is reused: nothing leaks into the next answer."""
    fake, api = api_server
    binder = KubeBinder(api)
    for n in range(12):
        fake.add_pod("ml", f"train-{n}", f"uid-{n}")
        binder.bind(allocation(f"uid-{n}", f"train-{n}", gpu=f"GPU-{n}"))
    assert [c[0] for c in fake.calls] == ["POST"] * 12
    assert all(fake.pods[("ml", f"train-{n}")]["spec"]["nodeName"] == "gpu-1" for n in range(12))


def test_a_refused_binding_leaves_no_annotation(api_server: tuple[FakeApiServer, CoreV1Api]) -> None:
    fake, api = api_server
    fake.add_pod("ml", "train", "uid-1", spec={"nodeName": "elsewhere"})
    with pytest.raises(
        BindError, match=r"pod ml/train: binding to node gpu-1 failed: 409 .*already assigned"
    ):
        KubeBinder(api).bind(allocation("uid-1", "train"))
    assert ANNOTATION not in fake.pods[("ml", "train")]["metadata"]["annotations"]


def test_a_retried_bind_that_already_went_through_succeeds(
    api_server: tuple[FakeApiServer, CoreV1Api],
) -> None:
    fake, api = api_server
    fake.add_pod("ml", "train", "uid-1")
    chosen = allocation("uid-1", "train")
    KubeBinder(api).bind(chosen)
    KubeBinder(api).bind(chosen)
    pod = fake.pods[("ml", "train")]
    assert pod["spec"]["nodeName"] == "gpu-1"
    assert Allocation.from_annotation(pod["metadata"]["annotations"][ANNOTATION]) == chosen


def test_a_recreated_pod_is_not_bound_with_the_old_pods_devices(
    api_server: tuple[FakeApiServer, CoreV1Api],
) -> None:
    fake, api = api_server
    fake.add_pod("ml", "train", "uid-new")
    with pytest.raises(BindError, match=r"binding to node gpu-1 failed: 409 Precondition failed: UID"):
        KubeBinder(api).bind(allocation("uid-old", "train"))
    assert "nodeName" not in fake.pods[("ml", "train")]["spec"]
    assert ANNOTATION not in fake.pods[("ml", "train")]["metadata"]["annotations"]


def test_read_pod_returns_the_servers_json(api_server: tuple[FakeApiServer, CoreV1Api]) -> None:
    fake, api = api_server
    fake.add_pod("ml", "train", "uid-1")
    assert read_pod(api, "ml", "train")["metadata"]["uid"] == "uid-1"


def test_warning_event_names_the_pod_once(api_server: tuple[FakeApiServer, CoreV1Api]) -> None:
    fake, api = api_server
    pod = fake.add_pod("ml", "train", "uid-1")
    events = KubeEvents(api, instance="extender-0")
    events.warn(pod, "InvalidAccelerationRequest", "pod ml/train: gedge.io/topology-policy: bad")
    events.warn(pod, "InvalidAccelerationRequest", "pod ml/train: gedge.io/topology-policy: bad")
    assert len(fake.events) == 1
    event = fake.events[0]
    assert event["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "train",
        "namespace": "ml",
        "uid": "uid-1",
    }
    assert (event["type"], event["reason"]) == ("Warning", "InvalidAccelerationRequest")
    assert "gedge.io/topology-policy" in event["message"]


def test_relist_rebuilds_held_allocations_from_bound_pods(
    api_server: tuple[FakeApiServer, CoreV1Api],
) -> None:
    fake, api = api_server
    bound = fake.add_pod("ml", "a", "uid-a", spec={"nodeName": "gpu-1"}, status={"phase": "Running"})
    bound["metadata"]["annotations"][ANNOTATION] = allocation("uid-a", "a").to_annotation()
    done = fake.add_pod("ml", "b", "uid-b", spec={"nodeName": "gpu-1"}, status={"phase": "Succeeded"})
    done["metadata"]["annotations"][ANNOTATION] = allocation("uid-b", "b", gpu="GPU-bbb").to_annotation()
    bad = fake.add_pod("ml", "c", "uid-c", spec={"nodeName": "gpu-1"}, status={"phase": "Running"})
    bad["metadata"]["annotations"][ANNOTATION] = '{"pod_uid": "uid-c"}'
    pending = fake.add_pod("ml", "d", "uid-d")
    pending["metadata"]["annotations"][ANNOTATION] = allocation("uid-d", "d", gpu="GPU-ddd").to_annotation()
    cache = AssumeCache()
    cache.observe(allocation("uid-gone", "gone", gpu="GPU-zzz"))
    complaints: list[tuple[str, str]] = []
    watch = PodAllocationWatch(
        api, cache, on_bad_annotation=lambda pod, msg: complaints.append((pod["metadata"]["name"], msg))
    )
    assert watch.relist() == "42"
    assert [a.pod_uid for a in cache.held("gpu-1")] == ["uid-a"]
    assert cache.held_by("uid-gone") is None
    assert complaints and complaints[0][0] == "c" and "gedge.io/allocation" in complaints[0][1]
