"""Every request type and policy through filter and bind over HTTP, on synthetic GPU boxes and on
the fixture machines as discovery reads them; and binds racing for the last devices."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from gedge_model import Allocation, NodeState, NodeTopology
from scheduler_extender.bind.assume import AssumeCache
from scheduler_extender.http.app import build_app
from scheduler_extender.node_source import StaticNodeSource
from scheduler_extender.verbs import Extender
from tests.extender.conftest import RecordingBinder, pod
from tests.extender.servers import ServerThread, post

AWARE = {"gedge.io/topology-aware": "true"}


class Harness:
    def __init__(self, states: dict[str, NodeState]) -> None:
        self.source = StaticNodeSource(states)
        self.binder = RecordingBinder()
        self.extender = Extender(self.source, self.binder, cache=AssumeCache())
        self.url = ""

    def filter(self, pod_json: dict[str, Any], names: list[str]) -> dict[str, Any]:
        status, result = post(f"{self.url}/filter", {"Pod": pod_json, "Nodes": None, "NodeNames": names})
        assert status == 200
        return result

    def bind(self, pod_json: dict[str, Any], node: str) -> str:
        meta = pod_json["metadata"]
        body = {
            "PodName": meta["name"],
            "PodNamespace": meta["namespace"],
            "PodUID": meta["uid"],
            "Node": node,
        }
        status, result = post(f"{self.url}/bind", body)
        assert status == 200
        return result["Error"]

    def place(self, pod_json: dict[str, Any], node: str) -> Allocation:
        result = self.filter(pod_json, [node])
        assert result["NodeNames"] == [node], result
        assert self.bind(pod_json, node) == ""
        return next(a for a in self.binder.bound if a.pod_uid == pod_json["metadata"]["uid"])


@pytest.fixture
def harness(gpu_states: dict[str, NodeState], snapshot_states: dict[str, NodeState]) -> Iterator[Harness]:
    h = Harness({**gpu_states, **snapshot_states})
    with ServerThread(build_app(h.extender)) as server:
        h.url = server.url
        yield h


def _topology(h: Harness, node: str) -> NodeTopology:
    view = h.source.node(node)
    assert view is not None
    return view.state.topology


def _gpu_switch(topology: NodeTopology, address: str) -> str:
    device = topology.pci(address)
    assert device is not None
    return device.bridges[0]


def _nvlinked(topology: NodeTopology, a: str, b: str) -> bool:
    gpu = topology.gpu_by_pci(a)
    return gpu is not None and any(link.peer_pci_address == b for link in gpu.nvlinks)


def test_two_gpus_are_an_nvlink_pair(harness: Harness) -> None:
    chosen = harness.place(pod("pair", limits={"gedge.io/gpu": "2"}, annotations=AWARE), "dgx-1")
    topology = _topology(harness, "dgx-1")
    a, b = (d.pci_address for d in chosen.devices if d.resource == "gedge.io/gpu")
    assert a and b and _nvlinked(topology, a, b)
    assert chosen.worst_level in ("NV", "X")


def test_time_slice_replica(harness: Harness) -> None:
    chosen = harness.place(pod("slice", limits={"gedge.io/gpu-shared": "1"}), "dgx-shared")
    (replica,) = chosen.device_ids("gedge.io/gpu-shared")
    uuid, _, index = replica.partition("::")
    assert uuid.startswith("GPU-dgx-shared-") and index.isdigit()


def test_time_slices_do_not_fit_where_there_are_none(harness: Harness) -> None:
    result = harness.filter(pod("slice", limits={"gedge.io/gpu-shared": "1"}), ["dgx-1", "dgx-shared"])
    assert result["NodeNames"] == ["dgx-shared"]
    assert "dgx-1" in result["FailedNodes"]


def test_mig_instance_of_the_asked_profile(harness: Harness) -> None:
    chosen = harness.place(pod("mig", limits={"gedge.io/mig-3g.40gb": "1"}), "dgx-mig")
    (instance,) = chosen.device_ids("gedge.io/mig-3g.40gb")
    topology = _topology(harness, "dgx-mig")
    profiles = {m.uuid: m.profile for g in topology.gpus for m in g.mig_instances}
    assert profiles[instance] == "3g.40gb"
    result = harness.filter(pod("mig2", limits={"gedge.io/mig-2g.20gb": "1"}), ["dgx-mig"])
    assert "2g.20gb" in result["FailedNodes"]["dgx-mig"]


def test_vf_and_rdma_for_the_data_path(harness: Harness) -> None:
    chosen = harness.place(
        pod(
            "net",
            limits={"gedge.io/gpu": "1", "gedge.io/sriov-vf": "1", "gedge.io/rdma": "1"},
            annotations={**AWARE, "gedge.io/communication": '["SRIOV","RDMA"]'},
        ),
        "dgx-1",
    )
    topology = _topology(harness, "dgx-1")
    gpu = next(d.pci_address for d in chosen.devices if d.resource == "gedge.io/gpu")
    (vf,) = chosen.device_ids("gedge.io/sriov-vf")
    (rdma,) = [d for d in chosen.devices if d.resource == "gedge.io/rdma"]
    assert gpu and rdma.pci_address
    assert _gpu_switch(topology, gpu) == _gpu_switch(topology, vf) == _gpu_switch(topology, rdma.pci_address)


def test_pinned_cpus_are_full_cores_on_the_devices_numa_node(harness: Harness) -> None:
    chosen = harness.place(
        pod(
            "pinned",
            limits={"gedge.io/gpu": "1", "cpu": "4", "memory": "1Gi"},
            annotations={**AWARE, "gedge.io/cpu-pinning": "true"},
        ),
        "dgx-1",
    )
    topology = _topology(harness, "dgx-1")
    by_id = {c.id: c for c in topology.cpus}
    assert len(chosen.cpus) == 4
    for cpu in chosen.cpus:
        assert set(by_id[cpu].thread_siblings) <= set(chosen.cpus), "no core split"
    gpu = next(d for d in chosen.devices if d.resource == "gedge.io/gpu")
    assert {by_id[c].numa_node for c in chosen.cpus} == {gpu.numa_node}


def test_init_containers_count_as_kube_scheduler_counts_them(harness: Harness) -> None:
    chosen = harness.place(
        pod("init", limits={"gedge.io/gpu": "1"}, init_limits={"gedge.io/gpu": "3"}, annotations=AWARE),
        "dgx-1",
    )
    assert len(chosen.device_ids("gedge.io/gpu")) == 3


@pytest.mark.parametrize("policy", ["best-effort", "restricted", "single-numa", "same-switch"])
def test_every_policy_places_an_aligned_pod(harness: Harness, policy: str) -> None:
    chosen = harness.place(
        pod(
            f"p-{policy}",
            limits={"gedge.io/gpu": "2", "gedge.io/sriov-vf": "1", "cpu": "4"},
            annotations={
                **AWARE,
                "gedge.io/topology-policy": policy,
                "gedge.io/cpu-pinning": "true",
                "gedge.io/communication": '["SRIOV"]',
            },
        ),
        "dgx-1",
    )
    assert chosen.numa_nodes == (chosen.numa_nodes[0],), "2 GPUs, a VF and 4 CPUs fit one socket"


@pytest.mark.parametrize(
    ("policy", "fits"),
    [("best-effort", True), ("restricted", True), ("single-numa", False), ("same-switch", False)],
)
def test_policies_decide_what_is_infeasible(harness: Harness, policy: str, fits: bool) -> None:
    """Six GPUs span both sockets of dgx-1: only best-effort and restricted admit that."""
    wants = pod(
        f"wide-{policy}",
        limits={"gedge.io/gpu": "6"},
        annotations={**AWARE, "gedge.io/topology-policy": policy},
    )
    result = harness.filter(wants, ["dgx-1"])
    if fits:
        assert result["NodeNames"] == ["dgx-1"]
    else:
        assert result["NodeNames"] == []
        assert policy in result["FailedNodes"]["dgx-1"]


def test_same_switch_refuses_gpu_and_vf_on_different_switches(harness: Harness) -> None:
    """With every VF but those of switch 3 taken, a same-switch pod fits only on switch 3's GPUs."""
    topology = _topology(harness, "dgx-1")
    vf_pods = []
    for nic in topology.interfaces[:3]:
        for i, _vf in enumerate(nic.vfs):
            vf_pods.append(pod(f"vf-{nic.name}-{i}", limits={"gedge.io/sriov-vf": "1"}))
    for p in vf_pods:
        harness.filter(p, ["dgx-1"])
    for p in vf_pods:
        assert harness.bind(p, "dgx-1") == ""
    chosen = harness.place(
        pod(
            "switch",
            limits={"gedge.io/gpu": "1", "gedge.io/sriov-vf": "1"},
            annotations={
                **AWARE,
                "gedge.io/topology-policy": "same-switch",
                "gedge.io/communication": '["SRIOV"]',
            },
        ),
        "dgx-1",
    )
    gpu = next(d.pci_address for d in chosen.devices if d.resource == "gedge.io/gpu")
    (vf,) = chosen.device_ids("gedge.io/sriov-vf")
    assert gpu and _gpu_switch(topology, gpu) == _gpu_switch(topology, vf)


