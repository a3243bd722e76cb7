"""A node the agent cannot drive says so: told the wrong cgroup driver for the real kubelet (systemd on
a cgroupfs node), the agent applies nothing, posts why on its Node, says it in its report, and the
extender places no pod there: a pinned pod for that node stays Pending, kube-scheduler's
FailedScheduling naming the same cause, instead of running unpinned.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s

from tests.e2e.cluster_objects import wait_for
from tests.e2e.edge_cluster import AGENT_ACCOUNT, EdgeCluster, token_kubeconfig
from tests.e2e.real_node import HostAgent, RealNode, workload_pod

PINNING = {"gedge.io/cpu-pinning": "true"}
ONE_CPU = {"cpu": "1", "memory": "32Mi"}


@pytest.fixture(scope="module")
def misconfigured_agent(
    real_node: RealNode,
    edge_cluster: EdgeCluster,
    kube_api: k8s.ApiClient,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[HostAgent]:
    workdir = tmp_path_factory.mktemp("misconfigured-agent")
    kubeconfig = token_kubeconfig(edge_cluster.plane, kube_api, AGENT_ACCOUNT, workdir / "agent.kubeconfig")
    argv = [str(Path(sys.executable).parent / "gedge-agent"), "serve", "--root=/", "--cgroup-driver=systemd"]
    agent = HostAgent(
        real_node, [*argv, *edge_cluster.agent_tls_flags(real_node.name, real_node.ip)], kubeconfig, workdir
    ).start()
    try:
        agent.process.wait_until(
            lambda: "agent cannot apply" in (edge_cluster.extender_refusal(real_node.name) or ""),
            60,
            "was reported to the extender as unable to apply",
        )
        yield agent
    finally:
        agent.stop()


def warnings_about(core: k8s.CoreV1Api, namespace: str, kind: str, name: str) -> list[k8s.CoreV1Event]:
    selector = f"involvedObject.kind={kind},involvedObject.name={name}"
    return [
        e for e in core.list_namespaced_event(namespace, field_selector=selector).items if e.type == "Warning"
    ]


def test_node_and_pinned_pod_get_the_reason(
    misconfigured_agent: HostAgent, edge_cluster: EdgeCluster, kube_api: k8s.ApiClient, namespace: str
) -> None:
    core = k8s.CoreV1Api(kube_api)
    node = misconfigured_agent.node
    on_node = wait_for(
        lambda: warnings_about(core, "default", "Node", node.name),
        lambda events: any(e.source.component == "gedge-agent" for e in events),
        describe=lambda events: [f"{e.reason}: {e.message}" for e in events],
    )
    said = next(e for e in on_node if e.source.component == "gedge-agent")
    assert said.reason.startswith("Cgroup") and "kubepods.slice" in said.message
    # The Node's own condition says the same (what `kubectl describe node` shows).
    conditions = {c.type: c for c in node.node().status.conditions or ()}
    condition = conditions["GedgeAgentReady"]
    assert (condition.status, condition.reason, condition.message) == ("False", said.reason, said.message)

    pod = workload_pod(
        "pinned",
        "exec sleep 3600",
        scheduler=edge_cluster.scheduler_name,
        requests=ONE_CPU,
        limits=ONE_CPU,
        annotations=PINNING,
        on_node=node.name,
    )
    core.create_namespaced_pod(namespace, pod)
    on_pod = wait_for(
        lambda: warnings_about(core, namespace, "Pod", "pinned"),
        lambda events: any(e.reason == "FailedScheduling" and said.message in e.message for e in events),
        describe=lambda events: [f"{e.reason}: {e.message}" for e in events],
    )
    assert any("agent cannot apply" in e.message for e in on_pod if e.reason == "FailedScheduling")
    assert core.read_namespaced_pod("pinned", namespace).spec.node_name is None
