"""End-to-end fixtures: a real Kubernetes control plane on loopback, built from pinned Go modules.

Fixtures (session-scoped unless noted; tests under tests/e2e are marked `e2e`):

- `control_plane` -> tests.e2e.control_plane.ControlPlane: etcd + kube-apiserver
  started fresh with their own CA, client certificates and service-account key.
  `.kubeconfig` (admin, system:masters), `.server`, `.log_dir`, `.api_client()`.
- `kubeconfig` -> Path of the admin kubeconfig (give it to `--kubeconfig` of any command).
- `kube_api` -> a `kubernetes.client.ApiClient` for that kubeconfig.
- `namespace` (per test) -> a fresh namespace name; its pods are force-deleted afterwards.
- `deploy_crds` -> the CustomResourceDefinitions of deploy/crds, created once and Established.
- `edge_cluster` -> tests.e2e.edge_cluster.EdgeCluster: our parts on that control
  plane (real agents behind Node objects, the extender, kube-scheduler with
  deploy/'s configuration, a kubelet stand-in); see its docstring for the nodes.
  Pods opt in with `spec.schedulerName = edge_cluster.scheduler_name`;
  `edge_cluster.restart_extender()` kills the extender (SIGKILL) and starts it again.

A test of another part (the workflow controller, say) goes in tests/e2e and names
the fixtures it needs:

    def test_workflow_survives_restart(edge_cluster, deploy_crds, kubeconfig, kube_api, namespace): ...

It starts its own processes with tests.e2e.processes.ManagedProcess (logs to
`control_plane.log_dir`, killed with the test run) and `--kubeconfig {kubeconfig}`
(the admin), or as a deploy/ service account through
tests.e2e.edge_cluster.token_kubeconfig. Pods bound to the edge nodes go
Running, then (restartPolicy Never/OnFailure) Succeeded or Failed as the first
container's env says: GEDGE_E2E_EXIT_CODE (default 0), GEDGE_E2E_RUN_SECONDS
(default 0.5); see tests/e2e/kubelet.py.

Binaries come from `make e2e-binaries` (tests/e2e/controlplane/build.sh, cached
under ~/.cache/gedge-accel/controlplane/<pin hash>/, or $GEDGE_E2E_BIN_DIR).
When they are missing the e2e tests fail under CI=true and are skipped otherwise.
Logs of every process are under `control_plane.log_dir`; a failing readiness
wait puts the log tail in the error.

- `real_node` (per module) -> tests.e2e.real_node.RealNode: containerd 2 + CNI + a
  real kubelet on this machine joined to the control plane as Node `gedge-node`
  (tainted gedge.io/e2e-real-node:NoSchedule, so only pods that tolerate it land
  there), plus kube-controller-manager (DaemonSets, Deployments). Its pods run
  tests.e2e.real_node.WORKLOAD_IMAGE for real; stopping it undoes every host
  change, and a change left behind fails the module.

test_real_node_deploy.py starts a control plane and real node of its own that serve pods as a
cluster does (ControlPlane `node_ip`: service-account tokens, the `kubernetes` Service through
kube-proxy from tests/e2e/node/build_tools.sh) and applies deploy/ there with kustomize.

Besides `real_node`, no kubelet, controller-manager or kube-proxy runs: pods are bound but not run
(use tests.e2e.kubelet.KubeletStandIn to move their phases), namespaces are
never finalized, and no service account token controller exists (the
ServiceAccount admission plugin is off, so pods need no token).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from tests.e2e.cluster_objects import wait_for
from tests.e2e.control_plane import ControlPlane, binary_dir, missing_binaries
from tests.e2e.edge_cluster import DEPLOY, EdgeCluster, NodeSpec, manifests
from tests.e2e.kubelet import KubeletStandIn
from tests.e2e.real_node import RealNode, missing_parts
from tests.e2e.real_node import binary_dir as node_binary_dir


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.e2e)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def e2e_bin_dir() -> Path:
    """The pinned control-plane binaries; missing ones fail the run in CI and skip it elsewhere."""
    directory = binary_dir()
    missing = missing_binaries(directory)
    if missing:
        message = (
            f"control-plane binaries {missing} not found in {directory}: "
            "run `make e2e-binaries` (tests/e2e/controlplane/build.sh)"
        )
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return directory


@pytest.fixture(scope="session")
def control_plane(e2e_bin_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane(e2e_bin_dir, tmp_path_factory.mktemp("control-plane")).start()
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="module")
def real_node(
    control_plane: ControlPlane, kube_api: k8s.ApiClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RealNode]:
    """A real node (containerd, CNI, kubelet) for the tests of one module; see the module docstring."""
    missing = missing_parts(node_binary_dir())
    if missing:
        message = f"a real node needs {missing}: run `make e2e-binaries system-deps`"
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)
    control_plane.start_controller_manager()
    node = RealNode(control_plane, tmp_path_factory.mktemp("real-node")).start()
    try:
        yield node
    finally:
        left = node.stop()
        with contextlib.suppress(ApiException):
            k8s.CoreV1Api(kube_api).delete_node(node.name)
        control_plane.stop_controller_manager()
        if left:
            pytest.fail(f"the real node left host changes behind: {left}")


@pytest.fixture(scope="session")
def kubeconfig(control_plane: ControlPlane) -> Path:
    return control_plane.kubeconfig


@pytest.fixture(scope="session")
def kube_api(control_plane: ControlPlane) -> Iterator[k8s.ApiClient]:
    api = control_plane.api_client()
    try:
        yield api
    finally:
        api.close()


@pytest.fixture
def namespace(kube_api: k8s.ApiClient) -> Iterator[str]:
    """A namespace of its own for one test; its pods are force-deleted when the test ends."""
    core = k8s.CoreV1Api(kube_api)
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        with contextlib.suppress(ApiException):
            core.delete_collection_namespaced_pod(name, grace_period_seconds=0)
        with contextlib.suppress(ApiException):
            core.delete_namespace(name)


GPU_BOXES = (
    ("h100-a", "H100", "535.104.05"),
    ("h100-b", "H100", "525.60.13"),
    ("split", "split", "470.223.02"),
)
"""(node, box model, NVIDIA driver): only h100-a's driver runs CUDA 12.2 (535.54.03 or later)."""
SNAPSHOT_NODES = (("snap-40intel64", "40intel64-2g2n4c+pcilocality"), ("snap-16amd64", "16amd64-8n2c"))


