"""The data path on a real node: a pod granted a macvlan on this machine's data NIC gets `net1` in the
network namespace containerd made for it; two such pods exchange traffic over it; deleting them
leaves no link behind.

The agent is `gedge-agent serve` over this machine's own sysfs, netlink and cgroups. The grants are
written as the extender's binder writes them (`gedge.io/allocation`): the request model has no way to
ask for a data path alone on a node without SR-IOV or RDMA, which is all this machine has. Grants
carry no address, so the pods talk over IPv6 link-local addresses on net1.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s
from pyroute2 import IPRoute

from gedge_model import ANNOTATION, Allocation, NetworkGrant
from tests.e2e.cluster_objects import wait_for
from tests.e2e.edge_cluster import AGENT_ACCOUNT, EdgeCluster, token_kubeconfig
from tests.e2e.real_node import HostAgent, RealNode, describe_pod, report, running, workload_pod

GRANTING_SCHEDULER = "gedge-scheduler"
"""The agent applies a grant only on a pod of a scheduler that calls the extender; these pods are
bound by nodeName with the grant written as the extender's binder writes it."""
LINK_LOCAL = "ip -6 -o addr show dev net1 scope link | grep -v tentative | awk '{print $4}' | cut -d/ -f1"
WAIT_NET1 = (
    f'until [ -n "$({LINK_LOCAL} 2>/dev/null)" ]; do sleep 0.1; done; '
    f'echo "ADDR=$({LINK_LOCAL})"; echo "NETNS=$(readlink /proc/self/ns/net)"; '
)
PING = 'ping -6 -c 3 -W 5 -I net1 "$PEER"'
SERVER = WAIT_NET1 + "echo END; exec sleep 3600"
CLIENT = (
    WAIT_NET1
    + f'echo "RECEIVED=$({PING} | grep -o "[0-9]* packets received" | cut -d" " -f1)"; '
    + "echo END; exec sleep 3600"
)


def data_nic() -> str:
    """The NIC of this machine's default route: the data NIC here."""
    with IPRoute() as ipr:
        route = ipr.route("get", dst="1.1.1.1")[0]
        return ipr.get_links(route.get_attr("RTA_OIF"))[0].get_attr("IFLA_IFNAME")


def macvlans_on(master: str) -> list[str]:
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=master)[0]
        return sorted(
            link.get_attr("IFLA_IFNAME")
            for link in ipr.get_links()
            if link.get_attr("IFLA_LINK") == index
            and link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "macvlan"
        )


@pytest.fixture(scope="module")
def net_agent(
    real_node: RealNode,
    edge_cluster: EdgeCluster,
    kube_api: k8s.ApiClient,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[HostAgent]:
    workdir = tmp_path_factory.mktemp("net-agent")
    kubeconfig = token_kubeconfig(edge_cluster.plane, kube_api, AGENT_ACCOUNT, workdir / "agent.kubeconfig")
    argv = [str(Path(sys.executable).parent / "gedge-agent"), "serve", "--root=/"]
    agent = HostAgent(
        real_node, [*argv, *edge_cluster.agent_tls_flags(real_node.name, real_node.ip)], kubeconfig, workdir
    ).start()
    try:
        yield agent
    finally:
        agent.stop()


def grant_macvlan(core: k8s.CoreV1Api, pod: k8s.V1Pod, master: str) -> None:
    allocation = Allocation(
        pod_uid=pod.metadata.uid,
        namespace=pod.metadata.namespace,
        name=pod.metadata.name,
        node=pod.spec.node_name,
        network=NetworkGrant(mode="macvlan", master=master),
    )
    patch = {"metadata": {"annotations": {ANNOTATION: allocation.to_annotation()}}}
    core.patch_namespaced_pod(pod.metadata.name, pod.metadata.namespace, patch)


def test_macvlan_pods_get_net1_in_their_namespace_and_talk_over_it(
    net_agent: HostAgent, kube_api: k8s.ApiClient, namespace: str
) -> None:
    core = k8s.CoreV1Api(kube_api)
    node = net_agent.node
    master = data_nic()
    before = macvlans_on(master)
    core.create_namespaced_pod(
        namespace, workload_pod("server", SERVER, node_name=node.name, scheduler=GRANTING_SCHEDULER)
    )
    server = running(core, namespace, "server")
    grant_macvlan(core, server, master)
    served = report(core, namespace, "server")

    client = workload_pod("client", CLIENT, node_name=node.name, scheduler=GRANTING_SCHEDULER)
    client.spec.containers[0].env = [k8s.V1EnvVar(name="PEER", value=served["ADDR"])]
    core.create_namespaced_pod(namespace, client)
    grant_macvlan(core, running(core, namespace, "client"), master)
    said = report(core, namespace, "client")
    assert said["RECEIVED"] == "3", said
    assert said["NETNS"] != served["NETNS"]
    assert macvlans_on(master) == before, "net1 lives in the pods' namespaces, not the host's"

    for name in ("server", "client"):
        core.delete_namespaced_pod(name, namespace, grace_period_seconds=1)
    wait_for(
        lambda: [p.metadata.name for p in core.list_namespaced_pod(namespace).items],
        lambda names: not names,
        describe=lambda names: f"pods left: {[describe_pod(core, namespace, n) for n in names]}",
    )
    assert macvlans_on(master) == before
