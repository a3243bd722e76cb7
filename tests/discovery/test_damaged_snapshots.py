"""Discovery completes on damaged copies of the real snapshots, naming what it could not read."""

import os
import random
import shutil
from pathlib import Path

import pytest

from agent.discovery import discover
from tests.conftest import snapshot_names


def _damage(root: Path, seed: int) -> list[str]:
    """Turn a fifth of the attribute files discovery reads into garbage, directories, loops or FIFOs."""
    rng = random.Random(seed)
    targets = [
        p
        for p in root.joinpath("sys").rglob("*")
        if p.is_file()
        and not p.is_symlink()
        and p.name
        in {
            "class",
            "vendor",
            "numa_node",
            "local_cpulist",
            "cpulist",
            "distance",
            "online",
            "core_id",
            "physical_package_id",
            "thread_siblings_list",
            "meminfo",
            "address",
            "speed",
        }
    ]
    damaged = []
    for path in rng.sample(targets, max(1, len(targets) // 5)):
        how = rng.choice(("garbage", "dir", "loop", "empty", "fifo"))
        path.unlink()
        if how == "garbage":
            path.write_bytes(bytes(rng.randrange(256) for _ in range(12)))
        elif how == "dir":
            path.mkdir()
        elif how == "loop":
            os.symlink(path.name, path)
        elif how == "fifo":
            os.mkfifo(path)
        else:
            path.write_text("")
        damaged.append(how)
    return damaged


@pytest.mark.parametrize("name", snapshot_names())
def test_damaged_snapshot_still_discovers(name: str, snapshot_roots: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / name
    shutil.copytree(snapshot_roots[name], root, symlinks=True)
    damaged = _damage(root, seed=len(name))
    topo = discover(root)
    assert damaged
    assert topo.warnings, "damage must be reported"
    assert all(w.startswith("/") for w in topo.warnings), topo.warnings