def test_pinned_cpus_on_every_fixture_machine(
    harness: Harness, snapshot_states: dict[str, NodeState]
) -> None:
    """Real topologies, odd ones included (offline CPUs, buggy NUMA, 32-bit PCI domains)."""
    for name, state in snapshot_states.items():
        topology = state.topology
        online = set(topology.online_cpus)
        # the shared pool keeps one CPU: a 2-CPU machine pins 1
        n = min(2, len(online) - 1)
        pinning = {**AWARE, "gedge.io/cpu-pinning": "true"}
        wants = pod(f"cpu-{name}", limits={"cpu": str(n)}, annotations=pinning)
        chosen = harness.place(wants, name)
        assert len(chosen.cpus) == n and set(chosen.cpus) <= online, name
        by_id = {c.id: c for c in topology.cpus}
        numas = {by_id[c].numa_node for c in chosen.cpus}
        assert len(numas) == 1, f"{name}: 2 CPUs on one NUMA node"
        siblings = set(by_id[chosen.cpus[0]].thread_siblings) & online
        if len(siblings) == 2 == n:
            assert set(chosen.cpus) == siblings, f"{name}: one full core"


def _race(
    harness: Harness, node: str, make_pod: Callable[[int], dict[str, Any]], pods: int
) -> tuple[list, list]:
    """Filter every pod, then bind them all at once from separate threads."""
    specs = [make_pod(i) for i in range(pods)]
    for spec in specs:
        harness.filter(spec, [node])
    start = threading.Barrier(pods)
    results: list[tuple[str, str]] = []
    lock = threading.Lock()

    def bind(spec: dict[str, Any]) -> None:
        start.wait()
        error = harness.bind(spec, node)
        with lock:
            results.append((spec["metadata"]["name"], error))

    threads = [threading.Thread(target=bind, args=(s,)) for s in specs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == pods, "every bind answered"
    bound = [name for name, error in results if not error]
    refused = [(name, error) for name, error in results if error]
    return bound, refused


def test_racing_binds_for_the_last_gpus_never_share_one(harness: Harness) -> None:
    bound, refused = _race(harness, "dgx-1", lambda i: pod(f"race-{i}", limits={"gedge.io/gpu": "1"}), 24)
    assert len(bound) == 8
    assert len(refused) == 16
    for name, error in refused:
        assert f"ml/{name}" in error and "dgx-1" in error
    gpus = [g for a in harness.binder.bound for g in a.device_ids("gedge.io/gpu")]
    assert len(gpus) == len(set(gpus)) == 8


def test_racing_binds_for_pinned_cpus_never_share_one(harness: Harness) -> None:
    node = "dgx-1"
    cores = len(_topology(harness, node).online_cpus) // 2 - 1  # the shared pool keeps a CPU of the last core
    bound, refused = _race(
        harness,
        node,
        lambda i: pod(f"cpu-{i}", limits={"cpu": "2"}, annotations={**AWARE, "gedge.io/cpu-pinning": "true"}),
        cores + 6,
    )
    assert len(bound) == cores and len(refused) == 6
    cpus = [c for a in harness.binder.bound for c in a.cpus]
    assert len(cpus) == len(set(cpus)) == 2 * cores
