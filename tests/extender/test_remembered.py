"""Filter keeps only what a later bind needs of a pod, bounded in count, bytes and time."""

from __future__ import annotations

import gc

from gedge_model import NodeState
from scheduler_extender.node_source import StaticNodeSource
from scheduler_extender.placement.request import parse_pod_request
from scheduler_extender.verbs import Extender, RememberedRequests
from scheduler_extender.wire import BindingArgs, ExtenderArgs
from tests.extender.conftest import RecordingBinder, pod
from tests.support.synthetic import edge_box


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _big_pod(i: int) -> dict:
    body = pod(f"big-{i}", uid=f"uid-{i}", limits={"gedge.io/gpu": "1"})
    body["metadata"]["annotations"] = {"example.com/blob": "x" * (2 * 1024 * 1024)}
    return body


def test_filtered_pods_are_not_kept_whole_and_bind_still_finds_them() -> None:
    source = StaticNodeSource({"edge-1": NodeState(edge_box("edge-1", gpus=2))})
    binder = RecordingBinder()
    extender = Extender(source, binder)
    for i in range(40):
        body = extender.filter(ExtenderArgs(pod=_big_pod(i), node_names=("edge-1",), nodes=None))
        assert body["NodeNames"] == ["edge-1"]
    gc.collect()
    assert len(extender.remembered) == 40
    assert extender.remembered.bytes < 40 * 1024, "a few hundred bytes a pod, not megabytes"
    assert extender.bind(BindingArgs("big-39", "ml", "uid-39", "edge-1")) == {"Error": ""}
    assert [a.pod_uid for a in binder.bound] == ["uid-39"]
    assert len(extender.remembered) == 39, "a bound pod is forgotten"


def test_bounds_in_count_bytes_and_time() -> None:
    clock = Clock()
    one = parse_pod_request(pod("a", uid="uid-a"))
    size = RememberedRequests.size(one)
    remembered = RememberedRequests(max_pods=3, max_bytes=size * 10, ttl_s=60, clock=clock)
    for name in "abcd":
        remembered.put(parse_pod_request(pod(name, uid=f"uid-{name}")))
    assert remembered.get("uid-a") is None and remembered.get("uid-d") is not None
    assert len(remembered) == 3 and remembered.bytes == 3 * size

    long_name = parse_pod_request(pod("n" * (size * 5), uid="uid-long"))
    remembered.put(long_name)
    assert remembered.bytes <= size * 10 and remembered.get("uid-long") is long_name
    assert remembered.get("uid-b") is None, "the oldest made room in bytes"

    huge = parse_pod_request(pod("n" * (size * 20), uid="uid-huge"))
    remembered.put(huge)
    assert remembered.get("uid-huge") is None, "one entry over the whole byte budget is not kept"

    clock.now = 61
    assert remembered.get("uid-long") is None and len(remembered) == 0 and remembered.bytes == 0


def test_a_bind_after_the_memory_expired_says_so_without_an_api_server() -> None:
    clock = Clock()
    source = StaticNodeSource({"edge-1": NodeState(edge_box("edge-1"))})
    extender = Extender(source, RecordingBinder(), remembered=RememberedRequests(ttl_s=10, clock=clock))
    extender.filter(ExtenderArgs(pod=pod("late", uid="uid-late"), node_names=("edge-1",), nodes=None))
    clock.now = 11
    reply = extender.bind(BindingArgs("late", "ml", "uid-late", "edge-1"))
    assert reply["Error"] == "pod ml/late (uid-late): never seen in filter, and no API server to ask"


def test_a_bind_after_the_memory_expired_reads_the_pod() -> None:
    clock = Clock()
    source = StaticNodeSource({"edge-1": NodeState(edge_box("edge-1"))})
    reads = []

    def reader(namespace: str, name: str) -> dict:
        reads.append((namespace, name))
        return pod(name, uid="uid-read", limits={"gedge.io/gpu": "1"})

    extender = Extender(
        source, RecordingBinder(), pod_reader=reader, remembered=RememberedRequests(ttl_s=10, clock=clock)
    )
    assert extender.bind(BindingArgs("read", "ml", "uid-read", "edge-1")) == {"Error": ""}
    assert reads == [("ml", "read")]
