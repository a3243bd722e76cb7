"""Our parts on the real control plane: agents behind Node objects, the extender, kube-scheduler calling it.

- deploy/'s namespace and RBAC are applied through the API; kube-scheduler, the
  extender and the agents run as deploy/'s service accounts (bound-token
  kubeconfigs), so a missing permission in deploy/ fails here as in a cluster.
- Each node is a real `gedge-agent serve` over a sysfs root: a fixture snapshot
  (../shared/fixtures/sysfs) or a synthetic GPU server (tests/e2e/boxes.py, NVML
  answered by a stand-in). Its Node object advertises what the agent's device
  plugins would (capacity = allocatable) and points at the agent through
  InternalIP 127.0.0.1 and the `gedge.io/agent-port` annotation.
- kube-scheduler loads deploy/scheduler/gedge-scheduler-config.yaml with only
  the extender URL, its tlsConfig files and its kubeconfig rewritten.
- TLS as deployed: every agent serves mTLS with a certificate named after its
  node, the extender calls them with its own and serves HTTPS that only
  kube-scheduler's client certificate may call (gedge_model.certs, one CA).
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes import utils as k8s_utils

from agent.deviceplugin.devices import plugin_devices
from agent.discovery import discover
from gedge_model import NodeTopology
from gedge_model.certs import issue_files
from tests.e2e.boxes import box_topology, gpu_box
from tests.e2e.cluster_objects import node_object, register_node
from tests.e2e.control_plane import ControlPlane, kubeconfig_text
from tests.e2e.processes import HarnessError, ManagedProcess, free_port, wait_for_port

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
SCHEDULER_CONFIG = DEPLOY / "scheduler" / "gedge-scheduler-config.yaml"
SCHEDULER_CONFIG_ENV = "GEDGE_E2E_SCHEDULER_CONFIG"
"""Names another file (e.g. deploy/scheduler/replace-default-scheduler.yaml) to run kube-scheduler with."""
RBAC_MANIFESTS = (
    DEPLOY / "namespace.yaml",
    DEPLOY / "scheduler" / "scheduler.yaml",
    DEPLOY / "scheduler" / "extender-rbac.yaml",
    DEPLOY / "agent" / "rbac.yaml",
)
RBAC_KINDS = frozenset(
    {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
)
SYSTEM_NAMESPACE = "gedge-system"
SCHEDULER_ACCOUNT = "gedge-scheduler"
EXTENDER_ACCOUNT = "gedge-extender"
AGENT_ACCOUNT = "gedge-agent"
AGENT_START_TIMEOUT = 60.0
EXTENDER_START_TIMEOUT = 120.0


def manifests(path: Path, kinds: frozenset[str] | None = None) -> list[dict[str, Any]]:
    """The YAML documents of `path` (those of `kinds` only, if given)."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return [d for d in docs if kinds is None or d.get("kind") in kinds]


def apply_manifests(api: k8s.ApiClient, docs: list[dict[str, Any]]) -> None:
    """Create each object through the API (what `kubectl create -f` does); ones already there are kept."""
    for doc in docs:
        try:
            k8s_utils.create_from_dict(api, doc)
        except k8s_utils.FailToCreateError as exc:
            if any(e.status != 409 for e in exc.api_exceptions):
                raise


def deploy_scheduler_configuration(
    extender_url: str, source: Path | None = None, tls: dict[str, str] | None = None
) -> dict[str, Any]:
    """deploy/'s KubeSchedulerConfiguration (inside its ConfigMap), every extender sent to `extender_url`;
    with `tls` (certFile, keyFile, caFile), each extender's tlsConfig files are those."""
    source = source or Path(os.environ.get(SCHEDULER_CONFIG_ENV) or SCHEDULER_CONFIG)
    configuration: dict[str, Any] | None = None
    for doc in manifests(source):
        if doc.get("kind") == "KubeSchedulerConfiguration":
            configuration = doc
        for text in (doc.get("data") or {}).values() if doc.get("kind") == "ConfigMap" else ():
            parsed = yaml.safe_load(text)
            if isinstance(parsed, dict) and parsed.get("kind") == "KubeSchedulerConfiguration":
                configuration = parsed
    if configuration is None:
        raise HarnessError(f"{source} holds no KubeSchedulerConfiguration")
    extenders = configuration.get("extenders") or []
    if not extenders:
        raise HarnessError(f"{source}: KubeSchedulerConfiguration has no extenders")
    for extender in extenders:
        extender["urlPrefix"] = extender_url
        if tls is not None and "tlsConfig" in extender:
            extender["tlsConfig"] = {**extender["tlsConfig"], **tls}
    return configuration


