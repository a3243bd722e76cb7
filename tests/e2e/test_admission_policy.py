"""deploy/policy on the real kube-apiserver: only the extender grants, agents act only for their own node.

The ValidatingAdmissionPolicies are created for this module and removed after
it (other e2e tests run agents with tokens that name no node). Each policy is
waited on until a dry-run request shows it enforced. The agent's tokens are
bound to a pod on its node, as the kubelet projects them, so the API server puts
the node's name in the token (authentication.kubernetes.io/node-name).
"""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import utils as k8s_utils
from kubernetes.client.exceptions import ApiException

from agent.podwatch import PodWatcher, kubernetes_event_reporter
from gedge_model import ANNOTATION, Allocation
from scheduler_extender.bind.binder import BindError
from scheduler_extender.bind.kube import KubeBinder
from tests.e2e.cluster_objects import node_object, register_node, wait_for
from tests.e2e.conftest import control_plane, e2e_bin_dir, kube_api, namespace  # noqa: F401
from tests.e2e.control_plane import ControlPlane, kubeconfig_text
from tests.e2e.edge_cluster import DEPLOY, RBAC_KINDS, SYSTEM_NAMESPACE, manifests, token_kubeconfig
from tests.podwatch.conftest import RecordingApplier

pytestmark = pytest.mark.e2e
POLICIES = (DEPLOY / "policy" / "allocation-writer.yaml", DEPLOY / "policy" / "agent-node-restriction.yaml")
MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
NODE_NAME_KEY = "authentication.kubernetes.io/node-name"
NO_SCHEDULER = {"gedge.io/e2e-no-node": "true"}
"""A node selector no node matches: no kube-scheduler binds the pod before the extender's Binding does
(a Binding does not check selectors)."""


def _create_if_missing(api: k8s.ApiClient, docs: list[dict]) -> None:
    for doc in docs:
        try:
            k8s_utils.create_from_dict(api, doc)
        except k8s_utils.FailToCreateError as exc:
            if any(e.status != 409 for e in exc.api_exceptions):
                raise


def refused(call: Callable[[], object]) -> ApiException | None:
    """The API server's refusal of `call`, or None when it went through."""
    try:
        call()
    except ApiException as exc:
        return exc
    return None


def _probe_pod(core: k8s.CoreV1Api, ns: str) -> Callable[[], object]:
    """A dry-run create of a pod carrying the annotation: refused exactly while the policy is enforced."""
    body = k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="policy-probe", annotations={ANNOTATION: "{}"}),
        spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="main", image="pause")]),
    )
    return lambda: core.create_namespaced_pod(ns, body, dry_run="All")


@pytest.fixture(scope="module")
def policies(control_plane: ControlPlane, kube_api: k8s.ApiClient) -> Iterator[None]:  # noqa: F811
    """deploy/'s namespace, agent and extender RBAC, and both policies, enforced."""
    _create_if_missing(kube_api, manifests(DEPLOY / "namespace.yaml"))
    for path in (DEPLOY / "agent" / "rbac.yaml", DEPLOY / "scheduler" / "extender-rbac.yaml"):
        _create_if_missing(kube_api, manifests(path, RBAC_KINDS))
    admission = k8s.AdmissionregistrationV1Api(kube_api)
    docs = [doc for path in POLICIES for doc in manifests(path)]
    for doc in docs:
        if doc["kind"] == "ValidatingAdmissionPolicy":
            admission.create_validating_admission_policy(doc)
        else:
            admission.create_validating_admission_policy_binding(doc)
    core = k8s.CoreV1Api(kube_api)
    probe = _probe_pod(core, SYSTEM_NAMESPACE)
    wait_for(lambda: refused(probe), lambda exc: exc is not None and exc.status == 403, timeout=60)
    try:
        yield
    finally:
        for doc in docs:
            name = doc["metadata"]["name"]
            with contextlib.suppress(ApiException):
                if doc["kind"] == "ValidatingAdmissionPolicy":
                    admission.delete_validating_admission_policy(name)
                else:
                    admission.delete_validating_admission_policy_binding(name)
        wait_for(lambda: refused(probe), lambda exc: exc is None, timeout=60)


def _core_as(kubeconfig: Path) -> k8s.CoreV1Api:
    return k8s.CoreV1Api(k8s_config.new_client_from_config(config_file=str(kubeconfig)))


