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
        "offline optimum of a whole 20-pod trace (the small trace's first)",
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
    assert "Running HiGHS" not in out, "HiGHS's banner goes to stderr, not between the tables"


def test_bad_bench_arguments_are_one_line_naming_the_flag() -> None:
    """A count of 0, a word for a number or a typo in a list of sizes stops the bench at once with
    argparse's one line naming the flag, not a traceback from deep inside a run."""
    for script, args, expected in (
        ("placement.py", ["--pods", "0"], "argument --pods: 0 is below 1"),
        ("placement.py", ["--fills", "x"], "argument --fills: 'x' is not a whole number"),
        (
            "placement.py",
            ["--optimum-seconds", "0"],
            "argument --optimum-seconds: 0 must be a positive number of seconds",
        ),
        ("extender.py", ["--sizes", "100,1k"], "argument --sizes: '100,1k': '1k' is not a whole number"),
        ("extender.py", ["--pods", "0"], "argument --pods: 0 is below 1"),
        ("discovery.py", ["--runs", "0"], "argument --runs: 0 is below 1"),
    ):
        result = subprocess.run(
            [sys.executable, str(REPO / "bench" / script), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2, (script, args, result.stderr)
        last = result.stderr.strip().splitlines()[-1]
        assert f"error: {expected}" in last, (script, args, result.stderr)
        assert "Traceback" not in result.stderr
