"""`gedge-agent serve`: the node daemon (gRPC NodeAgent + health, /metrics, re-discovery on change)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from agent.apply import (
    ApplyError,
    ApplyManager,
    CgroupDriver,
    CgroupVersion,
    PodResolver,
    StaticPodResolver,
    nic,
)
from agent.apply.nic import DataRoute, NetlinkVfControl, NicApplier, SriovError, VfControl
from agent.apply.nic.capability import CAP_NET_ADMIN, SriovGate, has_capability
from agent.apply.readiness import ApplyGate, Readiness
from agent.certificates import NodeCertificate
from agent.commands.common import add_node_options, read_settings
from agent.config import AgentConfig, ConfigError, parse_data_route, parse_listen
from agent.deviceplugin import DevicePluginManager, KubernetesPendingPodSource
from agent.health import HealthMonitor, XidWatcher, kubernetes_node_events
from agent.metrics import AgentMetrics
from agent.metrics_apply import ApplyMetrics, MeteredApplier
from agent.metrics_inventory import NodeInventoryCollector
from agent.node_labels import NodeLabeler
from agent.nri import NriCpusets, run_sessions
from agent.podresources import KubeletReconciler, KubeletServedSource, Mismatch, PodResourcesClient
from agent.podwatch import (
    PodStatusResolver,
    PodWatcher,
    core_api,
    kubernetes_event_reporter,
    node_condition_writer,
    node_event_reporter,
)
from agent.podwatch.pods import PodView
from agent.readyz import ReadyState, start_http
from agent.service.server import AgentRuntime, default_discover
from agent.service.store import Snapshot
from agent.topology_reported import TOPOLOGY_REPORTED, TopologyReportedCondition
from gedge_model.tls import TlsConfigError

log = structlog.get_logger("gedge.agent.serve")

_FLAG_KEYS = (
    "root",
    "node_name",
    "listen",
    "metrics_listen",
    "tls_cert",
    "tls_key",
    "tls_ca",
    "tls_allowed_clients",
    "tls_csr",
    "tls_csr_expiration_s",
    "insecure",
    "poll_interval_s",
    "full_rediscovery_interval_s",
    "netlink",
    "netns",
    "max_receive_message_bytes",
    "max_send_message_bytes",
    "shutdown_grace_s",
    "max_concurrent_rpcs",
    "max_streams_per_connection",
    "max_watch_streams_per_client",
    "max_connection_idle_s",
    "reservation_ttl_s",
    "log_level",
    "checkpoint",
    "cgroup_root",
    "cgroup_driver",
    "kubelet_config",
    "apply",
    "kubeconfig",
    "device_plugin_dir",
    "timeslice_replicas",
    "sriov_vf_control",
    "health_interval_s",
    "reserved_cpus",
    "nri_socket",
    "pod_resources_socket",
    "granting_schedulers",
)


def register(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Settings come from defaults < --config YAML < GEDGE_AGENT_<KEY> environment < flags.\n"
        "Every flag --some-key is the YAML key some_key and the variable GEDGE_AGENT_SOME_KEY.\n"
        "All settings with their defaults: docs/configuration.md.\n\n"
        "examples:\n"
        "  gedge-agent certs --dir /etc/gedge/pki edge-1 gedge-extender   # a CA and two certificates\n"
        "  gedge-agent serve --node-name edge-1 --tls-cert /etc/gedge/pki/edge-1.pem \\\n"
        "      --tls-key /etc/gedge/pki/edge-1.key --tls-ca /etc/gedge/pki/ca.pem  # mTLS, metrics :9400\n"
        "  gedge-agent serve --config /etc/gedge/agent.yaml         # settings from a YAML file\n"
        "  gedge-agent serve --root /tmp/snapshot --no-apply --listen 127.0.0.1:50051 --insecure  # plain"
    )
    add_node_options(parser, cgroup_driver_default="from --kubelet-config, else the kubepods tree")
    parser.add_argument("--node-name", metavar="NAME", help="node name to report (default: the hostname)")
    parser.add_argument("--listen", metavar="HOST:PORT", help="gRPC address (default 0.0.0.0:50051)")
    parser.add_argument(
        "--metrics-listen", metavar="HOST:PORT", help="Prometheus /metrics address (default 0.0.0.0:9400)"
    )
    parser.add_argument("--tls-cert", metavar="FILE", help="this node's certificate (PEM); enables mTLS")
    parser.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM)")
    parser.add_argument("--tls-ca", metavar="FILE", help="CA that signs client certificates (PEM)")
    parser.add_argument(
        "--tls-allowed-clients",
        metavar="NAMES",
        help="comma-separated client certificate names allowed to call (gedge-extender)",
    )
    parser.add_argument(
        "--tls-csr",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="under Kubernetes: get --tls-cert/--tls-key from a CertificateSigningRequest (gedge.io/agent)",
    )
    parser.add_argument(
        "--tls-csr-expiration-s", type=int, metavar="S", help="validity each CSR asks for (86400, >= 600)"
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="plaintext gRPC without client authentication (warns at start); TLS is required otherwise",
    )
    parser.add_argument("--poll-interval-s", type=float, metavar="S", help="fingerprint check period (0.5)")
    parser.add_argument(
        "--full-rediscovery-interval-s", type=float, metavar="S", help="full re-discovery period (30)"
    )
    parser.add_argument(
        "--netlink",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="re-discover on netlink link events (default: when --root is /)",
    )
    parser.add_argument("--netns", metavar="NAME", help="listen for link events in this network namespace")
    parser.add_argument("--max-receive-message-bytes", type=int, metavar="N")
    parser.add_argument("--max-send-message-bytes", type=int, metavar="N")
    parser.add_argument("--max-concurrent-rpcs", type=int, metavar="N", help="calls served at once (100)")
    parser.add_argument(
        "--max-streams-per-connection", type=int, metavar="N", help="open calls per client connection (32)"
    )
    parser.add_argument(
        "--max-watch-streams-per-client", type=int, metavar="N", help="watch streams per client address (8)"
    )
    parser.add_argument(
        "--max-connection-idle-s", type=float, metavar="S", help="close idle client connections (300)"
    )
    parser.add_argument("--shutdown-grace-s", type=float, metavar="S")
    parser.add_argument(
        "--kubeconfig",
        metavar="FILE",
        help="Kubernetes API access (in a pod: its service account); runs the pod watch and device plugins",
    )
    parser.add_argument(
        "--kubelet-config", metavar="FILE", help="kubelet's config file, read for cgroupDriver"
    )
    parser.add_argument(
        "--apply",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="apply allocations (default); --no-apply reports only",
    )
    parser.add_argument("--timeslice-replicas", type=int, metavar="N")
    parser.add_argument(
        "--sriov-vf-control", choices=("netlink", "off"), help="how VF settings are made (netlink)"
    )
    parser.add_argument("--health-interval-s", type=float, metavar="S", help="device health check period (1)")
    parser.add_argument(
        "--nri-socket",
        metavar="PATH",
        help="the runtime's NRI socket (default /var/run/nri/nri.sock; '' turns NRI off)",
    )
    parser.add_argument(
        "--pod-resources-socket",
        metavar="PATH",
        help="kubelet's PodResources socket (default /var/lib/kubelet/pod-resources/kubelet.sock; '' off)",
    )
    parser.add_argument(
        "--reserved-cpus", metavar="CPULIST", help="CPUs kept for the system, never pinned (e.g. 0,1)"
    )
    parser.add_argument(
        "--reservation-ttl-s",
        type=float,
        metavar="S",
        help="without Kubernetes: release reservations not attached this long (120; 0: never)",
    )
    parser.add_argument(
        "--granting-schedulers",
        metavar="NAMES",
        help="comma-separated schedulerNames whose pods' allocations are applied (gedge-scheduler)",
    )
    parser.set_defaults(run=run)


def cgroup_hierarchy(root: Path) -> tuple[Path, CgroupVersion]:
    """The hierarchy that holds kubepods: the v2 mount itself, or the v1 cpuset controller's."""
    if (root / "cgroup.controllers").exists():
        return root, CgroupVersion.V2
    cpuset = root / "cpuset"
    return (cpuset if cpuset.is_dir() else root), CgroupVersion.V1


