"""Without Kubernetes: kube-scheduler's verbs over real HTTPS to `gedge-extender serve --agents`, whose bind
reaches a real `gedge-agent serve` over mTLS on real cgroup v1 cpusets (certificates from gedge_model.certs,
as `gedge-agent certs` makes them).

The bind cannot say where the pod will run, so the agent reserves the allocation: its CPUs leave every
other container's cpuset at once and stay out of what the extender and the agent hand to other pods. The
Apply that brings the pod's runtime attaches it; Release gives everything back.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import yaml

from agent.apply import CgroupDriver, QosClass
from gedge_model import Allocation
from gedge_model.certs import issue_files
from gedge_model.tls import channel_credentials, expect_peer_name_options, load_tls
from protos.gedge.agent.v1 import agent_pb2, agent_pb2_grpc
from scheduler_extender.commands.demo import free_port
from tests.apply.helpers import (
    build_pod_cgroups,
    new_container_id,
    new_pod_uid,
    start_in_cgroup,
    stop,
    v1_sandbox,
)
from tests.extender.conftest import pod
from tests.extender.servers import post
from tests.extender.test_commands import CLI, _serving_port
from tests.grpc.agents import AgentProcess, applying_args, spawn_agent

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")

NODE = "edge-agents-mode"
PINNED = {"gedge.io/cpu-pinning": "true"}


@dataclass
class Scene:
    cgroup_root: Path
    agent: AgentProcess
    client: agent_pb2_grpc.NodeAgentStub
    url: str
    processes: list[subprocess.Popen]
    pki: Path
    metrics_url: str = ""

    def context(self, client: str | None = "kube-scheduler") -> ssl.SSLContext:
        """TLS as kube-scheduler's tlsConfig sets it up: the CA, and a client certificate (None: none)."""
        context = ssl.create_default_context(cafile=str(self.pki / "ca.pem"))
        if client is not None:
            context.load_cert_chain(self.pki / f"{client}.pem", self.pki / f"{client}.key")
        return context

    def post(self, url: str, body: object, client: str | None = "kube-scheduler") -> tuple[int, object]:
        return post(url, body, context=self.context(client))

    def start_container(self, pod_uid: str, qos: QosClass, container: str) -> subprocess.Popen:
        (path,) = build_pod_cgroups(self.cgroup_root, CgroupDriver.CGROUPFS, qos, pod_uid, [container])
        process = start_in_cgroup(path)
        self.processes.append(process)
        return process

    def listed(self) -> tuple[list[Allocation], list[str]]:
        reply = self.client.ListAllocations(agent_pb2.ListAllocationsRequest(), timeout=10)
        allocations = [Allocation.from_annotation(json.dumps(a)) for a in json.loads(reply.allocations_json)]
        return allocations, list(reply.reserved_pod_uids)


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def affinity(process: subprocess.Popen) -> set[int]:
    return set(os.sched_getaffinity(process.pid))


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[Scene]:
    processes: list[subprocess.Popen] = []
    pki = tmp_path / "pki"
    for name in (NODE, "gedge-extender", "kube-scheduler", "edge-other"):
        issue_files(pki, name, ips=["127.0.0.1"])
    with v1_sandbox("gtagents-") as cgroup_root:
        agent = spawn_agent(
            "/",
            NODE,
            *applying_args(cgroup_root, tmp_path),
            "--tls-cert",
            str(pki / f"{NODE}.pem"),
            "--tls-key",
            str(pki / f"{NODE}.key"),
            "--tls-ca",
            str(pki / "ca.pem"),
            metrics_listen="",
            env={"GEDGE_AGENT_CPUSET_REFRESH_INTERVAL_S": "0.3"},
        )
        agents = tmp_path / "agents.yaml"
        agents.write_text(yaml.safe_dump([{"node": NODE, "address": f"127.0.0.1:{agent.port}"}]))
        metrics_port = free_port()
        extender_pem, extender_key = str(pki / "gedge-extender.pem"), str(pki / "gedge-extender.key")
        extender = subprocess.Popen(
            [
                *CLI,
                "serve",
                "--agents",
                str(agents),
                "--listen",
                "127.0.0.1:0",
                f"--metrics-listen=127.0.0.1:{metrics_port}",
                f"--tls-cert={extender_pem}",
                f"--tls-key={extender_key}",
                f"--tls-client-ca={pki / 'ca.pem'}",
                f"--agent-tls-cert={extender_pem}",
                f"--agent-tls-key={extender_key}",
                f"--agent-tls-ca={pki / 'ca.pem'}",
            ],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        material = load_tls(extender_pem, extender_key, pki / "ca.pem")
        channel = grpc.secure_channel(
            f"127.0.0.1:{agent.port}", channel_credentials(material), expect_peer_name_options(NODE)
        )
        try:
            url = f"https://127.0.0.1:{_serving_port(extender, time.monotonic() + 30)}"
            yield Scene(
                cgroup_root,
                agent,
                agent_pb2_grpc.NodeAgentStub(channel),
                url,
                processes,
                pki,
                f"http://127.0.0.1:{metrics_port}",
            )
        finally:
            channel.close()
            extender.kill()
            extender.wait(10)
            agent.kill()
            for process in processes:
                stop(process)


def test_bind_reserves_the_runtime_attaches_and_release_frees(scene: Scene) -> None:
    other = scene.start_container(new_pod_uid(), QosClass.BURSTABLE, new_container_id())
    every_cpu = affinity(other)
    trainer = pod("trainer", uid=new_pod_uid(), limits={"cpu": "1", "memory": "1Gi"}, annotations=PINNED)
    uid = trainer["metadata"]["uid"]

    def filtered() -> bool:
        _, result = scene.post(f"{scene.url}/filter", {"Pod": trainer, "Nodes": None, "NodeNames": [NODE]})
        return result["NodeNames"] == [NODE]

    wait_for(filtered, "the extender to hold the agent's report")
    status, scores = scene.post(
        f"{scene.url}/prioritize", {"Pod": trainer, "Nodes": None, "NodeNames": [NODE]}
    )
    assert status == 200 and [s["Host"] for s in scores] == [NODE] and 0 <= scores[0]["Score"] <= 10
    status, bound = scene.post(
        f"{scene.url}/bind", {"PodName": "trainer", "PodNamespace": "ml", "PodUID": uid, "Node": NODE}
    )
    assert status == 200 and not bound["Error"], bound

    (allocation,), reserved = scene.listed()
    assert allocation.pod_uid == uid and reserved == [uid]
    cpus = set(allocation.cpus)
    assert len(cpus) == 1 and cpus < every_cpu
    assert affinity(other) == every_cpu - cpus

    late = scene.start_container(new_pod_uid(), QosClass.BESTEFFORT, new_container_id())
    wait_for(lambda: affinity(late) == every_cpu - cpus, "the shared pool refresh to reach a new container")

    # every CPU the shared pool can spare (it keeps one): no room while the trainer holds its CPU
    rival = pod("rival", uid=new_pod_uid(), limits={"cpu": str(len(every_cpu) - 1)}, annotations=PINNED)
    _, result = scene.post(f"{scene.url}/filter", {"Pod": rival, "Nodes": None, "NodeNames": [NODE]})
    assert result["NodeNames"] == [] and NODE in result["FailedNodes"], result
    taken = Allocation(rival["metadata"]["uid"], "ml", "rival", NODE, cpus=tuple(cpus))
    with pytest.raises(grpc.RpcError) as refused:
        scene.client.Apply(agent_pb2.ApplyRequest(allocation_json=taken.to_annotation()), timeout=20)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"CPU {min(cpus)} is held by pod ml/trainer" in refused.value.details()

    container = new_container_id()
    process = scene.start_container(uid, QosClass.GUARANTEED, container)
    runtime = agent_pb2.PodRuntime(qos_class="Guaranteed", container_ids=[f"containerd://{container}"])
    attached = scene.client.Apply(
        agent_pb2.ApplyRequest(allocation_json=allocation.to_annotation(), runtime=runtime), timeout=20
    )
    assert not attached.reserved
    assert affinity(process) == cpus
    assert scene.listed() == ([allocation], [])
    assert (affinity(other), affinity(late)) == (every_cpu - cpus, every_cpu - cpus)

    scene.client.Release(agent_pb2.ReleaseRequest(pod_uid=uid), timeout=20)
    assert scene.listed() == ([], [])
    assert affinity(process) == affinity(other) == affinity(late) == every_cpu
    state = scene.client.GetNodeState(agent_pb2.GetNodeStateRequest(), timeout=10)
    assert not [d for d in state.devices if d.pod_uid]

    def rival_fits() -> bool:
        _, result = scene.post(f"{scene.url}/filter", {"Pod": rival, "Nodes": None, "NodeNames": [NODE]})
        return result["NodeNames"] == [NODE]

    wait_for(rival_fits, "the extender to see the released CPUs free (well before the bind hold expires)", 10)
    assert scene.agent.terminate() == 0


def test_a_pod_whose_cpus_would_empty_the_shared_pool_fails_filter_and_bind_and_holds_nothing(
    scene: Scene,
) -> None:
    other = scene.start_container(new_pod_uid(), QosClass.BURSTABLE, new_container_id())
    every_cpu = affinity(other)
    greedy = pod("greedy", uid=new_pod_uid(), limits={"cpu": str(len(every_cpu))}, annotations=PINNED)
    uid = greedy["metadata"]["uid"]

    def refused() -> bool:
        _, result = scene.post(f"{scene.url}/filter", {"Pod": greedy, "Nodes": None, "NodeNames": [NODE]})
        return "kept for the shared pool" in (result.get("FailedNodes") or {}).get(NODE, "")

    wait_for(refused, "the extender to refuse the node by the agent's shared-pool rule")
    _, bound = scene.post(
        f"{scene.url}/bind", {"PodName": "greedy", "PodNamespace": "ml", "PodUID": uid, "Node": NODE}
    )
    assert "pod ml/greedy" in bound["Error"] and "kept for the shared pool" in bound["Error"], bound
    assert scene.listed() == ([], [])
    assert affinity(other) == every_cpu


def test_only_kube_schedulers_certificate_reaches_the_verbs(scene: Scene) -> None:
    trainer = pod("trainer", uid=new_pod_uid(), limits={"cpu": "1", "memory": "1Gi"}, annotations=PINNED)
    bind = {"PodName": "trainer", "PodNamespace": "ml", "PodUID": trainer["metadata"]["uid"], "Node": NODE}

    # No client certificate: the TLS handshake itself fails.
    with pytest.raises(OSError):
        scene.post(f"{scene.url}/bind", bind, client=None)
    # A certificate from the same CA that is not kube-scheduler's (a node's): 403, nothing bound.
    status, body = scene.post(f"{scene.url}/bind", bind, client="edge-other")
    assert status == 403
    assert body["Error"] == (
        "client certificate names ['edge-other'] are not among the allowed clients ['kube-scheduler']"
    )
    assert scene.listed() == ([], [])
    # Plain HTTP to the TLS port is not served either.
    with pytest.raises(OSError):
        post(scene.url.replace("https://", "http://") + "/filter", {"Pod": trainer, "NodeNames": [NODE]})
    # Probes and Prometheus reach /healthz and /metrics on the plain metrics port.
    with urllib.request.urlopen(f"{scene.metrics_url}/healthz", timeout=10) as reply:
        assert reply.read() == b"ok"
    with urllib.request.urlopen(f"{scene.metrics_url}/metrics", timeout=10) as reply:
        assert b'gedge_extender_requests_total{outcome="forbidden",verb="bind"} 1.0' in reply.read()