@pytest.fixture(scope="module")
def extender_core(control_plane, kube_api, policies, tmp_path_factory) -> k8s.CoreV1Api:  # noqa: F811
    path = tmp_path_factory.mktemp("extender") / "extender.kubeconfig"
    return _core_as(token_kubeconfig(control_plane, kube_api, "gedge-extender", path))


@pytest.fixture(scope="module")
def nodes(kube_api) -> Iterator[tuple[str, str]]:  # noqa: F811
    """Two nodes too small for any other test's pods, removed (with the agent pods on them) afterwards."""
    suffix = uuid.uuid4().hex[:6]
    names = (f"policy-a-{suffix}", f"policy-b-{suffix}")
    core = k8s.CoreV1Api(kube_api)
    for name in names:
        register_node(core, node_object(name, cpu="100m", memory="64Mi", pods="4"))
    try:
        yield names
    finally:
        for pod in core.list_namespaced_pod(SYSTEM_NAMESPACE).items:
            if pod.spec.node_name in names:
                with contextlib.suppress(ApiException):
                    core.delete_namespaced_pod(pod.metadata.name, SYSTEM_NAMESPACE, grace_period_seconds=0)
        for name in names:
            with contextlib.suppress(ApiException):
                core.delete_node(name)


def agent_kubeconfig(plane: ControlPlane, api: k8s.ApiClient, node: str, path: Path) -> Path:
    """gedge-agent's token as the kubelet projects it into the agent pod on `node`: bound to that pod."""
    core = k8s.CoreV1Api(api)
    pod = core.create_namespaced_pod(
        SYSTEM_NAMESPACE,
        k8s.V1Pod(
            metadata=k8s.V1ObjectMeta(generate_name="gedge-agent-"),
            spec=k8s.V1PodSpec(
                node_name=node,
                service_account_name="gedge-agent",
                containers=[k8s.V1Container(name="agent", image="pause")],
            ),
        ),
    )
    spec = k8s.V1TokenRequestSpec(
        audiences=[],
        expiration_seconds=3600,
        bound_object_ref=k8s.V1BoundObjectReference(
            api_version="v1", kind="Pod", name=pod.metadata.name, uid=pod.metadata.uid
        ),
    )
    token = core.create_namespaced_service_account_token(
        "gedge-agent", SYSTEM_NAMESPACE, k8s.AuthenticationV1TokenRequest(spec=spec)
    )
    assert plane.ca is not None
    user = f"system:serviceaccount:{SYSTEM_NAMESPACE}:gedge-agent"
    path.write_text(kubeconfig_text(plane.server, plane.ca.cert, token.status.token, user))
    return path


def _pod_on(core: k8s.CoreV1Api, ns: str, name: str, node: str | None, **spec: object) -> k8s.V1Pod:
    return core.create_namespaced_pod(
        ns,
        k8s.V1Pod(
            metadata=k8s.V1ObjectMeta(name=name),
            spec=k8s.V1PodSpec(
                node_name=node, containers=[k8s.V1Container(name="main", image="pause")], **spec
            ),
        ),
    )