@dataclass
class NodeParts:
    """What acts on the node besides the gRPC service: the applier, and under Kubernetes the pod watch
    and the device plugins."""

    applier: ApplyManager | MeteredApplier | None = None
    sriov: SriovGate | None = None
    """Which PFs' kernel-netdev VFs are offered; applied to every discovered topology."""
    pod_runtimes: StaticPodResolver | None = None
    """Without Kubernetes: where pods run, as Apply callers say."""
    pod_status: PodStatusResolver | None = None
    """Under Kubernetes: where pods run, from the pod watch."""
    manager: ApplyManager | None = None
    """The applier itself, whatever wraps it in `applier`."""
    core: Any = None
    watcher: PodWatcher | None = None
    plugins: DevicePluginManager | None = None
    labeler: NodeLabeler | None = None
    nri: NriCpusets | None = None
    """The NRI plugin's decisions, shared by its sessions; None when NRI is off or apply is off."""
    nri_stop: threading.Event | None = None
    nri_thread: threading.Thread | None = None
    gate: ApplyGate | None = None
    """Whether the node's cgroups can be driven now (driver known, kubepods tree there and writable)."""
    topology_reported: TopologyReportedCondition | None = None
    """The Node condition saying whether an extender holds this node's state."""


def make_vf_control(config: AgentConfig) -> VfControl | None:
    """The VF control `sriov_vf_control` names: netlink on the PF (in `netns` when set), or None."""
    if config.sriov_vf_control == "off":
        return None
    return NetlinkVfControl(host_netns=config.netns)


