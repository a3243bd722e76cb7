"""NodeLabeler on a live kube-apiserver, as the agent's own service account (deploy/agent/rbac.yaml)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s
from kubernetes import utils as k8s_utils
from kubernetes.client.exceptions import ApiException

from agent.node_labels import NodeLabeler
from agent.podwatch import core_api
from gedge_model import NodeTopology
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


def test_a_missing_node_is_retried_on_the_next_sync(agent_core, kube_api):  # noqa: F811
    name = f"labels-{uuid.uuid4().hex[:6]}"
    labeler = NodeLabeler(agent_core, name)
    assert labeler.sync(topology(gpu(0))) is False
    core = k8s.CoreV1Api(kube_api)
    core.create_node(k8s.V1Node(metadata=k8s.V1ObjectMeta(name=name)))
    try:
        assert labeler.sync(topology(gpu(0))) is True
        assert labels_of(kube_api, name)["gedge.io/nvidia-driver-code"] == "535054003"
    finally:
        core.delete_node(name)
