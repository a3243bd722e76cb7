"""Extender high availability: replicas elect one leader on a coordination.k8s.io Lease.

Every replica runs its cluster cache and pod-allocation watch (a warm standby);
only the leader is Ready (`/readyz`) and answers the verbs, so kube-scheduler,
through the Service, reaches the leader alone. The election is the kubernetes
client's `leaderelection` over a `LeaseLock`, as kube-scheduler's own. A leader
that cannot renew its lease stops answering at once and the process exits (a
deposed leader never serves on); a standby takes over within lease_duration_s +
retry_period_s of the leader's death.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

import structlog

log = structlog.get_logger("gedge.extender.leader")

LEASE_DURATION_S = 10
RENEW_DEADLINE_S = 8
RETRY_PERIOD_S = 2


class Leadership(Protocol):
    def is_leader(self) -> bool:
        """Whether this replica may answer kube-scheduler now."""


class AlwaysLeader:
    """One replica, or no Kubernetes: always the leader."""

    def is_leader(self) -> bool:
        return True


class LeaseElection:
    """Leader election on the Lease `namespace/name` under `identity` (unique per replica: its pod name).

    `on_lost` runs once when a held lease could not be renewed (the serve command exits through it).
    """

    def __init__(
        self,
        name: str,
        namespace: str,
        identity: str,
        *,
        on_lost: Callable[[], None],
        lease_duration_s: int = LEASE_DURATION_S,
        renew_deadline_s: int = RENEW_DEADLINE_S,
        retry_period_s: int = RETRY_PERIOD_S,
    ) -> None:
        self.name, self.namespace, self.identity = name, namespace, identity
        self.lease_duration_s = lease_duration_s
        self.renew_deadline_s = renew_deadline_s
        self.retry_period_s = retry_period_s
        self._on_lost = on_lost
        self._leading = threading.Event()
        self._thread: threading.Thread | None = None

    def is_leader(self) -> bool:
        return self._leading.is_set()

    def start(self) -> None:
        from kubernetes.leaderelection import electionconfig, leaderelection
        from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

        config = electionconfig.Config(
            LeaseLock(self.name, self.namespace, self.identity),
            lease_duration=self.lease_duration_s,
            renew_deadline=self.renew_deadline_s,
            retry_period=self.retry_period_s,
            onstarted_leading=self._started,
            onstopped_leading=self._stopped,
        )
        election = leaderelection.LeaderElection(config)
        self._thread = threading.Thread(target=election.run, name="leader-election", daemon=True)
        self._thread.start()
        log.info("leader election started", lease=f"{self.namespace}/{self.name}", identity=self.identity)

    def _started(self) -> None:
        self._leading.set()
        log.info("leading", lease=f"{self.namespace}/{self.name}", identity=self.identity)

    def _stopped(self) -> None:
        self._leading.clear()
        log.warning("lost the lease", lease=f"{self.namespace}/{self.name}", identity=self.identity)
        self._on_lost()
