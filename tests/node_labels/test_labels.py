"""The driver labels a node carries, and the merge patch that brings a Node to them."""

from __future__ import annotations

from dataclasses import replace

import pytest

from agent.node_labels import MANAGED_LABELS, label_patch, node_labels
from gedge_model import Gpu, NodeTopology
from scheduler_extender.workflow.catalog import catalog_from_dict
from scheduler_extender.workflow.composer import compose, node_satisfies


def gpu(index: int, driver: str | None = "535.54.03") -> Gpu:
    return Gpu(
        index=index,
        uuid=f"GPU-{index}",
        name="A100",
        pci_address=f"0000:{0x17 + index:02x}:00.0",
        memory_bytes=40 << 30,
        driver_version=driver,
    )


def topology(*gpus: Gpu) -> NodeTopology:
    return NodeTopology(node_name="edge-1", gpus=gpus)


def test_gpu_node_gets_driver_version_code_and_count():
    assert node_labels(topology(gpu(0), gpu(1))) == {
        "gedge.io/nvidia-driver": "535.54.03",
        "gedge.io/nvidia-driver-code": "535054003",
        "gedge.io/gpu-count": "2",
    }


def test_node_without_gpus_gets_none():
    assert node_labels(topology()) == {}


@pytest.mark.parametrize("driver", [None, "unknown"])
def test_gpus_without_a_usable_driver_get_only_the_count(driver):
    assert node_labels(topology(gpu(0, driver))) == {"gedge.io/gpu-count": "1"}


def test_patch_sets_changed_removes_stale_and_leaves_other_labels_alone():
    current = {
        "kubernetes.io/hostname": "edge-1",
        "gedge.io/nvidia-driver": "525.60.13",
        "gedge.io/nvidia-driver-code": "525060013",
        "gedge.io/gpu-count": "2",
    }
    wanted = {"gedge.io/nvidia-driver": "535.54.03", "gedge.io/nvidia-driver-code": "535054003"}
    assert label_patch(current, wanted) == {
        "gedge.io/nvidia-driver": "535.54.03",
        "gedge.io/nvidia-driver-code": "535054003",
        "gedge.io/gpu-count": None,
    }
    assert label_patch(current, {}) == dict.fromkeys(MANAGED_LABELS)


def test_patch_is_empty_when_the_node_already_matches():
    wanted = node_labels(topology(gpu(0)))
    assert label_patch({**wanted, "zone": "a"}, wanted) == {}
    assert label_patch(None, {}) == {}


@pytest.mark.parametrize(
    ("driver", "allowed"), [("460.27.03", True), ("535.54.03", True), ("455.45.01", False)]
)
def test_labels_meet_the_composers_driver_rule(driver, allowed):
    catalog = catalog_from_dict(
        {
            "components": [
                {
                    "name": "cuda",
                    "version": "11.2",
                    "kind": "cuda",
                    "volume": "runtimes",
                    "mountPath": "/opt/cuda",
                    "minDriver": "460.27.03",
                }
            ]
        }
    )
    composition = compose(catalog, ["cuda-11.2"])
    labels = node_labels(topology(replace(gpu(0), driver_version=driver)))
    assert node_satisfies(composition, labels)[0] is allowed
    requirement = composition.node_selector_requirements[0]
    assert (int(labels[requirement["key"]]) > int(requirement["values"][0])) is allowed
    assert node_satisfies(composition, node_labels(topology()))[0] is False
