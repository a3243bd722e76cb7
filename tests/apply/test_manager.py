"""ApplyManager on the real cgroup v1 cpuset hierarchy with real processes, and on a v2 tree."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.apply import (
    AllocationApplier,
    ApplyError,
    ApplyManager,
    CgroupDriver,
    CgroupVersion,
    PodRuntime,
    QosClass,
    StaticPodResolver,
)
from agent.apply.nic import NicApplier, macvlan_host_name
from gedge_model import Allocation, NetworkGrant
from tests.apply.helpers import (
    build_pod_cgroups,
    make_v2_cgroup,
    namespaces,
    new_container_id,
    new_pod_uid,
    start_in_cgroup,
    stop,
    unique,
    v1_sandbox,
    veth_pair,
)
from tests.apply.netutil import links_in

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")


@dataclass
class Node:
    root: Path
    checkpoint: Path
    resolver: StaticPodResolver
    host: str
    master: str
    stack: ExitStack
    netns: dict[str, str] = field(default_factory=dict)
    procs: dict[str, list] = field(default_factory=dict)

    def manager(self, **kw) -> ApplyManager:
        return ApplyManager(
            cgroup_root=self.root,
            cgroup_driver=CgroupDriver.CGROUPFS,
            cgroup_version=CgroupVersion.V1,
            checkpoint_path=self.checkpoint,
            resolver=self.resolver,
            nic=NicApplier(host_netns=self.host),
            **kw,
        )

    def add_pod(
        self, qos: QosClass, containers: int = 1, with_netns: bool = True, uid: str | None = None
    ) -> str:
        """Start a pod (`uid`: one known so far only by its allocation): cgroups, processes, netns."""
        uid = uid or new_pod_uid()
        cids = [new_container_id() for _ in range(containers)]
        paths = build_pod_cgroups(self.root, CgroupDriver.CGROUPFS, qos, uid, cids)
        self.procs[uid] = [start_in_cgroup(p) for p in paths]
        netns = None
        if with_netns:
            self.netns[uid] = unique("gtP")
            self.stack.enter_context(namespaces(self.netns[uid]))
            netns = self.netns[uid]
        self.resolver.pods[uid] = PodRuntime(qos=qos, container_ids=tuple(cids), netns=netns)
        return uid

    def affinity(self, uid: str) -> set[int]:
        sets = {frozenset(os.sched_getaffinity(p.pid)) for p in self.procs[uid]}
        assert len(sets) == 1
        return set(next(iter(sets)))


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    host, master, wire = unique("gtH"), unique("gd"), unique("gw")
    with ExitStack() as stack, v1_sandbox() as top, namespaces(host), veth_pair(master, wire, host, host):
        n = Node(
            root=top,
            checkpoint=tmp_path / "state" / "checkpoint.json",
            resolver=StaticPodResolver(),
            host=host,
            master=master,
            stack=stack,
        )
        try:
            yield n
        finally:
            for procs in n.procs.values():
                for p in procs:
                    stop(p)


def pinned(uid: str, cpus: tuple[int, ...], network: NetworkGrant | None = None) -> Allocation:
    name = f"pod-{uid[:4]}"
    return Allocation(pod_uid=uid, namespace="ml", name=name, node="edge-1", cpus=cpus, network=network)


def test_manager_is_an_allocation_applier(node: Node) -> None:
    manager: AllocationApplier = node.manager()
    assert manager.applied() == ()


def test_pinned_pod_gets_its_cpu_and_the_others_lose_it(node: Node) -> None:
    shared = node.add_pod(QosClass.BURSTABLE, containers=2)
    besteffort = node.add_pod(QosClass.BESTEFFORT)
    pod = node.add_pod(QosClass.GUARANTEED, containers=2)
    assert node.affinity(pod) == {0, 1}
    manager = node.manager()
    allocation = pinned(pod, (1,))
    manager.apply(allocation)
    assert node.affinity(pod) == {1}
    assert node.affinity(shared) == {0}
    assert node.affinity(besteffort) == {0}
    assert manager.applied() == (allocation,)
    saved = json.loads(node.checkpoint.read_text())
    assert saved["intent"] is None and saved["pods"][0]["allocation"]["cpus"] == [1]

    manager.apply(allocation)
    assert node.affinity(pod) == {1}

    manager.release(pod)
    assert node.affinity(pod) == {0, 1}
    assert node.affinity(shared) == {0, 1}
    assert manager.applied() == ()
    manager.release(pod)


def test_new_containers_join_the_shared_pool_on_refresh(node: Node) -> None:
    pod = node.add_pod(QosClass.GUARANTEED)
    manager = node.manager()
    manager.apply(pinned(pod, (0,)))
    late = node.add_pod(QosClass.BURSTABLE)
    assert node.affinity(late) == {0, 1}
    manager.refresh_shared_pool()
    assert node.affinity(late) == {1}


def test_data_path_nic_and_cpus_together(node: Node) -> None:
    pod = node.add_pod(QosClass.GUARANTEED)
    grant = NetworkGrant(mode="macvlan", master=node.master, mtu=1400, address="10.71.0.5/24")
    manager = node.manager()
    manager.apply(pinned(pod, (1,), grant))
    net1 = links_in(node.netns[pod])["net1"]
    assert (net1.mtu, net1.addresses) == (1400, ("10.71.0.5/24",))
    manager.release(pod)
    assert set(links_in(node.netns[pod])) == {"lo"}
    assert node.affinity(pod) == {0, 1}


def test_refusals_name_the_fault_and_change_nothing(node: Node) -> None:
    other = node.add_pod(QosClass.BURSTABLE)
    first = node.add_pod(QosClass.GUARANTEED)
    second = node.add_pod(QosClass.GUARANTEED)
    manager = node.manager(reserved_cpus=[0])
    manager.apply(pinned(first, (1,)))
    before = node.checkpoint.read_text()
    cases = [
        (pinned(second, (1,)), "cpus 1 are exclusive to another pod"),
        (pinned(second, (7,)), "cpus 7 are not in the node's pod CPUs 0-1"),
        (pinned(second, (0,)), "cpus 0 are reserved for the system"),
        (pinned(first, (0,)), "already applied with a different allocation"),
        (pinned(new_pod_uid(), (1,)), "not running on this node"),
        (
            pinned(second, (), NetworkGrant(mode="macvlan", master=node.master, vlan=7)),
            "VLAN 7 needs a VF",
        ),
    ]
    for allocation, message in cases:
        with pytest.raises(ApplyError, match=message) as err:
            manager.apply(allocation)
        assert allocation.pod_uid in str(err.value)
    assert node.checkpoint.read_text() == before
    assert (node.affinity(first), node.affinity(second), node.affinity(other)) == ({1}, {0}, {0})


def test_unresolved_pod_is_reserved_then_attached_by_its_runtime(node: Node) -> None:
    shared = node.add_pod(QosClass.BURSTABLE)
    manager = node.manager(reserve_unresolved=True)
    uid = new_pod_uid()
    grant = NetworkGrant(mode="macvlan", master=node.master, address="10.75.0.2/24")
    allocation = pinned(uid, (1,), grant)

    manager.apply(allocation)
    assert manager.reserved_pod_uids() == {uid}
    assert manager.applied() == (allocation,)
    assert node.affinity(shared) == {0}
    saved = json.loads(node.checkpoint.read_text())
    assert saved["intent"] is None
    assert [(p["reserved"], p["nic"]) for p in saved["pods"]] == [(True, None)]
    manager.apply(allocation)
    assert manager.reserved_pod_uids() == {uid}

    other = new_pod_uid()
    for attempt, message in (
        (pinned(other, (1,)), "cpus 1 are exclusive to another pod"),
        (pinned(other, (0,)), "empties the shared pool"),
        (pinned(uid, (0,)), "already applied with a different allocation"),
    ):
        with pytest.raises(ApplyError, match=message):
            manager.apply(attempt)

    node.resolver.pods[uid] = PodRuntime(
        qos=QosClass.GUARANTEED, container_ids=(new_container_id(),), netns=unique("gtP")
    )
    with pytest.raises(ApplyError, match=f"pod {uid}: no cgroup for container"):
        manager.apply(allocation)
    assert manager.reserved_pod_uids() == {uid}
    assert json.loads(node.checkpoint.read_text()) == saved

    node.add_pod(QosClass.GUARANTEED, containers=2, uid=uid)
    manager.apply(allocation)
    assert manager.reserved_pod_uids() == frozenset()
    assert (node.affinity(uid), node.affinity(shared)) == ({1}, {0})
    assert links_in(node.netns[uid])["net1"].addresses == ("10.75.0.2/24",)

    manager.release(uid)
    assert (node.affinity(uid), node.affinity(shared)) == ({0, 1}, {0, 1})
    assert set(links_in(node.netns[uid])) == {"lo"}
    assert manager.applied() == ()


def test_released_reservation_frees_its_cpus(node: Node) -> None:
    shared = node.add_pod(QosClass.BURSTABLE)
    manager = node.manager(reserve_unresolved=True)
    uid = new_pod_uid()
    manager.apply(pinned(uid, (0,)))
    assert node.affinity(shared) == {1}
    manager.release(uid)
    assert node.affinity(shared) == {0, 1}
    assert (manager.applied(), manager.reserved_pod_uids()) == ((), frozenset())
    manager.apply(pinned(new_pod_uid(), (0,)))
    assert node.affinity(shared) == {1}


def test_reconcile_keeps_reserved_pods_that_are_live(node: Node) -> None:
    shared = node.add_pod(QosClass.BURSTABLE)
    keep, gone = new_pod_uid(), new_pod_uid()
    first = node.manager(reserve_unresolved=True)
    first.apply(pinned(keep, (1,)))
    first.apply(pinned(gone, ()))
    assert first.reserved_pod_uids() == {keep, gone}

    restarted = node.manager()
    assert restarted.reconcile({keep, shared}).released == (gone,)
    assert restarted.reserved_pod_uids() == {keep}
    assert node.affinity(shared) == {0}

    report = restarted.reconcile_recorded()
    assert report is not None and report.released == ()
    assert restarted.reserved_pod_uids() == {keep}
    restarted.release(keep)
    assert node.affinity(shared) == {0, 1}
    assert restarted.reconcile_recorded() is None


def test_empty_shared_pool_and_bad_inputs_are_refused(node: Node) -> None:
    pod = node.add_pod(QosClass.GUARANTEED)
    manager = node.manager()
    with pytest.raises(ApplyError, match="empties the shared pool"):
        manager.apply(pinned(pod, (0, 1)))
    bad = new_pod_uid()
    node.resolver.pods[bad] = PodRuntime(qos=QosClass.GUARANTEED, container_ids=("zz",))
    with pytest.raises(ApplyError, match="bad container ID 'zz'"):
        manager.apply(pinned(bad, (1,)))
    ghost = new_pod_uid()
    node.resolver.pods[ghost] = PodRuntime(qos=QosClass.GUARANTEED, container_ids=(new_container_id(),))
    with pytest.raises(ApplyError, match="no cgroup for container"):
        manager.apply(pinned(ghost, (1,)))
    node.resolver.pods["../x"] = PodRuntime(qos=QosClass.GUARANTEED)
    with pytest.raises(ApplyError, match="bad pod UID"):
        manager.apply(pinned("../x", (1,)))
    assert manager.applied() == ()
    assert node.affinity(pod) == {0, 1}


def test_failed_apply_is_undone(node: Node) -> None:
    shared = node.add_pod(QosClass.BURSTABLE)
    pod = node.add_pod(QosClass.GUARANTEED)
    with veth_pair("net1", unique("gx"), node.netns[pod], node.netns[shared]):
        manager = node.manager()
        grant = NetworkGrant(mode="macvlan", master=node.master)
        with pytest.raises(ApplyError, match=f"pod {pod}: .*already has an interface named net1"):
            manager.apply(pinned(pod, (1,), grant))
        assert manager.applied() == ()
        assert (node.affinity(pod), node.affinity(shared)) == ({0, 1}, {0, 1})
        assert macvlan_host_name(pod) not in links_in(node.host)
        assert links_in(node.netns[pod])["net1"].kind == "veth"


def test_restart_reconcile_frees_pods_that_are_gone(node: Node) -> None:
    keep = node.add_pod(QosClass.GUARANTEED)
    gone = node.add_pod(QosClass.GUARANTEED)
    shared = node.add_pod(QosClass.BURSTABLE)
    grant = NetworkGrant(mode="macvlan", master=node.master, address="10.72.0.1/24")
    first = node.manager()
    first.apply(pinned(keep, (1,)))
    first.apply(pinned(gone, (), grant))
    assert node.affinity(shared) == {0}

    restarted = node.manager()
    report = restarted.reconcile({keep, shared})
    assert report.released == (gone,)
    assert [a.pod_uid for a in restarted.applied()] == [keep]
    assert set(links_in(node.netns[gone])) == {"lo"}
    assert (node.affinity(keep), node.affinity(shared)) == ({1}, {0})


def test_reconcile_repairs_a_data_path_nic_that_vanished(node: Node) -> None:
    pod = node.add_pod(QosClass.BURSTABLE)
    grant = NetworkGrant(mode="macvlan", master=node.master, address="10.73.0.1/24")
    manager = node.manager()
    manager.apply(pinned(pod, (), grant))
    with __import__("pyroute2").IPRoute(netns=node.netns[pod], flags=0) as ipr:
        ipr.link("del", index=ipr.link_lookup(ifname="net1")[0])
    report = manager.reconcile({pod})
    assert report.repaired == (pod,)
    assert links_in(node.netns[pod])["net1"].addresses == ("10.73.0.1/24",)


def test_malformed_checkpoint_is_a_clear_error(node: Node) -> None:
    node.checkpoint.parent.mkdir(parents=True)
    node.checkpoint.write_text('{"version": 1, "pods": [{"allocation": {}}]}')
    with pytest.raises(ApplyError, match=f"checkpoint {node.checkpoint} is malformed"):
        node.manager().applied()


@pytest.mark.parametrize("driver", list(CgroupDriver))
def test_cgroup_v2_tree(tmp_path: Path, driver: CgroupDriver) -> None:
    root = tmp_path / "cgroup"
    make_v2_cgroup(root)
    kubepods = "kubepods.slice" if driver is CgroupDriver.SYSTEMD else "kubepods"
    make_v2_cgroup(root / kubepods, "0-7", "0-1", effective="0-7")
    pod, other = new_pod_uid(), new_pod_uid()
    cid = new_container_id()
    (pod_container,) = build_pod_cgroups(root, driver, QosClass.GUARANTEED, pod, [cid], v1=False)
    other_containers = build_pod_cgroups(
        root, driver, QosClass.BURSTABLE, other, [new_container_id(), new_container_id()], v1=False
    )
    resolver = StaticPodResolver(
        {pod: PodRuntime(qos=QosClass.GUARANTEED, container_ids=(f"containerd://{cid}",))}
    )
    manager = ApplyManager(
        cgroup_root=root,
        cgroup_driver=driver,
        cgroup_version=CgroupVersion.V2,
        checkpoint_path=tmp_path / "cp.json",
        resolver=resolver,
    )
    manager.apply(Allocation(pod_uid=pod, namespace="a", name="b", node="n", cpus=(2, 3), numa_nodes=(1,)))
    assert (pod_container / "cpuset.cpus").read_text() == "2-3\n"
    assert (pod_container / "cpuset.mems").read_text() == "1\n"
    for path in other_containers:
        assert (path / "cpuset.cpus").read_text() == "0-1,4-7\n"
        assert (path / "cpuset.mems").read_text() == "0-1\n"
    manager.release(pod)
    for path in (pod_container, *other_containers):
        assert (path / "cpuset.cpus").read_text() == "0-7\n"


def test_wrong_cgroup_root_is_a_clear_error(tmp_path: Path) -> None:
    manager = ApplyManager(
        cgroup_root=tmp_path,
        cgroup_driver=CgroupDriver.SYSTEMD,
        cgroup_version=CgroupVersion.V2,
        checkpoint_path=tmp_path / "cp.json",
        resolver=StaticPodResolver(),
    )
    message = f"no kubepods cgroup at {tmp_path}/kubepods.slice"
    with pytest.raises(ApplyError, match=message):
        manager.reconcile(set())
    with pytest.raises(ApplyError, match=message):
        manager.refresh_shared_pool()


def test_pods_pinned_by_the_runtime_stay_pinned_when_cpusets_converge(node: Node) -> None:
    """A pod NRI pinned at creation, not yet in the checkpoint: converging keeps it on its CPU and
    every other container off it, instead of widening it to the shared pool."""
    nri_pinned = node.add_pod(QosClass.GUARANTEED, with_netns=False)
    other = node.add_pod(QosClass.BURSTABLE, with_netns=False)
    held = {nri_pinned: frozenset({1})}
    manager = node.manager(pinned_elsewhere=lambda: held)
    manager.refresh_shared_pool()
    assert (node.affinity(nri_pinned), node.affinity(other)) == ({1}, {0})
    with pytest.raises(ApplyError, match="cpus 1 are exclusive to another pod"):
        manager.apply(pinned(other, (1,)))
    held.clear()  # the pod went
    manager.refresh_shared_pool()
    assert node.affinity(other) == {0, 1}


def test_reservations_nobody_attaches_expire_and_free_their_cpus(node: Node) -> None:
    """A binder that moved the pod, lost the answer or died never attaches: the reservation goes after
    its TTL; one attached by the pod's runtime, or younger than the TTL, stays."""
    shared = node.add_pod(QosClass.BURSTABLE)
    now = [1000.0]
    manager = node.manager(reserve_unresolved=True, clock=lambda: now[0])
    orphan, attached, young = new_pod_uid(), new_pod_uid(), new_pod_uid()
    manager.apply(pinned(orphan, (1,)))
    manager.apply(pinned(attached, ()))
    now[0] += 50
    manager.apply(pinned(young, ()))
    assert node.affinity(shared) == {0}
    node.resolver.pods[attached] = PodRuntime(qos=QosClass.BURSTABLE, container_ids=(), netns=None)
    node.add_pod(QosClass.BURSTABLE, with_netns=False, uid=attached)
    manager.apply(pinned(attached, ()))
    assert manager.reserved_pod_uids() == {orphan, young}

    now[0] += 60  # orphan 110 s old, young 60 s
    assert manager.expire_reservations(100) == (orphan,)
    assert manager.reserved_pod_uids() == {young}
    assert {a.pod_uid for a in manager.applied()} == {attached, young}
    assert node.affinity(shared) == {0, 1}, "the orphan's CPU is back in the shared pool"
    saved = json.loads(node.checkpoint.read_text())
    assert sorted(p["allocation"]["pod_uid"] for p in saved["pods"]) == sorted([attached, young])
    assert manager.expire_reservations(100) == ()

    restarted = node.manager(reserve_unresolved=True, clock=lambda: now[0])
    now[0] += 45
    assert restarted.expire_reservations(100) == (young,), "the recorded time survives a restart"
