"""One running agent on a loop: first discovery, the gRPC server (NodeAgent + health), change detection.

Several agents may share one loop and one process (tests, the cache benchmark):
each has its own store, metrics registry and server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from agent.apply.contract import AllocationApplier
from agent.apply.manager import StaticPodResolver
from agent.config import AgentConfig, grpc_address
from agent.metrics import AgentMetrics
from agent.service.changes import ChangeDetector, ChangePolicy, fingerprint
from agent.service.servicer import NodeAgentService
from agent.service.store import NodeStateStore, Snapshot
from agent.service.watchers import ServedWatches
from gedge_model import NodeTopology
from gedge_model.tls import (
    TlsConfigError,
    TlsFiles,
    TlsMaterial,
    reloading_server_credentials,
    server_credentials,
)
from protos.gedge.agent.v1 import agent_pb2, agent_pb2_grpc

log = structlog.get_logger("gedge.agent.server")

SERVICE_NAME = agent_pb2.DESCRIPTOR.services_by_name["NodeAgent"].full_name
READINESS_SERVICE = "readiness"
"""Health service name that is SERVING only while the agent can apply allocations on its node (the
DaemonSet's readiness probe asks it); "" stays SERVING while the process serves (liveness)."""


def server_options(config: AgentConfig) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", config.max_receive_message_bytes),
        ("grpc.max_send_message_length", config.max_send_message_bytes),
        # Two agents must never share a port silently.
        ("grpc.so_reuseport", 0),
        # Let the extender's keepalive pings through, and find dead watchers ourselves.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        # Bounds per client: streams on one connection, and connections left idle.
        ("grpc.max_concurrent_streams", config.max_streams_per_connection),
        ("grpc.max_connection_idle_ms", int(config.max_connection_idle_s * 1000)),
    ]


def default_discover(config: AgentConfig) -> Callable[[], NodeTopology]:
    from agent.discovery import discover

    reserved = config.reserved_cpu_set

    def run() -> NodeTopology:
        return discover(
            config.root,
            node_name=config.node_name,
            timeslice_replicas=config.timeslice_replicas,
            reserved_cpus=reserved,
        )

    return run


