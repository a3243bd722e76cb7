"""bench/placement.py keeps running and keeps its claims on a short trace."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_short_bench_run_prints_every_table_and_meets_the_optimum():
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "placement.py"),
            "--pods",
            "60",
            "--small-pods",
            "25",
            "--fills",
            "2",
            "--churn",
            "1",
            "--gpu-picks",
            "10",
            "--gpu-fills",
            "2",
            "--optimum-pods",
            "20",
            "--optimum-seconds",
            "20",
            "--binding-seconds",
            "60",
            "--tie-seeds",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    out = result.stdout
    for heading in (
        "mixed cluster, pods leaving",
        "filling the empty mixed cluster",
        "churn over 1",
        "small cluster vs exact optimum",
        "place() on one node",
        "go-gpuallocator",
        "restricted on many NUMA nodes",
        "offline optimum of the whole trace",
        "binding every pod that fits: the best schedule",
        "distance against packing",
        "what the optimum places differently",
        "tie-break seeds",
    ):
        assert heading in out, out
    gap = re.search(r"ours vs optimum: ([+-][0-9.]+)% cost over (\d+) pods", out)
    assert gap is not None and int(gap.group(2)) > 0
    assert 0.0 <= float(gap.group(1)) < 1.0
    offline = re.search(r"ours vs offline optimum: ([0-9.]+)% of its pods \((\d+) of (\d+)\)", out)
    assert offline is not None, out
    assert 0 < int(offline.group(2)) <= int(offline.group(3))  # no schedule places more than the optimum
    # binding every pod that fits is a restriction of the free-hand schedule: never more pods; both are
    # proven at this size (each solves in seconds against a 20 s and a 60 s limit)
    binding = re.search(
        r"ours vs the best schedule binding every pod that fits: "
        r"[0-9.]+% of its pods \((\d+) of (\d+); proven\)",
        out,
    )
    assert binding is not None, out
    assert int(binding.group(1)) == int(offline.group(2))
    assert int(binding.group(2)) <= int(offline.group(3))
    assert "most pods (proven)" in out, out