def token_kubeconfig(plane: ControlPlane, api: k8s.ApiClient, account: str, path: Path) -> Path:
    """A kubeconfig that authenticates as deploy/'s service account `account` with a fresh bound token."""
    assert plane.ca is not None
    spec = k8s.V1TokenRequestSpec(audiences=[], expiration_seconds=7200)
    token = k8s.CoreV1Api(api).create_namespaced_service_account_token(
        account, SYSTEM_NAMESPACE, k8s.AuthenticationV1TokenRequest(spec=spec)
    )
    user = f"system:serviceaccount:{SYSTEM_NAMESPACE}:{account}"
    path.write_text(kubeconfig_text(plane.server, plane.ca.cert, token.status.token, user))
    path.chmod(0o600)
    return path


def advertised_resources(topology: NodeTopology) -> dict[str, int]:
    """gedge.io/* counts as the agent's device plugins advertise them to kubelet (healthy devices)."""
    return {resource: len(devices) for resource, devices in plugin_devices(topology).items()}


@dataclass
class AgentNode:
    """One e2e node: its agent process and the Node object that points at it."""

    name: str
    root: Path
    topology: NodeTopology
    process: ManagedProcess
    port: int
    metrics_port: int
    box_model: str | None = None
    resources: dict[str, int] = field(default_factory=dict)


@dataclass
class NodeSpec:
    """A node to run: a sysfs root (fixture snapshot) or a synthetic GPU server model."""

    name: str
    root: Path | None = None
    box_model: str | None = None
    driver: str | None = None
    """NVIDIA driver version a GPU box's NVML reports."""


