"""ClusterCache.from_kubernetes against a real kube-apiserver: Node objects added, re-annotated and deleted.

Uses the control plane of tests/e2e (etcd + kube-apiserver on loopback); without its
binaries the test is skipped here and fails in CI, as every e2e test does.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s

from scheduler_extender.cache import CacheOptions, ClusterCache
from tests.e2e.cluster_objects import node_object, register_node
from tests.e2e.control_plane import ControlPlane, binary_dir, missing_binaries
from tests.grpc.agents import AgentHost

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def core_v1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[k8s.CoreV1Api]:
    directory = binary_dir()
    missing = missing_binaries(directory)
    if missing:
        message = f"control-plane binaries {missing} not found in {directory}: run `make e2e-binaries`"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    plane = ControlPlane(directory, tmp_path_factory.mktemp("cache-control-plane")).start()
    api = plane.api_client()
    try:
        yield k8s.CoreV1Api(api)
    finally:
        api.close()
        plane.stop()


def test_cache_follows_node_objects(
    core_v1: k8s.CoreV1Api, agent_host: AgentHost, snapshot_roots: dict[str, Path]
) -> None:
    root = snapshot_roots["16amd64-8n2c"]
    first = agent_host.start_agent(root, "kube-edge-1")
    second = agent_host.start_agent(root, "kube-edge-2")
    moved = agent_host.start_agent(root, "kube-edge-2")
    register_node(core_v1, node_object("kube-edge-1", agent_port=first.port))
    cache = ClusterCache.from_kubernetes(
        core_v1, options=CacheOptions(backoff_initial_s=0.1, backoff_max_s=0.5)
    )
    try:
        cache.start()
        assert cache.wait_for(lambda n: "kube-edge-1" in n and n["kube-edge-1"].fresh, timeout=30)
        assert cache.node("kube-edge-1").address == f"127.0.0.1:{first.port}"

        register_node(core_v1, node_object("kube-edge-2", agent_port=second.port))
        assert cache.wait_for(lambda n: "kube-edge-2" in n and n["kube-edge-2"].fresh, timeout=30)

        core_v1.patch_node(
            "kube-edge-2", {"metadata": {"annotations": {"gedge.io/agent-port": str(moved.port)}}}
        )
        assert cache.wait_for(
            lambda n: n["kube-edge-2"].address == f"127.0.0.1:{moved.port}" and n["kube-edge-2"].fresh,
            timeout=30,
        )

        core_v1.patch_node("kube-edge-2", {"metadata": {"annotations": {"gedge.io/agent-port": "grpc"}}})
        assert cache.wait_for(lambda n: not n["kube-edge-2"].fresh, timeout=30)
        assert "gedge.io/agent-port='grpc' is not a port" in cache.node("kube-edge-2").reason

        core_v1.delete_node("kube-edge-1")
        assert cache.wait_for(lambda n: "kube-edge-1" not in n, timeout=30)
    finally:
        cache.stop()
        for agent in (first, second, moved):
            agent_host.stop_agent(agent)
