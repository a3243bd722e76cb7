"""deploy/ applied as a user applies it, on a real node: kustomize over the repository's deploy/ with
only the project image and addresses changed, created through the API of a control plane that serves
pods (service-account tokens, the `kubernetes` Service through kube-proxy). The agent DaemonSet, the
extender, the second kube-scheduler and the workflow controller run as real pods of `make image`
(and of an image of the pinned kube-scheduler, tagged as deploy/ names it) on this machine's kubelet;
a pinned pod of the gedge-scheduler profile lands through them and runs on its CPUs; the agent pod
recreated by its DaemonSet takes its pods back from the checkpoint and kubelet's PodResources, and a
pinned pod deleted while the agent was away is released when it returns; the agent's Node carries
its GedgeAgentReady condition, and GedgeTopologyReported once the extenders hold its state.

What stands in: cert-manager (no image of it here) by tests.e2e.deployment.CertManagerStandIn, and
cluster DNS (none here) by the overlay pointing kube-scheduler at the extender's Service address,
with the Service's DNS name as the TLS server name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from gedge_model import ANNOTATION, Allocation
from gedge_model.certs import issue
from tests.e2e.cluster_objects import wait_for
from tests.e2e.control_plane import KUBERNETES_VERSION, ControlPlane, binary_dir, missing_binaries
from tests.e2e.deployment import (
    CertManagerStandIn,
    KubeProxy,
    apply,
    missing_tools,
    overlay,
    render,
    scheduler_image,
    tools_dir,
)
from tests.e2e.oci_image import renamed_archive
from tests.e2e.real_node import (
    POD_SUBNET,
    REAL_NODE_TAINT,
    RealNode,
    describe_pod,
    host_ip,
    missing_parts,
    report,
    running,
    workload_pod,
)
from tests.e2e.real_node import binary_dir as node_binary_dir
from tests.e2e.test_real_node_cpus import FIRST_CPUS, PINNING, container_cpus, online_cpus, parse_cpus

REPO = Path(__file__).resolve().parents[2]
IMAGE_ARCHIVE = REPO / "build" / "gedge-accel-image.tar"
SYSTEM = "gedge-system"
WORKLOADS = frozenset({"DaemonSet", "Deployment"})
AGENT_TLS = Path("/etc/gedge/tls")
AGENT_STATE = Path("/var/lib/gedge-agent")
HOST_FILES = (AGENT_TLS, AGENT_STATE)
"""Host paths deploy/'s agent reads or writes (hostPath): absent before (a host with an agent's files
is not one to test on), removed afterwards, with /etc/gedge when it was absent too."""
ROLLOUT_TIMEOUT = 300.0
AGENT_METRICS_PORT = 9400
"""deploy/agent/daemonset.yaml's --metrics-listen port."""
ONE_CPU = {"cpu": "1", "memory": "32Mi"}
DEFAULT_SCHEDULER = {
    "apiVersion": "kubescheduler.config.k8s.io/v1",
    "kind": "KubeSchedulerConfiguration",
    "leaderElection": {"leaderElect": False},
}


@dataclass
class Deployed:
    plane: ControlPlane
    node: RealNode
    api: k8s.ApiClient
    image: str


def _need(missing: list[str], what: str) -> None:
    if missing:
        message = f"{what} needs {missing}: run `make e2e-binaries system-deps image`"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)


def _import_project_image(node: RealNode, workdir: Path) -> str:
    """Import `make image`'s archive under a full reference kubelet can ask for (see
    oci_image.renamed_archive): localhost/gedge-accel:<version>."""
    reference = f"localhost/{_image_tag()}"
    node.import_image(renamed_archive(IMAGE_ARCHIVE, workdir / "gedge-accel-image.tar", reference))
    names = node.ctr("images", "ls", "-q").stdout.split()
    if reference not in names:
        raise AssertionError(f"{reference} not among the node's images {names}")
    return reference


def _image_tag() -> str:
    for line in (REPO / "pyproject.toml").read_text().splitlines():
        if line.startswith("version = "):
            return f"gedge-accel:{line.split('=', 1)[1].strip().strip(chr(34))}"
    raise AssertionError("no version in pyproject.toml")


