"""Discovery speed and memory beside hwloc's lstopo, on every sysfs snapshot and on this machine.

For each root: the median in-process `discover()` time, the whole process (Python start, import,
discover) with its peak RSS, and the median whole-process time of `lstopo --of xml --whole-io`
on the same root. Prints a table; the goal is in-process discovery no slower than lstopo's process.

    .venv/bin/python bench/discovery.py [--runs N]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from cli_args import counted  # noqa: E402

from agent.discovery import discover  # noqa: E402
from tests.conftest import snapshot_names, unpack_snapshot  # noqa: E402

# The child reports its own VmHWM: wait4's ru_maxrss would also count the parent's image from before exec.
_CHILD = (
    "import sys; from agent.discovery import discover; discover(sys.argv[1]); "
    "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')))"
)


def in_process_ms(root: Path, runs: int) -> float:
    discover(root)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        discover(root)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def whole_process(argv: list[str], runs: int) -> tuple[float, str]:
    """Median wall time (ms) of a process, and what its last run printed."""
    times, out = [], ""
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, check=False)
        times.append((time.perf_counter() - start) * 1000)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} exited {done.returncode} on {argv[-1]}: {done.stderr[-500:]}")
        out = done.stdout
    return statistics.median(times), out


def lstopo_ms(root: Path, runs: int) -> float | None:
    lstopo = shutil.which("lstopo") or shutil.which("lstopo-no-graphics")
    if lstopo is None:
        return None
    argv = [lstopo, "--of", "xml", "--whole-io", "-"]
    if str(root) != "/":
        argv[1:1] = ["--input", str(root)]
    return whole_process(argv, runs)[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs", type=counted(1), default=15, help="repetitions per measurement (default 15)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gedge-bench-") as tmp:
        roots = [(name, unpack_snapshot(name, Path(tmp))) for name in snapshot_names()]
        roots.append(("live /", Path("/")))
        header = (
            f"{'root':<32}{'PCI':>5}{'CPUs':>6}{'discover ms':>13}{'agent proc ms':>15}"
            f"{'agent RSS MiB':>15}{'lstopo proc ms':>16}{'ratio':>7}"
        )
        print(header)
        print("-" * len(header))
        for name, root in roots:
            topo = discover(root)
            ours = in_process_ms(root, args.runs)
            child = [sys.executable, "-c", _CHILD, str(root)]
            proc_ms, printed = whole_process(child, max(3, args.runs // 3))
            rss_kib = int(printed.split()[-1])
            theirs = lstopo_ms(root, args.runs)
            ratio = f"{ours / theirs:.2f}" if theirs else "-"
            theirs_text = f"{theirs:.1f}" if theirs is not None else "n/a"
            print(
                f"{name:<32}{len(topo.pci_devices):>5}{len(topo.cpus):>6}{ours:>13.2f}{proc_ms:>15.1f}"
                f"{rss_kib / 1024:>15.1f}{theirs_text:>16}{ratio:>7}"
            )
    print("\nratio = in-process discover / lstopo whole process (below 1: discovery is faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
