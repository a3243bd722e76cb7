"""Cpuset lists, write ordering, kubelet cgroup naming, and writes on the real v1 hierarchy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.apply.cgroups import (
    CgroupDriver,
    CgroupError,
    CgroupVersion,
    CpusetTree,
    QosClass,
    container_cgroup,
    container_cgroups_by_pod,
    detect_cgroup_layout,
    normalize_container_id,
    pod_cgroup,
    validate_pod_uid,
)
from agent.apply.cpuset import Cpuset, plan_cpuset_writes
from gedge_model.cpulist import parse_cpulist
from tests.apply.helpers import make_v1_cgroup, make_v2_cgroup, start_in_cgroup, stop, v1_sandbox

UID = "1b2c3d4e-0000-4111-8222-333344445555"
CID = "ab" * 32
UID_ = UID.replace("-", "_")


def cs(cpus: str, mems: str = "0") -> Cpuset:
    return Cpuset(parse_cpulist(cpus), parse_cpulist(mems))


def test_plan_widens_parents_first_and_narrows_children_first() -> None:
    root = Path("/r")
    pod, a, b = root / "pod", root / "pod/a", root / "pod/b"
    current = {pod: cs("0-1"), a: cs("0-1"), b: cs("0-1")}
    targets = {a: cs("2-3"), b: cs("0")}
    writes = plan_cpuset_writes(root, current, targets)
    assert writes[0] == (pod, cs("0-3"))
    assert (a, cs("0-3")) in writes
    assert writes[-1] in ((a, cs("2-3")), (b, cs("0")))
    order = [p for p, _ in writes]
    assert order.index(pod) < order.index(a)
    # every state along the way keeps each child inside its parent
    state = dict(current)
    for path, value in writes:
        state[path] = value
        for child in (a, b):
            assert state[pod].covers(state[child])


def test_plan_for_unchanged_targets_is_empty() -> None:
    root = Path("/r")
    current = {root / "x": cs("0-1"), root / "x/y": cs("1")}
    assert plan_cpuset_writes(root, current, {root / "x/y": cs("1")}) == []


def test_plan_leaves_v2_inheriting_ancestors_alone() -> None:
    root = Path("/r")
    current = {root / "x": Cpuset(frozenset(), frozenset()), root / "x/y": cs("0")}
    assert plan_cpuset_writes(root, current, {root / "x/y": cs("3")}) == [
        (root / "x/y", cs("0,3")),
        (root / "x/y", cs("3")),
    ]


@pytest.mark.parametrize(
    ("driver", "qos", "rel"),
    [
        (
            CgroupDriver.SYSTEMD,
            QosClass.GUARANTEED,
            f"kubepods.slice/kubepods-pod{UID_}.slice",
        ),
        (
            CgroupDriver.SYSTEMD,
            QosClass.BURSTABLE,
            f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice",
        ),
        (
            CgroupDriver.SYSTEMD,
            QosClass.BESTEFFORT,
            f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice",
        ),
        (CgroupDriver.CGROUPFS, QosClass.GUARANTEED, f"kubepods/pod{UID}"),
        (CgroupDriver.CGROUPFS, QosClass.BURSTABLE, f"kubepods/burstable/pod{UID}"),
        (CgroupDriver.CGROUPFS, QosClass.BESTEFFORT, f"kubepods/besteffort/pod{UID}"),
    ],
)
def test_pod_cgroup_follows_kubelet_naming(driver: CgroupDriver, qos: QosClass, rel: str) -> None:
    assert pod_cgroup(Path("/cg"), driver, qos, UID) == Path("/cg") / rel


@pytest.mark.parametrize(
    ("driver", "name"),
    [
        (CgroupDriver.SYSTEMD, f"cri-containerd-{CID}.scope"),
        (CgroupDriver.SYSTEMD, f"crio-{CID}.scope"),
        (CgroupDriver.SYSTEMD, f"docker-{CID}.scope"),
        (CgroupDriver.CGROUPFS, CID),
        (CgroupDriver.CGROUPFS, f"crio-{CID}"),
    ],
)
def test_container_cgroup_found_for_each_runtime(tmp_path: Path, driver: CgroupDriver, name: str) -> None:
    pod_dir = pod_cgroup(tmp_path, driver, QosClass.BURSTABLE, UID)
    (pod_dir / name).mkdir(parents=True)
    found = container_cgroup(tmp_path, driver, QosClass.BURSTABLE, UID, f"containerd://{CID}")
    assert found == pod_dir / name


def test_missing_container_cgroup_names_the_places_looked(tmp_path: Path) -> None:
    with pytest.raises(CgroupError, match=f"container {CID}.*cri-containerd-{CID}.scope"):
        container_cgroup(tmp_path, CgroupDriver.SYSTEMD, QosClass.GUARANTEED, UID, CID)


@pytest.mark.parametrize("bad", ["../../etc", "POD", "", "1b2c3d4e-0000-4111-8222-33334444555/"])
def test_pod_uid_must_be_a_uuid(bad: str) -> None:
    with pytest.raises(ValueError, match="bad pod UID"):
        validate_pod_uid(bad)


@pytest.mark.parametrize("bad", ["abc", "containerd://../x", "zz" * 32, "docker://"])
def test_container_id_must_be_hex(bad: str) -> None:
    with pytest.raises(ValueError, match="bad container ID"):
        normalize_container_id(bad)


@pytest.mark.parametrize("driver", list(CgroupDriver))
def test_enumeration_finds_pods_in_every_tier(tmp_path: Path, driver: CgroupDriver) -> None:
    uids = {
        QosClass.GUARANTEED: "aaaaaaaa-0000-4111-8222-333344445555",
        QosClass.BURSTABLE: "bbbbbbbb-0000-4111-8222-333344445555",
        QosClass.BESTEFFORT: "cccccccc-0000-4111-8222-333344445555",
    }
    for qos, uid in uids.items():
        (pod_cgroup(tmp_path, driver, qos, uid) / "c1").mkdir(parents=True)
        (pod_cgroup(tmp_path, driver, qos, uid) / "c2").mkdir()
    found = container_cgroups_by_pod(tmp_path, driver)
    assert set(found) == set(uids.values())
    assert all(len(paths) == 2 for paths in found.values())


def test_v1_write_order_on_the_real_hierarchy() -> None:
    """Narrowing a parent below a child is refused by the kernel; the planned order gets there anyway."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    with v1_sandbox() as top:
        pod = make_v1_cgroup(top / "pod")
        a = make_v1_cgroup(pod / "a")
        b = make_v1_cgroup(pod / "b")
        tree = CpusetTree(top, CgroupVersion.V1)
        with pytest.raises(OSError):
            (pod / "cpuset.cpus").write_text("0\n")
        tree.apply({a: cs("1"), b: cs("1")})
        tree.apply({pod: cs("1"), a: cs("1"), b: cs("1")})
        assert tree.read(pod) == cs("1")
        tree.apply({a: cs("0"), b: cs("0-1")})
        assert tree.read(pod) == cs("0-1")
        assert tree.read(a) == cs("0")
        proc = start_in_cgroup(a)
        try:
            assert os.sched_getaffinity(proc.pid) == {0}
            tree.apply({a: cs("1")})
            assert os.sched_getaffinity(proc.pid) == {1}
        finally:
            stop(proc)


