"""deploy/workflow's RBAC on a live kube-apiserver: the controller's service account can do what the
controller does (through KubernetesWorkflowApi, as `gedge-flow controller` would), only in the namespaces
it is given (one RoleBinding each, as deploy/workflow/rbac.yaml's for `default`), and nothing more."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s
from kubernetes import utils as k8s_utils

from scheduler_extender.workflow.catalog import load_catalog_configmap
from scheduler_extender.workflow.kube import ApiError, KubernetesWorkflowApi
from tests.e2e.cluster_objects import wait_for
from tests.e2e.conftest import control_plane, e2e_bin_dir, kube_api, namespace  # noqa: F401
from tests.e2e.edge_cluster import DEPLOY, manifests, token_kubeconfig

pytestmark = pytest.mark.e2e
ACCOUNT = "gedge-workflow-controller"


def _create_if_missing(api: k8s.ApiClient, docs: list[dict]) -> None:
    for doc in docs:
        try:
            k8s_utils.create_from_dict(api, doc)
        except k8s_utils.FailToCreateError as exc:
            if any(e.status != 409 for e in exc.api_exceptions):
                raise


@pytest.fixture(scope="module")
def installed(control_plane, kube_api) -> None:  # noqa: F811
    """The namespace, the Workflow CRD (Established), the runtime catalog and deploy/workflow/rbac.yaml."""
    _create_if_missing(kube_api, manifests(DEPLOY / "namespace.yaml"))
    crds = manifests(DEPLOY / "crds" / "workflows.gedge.io.yaml")
    _create_if_missing(kube_api, crds)
    extensions = k8s.ApiextensionsV1Api(kube_api)
    for crd in crds:
        wait_for(
            lambda crd=crd: extensions.read_custom_resource_definition(crd["metadata"]["name"]).status,
            lambda status: any(
                c.type == "Established" and c.status == "True" for c in (status and status.conditions) or ()
            ),
        )
    _create_if_missing(kube_api, manifests(DEPLOY / "runtime-catalog" / "runtime-catalog.yaml"))
    _create_if_missing(kube_api, manifests(DEPLOY / "workflow" / "rbac.yaml"))


def given_namespace(api: k8s.ApiClient, where: str) -> None:
    """deploy/workflow/rbac.yaml's RoleBinding, copied into `where` as an operator does per namespace."""
    (binding,) = [
        d
        for d in manifests(DEPLOY / "workflow" / "rbac.yaml")
        if d["kind"] == "RoleBinding" and d["roleRef"]["kind"] == "ClusterRole"
    ]
    assert binding["metadata"]["namespace"] == "default"
    binding["metadata"]["namespace"] = where
    _create_if_missing(api, [binding])


@pytest.fixture
def controller_client(
    control_plane,  # noqa: F811
    kube_api,  # noqa: F811
    installed,
    namespace,  # noqa: F811
    tmp_path: Path,
) -> Iterator[k8s.ApiClient]:
    given_namespace(kube_api, namespace)
    path = token_kubeconfig(control_plane, kube_api, ACCOUNT, tmp_path / "controller.kubeconfig")
    api = KubernetesWorkflowApi.from_kubeconfig(str(path))
    yield api._client
    api._client.close()


def allowed(client: k8s.ApiClient, verb: str, resource: str, where: str, **extra: str) -> bool:
    review = k8s.AuthorizationV1Api(client).create_self_subject_access_review(
        k8s.V1SelfSubjectAccessReview(
            spec=k8s.V1SelfSubjectAccessReviewSpec(
                resource_attributes=k8s.V1ResourceAttributes(
                    verb=verb, resource=resource, namespace=where, **extra
                )
            )
        )
    )
    return review.status.allowed


GRANTED = [
    ("get", "workflows", "gedge.io", ""),
    ("list", "workflows", "gedge.io", ""),
    ("watch", "workflows", "gedge.io", ""),
    ("get", "workflows", "gedge.io", "status"),
    ("patch", "workflows", "gedge.io", "status"),
    *((verb, "pods", "", "") for verb in ("create", "get", "list", "watch", "delete")),
    ("get", "pods", "", "log"),
    *((verb, "deployments", "apps", "") for verb in ("create", "get", "list", "update", "patch", "delete")),
    *((verb, "services", "", "") for verb in ("create", "get", "update", "patch", "delete")),
    ("create", "persistentvolumeclaims", "", ""),
    ("get", "persistentvolumeclaims", "", ""),
]
REFUSED = [
    ("create", "workflows", "gedge.io", ""),
    ("patch", "workflows", "gedge.io", ""),
    ("delete", "workflows", "gedge.io", ""),
    ("update", "workflows", "gedge.io", "status"),
    ("patch", "pods", "", ""),
    ("create", "pods", "", "exec"),
    ("get", "secrets", "", ""),
    ("list", "configmaps", "", ""),
    ("get", "nodes", "", ""),
    ("watch", "deployments", "apps", ""),
    ("update", "deployments", "apps", "scale"),
    ("create", "replicasets", "apps", ""),
    ("list", "services", "", ""),
    ("delete", "persistentvolumeclaims", "", ""),
    ("update", "persistentvolumeclaims", "", ""),
    ("create", "persistentvolumes", "", ""),
]


def test_the_controller_account_has_exactly_what_it_uses(controller_client, namespace):  # noqa: F811
    for verb, resource, group, sub in GRANTED:
        assert allowed(controller_client, verb, resource, namespace, group=group, subresource=sub), (
            verb,
            resource,
            sub,
        )
    for verb, resource, group, sub in REFUSED:
        assert not allowed(controller_client, verb, resource, namespace, group=group, subresource=sub), (
            verb,
            resource,
            sub,
        )
    assert allowed(controller_client, "get", "configmaps", "gedge-system", name="gedge-runtime-catalog")
    # A namespace the controller was not given: nothing of the above.
    for verb, resource, group, sub in GRANTED:
        assert not allowed(controller_client, verb, resource, "kube-system", group=group, subresource=sub), (
            verb,
            resource,
        )
    assert not allowed(controller_client, "get", "configmaps", "gedge-system", name="other")
    assert not allowed(controller_client, "get", "configmaps", namespace, name="gedge-runtime-catalog")