@dataclass
class AgentRuntime:
    config: AgentConfig
    applier: AllocationApplier | None
    discover: Callable[[], NodeTopology]
    metrics: AgentMetrics = field(default_factory=AgentMetrics)
    tls: TlsMaterial | None = None
    """Fixed TLS material (tests); None: the config's files, picked up again when they are replaced."""
    tls_files: TlsFiles | None = None
    pod_runtimes: StaticPodResolver | None = None
    """Where pods run, as Apply callers tell it (nodes without Kubernetes); None: not taken from Apply."""
    remote_apply: bool = True
    """Apply/Release over gRPC; off where the pod watch applies (Kubernetes)."""
    reserved_pods: Callable[[], frozenset[str]] | None = None
    """Which applied pods are only reserved (runtime not known yet); None: the applier never reserves."""
    initially_ready: bool = True
    """The READINESS_SERVICE health at start (the caller updates it with set_ready)."""
    reports_not_applying: bool = False
    """Under Kubernetes: `set_ready(False, reason)` also goes into the report (`not_applying`), since the
    pod watch then applies nothing; without it, Apply callers hear the refusal themselves."""
    initially_not_applying: str = ""
    """With reports_not_applying: why the agent cannot apply at start ("" when it can)."""
    served_watches: ServedWatches = field(default_factory=ServedWatches)
    """Watch streams sent the full state (the Node condition GedgeTopologyReported follows it)."""
    before_serving: Callable[[NodeStateStore], Awaitable[None]] | None = None
    """Run once the first discovery is in, before the node's state is served: what must be up before
    an extender may place pods here (the NRI plugin that pins containers at creation)."""
    store: NodeStateStore | None = None
    port: int = 0
    _server: grpc.aio.Server | None = None
    # grpc_health-stubs lacks health.aio, grpcio-health-checking's asyncio servicer (here and below)
    _health: health.aio.HealthServicer | None = None  # type: ignore[name-defined]
    _changes: ChangeDetector | None = None

    async def start(self) -> int:
        """Discover, bind and serve; returns the bound gRPC port (useful with port 0)."""
        config = self.config
        # The change detector compares against what was on disk before this discovery, so a
        # change made while the agent starts is caught by the first poll.
        baseline = await asyncio.to_thread(fingerprint, config.root)
        topology = await asyncio.to_thread(self.discover)
        applied = tuple(await asyncio.to_thread(self.applier.applied)) if self.applier else ()
        reserved = await asyncio.to_thread(self.reserved_pods) if self.reserved_pods else frozenset()
        self.store = NodeStateStore(topology, applied, reserved)
        if self.reports_not_applying and not self.initially_ready:
            self.store.set_not_applying(self.initially_not_applying or "the agent cannot apply")
        self.store.add_listener(self._observe)
        self._observe(self.store.current())
        self.metrics.allocations.set(len(applied))

        node = self.store.node_name

        def names_this_node(material: TlsMaterial) -> None:
            if node not in material.names:
                raise TlsConfigError(
                    f"TLS certificate {config.tls_cert} names {sorted(material.names)}, "
                    f"not this node {node!r}: the extender would refuse it"
                )

        if self.tls is not None:
            names_this_node(self.tls)
        elif config.tls_enabled:
            assert config.tls_cert and config.tls_key and config.tls_ca
            self.tls_files = TlsFiles(
                config.tls_cert,
                config.tls_key,
                config.tls_ca,
                check=names_this_node,
                on_error=lambda error: log.error("replaced TLS files not used; old ones stay", error=error),
            )
        elif config.insecure:
            log.warning(
                "plaintext gRPC (insecure): any peer that reaches the port can read this node and, "
                "without Kubernetes, Apply and Release",
                listen=config.listen,
            )
        server = grpc.aio.server(
            options=server_options(config), maximum_concurrent_rpcs=config.max_concurrent_rpcs
        )
        service = NodeAgentService(
            self.store,
            self.applier,
            self.metrics,
            # Without TLS there is no peer name to check (insecure: every caller is let in).
            frozenset(config.tls_allowed_clients) if self.tls or self.tls_files else frozenset(),
            pod_runtimes=self.pod_runtimes,
            remote_apply=self.remote_apply,
            reserved_pods=self.reserved_pods,
            max_watch_streams_per_client=config.max_watch_streams_per_client,
            served_watches=self.served_watches,
        )
        agent_pb2_grpc.add_NodeAgentServicer_to_server(service, server)
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        address = grpc_address(config.listen)
        if self.tls is not None:
            self.port = server.add_secure_port(address, server_credentials(self.tls))
        elif self.tls_files is not None:
            self.port = server.add_secure_port(address, reloading_server_credentials(self.tls_files))
        else:
            self.port = server.add_insecure_port(address)
        if self.before_serving is not None:
            await self.before_serving(self.store)
        await server.start()
        self._server = server
        for name in ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        await self.set_ready(self.initially_ready, self.initially_not_applying)

        self._changes = ChangeDetector(
            config.root,
            self.discover,
            self.store,
            self.metrics,
            ChangePolicy(
                poll_interval_s=config.poll_interval_s,
                full_interval_s=config.full_rediscovery_interval_s,
                netlink=config.netlink_enabled,
                netns=config.netns,
            ),
            baseline=baseline,
        )
        self._changes.start()
        log.info(
            "agent serving",
            node=self.store.node_name,
            listen=config.listen,
            port=self.port,
            tls=self.tls is not None or self.tls_files is not None,
            root=config.root,
            generation=self.store.current().state.generation,
        )
        return self.port

    async def set_ready(self, ready: bool, reason: str = "") -> None:
        """Whether the agent can apply on its node (else `reason`, why not): the READINESS_SERVICE
        health status, and with reports_not_applying the report's `not_applying`."""
        if self.store is not None and self.reports_not_applying:
            self.store.set_not_applying("" if ready else reason or "the agent cannot apply")
        if self._health is not None:
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if ready
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            await self._health.set(READINESS_SERVICE, status)

    async def resync_allocations(self) -> None:
        """Publish what the applier records now (after a change made outside an RPC)."""
        if self.store is None or self.applier is None:
            return
        applied = tuple(await asyncio.to_thread(self.applier.applied))
        reserved = await asyncio.to_thread(self.reserved_pods) if self.reserved_pods else frozenset()
        self.store.set_allocations(applied, reserved)
        self.metrics.allocations.set(len(applied))

    def _observe(self, snap: Snapshot) -> None:
        self.metrics.generation.set(snap.state.generation)

    async def rediscover(self, trigger: str = "request") -> bool:
        if self._changes is None:
            raise RuntimeError("agent is not started")
        return await self._changes.rediscover(trigger)

    async def stop(self, grace: float | None = None) -> None:
        """Stop serving: health says NOT_SERVING, open streams get `grace` seconds, then close."""
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self.store is not None:
            self.store.close()
        if self._changes is not None:
            await self._changes.stop()
        if self._server is not None:
            await self._server.stop(self.config.shutdown_grace_s if grace is None else grace)
            self._server = None
        log.info("agent stopped", node=self.store.node_name if self.store else self.config.node_name)
