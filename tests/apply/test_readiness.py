"""Can the agent drive the node's cgroups: kubelet's driver from its config or the tree, real cpusets."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agent.apply.cgroups import CgroupDriver
from agent.apply.readiness import ApplyGate, check, kubelet_config_driver, resolve_driver
from tests.apply.helpers import make_v1_cgroup


def kubelet_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_kubelet_config_file_names_the_driver(tmp_path: Path, cgroup_root: Path) -> None:
    make_v1_cgroup(cgroup_root / "kubepods")
    config = kubelet_config(
        tmp_path,
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\ncgroupDriver: cgroupfs\n",
    )
    assert resolve_driver("", config, cgroup_root) == (CgroupDriver.CGROUPFS, str(config))
    readiness = check("", config, cgroup_root)
    assert readiness.ready and readiness.driver is CgroupDriver.CGROUPFS


def test_without_kubelet_config_the_tree_shape_tells(tmp_path: Path, cgroup_root: Path) -> None:
    absent = tmp_path / "missing.yaml"
    make_v1_cgroup(cgroup_root / "kubepods.slice")
    driver, source = resolve_driver("", absent, cgroup_root)
    assert driver is CgroupDriver.SYSTEMD and "kubepods tree" in source
    no_key = kubelet_config(tmp_path, "kind: KubeletConfiguration\nfailSwapOn: false\n")
    assert kubelet_config_driver(no_key) is None
    assert check("", no_key, cgroup_root).driver is CgroupDriver.SYSTEMD


def test_configured_driver_wins_over_detection(tmp_path: Path, cgroup_root: Path) -> None:
    make_v1_cgroup(cgroup_root / "kubepods")
    config = kubelet_config(tmp_path, "cgroupDriver: systemd\n")
    readiness = check("cgroupfs", config, cgroup_root)
    assert readiness.ready and readiness.driver_source == "config"


@pytest.mark.parametrize(
    ("text", "dirs", "needle"),
    [
        ("cgroupDriver: runit\n", ["kubepods"], "cgroupDriver 'runit' is neither systemd nor cgroupfs"),
        ("cgroupDriver: [systemd\n", ["kubepods"], "not YAML"),
        ("", ["kubepods", "kubepods.slice"], "both kubepods.slice and kubepods exist"),
        ("", [], "no kubepods.slice or kubepods cgroup under"),
    ],
)
def test_unknown_driver_blocks_and_says_why(
    tmp_path: Path, cgroup_root: Path, text: str, dirs: list[str], needle: str
) -> None:
    for name in dirs:
        make_v1_cgroup(cgroup_root / name)
    readiness = check("", kubelet_config(tmp_path, text), cgroup_root)
    assert not readiness.ready
    assert readiness.reason == "CgroupDriverUnknown"
    assert needle in readiness.message


def test_kubelet_config_naming_the_other_driver_than_the_tree_is_a_missing_tree(
    tmp_path: Path, cgroup_root: Path
) -> None:
    make_v1_cgroup(cgroup_root / "kubepods")
    readiness = check("", kubelet_config(tmp_path, "cgroupDriver: systemd\n"), cgroup_root)
    assert (readiness.ready, readiness.reason) == (False, "CgroupTreeMissing")
    assert f"no {cgroup_root / 'kubepods.slice'} for kubelet's systemd driver" in readiness.message


def test_read_only_cgroup_mount_is_not_writable(tmp_path: Path, cgroup_root: Path) -> None:
    make_v1_cgroup(cgroup_root / "kubepods")
    view = tmp_path / "ro-view"
    view.mkdir()
    subprocess.run(["mount", "--bind", str(cgroup_root), str(view)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True)
        readiness = check("cgroupfs", tmp_path / "none.yaml", view)
    finally:
        subprocess.run(["umount", str(view)], check=True)
    assert (readiness.ready, readiness.reason) == (False, "CgroupNotWritable")
    assert str(view / "kubepods" / "cpuset.cpus") in readiness.message


def test_gate_tells_listeners_each_change_once_and_finds_a_late_kubelet(
    tmp_path: Path, cgroup_root: Path
) -> None:
    gate = ApplyGate("", tmp_path / "none.yaml", cgroup_root)
    heard = []
    gate.add_listener(heard.append)
    assert gate.blocked() is not None and "no kubepods.slice or kubepods" in gate.blocked()
    gate.refresh()
    assert [r.reason for r in heard] == ["CgroupDriverUnknown"]
    make_v1_cgroup(cgroup_root / "kubepods")  # kubelet starts after the agent
    gate.refresh()
    gate.refresh()
    assert [r.reason for r in heard] == ["CgroupDriverUnknown", "Ready"]
    assert heard[-1].driver is CgroupDriver.CGROUPFS and gate.blocked() is None
