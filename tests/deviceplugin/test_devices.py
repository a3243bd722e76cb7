"""Which devices each resource advertises, from the topology model."""

from __future__ import annotations

from dataclasses import replace

from agent.deviceplugin.devices import HEALTHY, UNHEALTHY, plugin_devices, timeslice_id, valid_resource_name
from gedge_model import MigInstance
from tests.deviceplugin.conftest import GPU0, GPU1, MIG_A, MIG_B, VF0, VF1, VF2, make_topology


def _ids(devices) -> list[str]:
    return [d.id for d in devices]


def test_every_resource_gets_its_devices_with_numa_hints(topology):
    found = plugin_devices(topology)

    assert sorted(found) == [
        "gedge.io/gpu",
        "gedge.io/gpu-shared",
        "gedge.io/mig-1g.10gb",
        "gedge.io/mig-3g.40gb",
        "gedge.io/rdma",
        "gedge.io/sriov-vf",
    ]
    assert _ids(found["gedge.io/gpu"]) == [GPU0]
    assert _ids(found["gedge.io/gpu-shared"]) == [f"{GPU0}::0", f"{GPU0}::1"]
    assert _ids(found["gedge.io/mig-1g.10gb"]) == [MIG_A]
    assert _ids(found["gedge.io/mig-3g.40gb"]) == [MIG_B]
    assert _ids(found["gedge.io/sriov-vf"]) == [VF0, VF1, VF2]
    assert _ids(found["gedge.io/rdma"]) == ["mlx5_0"]
    numa = {(d.resource, d.id): d.numa_node for devices in found.values() for d in devices}
    assert numa[("gedge.io/gpu", GPU0)] == 0
    assert numa[("gedge.io/mig-1g.10gb", MIG_A)] == 1
    assert numa[("gedge.io/rdma", "mlx5_0")] == 1
    # A VF without its own NUMA node inherits its PF's; one with its own keeps it.
    assert numa[("gedge.io/sriov-vf", VF0)] == 0
    assert numa[("gedge.io/sriov-vf", VF1)] == 1
    assert numa[("gedge.io/sriov-vf", VF2)] == 0
    assert all(d.health == HEALTHY for devices in found.values() for d in devices)


def test_gpu_in_mig_mode_is_not_advertised_whole_and_single_replica_is_not_shared():
    found = plugin_devices(make_topology(gpu0_replicas=1))

    assert "gedge.io/gpu-shared" not in found
    assert GPU1 not in _ids(found["gedge.io/gpu"])


def test_unhealthy_gpu_marks_its_replicas_and_mig_instances(topology):
    found = plugin_devices(topology, unhealthy={GPU0, GPU1})

    assert {d.health for d in found["gedge.io/gpu"]} == {UNHEALTHY}
    assert {d.health for d in found["gedge.io/gpu-shared"]} == {UNHEALTHY}
    assert {d.health for d in found["gedge.io/mig-3g.40gb"]} == {UNHEALTHY}
    assert {d.health for d in found["gedge.io/sriov-vf"]} == {HEALTHY}

    only_vf = plugin_devices(topology, unhealthy={VF1})["gedge.io/sriov-vf"]
    assert [(d.id, d.health) for d in only_vf] == [(VF0, HEALTHY), (VF1, UNHEALTHY), (VF2, HEALTHY)]


def test_mig_instance_with_an_unknown_profile_is_skipped(topology):
    gpu = topology.gpus[1]
    odd = MigInstance(uuid="MIG-odd", profile="1c.2g.20gb", gpu_instance_id=2, compute_instance_id=1)
    bent = replace(topology, gpus=(topology.gpus[0], replace(gpu, mig_instances=(*gpu.mig_instances, odd))))

    found = plugin_devices(bent)

    assert "MIG-odd" not in [d.id for devices in found.values() for d in devices]
    assert _ids(found["gedge.io/mig-1g.10gb"]) == [MIG_A]


def test_media_extension_profile_is_advertised_under_a_legal_resource_name(topology):
    """NVIDIA's `1g.10gb+me` cannot be a resource name; it is advertised as `mig-1g.10gb.me`."""
    gpu = topology.gpus[1]
    media = MigInstance(uuid="MIG-media", profile="1g.10gb+me", gpu_instance_id=9, compute_instance_id=0)
    bent = replace(topology, gpus=(topology.gpus[0], replace(gpu, mig_instances=(*gpu.mig_instances, media))))

    found = plugin_devices(bent)

    assert not valid_resource_name("gedge.io/mig-1g.10gb+me")
    assert valid_resource_name("gedge.io/mig-1g.10gb.me")
    assert "gedge.io/mig-1g.10gb+me" not in found
    assert _ids(found["gedge.io/mig-1g.10gb.me"]) == ["MIG-media"]


def test_timeslice_ids_stay_within_kubelet_limit(topology):
    assert len(timeslice_id(GPU0, 15)) <= 63
