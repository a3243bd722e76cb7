"""The assume cache: no device or CPU held twice, expiry, and settling from the source of truth."""

from __future__ import annotations

import threading

import pytest

from gedge_model import Allocation, DeviceGrant
from scheduler_extender.bind.assume import AssumeCache, AssumeConflict


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def alloc(uid: str, node: str = "n1", gpus: tuple[str, ...] = (), cpus: tuple[int, ...] = ()) -> Allocation:
    return Allocation(
        pod_uid=uid,
        namespace="ml",
        name=f"pod-{uid}",
        node=node,
        devices=tuple(DeviceGrant("gedge.io/gpu", g) for g in gpus),
        cpus=cpus,
    )


def test_a_device_is_never_reserved_twice_on_a_node() -> None:
    cache = AssumeCache()
    cache.reserve(alloc("a", gpus=("GPU-0",)))
    with pytest.raises(AssumeConflict, match=r"gedge.io/gpu GPU-0 on n1 already held by pod ml/pod-a"):
        cache.reserve(alloc("b", gpus=("GPU-0", "GPU-1")))
    cache.reserve(alloc("c", node="n2", gpus=("GPU-0",)))
    assert [a.pod_uid for a in cache.held("n1")] == ["a"]


def test_cpus_are_exclusive_too() -> None:
    cache = AssumeCache()
    cache.reserve(alloc("a", cpus=(0, 16)))
    with pytest.raises(AssumeConflict, match=r"cpus \[16\]"):
        cache.reserve(alloc("b", cpus=(16, 17)))


def test_same_pod_cannot_hold_two_different_allocations() -> None:
    cache = AssumeCache()
    cache.reserve(alloc("a", gpus=("GPU-0",)))
    cache.reserve(alloc("a", gpus=("GPU-0",)))
    with pytest.raises(AssumeConflict, match="already holds an allocation on n1"):
        cache.reserve(alloc("a", gpus=("GPU-1",)))


def test_reservation_expires_unless_committed() -> None:
    clock = Clock()
    cache = AssumeCache(reserve_ttl=30, bound_ttl=300, clock=clock)
    cache.reserve(alloc("lost", gpus=("GPU-0",)))
    cache.reserve(alloc("bound", gpus=("GPU-1",)))
    cache.commit("bound")
    version = cache.version("n1")
    clock.now += 31
    assert [a.pod_uid for a in cache.held("n1")] == ["bound"]
    assert cache.version("n1") > version
    clock.now += 300
    assert cache.held("n1") == ()


def test_a_bound_pod_the_node_reports_is_settled_so_its_release_frees_at_once() -> None:
    cache = AssumeCache(bound_ttl=300)
    cache.reserve(alloc("bound", gpus=("GPU-0",)))
    cache.reserve(alloc("pending", gpus=("GPU-1",)))
    cache.settle("n1", {"bound", "pending"})
    assert [a.pod_uid for a in cache.held("n1")] == ["bound", "pending"], "not bound yet: still held"
    cache.commit("bound")
    cache.observe(alloc("watched", gpus=("GPU-2",)))
    version = cache.version("n1")
    cache.settle("n1", {"bound", "watched"})
    assert [a.pod_uid for a in cache.held("n1")] == ["pending", "watched"]
    assert cache.version("n1") > version
    cache.reserve(alloc("next", gpus=("GPU-0",)))


def test_observed_allocations_stay_until_released_or_relisted_away() -> None:
    clock = Clock()
    cache = AssumeCache(reserve_ttl=30, clock=clock)
    cache.observe(alloc("seen", gpus=("GPU-0",)))
    cache.reserve(alloc("binding", gpus=("GPU-1",)))
    clock.now += 10_000
    assert [a.pod_uid for a in cache.held("n1")] == ["seen"]
    cache.reserve(alloc("binding", gpus=("GPU-1",)))
    cache.retain([])
    assert [a.pod_uid for a in cache.held("n1")] == ["binding"]
    assert cache.release("binding") is not None
    assert cache.release("binding") is None


def test_observe_moves_a_pod_between_nodes() -> None:
    cache = AssumeCache()
    cache.observe(alloc("a", node="n1", gpus=("GPU-0",)))
    cache.observe(alloc("a", node="n2", gpus=("GPU-0",)))
    assert cache.held("n1") == ()
    assert cache.held_by("a").node == "n2"


def test_racing_reservations_for_one_device_let_exactly_one_through() -> None:
    cache = AssumeCache()
    winners: list[str] = []
    losers: list[str] = []
    start = threading.Barrier(16)

    def contend(uid: str) -> None:
        start.wait()
        try:
            cache.reserve(alloc(uid, gpus=("GPU-last",)))
            winners.append(uid)
        except AssumeConflict:
            losers.append(uid)

    threads = [threading.Thread(target=contend, args=(f"p{i}",)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    assert len(losers) == 15
