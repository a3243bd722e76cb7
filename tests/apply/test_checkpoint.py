"""The checkpoint: strict round trip, atomic replacement, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.apply.checkpoint import (
    CheckpointData,
    CheckpointError,
    CheckpointStore,
    Intent,
    NicRecord,
    PodRecord,
    VfSettings,
)
from gedge_model import Allocation, NetworkGrant

UID = "1b2c3d4e-0000-4111-8222-333344445555"


def sample() -> CheckpointData:
    grant = NetworkGrant(
        mode="sriov", master="ens1f0", vf_pci_address="0000:3b:02.1", vlan=12, mac="02:00:00:00:00:09"
    )
    allocation = Allocation(pod_uid=UID, namespace="ml", name="t", node="edge-1", cpus=(2, 3), network=grant)
    nic = NicRecord(
        mode="sriov",
        pod_netns="/var/run/netns/cni-1",
        host_netns=None,
        ifname="net1",
        marker=f"gedge:{UID}",
        host_name="ens1f0v1",
        pf="ens1f0",
        vf_index=1,
        vf_original=VfSettings(mac="aa:bb:cc:dd:ee:ff", trust=True),
    )
    record = PodRecord(allocation=allocation, nic=nic)
    return CheckpointData(pods=(record,), intent=Intent(op="release", record=record))


def test_round_trip(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "deep" / "cp.json")
    assert store.load() == CheckpointData()
    store.save(sample())
    assert store.load() == sample()
    assert [p.name for p in store.path.parent.iterdir()] == ["cp.json"]


def test_save_replaces_whole_files_only(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "cp.json")
    store.save(sample())
    inode = store.path.stat().st_ino
    store.save(sample().without_pod(UID))
    assert store.path.stat().st_ino != inode
    assert store.load().pods == ()


def test_failed_save_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "cp.json")
    store.save(sample())

    bad = CheckpointData(pods=(PodRecord(allocation=object()),))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.save(bad)
    assert store.load() == sample()
    assert [p.name for p in tmp_path.iterdir()] == ["cp.json"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not JSON"),
        ('{"version": 1, "pods": [], "intent": null, "extra": 1}', "unknown field"),
        (
            json.dumps(
                {
                    "version": 1,
                    "pods": [{"allocation": {"pod_uid": "", "namespace": "", "name": "", "node": ""}}],
                }
            ),
            "allocation needs pod_uid",
        ),
        ('{"version": 7}', "has format 7"),
    ],
)
def test_malformed_checkpoint_names_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "cp.json"
    path.write_text(text)
    with pytest.raises(CheckpointError, match=message) as err:
        CheckpointStore(path).load()
    assert str(path) in str(err.value)


def test_file_is_plain_json(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "cp.json")
    store.save(sample())
    raw = json.loads(store.path.read_text())
    assert raw["intent"]["op"] == "release"
    assert raw["pods"][0]["nic"]["vf_original"]["trust"] is True


def test_a_temp_file_left_by_a_crash_mid_save_is_removed(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "cp.json")
    (tmp_path / ".cp.json.abc123").write_text('{"half": ')
    (tmp_path / "other.json").write_text("{}")
    store.save(sample())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cp.json", "other.json"]
