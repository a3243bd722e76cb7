"""Bind made real: GrpcAgentApplier -> the agent's Apply RPC -> ApplyManager -> real cgroup v1 cpusets.

The cache sees the applied allocation come back on the watch stream.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.apply import ApplyManager, CgroupDriver, CgroupVersion, PodRuntime, QosClass, StaticPodResolver
from gedge_model import Allocation
from scheduler_extender.cache import (
    AgentApplyError,
    AgentTarget,
    CacheOptions,
    ClusterCache,
    GrpcAgentApplier,
)
from tests.apply.helpers import (
    build_pod_cgroups,
    new_container_id,
    new_pod_uid,
    start_in_cgroup,
    stop,
)
from tests.grpc.agents import AgentHost

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")

NODE = "edge-apply"


def test_apply_and_release_reach_real_cpusets_and_the_cache(
    agent_host: AgentHost, cgroup_root: Path, tmp_path: Path
) -> None:
    uid, container = new_pod_uid(), new_container_id()
    (path,) = build_pod_cgroups(cgroup_root, CgroupDriver.CGROUPFS, QosClass.GUARANTEED, uid, [container])
    process = start_in_cgroup(path)
    manager = ApplyManager(
        cgroup_root=cgroup_root,
        cgroup_driver=CgroupDriver.CGROUPFS,
        cgroup_version=CgroupVersion.V1,
        checkpoint_path=tmp_path / "checkpoint.json",
        resolver=StaticPodResolver({uid: PodRuntime(qos=QosClass.GUARANTEED, container_ids=(container,))}),
    )
    agent = agent_host.start_agent("/", NODE, applier=manager)
    cache = ClusterCache([AgentTarget(NODE, f"127.0.0.1:{agent.port}")], CacheOptions(backoff_initial_s=0.1))
    applier = GrpcAgentApplier(cache, timeout_s=20)
    try:
        cache.start()
        assert cache.wait_for(lambda n: n[NODE].fresh, timeout=20)
        generation = cache.node(NODE).state.generation
        allocation = Allocation(uid, "ml", "trainer", NODE, cpus=(1,))

        applier.apply(NODE, allocation)
        assert os.sched_getaffinity(process.pid) == {1}
        assert cache.wait_for(lambda n: n[NODE].state.allocations == (allocation,), timeout=10)
        assert cache.node(NODE).state.generation == generation + 1
        assert cache.node(NODE).state.used_cpus() == {1}

        with pytest.raises(AgentApplyError) as info:
            applier.apply(NODE, Allocation(new_pod_uid(), "ml", "other", NODE, cpus=(1,)))
        assert info.value.node == NODE and "CPU 1 is held by pod ml/trainer" in str(info.value)

        applier.release(NODE, uid)
        assert os.sched_getaffinity(process.pid) == {0, 1}
        assert cache.wait_for(lambda n: n[NODE].state.allocations == (), timeout=10)
        assert manager.applied() == ()
    finally:
        applier.close()
        cache.stop()
        agent_host.stop_agent(agent)
        stop(process)


def test_applier_names_the_node_it_cannot_reach() -> None:
    cache = ClusterCache([AgentTarget("edge-gone", "127.0.0.1:1")])
    cache.start()
    applier = GrpcAgentApplier(cache, timeout_s=2)
    try:
        with pytest.raises(AgentApplyError, match="node edge-gone: Apply failed: UNAVAILABLE"):
            applier.apply("edge-gone", Allocation(new_pod_uid(), "ml", "p", "edge-gone"))
        with pytest.raises(AgentApplyError, match="node edge-unknown: no agent address known"):
            applier.release("edge-unknown", new_pod_uid())
        with pytest.raises(AgentApplyError, match="is for node edge-x"):
            applier.apply("edge-gone", Allocation(new_pod_uid(), "ml", "p", "edge-x"))
    finally:
        applier.close()
        cache.stop()
