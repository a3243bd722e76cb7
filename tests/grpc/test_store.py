"""The node state store: generations, conflation for slow watchers, and the device inventory."""

from __future__ import annotations

import asyncio

import pytest

from agent.service.inventory import advertised_devices, allocation_conflicts, device_inventory
from agent.service.store import NodeStateStore
from gedge_model import (
    Allocation,
    Cpu,
    DeviceGrant,
    Gpu,
    MigInstance,
    NetInterface,
    NodeState,
    NodeTopology,
    PciDevice,
    RdmaDevice,
    VirtualFunction,
)


def small_topology(name: str = "edge-1", online: tuple[int, ...] = (0, 1, 2, 3)) -> NodeTopology:
    pci = (
        PciDevice("0000:01:00.0", 0x030200, 0x10DE, 0x20B0, "0000:00", numa_node=0),
        PciDevice("0000:02:00.0", 0x030200, 0x10DE, 0x20B0, "0000:00", numa_node=0),
        PciDevice("0000:03:00.0", 0x020000, 0x15B3, 0x1017, "0000:00", numa_node=0),
        PciDevice("0000:03:00.2", 0x020000, 0x15B3, 0x1018, "0000:00", numa_node=0, physfn="0000:03:00.0"),
    )
    return NodeTopology(
        node_name=name,
        cpus=tuple(Cpu(i, i in online, numa_node=0) for i in range(4)),
        pci_devices=pci,
        interfaces=(
            NetInterface(
                "ens3",
                "0000:03:00.0",
                sriov_totalvfs=4,
                sriov_numvfs=1,
                vfs=(VirtualFunction(0, "0000:03:00.2", "ens3v0"),),
            ),
        ),
        rdma_devices=(RdmaDevice("mlx5_0", "0000:03:00.0"),),
        gpus=(
            Gpu(0, "GPU-aaaa", "A100", "0000:01:00.0", 40 << 30),
            Gpu(
                1,
                "GPU-bbbb",
                "A100",
                "0000:02:00.0",
                40 << 30,
                mig_current=True,
                mig_instances=(MigInstance("MIG-1111", "1g.5gb", 7, 0),),
            ),
        ),
    )


def test_generation_grows_only_on_change() -> None:
    store = NodeStateStore(small_topology())
    assert store.current().state.generation == 1
    assert not store.set_topology(small_topology())
    assert store.current().state.generation == 1
    assert store.set_topology(small_topology(online=(0, 1, 2)))
    assert store.current().state.generation == 2
    assert store.current().topology_generation == 2
    alloc = Allocation("uid-1", "ml", "p", "edge-1", cpus=(1,))
    assert store.set_allocations((alloc,))
    snap = store.current()
    assert (snap.state.generation, snap.topology_generation, snap.state.allocations) == (3, 2, (alloc,))


def test_topology_for_another_node_is_refused() -> None:
    store = NodeStateStore(small_topology("edge-1"))
    with pytest.raises(ValueError, match="edge-2"):
        store.set_topology(small_topology("edge-2"))


def test_slow_watcher_wakes_to_the_latest_state() -> None:
    async def scenario() -> tuple[bool, int]:
        store = NodeStateStore(small_topology())
        sub = store.subscribe(asyncio.get_running_loop())
        for online in ((0,), (0, 1), (0, 1, 2)):
            store.set_topology(small_topology(online=online))
        await asyncio.wait_for(sub.wake.wait(), 1)
        store.unsubscribe(sub)
        return sub.wake.is_set(), store.current().state.generation

    woke, generation = asyncio.run(scenario())
    assert woke and generation == 4


def test_inventory_names_devices_as_the_device_plugins_do() -> None:
    topology = small_topology()
    ids = {(d.resource, d.id) for d in advertised_devices(topology)}
    assert ids == {
        ("gedge.io/gpu", "GPU-aaaa"),
        ("gedge.io/mig-1g.5gb", "MIG-1111"),
        ("gedge.io/sriov-vf", "0000:03:00.2"),
        ("gedge.io/rdma", "mlx5_0"),
    }
    shared = NodeTopology(
        node_name="n", gpus=(Gpu(0, "GPU-cccc", "T4", "0000:01:00.0", 1, timeslice_replicas=3),)
    )
    assert {(d.resource, d.id) for d in advertised_devices(shared)} == {
        ("gedge.io/gpu", "GPU-cccc"),
        ("gedge.io/gpu-shared", "GPU-cccc::0"),
        ("gedge.io/gpu-shared", "GPU-cccc::1"),
        ("gedge.io/gpu-shared", "GPU-cccc::2"),
    }


def test_inventory_marks_held_devices_and_conflicts_name_the_holder() -> None:
    holder = Allocation(
        "uid-1", "ml", "trainer", "edge-1", devices=(DeviceGrant("gedge.io/gpu", "GPU-aaaa"),), cpus=(1,)
    )
    state = NodeState(small_topology(online=(0, 1, 2)), (holder,), 2)
    held = {d.id: d.pod_uid for d in device_inventory(state)}
    assert held["GPU-aaaa"] == "uid-1" and held["MIG-1111"] is None

    wanted = Allocation(
        "uid-2",
        "ml",
        "other",
        "edge-1",
        devices=(DeviceGrant("gedge.io/gpu", "GPU-aaaa"), DeviceGrant("gedge.io/gpu", "GPU-zzzz")),
        cpus=(1, 3),
    )
    problems = allocation_conflicts(state, wanted)
    assert any("GPU-aaaa is held by pod ml/trainer" in p for p in problems)
    assert any("GPU-zzzz does not exist" in p for p in problems)
    assert any("CPU 1 is held by pod ml/trainer" in p for p in problems)
    assert any("CPU 3 is not an online CPU" in p for p in problems)
    assert allocation_conflicts(state, holder) == []
    assert allocation_conflicts(state, Allocation("uid-3", "ml", "x", "edge-9")) == [
        "allocation is for node 'edge-9', this is 'edge-1'"
    ]


def test_why_the_agent_cannot_apply_is_kept_across_other_changes() -> None:
    store = NodeStateStore(small_topology())
    assert store.set_not_applying("CgroupTreeMissing: no kubepods cgroup")
    assert not store.set_not_applying("CgroupTreeMissing: no kubepods cgroup")
    assert store.current().state.generation == 2
    store.set_topology(small_topology(online=(0, 1, 2)))
    store.set_allocations((Allocation("u1", "ns", "p", "edge-1", cpus=(1,)),))
    snap = store.current()
    assert snap.state.generation == 4 and snap.not_applying == "CgroupTreeMissing: no kubepods cgroup"
    assert store.set_not_applying("") and store.current().not_applying == ""