def _write_agent_tls(certs: CertManagerStandIn, node: RealNode) -> None:
    """What docs/configuration.md ("TLS") asks of a user per node: a certificate named after the node
    from the gedge CA, with the CA, in /etc/gedge/tls."""
    ca_cert, ca_key = certs.ca(SYSTEM)
    cert, key = issue(ca_cert, ca_key, node.name, ips=[node.ip])
    AGENT_TLS.mkdir(parents=True, exist_ok=True)
    (AGENT_TLS / "tls.crt").write_bytes(cert)
    (AGENT_TLS / "tls.key").write_bytes(key)
    (AGENT_TLS / "tls.key").chmod(0o600)
    (AGENT_TLS / "ca.crt").write_bytes(ca_cert)


def _rolled_out(api: k8s.ApiClient) -> str:
    """'' once the agent on the node, the extender leader, both schedulers and the workflow
    controller are Ready; else what is not."""
    apps = k8s.AppsV1Api(api)
    waiting = []
    agent = apps.read_namespaced_daemon_set("gedge-agent", SYSTEM).status
    if (agent.number_ready or 0) < 1:
        waiting.append(f"gedge-agent ready {agent.number_ready}/{agent.desired_number_scheduled}")
    # Only the extender's leader is Ready (/readyz); the standby runs.
    for name, ready in (("gedge-extender", 1), ("gedge-scheduler", 2), ("gedge-workflow-controller", 1)):
        status = apps.read_namespaced_deployment(name, SYSTEM).status
        if (status.ready_replicas or 0) < ready:
            waiting.append(f"{name} ready {status.ready_replicas}/{ready}")
    return "; ".join(waiting)


def _pods(api: k8s.ApiClient) -> str:
    core = k8s.CoreV1Api(api)
    return "\n".join(
        describe_pod(core, SYSTEM, p.metadata.name) for p in core.list_namespaced_pod(SYSTEM).items
    )


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    bin_dir, tools = binary_dir(), tools_dir()
    _need(
        missing_binaries(bin_dir) + missing_tools(tools) + missing_parts(node_binary_dir()),
        "deploy/ on a node",
    )
    _need([] if IMAGE_ARCHIVE.exists() else [str(IMAGE_ARCHIVE)], "deploy/ on a node")
    if len(online_cpus()) < 2:
        pytest.skip("pinning needs at least 2 online CPUs")
    present = [str(p) for p in HOST_FILES if p.exists()]
    if present:
        pytest.skip(f"this host has {present} of an installed agent: not overwritten by a test")
    workdir = tmp_path_factory.mktemp("deploy")
    absent = [*HOST_FILES, *([AGENT_TLS.parent] if not AGENT_TLS.parent.exists() else [])]
    with contextlib.ExitStack() as stack:
        # Removed last (callbacks run in reverse): once the node is down, no agent can write them again.
        for path in absent:
            stack.callback(shutil.rmtree, path, ignore_errors=True)
        plane = ControlPlane(bin_dir, workdir / "plane", node_ip=host_ip()).start()
        stack.callback(plane.stop)
        plane.start_controller_manager()
        # The cluster's default scheduler places deploy/'s Deployments and DaemonSet pods.
        plane.start_scheduler(DEFAULT_SCHEDULER)
        node = RealNode(plane, workdir / "node").start()
        left: list[str] = []
        stack.callback(lambda: left.extend(node.stop()))
        api = plane.api_client()
        stack.callback(api.close)
        # This node is the cluster's only one, as a user's: no stand-in tests' pods to keep off it.
        taints = [t for t in node.node().spec.taints or () if t.key != REAL_NODE_TAINT]
        k8s.CoreV1Api(api).patch_node(node.name, {"spec": {"taints": taints or None}})
        proxy = KubeProxy(plane, tools / "kube-proxy", node.name, POD_SUBNET, workdir / "kube-proxy").start()
        stack.callback(proxy.stop)

        image = _import_project_image(node, workdir)
        archive, _ = scheduler_image(
            workdir / "kube-scheduler.tar", bin_dir / "kube-scheduler", KUBERNETES_VERSION
        )
        node.import_image(archive)

        certs = CertManagerStandIn(api)
        certs.install()
        docs = render(tools / "kustomize", overlay(workdir / "overlay", image))
        # cert-manager issues within seconds of the Certificates appearing; the stand-in issues them
        # (and the node's agent certificate is made from the CA) before the workloads are created.
        apply(api, [d for d in docs if d["kind"] not in WORKLOADS])
        certs.issue_all(SYSTEM)
        _write_agent_tls(certs, node)
        apply(api, [d for d in docs if d["kind"] in WORKLOADS])
        wait_for(
            lambda: _rolled_out(api),
            lambda waiting: not waiting,
            timeout=ROLLOUT_TIMEOUT,
            describe=lambda w: f"{w}\n{_pods(api)}",
        )
        yield Deployed(plane, node, api, image)
    if left:
        pytest.fail(f"the real node left host changes behind: {left}")


