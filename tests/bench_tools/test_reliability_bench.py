"""The reliability campaigns run end to end at a small size and find no fault (the full size is bench/)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")


def test_small_campaigns_report_zero_in_every_fault_column() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "reliability.py"),
            "--fuzz",
            "150",
            "--watch-kills",
            "2",
            "--binds",
            "6",
            "--kills",
            "1",
            "--reservation-ttl-s",
            "1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line and not line.startswith(("campaign", "---"))]
    assert [row.split("  ")[0] for row in rows] == [
        "extender: hostile requests (seed 7)",
        "extender: 120 filtered pods of 2 MB",
        "agent: watch clients kill -9'd mid-stream",
        "2 extender copies: racing binds",
        "extender kill -9 mid-bind",
    ]
