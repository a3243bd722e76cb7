import logging
from pathlib import Path

import pynvml
import pytest

from agent.discovery import NvmlGpuSource, discover
from agent.discovery.nvml import mig_profile_name, normalize_bus_id
from gedge_model import NodeTopology, from_json, to_json
from tests.discovery.fake_nvml import FakeGpu, FakeNvml
from tests.discovery.gpu_box import build_box
from tests.discovery.sysfs_builder import SysfsBuilder

A100_NAMES = ["1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"]


@pytest.mark.parametrize(("model", "links"), [("H100", 18), ("A100", 12)])
def test_eight_gpus_joined_to_sysfs_with_nvlink_to_every_peer(tmp_path: Path, model: str, links: int) -> None:
    box = build_box(tmp_path, model)
    topo = discover(box.root, gpu_source=NvmlGpuSource(box.nvml))
    assert topo.warnings == ()
    assert topo.node_name == f"{model.lower()}-box"
    assert [g.pci_address for g in topo.gpus] == list(box.gpu_addresses)
    assert [g.index for g in topo.gpus] == list(range(8))
    for gpu in topo.gpus:
        assert topo.pci(gpu.pci_address).numa_node == (0 if gpu.index < 4 else 1)
        assert {(n.peer_pci_address, n.links) for n in gpu.nvlinks} == {
            (peer, links) for peer in box.gpu_addresses if peer != gpu.pci_address
        }
    first = topo.gpus[0]
    assert first.name.startswith(f"NVIDIA {model}")
    assert first.memory_bytes == (81559 if model == "H100" else 81920) << 20
    assert (first.driver_version, first.cuda_driver_version) == ("550.54.15", "12.4")
    assert first.compute_capability == ("9.0" if model == "H100" else "8.0")
    assert (topo.driver_version, topo.cuda_driver_version) == ("550.54.15", "12.4")
    assert box.nvml.calls == ["nvmlInit", "nvmlShutdown"]


@pytest.mark.parametrize("model", ["H100", "A100"])
def test_mig_profiles_instances_and_pending_mode(tmp_path: Path, model: str) -> None:
    """A100 names come from NVML's profile struct, H100 ones are derived the way NVIDIA names them."""
    box = build_box(tmp_path, model, mig_gpu0=True)
    topo = discover(box.root, gpu_source=NvmlGpuSource(box.nvml))
    gpu0, gpu1, gpu2 = topo.gpus[:3]
    assert (gpu0.mig_current, gpu0.mig_pending) == (True, True)
    assert (gpu1.mig_current, gpu1.mig_pending, gpu1.mig_profiles) == (False, True, ())
    assert (gpu2.mig_current, gpu2.mig_pending) == (False, False)
    profiles = {p.name: p for p in gpu0.mig_profiles}
    assert sorted(profiles) == sorted(A100_NAMES)
    one_g = profiles["1g.10gb"]
    assert (one_g.profile_id, one_g.slices, one_g.total, one_g.available) == (19, 1, 7, 1)
    assert (profiles["1g.10gb+me"].profile_id, profiles["1g.20gb"].profile_id) == (20, 15)
    seven = profiles["7g.80gb"]
    assert (seven.profile_id, seven.slices, seven.memory_mib, seven.available) == (0, 7, 81152, 0)
    assert [
        (m.profile, m.gpu_instance_id, m.compute_instance_id, m.placement_start, m.placement_size)
        for m in gpu0.mig_instances
    ] == [("3g.40gb", 2, 0, 0, 4), ("1g.10gb", 9, 0, 4, 1), ("1g.10gb", 10, 0, 5, 1)]
    assert all(m.uuid.startswith("MIG-") for m in gpu0.mig_instances)


@pytest.mark.parametrize(
    ("slices", "memory_mib", "total_mib", "name"),
    [
        (1, 4864, 40960, "1g.5gb"),
        (3, 19968, 40960, "3g.20gb"),
        (7, 40192, 40960, "7g.40gb"),
        (1, 9728, 81920, "1g.10gb"),
        (7, 81152, 81920, "7g.80gb"),
        (1, 9984, 81559, "1g.10gb"),
        (4, 40448, 81559, "4g.40gb"),
    ],
)
def test_mig_profile_names(slices: int, memory_mib: int, total_mib: int, name: str) -> None:
    assert mig_profile_name(slices, memory_mib, total_mib << 20) == name


def test_bus_ids_normalize_to_sysfs_form() -> None:
    assert normalize_bus_id(b"00000000:1A:00.0") == "0000:1a:00.0"
    assert normalize_bus_id("00010000:00:04.0") == "10000:00:04.0"
    assert normalize_bus_id("nonsense") is None


