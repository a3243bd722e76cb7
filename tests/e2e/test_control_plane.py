"""The harness itself: the API server serves, RBAC applies, and the real kube-scheduler binds pods."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from tests.e2e.cluster_objects import node_object, pause_pod, register_node, scheduling_state, wait_for
from tests.e2e.control_plane import KUBERNETES_VERSION, ControlPlane
from tests.e2e.kubelet import EXIT_CODE_ENV, KubeletStandIn

PLAIN_SCHEDULER = "gedge-e2e-plain"


def test_api_server_serves_the_admin_and_denies_the_scheduler_what_rbac_forbids(
    control_plane: ControlPlane, kube_api: k8s.ApiClient
) -> None:
    names = {ns.metadata.name for ns in k8s.CoreV1Api(kube_api).list_namespace().items}
    assert {"default", "kube-system"} <= names
    version = k8s.VersionApi(kube_api).get_code()
    assert version.git_version == KUBERNETES_VERSION

    scheduler_api = k8s_config.new_client_from_config(config_file=str(control_plane.scheduler_kubeconfig))
    with pytest.raises(ApiException) as denied:
        k8s.CoreV1Api(scheduler_api).list_namespaced_secret("kube-system")
    assert denied.value.status == 403


@pytest.fixture(scope="module")
def plain_scheduler(control_plane: ControlPlane) -> Iterator[str]:
    """kube-scheduler with only its in-tree plugins, under a profile name of its own."""
    scheduler = control_plane.start_scheduler(
        {
            "apiVersion": "kubescheduler.config.k8s.io/v1",
            "kind": "KubeSchedulerConfiguration",
            "leaderElection": {"leaderElect": False},
            "profiles": [{"schedulerName": PLAIN_SCHEDULER}],
        },
        name=PLAIN_SCHEDULER,
    )
    try:
        yield PLAIN_SCHEDULER
    finally:
        control_plane.stop_scheduler(scheduler)


def test_real_scheduler_binds_a_pod_to_the_node_that_fits_and_kubelet_stand_in_runs_it(
    plain_scheduler: str, kube_api: k8s.ApiClient, namespace: str
) -> None:
    core = k8s.CoreV1Api(kube_api)
    small, large = f"{namespace}-small", f"{namespace}-large"
    register_node(core, node_object(small, cpu="2", memory="4Gi"))
    register_node(core, node_object(large, cpu="16", memory="64Gi"))
    kubelet = KubeletStandIn(kube_api, [small, large]).start()
    try:
        pod = pause_pod("needs-8-cpus", scheduler=plain_scheduler, requests={"cpu": "8"})
        pod.spec.restart_policy = "Never"
        pod.spec.containers[0].env = [k8s.V1EnvVar(name=EXIT_CODE_ENV, value="3")]
        core.create_namespaced_pod(namespace, pod)
        bound = wait_for(
            lambda: core.read_namespaced_pod("needs-8-cpus", namespace),
            lambda p: p.spec.node_name,
            describe=scheduling_state,
        )
        assert bound.spec.node_name == large
        done = wait_for(
            lambda: core.read_namespaced_pod("needs-8-cpus", namespace),
            lambda p: p.status.phase in ("Succeeded", "Failed"),
        )
        assert done.status.phase == "Failed"
        assert done.status.container_statuses[0].state.terminated.exit_code == 3

        # A graceful delete of a bound pod completes only once its kubelet confirms it.
        core.delete_namespaced_pod("needs-8-cpus", namespace)
        wait_for(
            lambda: [p.metadata.name for p in core.list_namespaced_pod(namespace).items],
            lambda names: "needs-8-cpus" not in names,
        )

        core.create_namespaced_pod(
            namespace, pause_pod("too-big", scheduler=plain_scheduler, requests={"cpu": "64"})
        )
        events = wait_for(
            lambda: core.list_namespaced_event(namespace, field_selector="involvedObject.name=too-big").items,
            lambda items: any(e.reason == "FailedScheduling" for e in items),
        )
        assert any("Insufficient cpu" in e.message for e in events)
        assert core.read_namespaced_pod("too-big", namespace).spec.node_name is None
    finally:
        kubelet.stop()
        for name in (small, large):
            core.delete_node(name)