def data_routes(config: AgentConfig) -> tuple[DataRoute, ...]:
    return tuple(DataRoute(*parse_data_route(text)) for text in config.data_routes)


def sriov_gate(config: AgentConfig, vf_control: VfControl | None) -> SriovGate:
    """What keeps VFs that would fail every pod out of the report; the node-wide reason, if any."""
    if not config.apply:
        return SriovGate(None, "apply is off (--no-apply): nothing would configure a VF")
    if vf_control is None:
        return SriovGate(None, "sriov_vf_control is off")
    if config.is_this_machine and not has_capability(CAP_NET_ADMIN):
        return SriovGate(None, "the agent lacks CAP_NET_ADMIN: VF settings cannot be made")
    return SriovGate(vf_control)


def make_parts(config: AgentConfig, core: Any) -> NodeParts:
    """ApplyManager over the node's cgroups and netlink, told where pods run by the pod watch under
    Kubernetes (`core` set) or by Apply callers without it. --no-apply: report only.

    Without Kubernetes an Apply that does not say where the pod runs (a bind: the binder cannot know)
    reserves the allocation; the Apply that brings the runtime attaches it."""
    vf_control = make_vf_control(config) if config.apply else None
    parts = NodeParts(core=core, sriov=sriov_gate(config, vf_control))
    if not config.apply:
        return parts
    root, version = cgroup_hierarchy(Path(config.cgroup_root))
    parts.gate = ApplyGate(config.cgroup_driver, Path(config.kubelet_config), root)
    driver = parts.gate.refresh().driver or CgroupDriver.SYSTEMD
    resolver: PodResolver
    if core is not None:
        resolver = parts.pod_status = PodStatusResolver(root, driver)
    else:
        resolver = parts.pod_runtimes = StaticPodResolver()
    manager = ApplyManager(
        cgroup_root=root,
        cgroup_driver=driver,
        cgroup_version=version,
        checkpoint_path=Path(config.checkpoint),
        resolver=resolver,
        nic=NicApplier(
            sysfs_root=Path(config.root),
            vf_control=vf_control,
            host_netns=config.netns,
            routes=data_routes(config),
        ),
        reserved_cpus=config.reserved_cpu_set,
        reserve_unresolved=core is None,
    )
    parts.applier = parts.manager = manager
    # An agent over a sysfs snapshot (a test box, a replay) never joins the machine's runtime.
    if config.nri_socket and config.is_this_machine:
        parts.nri = NriCpusets(
            config.node_name or socket.gethostname(),
            online_cpus=lambda: frozenset(),
            reserved_cpus=config.reserved_cpu_set,
            recorded=manager.applied,
        )
        manager.pinned_elsewhere = parts.nri.pinned_pods
    parts.gate.add_listener(lambda readiness: follow_driver(parts, readiness))
    return parts


NRI_REGISTER_WAIT_S = 15.0
"""How long the agent waits for its NRI plugin to register before it serves the node's state anyway."""