@pytest.fixture
def user_namespace(deployed: Deployed) -> Iterator[str]:
    """A fresh namespace with its `default` ServiceAccount (made by its controller) in place."""
    core = k8s.CoreV1Api(deployed.api)
    name = f"e2e-{os.urandom(4).hex()}"
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    wait_for(
        lambda: [a.metadata.name for a in core.list_namespaced_service_account(name).items],
        lambda n: "default" in n,
    )
    try:
        yield name
    finally:
        with contextlib.suppress(ApiException):
            core.delete_collection_namespaced_pod(name, grace_period_seconds=0)
        with contextlib.suppress(ApiException):
            core.delete_namespace(name)


def _agent_pod(core: k8s.CoreV1Api) -> k8s.V1Pod:
    pods = core.list_namespaced_pod(SYSTEM, label_selector="app.kubernetes.io/name=gedge-agent").items
    assert len(pods) == 1, [p.metadata.name for p in pods]
    return pods[0]


def _pinned(namespace: str, name: str, node: str) -> k8s.V1Pod:
    return workload_pod(
        name,
        FIRST_CPUS,
        scheduler="gedge-scheduler",
        requests=ONE_CPU,
        limits=ONE_CPU,
        annotations=PINNING,
        on_node=node,
    )


def _checkpointed(pod: k8s.V1Pod) -> bool:
    path = AGENT_STATE / "checkpoint.json"
    return path.exists() and pod.metadata.uid in path.read_text()


def test_deploy_runs_as_pods_of_the_project_image(deployed: Deployed) -> None:
    core = k8s.CoreV1Api(deployed.api)
    pods = core.list_namespaced_pod(SYSTEM).items
    assert {p.spec.node_name for p in pods} == {deployed.node.name}
    gedge = [c for p in pods for c in p.spec.containers if c.name != "kube-scheduler"]
    assert {c.image for c in gedge} == {deployed.image}
    schedulers = [c for p in pods for c in p.spec.containers if c.name == "kube-scheduler"]
    assert {c.image for c in schedulers} == {f"registry.k8s.io/kube-scheduler:{KUBERNETES_VERSION}"}
    # The agent serves on the node's address (host network); the extender pods, through the pod
    # network and mTLS with the node's certificate, hold its node-state watch.
    wait_for(
        lambda: _agent_metric("gedge_agent_watch_streams", deployed.node.ip),
        lambda streams: streams >= 1,
        describe=lambda streams: f"{streams} watch streams; {_pods(deployed.api)}",
    )


def test_agent_says_on_its_node_that_it_can_apply(deployed: Deployed) -> None:
    """The agent pod, as deploy/'s gedge-agent account with its pod-bound token, sets its Node's
    GedgeAgentReady condition (RBAC nodes/status, narrowed to its own node by deploy/policy)."""
    condition = wait_for(
        lambda: {c.type: c for c in deployed.node.node().status.conditions or ()}.get("GedgeAgentReady"),
        lambda found: found is not None,
        describe=lambda found: (
            f"no GedgeAgentReady condition; agent log:\n{_agent_log(k8s.CoreV1Api(deployed.api))}"
        ),
    )
    assert (condition.status, condition.reason) == ("True", "Ready")
    assert "cgroupfs driver" in condition.message
    # ... and GedgeTopologyReported once the deployed extenders hold its node-state watch
    wait_for(
        lambda: {c.type: c.status for c in deployed.node.node().status.conditions or ()}.get(
            "GedgeTopologyReported"
        ),
        lambda status: status == "True",
        describe=lambda status: (
            f"GedgeTopologyReported {status}; agent log:\n{_agent_log(k8s.CoreV1Api(deployed.api))}"
        ),
    )


