"""The pinning bench builds real pod cgroups, pins through the ApplyManager, and leaves nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.apply.cgroups import CgroupDriver, QosClass, pod_cgroup
from agent.bench.common import Progress
from agent.bench.pinning import CPUSET_V1, Sandbox, hash_work, run_pinning
from gedge_model.cpulist import parse_cpulist
from tests.apply.helpers import remove_v1_tree, unique

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")


def cpus_of(cgroup: Path) -> set[int]:
    return set(parse_cpulist((cgroup / "cpuset.cpus").read_text()))


def test_sandbox_is_a_kubelet_layout_pinned_by_the_apply_manager() -> None:
    prefix = unique("gbt")
    with Sandbox(prefix) as box:
        top = CPUSET_V1 / prefix
        assert box.workload_cgroup.parent == pod_cgroup(
            top, CgroupDriver.CGROUPFS, QosClass.GUARANTEED, box.workload_uid
        )
        assert box.noisy_cgroup.parent == pod_cgroup(
            top, CgroupDriver.CGROUPFS, QosClass.BURSTABLE, box.noisy_uid
        )
        everything = set(box.cpus)
        allocation = box.exclusive_allocation(1)
        box.manager.apply(allocation)
        assert cpus_of(box.workload_cgroup) == {max(everything)}
        assert cpus_of(box.noisy_cgroup) == everything - {max(everything)}
        box.manager.release(box.workload_uid)
        assert cpus_of(box.workload_cgroup) == cpus_of(box.noisy_cgroup) == everything
        state_dir = box.state_dir
    assert not (CPUSET_V1 / prefix).exists()
    assert not state_dir.exists()


def test_short_run_records_the_affinity_of_each_process() -> None:
    prefix = unique("gbt")
    lines: list[str] = []
    progress = Progress("pinning")
    progress.stream = type(
        "Sink", (), {"write": lambda self, s: lines.append(s), "flush": lambda self: None}
    )()
    report = run_pinning(short=True, prefix=prefix, progress=progress)
    everything = report["node_cpus"]
    shared, exclusive = report["modes"]["shared"], report["modes"]["exclusive"]
    assert shared["workload_cpus"] == everything and shared["noise_cpus"] == everything
    assert exclusive["workload_cpus"] == report["exclusive_cpus"] == [everything[-1]]
    assert exclusive["noise_cpus"] == everything[:-1]
    assert len(shared["seconds"]) == len(exclusive["seconds"]) == report["budget"]["runs"]
    assert all(s > 0 for s in shared["seconds"] + exclusive["seconds"])
    assert report["ratios"]["speedup_median"] > 0
    assert any("run 1/2 exclusive" in line for line in lines)
    assert not (CPUSET_V1 / prefix).exists()


def test_the_workload_is_a_fixed_amount_of_hashing() -> None:
    assert hash_work(1) == hash_work(1) != hash_work(2)


def test_cli_short_json() -> None:
    prefix = unique("gbt")
    proc = subprocess.run(
        [sys.executable, "-m", "agent.cli", "bench", "pinning", "--short", "--json", "--prefix", prefix],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["bench"] == "pinning"
    assert set(report["modes"]) == {"shared", "exclusive"}
    assert not (CPUSET_V1 / prefix).exists()


def test_bad_cpu_count_is_refused_and_cleaned_up() -> None:
    prefix = unique("gbt")
    proc = subprocess.run(
        [sys.executable, "-m", "agent.cli", "bench", "pinning", "--short", "--cpus", "9", "--prefix", prefix],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "--cpus must be within 1.." in proc.stderr
    assert not (CPUSET_V1 / prefix).exists()


def test_sigterm_mid_run_kills_the_noise_and_removes_the_cgroups() -> None:
    prefix = unique("gbt")
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "bench", "pinning", "--prefix", prefix],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "noisy neighbour" in line:
                break
        (noisy,) = [p for p in (CPUSET_V1 / prefix / "kubepods" / "burstable").glob("pod*/*") if p.is_dir()]
        pids: list[int] = []
        deadline = time.monotonic() + 10
        while not pids and time.monotonic() < deadline:
            pids = [int(p) for p in (noisy / "cgroup.procs").read_text().split()]
            time.sleep(0.05)
        assert pids, "the noisy neighbour should be running"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            remove_v1_tree(CPUSET_V1 / prefix)
    assert proc.returncode == 130, err
    assert not (CPUSET_V1 / prefix).exists()
    assert not [pid for pid in pids if alive(pid)]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"