async def start_nri(parts: NodeParts, runtime: AgentRuntime, config: AgentConfig) -> None:
    """Serve NRI sessions from a thread while the socket exists (retried every readiness interval).

    Returns once the first session is registered or the runtime cannot be reached (at most
    NRI_REGISTER_WAIT_S): the node's state is served only then, so no pod placed here is created
    before the plugin can put it on its CPUs."""
    if parts.nri is None or runtime.store is None:
        return
    store = runtime.store
    parts.nri.node_name = store.node_name
    parts.nri.online_cpus = lambda: frozenset(store.current().state.topology.online_cpus)
    parts.nri_stop = threading.Event()
    answered = threading.Event()
    parts.nri_thread = threading.Thread(
        target=run_sessions,
        args=(config.nri_socket, parts.nri, parts.nri_stop),
        kwargs={"retry_s": config.readiness_interval_s, "on_state": lambda _registered: answered.set()},
        name="nri",
        daemon=True,
    )
    parts.nri_thread.start()
    if not await asyncio.to_thread(answered.wait, NRI_REGISTER_WAIT_S):
        log.warning("nri plugin not registered; serving the node state anyway", waited_s=NRI_REGISTER_WAIT_S)


def stop_nri(parts: NodeParts) -> None:
    if parts.nri_stop is not None and parts.nri_thread is not None:
        parts.nri_stop.set()
        parts.nri_thread.join(15)


def follow_driver(parts: NodeParts, readiness: Readiness) -> None:
    """A driver found later (kubelet started after the agent) is the one the applier uses."""
    if readiness.driver is None:
        return
    if parts.manager is not None:
        parts.manager.driver = readiness.driver
    if parts.pod_status is not None:
        parts.pod_status.driver = readiness.driver


def apply_reason(readiness: Readiness) -> str | None:
    """What /readyz says about applying: None when the agent can apply, else `Reason: message`."""
    return None if readiness.ready else f"{readiness.reason}: {readiness.message}"


async def watch_readiness(
    parts: NodeParts, runtime: AgentRuntime, ready: ReadyState, interval_s: float, stop: asyncio.Event
) -> None:
    """Re-check the node every `interval_s`; the readiness health and /readyz follow (the probe's answer)."""
    assert parts.gate is not None
    while True:
        readiness = await asyncio.to_thread(parts.gate.refresh)
        ready.set("apply", apply_reason(readiness))
        await runtime.set_ready(readiness.ready, apply_reason(readiness) or "")
        try:
            await asyncio.wait_for(stop.wait(), interval_s)
            return
        except TimeoutError:
            pass


def set_vf_counts(config: AgentConfig) -> None:
    """Give each configured PF its VF count, before discovery so the VFs are reported."""
    try:
        changed = nic.set_vf_counts(Path(config.root), config.sriov_numvfs)
    except SriovError as exc:
        raise ConfigError(f"sriov_numvfs: {exc}") from None
    for pf, was_changed in changed.items():
        log.info("sriov_numvfs set", pf=pf, vfs=config.sriov_numvfs[pf], changed=was_changed)


@dataclass
class Health:
    monitor: HealthMonitor
    xid: XidWatcher | None
    gpu: str
    """What GPU health watching does here: `watching Xid events`, or why not."""

    def stop(self) -> None:
        if self.xid is not None:
            self.xid.stop()
        self.monitor.stop()


def start_health(config: AgentConfig, store: Any, metrics: AgentMetrics, core: Any) -> Health:
    """Poll vanished devices and NIC links, watch NVML Xid events; changes go into the node state,
    the metrics and, under Kubernetes, Node events."""
    events = kubernetes_node_events(core, store.node_name) if core is not None else None

    def changed(added: Mapping[str, str], recovered: Mapping[str, str]) -> None:
        metrics.record_health(monitor.unhealthy, len(added), len(recovered))
        if events is not None:
            events(added, recovered)

    monitor = HealthMonitor(
        Path(config.root),
        store,
        interval_s=config.health_interval_s,
        sysfs=config.health_interval_s > 0,
        on_change=changed,
    )
    monitor.start()
    xid = None
    if not config.gpu_health:
        gpu = "off (gpu_health: false)"
    elif not store.current().state.topology.gpus:
        gpu = "no GPU on this node"
    else:
        xid = XidWatcher(monitor.mark, config.gpu_health_skip_xids)
        reason = xid.start()
        gpu = "watching Xid events" if reason is None else reason
        if reason is not None:
            xid = None
    return Health(monitor, xid, gpu)