def test_timeslice_replicas_for_all_or_by_uuid_and_index(tmp_path: Path) -> None:
    box = build_box(tmp_path, "A100")
    everywhere = discover(box.root, gpu_source=NvmlGpuSource(box.nvml), timeslice_replicas=4)
    assert {g.timeslice_replicas for g in everywhere.gpus} == {4}
    uuid = everywhere.gpus[2].uuid
    some = discover(
        box.root, gpu_source=NvmlGpuSource(box.nvml), timeslice_replicas={uuid: 8, "5": 2, 6: 5, "GPU-x": 3}
    )
    assert [g.timeslice_replicas for g in some.gpus] == [1, 1, 8, 1, 1, 2, 5, 1]
    assert some.warnings == ("time-slice replicas configured for 'GPU-x', which names no GPU of this node",)
    with pytest.raises(ValueError, match="time-slice replicas for GPU-0: must be an integer >= 1, got 0"):
        discover(box.root, gpu_source=NvmlGpuSource(box.nvml), timeslice_replicas={"GPU-0": 0})


@pytest.mark.parametrize("code", [pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED])
def test_no_nvml_is_a_normal_node_with_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, code: int
) -> None:
    box = build_box(tmp_path, "H100")
    nvml = FakeNvml([], init_error=code)
    with caplog.at_level(logging.INFO, logger="agent.discovery.nvml"):
        topo = discover(box.root, gpu_source=NvmlGpuSource(nvml))
    assert topo.gpus == () and topo.warnings == ()
    assert len(caplog.records) == 1 and "0 GPUs" in caplog.records[0].getMessage()
    assert len(topo.accelerators) == 8, "the GPUs are still known by their PCI class"


def test_nvml_with_no_gpu_and_the_real_module_without_a_driver(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    SysfsBuilder(tmp_path).cpu(0)
    with caplog.at_level(logging.INFO, logger="agent.discovery.nvml"):
        assert discover(tmp_path, gpu_source=NvmlGpuSource(FakeNvml([]))).gpus == ()
        # This machine has no NVIDIA driver: the real pynvml fails to load libnvidia-ml.
        assert NvmlGpuSource().gpus(lambda message: pytest.fail(message)) == ()
    assert [r.getMessage().endswith("0 GPUs") for r in caplog.records] == [True, True]


def test_snapshots_do_not_ask_nvml(tmp_path: Path) -> None:
    box = build_box(tmp_path, "H100")
    assert discover(box.root).gpus == ()
    assert box.nvml.calls == []


def test_gpu_missing_from_sysfs_and_direct_nvlinks(tmp_path: Path) -> None:
    b = SysfsBuilder(tmp_path)
    b.cpu(0)
    b.pci(["pci0000:00", "0000:00:02.0"], 0x030200, 0x10DE, 0x1DB6, numa=-1)
    gpus = [
        FakeGpu("GPU-a", "Tesla V100", "00000000:00:02.0", 32 << 30, (7, 0), links=["00000000:00:03.0"] * 4),
        FakeGpu("GPU-b", "Tesla V100", "00000000:00:03.0", 32 << 30, (7, 0), links=["00000000:00:02.0"] * 4),
    ]
    topo = discover(tmp_path, gpu_source=NvmlGpuSource(FakeNvml(gpus)))
    assert [(g.uuid, [(n.peer_pci_address, n.links) for n in g.nvlinks]) for g in topo.gpus] == [
        ("GPU-a", [("0000:00:03.0", 4)]),
        ("GPU-b", [("0000:00:02.0", 4)]),
    ]
    assert topo.warnings == ("GPU 1 (GPU-b): PCI address 0000:00:03.0 is not in /sys/bus/pci/devices",)


def test_drivers_without_the_version_2_profile_query(tmp_path: Path) -> None:
    box = build_box(tmp_path, "A100", mig_gpu0=True)
    box.nvml._gpus[0].profile_info_v2 = False
    topo = discover(box.root, gpu_source=NvmlGpuSource(box.nvml))
    assert topo.warnings == ()
    assert sorted(p.name for p in topo.gpus[0].mig_profiles) == sorted(A100_NAMES)


def test_gpu_topology_travels_as_json(tmp_path: Path) -> None:
    box = build_box(tmp_path, "H100", mig_gpu0=True)
    topo = discover(box.root, gpu_source=NvmlGpuSource(box.nvml), timeslice_replicas=2)
    assert from_json(NodeTopology, to_json(topo)) == topo