SCHEDULED_WITHIN_S = 240.0
"""A pod the extender refused while the agent's report had not reached it (a just recreated agent) is
tried again when the agent's Node condition GedgeTopologyReported turns True: well before kube-scheduler
flushes its unschedulable queue (podMaxInUnschedulablePodsDuration, 5 min), which this bound is under."""
EXTENDER_METRICS_PORT = 9401


def _metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url, timeout=10) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
    return 0.0


def _extenders_holding_node(core: k8s.CoreV1Api) -> list[float]:
    """Fresh nodes in the cache of each Ready extender pod (the ones kube-scheduler reaches)."""
    pods = core.list_namespaced_pod(SYSTEM, label_selector="app.kubernetes.io/name=gedge-extender").items
    return [
        _metric(
            f"http://{p.status.pod_ip}:{EXTENDER_METRICS_PORT}/metrics", 'gedge_cache_nodes{state="fresh"}'
        )
        for p in pods
        if _ready(p) and p.status.pod_ip
    ]


def _agent_metric(name: str, ip: str) -> float:
    return _metric(f"http://{ip}:{AGENT_METRICS_PORT}/metrics", name)


def test_pinned_pod_is_placed_by_the_deployed_scheduler_and_extender(
    deployed: Deployed, user_namespace: str
) -> None:
    core = k8s.CoreV1Api(deployed.api)
    # Created once the extender kube-scheduler calls holds the node's report, so the first try places it.
    wait_for(
        lambda: _extenders_holding_node(core),
        lambda fresh: fresh != [] and min(fresh) >= 1,
        describe=lambda fresh: f"fresh nodes per Ready extender: {fresh}; {_pods(deployed.api)}",
    )
    core.create_namespaced_pod(user_namespace, _pinned(user_namespace, "pinned", deployed.node.name))
    pod = running(core, user_namespace, "pinned", timeout=SCHEDULED_WITHIN_S)
    allocation = Allocation.from_annotation(pod.metadata.annotations[ANNOTATION])
    mine = set(allocation.cpus)
    assert len(mine) == 1 and mine <= online_cpus()
    first = parse_cpus(report(core, user_namespace, "pinned")["FIRST"])
    assert first == mine, f"first instruction on {first}, not {mine}; agent log:\n{_agent_log(core, 200)}"
    core.delete_namespaced_pod("pinned", user_namespace)


def test_recreated_agent_pod_keeps_its_pinned_pods(deployed: Deployed, user_namespace: str) -> None:
    """The agent's pod deleted and made again by its DaemonSet: the pinned pod keeps its CPUs and its
    checkpoint entry, and the new agent still knows it: deleting it gives its CPUs back."""
    core = k8s.CoreV1Api(deployed.api)
    node = deployed.node.name
    neighbour = _neighbour(core, user_namespace, node)
    first = _pinned_running(core, user_namespace, "first", node)
    mine = set(Allocation.from_annotation(first.metadata.annotations[ANNOTATION]).cpus)
    wait_for(lambda: container_cpus(neighbour), lambda c: c == online_cpus() - mine)

    old = _agent_pod(core)
    core.delete_namespaced_pod(old.metadata.name, SYSTEM)
    _agent_back(deployed, old)
    assert container_cpus(core.read_namespaced_pod("first", user_namespace)) == mine
    assert container_cpus(neighbour) == online_cpus() - mine
    assert _checkpointed(first)

    core.delete_namespaced_pod("first", user_namespace)
    wait_for(
        lambda: container_cpus(neighbour),
        lambda c: c == online_cpus(),
        describe=lambda c: f"neighbour on {c} after the pinned pod went; agent log:\n{_agent_log(core)}",
    )
    wait_for(lambda: _checkpointed(first), lambda held: not held)