def log_capabilities(config: AgentConfig, parts: NodeParts, health: Health) -> None:
    """One line at start with what this agent can and cannot do on this node, and why."""
    sriov: dict[str, str] = {}
    if parts.sriov is not None:
        for pf, reason in sorted(parts.sriov.verdicts().items()):
            sriov[pf] = reason or "available"
    log.info(
        "node capabilities",
        apply="on" if config.apply else "off (--no-apply: report only)",
        kubernetes="on" if parts.core is not None else "off (no kubeconfig or service account)",
        sriov=sriov or "no PF with kernel-netdev VFs",
        data_routes=list(config.data_routes),
        gpu_health=health.gpu,
        device_health=(
            f"every {config.health_interval_s}s"
            if config.health_interval_s > 0
            else "off (health_interval_s: 0)"
        ),
    )


def settle_recorded(manager: ApplyManager) -> None:
    """Without Kubernetes there is no pod list: every recorded pod stays (its owner releases it), and
    an operation a crash cut short is finished or undone."""
    try:
        report = manager.reconcile_recorded()
    except ApplyError as exc:
        log.error("reconcile at start failed; Apply and Release report the fault", error=str(exc))
        return
    if report is not None:
        log.info("checkpoint settled", finished=list(report.finished), undone=list(report.undone))


async def refresh_cpusets(
    applier: Any, manager: ApplyManager, interval_s: float, stop: asyncio.Event
) -> None:
    """Without Kubernetes nothing says when a container starts (on all CPUs): re-derive the shared pool
    every `interval_s` while anything is pinned."""
    while True:
        try:
            await asyncio.wait_for(stop.wait(), interval_s)
            return
        except TimeoutError:
            pass
        try:
            pinned = any(a.cpus for a in await asyncio.to_thread(manager.applied))
            if pinned:
                await asyncio.to_thread(applier.refresh_shared_pool)
        except ApplyError as exc:
            log.warning("shared CPU pool refresh failed", error=str(exc))


async def expire_reservations(
    manager: ApplyManager, runtime: AgentRuntime, ttl_s: float, stop: asyncio.Event
) -> None:
    """Release reservations no Apply attached within `ttl_s` (checked every ttl_s/4, at most 10 s), so
    one whose binder moved the pod, lost the answer or died is freed within 1.25 x ttl_s."""
    period = min(ttl_s / 4, 10.0)
    while True:
        try:
            await asyncio.wait_for(stop.wait(), period)
            return
        except TimeoutError:
            pass
        try:
            if await asyncio.to_thread(manager.expire_reservations, ttl_s):
                await runtime.resync_allocations()
        except ApplyError as exc:
            log.warning("reservation expiry failed", error=str(exc))


def start_kubernetes_parts(parts: NodeParts, runtime: AgentRuntime, config: AgentConfig) -> None:
    """The pod watch applies bound pods' allocations; device plugins advertise the node's devices."""
    store = runtime.store
    assert store is not None and parts.core is not None
    node = store.node_name
    asks_kubelet = config.pod_resources_socket and config.is_this_machine
    kubelet = PodResourcesClient(config.pod_resources_socket) if asks_kubelet else None
    if parts.applier is not None:
        applier = parts.applier
        reconcile_applier: Callable[[set[str]], object] = applier.reconcile
        if kubelet is not None:
            reporter = kubernetes_event_reporter(parts.core, node)
            checker = KubeletReconciler(
                kubelet,
                lambda: known_allocations(applier.applied(), parts.pod_status),
                lambda m: reporter(mismatch_view(m, node), "AllocationMismatch", m.message),
            )

            def reconcile_applier(live: set[str]) -> object:
                report = applier.reconcile(live)
                checker.check()
                return report

        parts.watcher = PodWatcher(
            parts.core,
            node,
            applier,
            report=kubernetes_event_reporter(parts.core, node),
            on_change=lambda allocations: store.set_allocations(tuple(allocations)),
            observer=parts.pod_status,
            reconcile_applier=reconcile_applier,
            on_new_containers=applier.refresh_shared_pool,
            blocked=parts.gate.blocked if parts.gate is not None else None,
            schedulers=config.granting_schedulers,
        )
        if parts.gate is not None:
            parts.gate.add_listener(readiness_reporter(parts, node))
        parts.watcher.start()
    pending: Any = KubernetesPendingPodSource(parts.core, node)
    if kubelet is not None:
        pending = KubeletServedSource(pending, kubelet)
    parts.plugins = DevicePluginManager(
        lambda: store.current().state.topology,
        pending,
        Path(config.device_plugin_dir),
        host_root=Path(config.root),
    )
    parts.plugins.start()
    advertised = [store.current().topology_generation]

    def readvertise(snap: Snapshot) -> None:
        if parts.plugins is not None and snap.topology_generation != advertised[0]:
            advertised[0] = snap.topology_generation
            parts.plugins.update(snap.state.topology)

    store.add_listener(readvertise)
    parts.labeler = NodeLabeler(parts.core, node)
    parts.labeler.start(lambda: store.current().state.topology)
    store.add_listener(parts.labeler.on_snapshot)
    log.info("kubernetes parts started", node=node, pod_watch=parts.watcher is not None)


