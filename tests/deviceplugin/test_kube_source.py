"""Kubernetes pod objects as the device plugins read them."""

from __future__ import annotations

import datetime

from kubernetes import client as k8s

from agent.deviceplugin.kube import pending_pod_from_k8s
from agent.deviceplugin.pods import candidates
from gedge_model import DeviceGrant
from tests.deviceplugin.conftest import NODE, VF1, allocation_for


def _limits(values: dict[str, str]) -> k8s.V1ResourceRequirements:
    return k8s.V1ResourceRequirements(limits=values, requests=values)


def test_v1pod_becomes_a_pending_pod_with_its_annotation_marks_and_creation_time():
    allocation = allocation_for("uid-7", "trainer", [DeviceGrant(resource="gedge.io/sriov-vf", id=VF1)])
    created = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    pod = k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(
            name="trainer",
            namespace="ml",
            uid="uid-7",
            creation_timestamp=created,
            annotations={
                "gedge.io/allocation": allocation.to_annotation(),
                "gedge.io/allocated-gpu": "GPU-1",
                "other.io/x": "y",
            },
        ),
        spec=k8s.V1PodSpec(
            node_name=NODE,
            init_containers=[k8s.V1Container(name="fetch", resources=_limits({"gedge.io/sriov-vf": "1"}))],
            containers=[
                k8s.V1Container(name="main", resources=_limits({"gedge.io/sriov-vf": "1", "cpu": "2"})),
                k8s.V1Container(name="side", resources=_limits({"gedge.io/gpu": "2"})),
                k8s.V1Container(name="plain"),
            ],
        ),
        status=k8s.V1PodStatus(phase="Pending"),
    )

    seen = pending_pod_from_k8s(pod)

    assert (seen.ref, seen.uid, seen.created) == ("ml/trainer", "uid-7", created.timestamp())
    assert seen.marks == {"gedge.io/allocated-gpu": "GPU-1"}
    assert seen.requests == {"gedge.io/sriov-vf": (1, 1), "gedge.io/gpu": (2,)}
    assert seen.served_ids("gedge.io/gpu") == {"GPU-1"}
    assert [sorted(c.device_ids) for c in candidates([seen], "gedge.io/sriov-vf", NODE).claims] == [[VF1]]


def test_pod_without_annotations_has_none():
    pod = k8s.V1Pod(metadata=k8s.V1ObjectMeta(name="plain", namespace="default", uid="u"))

    seen = pending_pod_from_k8s(pod)

    assert seen.annotation is None
    assert seen.marks == {}