class EdgeCluster:
    """Agents, Node objects, the extender and kube-scheduler over one ControlPlane."""

    def __init__(self, plane: ControlPlane, api: k8s.ApiClient, workdir: Path) -> None:
        self.plane = plane
        self.api = api
        self.workdir = workdir
        self.nodes: dict[str, AgentNode] = {}
        self.extender: ManagedProcess | None = None
        self.extender_port = 0
        self.scheduler_name = ""
        self.scheduler: ManagedProcess | None = None
        self.extender_metrics_port = 0
        self.pki = workdir / "pki"
        for name in ("gedge-extender", "kube-scheduler"):
            issue_files(self.pki, name, ips=["127.0.0.1"], days=2)

    def agent_tls_flags(self, name: str, ip: str) -> list[str]:
        """An agent's mTLS flags: a certificate for `name` at `ip` from the cluster's gedge CA, which
        the extender trusts and names the node by."""
        issued = issue_files(self.pki, name, ips=[ip, "127.0.0.1"], days=2)
        return [*self.tls_flags(issued.cert.stem), f"--tls-ca={self.pki / 'ca.pem'}"]

    def tls_flags(self, name: str, prefix: str = "--tls") -> list[str]:
        """--tls-cert/--tls-key of `name`'s certificate (issued by the cluster's gedge CA)."""
        return [f"{prefix}-cert={self.pki / f'{name}.pem'}", f"{prefix}-key={self.pki / f'{name}.key'}"]

    def scheduler_context(self, client: str | None = "kube-scheduler") -> ssl.SSLContext:
        """What kube-scheduler's tlsConfig sets up: the gedge CA and (unless None) a client certificate."""
        context = ssl.create_default_context(cafile=str(self.pki / "ca.pem"))
        if client is not None:
            context.load_cert_chain(self.pki / f"{client}.pem", self.pki / f"{client}.key")
        return context

    def start(self, specs: list[NodeSpec]) -> EdgeCluster:
        try:
            apply_manifests(self.api, [d for path in RBAC_MANIFESTS for d in manifests(path, RBAC_KINDS)])
            for spec in specs:
                self.add_node(spec)
            self.start_extender()
            self._start_scheduler()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.scheduler is not None:
            self.plane.stop_scheduler(self.scheduler)
        if self.extender is not None:
            self.extender.stop()
        for node in self.nodes.values():
            node.process.stop()

    # -- nodes -----------------------------------------------------------------------------------

    def add_node(self, spec: NodeSpec) -> AgentNode:
        port, metrics_port = free_port(), free_port()
        state_dir = self.workdir / "agents" / spec.name
        state_dir.mkdir(parents=True, exist_ok=True)
        kubeconfig = token_kubeconfig(self.plane, self.api, AGENT_ACCOUNT, state_dir / "agent.kubeconfig")
        serve_flags = [
            f"--node-name={spec.name}",
            f"--listen=127.0.0.1:{port}",
            f"--metrics-listen=127.0.0.1:{metrics_port}",
            f"--kubeconfig={kubeconfig}",
            # Report only: the pods here have no containers, cgroups or netns to apply to.
            "--no-apply",
            f"--device-plugin-dir={state_dir / 'device-plugins'}",
            f"--checkpoint={state_dir / 'checkpoint.json'}",
            "--log-level=info",
            *self.tls_flags(issue_files(self.pki, spec.name, ips=["127.0.0.1"], days=2).cert.stem),
            f"--tls-ca={self.pki / 'ca.pem'}",
        ]
        if spec.box_model is not None:
            root = spec.root or state_dir / "sysfs"
            topology = box_topology(gpu_box(root, spec.box_model, spec.driver), spec.name)
            argv = [
                sys.executable,
                "-m",
                "tests.e2e.gpu_agent",
                f"--model={spec.box_model}",
                f"--root={root}",
            ]
            if spec.driver is not None:
                argv.append(f"--driver={spec.driver}")
            argv += ["--", *serve_flags]
        else:
            if spec.root is None:
                raise HarnessError(f"node {spec.name}: give a sysfs root or a box model")
            root = spec.root
            topology = discover(root, node_name=spec.name)
            argv = [str(Path(sys.executable).parent / "gedge-agent"), "serve", f"--root={root}", *serve_flags]
        process = ManagedProcess(
            f"gedge-agent {spec.name}", argv, self.plane.log_dir / f"agent-{spec.name}.log", cwd=REPO
        ).start()
        process.wait_until(lambda: wait_for_port(port), AGENT_START_TIMEOUT, f"listened on {port}")
        node = AgentNode(spec.name, root, topology, process, port, metrics_port, spec.box_model)
        node.resources = advertised_resources(topology)
        online = [cpu for cpu in topology.cpus if cpu.online]
        memory = sum(n.memory_bytes or 0 for n in topology.numa_nodes) or 8 << 30
        register_node(
            k8s.CoreV1Api(self.api),
            node_object(
                spec.name,
                cpu=str(len(online)),
                memory=str(memory),
                extended=node.resources,
                agent_port=port,
            ),
        )
        self.nodes[spec.name] = node
        return node

    # -- extender --------------------------------------------------------------------------------

    @property
    def extender_url(self) -> str:
        return f"https://127.0.0.1:{self.extender_port}"

    def start_extender(self) -> None:
        """Start (or start again, on the same port) `gedge-extender serve` as deploy/'s service account."""
        if not self.extender_port:
            self.extender_port, self.extender_metrics_port = free_port(), free_port()
        kubeconfig = token_kubeconfig(
            self.plane, self.api, EXTENDER_ACCOUNT, self.workdir / "extender.kubeconfig"
        )
        if self.extender is None:
            self.extender = ManagedProcess(
                "gedge-extender",
                [
                    str(Path(sys.executable).parent / "gedge-extender"),
                    "serve",
                    f"--kubeconfig={kubeconfig}",
                    f"--listen=127.0.0.1:{self.extender_port}",
                    f"--metrics-listen=127.0.0.1:{self.extender_metrics_port}",
                    *self.tls_flags("gedge-extender"),
                    f"--tls-client-ca={self.pki / 'ca.pem'}",
                    *self.tls_flags("gedge-extender", "--agent-tls"),
                    f"--agent-tls-ca={self.pki / 'ca.pem'}",
                ],
                self.plane.log_dir / "gedge-extender.log",
                cwd=REPO,
            )
        self.extender.start()
        self.extender.wait_until(self._extender_healthy, EXTENDER_START_TIMEOUT, "answered /healthz")
        self.extender.wait_until(
            self._extender_sees_every_node, EXTENDER_START_TIMEOUT, "had a live report from every agent"
        )

    def _extender_healthy(self) -> bool:
        url = f"http://127.0.0.1:{self.extender_metrics_port}/healthz"
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status == 200

    def _extender_sees_every_node(self) -> bool:
        return self.extender_judges(sorted(self.nodes))

    def extender_judges(self, node_names: list[str]) -> bool:
        """Ask /filter, as kube-scheduler would, about a one-GPU pod: no node may be unresolvable.

        Until the extender has an agent's report it puts that node among the
        unresolvable ones (not reported yet); a pod refused for that waits in
        kube-scheduler's unschedulable queue for a cluster event, so tests start
        only once every node is judged on its devices (fits, or has too few).
        """
        result = self._probe_filter(node_names)
        judged = set(result.get("NodeNames") or ()) | set(result.get("FailedNodes") or ())
        return not result.get("FailedAndUnresolvableNodes") and judged == set(node_names)

    def extender_refusal(self, node_name: str) -> str | None:
        """Why the extender puts `node_name` among the unresolvable nodes for a one-GPU pod, if it does."""
        return (self._probe_filter([node_name]).get("FailedAndUnresolvableNodes") or {}).get(node_name)

    def _probe_filter(self, node_names: list[str]) -> dict[str, Any]:
        name = "readiness-probe"
        gpu = {"gedge.io/gpu": "1"}
        probe = {
            "Pod": {
                "metadata": {"name": name, "namespace": SYSTEM_NAMESPACE, "uid": name},
                "spec": {"containers": [{"name": "probe", "resources": {"requests": gpu, "limits": gpu}}]},
            },
            "Nodes": None,
            "NodeNames": node_names,
        }
        request = urllib.request.Request(
            f"{self.extender_url}/filter",
            data=json.dumps(probe).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5, context=self.scheduler_context()) as reply:
            result: dict[str, Any] = json.loads(reply.read())
        return result

    def kill_extender(self) -> None:
        """SIGKILL: no chance to flush or hand anything over, as in a crash."""
        if self.extender is not None:
            self.extender.stop(signal.SIGKILL)

    def restart_extender(self) -> None:
        self.kill_extender()
        self.start_extender()

    # -- scheduler -------------------------------------------------------------------------------

    def _start_scheduler(self) -> None:
        tls = {
            "certFile": str(self.pki / "kube-scheduler.pem"),
            "keyFile": str(self.pki / "kube-scheduler.key"),
            "caFile": str(self.pki / "ca.pem"),
        }
        configuration = deploy_scheduler_configuration(self.extender_url, tls=tls)
        profiles = configuration.get("profiles") or [{}]
        self.scheduler_name = profiles[0].get("schedulerName", "default-scheduler")
        kubeconfig = token_kubeconfig(
            self.plane, self.api, SCHEDULER_ACCOUNT, self.workdir / "scheduler.kubeconfig"
        )
        self.scheduler = self.plane.start_scheduler(configuration, kubeconfig, name="gedge-scheduler")

    def node_names(self) -> list[str]:
        return list(self.nodes)