def known_allocations(recorded: Any, pods: PodStatusResolver | None) -> tuple[Any, ...]:
    """What the agent holds for each pod: its checkpointed allocation, else its pod's annotation."""
    found = {a.pod_uid: a for a in (pods.allocations() if pods is not None else ())}
    found.update({a.pod_uid: a for a in recorded})
    return tuple(found.values())


def mismatch_view(mismatch: Mismatch, node: str) -> PodView:
    return PodView(mismatch.uid or "", mismatch.namespace, mismatch.name, node, None, False, None, 0)


def readiness_reporter(parts: NodeParts, node: str) -> Callable[[Readiness], None]:
    """Every change of the node's readiness: the Node's GedgeAgentReady condition and an Event on the
    Node; back to ready, a pod resync. The condition is set once at start as well."""
    post = node_event_reporter(parts.core, node)
    condition = node_condition_writer(parts.core, node)
    was_blocked = [False]

    def changed(readiness: Readiness) -> None:
        condition(readiness.ready, readiness.reason, readiness.message)
        if not readiness.ready:
            was_blocked[0] = True
            post(readiness.reason, readiness.message, True)
            return
        if was_blocked[0]:
            was_blocked[0] = False
            post("AllocationsApplied", f"the agent can apply again: {readiness.message}", False)
            if parts.watcher is not None:
                try:
                    parts.watcher.resync()
                except Exception as exc:  # the watch's next round lists again
                    log.warning("pod resync after readiness failed", error=str(exc))

    current = parts.gate.current if parts.gate is not None else None
    if current is not None:
        changed(current)
    return changed


def follow_served_watches(parts: NodeParts, runtime: AgentRuntime, node: str) -> None:
    """Keep the Node condition GedgeTopologyReported in step with the watch streams that got this
    node's full state. On the event loop, so no stream is served between the listener and the
    first status."""
    parts.topology_reported = TopologyReportedCondition(
        node_condition_writer(parts.core, node, TOPOLOGY_REPORTED)
    )
    runtime.served_watches.add_listener(parts.topology_reported.follow)
    parts.topology_reported.follow(runtime.served_watches.held)


def stop_kubernetes_parts(parts: NodeParts) -> None:
    if parts.topology_reported is not None:
        parts.topology_reported.stop(last=False)
    if parts.labeler is not None:
        parts.labeler.stop()
    if parts.watcher is not None:
        parts.watcher.stop()
    if parts.plugins is not None:
        parts.plugins.stop()


def run(args: argparse.Namespace) -> int:
    config = read_settings(args, "serve", _FLAG_KEYS)
    if config is None:
        return 2
    try:
        return asyncio.run(serve(config))
    except (TlsConfigError, ConfigError) as exc:
        log.error("cannot start", error=str(exc))
        return 2
    except OSError as exc:
        log.error("cannot start", error=str(exc))
        return 1


