"""Prometheus metrics of one agent, in a registry of its own (several agents may share a process in tests)."""

from __future__ import annotations

import threading
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.generation = Gauge(
            "gedge_agent_state_generation", "Generation of the node state the agent reports", registry=r
        )
        self.discoveries = Counter(
            "gedge_agent_discoveries_total",
            "Topology discoveries run, by what triggered them",
            ["trigger"],
            registry=r,
        )
        self.discovery_errors = Counter(
            "gedge_agent_discovery_errors_total",
            "Discoveries that raised; the last good topology stays",
            registry=r,
        )
        self.discovery_seconds = Histogram(
            "gedge_agent_discovery_duration_seconds",
            "Time one topology discovery takes",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=r,
        )
        self.topology_changes = Counter(
            "gedge_agent_topology_changes_total", "Discoveries that found a different topology", registry=r
        )
        self.watch_streams = Gauge("gedge_agent_watch_streams", "Open WatchNodeState streams", registry=r)
        self.allocations = Gauge("gedge_agent_allocations", "Allocations applied on this node", registry=r)
        self.rpcs = Counter(
            "gedge_agent_grpc_requests_total",
            "gRPC calls served, by method and status code",
            ["method", "code"],
            registry=r,
        )
        self.rejected_peers = Counter(
            "gedge_agent_rejected_peers_total",
            "Calls refused because the client certificate names no allowed client",
            registry=r,
        )
        self.unhealthy_devices = Gauge(
            "gedge_agent_unhealthy_devices",
            "1 for each PCI function the agent found unhealthy (Xid, vanished, link down), with why",
            ["pci_address", "reason"],
            registry=r,
        )
        self.health_transitions = Counter(
            "gedge_agent_device_health_transitions_total",
            "Devices that turned unhealthy or recovered",
            ["to"],
            registry=r,
        )

        self._certificate_expiry: Gauge | None = None
        self._certificate_lock = threading.Lock()
        self.certificate_requests = Counter(
            "gedge_agent_certificate_requests_total",
            "CertificateSigningRequests made for the node certificate, by how they ended",
            ["outcome"],
            registry=r,
        )

    def set_certificate_expiry(self, timestamp: float) -> None:
        """Export the node certificate's notAfter (Unix time). The gauge is registered on the first
        call, so an agent without tls_csr exports no value rather than 0."""
        with self._certificate_lock:
            if self._certificate_expiry is None:
                self._certificate_expiry = Gauge(
                    "gedge_agent_certificate_expiry_timestamp_seconds",
                    "notAfter of the node certificate in place (Unix time); absent until one is",
                    registry=self.registry,
                )
            self._certificate_expiry.set(timestamp)

    def record_health(self, unhealthy: Mapping[str, str], added: int, recovered: int) -> None:
        """Set the unhealthy-device gauge to exactly `unhealthy` (PCI address -> reason)."""
        self.unhealthy_devices.clear()
        for address, reason in unhealthy.items():
            self.unhealthy_devices.labels(address, reason).set(1)
        if added:
            self.health_transitions.labels("unhealthy").inc(added)
        if recovered:
            self.health_transitions.labels("healthy").inc(recovered)