@pytest.fixture(scope="session")
def edge_cluster(
    control_plane: ControlPlane,
    kube_api: k8s.ApiClient,
    snapshot_roots: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[EdgeCluster]:
    """Five agent-backed nodes, the extender and kube-scheduler with deploy/'s configuration.

    Nodes: `h100-a`, `h100-b` (8 GPUs in switch pairs, each pair with a ConnectX
    NIC: RDMA + 2 VFs), `split` (2 GPUs on socket 0, the RDMA NIC on socket 1),
    `snap-40intel64` and `snap-16amd64` (hwloc's sysfs snapshots, CPUs only plus
    one RDMA device on the first). Pods opt in with
    `scheduler_name=edge_cluster.scheduler_name`. A KubeletStandIn runs over
    all nodes: bound pods go Running (see tests/e2e/kubelet.py for outcomes).
    `edge_cluster.restart_extender()` kills it with SIGKILL and starts it again.
    """
    specs = [NodeSpec(name, box_model=model, driver=driver) for name, model, driver in GPU_BOXES]
    specs += [NodeSpec(name, root=snapshot_roots[snapshot]) for name, snapshot in SNAPSHOT_NODES]
    cluster = EdgeCluster(control_plane, kube_api, tmp_path_factory.mktemp("edge-cluster")).start(specs)
    kubelet = KubeletStandIn(kube_api, cluster.node_names()).start()
    try:
        yield cluster
    finally:
        kubelet.stop()
        cluster.stop()


@pytest.fixture(scope="session")
def deploy_crds(kube_api: k8s.ApiClient) -> list[dict]:
    """deploy/crds/*.yaml created through the API, each waited on until the server serves it."""
    extensions = k8s.ApiextensionsV1Api(kube_api)
    crds = [doc for path in sorted((DEPLOY / "crds").glob("*.yaml")) for doc in manifests(path)]
    for crd in crds:
        extensions.create_custom_resource_definition(crd)
    for crd in crds:
        wait_for(
            lambda crd=crd: extensions.read_custom_resource_definition(crd["metadata"]["name"]).status,
            lambda status: any(
                c.type == "Established" and c.status == "True" for c in (status and status.conditions) or ()
            ),
        )
    return crds
