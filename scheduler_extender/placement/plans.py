"""The plan memo: placements in position terms, shared by nodes of one hardware kind in one state.

`PlanMemo` is handed to place() by its owner (the extender's verbs keep one for
their lifetime; benchmarks make fresh ones to time the search). It keeps plans
by (structure, free key, request shape, config) and each state object's free set
while the state lives. Without one, place() searches every time.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass

from gedge_model import Allocation, DeviceGrant, NetworkGrant, NodeState
from gedge_model.allocation import (
    CARD_RESOURCES,
    RESOURCE_GPU,
    RESOURCE_GPU_SHARED,
    RESOURCE_RDMA,
    RESOURCE_SRIOV_VF,
)
from scheduler_extender.placement.free import FreeSet, free_set
from scheduler_extender.placement.index import NO_NUMA, TopologyIndex
from scheduler_extender.placement.request import PodRequest

MAX_PLANS = 32_768
"""Plans a memo keeps; past it, it starts over."""


@dataclass(frozen=True)
class Plan:
    """A placement in position terms: device references are (resource, GPU pos or net slot, member)."""

    devices: tuple[tuple[str, int, int], ...]
    cpus: tuple[int, ...]
    numa_nodes: tuple[int, ...]
    cost: float
    worst: str
    network: tuple[str, int, int] | None
    leftover: int
    stranded: int
    level_cost: float
    free_share: float = 0.0
    at_best: bool = True
    strand: float = 0.0


class PlanMemo:
    """Plans by (structure, free key, request shape, config) and free sets by state object.

    Safe to share between threads: single dict operations only, and a state's
    entry is dropped by a weak reference when the state is collected.
    """

    def __init__(self, max_plans: int = MAX_PLANS) -> None:
        if max_plans < 1:
            raise ValueError("max_plans must be at least 1")
        self.max_plans = max_plans
        self._plans: dict[tuple[object, ...], Plan | str] = {}
        self._free: dict[int, tuple[weakref.ref[NodeState], tuple[Allocation, ...], FreeSet]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._plans)

    def clear(self, plans_only: bool = False) -> None:
        """Forget every plan (and free set, unless `plans_only`), so the next place() searches again."""
        self._plans.clear()
        if not plans_only:
            self._free.clear()

    def get(self, key: tuple[object, ...]) -> Plan | str | None:
        return self._plans.get(key)

    def put(self, key: tuple[object, ...], plan: Plan | str) -> None:
        with self._lock:
            if len(self._plans) >= self.max_plans:
                self._plans.clear()
            self._plans[key] = plan

    def free(self, index: TopologyIndex, state: NodeState, reserved: Iterable[Allocation]) -> FreeSet:
        """What is free on the node, kept per state object (a state never changes) and reserved set."""
        held = tuple(reserved)
        key = id(state)
        hit = self._free.get(key)
        if (
            hit is not None
            and hit[0]() is state
            and len(hit[1]) == len(held)
            and all(a is b for a, b in zip(hit[1], held, strict=True))
        ):
            return hit[2]
        free = free_set(index, state, held)
        if not held and not state.allocations:
            return free
        entries = self._free

        def drop(_: object, key: int = key) -> None:
            # runs inside garbage collection, possibly while this thread holds a lock: take none
            entry = entries.get(key)
            if entry is not None and entry[0]() is None:
                entries.pop(key, None)

        entries[key] = (weakref.ref(state, drop), held, free)
        return free


def _grant(index: TopologyIndex, ref: tuple[str, int, int]) -> DeviceGrant:
    found = index.grants.get(ref)
    if found is None:
        resource, owner, member = ref
        if resource == RESOURCE_SRIOV_VF:
            group = index.vf_groups[owner]
            address, numa = group.members[member], group.numa
            found = DeviceGrant(resource, address, address, None if numa == NO_NUMA else numa)
        elif resource == RESOURCE_RDMA:
            rdma = index.nets[owner]
            found = DeviceGrant(resource, rdma.ident, rdma.pci, None if rdma.numa == NO_NUMA else rdma.numa)
        else:
            gpu = index.gpus[owner]
            if resource == RESOURCE_GPU or resource in CARD_RESOURCES:
                device_id = gpu.uuid
            elif resource == RESOURCE_GPU_SHARED:
                device_id = gpu.replica_ids[member]
            else:
                device_id = gpu.migs[member][0]
            found = DeviceGrant(resource, device_id, gpu.pci, None if gpu.numa == NO_NUMA else gpu.numa)
        index.grants[ref] = found
    return found  # type: ignore[return-value]


def _network(index: TopologyIndex, ref: tuple[str, int, int]) -> NetworkGrant:
    key = ("network", *ref)
    found = index.grants.get(key)
    if found is None:
        mode, slot, member = ref
        if mode == "sriov":
            group = index.vf_groups[slot]
            found = NetworkGrant(mode="sriov", master=group.master, vf_pci_address=group.members[member])
        else:
            found = NetworkGrant(mode="macvlan", master=index.nets[slot].master)
        index.grants[key] = found
    return found  # type: ignore[return-value]


def materialize(index: TopologyIndex, state: NodeState, request: PodRequest, plan: Plan) -> Allocation:
    return Allocation(
        pod_uid=request.uid or f"{request.namespace}/{request.name}",
        namespace=request.namespace,
        name=request.name,
        node=state.node_name,
        devices=tuple(_grant(index, ref) for ref in plan.devices),
        cpus=plan.cpus,
        numa_nodes=plan.numa_nodes,
        cost=plan.cost,
        worst_level=plan.worst,
        network=None if plan.network is None else _network(index, plan.network),
    )