def test_a_users_hand_written_allocation_is_refused_at_admission(
    kube_api,  # noqa: F811
    namespace,  # noqa: F811
    extender_core: k8s.CoreV1Api,
    nodes: tuple[str, str],
) -> None:
    admin = k8s.CoreV1Api(kube_api)
    node = nodes[0]
    forged = {"metadata": {"annotations": {ANNOTATION: '{"pod_uid": "x", "node": "n", "cpus": [1]}'}}}

    created = refused(
        lambda: admin.create_namespaced_pod(
            namespace,
            k8s.V1Pod(
                metadata=k8s.V1ObjectMeta(name="self-granted", annotations=forged["metadata"]["annotations"]),
                spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="main", image="pause")]),
            ),
        )
    )
    assert created is not None and created.status == 403
    assert (
        "only the gedge extender (system:serviceaccount:gedge-system:gedge-extender) may set" in created.body
    )

    pod = _pod_on(admin, namespace, "plain", None, node_selector=NO_SCHEDULER)
    for call in (
        lambda: admin.patch_namespaced_pod("plain", namespace, forged, _content_type=MERGE),
        lambda: admin.patch_namespaced_pod_status("plain", namespace, forged, _content_type=MERGE),
        lambda: admin.create_namespaced_pod_binding(
            "plain",
            namespace,
            k8s.V1Binding(
                metadata=k8s.V1ObjectMeta(name="plain", annotations=forged["metadata"]["annotations"]),
                target=k8s.V1ObjectReference(kind="Node", name=node),
            ),
            _preload_content=False,
        ),
        # the legacy namespaces/NS/bindings resource copies annotations onto the pod just the same
        lambda: admin.create_namespaced_binding(
            namespace,
            k8s.V1Binding(
                metadata=k8s.V1ObjectMeta(name="plain", annotations=forged["metadata"]["annotations"]),
                target=k8s.V1ObjectReference(kind="Node", name=node),
            ),
            _preload_content=False,
        ),
    ):
        exc = refused(call)
        assert exc is not None and exc.status == 403, call
    assert ANNOTATION not in (admin.read_namespaced_pod("plain", namespace).metadata.annotations or {})

    # The extender grants as it binds: one Binding sets the node and the annotation together.
    grant = Allocation(pod_uid=pod.metadata.uid, namespace=namespace, name="plain", node=node)
    KubeBinder(extender_core).bind(grant)
    bound = admin.read_namespaced_pod("plain", namespace)
    assert bound.spec.node_name == node and bound.metadata.annotations[ANNOTATION] == grant.to_annotation()
    # Then nobody may change or drop the grant, the extender included (it may not patch pods); other
    # annotations stay free.
    changed = {"metadata": {"annotations": {ANNOTATION: grant.to_annotation().replace("X", "SYS")}}}
    by_extender = refused(
        lambda: extender_core.patch_namespaced_pod("plain", namespace, changed, _content_type=MERGE)
    )
    assert by_extender is not None and by_extender.status == 403
    assert refused(lambda: admin.patch_namespaced_pod("plain", namespace, changed, _content_type=MERGE))
    dropped = {"metadata": {"annotations": {ANNOTATION: None}}}
    assert refused(lambda: admin.patch_namespaced_pod("plain", namespace, dropped, _content_type=MERGE))
    other = {"metadata": {"annotations": {"example.com/note": "fine"}}}
    assert refused(lambda: admin.patch_namespaced_pod("plain", namespace, other, _content_type=MERGE)) is None
    annotations = admin.read_namespaced_pod("plain", namespace).metadata.annotations
    assert annotations[ANNOTATION] == grant.to_annotation() and annotations["example.com/note"] == "fine"


def test_the_extenders_binding_never_binds_a_recreated_pod_with_the_old_pods_grant(
    kube_api,  # noqa: F811
    namespace,  # noqa: F811
    extender_core: k8s.CoreV1Api,
    nodes: tuple[str, str],
) -> None:
    """The pod the grant was chosen for is deleted and a new one made under its name: the Binding names
    the old UID, so the API server refuses it and the new pod stays unbound and unannotated."""
    admin = k8s.CoreV1Api(kube_api)
    old = _pod_on(admin, namespace, "again", None, node_selector=NO_SCHEDULER)
    admin.delete_namespaced_pod("again", namespace, grace_period_seconds=0)
    wait_for(
        lambda: refused(lambda: admin.read_namespaced_pod("again", namespace)), lambda exc: exc is not None
    )
    new = _pod_on(admin, namespace, "again", None, node_selector=NO_SCHEDULER)
    assert new.metadata.uid != old.metadata.uid
    stale = Allocation(pod_uid=old.metadata.uid, namespace=namespace, name="again", node=nodes[0], cpus=(1,))
    with pytest.raises(BindError, match=r"pod .*/again: binding to node .* failed: 409 .*UID"):
        KubeBinder(extender_core).bind(stale)
    now = admin.read_namespaced_pod("again", namespace)
    assert now.spec.node_name is None and ANNOTATION not in (now.metadata.annotations or {})
    KubeBinder(extender_core).bind(dataclasses.replace(stale, pod_uid=new.metadata.uid))
    now = admin.read_namespaced_pod("again", namespace)
    assert now.spec.node_name == nodes[0]
    assert Allocation.from_annotation(now.metadata.annotations[ANNOTATION]).pod_uid == new.metadata.uid


