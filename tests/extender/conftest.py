"""Extender test nodes: real discovery of the fixture snapshots plus synthetic GPU boxes, and pods
built with the kubernetes client's models and serializer, as kube-scheduler would send them."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import (
    ApiClient,
    V1Container,
    V1Node,
    V1NodeAddress,
    V1NodeList,
    V1NodeStatus,
    V1ObjectMeta,
    V1Pod,
    V1PodSpec,
    V1ResourceRequirements,
)

from agent.discovery import discover
from gedge_model import Allocation, NodeState
from tests.support.synthetic import dgx_like, edge_box

SERIALIZE = ApiClient().sanitize_for_serialization


def snapshot_node_name(snapshot: str) -> str:
    return "snap-" + re.sub(r"[^a-z0-9-]+", "-", snapshot.lower()).strip("-")


@pytest.fixture(scope="session")
def snapshot_states(snapshot_roots: dict[str, Path]) -> dict[str, NodeState]:
    """Every fixture snapshot, discovered for real, as a node with nothing allocated."""
    states = {}
    for snapshot, root in snapshot_roots.items():
        name = snapshot_node_name(snapshot)
        states[name] = NodeState(discover(root, node_name=name))
    return states


@pytest.fixture(scope="session")
def gpu_states() -> dict[str, NodeState]:
    """Synthetic boxes (the placement engine's models): GPUs, VFs, RDMA and MIG this machine lacks."""
    mig = {gpu: ["1g.10gb"] * 7 if gpu % 2 == 0 else ["3g.40gb"] * 2 for gpu in range(8)}
    return {
        "dgx-1": NodeState(dgx_like("dgx-1")),
        "dgx-mig": NodeState(dgx_like("dgx-mig", mig=mig)),
        "dgx-shared": NodeState(dgx_like("dgx-shared", timeslice_replicas=4)),
        "edge-1": NodeState(edge_box("edge-1", timeslice_replicas=1)),
    }


def pod(
    name: str = "trainer",
    *,
    uid: str | None = None,
    limits: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    init_limits: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A Pod as the API server (and so kube-scheduler) serializes it."""
    resources = V1ResourceRequirements(limits=limits, requests=limits) if limits else V1ResourceRequirements()
    init = (
        [
            V1Container(
                name="init",
                image="busybox",
                resources=V1ResourceRequirements(limits=init_limits, requests=init_limits),
            )
        ]
        if init_limits
        else None
    )
    model = V1Pod(
        api_version="v1",
        kind="Pod",
        metadata=V1ObjectMeta(name=name, namespace="ml", uid=uid or f"uid-{name}", annotations=annotations),
        spec=V1PodSpec(
            scheduler_name="gedge-scheduler",
            init_containers=init,
            containers=[V1Container(name="main", image="registry.example/train:1", resources=resources)],
        ),
    )
    return SERIALIZE(model)


def node_list(*names: str) -> dict[str, Any]:
    nodes = [
        V1Node(
            metadata=V1ObjectMeta(name=n, labels={"kubernetes.io/hostname": n}),
            status=V1NodeStatus(addresses=[V1NodeAddress(type="InternalIP", address="10.0.0.1")]),
        )
        for n in names
    ]
    return SERIALIZE(V1NodeList(items=nodes))


class RecordingBinder:
    """Stands in for the API server or agent at the far side of a bind; can be told to fail."""

    def __init__(self) -> None:
        self.bound: list[Allocation] = []
        self.fail_with: str | None = None
        self._lock = threading.Lock()

    def bind(self, allocation: Allocation) -> None:
        from scheduler_extender.bind.binder import BindError

        if self.fail_with:
            raise BindError(self.fail_with)
        with self._lock:
            self.bound.append(allocation)