def test_the_controller_calls_go_through_as_that_account(
    controller_client,
    kube_api,  # noqa: F811
    namespace,  # noqa: F811
):
    api = KubernetesWorkflowApi(controller_client)
    catalog = load_catalog_configmap(api.get_config_map("gedge-system", "gedge-runtime-catalog"))
    assert catalog.components

    workflow = manifests(DEPLOY / "crds" / "examples" / "train-pipeline.yaml")[0]
    KubernetesWorkflowApi(kube_api).create_workflow(namespace, workflow)
    name = workflow["metadata"]["name"]
    assert [w["metadata"]["name"] for w in api.list_workflows(namespace)] == [name]
    patched = api.patch_workflow_status(namespace, name, {"phase": "Running"})
    assert patched["status"]["phase"] == "Running"
    with pytest.raises(ApiError) as denied:
        api.delete_workflow(namespace, name)
    assert denied.value.status == 403

    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "step-0", "labels": {"gedge.io/workflow": name}},
        "spec": {"containers": [{"name": "main", "image": "busybox"}]},
    }
    api.create_pod(namespace, pod)
    pods, _ = api.list_pods(namespace, f"gedge.io/workflow={name}")
    assert [p["metadata"]["name"] for p in pods] == ["step-0"]
    api.delete_pod(namespace, "step-0")


def test_serve_objects_and_the_workspace_claim_go_through_as_that_account(
    controller_client,
    kube_api,  # noqa: F811
    namespace,  # noqa: F811
):
    """The bodies the controller builds pass the real API server's validation, and its account may
    make, take over, mark and delete them."""
    from datetime import UTC, datetime, timedelta

    from scheduler_extender.workflow import dag
    from scheduler_extender.workflow.catalog import load_catalog_file
    from scheduler_extender.workflow.controller import sweep_expired_serves
    from scheduler_extender.workflow.serve import ANNOTATION_EXPIRES, build_serve, workspace_claim
    from scheduler_extender.workflow.spec import parse_workflow

    admin = KubernetesWorkflowApi(kube_api)
    api = KubernetesWorkflowApi(controller_client)
    doc = manifests(DEPLOY / "crds" / "examples" / "serve-pipeline.yaml")[0]
    created = admin.create_workflow(namespace, doc)
    workflow = parse_workflow(created)
    catalog = load_catalog_file(str(DEPLOY / "runtime-catalog" / "runtime-catalog.yaml"))

    claim = workspace_claim(workflow)
    assert claim is not None
    api.create_claim(namespace, claim)
    assert api.get_claim(namespace, claim["metadata"]["name"])["spec"]["resources"]["requests"] == {
        "storage": "20Gi"
    }

    task = workflow.spec.task("serve")
    engine = dag.Attempt(0, "x", dag.SUCCEEDED, outputs={"engine": "/workspace/models/resnet.plan"})
    status = dag.WorkflowStatus(tasks={"optimize": dag.TaskStatus(phase=dag.SUCCEEDED, attempts=(engine,))})
    deployment, service = build_serve(
        workflow, task, catalog=catalog, status=status, default_scheduler="gedge-scheduler"
    )
    made = api.create_deployment(namespace, deployment)
    assert made["spec"]["template"]["spec"]["containers"][0]["args"][1] == "/workspace/models/resnet.plan"
    assert made["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
    ip = api.create_service(namespace, service)["spec"]["clusterIP"]
    changed = {
        **deployment,
        "metadata": {**deployment["metadata"], "resourceVersion": made["metadata"]["resourceVersion"]},
    }
    changed["spec"] = {**deployment["spec"], "replicas": 2}
    assert api.replace_deployment(namespace, "resnet", changed)["metadata"]["generation"] == 2
    kept = api.get_service(namespace, "resnet")
    kept["spec"]["ports"][0]["port"] = 9000
    assert api.replace_service(namespace, "resnet", kept)["spec"]["clusterIP"] == ip
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    api.annotate("Deployment", namespace, "resnet", {ANNOTATION_EXPIRES: past})
    api.annotate("Service", namespace, "resnet", {ANNOTATION_EXPIRES: past})
    assert sweep_expired_serves(api, namespace, datetime.now(UTC)) == ["resnet"]
    with pytest.raises(ApiError) as gone:
        api.get_service(namespace, "resnet")
    assert gone.value.status == 404


def test_a_status_field_the_controller_stops_writing_is_gone(
    controller_client,
    kube_api,  # noqa: F811
    namespace,  # noqa: F811
):
    """The status is replaced, not merged: a Succeeded step keeps no 'ContainerCreating' message."""
    admin = KubernetesWorkflowApi(kube_api)
    api = KubernetesWorkflowApi(controller_client)
    doc = manifests(DEPLOY / "crds" / "examples" / "train-pipeline.yaml")[0]
    doc["metadata"]["name"] = "stale"
    admin.create_workflow(namespace, doc)
    api.patch_workflow_status(
        namespace,
        "stale",
        {"phase": "Running", "tasks": {"train": {"phase": "Running", "message": "ContainerCreating"}}},
    )
    after = api.patch_workflow_status(
        namespace, "stale", {"phase": "Running", "tasks": {"train": {"phase": "Succeeded"}}}
    )
    assert after["status"]["tasks"]["train"] == {"phase": "Succeeded"}
