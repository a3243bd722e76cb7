"""NodeLabeler on a live kube-apiserver, as the agent's own service account (deploy/agent/rbac.yaml)."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s
from kubernetes import utils as k8s_utils
from kubernetes.client.exceptions import ApiException

from agent.node_labels import NodeLabeler
from agent.podwatch import core_api
from agent.service.store import NodeStateStore
from gedge_model import Allocation, NodeTopology
from tests.e2e.conftest import control_plane, e2e_bin_dir, kube_api  # noqa: F401
from tests.e2e.edge_cluster import DEPLOY, manifests, token_kubeconfig
from tests.node_labels.test_labels import gpu, topology

pytestmark = pytest.mark.e2e


def _create_if_missing(api: k8s.ApiClient, docs: list[dict]) -> None:
    for doc in docs:
        try:
            k8s_utils.create_from_dict(api, doc)
        except k8s_utils.FailToCreateError as exc:
            if any(e.status != 409 for e in exc.api_exceptions):
                raise


@pytest.fixture
def agent_core(control_plane, kube_api, tmp_path: Path) -> Iterator[k8s.CoreV1Api]:  # noqa: F811
    """A CoreV1Api authenticated as gedge-system/gedge-agent, with only the agent's ClusterRole."""
    _create_if_missing(kube_api, manifests(DEPLOY / "namespace.yaml"))
    _create_if_missing(kube_api, manifests(DEPLOY / "agent" / "rbac.yaml"))
    path = token_kubeconfig(control_plane, kube_api, "gedge-agent", tmp_path / "agent.kubeconfig")
    api = core_api(str(path))
    assert api is not None
    yield api
    api.api_client.close()


@pytest.fixture
def node(kube_api) -> Iterator[str]:  # noqa: F811
    core = k8s.CoreV1Api(kube_api)
    name = f"labels-{uuid.uuid4().hex[:6]}"
    core.create_node(k8s.V1Node(metadata=k8s.V1ObjectMeta(name=name, labels={"zone": "edge-a"})))
    yield name
    with contextlib.suppress(ApiException):
        core.delete_node(name)


def labels_of(kube_api, name: str) -> dict[str, str]:  # noqa: F811
    return dict(k8s.CoreV1Api(kube_api).read_node(name).metadata.labels or {})


def test_labels_follow_the_topology(agent_core, kube_api, node):  # noqa: F811
    labeler = NodeLabeler(agent_core, node)
    assert labeler.sync(topology(gpu(0, "525.60.13"), gpu(1, "525.60.13"))) is True
    assert labels_of(kube_api, node) == {
        "zone": "edge-a",
        "gedge.io/nvidia-driver": "525.60.13",
        "gedge.io/nvidia-driver-code": "525060013",
        "gedge.io/gpu-count": "2",
    }
    assert labeler.sync(topology(gpu(0, "525.60.13"), gpu(1, "525.60.13"))) is False

    assert labeler.sync(topology(gpu(0, "535.54.03"))) is True
    assert labels_of(kube_api, node) == {
        "zone": "edge-a",
        "gedge.io/nvidia-driver": "535.54.03",
        "gedge.io/nvidia-driver-code": "535054003",
        "gedge.io/gpu-count": "1",
    }

    assert labeler.sync(NodeTopology(node_name=node)) is True
    assert labels_of(kube_api, node) == {"zone": "edge-a"}


def test_a_restarted_agent_writes_nothing_when_the_node_already_matches(agent_core, kube_api, node):  # noqa: F811
    NodeLabeler(agent_core, node).sync(topology(gpu(0)))
    before = k8s.CoreV1Api(kube_api).read_node(node).metadata.resource_version
    assert NodeLabeler(agent_core, node).sync(topology(gpu(0))) is False
    assert k8s.CoreV1Api(kube_api).read_node(node).metadata.resource_version == before


def test_a_failed_update_is_retried_after_the_pause(agent_core, kube_api):  # noqa: F811
    name = f"labels-{uuid.uuid4().hex[:6]}"
    now = [100.0]
    labeler = NodeLabeler(agent_core, name, retry_after=30.0, clock=lambda: now[0])
    assert labeler.sync(topology(gpu(0))) is False  # no such Node yet
    core = k8s.CoreV1Api(kube_api)
    core.create_node(k8s.V1Node(metadata=k8s.V1ObjectMeta(name=name)))
    try:
        now[0] += 29.0
        assert labeler.sync(topology(gpu(0))) is False
        assert "gedge.io/nvidia-driver-code" not in labels_of(kube_api, name)
        now[0] += 1.0
        assert labeler.sync(topology(gpu(0))) is True
        assert labels_of(kube_api, name)["gedge.io/nvidia-driver-code"] == "535054003"
    finally:
        core.delete_node(name)


def test_wired_to_the_agent_store_labels_follow_rediscovery(agent_core, kube_api, node):  # noqa: F811
    """The wiring the agent's serve command uses: sync at start, then a listener on the store."""
    store = NodeStateStore(NodeTopology(node_name=node, gpus=(gpu(0, "525.60.13"),)))
    labeler = NodeLabeler(agent_core, node)
    labeler.sync(store.current().state.topology)
    store.add_listener(labeler.on_snapshot)
    assert labels_of(kube_api, node)["gedge.io/nvidia-driver"] == "525.60.13"

    store.set_topology(NodeTopology(node_name=node, gpus=(gpu(0, "550.54.14"), gpu(1, "550.54.14"))))
    labels = labels_of(kube_api, node)
    assert (labels["gedge.io/nvidia-driver-code"], labels["gedge.io/gpu-count"]) == ("550054014", "2")
    before = k8s.CoreV1Api(kube_api).read_node(node).metadata.resource_version
    assert store.set_allocations((Allocation("uid-p", "ml", "p", node),))  # a generation, same topology
    assert k8s.CoreV1Api(kube_api).read_node(node).metadata.resource_version == before


def test_a_node_registered_after_the_agent_started_gets_its_labels(agent_core, kube_api):  # noqa: F811
    """The timer keeps trying: a Node that kubelet registers late is labeled without a topology change."""
    name = f"late-{uuid.uuid4().hex[:6]}"
    labeler = NodeLabeler(agent_core, name, retry_after=0.2)
    labeler.start(lambda: topology(gpu(0, driver="535.104.05")), interval_s=0.2)
    core = k8s.CoreV1Api(kube_api)
    try:
        time.sleep(0.5)
        core.create_node(k8s.V1Node(metadata=k8s.V1ObjectMeta(name=name)))
        deadline = time.monotonic() + 20
        while labels_of(kube_api, name).get("gedge.io/nvidia-driver") != "535.104.05":
            assert time.monotonic() < deadline, labels_of(kube_api, name)
            time.sleep(0.1)
        assert labels_of(kube_api, name)["gedge.io/nvidia-driver-code"] == "535104005"
    finally:
        labeler.stop()
        with contextlib.suppress(ApiException):
            core.delete_node(name)
