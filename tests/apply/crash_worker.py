"""Runs one apply, reserve or release in its own process and SIGKILLs itself after step N (N < 0: never).

A reserve is an apply by a manager that reserves unresolved pods, with the pod's runtime unknown.

Prints `ready` before it starts and each step as it completes, so the caller
learns how many steps there are, or can kill it from outside at any moment.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from agent.apply import ApplyManager, CgroupDriver, CgroupVersion, PodRuntime, QosClass, StaticPodResolver
from agent.apply.nic import NicApplier
from gedge_model import Allocation


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    kill_at = spec["kill_at"]
    done = 0

    def step(name: str) -> None:
        nonlocal done
        if done == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        print(name, flush=True)
        done += 1

    resolver = StaticPodResolver(
        {
            uid: PodRuntime(qos=QosClass(p["qos"]), container_ids=tuple(p["cids"]), netns=p["netns"])
            for uid, p in spec["pods"].items()
            if not (spec["op"] == "reserve" and uid == spec["pod_uid"])
        }
    )
    manager = ApplyManager(
        cgroup_root=Path(spec["cgroup_root"]),
        cgroup_driver=CgroupDriver.CGROUPFS,
        cgroup_version=CgroupVersion.V1,
        checkpoint_path=Path(spec["checkpoint"]),
        resolver=resolver,
        nic=NicApplier(host_netns=spec["host_netns"]),
        reserve_unresolved=spec["op"] == "reserve",
        on_step=step,
    )
    print("ready", flush=True)
    if spec["op"] in ("apply", "reserve"):
        manager.apply(Allocation.from_annotation(spec["allocation"]))
    else:
        manager.release(spec["pod_uid"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