async def serve(config: AgentConfig) -> int:
    metrics = AgentMetrics()
    await asyncio.to_thread(set_vf_counts, config)
    parts = make_parts(config, core_api(config.kubeconfig))
    if parts.manager is not None and parts.core is None:
        await asyncio.to_thread(settle_recorded, parts.manager)
    if parts.applier is not None:
        parts.applier = MeteredApplier(parts.applier, ApplyMetrics(metrics.registry))
    discover = default_discover(config)
    gate = parts.sriov
    runtime = AgentRuntime(
        config=config,
        applier=parts.applier,
        discover=(lambda: gate(discover())) if gate is not None else discover,
        metrics=metrics,
        pod_runtimes=parts.pod_runtimes,
        remote_apply=parts.core is None,
        reserved_pods=parts.manager.reserved_pod_uids if parts.manager is not None else None,
        initially_ready=parts.gate is None or parts.gate.current.ready,
        reports_not_applying=parts.core is not None,
        initially_not_applying=(apply_reason(parts.gate.current) or "") if parts.gate is not None else "",
        before_serving=lambda _store: start_nri(parts, runtime, config),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    halt = threading.Event()

    def stop_both() -> None:
        stop.set()
        halt.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_both)
    ready = ReadyState()
    ready.set("grpc", "starting: discovering the node, then serving gRPC")
    certificate = node_certificate(config, parts, ready, metrics)
    if parts.gate is not None:
        ready.set("apply", apply_reason(parts.gate.current))
    # Nothing until the first discovery is in.
    metrics.registry.register(
        NodeInventoryCollector(lambda: runtime.store.current().state if runtime.store else None)
    )
    metrics_server = None
    if config.metrics_listen:
        host, port = parse_listen(config.metrics_listen, "metrics_listen")
        metrics_server = start_http(host, port, metrics.registry, ready)
        log.info("metrics serving", listen=config.metrics_listen, port=metrics_server.server_port)
    rotation = None
    if certificate is not None:
        if not await asyncio.to_thread(certificate.ensure, halt):
            stop_http(metrics_server)
            return 0
        rotation = threading.Thread(
            target=certificate.rotate_forever, args=(halt,), name="certificate", daemon=True
        )
        rotation.start()
    try:
        await runtime.start()
    except RuntimeError as exc:
        halt.set()
        stop_http(metrics_server)
        raise OSError(f"cannot listen on {config.listen}: {exc}") from None
    except BaseException:
        halt.set()
        stop_http(metrics_server)
        raise
    ready.set("grpc", None)
    assert runtime.store is not None
    health = await asyncio.to_thread(start_health, config, runtime.store, metrics, parts.core)
    log_capabilities(config, parts, health)
    refresher = None
    readiness = None
    if parts.gate is not None:
        readiness = asyncio.create_task(
            watch_readiness(parts, runtime, ready, config.readiness_interval_s, stop)
        )
    expiry = None
    if parts.core is None and parts.manager is not None and config.reservation_ttl_s > 0:
        expiry = asyncio.create_task(
            expire_reservations(parts.manager, runtime, config.reservation_ttl_s, stop)
        )
    if parts.core is not None:
        await asyncio.to_thread(start_kubernetes_parts, parts, runtime, config)
        follow_served_watches(parts, runtime, runtime.store.node_name)
    elif parts.manager is not None and config.cpuset_refresh_interval_s > 0:
        refresher = asyncio.create_task(
            refresh_cpusets(parts.applier, parts.manager, config.cpuset_refresh_interval_s, stop)
        )
    await stop.wait()
    log.info("shutting down", signal="SIGTERM/SIGINT")
    halt.set()
    if rotation is not None:
        await asyncio.to_thread(rotation.join, 15)
    if refresher is not None:
        await refresher
    if readiness is not None:
        await readiness
    if expiry is not None:
        await expiry
    await asyncio.to_thread(stop_kubernetes_parts, parts)
    await asyncio.to_thread(health.stop)
    await asyncio.to_thread(stop_nri, parts)
    await runtime.stop()
    stop_http(metrics_server)
    return 0


def node_certificate(
    config: AgentConfig, parts: NodeParts, ready: ReadyState, metrics: AgentMetrics
) -> NodeCertificate | None:
    """With tls_csr: what keeps the node's certificate issued and current; its state goes to /readyz."""
    if not config.tls_csr:
        return None
    if parts.core is None:
        raise ConfigError("tls_csr needs Kubernetes (a kubeconfig or the pod's service account)")
    from kubernetes import client as k8s

    assert config.tls_cert and config.tls_key and config.tls_ca
    ready.set("certificate", "not checked yet")
    return NodeCertificate(
        k8s.CertificatesV1Api(parts.core.api_client),
        config.node_name or socket.gethostname(),
        config.tls_cert,
        config.tls_key,
        config.tls_ca,
        expiration_s=config.tls_csr_expiration_s,
        on_state=lambda reason: ready.set("certificate", reason),
        on_certificate=lambda cert: metrics.set_certificate_expiry(cert.not_valid_after_utc.timestamp()),
        on_request=lambda outcome: metrics.certificate_requests.labels(outcome).inc(),
    )


def stop_http(server: Any) -> None:
    if server is not None:
        server.shutdown()
        server.server_close()