def test_pod_deleted_while_the_agent_is_away_is_released_when_it_returns(
    deployed: Deployed, user_namespace: str
) -> None:
    """The agent's DaemonSet taken off the node (a node selector), a pinned pod deleted meanwhile, the
    DaemonSet back: the returning agent releases the gone pod's CPUs and forgets it."""
    core, apps = k8s.CoreV1Api(deployed.api), k8s.AppsV1Api(deployed.api)
    node = deployed.node.name
    neighbour = _neighbour(core, user_namespace, node)
    pinned = _pinned_running(core, user_namespace, "pinned", node)
    mine = set(Allocation.from_annotation(pinned.metadata.annotations[ANNOTATION]).cpus)
    wait_for(lambda: container_cpus(neighbour), lambda c: c == online_cpus() - mine)
    assert _checkpointed(pinned)

    old = _agent_pod(core)
    away = {"spec": {"template": {"spec": {"nodeSelector": {"gedge.io/e2e-agent-away": "true"}}}}}
    apps.patch_namespaced_daemon_set("gedge-agent", SYSTEM, away)
    wait_for(lambda: _agent_pods(core), lambda pods: not pods, timeout=ROLLOUT_TIMEOUT, describe=str)
    core.delete_namespaced_pod("pinned", user_namespace, grace_period_seconds=0)
    wait_for(
        lambda: [p.metadata.name for p in core.list_namespaced_pod(user_namespace).items],
        lambda names: "pinned" not in names,
    )
    assert container_cpus(neighbour) == online_cpus() - mine, "nothing widens cpusets while the agent is away"

    back = [{"op": "remove", "path": "/spec/template/spec/nodeSelector"}]
    apps.patch_namespaced_daemon_set("gedge-agent", SYSTEM, back)
    _agent_back(deployed, old)
    wait_for(
        lambda: container_cpus(neighbour),
        lambda c: c == online_cpus(),
        describe=lambda c: f"neighbour on {c}; agent log:\n{_agent_log(core)}",
    )
    wait_for(lambda: _checkpointed(pinned), lambda held: not held)


def _neighbour(core: k8s.CoreV1Api, namespace: str, node: str) -> k8s.V1Pod:
    core.create_namespaced_pod(namespace, workload_pod("neighbour", "exec sleep 3600", node_name=node))
    return running(core, namespace, "neighbour")


def _pinned_running(core: k8s.CoreV1Api, namespace: str, name: str, node: str) -> k8s.V1Pod:
    core.create_namespaced_pod(namespace, _pinned(namespace, name, node))
    pod = running(core, namespace, name, timeout=SCHEDULED_WITHIN_S)
    mine = set(Allocation.from_annotation(pod.metadata.annotations[ANNOTATION]).cpus)
    wait_for(lambda: container_cpus(pod), lambda c: c == mine)
    return pod


def _agent_pods(core: k8s.CoreV1Api) -> list[str]:
    pods = core.list_namespaced_pod(SYSTEM, label_selector="app.kubernetes.io/name=gedge-agent").items
    return [p.metadata.name for p in pods]


def _agent_back(deployed: Deployed, old: k8s.V1Pod) -> k8s.V1Pod:
    """The agent's new pod once Ready and registered with kubelet again."""
    core = k8s.CoreV1Api(deployed.api)
    pod = wait_for(
        lambda: _agent_pod_or_none(core),
        lambda p: p is not None and p.metadata.uid != old.metadata.uid and _ready(p),
        timeout=ROLLOUT_TIMEOUT,
        describe=lambda p: _pods(deployed.api),
    )
    assert pod is not None
    return pod


def _agent_log(core: k8s.CoreV1Api, lines: int = 30) -> str:
    pod = _agent_pod_or_none(core)
    if pod is None:
        return "(no agent pod)"
    with contextlib.suppress(ApiException):
        return "\n".join(core.read_namespaced_pod_log(pod.metadata.name, SYSTEM).splitlines()[-lines:])
    return "(no log)"


def _agent_pod_or_none(core: k8s.CoreV1Api) -> k8s.V1Pod | None:
    pods = core.list_namespaced_pod(SYSTEM, label_selector="app.kubernetes.io/name=gedge-agent").items
    live = [p for p in pods if p.metadata.deletion_timestamp is None]
    return live[0] if len(live) == 1 else None


def _ready(pod: k8s.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or ())