def test_v1_refused_write_names_the_file() -> None:
    with v1_sandbox() as top:
        child = make_v1_cgroup(top / "c")
        tree = CpusetTree(top, CgroupVersion.V1)
        with pytest.raises(CgroupError, match=f"{child}/cpuset.cpus"):
            tree._write(child, cs("4000"))


def test_v2_tree_writes_files(tmp_path: Path) -> None:
    top = make_v2_cgroup(tmp_path / "kubepods", "0-3", "0", effective="0-3")
    leaf = make_v2_cgroup(top / "pod" / "c")
    make_v2_cgroup(top / "pod")
    tree = CpusetTree(tmp_path, CgroupVersion.V2)
    assert tree.effective(top) == cs("0-3")
    tree.apply({leaf: cs("2-3")})
    assert (leaf / "cpuset.cpus").read_text() == "2-3\n"
    assert (leaf / "cpuset.mems").read_text() == "0\n"
    assert (top / "pod" / "cpuset.cpus").read_text() == "\n"


def test_writes_outside_the_root_are_refused(tmp_path: Path) -> None:
    tree = CpusetTree(tmp_path / "root", CgroupVersion.V2)
    with pytest.raises(CgroupError, match="outside the cgroup root"):
        tree.apply({tmp_path / "elsewhere": cs("0")})


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        (
            ("cgroup.controllers=cpuset cpu io", "kubepods.slice/"),
            ("", CgroupVersion.V2, CgroupDriver.SYSTEMD),
        ),
        (("cgroup.controllers=cpu cpuset", "kubepods/"), ("", CgroupVersion.V2, CgroupDriver.CGROUPFS)),
        (
            ("cpuset/cpuset.cpus=0-3", "cpuset/kubepods.slice/"),
            ("cpuset", CgroupVersion.V1, CgroupDriver.SYSTEMD),
        ),
        (("cpuset/cpuset.cpus=0-3", "cpuset/kubepods/"), ("cpuset", CgroupVersion.V1, CgroupDriver.CGROUPFS)),
    ],
)
def test_detect_cgroup_layout(tmp_path: Path, layout: tuple[str, ...], expected: tuple) -> None:
    for entry in layout:
        name, _, content = entry.partition("=")
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir() if name.endswith("/") else path.write_text(content)
    root, version, driver = detect_cgroup_layout(tmp_path)
    assert (root, version, driver) == (tmp_path / expected[0], expected[1], expected[2])


def test_detect_cgroup_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(CgroupError, match="no cpuset hierarchy"):
        detect_cgroup_layout(tmp_path)
    (tmp_path / "cgroup.controllers").write_text("cpu io memory")
    with pytest.raises(CgroupError, match="no cpuset controller"):
        detect_cgroup_layout(tmp_path)
    (tmp_path / "cgroup.controllers").write_text("cpuset")
    with pytest.raises(CgroupError, match="no kubepods cgroup"):
        detect_cgroup_layout(tmp_path)
