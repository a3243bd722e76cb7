"""Pinning at creation through NRI, against a private containerd 2 (CRI, as kubelet drives it).

For N pinned pods, one after another, it prints:
- how long CreateContainer + StartContainer take with the agent's NRI plugin registered and without,
- on which CPUs the container's first process was when StartContainer returned (with NRI: its own),
- without NRI, how long the agent's cgroup applier then takes to pin the running container
  (what the pod-watch path adds after the start, before its pod status even reaches the agent).

    .venv/bin/python bench/nri.py            # 10 pods each way
    .venv/bin/python bench/nri.py --pods 30

Needs root, cgroup v1 cpuset, two CPUs, tests/e2e/node/build_containerd.sh built and runc.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.apply import ApplyManager, CgroupDriver, CgroupVersion, PodRuntime, QosClass  # noqa: E402
from agent.apply.cgroups import remove_cgroup_tree  # noqa: E402
from agent.apply.manager import StaticPodResolver  # noqa: E402
from agent.nri import NriCpusets, NriSession  # noqa: E402
from gedge_model import Allocation  # noqa: E402
from tests.nri.runtime import Containerd, binary_dir, cri_modules, oci_archive  # noqa: E402
from tests.nri.test_containerd_nri import CONTROLLERS, CPUSET, Pods, first_process_cpus  # noqa: E402

NODE = "bench-node"


def ms(values: list[float]) -> str:
    low, mid, high = (v * 1000 for v in (min(values), statistics.median(values), max(values)))
    return f"median {mid:.1f} ms (min {low:.1f}, max {high:.1f})"


def run(
    pods: Pods, count: int, cpu: int, applier: ApplyManager | None, resolver: StaticPodResolver
) -> dict[str, Any]:
    starts: list[float] = []
    pinned_at_start = 0
    apply_times: list[float] = []
    for i in range(count):
        allocation = Allocation(str(uuid.uuid4()), "ml", f"bench-{i}", NODE, cpus=(cpu,))
        sandbox, config = pods.run(f"bench-{i}", allocation)
        began = time.perf_counter()
        container = pods.container(sandbox, config)
        starts.append(time.perf_counter() - began)
        cgroup = pods.cgroup(allocation.pod_uid, container)
        if first_process_cpus(cgroup) == {cpu}:
            pinned_at_start += 1
        if applier is not None:
            resolver.pods[allocation.pod_uid] = PodRuntime(QosClass.BURSTABLE, (container,))
            began = time.perf_counter()
            applier.apply(allocation)
            apply_times.append(time.perf_counter() - began)
            applier.release(allocation.pod_uid)
        pods.remove(sandbox)
    return {"starts": starts, "pinned_at_start": pinned_at_start, "apply": apply_times}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pods", type=int, default=10)
    args = parser.parse_args()
    binaries = binary_dir()
    online = frozenset(os.sched_getaffinity(0))
    if binaries is None or len(online) < 2 or not (CPUSET / "cpuset.cpus").exists():
        print(
            "needs the built containerd, runc, two CPUs and the cgroup v1 cpuset hierarchy", file=sys.stderr
        )
        return 2
    cpu = max(online)
    with tempfile.TemporaryDirectory(prefix="gnri-bench-") as scratch:
        daemon = Containerd(binaries, Path(scratch) / "ctrd")
        daemon.start()
        try:
            image = oci_archive(binaries / "pause", Path(scratch))
            daemon.ctr("images", "import", "--platform", "linux/amd64", "--snapshotter", "native", str(image))
            api, api_grpc = cri_modules(Path(scratch) / "cri")
            channel = daemon.channel()
            pods = Pods(api, api_grpc.RuntimeServiceStub(channel))
            top = f"gedge-nri-bench-{uuid.uuid4().hex[:8]}"
            pods.parent = f"/{top}/kubepods/burstable"  # kubelet's cgroupfs layout, for the applier
            try:
                session = NriSession(str(daemon.nri_socket), NriCpusets(NODE, lambda: online))
                session.open()
                session.synchronized.wait(10)
                with_nri = run(pods, args.pods, cpu, None, StaticPodResolver())
                session.close()
                resolver = StaticPodResolver()
                applier = ApplyManager(
                    cgroup_root=CPUSET / top,
                    cgroup_driver=CgroupDriver.CGROUPFS,
                    cgroup_version=CgroupVersion.V1,
                    checkpoint_path=Path(scratch) / "checkpoint.json",
                    resolver=resolver,
                )
                without = run(pods, args.pods, cpu, applier, resolver)
            finally:
                pods.close()
                channel.close()
                for controller in CONTROLLERS:
                    remove_cgroup_tree(Path("/sys/fs/cgroup") / controller / top)
        finally:
            daemon.stop()
    print(f"{args.pods} pinned pods each way, containerd 2 + runc, CPU {cpu} of {sorted(online)}")
    print(
        f"  with NRI:    create+start {ms(with_nri['starts'])}; first process on its CPU at start: "
        f"{with_nri['pinned_at_start']}/{args.pods}"
    )
    print(
        f"  without NRI: create+start {ms(without['starts'])}; first process on its CPU at start: "
        f"{without['pinned_at_start']}/{args.pods}; the cgroup applier then pins in {ms(without['apply'])}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