def test_a_grant_that_does_not_fit_its_pod_is_ignored_by_the_agent(
    kube_api,  # noqa: F811
    namespace,  # noqa: F811
    extender_core: k8s.CoreV1Api,
    nodes: tuple[str, str],
) -> None:
    """The second line: a BestEffort pod of the default scheduler with exclusive CPUs in its grant (as a
    compromised or misconfigured writer could leave it) gets an Event and nothing applied."""
    admin = k8s.CoreV1Api(kube_api)
    node = nodes[0]
    pod = _pod_on(admin, namespace, "besteffort", None, node_selector=NO_SCHEDULER)
    assert (pod.spec.scheduler_name, pod.status.qos_class) == ("default-scheduler", "BestEffort")
    grant = Allocation(pod_uid=pod.metadata.uid, namespace=namespace, name="besteffort", node=node, cpus=(1,))
    KubeBinder(extender_core).bind(grant)
    applier = RecordingApplier()
    watcher = PodWatcher(admin, node, applier, report=kubernetes_event_reporter(admin, node), resync_s=30)
    watcher.start()
    try:
        events = wait_for(
            lambda: [e for e in admin.list_namespaced_event(namespace).items if e.reason == "GrantMismatch"],
            bool,
        )
    finally:
        watcher.stop()
    assert events[0].involved_object.name == "besteffort" and events[0].type == "Warning"
    assert "scheduled by 'default-scheduler'" in events[0].message
    assert applier.calls == []


def test_the_agent_account_changes_only_its_own_node_and_the_pods_bound_to_it(
    control_plane: ControlPlane,  # noqa: F811
    kube_api,  # noqa: F811
    namespace,  # noqa: F811
    policies,
    nodes: tuple[str, str],
    tmp_path: Path,
) -> None:
    mine, other = nodes
    agent = _core_as(agent_kubeconfig(control_plane, kube_api, mine, tmp_path / "agent.kubeconfig"))
    review = k8s.AuthenticationV1Api(agent.api_client).create_self_subject_review(k8s.V1SelfSubjectReview())
    assert review.status.user_info.extra[NODE_NAME_KEY] == [mine]

    admin = k8s.CoreV1Api(kube_api)
    here = _pod_on(admin, namespace, "here", mine)
    there = _pod_on(admin, namespace, "there", other)
    label = {"metadata": {"labels": {"gedge.io/driver": "535.104.05"}}}
    mark = {"metadata": {"annotations": {"gedge.io/allocated-gpu": "GPU-0"}}}

    assert refused(lambda: agent.patch_node(mine, label, _content_type=MERGE)) is None
    ready = {"status": {"conditions": [{"type": "GedgeAgentReady", "status": "True", "reason": "Ready"}]}}
    assert refused(lambda: agent.patch_node_status(mine, ready, _content_type=STRATEGIC)) is None
    assert refused(lambda: agent.patch_namespaced_pod("here", namespace, mark, _content_type=MERGE)) is None
    # The API server loads each policy on its own, a moment after it is created: the fixture waited
    # for the allocation policy, this waits for the node restriction by dry run (admission runs,
    # nothing is stored), so the node never gets the label before the policy is enforced.
    wait_for(
        lambda: refused(lambda: agent.patch_node(other, label, _content_type=MERGE, dry_run="All")),
        lambda exc: exc is not None and exc.status == 403,
        timeout=60,
    )
    denied_node = refused(lambda: agent.patch_node(other, label, _content_type=MERGE))
    assert denied_node is not None and denied_node.status == 403
    assert f"the request is for nodes of node {other}, the token is of node {mine}" in denied_node.body
    denied_status = refused(lambda: agent.patch_node_status(other, ready, _content_type=STRATEGIC))
    assert denied_status is not None and denied_status.status == 403
    assert f"the request is for nodes of node {other}" in denied_status.body
    denied_pod = refused(lambda: agent.patch_namespaced_pod("there", namespace, mark, _content_type=MERGE))
    assert denied_pod is not None and denied_pod.status == 403
    assert f"pods of node {other}" in denied_pod.body
    grant = Allocation(pod_uid=here.metadata.uid, namespace=namespace, name="here", node=mine, cpus=(0,))
    forged = {"metadata": {"annotations": {ANNOTATION: grant.to_annotation()}}}
    assert refused(lambda: agent.patch_namespaced_pod("here", namespace, forged, _content_type=MERGE))
    assert "gedge.io/driver" not in (admin.read_node(other).metadata.labels or {})
    assert "gedge.io/allocated-gpu" not in (
        admin.read_namespaced_pod("there", namespace).metadata.annotations or {}
    )
    assert there.spec.node_name == other

    # A gedge-agent token bound to no pod names no node: it may change nothing.
    unbound = _core_as(
        token_kubeconfig(control_plane, kube_api, "gedge-agent", tmp_path / "unbound.kubeconfig")
    )
    denied = refused(lambda: unbound.patch_node(mine, label))
    assert denied is not None and "the token is of node (none)" in denied.body
